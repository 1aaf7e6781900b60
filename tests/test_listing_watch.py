"""The listing watch (issue 15): hand-made rows checked against their (box, day) listing
in the simulator; a class gone or a session the box rejects warns the member once, before
the instant. In process for the rounds' counts; a daemon subprocess with a real HTTP
receiver for what a member gets."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from prebookd.aimharder.proxy import ProxiedSessions
from prebookd.daemon.listing_watch import ListingWatch
from prebookd.db import notify_store
from prebookd.db.connection import create_pool
from prebookd.settings import Settings
from prebookd.sim.server import Simulator
from tests.receivers import http_receiver
from tests.support import add_box, add_member, add_prebooking, open_class, running_daemon
from tests.test_notify_watch import wait_for_path


async def _no_wait() -> None:
    return None


def listings(sim: Simulator) -> list[str]:
    """The box of each listing request the simulator got."""
    return [r.box for r in sim.requests if r.path == "/api/bookings"]


async def channel(conn: asyncpg.Connection, email: str, url: str = "json://127.0.0.1:9/x") -> None:
    await conn.execute(
        "INSERT INTO prebookd_notify_channels (user_email, url, lang, events) "
        "VALUES ($1, $2, 'en', $3)",
        email,
        url,
        ["warning"],
    )


async def reject_session(conn: asyncpg.Connection, email: str) -> None:
    """The stored cookie is one the box does not know: its listing answers logout (the
    token is left fresh, so the keeper has no reason to refresh it)."""
    await conn.execute(
        "UPDATE auth_sessions SET aimharder_cookies = $2 WHERE user_email = $1",
        email,
        [{"name": "amhrdrauth", "value": "unknown-" + uuid.uuid4().hex}],
    )


@pytest.fixture
async def pool(db_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(db_dsn, Settings(database_url=db_dsn, db_pool_min=1, db_pool_max=4))
    try:
        yield pool
    finally:
        await pool.close()


class Recorded:
    """The watch's `warn`, through the real outbox; what it was asked, in order."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.asked: list[tuple[uuid.UUID, str]] = []
        self.new: list[tuple[uuid.UUID, str]] = []

    async def __call__(self, row: uuid.UUID, email: str, cause: str) -> bool:
        self.asked.append((row, cause))
        new = await notify_store.enqueue_row_warning(self.pool, row, cause) > 0
        if new:
            self.new.append((row, cause))
        return new


async def watching(
    pool: asyncpg.Pool, sim: Simulator, warn: Recorded, **settings: Any
) -> ListingWatch:
    chosen = Settings(
        database_url="postgresql://unused", aimharder_url=sim.base_url, box_hosts="127.0.0.1",
        **settings,
    )  # fmt: skip
    watch = ListingWatch(
        pool, lambda: chosen, next_instant=lambda: None, wait_clear=_no_wait, warn=warn
    )
    watch._http = ProxiedSessions(None, limit=2)
    return watch


async def test_one_listing_per_box_and_day_a_class_gone_warned_once(
    conn: asyncpg.Connection, pool: asyncpg.Pool, sim: Simulator
) -> None:
    box = await add_box(conn, sim, "lw")
    t = time.time() + 3600
    open_class(sim, "lw", "1", t, 10)
    for email in ("a@lw.es", "b@lw.es"):
        await add_member(conn, sim, email)
        await channel(conn, email)
    present = await add_prebooking(conn, box, "a@lw.es", "1", t)
    also_present = await add_prebooking(conn, box, "b@lw.es", "1", t + 1)
    missing = await add_prebooking(conn, box, "b@lw.es", "2", t + 2)
    other_day = await add_prebooking(conn, box, "a@lw.es", "1", t + 3, day="20301202")
    far = await add_prebooking(conn, box, "a@lw.es", "9", t + 7 * 3600)  # beyond 6 h
    warn = Recorded(pool)
    watch = await watching(pool, sim, warn)
    try:
        first = await watch.check_once()
        second = await watch.check_once()
    finally:
        assert watch._http is not None
        await watch._http.close()

    assert first == {"rows": 4, "listings": 2, "warned": 2}  # two (box, day): two requests
    assert second == {"rows": 4, "listings": 2}  # nothing new to tell
    assert listings(sim) == ["lw"] * 4
    # Class 1 is not listed on 2030-12-02: gone there too.
    assert warn.new == [(missing, "class_gone"), (other_day, "class_gone")]
    assert {row for row, _ in warn.asked}.isdisjoint({present, also_present, far})


async def test_a_session_the_box_rejects_is_warned_and_another_member_reads(
    conn: asyncpg.Connection, pool: asyncpg.Pool, sim: Simulator
) -> None:
    box = await add_box(conn, sim, "rj")
    t = time.time() + 3600
    open_class(sim, "rj", "1", t, 10)
    for email in ("dead@rj.es", "ok@rj.es"):
        await add_member(conn, sim, email)
        await channel(conn, email)
    await reject_session(conn, "dead@rj.es")
    dead_row = await add_prebooking(conn, box, "dead@rj.es", "1", t)
    await add_prebooking(conn, box, "ok@rj.es", "1", t + 1)
    warn = Recorded(pool)
    watch = await watching(pool, sim, warn)
    try:
        first = await watch.check_once()
        second = await watch.check_once()
    finally:
        assert watch._http is not None
        await watch._http.close()

    # The rejected member's own session first, then the next member's reads the day.
    assert first == {"rows": 2, "listings": 2, "warned": 1}
    assert warn.new == [(dead_row, "session_rejected")]
    assert second["listings"] >= 1 and "warned" not in second


async def test_a_box_failing_its_listing_warns_nobody_and_is_left_alone(
    conn: asyncpg.Connection, pool: asyncpg.Pool, sim: Simulator
) -> None:
    box = await add_box(conn, sim, "down")
    await add_member(conn, sim, "m@down.es")
    await channel(conn, "m@down.es")
    await add_prebooking(conn, box, "m@down.es", "1", time.time() + 3600)
    await conn.execute("UPDATE boxes SET base_url = 'http://127.0.0.1:9/down' WHERE id = $1", box)
    warn = Recorded(pool)
    watch = await watching(pool, sim, warn, listing_check_interval=600)
    try:
        first = await watch.check_once()
        second = await watch.check_once()
    finally:
        assert watch._http is not None
        await watch._http.close()

    assert first == {"rows": 1, "listings": 1, "failed": 1}
    assert second == {"rows": 1, "deferred": 1}  # backing off: no request
    assert warn.asked == []


async def test_the_daemon_warns_of_a_class_gone_and_a_session_rejected_once(
    conn: asyncpg.Connection, db_dsn: str, sim: Simulator, tmp_path: Path
) -> None:
    box = await add_box(conn, sim, "wd")
    t = time.time() + 600.0
    open_class(sim, "wd", "1", t, 10)
    open_class(sim, "wd", "2", t, 10)
    await add_member(conn, sim, "gone@wd.es")
    await add_member(conn, sim, "rejected@wd.es")
    await add_member(conn, sim, "fine@wd.es")
    await reject_session(conn, "rejected@wd.es")
    async with http_receiver() as receiver:
        for email in ("gone@wd.es", "rejected@wd.es", "fine@wd.es"):
            await channel(conn, email, receiver.url("json", email.split("@")[0]))
        gone_row = await add_prebooking(conn, box, "gone@wd.es", "2", t)
        await add_prebooking(conn, box, "rejected@wd.es", "1", t + 1)
        await add_prebooking(conn, box, "fine@wd.es", "1", t + 2)
        del sim.box("wd").classes["2"]  # the box took class 2 off its schedule
        async with running_daemon(
            db_dsn, tmp_path, aimharder_url=sim.base_url, listing_check_interval=0.3
        ) as daemon:
            (gone,) = await wait_for_path(receiver, "gone")
            (rejected,) = await wait_for_path(receiver, "rejected")
            rounds_then = len(listings(sim))
            while len(listings(sim)) < rounds_then + 4:  # noqa: ASYNC110 - two more rounds
                await asyncio.sleep(0.05)
            assert await daemon.stop() == 0

    assert gone.at < t and rejected.at < t
    assert "no longer in the box's schedule" in gone.body["message"]
    assert "The box rejects your session: log in again before" in rejected.body["message"]
    assert len(receiver.received) == 2  # once each; nothing to fine@
    (at_risk,) = [line for line in daemon.events("listing_row_at_risk") if str(gone_row) in line]
    assert "cause=class_gone" in at_risk
    assert len(daemon.events("notify_warning_queued")) == 2
    status = await conn.fetchval("SELECT status FROM prebookings WHERE id = $1", gone_row)
    assert status == "pending"  # only told


async def test_no_listing_request_within_arm_lead_before_an_instant_nor_just_after(
    conn: asyncpg.Connection, pool: asyncpg.Pool, sim: Simulator
) -> None:
    box = await add_box(conn, sim, "hot")
    await add_member(conn, sim, "m@hot.es")
    await add_prebooking(conn, box, "m@hot.es", "1", time.time() + 3600)
    now = [time.time()]
    instant: list[float | None] = [now[0] + 70.0]  # within arm_lead (60 s) + 20 s
    chosen = Settings(
        database_url="postgresql://unused", aimharder_url=sim.base_url, box_hosts="127.0.0.1"
    )
    watch = ListingWatch(
        pool,
        lambda: chosen,
        next_instant=lambda: instant[0],
        wait_clear=_no_wait,
        warn=Recorded(pool),
        clock=lambda: now[0],
    )
    watch._http = http = ProxiedSessions(None, limit=2)
    try:
        round_ = asyncio.create_task(watch.check_once())
        await asyncio.sleep(1.5)
        assert not round_.done() and listings(sim) == []
        now[0] += 72.0  # the instant passed 2 s ago (it is still the next one: in flight)
        await asyncio.sleep(1.5)
        assert not round_.done() and listings(sim) == []
        instant[0] = None  # its firing is over; 5 s after it the round goes on
        now[0] += 3.5
        done = await asyncio.wait_for(round_, timeout=5)
    finally:
        await http.close()
    assert done["listings"] == 1 and listings(sim) == ["hot"]
