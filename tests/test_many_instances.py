"""Two daemons on one Postgres: every row sent once, and taken over when its holder
dies. Real subprocesses, SIGKILL, the simulator over loopback."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import asyncpg

from prebookd.sim.server import Simulator
from tests.support import (
    add_box,
    add_member,
    add_prebooking,
    open_class,
    start_daemon,
    wait_rows_final,
)

LEASE = 4.0


async def test_two_instances_send_each_row_exactly_once(
    conn: asyncpg.Connection, db_dsn: str, sim: Simulator, tmp_path: Path
) -> None:
    box = await add_box(conn, sim, "box-m")
    emails = [f"twin{i:02d}@x.es" for i in range(40)]
    for email in emails:
        await add_member(conn, sim, email)
    start = time.time() + 4.0
    instants = [start + 0.5 * k for k in range(5)]  # 200 rows: 40 members x 5 instants
    for k, instant in enumerate(instants):
        open_class(sim, "box-m", f"{k}", instant, 100)
    a = await start_daemon(db_dsn, tmp_path / "a", instance_name="alpha")
    b = await start_daemon(db_dsn, tmp_path / "b", instance_name="beta")
    try:
        await asyncio.gather(a.wait_for("daemon_ready"), b.wait_for("daemon_ready"))
        ids = [
            await add_prebooking(conn, box, email, f"{k}", instant)
            for k, instant in enumerate(instants)
            for email in emails
        ]
        rows = await wait_rows_final(conn, ids, timeout=30)
        assert await a.stop() == 0
        assert await b.stop() == 0
    finally:
        await a.kill()
        await b.kill()

    sent = Counter((r.email, r.session_id) for r in sim.requests if r.path == "/api/book")
    assert len(sent) == 200 and set(sent.values()) == {1}, "each row sent exactly once"
    assert {r["outcome"] for r in rows} == {"booked"}
    assert all(r["fired_by"] in ("alpha", "beta") for r in rows)
    assert all(r["fired_by"] == r["lease_owner"] for r in rows), "only the holder fires"
    for request in sim.requests:
        assert instants[int(request.session_id or 0)] <= request.arrived_at


async def test_holder_killed_before_the_instant_the_other_takes_over(
    conn: asyncpg.Connection, db_dsn: str, sim: Simulator, tmp_path: Path
) -> None:
    box = await add_box(conn, sim, "box-k")
    emails = [f"orphan{i}@x.es" for i in range(10)]
    for email in emails:
        await add_member(conn, sim, email)
    t = time.time() + 6.0
    open_class(sim, "box-k", "1", t, 100)
    daemons = {
        name: await start_daemon(db_dsn, tmp_path / name, instance_name=name, lease_seconds=LEASE)
        for name in ("alpha", "beta")
    }
    try:
        for daemon in daemons.values():
            await daemon.wait_for("daemon_ready")
        ids = [await add_prebooking(conn, box, email, "1", t) for email in emails]
        await asyncio.sleep(t - 1.0 - time.time())
        held = dict(
            await conn.fetch("SELECT id, lease_owner FROM prebookings WHERE id = ANY($1)", ids)
        )
        assert set(held.values()) <= {"alpha", "beta"}, "every row claimed before the instant"
        # Kill whichever holds the most (rows arrive one by one: both may hold some).
        holder = Counter(held.values()).most_common(1)[0][0]
        survivor = "beta" if holder == "alpha" else "alpha"
        daemons[holder].process.kill()  # SIGKILL, 1 s before the instant
        rows = await wait_rows_final(conn, ids, timeout=LEASE + 15)
        assert await daemons[survivor].stop() == 0
    finally:
        for daemon in daemons.values():
            await daemon.kill()

    arrivals = {r.email: r for r in sim.requests if r.path == "/api/book"}
    assert len(arrivals) == len(emails) == len(sim.requests), "each sent exactly once"
    for row in rows:
        arrived = arrivals[row["user_email"]].arrived_at
        if held[row["id"]] == holder:  # orphaned: taken over within a lease
            assert t <= arrived <= t + LEASE + 1.5, "late by no more than a lease"
        else:  # the survivor's own: on time
            assert t <= arrived <= t + 0.1
    assert {r["fired_by"] for r in rows} == {survivor}
    assert {r["outcome"] for r in rows} == {"booked"}
    assert daemons[survivor].events("lease_taken_over")
