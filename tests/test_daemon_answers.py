"""AimHarder's answers as its real boxes give them, met by the daemon at the instant:
a box rule refusing, a box whose clock opens late with a code nobody listed, a dead
session said as HTTP 401, a box rate-limiting us, and the waiting list by `insist`.
Daemon subprocess, simulator over loopback, Postgres."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

from prebookd.sim.server import Faults, SimClass, Simulator
from tests.support import (
    add_box,
    add_member,
    add_prebooking,
    open_class,
    running_daemon,
    wait_rows_final,
)


@pytest.fixture
async def sim(make_sim: Callable[..., Awaitable[Simulator]]) -> Simulator:
    # Cookies die after a minute; tokens live an hour: a refresh brings a cookie back.
    return await make_sim(default_capacity=100, session_max_age=60, token_max_age=3600)


def book_requests(sim: Simulator, box: str) -> list[float]:
    return [r.arrived_at for r in sim.requests if r.path == "/api/book" and r.box == box]


async def members(conn: asyncpg.Connection, sim: Simulator, box: str, n: int) -> list[str]:
    emails = [f"m{k}@{box}.test" for k in range(n)]
    for email in emails:
        await add_member(conn, sim, email)
    return emails


async def test_a_box_rule_refusing_fails_the_row_in_aimharders_words_at_once(
    conn: asyncpg.Connection, db_dsn: str, sim: Simulator, tmp_path: Path
) -> None:
    box = await add_box(conn, sim, "rules")
    sim.set_faults("rules", Faults(refusal_rate=1.0, refusal_message="Penalizado: no asististe"))
    (email,) = await members(conn, sim, "rules", 1)
    t = time.time() + 3.0
    open_class(sim, "rules", "1", t, 10)
    async with running_daemon(db_dsn, tmp_path) as daemon:
        row_id = await add_prebooking(conn, box, email, "1", t)
        (row,) = await wait_rows_final(conn, [row_id])
        assert await daemon.stop() == 0

    assert (row["status"], row["outcome"]) == ("failed", "refused")
    assert "Penalizado: no asististe" in row["error_message"]
    assert "may have gone through" not in row["error_message"]
    assert len(book_requests(sim, "rules")) <= 2


async def test_a_box_whose_clock_opens_late_with_an_unlisted_code_fills_every_place(
    conn: asyncpg.Connection, db_dsn: str, sim: Simulator, tmp_path: Path
) -> None:
    box = await add_box(conn, sim, "late")
    sim.set_faults("late", Faults(clock_behind_ms=150, not_open_code="ERROR_RESERVA_NO_DISPONIBLE"))
    emails = await members(conn, sim, "late", 4)
    t = time.time() + 3.0
    open_class(sim, "late", "1", t, 4)
    async with running_daemon(db_dsn, tmp_path) as daemon:
        ids = [await add_prebooking(conn, box, email, "1", t) for email in emails]
        rows = await wait_rows_final(conn, ids)
        assert await daemon.stop() == 0

    assert [(r["status"], r["outcome"]) for r in rows] == [("completed", "booked")] * 4
    assert sorted(sim.bookings("late", "1")) == sorted(emails)


async def test_a_dead_session_said_as_401_gets_one_refresh_one_retry_and_books(
    conn: asyncpg.Connection, db_dsn: str, sim: Simulator, tmp_path: Path
) -> None:
    box = await add_box(conn, sim, "auth")
    sim.set_faults("auth", Faults(dead_session_status=401))
    # The table says fresh, but AimHarder dropped the cookie: 401 at the instant.
    await add_member(conn, sim, "gone@x.es", issued_ago=120, refreshed_ago=0)
    t = time.time() + 3.0
    open_class(sim, "auth", "1", t, 10)
    async with running_daemon(db_dsn, tmp_path, aimharder_url=sim.base_url) as daemon:
        row_id = await add_prebooking(conn, box, "gone@x.es", "1", t)
        (row,) = await wait_rows_final(conn, [row_id])
        assert await daemon.stop() == 0

    assert (row["status"], row["outcome"], row["attempts"]) == ("completed", "booked", 2)
    statuses = [r.status for r in sim.requests if r.path == "/api/book"]
    assert statuses == [401, 200]


async def test_a_box_rate_limiting_us_is_sent_nothing_more_for_a_while(
    conn: asyncpg.Connection, db_dsn: str, sim: Simulator, tmp_path: Path
) -> None:
    box = await add_box(conn, sim, "busy")
    sim.set_faults("busy", Faults(throttled_rate=1.0))
    emails = await members(conn, sim, "busy", 3)
    first, second = time.time() + 3.0, time.time() + 4.5
    open_class(sim, "busy", "1", first, 10)
    open_class(sim, "busy", "2", second, 10)
    async with running_daemon(db_dsn, tmp_path) as daemon:
        early = [await add_prebooking(conn, box, e, "1", first) for e in emails]
        later = [await add_prebooking(conn, box, e, "2", second) for e in emails]
        rows = {r["id"]: r for r in await wait_rows_final(conn, early + later)}
        assert await daemon.stop() == 0

    # The burst at the first instant was on the wire before the first 429 came back;
    # nothing went to the box after it.
    arrivals = book_requests(sim, "busy")
    assert len(arrivals) == len(emails) and max(arrivals) < second
    for row_id in early:
        assert rows[row_id]["outcome"] == "rate_limited"
    for row_id in later:
        assert rows[row_id]["outcome"] == "rate_limited"
        assert "paused" in rows[row_id]["error_message"]
        assert rows[row_id]["attempts"] == 0
    assert daemon.events("box_paused")


async def test_insist_decides_between_full_and_the_waiting_list(
    conn: asyncpg.Connection, db_dsn: str, sim: Simulator, tmp_path: Path
) -> None:
    box = await add_box(conn, sim, "wl")
    booked, plain, insisting = await members(conn, sim, "wl", 3)
    t = time.time() + 3.0
    sim.add_class(
        "wl", SimClass(session_id="1", day="20301201", capacity=1, opens_at=t, waitlist_capacity=5)
    )
    async with running_daemon(db_dsn, tmp_path) as daemon:
        ids: dict[str, uuid.UUID] = {}
        for email, insist in ((booked, 0), (plain, 0), (insisting, 1)):
            data = {"day": "20301201", "familyId": "", "id": "1", "insist": insist}
            ids[email] = await add_prebooking(conn, box, email, "1", t, booking_data=data)
        rows = {r["id"]: r for r in await wait_rows_final(conn, list(ids.values()))}
        assert await daemon.stop() == 0

    outcome = {email: (rows[i]["status"], rows[i]["outcome"]) for email, i in ids.items()}
    assert outcome == {
        booked: ("completed", "booked"),
        plain: ("failed", "full"),
        insisting: ("completed", "waitlisted"),
    }
