"""The daemon end to end: `prebookd run` as a subprocess, a real Postgres, the
simulator over loopback. What a member would check: booked or not, never early,
first come first served."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
import uuid
from collections import defaultdict
from pathlib import Path

import asyncpg

from prebookd.sim.server import Simulator
from tests.support import (
    add_box,
    add_member,
    add_prebooking,
    open_class,
    running_daemon,
    utc,
    wait_rows_final,
)


def arrivals_of(sim: Simulator, path: str = "/api/book") -> list:
    return sorted((r for r in sim.requests if r.path == path), key=lambda r: r.arrived_at)


async def test_bursts_fire_on_time_in_fifo_order_with_capacity(
    conn: asyncpg.Connection, db_dsn: str, sim: Simulator, tmp_path: Path
) -> None:
    box = await add_box(conn, sim, "crossfit-norte")
    members = [f"member{i:03d}@example.com" for i in range(50)]
    for email in members:
        await add_member(conn, sim, email)

    start = time.time() + 4.0
    instants = [start + 0.45 * k for k in range(8)]  # 8 instants, 25 rows each
    capacity = 15
    plan = []
    for k, instant in enumerate(instants):
        open_class(sim, "crossfit-norte", f"5000{k}", instant, capacity)
        for email in random.sample(members, 25):
            plan.append((email, f"5000{k}", instant))
    random.shuffle(plan)  # inserted in no particular order; created_at decides FIFO

    async with running_daemon(db_dsn, tmp_path) as daemon:
        ids = [await add_prebooking(conn, box, e, s, t) for e, s, t in plan]
        rows = await wait_rows_final(conn, ids, timeout=30)
        assert await daemon.stop() == 0

    by_id = {r["id"]: r for r in rows}
    book_requests = arrivals_of(sim)
    assert len(book_requests) == 200, "exactly one request per prebooking"

    # Never early: each request reached the simulator at or after its opening instant.
    opens = dict(zip([f"5000{k}" for k in range(8)], instants, strict=True))
    early = [r for r in book_requests if r.arrived_at < opens[r.session_id]]
    assert early == []

    # FIFO: per instant, arrival order at the simulator is created_at order.
    arrived = defaultdict(list)
    for r in book_requests:
        arrived[r.session_id].append(r.email)
    for session_id in opens:
        expected = [
            row["user_email"]
            for row in sorted(rows, key=lambda r: (r["created_at"], r["id"]))
            if row["booking_data"]["id"] == session_id
        ]
        assert arrived[session_id] == expected, f"FIFO broken for class {session_id}"
        # ...and the first `capacity` of them got the places.
        assert sim.bookings("crossfit-norte", session_id) == expected[:capacity]

    outcomes = defaultdict(int)
    for row in rows:
        outcomes[(row["status"], row["outcome"])] += 1
        assert row["attempts"] == 1
        assert row["fired_by"] == "test-instance"
        assert row["written_at"] >= row["available_at"]
        assert row["lateness_ms"] >= 0
        assert row["result"]["bookState"] in (1, -1)
    assert outcomes == {("completed", "booked"): 8 * capacity, ("failed", "full"): 8 * 10}
    full = [r for r in by_id.values() if r["outcome"] == "full"]
    assert all(r["error_message"] == "class full" for r in full)
    assert len(daemon.events("instant_fired")) == 8, "one summary line per instant"
    released = daemon.events("instant_released")
    assert len(released) == 8
    for line in released:
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        assert fields["rows"] == fields["warm"] == "25", "every request staged before T"


async def test_late_insert_cancel_delete_and_reschedule(
    conn: asyncpg.Connection, db_dsn: str, sim: Simulator, tmp_path: Path
) -> None:
    box = await add_box(conn, sim, "box-a")
    for email in ("late@x.es", "cancel@x.es", "delete@x.es", "move@x.es"):
        await add_member(conn, sim, email)
    t = time.time() + 3.0
    for session_id in ("1", "2", "3", "4"):
        open_class(sim, "box-a", session_id, t, 10)
    open_class(sim, "box-a", "5", t + 1.5, 10)

    async with running_daemon(db_dsn, tmp_path) as daemon:
        cancelled = await add_prebooking(conn, box, "cancel@x.es", "2", t)
        deleted = await add_prebooking(conn, box, "delete@x.es", "3", t)
        moved = await add_prebooking(conn, box, "move@x.es", "5", t)
        await asyncio.sleep(0.5)
        # Inside the staging window (3 s lead by default): requests are already built.
        await conn.execute("UPDATE prebookings SET status = 'cancelled' WHERE id = $1", cancelled)
        await conn.execute("DELETE FROM prebookings WHERE id = $1", deleted)
        await conn.execute(
            "UPDATE prebookings SET available_at = $2 WHERE id = $1", moved, utc(t + 1.5)
        )
        await asyncio.sleep(max(0.0, t - 0.3 - time.time()))
        late = await add_prebooking(conn, box, "late@x.es", "1", t)  # 300 ms before
        rows = await wait_rows_final(conn, [late, moved], timeout=15)
        await asyncio.sleep(0.3)
        assert await daemon.stop() == 0

    sent = {r.email: r for r in arrivals_of(sim)}
    assert set(sent) == {"late@x.es", "move@x.es"}, "cancelled and deleted rows are never sent"
    assert t <= sent["late@x.es"].arrived_at < t + 0.05
    assert t + 1.5 <= sent["move@x.es"].arrived_at < t + 1.55, "sent at the new instant only"
    assert {r["status"] for r in rows} == {"completed"}
    status = await conn.fetchval("SELECT status FROM prebookings WHERE id = $1", cancelled)
    assert status == "cancelled"


async def kill_listener(conn: asyncpg.Connection) -> int:
    """Terminate the daemon's LISTEN connection, once it is (re)connected."""
    for _ in range(100):
        killed: int = await conn.fetchval(
            """SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
               WHERE datname = current_database() AND application_name = 'prebookd-listener'"""
        )
        if killed:
            return killed
        await asyncio.sleep(0.05)
    return 0


async def test_listener_killed_while_rows_are_inserted(
    conn: asyncpg.Connection, db_dsn: str, sim: Simulator, tmp_path: Path
) -> None:
    box = await add_box(conn, sim, "box-b")
    emails = [f"m{i}@x.es" for i in range(20)]
    for email in emails:
        await add_member(conn, sim, email)
    t = time.time() + 5.0
    open_class(sim, "box-b", "77", t, 100)

    async with running_daemon(db_dsn, tmp_path) as daemon:
        ids = []
        for i, email in enumerate(emails):
            ids.append(await add_prebooking(conn, box, email, "77", t))
            if i in (5, 12):
                assert await kill_listener(conn) == 1, "the listener has a connection of its own"
        rows = await wait_rows_final(conn, ids, timeout=20)
        assert await daemon.stop() == 0
    assert daemon.events("listener_disconnected")
    assert {r["status"] for r in rows} == {"completed"}
    arrivals = arrivals_of(sim)
    assert sorted(r.email for r in arrivals) == sorted(emails)
    assert all(t <= r.arrived_at < t + 0.1 for r in arrivals)


async def test_bad_rows_fail_with_a_reason_and_the_daemon_goes_on(
    conn: asyncpg.Connection, db_dsn: str, sim: Simulator, tmp_path: Path
) -> None:
    box = await add_box(conn, sim, "box-c")
    await add_member(conn, sim, "good@x.es")
    t = time.time() + 3.0
    open_class(sim, "box-c", "1", t, 10)
    far_future = 253402300000.0  # year 9999
    async with running_daemon(db_dsn, tmp_path) as daemon:
        bad = {
            "missing id": await add_prebooking(
                conn, box, "good@x.es", "1", t, booking_data={"day": "20301201"}
            ),
            "no session": await add_prebooking(conn, box, "nobody@x.es", "1", t),
            "null instant": await conn.fetchval(
                """INSERT INTO prebookings (user_email, box_id, booking_data)
                   VALUES ('good@x.es', $1, '{"day":"20301201","id":"1"}') RETURNING id""",
                box,
            ),
            "absurd instant": await add_prebooking(conn, box, "good@x.es", "1", far_future),
            "long past": await add_prebooking(conn, box, "good@x.es", "1", time.time() - 3600),
        }
        good = await add_prebooking(conn, box, "good@x.es", "1", t)
        rows = await wait_rows_final(conn, [*bad.values(), good], timeout=15)
        assert await daemon.stop() == 0
    reasons = {r["id"]: r["error_message"] for r in rows}
    assert "id" in reasons[bad["missing id"]] and "booking_data" in reasons[bad["missing id"]]
    assert "no background session" in reasons[bad["no session"]]
    assert "available_at is null" in reasons[bad["null instant"]]
    assert "days ahead" in reasons[bad["absurd instant"]]
    assert "late_grace" in reasons[bad["long past"]]
    statuses = {r["id"]: r["status"] for r in rows}
    assert [statuses[i] for i in bad.values()] == ["failed"] * 5
    assert statuses[good] == "completed"
    assert len(daemon.events("prebooking_rejected")) == 5
    assert [r.email for r in arrivals_of(sim)] == ["good@x.es"]


async def test_row_armed_before_start_is_fired_after_restart(
    conn: asyncpg.Connection, db_dsn: str, sim: Simulator, tmp_path: Path
) -> None:
    """Rows written while the daemon is down are armed from the table at start."""
    box = await add_box(conn, sim, "box-d")
    await add_member(conn, sim, "early@x.es")
    t = time.time() + 4.0
    open_class(sim, "box-d", "9", t, 10)
    row = await add_prebooking(conn, box, "early@x.es", "9", t)
    async with running_daemon(db_dsn, tmp_path) as daemon:
        (final,) = await wait_rows_final(conn, [row])
        assert await daemon.stop() == 0
    assert final["status"] == "completed"
    assert final["outcome"] == "booked"
    assert 0 <= final["lateness_ms"] < 50
    assert isinstance(final["id"], uuid.UUID)


async def test_not_open_yet_is_retried_inside_the_window_and_logout_is_never_success(
    conn: asyncpg.Connection, db_dsn: str, sim: Simulator, tmp_path: Path
) -> None:
    box = await add_box(conn, sim, "box-e")
    for email in ("patient@x.es", "toosoon@x.es"):
        await add_member(conn, sim, email)
    t = time.time() + 3.0
    # The box opens 0.4 s after the instant the web app computed: retries must catch it.
    open_class(sim, "box-e", "1", t + 0.4, 10)
    # ...and this one opens only after the retry window (1 s here): a clear failure.
    open_class(sim, "box-e", "2", t + 5.0, 10)
    open_class(sim, "box-e", "3", t, 10)
    async with running_daemon(db_dsn, tmp_path, retry_window=1.0, retry_interval=0.05) as d:
        patient = await add_prebooking(conn, box, "patient@x.es", "1", t)
        too_soon = await add_prebooking(conn, box, "toosoon@x.es", "2", t)
        # A session AimHarder no longer knows: the box answers {"logout": 1}.
        await add_member(conn, sim, "dead@x.es")
        await conn.execute(
            """UPDATE auth_sessions SET aimharder_cookies = '[{"name": "amhrdrauth",
               "value": "unknown-to-aimharder"}]' WHERE user_email = 'dead@x.es'"""
        )
        dead = await add_prebooking(conn, box, "dead@x.es", "3", t)
        rows = {r["id"]: r for r in await wait_rows_final(conn, [patient, too_soon, dead])}
        assert await d.stop() == 0

    assert rows[patient]["status"] == "completed"
    assert rows[patient]["attempts"] > 1, "refused while not open, then booked"
    assert 0 <= rows[patient]["lateness_ms"] < 50, "lateness is of the first request"
    tries = [r for r in arrivals_of(sim) if r.email == "patient@x.es"]
    assert len(tries) == rows[patient]["attempts"]
    # Issue 18: "not open yet" is retried every fast_retry_interval (5 ms) for the first
    # fast_retry_window (0.2 s) after the planned time, then every retry_interval.
    gaps = [(a.arrived_at, b.arrived_at - a.arrived_at) for a, b in itertools.pairwise(tries)]
    assert all(g >= 0.005 for _, g in gaps), "fast retries keep their interval"
    assert all(g >= 0.05 for at, g in gaps if at > t + 0.25), "retries keep their interval"

    assert rows[dead]["status"] == "failed"
    assert rows[dead]["outcome"] == "session_expired"
    assert "log in again" in rows[dead]["error_message"]
    assert rows[dead]["result"] == {"logout": 1}

    assert rows[too_soon]["status"] == "failed"
    assert rows[too_soon]["outcome"] == "not_open"
    assert "still so 1 s after the instant" in rows[too_soon]["error_message"]
    assert rows[too_soon]["result"]["errorMssgLang"] == "ERROR_ANTELACION_CLIENTE"
    last_try = max(r.arrived_at for r in arrivals_of(sim) if r.email == "toosoon@x.es")
    assert last_try < t + 1.2, "no retry after the window"


async def test_burst_of_50_goes_out_on_connections_opened_before_the_instant(
    conn: asyncpg.Connection, db_dsn: str, sim: Simulator, tmp_path: Path
) -> None:
    box = await add_box(conn, sim, "box-w")
    emails = [f"warm{i:02d}@x.es" for i in range(50)]
    for email in emails:
        await add_member(conn, sim, email)
    t = time.time() + 5.0
    open_class(sim, "box-w", "50", t, 20)
    async with running_daemon(db_dsn, tmp_path) as daemon:
        ids = [await add_prebooking(conn, box, email, "50", t) for email in emails]
        await wait_rows_final(conn, ids)
        assert await daemon.stop() == 0
    burst = arrivals_of(sim)
    assert len(burst) == 50
    # The simulator's connection log: every request, the first included, came on a
    # connection accepted seconds before the instant (staging opened it), so no
    # handshake happened at the instant.
    opened = [r.connection_opened_at for r in burst]
    assert all(o is not None and o < t - 1.0 for o in opened)
    assert burst[0].connection_opened_at is not None
    assert len({r.connection_opened_at for r in burst}) == 50, "one connection per request"
