"""Connections to Postgres: which one (configured or embedded) and how they are opened."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from typing import Any, cast

import asyncpg
import structlog

from prebookd.db.embedded import EmbeddedPostgres, start_embedded
from prebookd.errors import DatabaseError
from prebookd.models import UnreadableJson
from prebookd.settings import Settings, mask_dsn

log = structlog.get_logger(__name__)

# A dead Postgres is noticed by the listener's health check (a SELECT 1 with a
# timeout); a pool connection gone silent, by the bound on each statement the daemon
# runs (store.QUERY_TIMEOUT), which closes it.
SERVER_SETTINGS = {"application_name": "prebookd-pool"}
CONNECT_KWARGS: dict[str, Any] = {
    "timeout": 10,
    "server_settings": SERVER_SETTINGS,
    "statement_cache_size": 100,
}


@contextlib.asynccontextmanager
async def database_dsn(settings: Settings, *, quiet: bool = False) -> AsyncIterator[str]:
    """The DSN to use: the configured one, or an embedded Postgres kept up meanwhile."""
    async with database(settings, quiet=quiet) as (dsn, _):
        yield dsn


@contextlib.asynccontextmanager
async def database(
    settings: Settings, *, quiet: bool = False
) -> AsyncIterator[tuple[str, EmbeddedPostgres | None]]:
    """The DSN to use, and the embedded Postgres behind it (None: one configured).

    The embedded server's start and release are logged at info for the daemon, whose
    log is a record of what it did; `quiet` (a command such as `prebookd list`) logs
    them at debug, so a command's stderr holds only what it has to say."""
    announce = log.debug if quiet else log.info
    if settings.database_url is not None:
        dsn = settings.database_url.get_secret_value()
        log.debug("database_configured", dsn=mask_dsn(dsn))
        yield dsn, None
        return
    embedded = await asyncio.wait_for(
        asyncio.to_thread(start_embedded, settings.state_dir),
        timeout=settings.embedded_pg_timeout,
    )
    announce("embedded_postgres_started", data_dir=str(embedded.data_dir))
    try:
        yield embedded.dsn, embedded
    finally:
        await asyncio.to_thread(embedded.stop)
        announce("embedded_postgres_released", data_dir=str(embedded.data_dir))


def _decode_json(text: str) -> Any:
    # What the web app stored may be valid JSON Python cannot read back (nested
    # thousands deep, a number of thousands of digits): one such row must fail with
    # a reason, not take down the query that read it with every other row.
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return UnreadableJson(len(text))


# TCP keepalives on every connection to Postgres: an idle connection whose peer
# vanished (a VPS's NAT forgetting the flow, a firewall dropping its packets) is
# noticed and closed within KEEPALIVE_IDLE + KEEPALIVE_INTERVAL * KEEPALIVE_COUNT
# (25 s) instead of when a claim next picks it, and the probes keep a NAT's flow alive.
# Data left unacknowledged for TCP_USER_TIMEOUT_MS aborts the connection too.
KEEPALIVE_IDLE = 10
KEEPALIVE_INTERVAL = 5
KEEPALIVE_COUNT = 3
TCP_USER_TIMEOUT_MS = 15_000


def _keep_alive(conn: asyncpg.Connection) -> None:
    # asyncpg has no option for this; its transport's socket is the one to set.
    transport = getattr(conn, "_transport", None)
    sock = None if transport is None else transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return  # a Unix socket (the embedded Postgres): no network in between
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
        ("TCP_KEEPCNT", KEEPALIVE_COUNT),
        ("TCP_USER_TIMEOUT", TCP_USER_TIMEOUT_MS),
    ):
        if hasattr(socket, option):  # Linux has them all; macOS lacks some
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


async def _init_connection(conn: asyncpg.Connection) -> None:
    _keep_alive(conn)
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
            # No asyncpg command_timeout: on timeout it sends a cancel request over a
            # new connection, down the same dead path; store bounds each statement.
            init=_init_connection,
            **CONNECT_KWARGS,
        )
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        raise DatabaseError(f"cannot connect to Postgres at {mask_dsn(dsn)}: {exc}") from exc
    assert pool is not None
    return pool
