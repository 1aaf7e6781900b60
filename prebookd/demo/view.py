"""The pure side of `prebookd demo`: the scenario it plays, what happened at each
instant, and the text it shows (countdown, a table per instant, summaries).

Nothing here waits, queries or sends: prebookd/demo.py does that and hands over what
the table and the simulator recorded.
"""

from __future__ import annotations

import datetime as dt
import math
import random
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from prebookd.errors import UsageError
from prebookd.log import mask_email
from prebookd.sim.model import RecordedRequest

# --- the scenario ---------------------------------------------------------------------

# The daemon builds each request and opens its connection this long before the
# instant (its default PREBOOKD_STAGE_LEAD); a shorter lead would show it short of that.
MIN_LEAD = 3.0
MAX_LEAD = 300.0
MAX_MEMBERS = 100  # a demo, not a load test: bench/precision.py goes bigger

# First names whose first two letters differ, times a few domains, so that the masked
# e-mails (`an***@demo.test`) still tell members apart.
# fmt: off
NAMES = (
    "ana", "bruno", "carla", "diego", "elena", "fabio", "gloria", "hugo", "irene", "javier",
    "karim", "lucia", "marcos", "nuria", "oscar", "paula", "quim", "raul", "sara", "tomas",
    "ursula", "victor", "wendy", "ximena", "yolanda", "zoe", "alba", "beatriz", "cristina",
    "dolores", "eva", "felipe", "gabriel", "helena", "ines", "jorge", "kevin", "laura",
    "miguel", "nerea", "olga", "pedro", "rocio", "sergio", "teresa", "unai", "vera", "yago",
)
# fmt: on
DOMAINS = ("demo.test", "mail.test", "correo.test")


@dataclass(frozen=True)
class DemoClass:
    session_id: str  # AimHarder's session id, as booking_data.id
    name: str
    offset: float  # seconds after the first instant
    places: int
    waitlist: int  # places on the waiting list once the class is full


@dataclass(frozen=True)
class Scenario:
    members: tuple[str, ...]
    classes: tuple[DemoClass, ...]
    # (e-mail, session id) in the order the web app writes them: created_at order.
    prebookings: tuple[tuple[str, str], ...]
    lead: float  # seconds from "everything is ready" to the first instant

    def prebooked(self, session_id: str) -> int:
        return sum(1 for _, sid in self.prebookings if sid == session_id)


def build_scenario(members: int, places: int, lead: float, rng: random.Random) -> Scenario:
    """The classes and who prebooked what, in which order; refuses values that would
    not show anything (a class that cannot fill up, a lead the daemon cannot meet)."""
    if not 2 <= members <= MAX_MEMBERS:
        raise UsageError(f"--members must be between 2 and {MAX_MEMBERS}, not {members}")
    if not 1 <= places < members:
        raise UsageError(
            f"--places must be between 1 and {members - 1} (fewer than --members, so that "
            f"the class fills up), not {places}"
        )
    if not (math.isfinite(lead) and MIN_LEAD <= lead <= MAX_LEAD):
        raise UsageError(
            f"--lead must be between {MIN_LEAD:g} and {MAX_LEAD:g} seconds, not {lead:g}: "
            f"the daemon prepares each request {MIN_LEAD:g} s before the instant"
        )
    emails = tuple(f"{NAMES[i % len(NAMES)]}@{DOMAINS[i // len(NAMES)]}" for i in range(members))
    second = min(4, members)
    classes = (
        DemoClass("1401", "WOD 07:00", 0.0, places, 0),
        DemoClass("1402", "Open Box 08:00", 3.0, max(1, second // 2), 1),
        DemoClass("1403", "Gymnastics 09:00", 6.0, 1, 0),
    )
    plan = [(email, classes[0].session_id) for email in emails]
    plan += [(email, classes[1].session_id) for email in rng.sample(emails, second)]
    plan += [(email, classes[2].session_id) for email in rng.sample(emails, min(3, members))]
    # Shuffled, so the prebooked order is visibly neither alphabetical nor by class.
    rng.shuffle(plan)
    return Scenario(emails, classes, tuple(plan), lead)


# --- what happened at an instant ------------------------------------------------------


@dataclass(frozen=True)
class Line:
    """One prebooking of one instant, as the table shows it."""

    member: str  # masked e-mail
    prebooked: int  # 1..n by created_at
    written_ms: float | None  # when prebookd wrote the request, after the instant
    arrived: int | None  # 1..n by first arrival at the simulator; None: never arrived
    arrived_ms: float | None
    outcome: str


@dataclass(frozen=True)
class InstantReport:
    title: str
    instant: float
    places: int
    lines: tuple[Line, ...]
    early: int  # booking requests that reached the simulator before the instant
    final: bool  # every row completed or failed

    @property
    def outcomes(self) -> Counter[str]:
        return Counter(line.outcome for line in self.lines)

    @property
    def fifo_held(self) -> bool:
        # Lines are in prebooked order: FIFO held when arrivals are in that order too.
        arrived = [line.arrived for line in self.lines if line.arrived is not None]
        return len(arrived) == len(self.lines) and arrived == sorted(arrived)

    @property
    def written_ms(self) -> list[float]:
        return [line.written_ms for line in self.lines if line.written_ms is not None]

    @property
    def arrived_ms(self) -> list[float]:
        return [line.arrived_ms for line in self.lines if line.arrived_ms is not None]

    @property
    def ok(self) -> bool:
        return self.final and self.fifo_held and self.early == 0


def build_report(
    title: str,
    instant: float,
    places: int,
    rows: Sequence[Mapping[str, Any]],
    requests: Sequence[RecordedRequest],
) -> InstantReport:
    """`rows`: the class's prebookings ordered by (created_at, id); `requests`: the
    booking requests the simulator recorded for the class."""
    first_arrival: dict[str, RecordedRequest] = {}
    for request in sorted(requests, key=lambda r: r.arrived_at):
        # A retried member counts once, at its first request: that is its place in line.
        if request.email is not None:
            first_arrival.setdefault(request.email, request)
    rank = {email: n for n, email in enumerate(first_arrival, start=1)}
    early = sum(1 for r in requests if r.arrived_at < instant)
    lines = []
    for prebooked, row in enumerate(rows, start=1):
        email = row["user_email"]
        arrival = first_arrival.get(email)
        lines.append(
            Line(
                member=mask_email(email),
                prebooked=prebooked,
                written_ms=row["lateness_ms"],
                arrived=rank.get(email),
                arrived_ms=None if arrival is None else (arrival.arrived_at - instant) * 1000,
                outcome=row["outcome"] or row["status"] or "?",
            )
        )
    final = all(row["status"] in ("completed", "failed") for row in rows)
    return InstantReport(title, instant, places, tuple(lines), early, final)


# --- text -----------------------------------------------------------------------------


def clock_time(epoch: float) -> str:
    """Local wall-clock time to the millisecond: 12:00:08.000."""
    return dt.datetime.fromtimestamp(epoch).strftime("%H:%M:%S.%f")[:-3]


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"


_COLUMNS = ("member", "prebooked #", "written (ms)", "arrival #", "arrival (ms)", "outcome")
_WIDTHS = (20, 11, 12, 9, 12, 0)


def _row(cells: Sequence[str]) -> str:
    first, *numbers, last = cells
    text = f"  {first:<{_WIDTHS[0]}}"
    for cell, width in zip(numbers, _WIDTHS[1:-1], strict=True):
        text += f"  {cell:>{width}}"
    return f"{text}  {last}"


def render_plan(scenario: Scenario, instants: Mapping[str, float]) -> str:
    """What was prebooked: one line per class, with its instant and its places."""
    out = [f"prebooked  {len(scenario.prebookings)} rows, by plain INSERT as the web app does:"]
    for cls in scenario.classes:
        room = f"{cls.places} place{'s' if cls.places != 1 else ''}"
        room += f" + {cls.waitlist} on the waiting list" if cls.waitlist else ""
        opens = clock_time(instants[cls.session_id])
        prebooked = scenario.prebooked(cls.session_id)
        out.append(f"  {cls.name:<18} opens {opens}  {room:<32} {prebooked} prebooked")
    return "\n".join(out) + "\n"


def render_table(report: InstantReport) -> str:
    plural = "s" if report.places != 1 else ""
    header = _row(_COLUMNS)
    out = [
        f"{report.title}: opened at {clock_time(report.instant)}, {report.places} place{plural}, "
        f"{len(report.lines)} prebooked; ms after the instant",
        header,
        "  " + "-" * (len(header) - 2),
    ]
    for line in report.lines:
        arrived = "-" if line.arrived is None else str(line.arrived)
        out.append(
            _row(
                (
                    line.member,
                    str(line.prebooked),
                    _ms(line.written_ms),
                    arrived,
                    _ms(line.arrived_ms),
                    line.outcome,
                )
            )
        )
    return "\n".join(out)


def _count_words(counts: Counter[str]) -> str:
    order = ["booked", "waitlisted", "full"]
    names = order + sorted(set(counts) - set(order))
    return ", ".join(f"{counts[name]} {name}" for name in names if counts[name])


def _spread(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"p50 {statistics.median(values):+.2f} ms, max {max(values):+.2f} ms"


def render_summary(report: InstantReport) -> str:
    text = (
        f"  => {len(report.lines)} requests: {_count_words(report.outcomes)}; "
        f"written {_spread(report.written_ms)}; arrived {_spread(report.arrived_ms)}; "
        f"FIFO held: {'yes' if report.fifo_held else 'NO'}; early requests: {report.early}"
    )
    if not report.final:
        text += "; NOT FINISHED (some rows never got an answer)"
    return text


def render_final(reports: Sequence[InstantReport]) -> str:
    total: Counter[str] = Counter()
    for report in reports:
        total.update(report.outcomes)
    written = [v for r in reports for v in r.written_ms]
    arrived = [v for r in reports for v in r.arrived_ms]
    fifo = all(r.fifo_held for r in reports)
    worst = (
        f"worst lateness {max(written):+.2f} ms written, {max(arrived):+.2f} ms arrived"
        if written and arrived
        else "no request measured"
    )
    return (
        f"summary: {len(reports)} instants, {sum(total.values())} prebookings "
        f"({_count_words(total)}); {worst}; FIFO held "
        f"{'at every instant' if fifo else 'NOT at every instant'}; "
        f"{sum(r.early for r in reports)} early requests"
    )


class Countdown:
    """The wait for an instant on one line: rewritten in place with `\\r` on a terminal,
    one plain line a second otherwise (a log or a pipe would fill with `\\r` frames)."""

    def __init__(self, out: TextIO, tty: bool) -> None:
        self._out = out
        self._tty = tty
        self._last_second: int | None = None

    def show(self, title: str, remaining: float, claimed: int, total: int) -> None:
        armed = f"daemon has claimed {claimed}/{total}"
        if self._tty:
            text = f"  {title} opens in {max(remaining, 0.0):4.1f} s   ({armed})"
            self._out.write("\r" + text + "\x1b[K")
            self._out.flush()
            return
        second = int(remaining) + 1  # ceil for positive values: "opens in 4 s" until 3.0
        if second != self._last_second and remaining > 0:
            self._last_second = second
            self._out.write(f"  {title} opens in {second} s ({armed})\n")
            self._out.flush()

    def done(self) -> None:
        if self._tty:
            self._out.write("\r\x1b[K")
            self._out.flush()
        self._last_second = None
