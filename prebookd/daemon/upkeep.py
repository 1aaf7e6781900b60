"""The daemon's upkeep beside the bookings: the embedded Postgres kept running, and
systemd's watchdog fed from the event loop itself."""

from __future__ import annotations

import asyncio
import os

import structlog

from prebookd.daemon.clock import HotWindows
from prebookd.daemon.supervise import first_of
from prebookd.daemon.systemd import Notifier
from prebookd.db.embedded import EmbeddedPostgres
from prebookd.errors import EmbeddedPostgresError, describe

log = structlog.get_logger(__name__)

EMBEDDED_CHECK_INTERVAL = 2.0  # how often the embedded Postgres is checked to be up


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
