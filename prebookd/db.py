"""Connections to Postgres: which one (configured or embedded) and how they are opened."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any, cast

import asyncpg
import structlog

from prebookd.embedded import start_embedded
from prebookd.errors import DatabaseError
from prebookd.models import UnreadableJson
from prebookd.settings import Settings, mask_dsn

log = structlog.get_logger(__name__)

# A dead Postgres is noticed by the listener's health check (a SELECT 1 with a
# timeout); the pool's connections are checked as they are used.
POOL_COMMAND_TIMEOUT = 15.0
SERVER_SETTINGS = {"application_name": "prebookd-pool"}
CONNECT_KWARGS: dict[str, Any] = {
    "timeout": 10,
    "server_settings": SERVER_SETTINGS,
    "statement_cache_size": 100,
}


@contextlib.asynccontextmanager
async def database_dsn(settings: Settings) -> AsyncIterator[str]:
    """The DSN to use: the configured one, or an embedded Postgres kept up meanwhile."""
    if settings.database_url is not None:
        dsn = settings.database_url.get_secret_value()
        log.debug("database_configured", dsn=mask_dsn(dsn))
        yield dsn
        return
    embedded = await asyncio.wait_for(
        asyncio.to_thread(start_embedded, settings.state_dir),
        timeout=settings.embedded_pg_timeout,
    )
    log.info("embedded_postgres_started", data_dir=str(embedded.data_dir))
    try:
        yield embedded.dsn
    finally:
        await asyncio.to_thread(embedded.stop)
        log.info("embedded_postgres_released", data_dir=str(embedded.data_dir))


def _decode_json(text: str) -> Any:
    # What the web app stored may be valid JSON Python cannot read back (nested
    # thousands deep, a number of thousands of digits): one such row must fail with
    # a reason, not take down the query that read it with every other row.
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return UnreadableJson(len(text))


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb columns come back as Python objects, and go in from them.
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(
            type_name, encoder=json.dumps, decoder=_decode_json, schema="pg_catalog"
        )


async def connect(dsn: str, *, role: str = "cli") -> asyncpg.Connection:
    """One connection outside any pool (the listener, the CLI, migrations).

    `role` shows in pg_stat_activity's application_name, so an operator can tell
    the listener from the pool at a glance."""
    kwargs = {**CONNECT_KWARGS, "server_settings": {"application_name": f"prebookd-{role}"}}
    try:
        conn = await asyncpg.connect(dsn, **kwargs)
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        raise DatabaseError(f"cannot connect to Postgres at {mask_dsn(dsn)}: {exc}") from exc
    await _init_connection(conn)
    return cast(asyncpg.Connection, conn)


async def create_pool(dsn: str, settings: Settings) -> asyncpg.Pool:
    """The daemon's pool, sized by settings: it never grows with the number of rows."""
    try:
        pool = await asyncpg.create_pool(
            dsn,
            min_size=settings.db_pool_min,
            max_size=settings.db_pool_max,
            # A query on a connection that went silent (half-open TCP) fails after
            # this instead of hanging the daemon's bookkeeping forever.
            command_timeout=POOL_COMMAND_TIMEOUT,
            init=_init_connection,
            **CONNECT_KWARGS,
        )
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        raise DatabaseError(f"cannot connect to Postgres at {mask_dsn(dsn)}: {exc}") from exc
    assert pool is not None
    return pool
