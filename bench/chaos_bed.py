"""The chaos bed: the simulator, a box and its members, the rows, and prebookd's
incarnations (restarted at once when killed, or when one exits by itself, as systemd
would); and the helpers the scenarios share.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import random
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg

from bench import chaos_verdict
from bench.chaos_verdict import FINAL, Kill, RowPlan, Verdict, events
from prebookd.daemon.main import SPOOL_FILE
from prebookd.daemon.spool import Spool
from prebookd.db.connection import connect
from prebookd.sim.model import SimClass
from prebookd.sim.server import Balancer, Simulator
from tests.support import DaemonProcess, add_box, add_member, start_daemon

BOX = "chaos"
DAY = "20301201"
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
        balancer: Balancer | None = None,
    ) -> None:
        self.db_dsn = db_dsn
        self.daemon_dsn = daemon_dsn or db_dsn
        self.settings = {**DAEMON_SETTINGS, **(settings or {})}
        self.others: list[DaemonProcess] = []  # more instances, not supervised
        self.state_dir = state_dir
        self.rng = rng
        self.sim = Simulator(default_capacity=1, balancer=balancer or Balancer())
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
                [utc(p.available_at) for p in chunk],
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
        """Every row judged against the simulator and the log (see chaos_verdict)."""
        crashes, lines = list(self.crashes), self.lines  # taken before the table is read
        table_rows = await self.conn.fetch("SELECT * FROM prebookings")
        return chaos_verdict.judge(
            name,
            faults,
            box=BOX,
            plans=self.plans,
            table_rows=table_rows,
            requests=self.sim.requests,
            bookings={s: self.sim.bookings(BOX, s) for s in self.plans},
            kills=self.kills,
            crashes=crashes,
            lines=lines,
        )


# ---- shared by the scenarios -----------------------------------------------------------


def utc(epoch: float) -> dt.datetime:
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


async def sleep_until(epoch: float) -> None:
    await asyncio.sleep(max(0.0, epoch - time.time()))


async def finish(b: Bed, name: str, faults: int, last_instant: float) -> Verdict:
    await sleep_until(last_instant + 1.0)
    await b.wait_settled(timeout=60)
    code = await b.stop()
    if code != 0:
        b.crashes.append(f"graceful stop exited {code}")
    return await b.judge(name, faults)


async def wait_event(b: Bed, name: str, *, after: float, timeout: float) -> float:
    """When the first `name` logged after `after` was logged (epoch seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [t for t, _ in events(b.lines, name) if t >= after]
        if found:
            return found[0]
        await asyncio.sleep(0.1)
    raise AssertionError(f"no {name} within {timeout} s:\n" + "\n".join(b.lines[-30:]))


async def held_by(b: Bed, ids: list[uuid.UUID | None], owner: str, timeout: float) -> None:
    """Until every row is leased to a process of the instance named `owner` (a lease
    owner is `name/pid/token`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        held = await b.conn.fetchval(
            "SELECT count(*) FROM prebookings WHERE id = ANY($1) "
            "AND split_part(lease_owner, '/', 1) = $2",
            ids,
            owner,
        )
        if held == len(ids):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"rows not claimed by {owner} within {timeout} s")
