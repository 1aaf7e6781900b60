"""`prebookd box set` and `prebookd box remove` against a real Postgres, run in this
process (tests/cli_support.py): what they change or refuse, as the tables show it."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg

from tests.cli_support import cli


async def add_box(conn: asyncpg.Connection, subdomain: str, box_id: str) -> uuid.UUID:
    new: uuid.UUID = await conn.fetchval(
        "INSERT INTO boxes (box_id, subdomain, name, base_url, timezone, booking_window_kind, "
        "booking_window_length) VALUES ($1, $2, $3, $4, 'Europe/Madrid', 'days', 4) "
        "RETURNING id",
        box_id,
        subdomain,
        subdomain.title(),
        f"https://{subdomain}.aimharder.com",
    )
    return new


async def add_row(conn: asyncpg.Connection, box: uuid.UUID, status: str | None) -> uuid.UUID:
    new: uuid.UUID = await conn.fetchval(
        "INSERT INTO prebookings (user_email, box_id, booking_data, available_at, status) "
        "VALUES ('jane@example.com', $1, $2, $3, $4) RETURNING id",
        box,
        {"day": "20300404", "familyId": "", "id": "106015104", "insist": 0},
        datetime(2030, 3, 31, 5, 0, tzinfo=UTC),
        status,
    )
    return new


async def box_row(conn: asyncpg.Connection, subdomain: str) -> dict[str, Any] | None:
    row = await conn.fetchrow(
        "SELECT box_id, name, base_url, timezone, booking_window_kind AS kind, "
        "booking_window_length AS length FROM boxes WHERE subdomain = $1",
        subdomain,
    )
    return dict(row) if row else None


async def test_box_set_changes_what_is_given(db_dsn: str, conn: asyncpg.Connection) -> None:
    box = await add_box(conn, "norte", "1234")
    await add_box(conn, "sur", "5678")
    await add_row(conn, box, "pending")

    run = await cli(
        db_dsn, "box", "set", "Norte", "--timezone", "Atlantic/Canary",
        "--window", "72h", "--name", "  CrossFit   Norte ", "--box-id", "0999",
    )  # fmt: skip
    assert run.code == 0, run
    assert run.out == (
        "box norte: name Norte -> CrossFit Norte, time zone Europe/Madrid -> "
        "Atlantic/Canary, box id 1234 -> 999, window 4d -> 72h\n"
    )
    # The row added before keeps its instant, and the user is told so.
    assert "note: 1 prebookings of norte still to fire keep the opening instants" in run.err
    assert await box_row(conn, "norte") == {
        "box_id": "999",
        "name": "CrossFit Norte",
        "base_url": "https://norte.aimharder.com",
        "timezone": "Atlantic/Canary",
        "kind": "hours",
        "length": 72,
    }

    url = await cli(db_dsn, "box", "set", "norte", "--base-url", "http://127.0.0.1:8099/norte/")
    cleared = await cli(db_dsn, "box", "set", "norte", "--window", "none")
    assert url.code == 0 and cleared.code == 0, (url, cleared)
    assert url.err == ""  # nothing about instants: the base URL counts for every row
    after = await box_row(conn, "norte")
    assert after is not None
    assert after["base_url"] == "http://127.0.0.1:8099/norte"
    assert (after["kind"], after["length"]) == (None, None)
    assert after["timezone"] == "Atlantic/Canary"  # what was not given stays


async def test_box_set_refuses_what_box_add_refuses(db_dsn: str, conn: asyncpg.Connection) -> None:
    await add_box(conn, "norte", "1234")
    await add_box(conn, "sur", "5678")
    before = [dict(r) for r in await conn.fetch("SELECT * FROM boxes ORDER BY subdomain")]
    cases = [
        (["nope", "--name", "X"], "unknown box 'nope'"),
        (["norte", "--box-id", "5678"], "a box with box id '5678' exists already: sur (Sur)"),
        (["norte", "--timezone", "Mars/Olympus"], "invalid time zone 'Mars/Olympus'"),
        (["norte", "--base-url", "https://evil.example"], "host evil.example is not in"),
        (["norte", "--base-url", "ftp://x"], "malformed base URL"),
        (["norte", "--window", "4 weeks"], "malformed booking window '4 weeks'"),
        (["norte", "--window", "32d"], "booking window '32d' is out of range: 1 to 31 days"),
        (["norte", "--name", "  "], "the box name must not be empty"),
    ]
    for args, fragment in cases:
        run = await cli(db_dsn, "box", "set", *args)
        assert run.code == 2, run
        assert fragment in run.error_line
    assert [dict(r) for r in await conn.fetch("SELECT * FROM boxes ORDER BY subdomain")] == before


async def test_box_remove_waits_for_rows_still_to_fire(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    box = await add_box(conn, "norte", "1234")
    other = await add_box(conn, "sur", "5678")
    await conn.execute(
        "INSERT INTO auth_sessions (user_email, fingerprint, session_type) "
        "VALUES ('jane@example.com', 'fp', 'background')"
    )
    rows = {status: await add_row(conn, box, status) for status in ("pending", "loaded")}
    rows["executing"] = await add_row(conn, box, "executing")
    rows["none"] = await add_row(conn, box, None)  # the daemon takes a null status as pending
    history = [await add_row(conn, box, s) for s in ("completed", "failed", "cancelled")]
    elsewhere = await add_row(conn, other, "completed")

    refused = await cli(db_dsn, "box", "remove", "norte", "--with-history")
    assert refused.code == 2, refused
    assert refused.error_line == (
        "prebookd: error: box norte has prebookings not final yet (1 executing, 1 loaded, "
        "1 none, 1 pending): cancel them first (`prebookd list --box norte`, `prebookd "
        "cancel ID`); nothing was removed"
    )
    assert await box_row(conn, "norte") is not None
    assert await conn.fetchval("SELECT count(*) FROM prebookings") == 8

    await conn.execute(
        "UPDATE prebookings SET status = 'cancelled' WHERE id = ANY($1::uuid[])",
        list(rows.values()),
    )
    without_flag = await cli(db_dsn, "box", "remove", "norte")
    assert without_flag.code == 2
    assert "box norte has 7 finished prebookings (its history): give --with-history" in (
        without_flag.error_line
    )
    assert await box_row(conn, "norte") is not None

    removed = await cli(db_dsn, "box", "remove", "norte", "--with-history")
    assert removed.code == 0, removed
    assert removed.out == (
        "removed box norte (Norte) and its 7 finished prebookings; members' sessions are kept\n"
    )
    assert await box_row(conn, "norte") is None
    left = [r["id"] for r in await conn.fetch("SELECT id FROM prebookings")]
    assert left == [elsewhere] and not set(history) & set(left)
    assert await conn.fetchval("SELECT count(*) FROM auth_sessions") == 1

    await add_box(conn, "vacio", "4321")
    plain = await cli(db_dsn, "box", "remove", "vacio")
    assert plain.code == 0, plain
    assert plain.out == "removed box vacio (Vacio); members' sessions are kept\n"
    unknown = await cli(db_dsn, "box", "remove", "vacio")
    assert unknown.code == 2 and "unknown box 'vacio'" in unknown.error_line


async def test_box_add_takes_a_cancellation_cutoff_and_a_proxy_at_once(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    secret = "add-pr0xy-pw"
    add = ("box", "add", "--subdomain", "este", "--box-id", "4321", "--name", "Este")
    run = await cli(
        db_dsn, *add, "--cancel-cutoff", "2h", "--proxy", f"socks5://u:{secret}@10.0.0.7:1080"
    )
    assert run.code == 0, run
    assert "cancel cutoff 2h" in run.out and "socks5://u:****@10.0.0.7:1080" in run.out
    assert secret not in run.out + run.err
    row = await conn.fetchrow(
        "SELECT cancel_cutoff_seconds, proxy_url FROM boxes WHERE subdomain = 'este'"
    )
    assert row is not None and row["cancel_cutoff_seconds"] == 7200
    assert row["proxy_url"] == f"socks5://u:{secret}@10.0.0.7:1080"

    # A bad value refuses the whole box: nothing is written.
    other = ("box", "add", "--subdomain", "oeste", "--box-id", "8765", "--name", "Oeste")
    for bad in (["--cancel-cutoff", "soon"], ["--proxy", f"ftp://u:{secret}@x:21"]):
        refused = await cli(db_dsn, *other, *bad)
        assert refused.code == 2 and secret not in refused.err, refused
        assert refused.error_line.startswith("prebookd: "), refused
    assert await box_row(conn, "oeste") is None
