"""The producer-side commands against a real Postgres, asserting exit codes, output and
the tables. They run in this process, as `prebookd.cli.main.main` (tests/cli_support.py:
a subprocess costs about a second to start); tests/test_cli_usage.py checks that a real
process exits and prints the same.

Dates are in 2030 so the tests do not expire; PREBOOKD_MAX_LEAD_DAYS is raised so
that far a lead is allowed.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from typing import Any, NamedTuple

import asyncpg
import pytest

from tests.cli_support import NOT_USED_DSN, Run, cli

# Europe/Madrid in 2030: summer time starts 31 March (02:00 -> 03:00) and ends
# 27 October (03:00 -> 02:00).


async def prebookd(dsn: str, *args: str, **settings: str) -> Run:
    """`prebookd ARGS`, in this process (tests/cli_support.py)."""
    return await cli(dsn, *args, **settings)


async def prebookd_all(dsn: str, *commands: list[str]) -> list[Run]:
    return [await prebookd(dsn, *command) for command in commands]


class Added(NamedTuple):
    command: list[str]
    available_at: str  # as `list --json` must show it
    email: str = "jane@example.com"
    family_id: str = ""


def assert_refused(run: Run, *fragments: str, code: int = 2) -> None:
    """One line on stderr naming the problem, nothing on stdout, a non-zero exit."""
    assert run.code == code, run
    assert run.out == "", run
    lines = run.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("prebookd: error: "), run
    for fragment in fragments:
        assert fragment in lines[0], run


async def table_contents(conn: asyncpg.Connection) -> list[list[dict[str, Any]]]:
    return [
        [dict(r) for r in await conn.fetch(f"SELECT * FROM {table} ORDER BY id")]
        for table in ("boxes", "prebookings")
    ]


@pytest.fixture
async def madrid_box(conn: asyncpg.Connection) -> uuid.UUID:
    box_id: uuid.UUID = await conn.fetchval(
        "INSERT INTO boxes (box_id, subdomain, name, base_url, timezone) "
        "VALUES ('1234', 'crossfitx', 'CrossFit X', 'https://crossfitx.aimharder.com', "
        "'Europe/Madrid') RETURNING id"
    )
    return box_id


async def insert_row(
    conn: asyncpg.Connection,
    box: uuid.UUID,
    *,
    email: str = "jane@example.com",
    status: str = "pending",
    available_at: datetime = datetime(2030, 3, 31, 5, 0, tzinfo=UTC),
    **columns: Any,
) -> uuid.UUID:
    """A row as the web app writes it."""
    values = {
        "user_email": email,
        "box_id": box,
        "booking_data": {"day": "20300404", "familyId": "", "id": "106015104", "insist": 0},
        "available_at": available_at,
        "status": status,
        **columns,
    }
    names = ", ".join(values)
    params = ", ".join(f"${i}" for i in range(1, len(values) + 1))
    row_id: uuid.UUID = await conn.fetchval(
        f"INSERT INTO prebookings ({names}) VALUES ({params}) RETURNING id", *values.values()
    )
    return row_id


async def test_every_command_has_help() -> None:
    commands = [
        ["migrate", "--help"],
        ["box", "--help"],
        ["box", "add", "--help"],
        ["box", "list", "--help"],
        ["add", "--help"],
        ["list", "--help"],
        ["cancel", "--help"],
    ]
    runs = [await cli(NOT_USED_DSN, *command) for command in commands]  # in-process
    for command, run in zip(commands, runs, strict=True):
        name = " ".join(command[:-1])
        assert run.code == 0, run
        assert f"usage: prebookd {name}" in run.out
    box_add, add, listing = runs[2].out, runs[4].out, runs[5].out
    assert "--timezone" in box_add and "https://SUBDOMAIN.aimharder.com" in box_add
    assert "--at INSTANT" in add and "offset" in add
    assert "--json" in listing and "--status" in listing


async def test_commands_refuse_an_unmigrated_database_until_migrate(empty_db_dsn: str) -> None:
    some_id = str(uuid.uuid4())
    runs = await prebookd_all(
        empty_db_dsn,
        ["box", "list"],
        ["box", "add", "--subdomain", "crossfitx", "--box-id", "1", "--name", "X"],
        ["list"],
        ["cancel", some_id],
        [
            "add", "--email", "jane@example.com", "--box", "crossfitx", "--class-id", "1",
            "--day", "20300404", "--at", "2030-03-31 07:00",
        ],
    )  # fmt: skip
    for run in runs:
        assert_refused(run, "schema is not up to date", "run `prebookd migrate`")

    migrated = await prebookd(empty_db_dsn, "migrate")
    assert migrated.code == 0, migrated
    assert "applied 0001_web_app_tables" in migrated.out
    again, boxes, table, as_json = await prebookd_all(
        empty_db_dsn, ["migrate"], ["box", "list"], ["list"], ["list", "--json"]
    )
    assert again.code == 0 and "nothing to apply" in again.out
    assert boxes.code == 0 and "no boxes" in boxes.out
    assert table.code == 0 and "no prebookings match" in table.out
    assert as_json.code == 0 and json.loads(as_json.out) == []


async def test_box_add_then_list(db_dsn: str, conn: asyncpg.Connection) -> None:
    first, second = await prebookd_all(
        db_dsn,
        ["box", "add", "--subdomain", "CrossFitX", "--box-id", "1234", "--name", "CrossFit X"],
        [
            "box", "add", "--subdomain", "sim", "--box-id", "99", "--name", "Simulator",
            "--base-url", "http://127.0.0.1:8080/", "--timezone", "America/New_York",
        ],
    )  # fmt: skip
    assert first.code == 0 and "added box crossfitx" in first.out, first
    assert second.code == 0 and "added box sim" in second.out, second

    rows = {
        r["subdomain"]: dict(r)
        for r in await conn.fetch("SELECT subdomain, box_id, name, base_url, timezone FROM boxes")
    }
    assert rows == {
        "crossfitx": {
            "subdomain": "crossfitx",
            "box_id": "1234",
            "name": "CrossFit X",
            "base_url": "https://crossfitx.aimharder.com",
            "timezone": "Europe/Madrid",
        },
        "sim": {
            "subdomain": "sim",
            "box_id": "99",
            "name": "Simulator",
            "base_url": "http://127.0.0.1:8080",
            "timezone": "America/New_York",
        },
    }

    table, as_json = await prebookd_all(db_dsn, ["box", "list"], ["box", "list", "--json"])
    assert table.code == 0
    header, *lines = table.out.splitlines()
    assert header.split()[:3] == ["SUBDOMAIN", "BOX", "ID"]
    assert lines[0].split()[:2] == ["crossfitx", "1234"] and "Europe/Madrid" in lines[0]
    assert lines[1].split()[:2] == ["sim", "99"] and "America/New_York" in lines[1]
    listed = json.loads(as_json.out)
    assert [(b["subdomain"], b["base_url"], b["timezone"]) for b in listed] == [
        ("crossfitx", "https://crossfitx.aimharder.com", "Europe/Madrid"),
        ("sim", "http://127.0.0.1:8080", "America/New_York"),
    ]
    assert all(uuid.UUID(b["id"]) and b["created_at"].endswith("Z") for b in listed)


async def test_box_add_refuses_bad_input_and_writes_nothing(
    db_dsn: str, conn: asyncpg.Connection, madrid_box: uuid.UUID
) -> None:
    before = await table_contents(conn)

    def box_add(subdomain: str = "newbox", box_id: str = "777", *extra: str) -> list[str]:
        return ["box", "add", "--subdomain", subdomain, "--box-id", box_id, "--name", "N", *extra]

    cases = [
        (box_add("CROSSFITX"), "subdomain 'crossfitx' exists already"),
        (box_add("other", "1234"), "box id '1234' exists already"),
        (box_add("newbox", "777", "--timezone", "Mars/Olympus"), "invalid time zone"),
        (box_add("bad_name!"), "malformed subdomain"),
        (box_add("newbox", "777", "--base-url", "ftp://x"), "malformed base URL"),
        (box_add("newbox", "has space"), "box id 'has space' is not a whole number"),
        (box_add("newbox", "0"), "box id '0' is out of range"),
        (["box", "add", "--subdomain", "newbox", "--box-id", "7", "--name", " "], "name"),
    ]
    runs = await prebookd_all(db_dsn, *(command for command, _ in cases))
    for (_, fragment), run in zip(cases, runs, strict=True):
        assert_refused(run, fragment)
    assert await table_contents(conn) == before


async def test_box_add_refuses_a_base_url_members_cookies_must_not_go_to(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    def box_add(subdomain: str, base_url: str) -> list[str]:
        box_id = str(sum(map(ord, subdomain)))  # a number of its own for each box
        return ["box", "add", "--subdomain", subdomain, "--box-id", box_id, "--name", "N",
                "--base-url", base_url]  # fmt: skip

    aimharder = {
        "box_hosts": "aimharder.com,*.aimharder.com",
        "aimharder_url": "https://aimharder.com",  # allowed, and never asked by box add
    }
    refused = [
        (box_add("meta", "http://169.254.169.254/"), "host 169.254.169.254 is not in"),
        (box_add("evil", "https://evil.example"), "host evil.example is not in"),
        (box_add("lookalike", "https://evilaimharder.com"), "host evilaimharder.com is not"),
        (box_add("plain", "http://plain.aimharder.com"), "plain http is only for a loopback"),
        (box_add("creds", "https://u:pw@creds.aimharder.com"), "user name or password"),
        (box_add("other", "http://127.0.0.2:8080"), "host 127.0.0.2 is not in"),
    ]
    runs = await asyncio.gather(
        *(prebookd(db_dsn, *command, **aimharder) for command, _ in refused[:5]),
        prebookd(db_dsn, *refused[5][0]),  # PREBOOKD_BOX_HOSTS=127.0.0.1: that host only
    )
    for (_, fragment), run in zip(refused, runs, strict=True):
        assert_refused(run, fragment, "is not allowed")
    assert await table_contents(conn) == [[], []]

    accepted = await asyncio.gather(
        prebookd(db_dsn, *box_add("alpha", "https://alpha.aimharder.com/"), **aimharder),
        prebookd(db_dsn, *box_add("login", "https://login.aimharder.com"), **aimharder),
        # The URL its subdomain makes is AimHarder's: allowed whatever the setting says.
        prebookd(db_dsn, *box_add("beta", "https://beta.aimharder.com")),
        prebookd(db_dsn, "box", "add", "--subdomain", "gamma", "--box-id", "3", "--name", "G"),
    )
    for run in accepted:
        assert run.code == 0, run
    urls = {r["subdomain"]: r["base_url"] for r in await conn.fetch("SELECT * FROM boxes")}
    assert urls == {
        "alpha": "https://alpha.aimharder.com",
        "login": "https://login.aimharder.com",
        "beta": "https://beta.aimharder.com",
        "gamma": "https://gamma.aimharder.com",
    }


async def test_add_round_trips_through_list_json_across_dst(
    db_dsn: str, conn: asyncpg.Connection, madrid_box: uuid.UUID
) -> None:
    # Jane has the session the daemon books with; John does not and is warned.
    await conn.execute(
        "INSERT INTO auth_sessions (user_email, fingerprint, session_type) "
        "VALUES ('jane@example.com', 'fp', 'background')"
    )

    def add(email: str, day: str, at: str, *extra: str) -> list[str]:
        return ["add", "--email", email, "--box", "crossfitx", "--class-id", "106015104",
                "--day", day, "--at", at, *extra]  # fmt: skip

    wanted = [
        # The day before Madrid springs forward: 07:00 is +01:00.
        Added(add("jane@example.com", "20300403", "2030-03-30 07:00"), "2030-03-30T06:00:00Z"),
        # The day it does: 07:00 is +02:00. The e-mail is stored lower-cased.
        Added(add("Jane@Example.COM", "20300404", "2030-03-31T07:00:00"), "2030-03-31T05:00:00Z"),
        # The second 02:30 of the fall-back night, told apart by its offset.
        Added(
            add("john@example.com", "20301030", "2030-10-27T02:30:00+01:00"),
            "2030-10-27T01:30:00Z",
            email="john@example.com",
        ),
        Added(
            add("john@example.com", "20301204", "2030-12-01T06:00:00Z", "--family-id", "555"),
            "2030-12-01T06:00:00Z",
            email="john@example.com",
            family_id="555",
        ),
    ]
    runs = await prebookd_all(db_dsn, *(w.command for w in wanted))
    ids = []
    for run in runs:
        assert run.code == 0, run
        ids.append(str(uuid.UUID(run.out.strip())))  # stdout is the id alone
    assert "booking opens 2030-03-31 07:00:00+02:00 (Europe/Madrid) = 2030-03-31 05:00:00Z" in (
        runs[1].err
    )
    assert "warning" not in runs[0].err
    assert "john@example.com has no background session" in runs[2].err

    listed = await prebookd(db_dsn, "list", "--json")
    assert listed.code == 0 and listed.err == "", listed
    by_id = {row["id"]: row for row in json.loads(listed.out)}
    assert set(by_id) == set(ids)
    for row_id, added in zip(ids, wanted, strict=True):
        row = by_id[row_id]
        assert row["user_email"] == added.email
        assert row["box"] == "crossfitx"
        assert row["booking_data"] == {
            "day": added.command[added.command.index("--day") + 1],
            "familyId": added.family_id,
            "id": "106015104",
            "insist": 0,
        }
        assert row["available_at"] == added.available_at
        assert row["status"] == "pending"
        assert row["result"] is None and row["error_message"] is None
        assert row["executed_at"] is None and row["lateness_ms"] is None
        assert row["outcome"] is None and row["created_at"].endswith("Z")
    # Firing order: by opening instant.
    assert [row["available_at"] for row in json.loads(listed.out)] == sorted(
        w.available_at for w in wanted
    )

    stored = await conn.fetchrow(
        "SELECT user_email, box_id, available_at, status, booking_data FROM prebookings "
        "WHERE id = $1",
        uuid.UUID(ids[1]),
    )
    assert stored is not None
    assert dict(stored) == {
        "user_email": "jane@example.com",
        "box_id": madrid_box,
        "available_at": datetime(2030, 3, 31, 5, 0, tzinfo=UTC),
        "status": "pending",
        "booking_data": {"day": "20300404", "familyId": "", "id": "106015104", "insist": 0},
    }


async def test_add_refuses_bad_input_and_writes_nothing(
    db_dsn: str, conn: asyncpg.Connection, madrid_box: uuid.UUID
) -> None:
    await conn.execute(
        "INSERT INTO boxes (box_id, subdomain, name, timezone) "
        "VALUES ('9', 'brokenzone', 'Broken', 'Mars/Olympus')"
    )
    before = await table_contents(conn)

    def add(at: str = "2030-03-31 07:00", day: str = "20300404", **overrides: str) -> list[str]:
        fields = {"email": "jane@example.com", "box": "crossfitx", "class-id": "106015104"}
        fields.update(overrides)
        flags = [part for name, value in fields.items() for part in (f"--{name}", value)]
        return ["add", *flags, "--day", day, "--at", at]

    cases = [
        (add(box="nope"), "unknown box 'nope'"),
        (add(day="2030-13-01"), "malformed day '2030-13-01'"),
        (add(at="next tuesday"), "malformed instant 'next tuesday'"),
        (add(at="2030-03-31 02:30"), "does not exist in Europe/Madrid"),
        (add(at="2030-10-27 02:30", day="20301030"), "happens twice in Europe/Madrid"),
        (add(at="2020-01-01T07:00:00Z"), "already past"),
        (add(at="2040-01-01 07:00", day="20400101"), "days ahead"),
        (add(at="2030-04-05 07:00"), "after the class day 20300404"),
        (add(email="not-an-email"), "malformed e-mail"),
        (add(**{"class-id": "WOD"}), "malformed class id 'WOD'"),
        (add(box="brokenzone"), "invalid time zone 'Mars/Olympus'"),
    ]
    runs = await prebookd_all(db_dsn, *(command for command, _ in cases))
    for (_, fragment), run in zip(cases, runs, strict=True):
        assert_refused(run, fragment)
    missing = await prebookd(db_dsn, "add", "--email", "jane@example.com", "--box", "crossfitx")
    assert missing.code == 2 and missing.out == "", missing
    assert missing.err.startswith("prebookd add: error: the following arguments are required")
    assert len(missing.err.splitlines()) == 1, missing
    assert await table_contents(conn) == before


async def test_list_filters_and_shows_both_time_zones(
    db_dsn: str, conn: asyncpg.Connection, madrid_box: uuid.UUID
) -> None:
    sim: uuid.UUID = await conn.fetchval(
        "INSERT INTO boxes (box_id, subdomain, name, base_url, timezone) "
        "VALUES ('99', 'sim', 'Sim', 'http://127.0.0.1:8080', 'America/New_York') RETURNING id"
    )
    pending = await insert_row(conn, madrid_box)
    completed = await insert_row(
        conn,
        madrid_box,
        email="John@Example.com",  # the web app may keep the case it was given
        status="completed",
        available_at=datetime(2030, 3, 30, 6, 0, tzinfo=UTC),
        result={"bookState": 1, "id": "777"},
        outcome="booked",
        lateness_ms=0.4,
        executed_at=datetime(2030, 3, 30, 6, 0, 0, 400, tzinfo=UTC),
    )
    failed = await insert_row(
        conn,
        sim,
        status="failed",
        available_at=datetime(2030, 7, 1, 11, 0, tzinfo=UTC),
        outcome="full",
        error_message="class is full",
    )

    table, by_status, by_box, by_email, limited, unknown_box, zero, bad_status = await prebookd_all(
        db_dsn,
        ["list"],
        ["list", "--status", "failed", "--json"],
        ["list", "--box", "SIM", "--json"],
        ["list", "--email", "john@example.com", "--json"],
        ["list", "--limit", "1", "--json"],
        ["list", "--box", "nope"],
        ["list", "--limit", "0"],
        ["list", "--status", "bogus"],
    )
    assert table.code == 0, table
    header, *lines = table.out.splitlines()
    assert "OPENS (BOX TIME)" in header and "OPENS (UTC)" in header
    assert [line.split()[0] for line in lines] == [str(completed), str(pending), str(failed)]
    assert "2030-03-30 07:00:00+01:00  2030-03-30 06:00:00Z  completed  booked" in lines[0]
    assert "2030-03-31 07:00:00+02:00  2030-03-31 05:00:00Z  pending" in lines[1]
    assert (
        "2030-07-01 07:00:00-04:00  2030-07-01 11:00:00Z  failed     full class is full"
        in (lines[2])
    )
    assert "106015104  20300404" in lines[1]

    def ids(run: Run) -> list[str]:
        assert run.code == 0, run
        return [row["id"] for row in json.loads(run.out)]

    assert ids(by_status) == [str(failed)]
    assert ids(by_box) == [str(failed)]
    assert ids(by_email) == [str(completed)]
    assert ids(limited) == [str(completed)]
    assert "raise --limit" in limited.err
    done = json.loads(by_email.out)[0]
    assert done["result"] == {"bookState": 1, "id": "777"}
    assert done["lateness_ms"] == 0.4 and done["outcome"] == "booked"
    assert done["executed_at"] == "2030-03-30T06:00:00.000400Z"
    assert_refused(unknown_box, "unknown box 'nope'")
    assert zero.code == 2 and "argument --limit: '0' is out of range" in zero.err, zero
    assert bad_status.code == 2 and "invalid choice: 'bogus'" in bad_status.err


async def test_cancel_only_rows_not_yet_sent(
    db_dsn: str, conn: asyncpg.Connection, madrid_box: uuid.UUID
) -> None:
    statuses = ["pending", "loaded", "executing", "completed", "failed", "cancelled"]
    rows = {status: await insert_row(conn, madrid_box, status=status) for status in statuses}
    unknown = uuid.uuid4()

    runs = await prebookd_all(
        db_dsn,
        *(["cancel", str(rows[status])] for status in statuses),
        ["cancel", str(unknown)],
        ["cancel", "not-a-uuid"],
    )
    by_status = dict(zip(statuses, runs, strict=False))
    for status in ("pending", "loaded"):
        run = by_status[status]
        assert run.code == 0 and run.out.startswith(f"cancelled {rows[status]}: "), run
        assert "jane@example.com, class 106015104 on 20300404 at crossfitx" in run.out
    for status in ("executing", "completed", "failed", "cancelled"):
        assert_refused(by_status[status], f"is {status}, not pending or loaded")
    assert_refused(runs[-2], f"unknown prebooking {unknown}")
    assert_refused(runs[-1], "malformed prebooking id 'not-a-uuid'")

    now = {r["id"]: r["status"] for r in await conn.fetch("SELECT id, status FROM prebookings")}
    assert now == {
        rows["pending"]: "cancelled",
        rows["loaded"]: "cancelled",
        rows["executing"]: "executing",
        rows["completed"]: "completed",
        rows["failed"]: "failed",
        rows["cancelled"]: "cancelled",
    }
