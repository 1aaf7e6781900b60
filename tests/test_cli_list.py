"""`prebookd list` (what is coming first, the history on demand) and `prebookd cancel`
by a prefix of the id, against a real Postgres, run in this process
(tests/cli_support.py)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from tests.cli_support import Run, cli

NOW = datetime.now(UTC)


@pytest.fixture
async def box(conn: asyncpg.Connection) -> uuid.UUID:
    box_id: uuid.UUID = await conn.fetchval(
        "INSERT INTO boxes (box_id, subdomain, name, base_url, timezone) "
        "VALUES ('1234', 'norte', 'Norte', 'https://norte.aimharder.com', 'Europe/Madrid') "
        "RETURNING id"
    )
    return box_id


async def add_row(
    conn: asyncpg.Connection,
    box: uuid.UUID,
    status: str,
    available_at: datetime,
    *,
    row_id: uuid.UUID | None = None,
    session_id: str = "106015104",
    **columns: Any,
) -> uuid.UUID:
    values = {
        "id": row_id or uuid.uuid4(),
        "user_email": "jane@example.com",
        "box_id": box,
        "booking_data": {"day": "20300404", "familyId": "", "id": session_id, "insist": 0},
        "available_at": available_at,
        "status": status,
        **columns,
    }
    params = ", ".join(f"${i}" for i in range(1, len(values) + 1))
    new: uuid.UUID = await conn.fetchval(
        f"INSERT INTO prebookings ({', '.join(values)}) VALUES ({params}) RETURNING id",
        *values.values(),
    )
    return new


def ids(run: Run) -> list[str]:
    assert run.code == 0, run
    return [row["id"] for row in json.loads(run.out)]


async def test_list_shows_what_is_coming_first_and_the_history_on_demand(
    db_dsn: str, conn: asyncpg.Connection, box: uuid.UUID
) -> None:
    day = timedelta(days=1)
    old_booked = await add_row(
        conn, box, "completed", NOW - 9 * day, outcome="booked", attempts=2,
        fired_by="vps-1", written_at=NOW - 9 * day + timedelta(milliseconds=0.4),
        lateness_ms=0.4, class_label="07:00 WOD",
    )  # fmt: skip
    failed = await add_row(conn, box, "failed", NOW - 2 * day, outcome="full")
    cancelled = await add_row(conn, box, "cancelled", NOW - day)
    stuck = await add_row(conn, box, "loaded", NOW - 3 * day)  # not final: still shown
    later = await add_row(conn, box, "pending", NOW + 3 * day, class_label="19:00 Open")
    soon = await add_row(conn, box, "pending", NOW + day, session_id="106015105")
    withdrawn = await add_row(conn, box, "cancelled", NOW + 2 * day)  # its instant is ahead

    upcoming, everything, since, failed_only, cut = [
        await cli(db_dsn, "list", "--json", *extra)
        for extra in ([], ["--all"], ["--since", "36h"], ["--status", "failed"],
                      ["--all", "--limit", "4"])
    ]  # fmt: skip
    assert ids(upcoming) == [str(r) for r in (stuck, soon, withdrawn, later)]
    assert ids(everything) == [
        str(r) for r in (old_booked, stuck, failed, cancelled, soon, withdrawn, later)
    ]
    assert ids(since) == [str(r) for r in (stuck, cancelled, soon, withdrawn, later)]
    assert ids(failed_only) == [str(failed)]  # a final status looks in the history
    # Cut: the upcoming rows are kept first; shown in firing order all the same.
    assert ids(cut) == [str(r) for r in (stuck, soon, withdrawn, later)]
    assert "more rows match than the 4 shown" in cut.err

    booked = json.loads(everything.out)[0]
    assert booked["status"] == "completed" and booked["outcome"] == "booked"
    assert booked["attempts"] == 2 and booked["fired_by"] == "vps-1"
    assert booked["lateness_ms"] == 0.4 and booked["class_label"] == "07:00 WOD"
    written = datetime.fromisoformat(booked["written_at"].removesuffix("Z") + "+00:00")
    assert written == NOW - 9 * day + timedelta(milliseconds=0.4)
    assert booked["available_at"].endswith("Z")

    table = await cli(db_dsn, "list")
    assert table.code == 0, table
    header, *lines = table.out.splitlines()
    assert header.split()[:3] == ["ID", "CLASS", "DAY"]
    assert [line.split()[0] for line in lines] == [str(r) for r in (stuck, soon, withdrawn, later)]
    # The class as `add` named it, beside the id; AimHarder's id alone when unknown.
    assert lines[3].startswith(f"{later}  19:00 Open (106015104)  20300404  jane@example.com")
    assert lines[1].startswith(f"{soon}  106015105  ")
    empty = await cli(db_dsn, "list", "--email", "nobody@example.com")
    assert empty.out == "no prebookings match (--all for the history)\n"


async def test_cancel_by_a_unique_prefix_says_which_row(
    db_dsn: str, conn: asyncpg.Connection, box: uuid.UUID
) -> None:
    twins = [uuid.UUID("abcd1234-0000-4000-8000-000000000001"),
             uuid.UUID("abcd1234-0000-4000-8000-000000000002")]  # fmt: skip
    for twin in twins:
        await add_row(conn, box, "pending", NOW + timedelta(days=1), row_id=twin)
    single = await add_row(
        conn, box, "pending", datetime(2030, 3, 31, 5, 0, tzinfo=UTC),
        row_id=uuid.UUID("5eed0000-1111-4000-8000-000000000000"), class_label="07:00 WOD",
    )  # fmt: skip

    ambiguous = await cli(db_dsn, "cancel", "ABCD-1234")
    assert ambiguous.code == 2
    assert ambiguous.error_line == (
        "prebookd: error: prebooking id prefix 'ABCD-1234' is ambiguous: 2 prebookings match "
        f"({twins[0]}, {twins[1]}); give more of the id"
    )
    unknown = await cli(db_dsn, "cancel", "0123")
    assert unknown.code == 2
    assert "no prebooking id starts with '0123'" in unknown.error_line
    whole = uuid.uuid4()
    missing = await cli(db_dsn, "cancel", str(whole))
    assert missing.code == 2 and f"unknown prebooking {whole}" in missing.error_line
    statuses = {r["id"]: r["status"] for r in await conn.fetch("SELECT * FROM prebookings")}
    assert set(statuses.values()) == {"pending"}

    done = await cli(db_dsn, "cancel", "5eed")
    assert done.code == 0, done
    assert done.out == (
        f"cancelled {single}: jane@example.com, class 07:00 WOD (106015104) on 20300404 at "
        "norte; booking would have opened 2030-03-31 07:00:00+02:00 (Europe/Madrid) = "
        "2030-03-31 05:00:00Z\n"
    )
    twin = await cli(db_dsn, "cancel", str(twins[1])[:36])
    assert twin.code == 0 and twin.out.startswith(f"cancelled {twins[1]}: "), twin
    statuses = {r["id"]: r["status"] for r in await conn.fetch("SELECT * FROM prebookings")}
    assert statuses == {single: "cancelled", twins[0]: "pending", twins[1]: "cancelled"}
    again = await cli(db_dsn, "cancel", "5eed0000")
    assert again.code == 2
    assert "is cancelled, not pending or loaded" in again.error_line
