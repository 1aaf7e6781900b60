"""Freed places: rows that ended "full" with `watch` set are booked, oldest first, when
members cancel; a member who cancels by hand is not booked again. The daemon as a
subprocess, real Postgres, the simulator over loopback (members cancel through its
`/api/cancelBook`, as they would on AimHarder)."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from prebookd.aimharder.classes import ClassInfo
from prebookd.daemon.watchers import Budget, WatchTiming, class_start, read_interval
from prebookd.sim.server import SimClass, Simulator
from tests.cli_support import cli
from tests.support import add_box, add_member, add_prebooking, open_class, running_daemon

BOX = "crossfit-norte"
CLASS = "9000"


async def as_member(sim: Simulator, cookie: str, path: str, form: dict[str, str]) -> Any:
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            sim.box_url(BOX) + path, data=form, headers={"Cookie": f"amhrdrauth={cookie}"}
        ) as response,
    ):
        return await response.json(content_type=None)


async def book(sim: Simulator, cookie: str) -> None:
    form = {"id": CLASS, "day": "20301201", "insist": "0", "familyId": ""}
    assert (await as_member(sim, cookie, "/api/book", form))["bookState"] == 1


async def cancel(sim: Simulator, cookie: str, email: str) -> None:
    idres = sim.reservation_id(BOX, CLASS, email)
    assert idres is not None
    form = {"id": idres, "late": "0", "familyId": ""}
    assert (await as_member(sim, cookie, "/api/cancelBook", form))["cancelState"] == 1


async def watched_row(conn: asyncpg.Connection, box: uuid.UUID, email: str) -> uuid.UUID:
    """A row that fired and heard "full", with `watch` set."""
    row_id = await add_prebooking(conn, box, email, CLASS, time.time() - 60)
    await conn.execute(
        "UPDATE prebookings SET status = 'failed', outcome = 'full', watch = true WHERE id = $1",
        row_id,
    )
    return row_id


async def wait_status(
    conn: asyncpg.Connection, ids: list[uuid.UUID], want: list[str], timeout: float = 10.0
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        rows = {
            r["id"]: r["status"]
            for r in await conn.fetch("SELECT id, status FROM prebookings WHERE id = ANY($1)", ids)
        }
        if [rows[i] for i in ids] == want:
            return
        assert time.monotonic() < deadline, f"{[rows[i] for i in ids]} != {want}"
        await asyncio.sleep(0.05)


async def test_freed_places_go_to_the_oldest_watchers_and_a_hand_cancel_is_not_undone(
    conn: asyncpg.Connection, db_dsn: str, sim: Simulator, tmp_path: Path
) -> None:
    box = await add_box(conn, sim, BOX)
    open_class(sim, BOX, CLASS, time.time() - 30, 2)
    holders = {e: await add_member(conn, sim, e) for e in ("h1@example.com", "h2@example.com")}
    for cookie in holders.values():
        await book(sim, cookie)  # the class is full
    watchers = ["w1@example.com", "w2@example.com", "w3@example.com"]
    cookies = {e: await add_member(conn, sim, e) for e in watchers}
    ids = [await watched_row(conn, box, e) for e in watchers]  # created in this order

    async with running_daemon(db_dsn, tmp_path, watch_interval=1, watch_interval_last_hour=1):
        await asyncio.sleep(1.5)  # watched: nothing free, nothing booked
        assert sim.bookings(BOX, CLASS) == list(holders)
        for email, cookie in holders.items():
            await cancel(sim, cookie, email)
        cancelled_at = time.monotonic()
        await wait_status(conn, ids, ["completed", "completed", "failed"], timeout=5)
        assert time.monotonic() - cancelled_at < 1.0 + 1.0  # within watch_interval (+ a round)
        assert sim.bookings(BOX, CLASS) == watchers[:2]
        assert await conn.fetchval("SELECT watch FROM prebookings WHERE id = $1", ids[2])

        await cancel(sim, cookies[watchers[0]], watchers[0])  # w1 changes their mind
        await wait_status(conn, ids, ["completed", "completed", "completed"], timeout=5)
        await asyncio.sleep(1.5)  # another round or two: w1 stays cancelled
        assert sim.bookings(BOX, CLASS) == watchers[1:]

    rows = {
        r["user_email"]: r
        for r in await conn.fetch("SELECT * FROM prebookings WHERE id = ANY($1)", ids)
    }
    for email in watchers:
        assert rows[email]["outcome"] == "booked"
        assert "booked when a place was freed" in rows[email]["send_note"]
        assert not rows[email]["watch"]
    booked_for = [r.email for r in sim.requests if r.path == "/api/book" and r.email in watchers]
    assert sorted(booked_for) == sorted(watchers), "one request each, none again for w1"


def test_budget_read_interval_and_class_start() -> None:
    budget = Budget(2)
    assert budget.take("b", 0.0) and budget.take("b", 1.0) and not budget.take("b", 2.0)
    assert budget.take("other", 2.0) and budget.take("b", 60.5)
    timing = WatchTiming(interval=60, interval_last_hour=15)
    assert read_interval([10_000.0], 0.0, timing) == 60
    assert read_interval([10_000.0, 3000.0], 0.0, timing) == 15
    info = ClassInfo("1", "07:00 - 08:00", "WOD", 3, 10, 0, False, False, None)
    assert class_start(info, "20301201", "Europe/Madrid") == 1922335200.0  # 06:00 UTC
    assert class_start(info, "2030-12", "Europe/Madrid") is None


async def test_add_and_rule_add_watch_set_the_column(db_dsn: str, conn: asyncpg.Connection) -> None:
    await conn.execute(
        "INSERT INTO boxes (box_id, subdomain, name, base_url, timezone) VALUES ('1234', "
        "'crossfitx', 'X', 'https://crossfitx.aimharder.com', 'Europe/Madrid')"
    )
    common = ["add", "--email", "jane@example.com", "--box", "crossfitx", "--class-id", "1",
              "--day", "20301204", "--at", "2030-12-01T06:00:00Z"]  # fmt: skip
    watched = await cli(db_dsn, *common, "--watch")
    plain = await cli(db_dsn, *common)
    assert (watched.code, plain.code) == (0, 0)
    rows = await conn.fetch("SELECT id::text, watch, watch_until FROM prebookings")
    assert {r["id"]: (r["watch"], r["watch_until"]) for r in rows} == {
        watched.out.strip(): (True, None),
        plain.out.strip(): (False, None),
    }
    rule = await cli(
        db_dsn, "rule", "add", "--email", "jane@example.com", "--box", "crossfitx",
        "--days", "mon", "--class", "07:00 WOD", "--alt", "08:00 WOD", "--watch",
    )  # fmt: skip
    assert rule.code == 0, rule
    assert await conn.fetchrow("SELECT watch, alternatives FROM prebookd_rules") == (
        True,
        ["08:00 WOD"],
    )


async def test_insist_on_a_full_class_waitlists_and_the_promotion_shows_on_the_row(
    conn: asyncpg.Connection, db_dsn: str, sim: Simulator, tmp_path: Path
) -> None:
    box = await add_box(conn, sim, BOX)
    sim.add_class(
        BOX,
        SimClass(CLASS, "20301201", capacity=1, opens_at=time.time() - 30, waitlist_capacity=2),
    )
    holder = await add_member(conn, sim, "h1@example.com")
    await book(sim, holder)  # the class is full
    await add_member(conn, sim, "w1@example.com")
    await conn.execute(
        "INSERT INTO prebookd_notify_channels (user_email, url) VALUES ($1, $2)",
        "w1@example.com",
        "json://127.0.0.1:9/hook",  # nothing listens: the messages stay in the outbox
    )
    data = {"day": "20301201", "familyId": "", "id": CLASS, "insist": 1}
    async with running_daemon(db_dsn, tmp_path, watch_interval=1, watch_interval_last_hour=1):
        row_id = await add_prebooking(
            conn, box, "w1@example.com", CLASS, time.time() + 2.5, booking_data=data
        )
        await wait_status(conn, [row_id], ["completed"], timeout=10)
        assert await conn.fetchval("SELECT outcome FROM prebookings WHERE id = $1", row_id) == (
            "waitlisted"
        )
        assert sim.waitlist(BOX, CLASS) == ["w1@example.com"]

        await cancel(sim, holder, "h1@example.com")  # the simulator promotes w1
        assert sim.bookings(BOX, CLASS) == ["w1@example.com"]
        deadline = time.monotonic() + 5
        while await conn.fetchval("SELECT outcome FROM prebookings WHERE id = $1", row_id) != (
            "booked"
        ):
            assert time.monotonic() < deadline, "the promotion never showed on the row"
            await asyncio.sleep(0.05)

    row = await conn.fetchrow("SELECT * FROM prebookings WHERE id = $1", row_id)
    assert row["status"] == "completed"
    assert "moved from the waiting list to a place" in row["send_note"]
    told = await conn.fetch(
        "SELECT payload->>'outcome' AS outcome FROM prebookd_outbox "
        "WHERE prebooking_id = $1 ORDER BY id",
        row_id,
    )
    assert [t["outcome"] for t in told] == ["waitlisted", "booked"]
