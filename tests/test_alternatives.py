"""Second chances at the instant: a row's alternatives (backup classes) are tried, in
order, when the choice before answers "full": each staged before the instant at a gate
of its own, written right after the "full" answer, never before the instant; FIFO
among members holds for first choices. The daemon as a subprocess, real Postgres, the
simulator over loopback."""

from __future__ import annotations

import json
import re
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

from prebookd.daemon.plan import class_labels, decide, place
from prebookd.errors import BadRow
from prebookd.models import parse_alternatives
from prebookd.notify.messages import render
from prebookd.sim.model import Balancer
from prebookd.sim.server import Simulator
from tests.support import (
    add_box,
    add_member,
    add_prebooking,
    open_class,
    running_daemon,
    wait_rows_final,
)
from tests.test_plan import HORIZON, listed, rule, utc

BOX = "crossfit-norte"


def choice(session_id: str, insist: int = 0) -> dict[str, object]:
    return {"id": session_id, "day": "20301201", "familyId": "", "insist": insist}


async def add_with_alternatives(
    conn: asyncpg.Connection,
    box: object,
    email: str,
    first: str,
    instant: float,
    alternatives: list[dict[str, object]],
) -> object:
    row_id = await add_prebooking(conn, box, email, first, instant)  # type: ignore[arg-type]
    await conn.execute(
        "UPDATE prebookings SET alternatives = $2 WHERE id = $1", row_id, alternatives
    )
    return row_id


async def test_twenty_members_ten_places_the_next_ten_get_the_alternative(
    conn: asyncpg.Connection, db_dsn: str, sim: Simulator, tmp_path: Path
) -> None:
    box = await add_box(conn, sim, BOX)
    members = [f"member{i:02d}@example.com" for i in range(20)]
    for email in members:
        await add_member(conn, sim, email)
        await conn.execute(  # nothing listens there: the message stays in the outbox
            "INSERT INTO prebookd_notify_channels (user_email, url) VALUES ($1, $2)",
            email,
            "json://127.0.0.1:9/hook",
        )
    instant = time.time() + 5.0
    open_class(sim, BOX, "7000", instant, 10)  # the first choice: 10 places
    open_class(sim, BOX, "8000", instant, 10)  # everyone's backup: 10 places

    # aim=send: on a loaded machine the clock probes of this loopback box can be off by
    # more than aim_margin, and first requests then meet "not open yet"; what that does
    # to backups is an open problem (the closing note of this session), not this test's.
    async with running_daemon(db_dsn, tmp_path, aim="send") as daemon:
        ids = [
            await add_with_alternatives(conn, box, e, "7000", instant, [choice("8000")])
            for e in members
        ]
        rows = await wait_rows_final(conn, ids, timeout=30)  # type: ignore[arg-type]
        assert await daemon.stop() == 0

    fifo = [r["user_email"] for r in sorted(rows, key=lambda r: (r["created_at"], r["id"]))]
    assert sim.bookings(BOX, "7000") == fifo[:10]
    assert sorted(sim.bookings(BOX, "8000")) == sorted(fifo[10:])
    by_email = {r["user_email"]: r for r in rows}
    for email in fifo[:10]:
        row = by_email[email]
        assert (row["status"], row["outcome"], row["booked_choice"]) == ("completed", "booked", 0)
    for email in fifo[10:]:
        row = by_email[email]
        assert (row["status"], row["outcome"], row["booked_choice"]) == ("completed", "booked", 1)
        assert row["attempts"] == 2
        assert "first choice: class full" in row["send_note"]

    # The member's message names the class booked: the alternative, for the last ten.
    payloads = {
        r["user_email"]: json.loads(r["payload"])
        for r in await conn.fetch(
            "SELECT p.user_email, o.payload::text FROM prebookd_outbox o "
            "JOIN prebookings p ON p.id = o.prebooking_id WHERE o.event = 'outcome'"
        )
    }
    assert {e: (p["class_id"], p["choice"]) for e, p in payloads.items()} == {
        e: ("7000", 0) if k < 10 else ("8000", 1) for k, e in enumerate(fifo)
    }
    rendered = render("outcome", payloads[fifo[15]], "en")
    assert "class 8000" in rendered.body and "Alternative 1" in rendered.body

    requests = [r for r in sim.requests if r.path == "/api/book"]
    assert len(requests) == 30, "one request per first choice, one per alternative needed"
    assert all(r.arrived_at >= instant for r in requests), "no request before the instant"
    # FIFO for first choices: the class's requests arrived in created_at order.
    first = sorted((r for r in requests if r.session_id == "7000"), key=lambda r: r.arrived_at)
    assert [r.email for r in first] == fifo

    # The booking_sent line of a row booked on its backup names that class and says so.
    for k, email in enumerate(fifo):
        row_id = by_email[email]["id"]
        (told,) = [x for x in daemon.events("booking_sent") if f"prebooking_id={row_id}" in x]
        booked = re.search(r"\bclass=\W?class (\d+) on 2030-12-01", told)
        assert booked is not None and booked[1] == ("7000" if k < 10 else "8000"), told
        backup = re.search(r"\bbackup_for=\W?class 7000 on 2030-12-01", told)
        assert (backup is not None, "choice=1" in told.split()) == (k >= 10, k >= 10), told

    # Alternatives were staged and only written once "full" was heard.
    fired = daemon.events("alternative_fired")
    assert len(fired) == 10
    assert all("warm=True" in line for line in fired), fired
    delays = [float(re.search(r"after_answer_ms=([0-9.]+)", x)[1]) for x in fired]  # type: ignore[index]
    median, worst = statistics.median(delays), max(delays)
    print(f"alternative after 'full': median {median:.3f} ms, max {worst:.3f} ms")
    assert max(delays) < 20.0  # the note's figures: a few ms at most on a loaded box


async def test_no_alternative_goes_when_the_first_choice_is_booked_or_withdrawn(
    conn: asyncpg.Connection, db_dsn: str, sim: Simulator, tmp_path: Path
) -> None:
    box = await add_box(conn, sim, BOX)
    for email in ("ana@example.com", "bea@example.com"):
        await add_member(conn, sim, email)
    instant = time.time() + 5.0
    open_class(sim, BOX, "7000", instant, 5)
    open_class(sim, BOX, "8000", instant, 5)

    async with running_daemon(db_dsn, tmp_path) as daemon:
        booked = await add_with_alternatives(
            conn, box, "ana@example.com", "7000", instant, [choice("8000")]
        )
        withdrawn = await add_with_alternatives(
            conn, box, "bea@example.com", "7000", instant, [choice("8000")]
        )
        await daemon.wait_for("prebooking_staged")
        await conn.execute("UPDATE prebookings SET status = 'cancelled' WHERE id = $1", withdrawn)
        rows = await wait_rows_final(conn, [booked])  # type: ignore[list-item]
        assert await daemon.stop() == 0

    assert rows[0]["booked_choice"] == 0
    assert sim.bookings(BOX, "8000") == []
    assert [r.email for r in sim.requests if r.path == "/api/book"] == ["ana@example.com"]
    assert await conn.fetchval("SELECT status FROM prebookings WHERE id = $1", withdrawn) == (
        "cancelled"
    )


async def test_a_row_with_malformed_alternatives_fails_saying_so(
    conn: asyncpg.Connection, db_dsn: str, sim: Simulator, tmp_path: Path
) -> None:
    box = await add_box(conn, sim, BOX)
    await add_member(conn, sim, "ana@example.com")
    instant = time.time() + 3.0
    open_class(sim, BOX, "7000", instant, 5)
    async with running_daemon(db_dsn, tmp_path) as daemon:
        row_id = await add_prebooking(conn, box, "ana@example.com", "7000", instant)
        await conn.execute(
            "UPDATE prebookings SET alternatives = $2 WHERE id = $1", row_id, [{"id": "8000"}]
        )
        rows = await wait_rows_final(conn, [row_id])
        assert await daemon.stop() == 0
    assert (rows[0]["status"], rows[0]["outcome"]) == ("failed", "bad_row")
    assert "alternatives" in rows[0]["error_message"]
    assert [r for r in sim.requests if r.path == "/api/book"] == []


def test_parse_alternatives_reads_lists_and_refuses_the_rest() -> None:
    assert parse_alternatives(None) == []
    assert parse_alternatives([]) == []
    assert [a.id for a in parse_alternatives([choice("1"), choice("2", 1)])] == ["1", "2"]
    assert parse_alternatives('[{"id": "3", "day": "20301201"}]')[0].insist == 0
    for bad in ({"id": "1"}, [choice("1")] * 6, [{"day": "2030"}], "[", 3):
        with pytest.raises(BadRow):
            parse_alternatives(bad)


def test_rules_alternatives_are_resolved_from_the_listing_in_order() -> None:
    backups = ("08:00 wód", "09:00 Yoga", "07:00 WOD")  # unlisted, and the first choice
    decided = decide(utc(2027, 3, 24, 12), [rule(alternatives=backups, insist=1)], [], [], HORIZON)
    first = decided.needs[0]
    listing = listed(first.day, "07:00 WOD", "08:00 WOD", "10:00 WOD")
    planned, _ = place([first], {first.listing: listing})
    assert planned[0].booking_data["id"] == listing[0].session_id
    assert planned[0].alternatives == [
        {"day": "20270329", "familyId": "", "id": listing[1].session_id, "insist": 1}
    ]
    assert class_labels(["08:00 WOD", 3, None]) == ("08:00 WOD",)
    assert class_labels({"08:00": "WOD"}) == ()


async def test_alternatives_whose_staged_connections_were_closed_are_staged_again_never_early(
    conn: asyncpg.Connection,
    db_dsn: str,
    make_sim: Callable[..., Awaitable[Simulator]],
    tmp_path: Path,
) -> None:
    # The load balancer closes connections idle for 1.2 s: the alternatives parked 3 s
    # ahead lose theirs, and are staged again at the re-check just before the instant,
    # so each waits warm at its gate when "full" comes.
    sim = await make_sim(balancer=Balancer(idle_timeout=1.2, idle_action="408"))
    box = await add_box(conn, sim, BOX)
    members = [f"m{k}@lb.test" for k in range(6)]
    for email in members:
        await add_member(conn, sim, email)
    instant = time.time() + 5.0
    open_class(sim, BOX, "7000", instant, 3)
    open_class(sim, BOX, "8000", instant, 10)
    async with running_daemon(db_dsn, tmp_path) as daemon:
        ids = [
            await add_with_alternatives(conn, box, e, "7000", instant, [choice("8000")])
            for e in members
        ]
        rows = await wait_rows_final(conn, ids, timeout=30)  # type: ignore[arg-type]
        assert await daemon.stop() == 0

    fifo = [r["user_email"] for r in sorted(rows, key=lambda r: (r["created_at"], r["id"]))]
    assert sim.bookings(BOX, "7000") == fifo[:3]
    assert sorted(sim.bookings(BOX, "8000")) == sorted(fifo[3:])
    books = [r for r in sim.requests if r.path == "/api/book"]
    assert [r for r in books if r.arrived_at < instant] == []
    assert len(books) == 9
    fired = daemon.events("alternative_fired")
    assert len(fired) == 3 and all("warm=True" in line for line in fired), fired
