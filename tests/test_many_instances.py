"""Several daemons on one Postgres, with one instance name (the default: the host name)
as two units or a manual run beside the service would have: every row sent once, each
(box, instant) group by one process, rows taken over when their holder dies, and taken
back at once by the process restarted in its place. Real subprocesses, SIGKILL, the
simulator over loopback."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from pathlib import Path

import asyncpg

from prebookd.sim.server import Simulator
from tests.support import (
    DaemonProcess,
    add_box,
    add_member,
    add_prebooking,
    open_class,
    start_daemon,
    wait_rows_final,
)

NAME = "test-instance"  # every daemon's PREBOOKD_INSTANCE_NAME here (tests.support)
LEASE = 4.0


def pid_of(lease_owner: str) -> int:
    """The process a lease belongs to: `name/pid/token`."""
    name, pid, token = lease_owner.split("/")
    assert name == NAME and token
    return int(pid)


async def leases_of(conn: asyncpg.Connection, ids: list) -> dict:
    return dict(await conn.fetch("SELECT id, lease_owner FROM prebookings WHERE id = ANY($1)", ids))


async def wait_held_by(
    conn: asyncpg.Connection, ids: list, daemon: DaemonProcess, timeout: float = 5.0
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        owners = set((await leases_of(conn, ids)).values())
        if None not in owners and {pid_of(o) for o in owners} == {daemon.process.pid}:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"rows not all claimed by pid {daemon.process.pid}: {owners}")


async def test_two_processes_of_one_name_send_each_row_once_each_group_from_one(
    conn: asyncpg.Connection, db_dsn: str, sim: Simulator, tmp_path: Path
) -> None:
    boxes = {name: await add_box(conn, sim, name) for name in ("box-m", "box-n")}
    emails = [f"twin{i:02d}@x.es" for i in range(30)]
    for email in emails:
        await add_member(conn, sim, email)
    a = await start_daemon(db_dsn, tmp_path / "a")
    b = await start_daemon(db_dsn, tmp_path / "b")
    try:
        await asyncio.gather(a.wait_for("daemon_ready"), b.wait_for("daemon_ready"))
        # Counted from now, not from before the daemons started: on a busy machine their
        # start may take seconds, and a group whose instant passes while its rows are
        # still being inserted is no FIFO burst any more.
        start = time.time() + 4.0
        # 180 rows: 30 members x 3 instants x 2 boxes, the boxes' bursts 0.3 s apart.
        groups = {
            (name, f"{k}"): start + 0.6 * k + 0.3 * b
            for b, name in enumerate(boxes)
            for k in range(3)
        }
        for (name, session), instant in groups.items():
            open_class(sim, name, session, instant, 100)
        ids = [
            await add_prebooking(conn, boxes[name], email, session, instant)
            for (name, session), instant in groups.items()
            for email in emails
        ]
        rows = await wait_rows_final(conn, ids, timeout=30)
        assert await a.stop() == 0
        assert await b.stop() == 0
    finally:
        await a.kill()
        await b.kill()

    requests = [r for r in sim.requests if r.path == "/api/book"]
    sent = Counter((r.box, r.session_id, r.email) for r in requests)
    assert len(sent) == 180 and set(sent.values()) == {1}, "each row sent exactly once"
    assert {r["outcome"] for r in rows} == {"booked"}
    assert {r["fired_by"] for r in rows} == {NAME}
    assert {pid_of(r["lease_owner"]) for r in rows} <= {a.process.pid, b.process.pid}
    holders = defaultdict(set)
    for row in rows:
        holders[(row["box_id"], row["available_at"])].add(row["lease_owner"])
    assert len(holders) == 6 and all(len(h) == 1 for h in holders.values()), (
        "one process sends each (box, instant) group"
    )
    # FIFO across the two processes: each group reached the box in prebooked order.
    arrived = defaultdict(list)
    for request in sorted(requests, key=lambda r: r.arrived_at):
        assert groups[(request.box, request.session_id)] <= request.arrived_at
        arrived[(request.box, request.session_id)].append(request.email)
    assert all(order == emails for order in arrived.values())


async def test_holder_killed_before_the_instant_the_other_takes_over(
    conn: asyncpg.Connection, db_dsn: str, sim: Simulator, tmp_path: Path
) -> None:
    box = await add_box(conn, sim, "box-k")
    emails = [f"orphan{i}@x.es" for i in range(10)]
    for email in emails:
        await add_member(conn, sim, email)
    t = time.time() + 5.0
    open_class(sim, "box-k", "1", t, 100)
    daemons = [
        await start_daemon(db_dsn, tmp_path / name, lease_seconds=LEASE) for name in ("a", "b")
    ]
    try:
        for daemon in daemons:
            await daemon.wait_for("daemon_ready")
        ids = [await add_prebooking(conn, box, email, "1", t) for email in emails]
        await asyncio.sleep(t - 1.0 - time.time())
        held = await leases_of(conn, ids)
        assert None not in held.values(), "every row claimed before the instant"
        assert len(set(held.values())) == 1, "one process holds the whole group"
        by_pid = {d.process.pid: d for d in daemons}
        holder = by_pid.pop(pid_of(next(iter(held.values()))))
        (survivor,) = by_pid.values()
        holder.process.kill()  # SIGKILL, 1 s before the instant
        rows = await wait_rows_final(conn, ids, timeout=LEASE + 15)
        assert await survivor.stop() == 0
    finally:
        for daemon in daemons:
            await daemon.kill()

    books = [r for r in sim.requests if r.path == "/api/book"]  # not the clock probes
    arrivals = {r.email: r for r in books}
    assert len(arrivals) == len(emails) == len(books), "each sent exactly once"
    for row in rows:  # taken over within a lease (renewed up to a third of one ago)
        assert t <= arrivals[row["user_email"]].arrived_at <= t + LEASE + 1.5
    assert {pid_of(r["lease_owner"]) for r in rows} == {survivor.process.pid}
    assert {r["outcome"] for r in rows} == {"booked"}
    assert survivor.events("lease_taken_over")


async def test_a_restarted_process_takes_its_rows_back_at_once_a_live_twin_does_not(
    conn: asyncpg.Connection, db_dsn: str, sim: Simulator, tmp_path: Path
) -> None:
    long_lease = 30.0  # waiting it out would miss the instant by far
    box = await add_box(conn, sim, "box-r")
    emails = [f"restart{i}@x.es" for i in range(5)]
    for email in emails:
        await add_member(conn, sim, email)
    first = await start_daemon(db_dsn, tmp_path / "a", lease_seconds=long_lease)
    daemons = [first]
    try:
        await first.wait_for("daemon_ready")
        t = time.time() + 6.0  # two more daemons start before it: seconds on a busy machine
        open_class(sim, "box-r", "1", t, 100)
        ids = [await add_prebooking(conn, box, email, "1", t) for email in emails]
        await wait_held_by(conn, ids, first)
        twin = await start_daemon(db_dsn, tmp_path / "b", lease_seconds=long_lease)
        daemons.append(twin)
        await twin.wait_for("daemon_ready")

        await first.kill()  # SIGKILL; systemd starts it again on its state directory
        again = await start_daemon(db_dsn, tmp_path / "a", lease_seconds=long_lease)
        daemons.append(again)
        await again.wait_for("daemon_ready")
        assert time.time() < t - 1.0, "restarted with the instant still ahead"
        rows = await wait_rows_final(conn, ids, timeout=15)
        assert await again.stop() == 0
        assert await twin.stop() == 0
    finally:
        for daemon in daemons:
            await daemon.kill()

    arrivals = [r for r in sim.requests if r.path == "/api/book"]
    assert sorted(r.email for r in arrivals) == sorted(emails), "each sent exactly once"
    assert all(t <= r.arrived_at < t + 0.1 for r in arrivals), "on time, no lease waited out"
    assert {pid_of(r["lease_owner"]) for r in rows} == {again.process.pid}
    assert {r["outcome"] for r in rows} == {"booked"}
    started = await again.wait_for("daemon_starting")
    assert f"predecessor=test-instance/{first.process.pid}/" in started
