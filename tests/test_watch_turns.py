"""Freed places with more than one instance and more than one member: watch claims in
Postgres (one request per freed place, the oldest watcher's, whichever instance sees
it), each member's own view before they are booked (a class held by hand is never
booked again), and the box's cancellation cutoff. Watchers run in this process, each
with its own client as two daemons would have, against one real Postgres and the
simulator over loopback; rounds are run one by one (`watch_once`)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from structlog.testing import capture_logs

from prebookd.aimharder.client import AimHarderClient
from prebookd.daemon.watchers import Watcher, WatchTiming
from prebookd.db.connection import create_pool
from prebookd.settings import Settings
from prebookd.sim.server import SimClass, Simulator
from tests.cli_support import cli
from tests.support import add_box, add_member, add_prebooking, open_class
from tests.test_watchers import BOX, CLASS, book, cancel, watched_row

W1, W2, W3 = "w1@example.com", "w2@example.com", "w3@example.com"


@pytest.fixture
async def pool(db_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(db_dsn, Settings(database_url=db_dsn, db_pool_min=1, db_pool_max=6))
    try:
        yield pool
    finally:
        await pool.close()


async def _no_wait() -> None:
    return None


@asynccontextmanager
async def instances(pool: asyncpg.Pool, *owners: str) -> AsyncIterator[list[Watcher]]:
    """One Watcher per owner (a daemon's lease owner), each with its own client. Every
    round reads every group again (interval 0); the global cutoff is 0."""
    clients = [AimHarderClient(limit=8, limit_per_host=8, request_timeout=5) for _ in owners]
    timing = WatchTiming(interval=0.0, interval_last_hour=0.0, requests_per_minute=100, cutoff=0)
    made = [
        Watcher(pool, c, timing=timing, allowed_hosts=("127.0.0.1",), wait_clear=_no_wait, owner=o)
        for c, o in zip(clients, owners, strict=True)
    ]
    for client, watcher in zip(clients, made, strict=True):
        await client.start()
        await watcher.start()
    try:
        yield made
    finally:
        for client, watcher in zip(clients, made, strict=True):
            await watcher.close()
            await client.close()


def book_requests(sim: Simulator, since: int = 0) -> list[str]:
    return [r.email or "" for r in sim.requests[since:] if r.path == "/api/book"]


async def rows(conn: asyncpg.Connection, ids: list[uuid.UUID]) -> list[asyncpg.Record]:
    found = {
        r["id"]: r for r in await conn.fetch("SELECT * FROM prebookings WHERE id = ANY($1)", ids)
    }
    return [found[i] for i in ids]


async def test_two_instances_one_freed_place_one_request_for_the_oldest_watcher(
    conn: asyncpg.Connection, pool: asyncpg.Pool, sim: Simulator
) -> None:
    box = await add_box(conn, sim, BOX)
    open_class(sim, BOX, CLASS, time.time() - 30, 1)
    holder = await add_member(conn, sim, "h1@example.com")
    await book(sim, holder)  # full
    for email in (W1, W2, W3):
        await add_member(conn, sim, email)
    ids = [await watched_row(conn, box, e) for e in (W1, W2, W3)]  # created in this order

    async with instances(pool, "one/1/a", "two/2/b") as (one, two):
        start = len(sim.requests)
        await asyncio.gather(one.watch_once(), two.watch_once())
        assert book_requests(sim, start) == [], "nothing free, nothing sent"

        await cancel(sim, holder, "h1@example.com")  # one place frees
        before = len(sim.requests)
        await asyncio.gather(one.watch_once(), two.watch_once())
        assert book_requests(sim, before) == [W1], "one request, for the oldest watcher"
        assert sim.bookings(BOX, CLASS) == [W1]
        await asyncio.gather(one.watch_once(), two.watch_once())  # full again: nothing
        assert book_requests(sim, before) == [W1]

    assert [r["status"] for r in await rows(conn, ids)] == ["completed", "failed", "failed"]
    assert one.booked + two.booked == 1
    assert (
        await conn.fetchval("SELECT count(*) FROM prebookings WHERE watch_claim_owner IS NOT NULL")
        == 0
    )


async def test_a_claim_held_elsewhere_holds_the_class_until_it_runs_out(
    conn: asyncpg.Connection, pool: asyncpg.Pool, sim: Simulator
) -> None:
    box = await add_box(conn, sim, BOX)
    open_class(sim, BOX, CLASS, time.time() - 30, 1)  # one place free
    for email in (W1, W2):
        await add_member(conn, sim, email)
    ids = [await watched_row(conn, box, e) for e in (W1, W2)]
    # An instance that crashed while sending for the younger row: its claim lives on.
    await conn.execute(
        "UPDATE prebookings SET watch_claim_owner = 'gone/9/x', "
        "watch_claim_expires_at = now() + interval '1 minute' WHERE id = $1",
        ids[1],
    )
    async with instances(pool, "one/1/a") as (one,):
        with capture_logs() as logs:
            await one.watch_once()
        assert book_requests(sim) == [], "the class's turn is the other instance's"
        assert [e["event"] for e in logs if e["event"] == "watch_turn_held"] == ["watch_turn_held"]

        await conn.execute(
            "UPDATE prebookings SET watch_claim_expires_at = now() - interval '1 second' "
            "WHERE id = $1",
            ids[1],
        )
        await one.watch_once()
        assert book_requests(sim) == [W1], "the claim ran out: the oldest watcher goes"
    assert [r["status"] for r in await rows(conn, ids)] == ["completed", "failed"]


async def test_a_member_who_booked_by_hand_and_cancelled_by_hand_is_not_booked_again(
    conn: asyncpg.Connection, pool: asyncpg.Pool, sim: Simulator
) -> None:
    box = await add_box(conn, sim, BOX)
    open_class(sim, BOX, CLASS, time.time() - 30, 1)
    holder = await add_member(conn, sim, "h1@example.com")
    await book(sim, holder)
    await add_member(conn, sim, W1)
    b = await add_member(conn, sim, W2)
    ids = [await watched_row(conn, box, e) for e in (W1, W2)]  # A older than B
    await cancel(sim, holder, "h1@example.com")
    await book(sim, b)  # B takes the freed place by hand, before any round

    async with instances(pool, "one/1/a") as (one,):
        await one.watch_once()  # read with A's session: full, B's booking not visible
        assert (await rows(conn, ids))[1]["watch"]
        await one.watch_once()  # read with B's session (the next in turn): B holds it
        row_b = (await rows(conn, ids))[1]
        assert (row_b["status"], row_b["outcome"], row_b["watch"]) == (
            "completed",
            "already_booked",
            False,
        )
        assert "holds the class already" in row_b["send_note"]

        await cancel(sim, b, W2)  # B changes their mind: a place frees
        await one.watch_once()
        await one.watch_once()
    assert sim.bookings(BOX, CLASS) == [W1]
    assert book_requests(sim) == ["h1@example.com", W2, W1], "B's only booking: by hand"
    assert [r["outcome"] for r in await rows(conn, ids)] == ["booked", "already_booked"]


async def test_a_watcher_who_holds_the_class_is_not_sent_a_request_when_a_place_frees(
    conn: asyncpg.Connection, pool: asyncpg.Pool, sim: Simulator
) -> None:
    box = await add_box(conn, sim, BOX)
    open_class(sim, BOX, CLASS, time.time() - 30, 3)
    holders = {e: await add_member(conn, sim, e) for e in ("h1@example.com", "h2@example.com")}
    for cookie in holders.values():
        await book(sim, cookie)
    await add_member(conn, sim, W1)
    b = await add_member(conn, sim, W2)
    await book(sim, b)  # B holds the class (by hand), their row still watched
    ids = [await watched_row(conn, box, e) for e in (W1, W2)]
    for email, cookie in holders.items():
        await cancel(sim, cookie, email)  # two places free

    before = len(sim.requests)
    async with instances(pool, "one/1/a") as (one,):
        await one.watch_once()  # read with A's session; B's own view read before B's turn
    assert book_requests(sim, before) == [W1], "no request for B"
    views = [r for r in sim.requests[before:] if r.path == "/api/bookings" and r.email == W2]
    assert len(views) == 1, "B's own view was read"
    assert [(r["status"], r["outcome"]) for r in await rows(conn, ids)] == [
        ("completed", "booked"),
        ("completed", "already_booked"),
    ]
    assert sorted(sim.bookings(BOX, CLASS)) == [W1, W2]


async def test_the_boxs_cancellation_cutoff_ends_the_watch_and_is_set_and_shown_by_the_cli(
    db_dsn: str, conn: asyncpg.Connection, pool: asyncpg.Pool, sim: Simulator
) -> None:
    box = await add_box(conn, sim, BOX)
    start = dt.datetime.now(ZoneInfo("Europe/Madrid")) + dt.timedelta(hours=1)
    end = start + dt.timedelta(hours=1)
    day = start.strftime("%Y%m%d")
    times = f"{start:%H:%M} - {end:%H:%M}"
    sim.add_class(BOX, SimClass(CLASS, day, capacity=0, opens_at=time.time() - 30, time=times))
    await add_member(conn, sim, W1)
    row_id = await add_prebooking(conn, box, W1, CLASS, time.time() - 60, day=day)
    await conn.execute(
        "UPDATE prebookings SET status = 'failed', outcome = 'full', watch = true WHERE id = $1",
        row_id,
    )
    watching = "SELECT watch FROM prebookings WHERE id = $1"

    async with instances(pool, "one/1/a") as (one,):
        await one.watch_once()  # the global cutoff (0): an hour to go, still watched
        assert await conn.fetchval(watching, row_id)

        refused = await cli(db_dsn, "box", "set", BOX, "--cancel-cutoff", "soon")
        assert refused.code != 0 and "malformed cancellation cutoff 'soon'" in refused.err
        changed = await cli(db_dsn, "box", "set", BOX, "--cancel-cutoff", "2h")
        assert changed.code == 0, changed
        assert "cancel cutoff none (watch_cutoff) -> 2h" in changed.out
        listed = await cli(db_dsn, "box", "list", "--json")
        assert [b["cancel_cutoff"] for b in json.loads(listed.out)] == ["2h"]

        await one.watch_once()  # members may not cancel within 2 h: the watch ends
        assert not await conn.fetchval(watching, row_id)
        assert "watch ended" in await conn.fetchval(
            "SELECT send_note FROM prebookings WHERE id = $1", row_id
        )
    assert book_requests(sim) == []
    cleared = await cli(db_dsn, "box", "set", BOX, "--cancel-cutoff", "none")
    assert cleared.code == 0 and "2h -> none (watch_cutoff)" in cleared.out
    assert await conn.fetchval("SELECT cancel_cutoff_seconds FROM boxes") is None
