"""Chaos, fast versions (bench/chaos.py runs the long ones): prebookd SIGKILLed at random
moments, Postgres restarted, the network to Postgres cut, refused and blackholed, two
instances split by a partition, and writers changing rows while they fire. Every row
is judged against the simulator (see bench/chaos_verdict.py for what each verdict means).

Faults land at random moments; the seed is in every failure message, and
CHAOS_SEED=<seed> replays a run's choices.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import time
from pathlib import Path

import asyncpg
import pytest

from bench.chaos import run_kills, run_partition, run_pg_restarts, run_proxy
from bench.chaos_bed import BOX, Bed, bed, burst_instants, wait_event
from bench.chaos_load import run_load
from bench.chaos_verdict import Fault, RowPlan, Verdict, events, first_after
from prebookd.daemon.main import SPOOL_FILE
from prebookd.daemon.spool import Spool
from prebookd.db import store
from prebookd.db.connection import connect, create_pool
from prebookd.db.embedded import EmbeddedPostgres
from prebookd.db.store import QUERY_TIMEOUT
from prebookd.settings import Settings
from prebookd.sim.server import Faults
from tests.pgproxy import pg_proxy

pytestmark = pytest.mark.timeout(150)


@pytest.fixture
def seed() -> int:
    """Where the faults land and what the writers do; CHAOS_SEED replays a run."""
    return int(os.environ.get("CHAOS_SEED") or time.time_ns() % 1_000_000)


def assert_sound(verdict: Verdict, seed: int) -> None:
    """What a user checks after a chaos run: nothing lost, nothing booked twice, every
    row final with the truth recorded, nothing early or at a stale instant."""
    problems = verdict.problems()
    assert not problems, f"CHAOS_SEED={seed}: {problems}\nnotes: {verdict.notes}"
    assert verdict.rows > 0 and verdict.faults > 0


def assert_listener_came_back(verdict: Verdict) -> None:
    """After each fault the listener said it lost Postgres, then that it reconnected
    (and resynced), once Postgres could be reached again."""
    assert verdict.injected
    for at, fault in verdict.injected:
        what = f"{fault.kind} at +{fault.at:g} s; {verdict.notes}"
        assert first_after(verdict.lines, "listener_disconnected", at) is not None, what
        assert first_after(verdict.lines, "listener_connected", at + fault.lasts), what


async def test_proxy_passes_cuts_refuses_and_blackholes(db_dsn: str) -> None:
    async with pg_proxy(db_dsn) as proxy:
        conn = await asyncpg.connect(proxy.dsn(db_dsn))
        assert await conn.fetchval("SELECT 1") == 1
        assert proxy.cut() == 1
        with pytest.raises(asyncpg.PostgresConnectionError):
            await conn.fetchval("SELECT 1")

        proxy.refuse()
        with pytest.raises((OSError, asyncpg.PostgresError)):
            await asyncpg.connect(proxy.dsn(db_dsn), timeout=5)

        proxy.pass_()
        conn = await asyncpg.connect(proxy.dsn(db_dsn))
        proxy.blackhole()
        with pytest.raises(TimeoutError):
            await conn.fetchval("SELECT 1", timeout=0.5)
        with pytest.raises(TimeoutError):
            await asyncpg.connect(proxy.dsn(db_dsn), timeout=0.5)
        proxy.pass_()  # what was swallowed is gone: those connections are reset
        await asyncio.sleep(0.1)
        assert conn.is_closed()
        conn = await asyncpg.connect(proxy.dsn(db_dsn))
        assert await conn.fetchval("SELECT 2") == 2
        await conn.close()
        assert [what for _, what in proxy.faults] == [
            "cut 1",
            "refuse",
            "pass",
            "blackhole",
            "pass",
        ]


async def test_sigkill_at_random_moments_loses_nothing_and_books_once(
    db_dsn: str, tmp_path: Path, seed: int
) -> None:
    verdict = await run_kills(
        db_dsn, tmp_path / "state", rows=300, span=15, kills=5, rng=random.Random(seed)
    )
    assert_sound(verdict, seed)
    assert verdict.faults == 5
    # A request written but not yet recorded when the kill came is sent again after the
    # restart (AimHarder answers "already booked"): a few per kill, never more than one
    # extra request per row and kill.
    assert verdict.max_requests <= 1 + 5
    assert verdict.worst_late_s < 30, "rows due while prebookd was down fire after restart"


async def test_postgres_restarted_mid_burst_loses_nothing(
    own_postgres: EmbeddedPostgres, tmp_path: Path, seed: int
) -> None:
    verdict = await run_pg_restarts(
        own_postgres,
        own_postgres.dsn,
        tmp_path / "state",
        rows=200,
        span=18,
        restarts=2,
        down_for=6.0,  # longer than arm_lead (5 s): some rows are claimed only after it
        rng=random.Random(seed),
    )
    assert_sound(verdict, seed)
    assert verdict.max_requests == 1
    assert_listener_came_back(verdict)


async def test_connections_cut_and_refused_mid_run_lose_nothing(
    db_dsn: str, tmp_path: Path, seed: int
) -> None:
    faults = [Fault("cut", 2), Fault("cut", 5), Fault("refuse", 8, 2.0)]
    verdict = await run_proxy(
        db_dsn, tmp_path / "state", rows=200, span=15, faults=faults, rng=random.Random(seed)
    )
    assert_sound(verdict, seed)
    assert verdict.max_requests == 1
    assert_listener_came_back(verdict)


async def test_blackholed_postgres_is_noticed_and_recovered_from(
    db_dsn: str, tmp_path: Path, seed: int
) -> None:
    verdict = await run_proxy(
        db_dsn,
        tmp_path / "state",
        rows=150,
        span=24,
        faults=[Fault("blackhole", 2, 20.0)],
        rng=random.Random(seed),
    )
    assert_sound(verdict, seed)
    assert verdict.max_requests == 1
    ((blackholed_at, _),) = verdict.injected
    # The listener's health check notices within ~10 s (SELECT 1 every 5 s with a 3 s
    # timeout, then up to 2 s closing the dead connection), and it comes back (and
    # resyncs) once the network heals; rows due meanwhile fire after it.
    noticed = first_after(verdict.lines, "listener_disconnected", blackholed_at)
    assert noticed is not None and noticed - blackholed_at <= 12.0, verdict.notes
    assert_listener_came_back(verdict)
    assert verdict.worst_late_s < 20.0 + 15.0


async def test_a_statement_on_a_silent_pool_connection_gives_up_after_its_timeout(
    db_dsn: str,
) -> None:
    async with pg_proxy(db_dsn) as proxy:
        pool = await create_pool(proxy.dsn(), Settings(db_pool_min=1, db_pool_max=1))
        try:
            assert await store.rows_by_id(pool, []) == []
            proxy.blackhole()
            asked = time.monotonic()
            with pytest.raises(TimeoutError):  # the store's, or ours below
                await asyncio.wait_for(store.rows_by_id(pool, []), QUERY_TIMEOUT + 5)
            took = time.monotonic() - asked
            proxy.pass_()
            # The silent connection was closed, not put back: the next statement gets
            # a new one and is answered.
            assert await asyncio.wait_for(store.rows_by_id(pool, []), 10) == []
        finally:
            proxy.pass_()
            pool.terminate()
    assert QUERY_TIMEOUT - 1 < took < QUERY_TIMEOUT + 2, f"gave up after {took:.1f} s"


async def test_connections_over_tcp_probe_their_peer_and_give_up_on_unacked_data(
    db_dsn: str,
) -> None:
    """Keepalives notice a peer that vanished while the connection idled (and keep a
    NAT's flow alive); the user timeout aborts one whose data is never acknowledged.
    (Dropping packets for real needs root and a firewall: not done here.)"""
    async with pg_proxy(db_dsn) as proxy:  # TCP, whatever db_dsn is
        pool = await create_pool(proxy.dsn(), Settings(db_pool_min=1, db_pool_max=1))
        listener = await connect(proxy.dsn(), role="listener")
        try:
            async with pool.acquire() as pooled:
                options = [_tcp_options(pooled._con), _tcp_options(listener)]
        finally:
            await listener.close()
            await pool.close()
    for keepalive, idle, interval, count, unacked_ms in options:
        assert keepalive == 1
        assert idle + interval * count <= 30, "a dead idle connection noticed within 30 s"
        assert 0 < unacked_ms <= QUERY_TIMEOUT * 1000


def _tcp_options(conn: asyncpg.Connection) -> tuple[int, ...]:
    sock = conn._transport.get_extra_info("socket")
    return (
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
        *(
            sock.getsockopt(socket.IPPROTO_TCP, option)
            for option in (
                socket.TCP_KEEPIDLE,
                socket.TCP_KEEPINTVL,
                socket.TCP_KEEPCNT,
                socket.TCP_USER_TIMEOUT,
            )
        ),
    )


async def test_writers_insert_reschedule_cancel_while_1000_rows_fire(
    db_dsn: str, tmp_path: Path, seed: int
) -> None:
    verdict = await run_load(
        db_dsn, tmp_path / "state", rows=1000, span=18, writers=4, rate=10, rng=random.Random(seed)
    )
    assert_sound(verdict, seed)
    assert verdict.withdrawn > 0 and verdict.max_requests == 1
    assert verdict.worst_late_s < 1.0, "no row fired at a superseded instant"


@pytest.mark.xfail(
    strict=True,
    reason="trade-off, not fixed: an instance cut off from Postgres for longer than a "
    "lease still fires the rows it armed, while the instance that took them over fires "
    "them too. It cannot tell a partition from Postgres being down for everyone, when "
    "firing from memory is the promise; AimHarder answers the repeat 'already booked'",
)
async def test_partitioned_holder_does_not_fire_rows_taken_over(
    db_dsn: str, tmp_path: Path, seed: int
) -> None:
    verdict = await run_partition(
        db_dsn, tmp_path / "state", rows=10, rounds=1, rng=random.Random(seed)
    )
    assert events(verdict.lines, "lease_taken_over"), "the survivor took the rows over"
    assert_sound(verdict, seed)


async def test_listener_reconnects_promptly_after_every_cut(
    db_dsn: str, tmp_path: Path, seed: int
) -> None:
    async with (
        pg_proxy(db_dsn) as proxy,
        bed(db_dsn, tmp_path / "state", rng=random.Random(seed), daemon_dsn=proxy.dsn()) as b,
    ):
        await b.start()
        delays = []
        for _ in range(6):
            cut_at = time.time()
            proxy.cut()
            back = await wait_event(b, "listener_connected", after=cut_at, timeout=20)
            delays.append(round(back - cut_at, 1))
        # Postgres is up all along: a new row is armed and sent on time.
        proxy.cut()
        (plan,) = await b.add_rows([time.time() + 2.5])
        await b.wait_settled(timeout=20)
        verdict = await b.judge("cuts", faults=7)
    assert all(delay < 1.5 for delay in delays), f"reconnected after {delays} s"
    assert_sound(verdict, seed)
    assert verdict.worst_late_s < 0.5, f"the row inserted after the last cut: {plan}"


SHUTDOWN_BUDGET = 8.0


async def test_sigterm_while_postgres_blackholed_stops_in_time_and_truthfully(
    db_dsn: str, tmp_path: Path, seed: int
) -> None:
    state = tmp_path / "state"
    # A shutdown budget of 8 s (the unit's is 20 s, under systemd's 30 s): kept whatever
    # its length; and shorter than a statement's timeout (15 s), so the batch that hangs
    # on the silent Postgres still holds the writer when it runs out: results that came
    # meanwhile must reach the spool all the same.
    settings = {"shutdown_timeout": SHUTDOWN_BUDGET}
    async with (
        pg_proxy(db_dsn) as proxy,
        bed(db_dsn, state, rng=random.Random(seed), daemon_dsn=proxy.dsn(), settings=settings) as b,
    ):
        await b.start()
        first = time.time() + 3.0
        plans = await b.add_rows(burst_instants(first, 8, 40))  # 10 rows every 2 s
        await asyncio.sleep(first - 0.5 - time.time())
        # The first burst is armed; Postgres goes silent before it fires: it fires from
        # memory, and its results cannot be written.
        proxy.blackhole()
        await asyncio.sleep(1.5)
        asked = time.time()
        code = await b.stop()
        took = time.time() - asked
    spooled = {u.id for u in Spool(state / SPOOL_FILE).load() if u.status == "completed"}
    assert code == 0
    assert {p.id for p in plans[:10]} <= spooled, "the first burst's results wait in the spool"
    # The stop keeps to PREBOOKD_SHUTDOWN_TIMEOUT, then closes its pools (a few seconds
    # at most): with the unit's 20 s, well before systemd's TimeoutStopSec=30 would
    # SIGKILL it; and it says what it could not write.
    assert took < SHUTDOWN_BUDGET + 7.0, f"SIGTERM to exit took {took:.1f} s:\n" + "\n".join(
        b.lines[-25:]
    )
    ((_, stopped),) = events(b.lines, "daemon_stopped")
    assert "all_written=False" in stopped, f"results only in the spool: {stopped}"


async def test_a_request_written_before_a_kill_is_counted_after_the_restart(
    db_dsn: str, tmp_path: Path, seed: int
) -> None:
    async with bed(db_dsn, tmp_path / "state", rng=random.Random(seed)) as b:
        plans = await _ten_written_unanswered(b, answer_after=2.0)
        await asyncio.sleep(0.3)  # written, recorded as written (~0.1 s), not answered
        written = await b.conn.fetch(
            "SELECT status, attempts FROM prebookings WHERE id = ANY($1)", [p.id for p in plans]
        )
        verdict = await _killed_restarted_judged(b, "kill-while-answering")
        rows = await b.conn.fetch(
            "SELECT * FROM prebookings WHERE id = ANY($1)", [p.id for p in plans]
        )
    assert {(r["status"], r["attempts"]) for r in written} == {("executing", 1)}
    assert_sound(verdict, seed)
    assert verdict.resent == 10, "each was sent again after the restart, as designed"
    assert {r["attempts"] for r in rows} == {2}, "two requests each reached AimHarder"
    assert {r["status"] for r in rows} == {"completed"}


@pytest.mark.xfail(
    strict=True,
    reason="limitation: a request written within the last ~0.1 s before prebookd is "
    "killed (its `executing` is spooled 20 ms + 50 ms after the release) is sent "
    "again after the restart and not counted: attempts=1 for 2 requests; and a resent "
    "row keeps the repeat's outcome (already_booked) instead of the first's",
)
async def test_attempts_count_a_request_cut_off_by_a_kill(
    db_dsn: str, tmp_path: Path, seed: int
) -> None:
    async with bed(db_dsn, tmp_path / "state", rng=random.Random(seed)) as b:
        plans = await _ten_written_unanswered(b, answer_after=1.0)
        # All 10 written, none answered yet: nothing recorded.
        verdict = await _killed_restarted_judged(b, "kill-in-flight")
        rows = await b.conn.fetch(
            "SELECT * FROM prebookings WHERE id = ANY($1)", [p.id for p in plans]
        )
    assert_sound(verdict, seed)
    assert verdict.resent == 10, "each was sent again after the restart, as designed"
    assert {r["attempts"] for r in rows} == {2}, "two requests each reached AimHarder"
    assert {r["outcome"] for r in rows} == {"booked"}, "the first request got the place"


async def _ten_written_unanswered(b: Bed, *, answer_after: float) -> list[RowPlan]:
    """Ten rows at one instant, fired; returns once all ten requests arrived (their
    answers come `answer_after` seconds after each request)."""
    b.sim.set_faults(BOX, Faults(latency=answer_after))
    await b.start()
    instant = time.time() + 3.0
    plans = await b.add_rows([instant] * 10)
    deadline = instant + 5.0
    while len([r for r in b.sim.requests if r.path == "/api/book"]) < 10:
        assert time.time() < deadline, "the requests never arrived"
        await asyncio.sleep(0.002)
    return plans


async def _killed_restarted_judged(b: Bed, name: str) -> Verdict:
    """SIGKILL, restart at once, let every row settle, judge."""
    await b.kill_restart()
    await b.daemon.wait_for("daemon_ready", timeout=30)
    await b.wait_settled(timeout=30)
    return await b.judge(name, faults=1)
