"""Judging a chaos run: every row against the simulator, the table and the daemons' log.

The verdict (the columns of `table()`, and the problem list):

- lost: should have fired, never reached the simulator (or never became final);
- dup (duplicated): sent again with no crash in between to explain it, or sent again
  after its result was already known (in the table or in the spool) when prebookd died;
- wrong (wrong result): completed without a place at the simulator, or holding a
  place while not completed (a cancelled row sent anyway must end completed);
- early / stale: a request before the row's final instant, a "not open yet" answer
  (each class opens exactly at its row's final instant), or fired at an instant the
  row had been moved away from;
- cxl-fired (withdrawn fired): cancelled or deleted, yet written more than
  CANCEL_GRACE after the cancel committed (writers record when each action committed);
- failed, crash: rows that ended failed (every class has room: none should), and
  prebookd exiting by itself;
- miscounted (in the problem list): `attempts` above the requests the simulator saw.

Resends after a crash are by design (a repeat hears "already booked"): they are
counted, not failed: `resent` rows, `unrec` requests the `attempts` column does not
count because a crash cut them off before they were recorded, `max req` per row.
`faults`: kills, restarts, proxy faults, partitions, or writer changes (load).
"""

from __future__ import annotations

import datetime as dt
import itertools
import statistics
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import asyncpg

from prebookd.sim.model import RecordedRequest

FINAL = ("completed", "failed")
NOT_OPEN = "ERROR_ANTELACION_CLIENTE"
CANCEL_GRACE = 0.5  # a cancel committed this long before a request was written must win


@dataclass
class RowPlan:
    """A prebooking as its writers know it: every instant it had, and its end."""

    email: str
    session_id: str  # one class per row, opening at the row's instant
    instants: list[float]
    id: uuid.UUID | None = None
    cancelled_at: float | None = None  # when the cancel committed (time.time())
    deleted_at: float | None = None
    racy: bool = False  # a reschedule took too long to tell which instant was in force

    @property
    def available_at(self) -> float:
        return self.instants[-1]

    @property
    def withdrawn_at(self) -> float | None:
        return self.cancelled_at if self.cancelled_at is not None else self.deleted_at


@dataclass(frozen=True)
class Kill:
    # When the next incarnation was started: requests arriving before it came from the
    # killed one (the simulator stamps them in this process), later ones from the next.
    at: float
    known_final: frozenset[uuid.UUID]  # rows final in the table or the spool at the kill


@dataclass(frozen=True)
class Fault:
    kind: str  # cut | refuse | blackhole (the proxy), restart (Postgres itself)
    at: float  # seconds after the first instant
    lasts: float = 0.0  # refuse and blackhole: how long before passing again


@dataclass
class Verdict:
    name: str
    rows: int = 0
    faults: int = 0
    lost: list[str] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    wrong_result: list[str] = field(default_factory=list)
    early: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    withdrawn_fired: list[str] = field(default_factory=list)
    miscounted: list[str] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)
    resent: int = 0
    unrecorded: int = 0
    max_requests: int = 0
    withdrawn: int = 0
    # Withdrawn rows sent anyway, legitimately: request time minus cancel time (< 0:
    # the cancel came after the request was written).
    raced: list[float] = field(default_factory=list)
    late_p50_ms: float = 0.0
    worst_late_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    injected: list[tuple[float, Fault]] = field(default_factory=list)  # (when, what)
    lines: list[str] = field(default_factory=list, repr=False)

    PROBLEMS = (
        "lost",
        "unfinished",
        "failed",
        "duplicated",
        "wrong_result",
        "early",
        "stale",
        "withdrawn_fired",
        "miscounted",
        "crashes",
    )

    def problems(self) -> dict[str, list[str]]:
        return {name: getattr(self, name) for name in self.PROBLEMS if getattr(self, name)}


# ---- reading daemon logs -------------------------------------------------------------


def events(lines: Sequence[str], name: str) -> list[tuple[float, str]]:
    """(epoch, line) of each log line of event `name` (console format: ISO time first)."""
    found = []
    for line in lines:
        words = line.split()
        if len(words) > 2 and name in words[1:3]:
            try:
                when = dt.datetime.fromisoformat(words[0]).timestamp()
            except ValueError:
                continue  # not a log line (a library's traceback)
            found.append((when, line))
    return found


def first_after(lines: Sequence[str], name: str, after: float | None) -> float | None:
    """When the first `name` at or after `after` was logged; None if none was."""
    if after is None:
        return None
    return next((t for t, _ in events(lines, name) if t >= after), None)


# ---- judging ---------------------------------------------------------------------------


def judge(
    name: str,
    faults: int,
    *,
    box: str,
    plans: Mapping[str, RowPlan],
    table_rows: Sequence[asyncpg.Record],
    requests: Sequence[RecordedRequest],
    bookings: Mapping[str, Sequence[str]],
    kills: Sequence[Kill],
    crashes: Sequence[str],
    lines: list[str],
) -> Verdict:
    """Judge every row of a run. `plans`: the rows as their writers know them (session id
    -> plan); `table_rows`: the prebookings table; `requests`: all the simulator saw
    (those to `box`'s /api/book are judged); `bookings`: the e-mails holding a place in
    each row's class (session id -> e-mails); `kills`, `crashes`: the bed's; `lines`: the
    daemons' log."""
    verdict = Verdict(name, rows=len(plans), faults=faults, crashes=list(crashes))
    verdict.lines = lines
    by_id = {r["id"]: r for r in table_rows}
    sent: dict[str, list[RecordedRequest]] = {}
    for request in requests:
        if request.path != "/api/book" or request.box != box:
            continue
        plan = plans.get(request.session_id or "")
        if plan is None or plan.email != request.email:
            verdict.wrong_result.append(f"request for no row: {request}")
            continue
        sent.setdefault(plan.session_id, []).append(request)
    lateness = []
    for plan in plans.values():
        own = sorted(sent.get(plan.session_id, []), key=lambda r: r.arrived_at)
        booked = bookings[plan.session_id]
        late = _judge_row(verdict, plan, by_id.get(plan.id), own, booked, kills)
        if late is not None:
            lateness.append(late)
    if lateness:
        verdict.late_p50_ms = statistics.median(lateness) * 1000
        verdict.worst_late_s = max(lateness)
    return verdict


def _judge_row(
    verdict: Verdict,
    plan: RowPlan,
    row: asyncpg.Record | None,
    requests: list[RecordedRequest],
    booked: Sequence[str],
    kills: Sequence[Kill],
) -> float | None:
    """Judge one row (`booked`: who holds a place in its class); returns the lateness of
    its first request (None: not judged)."""
    tag = f"{plan.id} (class {plan.session_id})"
    placed = plan.email in booked
    if len(booked) > 1:
        verdict.duplicated.append(f"{tag}: two places in one class")
    verdict.max_requests = max(verdict.max_requests, len(requests))
    status = None if row is None else row["status"]
    first = requests[0].arrived_at if requests else None
    withdrawn = plan.withdrawn_at
    if withdrawn is not None:
        verdict.withdrawn += 1
        if first is not None and first <= withdrawn + CANCEL_GRACE:
            verdict.raced.append(first - withdrawn)
        if first is not None and first > withdrawn + CANCEL_GRACE:
            verdict.withdrawn_fired.append(
                f"{tag}: written {first - withdrawn:.3f} s after it was "
                f"{'cancelled' if plan.deleted_at is None else 'deleted'}"
            )
        if plan.deleted_at is None and status != ("completed" if first else "cancelled"):
            verdict.wrong_result.append(
                f"{tag}: cancelled, {'sent' if first else 'never sent'}, status {status}"
            )
    elif first is None:
        verdict.lost.append(f"{tag}: never reached the simulator, status {status}")
    if row is not None and status not in (*FINAL, "cancelled"):
        verdict.unfinished.append(f"{tag}: {status}")
    if row is not None and status == "failed":
        verdict.failed.append(f"{tag}: {row['outcome']} ({row['error_message']})")
    if row is not None and status == "completed" and not placed:
        verdict.wrong_result.append(f"{tag}: completed ({row['outcome']}) without a place")
    if placed and row is not None and status != "completed":
        verdict.wrong_result.append(f"{tag}: holds a place but is {status}")
    if row is not None and row["attempts"] > len(requests):
        verdict.miscounted.append(f"{tag}: attempts {row['attempts']}, {len(requests)} sent")
    if row is not None:
        verdict.unrecorded += max(0, len(requests) - row["attempts"])
    _judge_resends(verdict, plan, requests, tag, kills)
    if first is None:
        return None
    if not plan.racy:
        if any(r.arrived_at < plan.available_at for r in requests) or any(
            r.answer.get("errorMssgLang") == NOT_OPEN for r in requests
        ):
            verdict.early.append(
                f"{tag}: arrived {first - plan.available_at:+.3f} s from its instant"
            )
        late = first - plan.available_at
        if late > 0.3 and any(0 <= first - old < 0.3 for old in plan.instants[:-1]):
            verdict.stale.append(f"{tag}: fired at a superseded instant, {late:.3f} s late")
    return None if withdrawn is not None else first - plan.available_at


def _judge_resends(
    verdict: Verdict,
    plan: RowPlan,
    requests: list[RecordedRequest],
    tag: str,
    kills: Sequence[Kill],
) -> None:
    if len(requests) > 1:
        verdict.resent += 1
    for before, again in itertools.pairwise(requests):
        cut = [k for k in kills if before.arrived_at < k.at < again.arrived_at]
        if not cut:
            verdict.duplicated.append(
                f"{tag}: sent at {before.arrived_at:.4f} (answered {_answered(before)}) "
                f"and again at {again.arrived_at:.4f} with no crash in between"
            )
        elif plan.id in cut[-1].known_final:
            verdict.duplicated.append(f"{tag}: sent again after its result was recorded")


def _answered(request: RecordedRequest) -> str:
    """What the simulator answered a request, in a few words (for the problem list)."""
    if request.fault is not None:
        return f"fault {request.fault}"
    return f"{request.status} {request.answer}"


# ---- the table -------------------------------------------------------------------------


COLUMNS = [
    ("scenario", "name", 11),
    ("rows", "rows", 6),
    ("faults", "faults", 6),
    ("lost", "lost", 4),
    ("dup", "duplicated", 4),
    ("wrong", "wrong_result", 5),
    ("early", "early", 5),
    ("stale", "stale", 5),
    ("cxl-fired", "withdrawn_fired", 9),
    ("failed", "failed", 6),
    ("crash", "crashes", 5),
    ("resent", "resent", 6),
    ("unrec", "unrecorded", 5),
    ("max req", "max_requests", 7),
    ("p50 late", "late_p50_ms", 9),
    ("worst late", "worst_late_s", 10),
]


def table(verdicts: Sequence[Verdict]) -> str:
    head = " ".join(f"{title:>{width}}" for title, _, width in COLUMNS)
    out = [head, "-" * len(head)]
    for v in verdicts:
        cells = []
        for _, attr, width in COLUMNS:
            value = getattr(v, attr)
            if isinstance(value, list):
                value = len(value)
            if attr == "late_p50_ms":
                value = f"{value:.1f} ms"
            elif attr == "worst_late_s":
                value = f"{value:.3f} s"
            cells.append(f"{value!s:>{width}}")
        out.append(" ".join(cells))
    return "\n".join(out)
