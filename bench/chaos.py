"""Chaos runs: prebookd under SIGKILLs, Postgres restarts, a broken network to Postgres,
a partition between two instances, and writers changing rows under it; every row is
judged against the simulator.

Each scenario runs `prebookd run` as a subprocess (restarted at once when killed, or
when it exits by itself, as systemd would) against a database of its own and the
simulator (in this process, on loopback), then judges every row:

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

Usage: .venv/bin/python -m bench.chaos [--quick] [--only kills,pg,proxy,partition,load]
                                      [--seed N] [--logs DIR]
Default: the long runs (about 20 minutes: 20 kills; 5 Postgres restarts; 9 proxy
faults; 5 partitions; 10,000 rows over 10 minutes with 10 writers); --quick: short
versions of each (about 4 minutes). Exits 1 when any scenario found a problem.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import itertools
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from prebookd.daemon import SPOOL_FILE
from prebookd.db import connect
from prebookd.embedded import EmbeddedPostgres, start_embedded
from prebookd.migrate import migrate
from prebookd.sim_model import RecordedRequest, SimClass
from prebookd.simulator import Simulator
from prebookd.spool import Spool
from tests.pgproxy import PgProxy, pg_proxy
from tests.support import DaemonProcess, add_box, add_member, start_daemon

BOX = "chaos"
DAY = "20301201"
FINAL = ("completed", "failed")
NOT_OPEN = "ERROR_ANTELACION_CLIENTE"
CANCEL_GRACE = 0.5  # a cancel committed this long before a request was written must win
GUARD = 2.0  # writers move a row only while both instants are this far away
BURST = 10  # rows per opening instant
# The listener's reconnect backoff tops out at 10 s, and a connect attempt into a
# blackhole takes its 10 s timeout: a run waits this long for it to come back.
LISTENER_BACK = 25.0
MAX_CRASHES = 5  # restarts after crashes before the bed gives up (systemd's start limit)
DAEMON_SETTINGS: dict[str, object] = {
    "instance_name": "chaos",
    # Claims throughout the run, not all at start: arming meets the faults too.
    "arm_lead": 5.0,
}


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


# ---- the bed: simulator, box, members, rows, and prebookd's incarnations --------------


class Bed:
    def __init__(
        self,
        db_dsn: str,
        state_dir: Path,
        *,
        rng: random.Random,
        members: int = 50,
        daemon_dsn: str | None = None,
        settings: dict[str, object] | None = None,
    ) -> None:
        self.db_dsn = db_dsn
        self.daemon_dsn = daemon_dsn or db_dsn
        self.settings = {**DAEMON_SETTINGS, **(settings or {})}
        self.others: list[DaemonProcess] = []  # more instances, not supervised
        self.state_dir = state_dir
        self.rng = rng
        self.sim = Simulator(default_capacity=1)
        self.plans: dict[str, RowPlan] = {}  # session id -> plan
        self.kills: list[Kill] = []
        self.crashes: list[str] = []
        self.incarnations: list[DaemonProcess] = []
        self._members = [f"m{i:04d}@chaos.test" for i in range(members)]
        self._box: uuid.UUID | None = None
        self._conn: asyncpg.Connection | None = None
        self._serial = 0
        self._supervisor: asyncio.Task[None] | None = None
        self._replacing = False

    @property
    def conn(self) -> asyncpg.Connection:
        assert self._conn is not None
        return self._conn

    @property
    def daemon(self) -> DaemonProcess:
        return self.incarnations[-1]

    @property
    def lines(self) -> list[str]:
        return [line for daemon in self.incarnations + self.others for line in daemon.lines]

    async def open(self) -> None:
        await self.sim.start()
        self._conn = await connect(self.db_dsn)
        self._box = await add_box(self.conn, self.sim, BOX)
        for email in self._members:
            await add_member(self.conn, self.sim, email)

    async def close(self) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
        for daemon in self.incarnations + self.others:
            await daemon.kill()
        if self._conn is not None:
            await self._conn.close()
        await self.sim.stop()

    # ---- rows --------------------------------------------------------------------

    def plan(self, instant: float) -> RowPlan:
        """A new row's plan, its class opening at `instant` (ms-rounded: no row's
        instant may differ from its class's by the table's rounding)."""
        self._serial += 1
        session_id = str(self._serial)
        instant = round(instant, 3)
        plan = RowPlan(self._members[self._serial % len(self._members)], session_id, [instant])
        self.plans[session_id] = plan
        self.sim.add_class(BOX, SimClass(session_id, DAY, capacity=1, opens_at=instant))
        return plan

    async def add_rows(
        self, instants: Sequence[float], conn: asyncpg.Connection | None = None
    ) -> list[RowPlan]:
        """INSERT rows as the web app does (created_at, status from the defaults)."""
        plans = [self.plan(t) for t in instants]
        for start in range(0, len(plans), 1000):
            chunk = plans[start : start + 1000]
            records = await (conn or self.conn).fetch(
                """INSERT INTO prebookings (user_email, box_id, booking_data, available_at)
                   SELECT e, $1, d, a FROM unnest($2::text[], $3::jsonb[], $4::timestamptz[])
                                      AS u(e, d, a)
                   RETURNING id, booking_data->>'id' AS session_id""",
                self._box,
                [p.email for p in chunk],
                [{"day": DAY, "familyId": "", "id": p.session_id, "insist": 0} for p in chunk],
                [_utc(p.available_at) for p in chunk],
            )
            for record in records:
                self.plans[record["session_id"]].id = record["id"]
        return plans

    def ids(self) -> list[uuid.UUID]:
        return [p.id for p in self.plans.values() if p.id is not None]

    async def wait_settled(self, timeout: float) -> None:
        """Until every row still in the table is final (or cancelled, if cancelled)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            left = await self.conn.fetchval(
                "SELECT count(*) FROM prebookings WHERE id = ANY($1) "
                "AND status NOT IN ('completed', 'failed', 'cancelled')",
                self.ids(),
            )
            if left == 0:
                return
            await asyncio.sleep(0.25)

    # ---- prebookd ----------------------------------------------------------------

    async def start(self, *, ready: bool = True) -> DaemonProcess:
        daemon = await start_daemon(
            self.daemon_dsn, self.state_dir, extra_env=None, **self.settings
        )
        self.incarnations.append(daemon)
        if self._supervisor is None:
            self._supervisor = asyncio.create_task(self._supervise())
        if ready:
            await daemon.wait_for("daemon_ready", timeout=60)
        return daemon

    async def start_other(self, name: str, dsn: str) -> DaemonProcess:
        """Another instance on the same table (its own state directory), ready."""
        settings = {**self.settings, "instance_name": name}
        daemon = await start_daemon(dsn, self.state_dir.parent / name, extra_env=None, **settings)
        self.others.append(daemon)
        await daemon.wait_for("daemon_ready", timeout=60)
        return daemon

    async def kill_restart(self) -> None:
        """SIGKILL, note what the table and the spool knew, start again at once."""
        self._replacing = True
        try:
            await self.daemon.kill()
            known = await self._known_final()
            self.kills.append(Kill(time.time(), known))
            await self.start(ready=False)
        finally:
            self._replacing = False

    async def stop(self) -> int:
        """SIGTERM every instance; the worst exit code."""
        self._replacing = True
        live = [d for d in self.others if d.process.returncode is None]
        codes = [await d.stop(timeout=60) for d in [self.daemon, *live]]
        return next((code for code in codes if code != 0), 0)

    async def _known_final(self) -> frozenset[uuid.UUID]:
        rows = await self.conn.fetch(
            "SELECT id FROM prebookings WHERE status IN ('completed', 'failed')"
        )
        spooled = Spool(self.state_dir / SPOOL_FILE).load()
        return frozenset([r["id"] for r in rows] + [u.id for u in spooled if u.status in FINAL])

    async def _supervise(self) -> None:
        """A daemon that exits by itself is a crash: note it and restart (systemd would),
        up to MAX_CRASHES times."""
        while len(self.crashes) < MAX_CRASHES:
            await asyncio.sleep(0.2)
            daemon = self.daemon
            if self._replacing or daemon.process.returncode is None:
                continue
            tail = " | ".join(daemon.lines[-5:])
            self.crashes.append(f"exit {daemon.process.returncode} at {time.time():.1f}: {tail}")
            await self.start(ready=False)

    # ---- judging -----------------------------------------------------------------

    async def judge(self, name: str, faults: int) -> Verdict:
        verdict = Verdict(name, rows=len(self.plans), faults=faults, crashes=list(self.crashes))
        verdict.lines = self.lines
        table = {r["id"]: r for r in await self.conn.fetch("SELECT * FROM prebookings")}
        sent: dict[str, list[RecordedRequest]] = {}
        for request in self.sim.requests:
            if request.path != "/api/book" or request.box != BOX:
                continue
            plan = self.plans.get(request.session_id or "")
            if plan is None or plan.email != request.email:
                verdict.wrong_result.append(f"request for no row: {request}")
                continue
            sent.setdefault(plan.session_id, []).append(request)
        lateness = []
        for plan in self.plans.values():
            requests = sorted(sent.get(plan.session_id, []), key=lambda r: r.arrived_at)
            late = self._judge_row(verdict, plan, table.get(plan.id), requests)
            if late is not None:
                lateness.append(late)
        if lateness:
            verdict.late_p50_ms = statistics.median(lateness) * 1000
            verdict.worst_late_s = max(lateness)
        return verdict

    def _judge_row(
        self,
        verdict: Verdict,
        plan: RowPlan,
        row: asyncpg.Record | None,
        requests: list[RecordedRequest],
    ) -> float | None:
        """Judge one row; returns the lateness of its first request (None: not judged)."""
        tag = f"{plan.id} (class {plan.session_id})"
        placed = plan.email in self.sim.bookings(BOX, plan.session_id)
        if len(self.sim.bookings(BOX, plan.session_id)) > 1:
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
        self._judge_resends(verdict, plan, requests, tag)
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
        self, verdict: Verdict, plan: RowPlan, requests: list[RecordedRequest], tag: str
    ) -> None:
        if len(requests) > 1:
            verdict.resent += 1
        for before, again in itertools.pairwise(requests):
            kills = [k for k in self.kills if before.arrived_at < k.at < again.arrived_at]
            if not kills:
                verdict.duplicated.append(
                    f"{tag}: sent at {before.arrived_at:.4f} (answered {_answered(before)}) "
                    f"and again at {again.arrived_at:.4f} with no crash in between"
                )
            elif plan.id in kills[-1].known_final:
                verdict.duplicated.append(f"{tag}: sent again after its result was recorded")


def _answered(request: RecordedRequest) -> str:
    """What the simulator answered a request, in a few words (for the problem list)."""
    if request.fault is not None:
        return f"fault {request.fault}"
    return f"{request.status} {request.answer}"


def _utc(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.UTC)


def burst_instants(start: float, span: float, rows: int, burst: int = BURST) -> list[float]:
    """`rows` rows in bursts of `burst` at evenly spaced instants over `span` seconds."""
    bursts = max(1, -(-rows // burst))
    gap = span / bursts
    return [start + gap * (k // burst) for k in range(rows)]


@contextlib.asynccontextmanager
async def bed(db_dsn: str, state_dir: Path, **kwargs: Any) -> AsyncIterator[Bed]:
    b = Bed(db_dsn, state_dir, **kwargs)
    await b.open()
    try:
        yield b
    finally:
        await b.close()


async def _sleep_until(epoch: float) -> None:
    await asyncio.sleep(max(0.0, epoch - time.time()))


async def _finish(b: Bed, name: str, faults: int, last_instant: float) -> Verdict:
    await _sleep_until(last_instant + 1.0)
    await b.wait_settled(timeout=60)
    code = await b.stop()
    if code != 0:
        b.crashes.append(f"graceful stop exited {code}")
    return await b.judge(name, faults)


# ---- scenarios -------------------------------------------------------------------------


async def run_kills(
    db_dsn: str, state_dir: Path, *, rows: int, span: float, kills: int, rng: random.Random
) -> Verdict:
    """SIGKILL at random moments while rows fire, restarted at once each time."""
    async with bed(db_dsn, state_dir, rng=rng) as b:
        await b.start()
        start = time.time() + 3.0
        await b.add_rows(burst_instants(start, span, rows))
        moments = sorted(rng.uniform(start, start + span) for _ in range(kills))
        for moment in moments:
            await _sleep_until(moment)
            await b.kill_restart()
        await b.daemon.wait_for("daemon_ready", timeout=60)
        verdict = await _finish(b, "sigkill", len(b.kills), start + span)
        recovered = len(events(b.lines, "spool_recovered"))
        verdict.notes.append(f"{recovered} of {len(b.kills)} restarts replayed the result spool")
        return verdict


async def stop_postgres(server: EmbeddedPostgres) -> None:
    await asyncio.to_thread(server._server._stop)


async def start_postgres(server: EmbeddedPostgres) -> None:
    await asyncio.to_thread(server._server.ensure_postgres_running)


async def run_pg_restarts(
    server: EmbeddedPostgres,
    db_dsn: str,
    state_dir: Path,
    *,
    rows: int,
    span: float,
    restarts: int,
    down_for: float,
    rng: random.Random,
) -> Verdict:
    """Postgres stopped (fast shutdown) and started again mid-burst, `restarts` times."""
    async with bed(db_dsn, state_dir, rng=rng) as b:
        await b.start()
        start = time.time() + 3.0
        await b.add_rows(burst_instants(start, span, rows))
        await b.conn.close()
        slot = span / restarts
        injected = []
        for k in range(restarts):
            at = start + slot * k + rng.uniform(0, max(0.0, slot - down_for))
            await _sleep_until(at)
            injected.append((time.time(), Fault("restart", at - start, down_for)))
            await stop_postgres(server)
            await asyncio.sleep(down_for)
            await start_postgres(server)
        b._conn = await connect(db_dsn)
        return await _finish_faults(b, "pg-restart", start + span, injected)


async def _finish_faults(
    b: Bed, name: str, last_instant: float, injected: list[tuple[float, Fault]]
) -> Verdict:
    """Let the listener come back after the last fault (however slowly), then judge."""
    if injected:
        healed = max(at + fault.lasts for at, fault in injected)
        await _sleep_until(healed)
        with contextlib.suppress(AssertionError):  # "never" shows in the notes
            await wait_event(b, "listener_connected", after=healed, timeout=LISTENER_BACK)
    verdict = await _finish(b, name, len(injected), last_instant)
    verdict.injected = injected
    verdict.notes += _listener_notes(verdict.lines, injected)
    return verdict


async def run_proxy(
    db_dsn: str,
    state_dir: Path,
    *,
    rows: int,
    span: float,
    faults: Sequence[Fault],
    rng: random.Random,
    name: str = "proxy",
) -> Verdict:
    """prebookd talks to Postgres through a proxy that cuts, refuses or blackholes."""
    async with (
        pg_proxy(db_dsn) as proxy,
        bed(db_dsn, state_dir, rng=rng, daemon_dsn=proxy.dsn(db_dsn)) as b,
    ):
        await b.start()
        start = time.time() + 3.0
        await b.add_rows(burst_instants(start, span, rows))
        injected = []
        for fault in sorted(faults, key=lambda f: f.at):
            await _sleep_until(start + fault.at)
            injected.append((time.time(), fault))
            await _inject(proxy, fault)
        return await _finish_faults(b, name, start + span, injected)


async def _inject(proxy: PgProxy, fault: Fault) -> None:
    if fault.kind == "cut":
        proxy.cut()
        return
    if fault.kind == "refuse":
        proxy.cut()  # what a Postgres going away does to its connections
        proxy.refuse()
    elif fault.kind == "blackhole":
        proxy.blackhole()
    else:
        raise ValueError(f"unknown fault {fault.kind!r}")
    await asyncio.sleep(fault.lasts)
    proxy.pass_()


def first_after(lines: Sequence[str], name: str, after: float | None) -> float | None:
    """When the first `name` at or after `after` was logged; None if none was."""
    if after is None:
        return None
    return next((t for t, _ in events(lines, name) if t >= after), None)


def _listener_notes(lines: list[str], injected: list[tuple[float, Fault]]) -> list[str]:
    """How long after each fault the listener noticed it, and reconnected."""
    notes = []
    for at, fault in injected:
        noticed = first_after(lines, "listener_disconnected", at)
        again = first_after(lines, "listener_connected", noticed)
        notes.append(
            f"{fault.kind} at +{fault.at:.1f} s: listener_disconnected after "
            + ("never" if noticed is None else f"{noticed - at:.1f} s")
            + ", listener_connected after "
            + ("never" if again is None else f"{again - at:.1f} s")
        )
    return notes


async def run_partition(
    db_dsn: str, state_dir: Path, *, rows: int, rounds: int, rng: random.Random
) -> Verdict:
    """Two instances; just before an instant, the one holding its rows (alpha) loses
    Postgres (blackhole) for longer than a lease, while the other (beta) still reaches
    it. Each round: alpha claims, beta starts, the partition, beta stops."""
    lease = 3.0
    arm_lead = float(str(DAEMON_SETTINGS["arm_lead"]))
    async with pg_proxy(db_dsn) as proxy:
        async with bed(
            db_dsn,
            state_dir / "alpha",
            rng=rng,
            daemon_dsn=proxy.dsn(db_dsn),
            settings={"instance_name": "alpha", "lease_seconds": lease},
        ) as b:
            await b.start()
            for _ in range(rounds):
                instant = time.time() + arm_lead + 3.0
                plans = await b.add_rows([instant] * rows)
                await _held_by(b, [p.id for p in plans], "alpha", timeout=10)
                beta = await b.start_other("beta", db_dsn)
                await _sleep_until(instant - 3.5)
                proxy.blackhole()  # alpha's last renewal: its leases end before the instant
                await _sleep_until(instant + lease + 1.0)
                healed = time.time()
                proxy.pass_()
                await wait_event(b, "listener_connected", after=healed, timeout=30)
                await b.wait_settled(timeout=30)
                await beta.stop(timeout=60)
            verdict = await _finish(b, "partition", rounds, time.time())
        verdict.notes.append(f"{len(events(verdict.lines, 'lease_taken_over'))} rows taken over")
        return verdict


async def wait_event(b: Bed, name: str, *, after: float, timeout: float) -> float:
    """When the first `name` logged after `after` was logged (epoch seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [t for t, _ in events(b.lines, name) if t >= after]
        if found:
            return found[0]
        await asyncio.sleep(0.1)
    raise AssertionError(f"no {name} within {timeout} s:\n" + "\n".join(b.lines[-30:]))


async def _held_by(b: Bed, ids: list[uuid.UUID | None], owner: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        held = await b.conn.fetchval(
            "SELECT count(*) FROM prebookings WHERE id = ANY($1) AND lease_owner = $2",
            ids,
            owner,
        )
        if held == len(ids):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"rows not claimed by {owner} within {timeout} s")


# ---- writers -------------------------------------------------------------------------


@dataclass
class Writers:
    """Web-app writers: insert, reschedule, cancel and delete rows at random while they
    fire, recording when each change committed (the judge needs it)."""

    bed: Bed
    until: float
    rate: float  # actions per second, all writers together
    count: int
    actions: dict[str, int] = field(default_factory=dict)
    _busy: set[str] = field(default_factory=set)

    async def run(self) -> None:
        await asyncio.gather(*(self._writer() for _ in range(self.count)))

    async def _writer(self) -> None:
        rng = random.Random(self.bed.rng.random())
        conn = await connect(self.bed.db_dsn)
        try:
            max_actions = int((self.until - time.time()) * self.rate / self.count * 2) + 1
            for _ in range(max_actions):  # bounded in count, and in time below
                await asyncio.sleep(rng.expovariate(self.rate / self.count))
                if time.time() >= self.until:
                    break
                kind = rng.choices(["insert", "reschedule", "cancel", "delete"], [3, 3, 2, 2])[0]
                done = await getattr(self, f"_{kind}")(conn, rng)
                key = kind if done else f"{kind} (no-op)"
                self.actions[key] = self.actions.get(key, 0) + 1
        finally:
            await conn.close()

    def _pick(self, rng: random.Random, low: float, high: float) -> RowPlan | None:
        now = time.time()
        choices = [
            p
            for p in self.bed.plans.values()
            if p.id is not None
            and p.withdrawn_at is None
            and p.session_id not in self._busy
            and now + low <= p.available_at <= now + high
        ]
        return rng.choice(choices) if choices else None

    async def _insert(self, conn: asyncpg.Connection, rng: random.Random) -> bool:
        if self.until - time.time() < GUARD + 0.5:
            return False
        await self.bed.add_rows([rng.uniform(time.time() + GUARD, self.until)], conn)
        return True

    async def _reschedule(self, conn: asyncpg.Connection, rng: random.Random) -> bool:
        plan = self._pick(rng, GUARD + 0.5, 3600)
        if plan is None or self.until - time.time() < GUARD + 0.5:
            return False
        new = round(rng.uniform(time.time() + GUARD, self.until), 3)
        if any(abs(new - old) < GUARD for old in plan.instants):
            return False  # too close to an instant it had: the judge could not tell them apart
        self._busy.add(plan.session_id)
        try:
            sent = time.time()
            moved = await conn.fetchval(
                "UPDATE prebookings SET available_at = $2 WHERE id = $1 "
                "AND status IN ('pending', 'loaded') RETURNING id",
                plan.id,
                _utc(new),
            )
            if moved is None:
                return False
            done = time.time()
            plan.racy |= done - sent > 0.5 or done > min(plan.available_at, new) - 1.0
            plan.instants.append(new)
            cls = self.bed.sim.box(BOX).classes[plan.session_id]
            self.bed.sim.add_class(BOX, dataclasses.replace(cls, opens_at=new))
            return True
        finally:
            self._busy.discard(plan.session_id)

    async def _cancel(self, conn: asyncpg.Connection, rng: random.Random) -> bool:
        return await self._withdraw(conn, rng, "cancel")

    async def _delete(self, conn: asyncpg.Connection, rng: random.Random) -> bool:
        return await self._withdraw(conn, rng, "delete")

    async def _withdraw(self, conn: asyncpg.Connection, rng: random.Random, how: str) -> bool:
        # Near the instant on purpose: some cancels race the request.
        plan = self._pick(rng, -0.3, 6.0)
        if plan is None:
            return False
        self._busy.add(plan.session_id)
        try:
            if how == "cancel":
                sql = "UPDATE prebookings SET status = 'cancelled' WHERE id = $1 "
            else:
                sql = "DELETE FROM prebookings WHERE id = $1 "
            sql += "AND status IN ('pending', 'loaded') RETURNING id"
            if await conn.fetchval(sql, plan.id) is None:
                return False  # already executing or final: the web app no longer cancels it
            if how == "cancel":
                plan.cancelled_at = time.time()
            else:
                plan.deleted_at = time.time()
            return True
        finally:
            self._busy.discard(plan.session_id)


async def run_load(
    db_dsn: str,
    state_dir: Path,
    *,
    rows: int,
    span: float,
    writers: int,
    rate: float,
    rng: random.Random,
) -> Verdict:
    """`rows` prebookings over `span` seconds while writers change rows under prebookd."""
    async with bed(db_dsn, state_dir, rng=rng, members=200) as b:
        await b.start()
        start = time.time() + 4.0
        await b.add_rows(burst_instants(start, span, rows))
        team = Writers(b, until=start + span, rate=rate, count=writers)
        await team.run()
        changes = sum(n for kind, n in team.actions.items() if "no-op" not in kind)
        verdict = await _finish(b, "load", changes, start + span)
        verdict.notes.append(
            "writers: " + ", ".join(f"{k} {v}" for k, v in sorted(team.actions.items()))
        )
        before = sum(1 for lag in verdict.raced if lag < 0)
        after = [lag for lag in verdict.raced if lag >= 0]
        verdict.notes.append(
            f"{verdict.withdrawn} rows cancelled or deleted: {before} once their request "
            f"was written (it stands), {len(after)} under {CANCEL_GRACE:g} s before it "
            f"was written (at most {max(after, default=0) * 1000:.0f} ms), "
            f"{verdict.withdrawn - len(verdict.raced)} never sent"
        )
        racy = sum(1 for p in b.plans.values() if p.racy)
        if racy:
            verdict.notes.append(f"{racy} reschedules too slow to judge their instant")
        return verdict


# ---- the script ------------------------------------------------------------------------


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


async def _fresh_database(server: EmbeddedPostgres, name: str) -> str:
    database = f"chaos_{name.replace('-', '_')}_{uuid.uuid4().hex[:6]}"
    admin = await connect(server.dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{database}"')
    finally:
        await admin.close()
    dsn = urlsplit(server.dsn)._replace(path=f"/{database}").geturl()
    conn = await connect(dsn)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    return dsn


SCENARIOS = ("kills", "pg", "proxy", "partition", "load")


async def main_async(args: argparse.Namespace) -> list[Verdict]:
    rng = random.Random(args.seed)
    quick = args.quick
    work = Path(tempfile.mkdtemp(prefix="prebookd-chaos-"))
    server = await asyncio.to_thread(start_embedded, work)
    verdicts = []
    try:
        for name in args.only:
            state = work / name
            dsn = await _fresh_database(server, name)
            print(f"--- {name} ...", file=sys.stderr, flush=True)
            if name == "kills":
                verdict = await run_kills(
                    dsn, state, rows=300 if quick else 1000, span=15 if quick else 60,
                    kills=5 if quick else 20, rng=rng,
                )  # fmt: skip
            elif name == "pg":
                verdict = await run_pg_restarts(
                    server, dsn, state, rows=200 if quick else 1000, span=18 if quick else 75,
                    restarts=2 if quick else 5, down_for=6.0 if quick else 8.0, rng=rng,
                )  # fmt: skip
            elif name == "proxy":
                verdict = await run_proxy(dsn, state, rng=rng, **_proxy_plan(quick))
            elif name == "partition":
                verdict = await run_partition(
                    dsn, state, rows=10 if quick else 50, rounds=1 if quick else 5, rng=rng
                )
            elif name == "load":
                verdict = await run_load(
                    dsn, state, rows=1000 if quick else 10_000, span=30 if quick else 600,
                    writers=4 if quick else 10, rate=10 if quick else 5, rng=rng,
                )  # fmt: skip
            else:
                raise ValueError(f"unknown scenario {name!r}")
            verdicts.append(verdict)
            if args.logs is not None:
                args.logs.mkdir(parents=True, exist_ok=True)
                (args.logs / f"{name}.log").write_text("\n".join(verdict.lines) + "\n")
            print(table([verdict]).splitlines()[-1], file=sys.stderr, flush=True)
    finally:
        await asyncio.to_thread(server._server.ensure_postgres_running)
        await asyncio.to_thread(server.stop)
        shutil.rmtree(work, ignore_errors=True)
    return verdicts


def _proxy_plan(quick: bool) -> dict[str, Any]:
    if quick:
        faults = [Fault("cut", 2), Fault("refuse", 5, 2), Fault("blackhole", 9, 17)]
        return {"rows": 200, "span": 30, "faults": faults}
    faults = [Fault("cut", 5 + 10 * k) for k in range(5)]
    faults += [Fault("refuse", 60, 3), Fault("refuse", 75, 8)]
    faults += [Fault("blackhole", 90, 12), Fault("blackhole", 115, 20)]
    return {"rows": 1000, "span": 150, "faults": faults}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs (a few minutes)")
    parser.add_argument(
        "--only",
        type=lambda s: s.split(","),
        default=list(SCENARIOS),
        help="comma-separated scenarios: kills,pg,proxy,partition,load",
    )
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--logs", type=Path, help="write each scenario's daemon log here")
    args = parser.parse_args()
    unknown = set(args.only) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}; known: {', '.join(SCENARIOS)}")
    print(f"seed {args.seed}", file=sys.stderr)
    verdicts = asyncio.run(main_async(args))
    print(table(verdicts))
    bad = False
    for verdict in verdicts:
        for note in verdict.notes:
            print(f"{verdict.name}: {note}")
        for problem, items in verdict.problems().items():
            bad = True
            print(f"{verdict.name}: {problem} ({len(items)}):")
            for item in items[:10]:
                print(f"    {item}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
