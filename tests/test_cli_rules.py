"""`prebookd rule ...`, `prebookd away ...` and `prebookd list --rule`, run in this
process against a real Postgres: pausing or removing a rule, or a new day away,
cancels the pending rows rules made there at once, never a row added by hand."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime, timedelta

import asyncpg
import pytest

from tests.cli_support import cli
from tests.test_cli_usage import (
    test_every_commands_help_ends_with_examples as _help_ends_with_examples,
)

EMAIL = "jane@example.com"
DAY = date(2030, 4, 3)  # a Wednesday


@pytest.fixture
async def box(conn: asyncpg.Connection) -> uuid.UUID:
    box_id: uuid.UUID = await conn.fetchval(
        "INSERT INTO boxes (box_id, subdomain, name, base_url, timezone, booking_window_kind, "
        "booking_window_length) VALUES ('1234', 'norte', 'Norte', "
        "'https://norte.aimharder.com', 'Europe/Madrid', 'days', 4) RETURNING id"
    )
    return box_id


async def add_row(
    conn: asyncpg.Connection, box: uuid.UUID, rule: int | None, day: date = DAY
) -> uuid.UUID:
    row_id: uuid.UUID = await conn.fetchval(
        """INSERT INTO prebookings (user_email, box_id, booking_data, available_at,
                                    class_label, rule_id, rule_day)
           VALUES ($1, $2, $3, $4, '07:00 WOD', $5, $6) RETURNING id""",
        EMAIL,
        box,
        {"day": f"{day:%Y%m%d}", "familyId": "", "id": "1", "insist": 0},
        datetime.combine(day, datetime.min.time(), UTC) - timedelta(days=4),
        rule,
        day if rule else None,
    )
    return row_id


async def status(conn: asyncpg.Connection, row: uuid.UUID) -> str:
    return str(await conn.fetchval("SELECT status FROM prebookings WHERE id = $1", row))


async def test_rules_are_added_listed_paused_resumed_and_removed(
    db_dsn: str, conn: asyncpg.Connection, box: uuid.UUID
) -> None:
    added = await cli(
        db_dsn, "rule", "add", "--email", EMAIL, "--box", "norte", "--days", "mon,Wed",
        "--class", " 07:00  WOD ", "--waitlist", "--alt", "08:00 WOD", "--alt", "9:00 Open",
    )  # fmt: skip
    assert added.code == 0, added
    assert "has no background session yet" in added.err
    rule = int(added.out)
    stored = await conn.fetchrow("SELECT * FROM prebookd_rules WHERE id = $1", rule)
    assert stored["weekdays"] == [1, 3] and stored["class_name"] == "WOD"
    assert stored["insist"] == 1 and stored["alternatives"] == ["08:00 WOD", "09:00 Open"]
    planned, by_hand = await add_row(conn, box, rule), await add_row(conn, box, None)
    assert (await cli(db_dsn, "rule", "list", "--email", "joe@example.com")).out == "no rules\n"
    listed = await cli(db_dsn, "rule", "list", "--json", "--email", "Jane@example.com")
    assert [(r["id"], r["days"], r["pending"], r["next_day"]) for r in json.loads(listed.out)] == [
        (rule, "mon,wed", 1, DAY.isoformat())
    ]
    rows = await cli(db_dsn, "list", "--rule", str(rule), "--json")
    assert [r["id"] for r in json.loads(rows.out)] == [str(planned)]

    paused = await cli(db_dsn, "rule", "pause", str(rule))
    assert paused.code == 0 and "cancelled 1 pending" in paused.out
    assert (await status(conn, planned), await status(conn, by_hand)) == ("cancelled", "pending")
    assert await conn.fetchval("SELECT rule_day FROM prebookings WHERE id = $1", planned) is None
    resumed = await cli(db_dsn, "rule", "resume", str(rule))
    assert resumed.code == 0
    assert await conn.fetchval("SELECT active FROM prebookd_rules WHERE id = $1", rule)

    again = await add_row(conn, box, rule)
    removed = await cli(db_dsn, "rule", "remove", str(rule))
    assert removed.code == 0 and "cancelled 1 pending" in removed.out
    assert await status(conn, again) == "cancelled"
    assert await status(conn, by_hand) == "pending"
    assert (await cli(db_dsn, "rule", "pause", str(rule))).code == 2


async def test_days_away_cancel_rules_rows_inside_them_only(
    db_dsn: str, conn: asyncpg.Connection, box: uuid.UUID
) -> None:
    rule = int((await cli(
        db_dsn, "rule", "add", "--email", EMAIL, "--box", "norte", "--days", "wed",
        "--class", "07:00 WOD",
    )).out)  # fmt: skip
    inside, later = (
        await add_row(conn, box, rule),
        await add_row(conn, box, rule, DAY + timedelta(7)),
    )
    by_hand = await add_row(conn, box, None)
    away = await cli(
        db_dsn, "away", "add", "--email", "JANE@example.com", "--from", "2030-04-01", "--to",
        "20300405",
    )  # fmt: skip
    assert away.code == 0, away
    assert "cancelled 1 pending" in away.err
    assert [await status(conn, r) for r in (inside, later, by_hand)] == [
        "cancelled",
        "pending",
        "pending",
    ]
    listed = json.loads((await cli(db_dsn, "away", "list", "--json")).out)
    assert [(a["from"], a["to"], a["box"]) for a in listed] == [("2030-04-01", "2030-04-05", None)]
    assert (await cli(db_dsn, "away", "remove", away.out.strip())).code == 0
    assert (await cli(db_dsn, "away", "list")).out.strip() == "no days away"


@pytest.mark.parametrize(
    "args",
    [
        ["--days", "mon,funday", "--class", "07:00 WOD"],
        ["--days", "mon", "--class", "WOD"],
        ["--days", "mon", "--class", "25:00 WOD"],
        ["--days", "mon", "--class", "07:00 WOD", "--alt", "later"],
    ],
)
async def test_bad_rules_are_refused_in_one_line(
    db_dsn: str, conn: asyncpg.Connection, box: uuid.UUID, args: list[str]
) -> None:
    run = await cli(db_dsn, "rule", "add", "--email", EMAIL, "--box", "norte", *args)
    assert run.code == 2 and run.error_line.startswith("prebookd: error:")
    assert await conn.fetchval("SELECT count(*) FROM prebookd_rules") == 0


def test_status_shows_the_planner() -> None:
    from prebookd.cli.status import format_status

    now = datetime(2030, 4, 1, 12, tzinfo=UTC)
    snapshot = {
        "planner": {
            "rules_active": 2,
            "next_planned_day": "2030-04-03",
            "last_round_at": "2030-04-01T11:59:30+00:00",
            "rounds": 4,
            "last_errors": ["listing norte 20300405: j***@example.com's session is dead"],
        }
    }
    text = format_status(snapshot, now=now)
    assert "rules      2 active, next planned day 2030-04-03, last planning round 30 s ago" in text
    assert "! listing norte 20300405: j***@example.com's session is dead" in text


RULE_COMMANDS = [
    ["rule"], ["rule", "add"], ["rule", "list"], ["rule", "pause"], ["rule", "resume"],
    ["rule", "remove"], ["away"], ["away", "add"], ["away", "list"], ["away", "remove"],
]  # fmt: skip


@pytest.mark.parametrize("command", RULE_COMMANDS, ids=" ".join)
async def test_every_rule_commands_help_ends_with_examples(command: list[str]) -> None:
    await _help_ends_with_examples(command)  # the check every command's help passes
