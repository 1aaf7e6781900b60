"""Versioned migrations: numbered `.sql` files in `sql/migrations`, each applied once.

All of them run in one transaction under an advisory lock, so two processes migrating
at once queue up and the second finds nothing left to do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

from prebookd.errors import MigrationError

# Any constant works; this one spells "prebookd" in ASCII.
MIGRATION_LOCK_ID = 0x7072_6562_6F6F_6B64 & 0x7FFF_FFFF_FFFF_FFFF

_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def available_migrations() -> list[Migration]:
    folder = resources.files("prebookd.db") / "sql" / "migrations"
    found = []
    for entry in folder.iterdir():
        match = _FILE_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    return found


async def applied_versions(conn: asyncpg.Connection) -> set[int]:
    exists = await conn.fetchval("SELECT to_regclass('prebookd_migrations') IS NOT NULL")
    if not exists:
        return set()
    rows = await conn.fetch("SELECT version FROM prebookd_migrations")
    return {row["version"] for row in rows}


async def migrate(conn: asyncpg.Connection) -> list[Migration]:
    """Apply what is missing; return what was applied (empty: already up to date)."""
    applied: list[Migration] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_ID)
        await conn.execute(
            """
            CREATE TABLE IF NOT EXISTS prebookd_migrations (
                version    integer PRIMARY KEY,
                name       text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )
            """
        )
        done = await applied_versions(conn)
        for migration in available_migrations():
            if migration.version in done:
                continue
            try:
                await conn.execute(migration.sql)
            except asyncpg.PostgresError as exc:
                raise MigrationError(
                    f"migration {migration.version:04d}_{migration.name} failed: {exc}"
                ) from exc
            await conn.execute(
                "INSERT INTO prebookd_migrations (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )
            applied.append(migration)
    return applied


async def pending_migrations(conn: asyncpg.Connection) -> list[Migration]:
    """Migrations not yet applied: the daemon refuses to start while any remain."""
    done = await applied_versions(conn)
    return [m for m in available_migrations() if m.version not in done]
