"""`prebookd migrate` against real databases, and the NOTIFY trigger it installs.

The CLI runs as a real subprocess, as an operator would run it; what is checked is
what they would check afterwards with psql: tables, columns, constraints, the web
app's rows, and what a LISTEN connection receives.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import asyncpg
import pytest

from prebookd.db import migrate as migrate_module
from prebookd.db import store
from prebookd.db.connection import connect
from prebookd.db.migrate import Migration, available_migrations, migrate, pending_migrations
from prebookd.errors import MigrationError
from tests.support import clean_env, run_prebookd

WEB_APP_TABLES = ("boxes", "auth_sessions", "prebookings")

# The data contract (DESIGN.md): column -> information_schema data_type.
CONTRACT_COLUMNS: dict[str, dict[str, str]] = {
    "boxes": {
        "id": "uuid",
        "box_id": "text",
        "subdomain": "text",
        "name": "text",
        "base_url": "text",
        "timezone": "text",
        "created_at": "timestamp with time zone",
        "updated_at": "timestamp with time zone",
    },
    "auth_sessions": {
        "id": "uuid",
        "user_email": "text",
        "aimharder_token": "text",
        "aimharder_cookies": "jsonb",
        "fingerprint": "character varying",
        "session_type": "text",
        "last_token_update_date": "timestamp with time zone",
        "token_update_count": "integer",
        "last_token_update_error": "text",
        "created_at": "timestamp with time zone",
        "updated_at": "timestamp with time zone",
    },
    "prebookings": {
        "id": "uuid",
        "user_email": "text",
        "box_id": "uuid",
        "booking_data": "jsonb",
        "available_at": "timestamp with time zone",
        "status": "text",
        "result": "jsonb",
        "error_message": "text",
        "created_at": "timestamp with time zone",
        "loaded_at": "timestamp with time zone",
        "executed_at": "timestamp with time zone",
    },
}

# What prebookd adds to `prebookings` for itself (leases, attempts, timing, outcome).
PREBOOKD_COLUMNS = {
    "lease_owner",
    "lease_expires_at",
    "attempts",
    "written_at",
    "lateness_ms",
    "outcome",
    "fired_by",
}

# The web app's own DDL, as it could have been written before prebookd existed:
# stricter than the contract (NOT NULLs, a CHECK, ON DELETE CASCADE), with columns
# prebookd knows nothing about, an index, an updated_at trigger and row security.
WEB_APP_DDL = """
CREATE TABLE boxes (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    box_id      text NOT NULL UNIQUE,
    subdomain   text NOT NULL UNIQUE,
    name        text NOT NULL,
    phone       text,
    logo_url    text,
    base_url    text NOT NULL,
    timezone    text NOT NULL DEFAULT 'Europe/Madrid',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE auth_sessions (
    id                      uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_email              text NOT NULL,
    aimharder_token         text NOT NULL,
    aimharder_cookies       jsonb NOT NULL DEFAULT '[]'::jsonb,
    fingerprint             varchar(50) NOT NULL,
    session_type            text NOT NULL DEFAULT 'device'
        CONSTRAINT auth_sessions_session_type_check
        CHECK (session_type IN ('background', 'device')),
    last_token_update_date  timestamptz,
    token_update_count      integer DEFAULT 0,
    last_token_update_error text,
    created_at              timestamptz DEFAULT now(),
    updated_at              timestamptz DEFAULT now(),
    CONSTRAINT auth_sessions_user_email_fingerprint_key UNIQUE (user_email, fingerprint)
);
ALTER TABLE auth_sessions ENABLE ROW LEVEL SECURITY;

CREATE TABLE prebookings (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_email         text NOT NULL,
    box_id             uuid NOT NULL REFERENCES boxes (id) ON DELETE CASCADE,
    booking_data       jsonb NOT NULL,
    available_at       timestamptz NOT NULL,
    status             text NOT NULL DEFAULT 'pending'
        CONSTRAINT prebookings_status_check CHECK (status IN
            ('pending', 'loaded', 'executing', 'completed', 'failed', 'cancelled')),
    result             jsonb,
    error_message      text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    loaded_at          timestamptz,
    executed_at        timestamptz,
    qstash_schedule_id text
);
CREATE INDEX idx_prebookings_status_available_at ON prebookings (status, available_at);

CREATE FUNCTION web_app_set_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;
CREATE TRIGGER boxes_set_updated_at BEFORE UPDATE ON boxes
    FOR EACH ROW EXECUTE FUNCTION web_app_set_updated_at();
"""

WEB_APP_ROWS = """
INSERT INTO boxes (id, box_id, subdomain, name, base_url, phone)
VALUES ('7a4c1a52-3f55-4c4e-9f0a-0d6a7c1e2b01', '10122', 'crossfitnorte',
        'CrossFit Norte', 'https://crossfitnorte.aimharder.com', '+34 600 000 000');

INSERT INTO auth_sessions (user_email, aimharder_token, aimharder_cookies, fingerprint,
                           session_type, last_token_update_date, token_update_count)
VALUES
    ('ana@example.com', 'tok-ana-bg',
     '[{"name": "amhrdrauth", "value": "c2Vzc2lvbi1hbmE"}, {"name": "AWSALB", "value": "x1"}]',
     'bg-ana', 'background', '2026-11-27 10:00:00+00', 3),
    ('ana@example.com', 'tok-ana-dev',
     '[{"name": "amhrdrauth", "value": "ZGV2aWNlLWFuYQ"}]',
     'fp-0b1c2d', 'device', NULL, 0);

INSERT INTO prebookings (user_email, box_id, booking_data, available_at, status,
                         result, error_message, executed_at, qstash_schedule_id)
VALUES
    ('ana@example.com', '7a4c1a52-3f55-4c4e-9f0a-0d6a7c1e2b01',
     '{"day": "20261205", "familyId": "", "id": "112233", "insist": 0}',
     '2026-12-03 14:00:00+00', 'pending', NULL, NULL, NULL, 'scd_01HZX'),
    ('ana@example.com', '7a4c1a52-3f55-4c4e-9f0a-0d6a7c1e2b01',
     '{"day": "20261128", "familyId": "", "id": "112200", "insist": 0}',
     '2026-11-26 14:00:00+00', 'completed', '{"bookState": 1, "id": "998877"}', NULL,
     '2026-11-26 14:00:00.012+00', NULL),
    ('ana@example.com', '7a4c1a52-3f55-4c4e-9f0a-0d6a7c1e2b01',
     '{"day": "20261127", "familyId": "", "id": "112100", "insist": 0}',
     '2026-11-25 14:00:00+00', 'failed', '{"bookState": -12}', 'class full', NULL, NULL);
"""


async def run_migrate(dsn: str, tmp_path: Path) -> tuple[int, str, str]:
    env = clean_env(PREBOOKD_DATABASE_URL=dsn, PREBOOKD_STATE_DIR=str(tmp_path))
    return await run_prebookd("migrate", env=env)


def migration_names() -> list[str]:
    return [f"{m.version:04d}_{m.name}" for m in available_migrations()]


async def schema_snapshot(conn: asyncpg.Connection) -> dict[str, dict[tuple[str, str], Any]]:
    """Columns, constraints, indexes, triggers and row security of the public schema."""
    columns = await conn.fetch(
        """
        SELECT table_name, column_name, data_type, character_maximum_length,
               is_nullable, column_default
        FROM information_schema.columns
        WHERE table_schema = 'public' AND table_name = ANY($1::text[])
        """,
        list(WEB_APP_TABLES),
    )
    constraints = await conn.fetch(
        """
        SELECT c.conrelid::regclass::text AS table_name, c.conname, c.contype,
               pg_get_constraintdef(c.oid) AS definition
        FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
        WHERE n.nspname = 'public' AND c.conrelid <> 0
        """
    )
    indexes = await conn.fetch(
        "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"
    )
    triggers = await conn.fetch(
        """
        SELECT t.tgrelid::regclass::text AS table_name, t.tgname,
               pg_get_triggerdef(t.oid) AS definition
        FROM pg_trigger t WHERE NOT t.tgisinternal
        """
    )
    security = await conn.fetch(
        """
        SELECT relname, relrowsecurity FROM pg_class
        WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'
        """
    )
    return {
        "columns": {
            (r["table_name"], r["column_name"]): (
                r["data_type"],
                r["character_maximum_length"],
                r["is_nullable"],
                r["column_default"],
            )
            for r in columns
        },
        "constraints": {
            (r["table_name"], r["conname"]): (r["contype"], r["definition"]) for r in constraints
        },
        "indexes": {(r["tablename"], r["indexname"]): r["indexdef"] for r in indexes},
        "triggers": {(r["table_name"], r["tgname"]): r["definition"] for r in triggers},
        "row_security": {(r["relname"], ""): r["relrowsecurity"] for r in security},
    }


async def table_rows(conn: asyncpg.Connection, table: str) -> dict[str, dict[str, Any]]:
    rows = await conn.fetch(f"SELECT to_jsonb(t) AS row FROM {table} t")
    by_id = {}
    for record in rows:
        row = record["row"]
        by_id[row["id"]] = row
    return by_id


# --- prebookd migrate -------------------------------------------------------------


async def test_migrate_creates_the_contract_on_an_empty_database(
    empty_db_dsn: str, tmp_path: Path
) -> None:
    code, out, err = await run_migrate(empty_db_dsn, tmp_path)

    assert code == 0, err
    for name in migration_names():
        assert f"applied {name}" in out
    conn = await connect(empty_db_dsn)
    try:
        snapshot = await schema_snapshot(conn)
        columns = snapshot["columns"]
        for table, expected in CONTRACT_COLUMNS.items():
            for column, data_type in expected.items():
                assert columns[(table, column)][0] == data_type, (table, column)
        assert columns[("auth_sessions", "fingerprint")][1] == 50
        assert "'Europe/Madrid'" in columns[("boxes", "timezone")][3]
        assert "'pending'" in columns[("prebookings", "status")][3]
        assert "now()" in columns[("prebookings", "created_at")][3]
        prebookd_columns = {c for (t, c) in columns if t == "prebookings"} - set(
            CONTRACT_COLUMNS["prebookings"]
        )
        assert prebookd_columns >= PREBOOKD_COLUMNS

        definitions = {d for (_, d) in snapshot["constraints"].values()}
        assert "UNIQUE (box_id)" in definitions
        assert "UNIQUE (subdomain)" in definitions
        assert "UNIQUE (user_email, fingerprint)" in definitions
        assert "FOREIGN KEY (box_id) REFERENCES boxes(id)" in definitions

        assert ("prebookings", "prebookings_to_fire_idx") in snapshot["indexes"]
        triggers = {name for (table, name) in snapshot["triggers"] if table == "prebookings"}
        assert {"prebookings_notify_insert_delete", "prebookings_notify_update"} <= triggers
        assert await pending_migrations(conn) == []

        # The web app's insert, with only the contract's columns, works and gets defaults.
        box_id = await conn.fetchval(
            "INSERT INTO boxes (box_id, subdomain, name, base_url) "
            "VALUES ('1', 'b', 'B', 'https://b.aimharder.com') RETURNING id"
        )
        row = await conn.fetchrow(
            "INSERT INTO prebookings (user_email, box_id, booking_data, available_at) "
            "VALUES ('a@example.com', $1, $2, now()) RETURNING status, attempts, created_at",
            box_id,
            {"day": "20261205", "familyId": "", "id": "1", "insist": 0},
        )
        assert row is not None
        assert row["status"] == "pending"
        assert row["attempts"] == 0
        assert row["created_at"] is not None
    finally:
        await conn.close()


async def test_migrate_only_adds_to_the_web_apps_existing_tables(
    empty_db_dsn: str, tmp_path: Path
) -> None:
    conn = await connect(empty_db_dsn)
    try:
        await conn.execute(WEB_APP_DDL)
        await conn.execute(WEB_APP_ROWS)
        schema_before = await schema_snapshot(conn)
        rows_before = {t: await table_rows(conn, t) for t in WEB_APP_TABLES}

        code, out, err = await run_migrate(empty_db_dsn, tmp_path)

        assert code == 0, err
        assert "applied" in out
        schema_after = await schema_snapshot(conn)
        for kind, before in schema_before.items():
            after = schema_after[kind]
            changed = {key: (value, after.get(key)) for key, value in before.items()}
            changed = {k: v for k, v in changed.items() if v[0] != v[1]}
            assert changed == {}, f"{kind} of the web app changed"
        added = set(schema_after["columns"]) - set(schema_before["columns"])
        assert {("prebookings", c) for c in PREBOOKD_COLUMNS} <= added
        for key in added:
            _, _, nullable, default = schema_after["columns"][key]
            assert nullable == "YES" or default is not None, f"{key} breaks the web app's inserts"

        for table in WEB_APP_TABLES:
            rows_after = await table_rows(conn, table)
            assert rows_after.keys() == rows_before[table].keys()
            for row_id, before_row in rows_before[table].items():
                after_row = rows_after[row_id]
                assert {k: after_row[k] for k in before_row} == before_row

        # The web app's own INSERT, unaware of prebookd's columns, still works.
        await conn.execute(
            "INSERT INTO prebookings (user_email, box_id, booking_data, available_at, "
            "qstash_schedule_id) VALUES ('bea@example.com', "
            "'7a4c1a52-3f55-4c4e-9f0a-0d6a7c1e2b01', $1, now(), 'scd_02')",
            {"day": "20261206", "familyId": "", "id": "112244", "insist": 0},
        )
    finally:
        await conn.close()


async def test_second_migrate_has_nothing_to_apply_and_changes_nothing(
    db_dsn: str, tmp_path: Path
) -> None:
    # db_dsn is already migrated (cloned from the migrated template).
    conn = await connect(db_dsn)
    try:
        before = await schema_snapshot(conn)
        recorded_before = await conn.fetch("SELECT * FROM prebookd_migrations ORDER BY version")

        code, out, err = await run_migrate(db_dsn, tmp_path)

        assert code == 0, err
        assert "nothing to apply" in out
        assert "applied" not in out
        assert await schema_snapshot(conn) == before
        recorded = await conn.fetch("SELECT * FROM prebookd_migrations ORDER BY version")
        assert recorded == recorded_before
    finally:
        await conn.close()


async def test_concurrent_migrates_apply_each_migration_once(
    empty_db_dsn: str, tmp_path: Path
) -> None:
    results = await asyncio.gather(*(run_migrate(empty_db_dsn, tmp_path) for _ in range(4)))

    for code, _, err in results:
        assert code == 0, err
    outputs = "".join(out for _, out, _ in results)
    for name in migration_names():
        assert outputs.count(f"applied {name}") == 1
    assert sum("nothing to apply" in out for _, out, _ in results) == 3
    conn = await connect(empty_db_dsn)
    try:
        versions = await conn.fetch(
            "SELECT version, count(*) AS n FROM prebookd_migrations GROUP BY version"
        )
    finally:
        await conn.close()
    assert {r["version"]: r["n"] for r in versions} == {
        m.version: 1 for m in available_migrations()
    }


async def test_a_failing_migration_leaves_nothing_applied(
    empty_db_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = available_migrations()
    good = Migration(9001, "good", "CREATE TABLE prebookd_test_good (id integer)")
    broken = Migration(9002, "broken", "CREATE TABLE prebookd_test_broken (id no_such_type)")
    monkeypatch.setattr(migrate_module, "available_migrations", lambda: [*real, good, broken])
    conn = await connect(empty_db_dsn)
    try:
        with pytest.raises(MigrationError, match="9002_broken"):
            await migrate(conn)

        present = await conn.fetchrow(
            """
            SELECT to_regclass('prebookd_migrations') AS migrations,
                   to_regclass('prebookings') AS prebookings,
                   to_regclass('prebookd_test_good') AS good
            """
        )
        assert present is not None
        assert dict(present) == {"migrations": None, "prebookings": None, "good": None}

        # Once fixed, the same connection migrates cleanly.
        monkeypatch.setattr(migrate_module, "available_migrations", lambda: [*real, good])
        applied = await migrate(conn)
        assert [m.version for m in applied] == [*(m.version for m in real), 9001]
    finally:
        await conn.close()


# --- the NOTIFY trigger -------------------------------------------------------------


@pytest.fixture
async def notifications(db_dsn: str) -> AsyncIterator[asyncio.Queue[str]]:
    """Payloads on channel `prebookings`, as a LISTEN connection receives them."""
    queue: asyncio.Queue[str] = asyncio.Queue()

    def on_notify(_conn: object, _pid: int, _channel: str, payload: object) -> None:
        queue.put_nowait(str(payload))

    listener = await asyncpg.connect(db_dsn)
    try:
        await listener.add_listener("prebookings", on_notify)
        yield queue
    finally:
        await listener.close()


async def next_payload(queue: asyncio.Queue[str]) -> dict[str, Any]:
    payload = await asyncio.wait_for(queue.get(), timeout=5)
    assert len(payload.encode()) < 300, payload
    decoded: dict[str, Any] = json.loads(payload)
    return decoded


async def assert_no_notification(conn: asyncpg.Connection, queue: asyncio.Queue[str]) -> None:
    """Notifications arrive in commit order: if a marker sent now comes next, nothing
    was sent for what happened before it."""
    await conn.execute("SELECT pg_notify('prebookings', '{\"op\": \"marker\"}')")
    assert await next_payload(queue) == {"op": "marker"}


async def insert_prebooking(
    conn: asyncpg.Connection, available_at: datetime, booking_data: dict[str, Any] | None = None
) -> str:
    box_id = await conn.fetchval(
        "INSERT INTO boxes (box_id, subdomain, name, base_url) "
        "VALUES ('10122', 'crossfitnorte', 'CrossFit Norte', "
        "'https://crossfitnorte.aimharder.com') RETURNING id"
    )
    prebooking_id = await conn.fetchval(
        "INSERT INTO prebookings (user_email, box_id, booking_data, available_at) "
        "VALUES ('ana@example.com', $1, $2, $3) RETURNING id",
        box_id,
        booking_data or {"day": "20261205", "familyId": "", "id": "112233", "insist": 0},
        available_at,
    )
    return str(prebooking_id)


def instant(payload: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(payload["available_at"])


async def test_trigger_notifies_insert_update_and_delete(
    conn: asyncpg.Connection, notifications: asyncio.Queue[str]
) -> None:
    opens = datetime(2026, 12, 3, 14, 0, tzinfo=UTC)

    row_id = await insert_prebooking(conn, opens)
    inserted = await next_payload(notifications)
    assert inserted["op"] == "insert"
    assert inserted["id"] == row_id
    assert instant(inserted) == opens
    assert inserted["status"] == "pending"

    later = opens + timedelta(minutes=5)
    await conn.execute("UPDATE prebookings SET available_at = $2 WHERE id = $1", row_id, later)
    moved = await next_payload(notifications)
    assert (moved["op"], moved["id"], instant(moved)) == ("update", row_id, later)

    await conn.execute("UPDATE prebookings SET status = 'cancelled' WHERE id = $1", row_id)
    cancelled = await next_payload(notifications)
    assert (cancelled["op"], cancelled["id"], cancelled["status"]) == (
        "update",
        row_id,
        "cancelled",
    )

    await conn.execute("DELETE FROM prebookings WHERE id = $1", row_id)
    deleted = await next_payload(notifications)
    assert (deleted["op"], deleted["id"]) == ("delete", row_id)


async def test_trigger_ignores_updates_that_do_not_move_or_change_status(
    conn: asyncpg.Connection, notifications: asyncio.Queue[str]
) -> None:
    row_id = await insert_prebooking(conn, datetime(2026, 12, 3, 14, 0, tzinfo=UTC))
    assert (await next_payload(notifications))["op"] == "insert"

    await conn.execute(
        "UPDATE prebookings SET result = $2, error_message = 'class full', attempts = 3, "
        "lease_owner = 'vps-1' WHERE id = $1",
        row_id,
        {"bookState": -12},
    )
    await conn.execute("UPDATE prebookings SET status = 'pending' WHERE id = $1", row_id)
    await conn.execute(
        "UPDATE prebookings SET available_at = available_at, status = status WHERE id = $1",
        row_id,
    )
    await assert_no_notification(conn, notifications)


async def test_trigger_payload_stays_small_with_large_rows(
    conn: asyncpg.Connection, notifications: asyncio.Queue[str]
) -> None:
    big = {"day": "20261205", "familyId": "", "id": "112233", "insist": 0, "x": "x" * 100_000}
    opens = datetime(2026, 12, 3, 14, 0, tzinfo=UTC)
    row_id = await insert_prebooking(conn, opens, booking_data=big)
    await conn.execute(
        "UPDATE prebookings SET result = $2, status = 'completed' WHERE id = $1", row_id, big
    )
    await conn.execute("DELETE FROM prebookings WHERE id = $1", row_id)

    # next_payload asserts each is under 300 bytes.
    ops = [(await next_payload(notifications))["op"] for _ in range(3)]
    assert ops == ["insert", "update", "delete"]


class Explained:
    """Runs a store query under EXPLAIN instead, and keeps the plan."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn
        self.plan = ""

    async def fetch(self, query: str, *args: object) -> list[asyncpg.Record]:
        rows = await self._conn.fetch("EXPLAIN " + query, *args)
        self.plan = "\n".join(r[0] for r in rows)
        return []


async def test_the_resync_reads_active_rows_through_an_index_not_the_whole_table(
    conn: asyncpg.Connection,
) -> None:
    """Rows that are done pile up for ever; the periodic resync must not read them."""
    await conn.execute(
        """INSERT INTO prebookings (user_email, booking_data, available_at, status)
           SELECT 'm' || n || '@x.es', '{}', now() - interval '1 day',
                  CASE WHEN n % 2 = 0 THEN 'completed' ELSE 'failed' END
             FROM generate_series(1, 20000) n"""
    )
    await conn.execute(
        """INSERT INTO prebookings (user_email, booking_data, available_at, status)
           SELECT 'a' || n || '@x.es', '{}', now() + interval '1 hour',
                  (ARRAY['pending', 'loaded', 'executing'])[n % 3 + 1]
             FROM generate_series(1, 30) n"""
    )
    await conn.execute("ANALYZE prebookings")
    explained = Explained(conn)
    now = time.time()
    await store.rows_to_schedule(
        cast(asyncpg.Connection, explained), horizon_end=now + 86_400, absurd_after=now + 3e7
    )
    assert "prebookings_to_fire_idx" in explained.plan, explained.plan
    assert "Seq Scan" not in explained.plan, explained.plan
