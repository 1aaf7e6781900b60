"""The planner against real Postgres and the simulator's listing, in process: two
planners at once, a class missing then added, days away, pause and resume."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from structlog.testing import capture_logs

from prebookd import timeparse
from prebookd.daemon.planner import Planner
from prebookd.db import rules_store
from prebookd.db.connection import create_pool
from prebookd.settings import Settings
from prebookd.sim.server import SimClass, Simulator
from tests.support import add_box, add_member
from tests.test_deploy import role  # noqa: F401 - the least-privilege role fixture

MADRID = ZoneInfo("Europe/Madrid")
EMAIL = "jane@example.com"


async def _no_wait() -> None:
    return None


def class_day() -> date:
    """Five days ahead in Madrid: with a 4-day window it opens tomorrow at 07:00."""
    return datetime.now(UTC).astimezone(MADRID).date() + timedelta(days=5)


def opening(day: date) -> datetime:
    return timeparse.opening_instant(day, clock_time(7), MADRID, timeparse.BookingWindow("days", 4))


@pytest.fixture
async def pool(db_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(db_dsn, Settings(database_url=db_dsn, db_pool_min=1, db_pool_max=4))
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
async def box(conn: asyncpg.Connection, sim: Simulator) -> uuid.UUID:
    box_id = await add_box(conn, sim, "norte")
    await conn.execute(
        "UPDATE boxes SET booking_window_kind = 'days', booking_window_length = 4 WHERE id = $1",
        box_id,
    )
    await add_member(conn, sim, EMAIL)
    return box_id


def make_planner(pool: asyncpg.Pool, clock: Callable[[], float] = time.time) -> Planner:
    return Planner(
        pool,
        horizon=3 * 86400,  # one day of the rule's weekday: class_day()
        interval=0.1,
        allowed_hosts=["127.0.0.1"],
        wait_clear=_no_wait,
        clock=clock,
    )


async def started(planner: Planner) -> Planner:
    await planner.start()
    return planner


async def add_rule(conn: asyncpg.Connection, box: uuid.UUID, name: str = " wod ") -> int:
    return await rules_store.insert_rule(
        conn,
        user_email=EMAIL,
        box=box,
        weekdays=[class_day().isoweekday()],
        class_time=clock_time(7),
        class_name=name,
        family_id="",
        insist=1,
        alternatives=["08:00 WOD"],
    )


def add_class(sim: Simulator, day: date, session_id: str = "555") -> None:
    sim.add_class(
        "norte",
        SimClass(session_id=session_id, day=f"{day:%Y%m%d}", capacity=10, opens_at=0, name="WOD"),
    )


async def rule_rows(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT * FROM prebookings WHERE rule_id IS NOT NULL ORDER BY created_at"
    )


async def test_two_planners_at_once_make_each_row_once(
    conn: asyncpg.Connection, sim: Simulator, pool: asyncpg.Pool, box: uuid.UUID
) -> None:
    day = class_day()
    add_class(sim, day)
    add_class(sim, day + timedelta(days=7), "556")  # outside the horizon: not planned
    rule = await add_rule(conn, box)
    first, second = await started(make_planner(pool)), await started(make_planner(pool))
    try:
        done = await asyncio.gather(first.plan_once(), second.plan_once())
        again = await first.plan_once()
    finally:
        await first.close()
        await second.close()
    assert sorted(d["planned"] for d in done) in ([0, 1], [1, 1])
    assert again["planned"] == 0
    rows = await rule_rows(conn)
    assert len(rows) == 1
    row = rows[0]
    assert row["rule_id"] == rule and row["rule_day"] == day and row["status"] == "pending"
    assert row["booking_data"] == {
        "day": f"{day:%Y%m%d}",
        "familyId": "",
        "id": "555",
        "insist": 1,
    }
    assert row["available_at"] == opening(day)
    assert row["class_label"] == "07:00 WOD" and row["user_email"] == EMAIL
    assert first.snapshot()["next_planned_day"] == day.isoformat()


async def test_a_missing_class_is_retried_then_reported_once(
    conn: asyncpg.Connection, sim: Simulator, pool: asyncpg.Pool, box: uuid.UUID
) -> None:
    day = class_day()
    await add_rule(conn, box)
    planner = await started(make_planner(pool))
    try:
        assert (await planner.plan_once())["missing"] == 1
        assert not await rule_rows(conn)
        add_class(sim, day)  # the box adds it: the next round finds it
        assert (await planner.plan_once())["planned"] == 1
    finally:
        await planner.close()
    assert [r["rule_day"] for r in await rule_rows(conn)] == [day]


async def test_a_class_still_missing_when_booking_opens_is_reported_once(
    conn: asyncpg.Connection, sim: Simulator, pool: asyncpg.Pool, box: uuid.UUID
) -> None:
    day = class_day()
    await add_rule(conn, box)
    shift = 0.0
    planners = [await started(make_planner(pool, lambda: time.time() + shift)) for _ in range(2)]
    try:
        assert (await planners[0].plan_once())["missing"] == 1
        shift = (opening(day) - datetime.now(UTC)).total_seconds() + 60  # a minute after
        with capture_logs() as logs:
            done = await asyncio.gather(*(p.plan_once() for p in planners))
            later = await planners[0].plan_once()
    finally:
        for planner in planners:
            await planner.close()
    assert sorted(d["reported"] for d in done) == [0, 1] and later["reported"] == 0
    reports = [e for e in logs if e["event"] == "rule_class_missing"]
    assert len(reports) == 1
    assert reports[0]["text"] == f"no 07:00 wod on {day:%A} {day.day} {day:%b}"
    assert not await rule_rows(conn)


async def test_days_away_withdraw_the_rules_row_not_a_hand_made_one(
    conn: asyncpg.Connection, sim: Simulator, pool: asyncpg.Pool, box: uuid.UUID
) -> None:
    day = class_day()
    add_class(sim, day)
    await add_rule(conn, box)
    by_hand = await conn.fetchval(
        """INSERT INTO prebookings (user_email, box_id, booking_data, available_at)
           VALUES ($1, $2, $3, $4) RETURNING id""",
        EMAIL,
        box,
        {"day": f"{day:%Y%m%d}", "familyId": "", "id": "555", "insist": 0},
        opening(day),
    )
    planner = await started(make_planner(pool))
    try:
        await planner.plan_once()
        await rules_store.insert_away(
            conn, user_email=EMAIL, box=None, first_day=day - timedelta(days=1), last_day=day
        )
        assert (await planner.plan_once())["withdrawn"] == 1
        assert (await planner.plan_once())["planned"] == 0  # not while away
    finally:
        await planner.close()
    rows = await rule_rows(conn)
    assert [(r["status"], r["rule_day"]) for r in rows] == [("cancelled", None)]
    assert rows[0]["error_message"].startswith("away ")
    assert await conn.fetchval("SELECT status FROM prebookings WHERE id = $1", by_hand) == "pending"


async def test_pausing_withdraws_pending_rows_and_resuming_plans_them_again(
    conn: asyncpg.Connection, sim: Simulator, pool: asyncpg.Pool, box: uuid.UUID
) -> None:
    day = class_day()
    add_class(sim, day)
    rule = await add_rule(conn, box)
    planner = await started(make_planner(pool))
    try:
        await planner.plan_once()
        await rules_store.set_rule_active(conn, rule, False)  # as the web app would
        assert (await planner.plan_once())["withdrawn"] == 1
        await rules_store.set_rule_active(conn, rule, True)
        assert (await planner.plan_once())["planned"] == 1
    finally:
        await planner.close()
    rows = await rule_rows(conn)
    assert [(r["status"], r["rule_day"]) for r in rows] == [("cancelled", None), ("pending", day)]
    assert rows[0]["error_message"] == f"rule {rule} paused"


async def test_a_dead_session_is_a_warning_not_a_crash(
    conn: asyncpg.Connection, sim: Simulator, pool: asyncpg.Pool, box: uuid.UUID
) -> None:
    add_class(sim, class_day())
    await add_rule(conn, box)
    await conn.execute(
        "UPDATE auth_sessions SET aimharder_cookies = $1",
        [{"name": "amhrdrauth", "value": "unknown"}],
    )
    planner = await started(make_planner(pool))
    try:
        with capture_logs() as logs:
            done = await planner.plan_once()
    finally:
        await planner.close()
    assert done["planned"] == 0 and done["missing"] == 0
    assert any(e["event"] == "planner_session_dead" for e in logs)
    assert "session is dead" in planner.snapshot()["last_errors"][0]


async def test_a_box_window_or_rule_changed_moves_or_replaces_the_pending_row(
    conn: asyncpg.Connection, sim: Simulator, pool: asyncpg.Pool, box: uuid.UUID
) -> None:
    day = class_day()
    add_class(sim, day)
    sim.add_class(
        "norte",
        SimClass(
            session_id="600",
            day=f"{day:%Y%m%d}",
            capacity=10,
            opens_at=0,
            name="Open Box",
            time="08:00 - 09:00",
        ),
    )
    rule = await add_rule(conn, box)
    planner = await started(make_planner(pool))
    try:
        await planner.plan_once()
        await conn.execute("UPDATE boxes SET booking_window_length = 3 WHERE id = $1", box)
        assert (await planner.plan_once())["moved"] == 1
        moved = await rule_rows(conn)
        assert [r["available_at"] for r in moved] == [
            timeparse.opening_instant(
                day, clock_time(7), MADRID, timeparse.BookingWindow("days", 3)
            )
        ]
        await conn.execute(
            "UPDATE prebookd_rules SET class_time = '08:00', class_name = 'open box' WHERE id = $1",
            rule,
        )
        done = await planner.plan_once()
    finally:
        await planner.close()
    assert (done["withdrawn"], done["planned"]) == (1, 1)
    rows = await rule_rows(conn)
    assert [(r["status"], r["class_label"], r["booking_data"]["id"]) for r in rows] == [
        ("cancelled", "07:00 WOD", "555"),
        ("pending", "08:00 Open Box", "600"),
    ]


async def test_the_least_privilege_role_can_plan(
    conn: asyncpg.Connection,
    sim: Simulator,
    db_dsn: str,
    box: uuid.UUID,
    role: str,  # noqa: F811 - the fixture imported above
) -> None:
    day = class_day()
    add_class(sim, day)
    rule = await add_rule(conn, box)
    parts = urlsplit(db_dsn)
    # The same server (a host and port, or the embedded one's socket in the query): only
    # the user changes.
    as_role = parts._replace(netloc=f"{role}@{parts.netloc.rpartition('@')[2]}").geturl()
    pool = await create_pool(as_role, Settings(database_url=as_role, db_pool_min=1, db_pool_max=1))
    planner = await started(make_planner(pool))
    try:
        assert (await planner.plan_once())["planned"] == 1
        await conn.execute("UPDATE boxes SET booking_window_length = 3 WHERE id = $1", box)
        assert (await planner.plan_once())["moved"] == 1
        await rules_store.set_rule_active(conn, rule, False)
        assert (await planner.plan_once())["withdrawn"] == 1
        await conn.execute("DELETE FROM prebookings")
        sim.box("norte").classes.clear()
        await rules_store.set_rule_active(conn, rule, True)
        assert (await planner.plan_once())["missing"] == 1
    finally:
        await planner.close()
        await pool.close()


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        # Clocks go forward on Sunday 28 March 2027: 07:00 Madrid is 06:00Z, then 05:00Z.
        (
            datetime(2027, 3, 24, 12, tzinfo=UTC),
            {
                date(2027, 3, 29): datetime(2027, 3, 25, 6, tzinfo=UTC),
                date(2027, 3, 31): datetime(2027, 3, 27, 6, tzinfo=UTC),
                date(2027, 4, 5): datetime(2027, 4, 1, 5, tzinfo=UTC),
            },
        ),
        # Clocks go back on Sunday 25 October 2026: 05:00Z, then 06:00Z.
        (
            datetime(2026, 10, 21, 12, tzinfo=UTC),
            {
                date(2026, 10, 26): datetime(2026, 10, 22, 5, tzinfo=UTC),
                date(2026, 10, 28): datetime(2026, 10, 24, 5, tzinfo=UTC),
                date(2026, 11, 2): datetime(2026, 10, 29, 6, tzinfo=UTC),
            },
        ),
    ],
)
async def test_two_planners_across_a_dst_change_make_each_days_row_once(
    conn: asyncpg.Connection,
    sim: Simulator,
    pool: asyncpg.Pool,
    box: uuid.UUID,
    now: datetime,
    expected: dict[date, datetime],
) -> None:
    for n, day in enumerate([*expected, max(expected) + timedelta(days=2)]):
        add_class(sim, day, str(900 + n))  # the last one opens beyond the horizon
    rule = await rules_store.insert_rule(
        conn,
        user_email=EMAIL,
        box=box,
        weekdays=[1, 3],  # Mon, Wed
        class_time=clock_time(7),
        class_name="WOD",
        family_id="",
        insist=0,
        alternatives=[],
    )
    planners = []
    for _ in range(2):
        planner = make_planner(pool, clock=now.timestamp)
        planner.horizon = 8 * 86400
        planners.append(await started(planner))
    try:
        await asyncio.gather(*(p.plan_once() for p in planners))
        await asyncio.gather(*(p.plan_once() for p in planners))
    finally:
        for planner in planners:
            await planner.close()
    rows = await rule_rows(conn)
    assert {r["rule_day"]: r["available_at"] for r in rows} == expected
    assert len(rows) == len(expected) and {r["rule_id"] for r in rows} == {rule}


async def test_a_rules_alternatives_and_watch_go_on_the_row_it_makes(
    conn: asyncpg.Connection, sim: Simulator, pool: asyncpg.Pool, box: uuid.UUID
) -> None:
    day = class_day()
    add_class(sim, day)  # 07:00 WOD
    sim.add_class(  # the rule's --alt "08:00 WOD"
        "norte",
        SimClass("557", f"{day:%Y%m%d}", capacity=10, opens_at=0, time="08:00 - 09:00"),
    )
    rule = await add_rule(conn, box)
    await conn.execute("UPDATE prebookd_rules SET watch = true WHERE id = $1", rule)
    planner = await started(make_planner(pool))
    try:
        assert (await planner.plan_once())["planned"] == 1
    finally:
        await planner.close()
    [row] = await rule_rows(conn)
    assert row["booking_data"]["id"] == "555"
    assert row["alternatives"] == [
        {"day": f"{day:%Y%m%d}", "familyId": "", "id": "557", "insist": 1}
    ]
    assert row["watch"] is True
