"""The planner inside `prebookd run`: two daemons planning the same rule at once make
its row once, from the simulator's listing."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from datetime import time as clock_time
from pathlib import Path
from zoneinfo import ZoneInfo

import asyncpg

from prebookd import timeparse
from prebookd.db import rules_store
from prebookd.sim.server import SimClass, Simulator
from tests.support import add_box, add_member, running_daemon

MADRID = ZoneInfo("Europe/Madrid")


async def test_two_daemons_plan_a_rule_once(
    conn: asyncpg.Connection, sim: Simulator, db_dsn: str, tmp_path: Path
) -> None:
    day = datetime.now(UTC).astimezone(MADRID).date() + timedelta(days=5)
    box = await add_box(conn, sim, "norte")
    await conn.execute(
        "UPDATE boxes SET booking_window_kind = 'days', booking_window_length = 4 WHERE id = $1",
        box,
    )
    await add_member(conn, sim, "jane@example.com")
    sim.add_class("norte", SimClass(session_id="777", day=f"{day:%Y%m%d}", capacity=5, opens_at=0))
    rule = await rules_store.insert_rule(
        conn,
        user_email="jane@example.com",
        box=box,
        weekdays=[day.isoweekday()],
        class_time=clock_time(7),
        class_name="WOD",
        family_id="",
        insist=0,
        alternatives=[],
    )
    settings = {"plan_interval": 0.3, "plan_horizon": 3 * 86400, "aimharder_url": sim.base_url}
    async with (
        running_daemon(db_dsn, tmp_path / "a", **settings) as first,
        running_daemon(db_dsn, tmp_path / "b", **settings) as second,
    ):
        deadline = time.monotonic() + 10
        while not await conn.fetchval("SELECT count(*) FROM prebookings WHERE rule_id = $1", rule):
            assert time.monotonic() < deadline, "\n".join(first.lines[-20:])
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # a few more rounds of both
        planned = first.events("rule_row_planned") + second.events("rule_row_planned")
    rows = await conn.fetch("SELECT * FROM prebookings WHERE rule_id = $1", rule)
    assert len(rows) == 1 and len(planned) == 1
    assert rows[0]["available_at"] == timeparse.opening_instant(
        day, clock_time(7), MADRID, timeparse.BookingWindow("days", 4)
    )
    assert rows[0]["booking_data"] == {
        "day": f"{day:%Y%m%d}",
        "familyId": "",
        "id": "777",
        "insist": 0,
    }
