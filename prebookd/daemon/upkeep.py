"""The daemon's upkeep beside the bookings: waiting for Postgres at start, the full
resync that backs NOTIFY up, the embedded Postgres kept running, systemd's watchdog
fed from the event loop, and prebookd's own old records deleted."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

import asyncpg
import structlog

from prebookd.daemon.clock import HotWindows
from prebookd.daemon.engine import Engine
from prebookd.daemon.supervise import Backoff, first_of
from prebookd.daemon.systemd import Notifier
from prebookd.db import history_store
from prebookd.db.connection import connect
from prebookd.db.embedded import EmbeddedPostgres
from prebookd.errors import DatabaseError, EmbeddedPostgresError, describe

log = structlog.get_logger(__name__)

EMBEDDED_CHECK_INTERVAL = 2.0  # how often the embedded Postgres is checked to be up
PURGE_INTERVAL = 3600.0  # old history goes by the day: hourly is often enough


async def connect_when_up(dsn: str, stop: asyncio.Event) -> asyncpg.Connection | None:
    """Wait for Postgres at start rather than exit: a restart during an outage must
    come up as soon as Postgres does, and replay the result spool then."""
    backoff = Backoff(0.5, 10.0)
    while True:
        try:
            return await connect(dsn, role="migrate")
        except DatabaseError as exc:
            wait = backoff.next()
            log.warning("database_unreachable", error=describe(exc), retry_in_s=round(wait, 2))
        await first_of(stop.wait(), timeout=wait)
        if stop.is_set():
            return None


async def reconcile(
    engine: Engine,
    connected: Callable[[], bool],
    interval: Callable[[], float],
    report: Callable[[], None],
    stop: asyncio.Event,
) -> None:
    """Full resync every reconcile_interval: the NOTIFY safety net."""
    while not stop.is_set():
        await first_of(stop.wait(), timeout=interval())
        if stop.is_set() or not connected():
            continue  # the listener resyncs itself when it reconnects
        try:
            rows = await engine.resync()
            log.debug("reconciled", rows=rows, armed=engine.armed_count)
        except Exception as exc:
            log.warning("reconcile_failed", error=describe(exc))
        report()


async def keep_embedded_up(
    embedded: EmbeddedPostgres, hot: HotWindows, stop: asyncio.Event
) -> None:
    """The embedded Postgres is this daemon's to keep: if it goes away (killed with
    the cgroup of a command that started it first, say), start it again. Armed
    rows fire from memory meanwhile; the listener reconnects and resyncs."""
    while not stop.is_set():
        await first_of(stop.wait(), timeout=EMBEDDED_CHECK_INTERVAL)
        if stop.is_set() or await asyncio.to_thread(embedded.is_running):
            continue
        log.error("embedded_postgres_gone", data_dir=str(embedded.data_dir))
        await hot.wait_clear()  # starting it takes a CPU-heavy second or two
        try:
            await asyncio.to_thread(embedded.start_again)
        except EmbeddedPostgresError as exc:
            log.error("embedded_postgres_start_failed", error=describe(exc))
            continue  # tried again at the next check
        log.info("embedded_postgres_started_again", data_dir=str(embedded.data_dir))


async def watchdog(notifier: Notifier, stop: asyncio.Event) -> None:
    """WATCHDOG=1 from the event loop itself: a blocked loop stops the pings."""
    usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
    if not notifier.enabled or usec <= 0:
        await stop.wait()
        return
    interval = usec / 2_000_000
    while not stop.is_set():
        notifier.notify("WATCHDOG=1")
        await first_of(stop.wait(), timeout=interval)


async def purge_history(
    pool: asyncpg.Pool,
    keep_days: Callable[[], int],
    hot: HotWindows,
    stop: asyncio.Event,
) -> None:
    """Delete prebookd's own records older than `history_days`, hourly, off the
    moments around instants. A role that may not delete is told once, then left be."""
    while not stop.is_set():
        await hot.wait_clear()
        try:
            deleted = await history_store.purge(pool, keep_days())
        except asyncpg.InsufficientPrivilegeError as exc:
            log.warning("history_purge_not_allowed", error=describe(exc),
                        action="grant DELETE as deploy/prebookd-role.sql does")  # fmt: skip
            return
        except Exception as exc:  # Postgres away: the next hour's turn
            log.warning("history_purge_failed", error=describe(exc))
        else:
            if any(deleted.values()):
                log.info("history_purged", days=keep_days(), **deleted)
        await first_of(stop.wait(), timeout=PURGE_INTERVAL)
