"""The LISTEN connection: one dedicated asyncpg connection, never from the pool.

Notifications sent while it is disconnected are lost by design, so every (re)connect
is followed by a resync from the table. A connection that goes silent (half-open
TCP) is caught by a periodic `SELECT 1` with a timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import structlog

from prebookd.daemon.supervise import Backoff
from prebookd.db.connection import connect
from prebookd.errors import DatabaseError, describe

log = structlog.get_logger(__name__)

CHANNEL = "prebookings"
HEALTH_INTERVAL = 5.0  # a silent connection is noticed within interval + timeout
HEALTH_TIMEOUT = 3.0
BACKOFF_FIRST = 0.2
BACKOFF_MAX = 10.0


class Listener:
    def __init__(
        self,
        dsn: str,
        *,
        on_notification: Callable[[str], None],
        on_connected: Callable[[], Awaitable[Any]],
    ) -> None:
        self._dsn = dsn
        self._on_notification = on_notification
        self._on_connected = on_connected
        self.ready = asyncio.Event()  # set after the first successful connect + resync
        self.connected = False
        self.reconnects = 0
        self.backend_pid: int | None = None
        self._had_connection = False

    async def run(self, stop: asyncio.Event) -> None:
        backoff = Backoff(BACKOFF_FIRST, BACKOFF_MAX)
        while not stop.is_set():
            self._had_connection = False
            wait = backoff.next()
            try:
                await self._session(stop)
            except (TimeoutError, DatabaseError, OSError, asyncpg.PostgresError) as exc:
                if self._had_connection:
                    backoff.reset()  # it worked until now: come back at once
                    wait = backoff.next()
                log.warning("listener_disconnected", error=describe(exc), retry_in_s=round(wait, 2))
            self.connected = False
            if stop.is_set():
                break
            try:
                await asyncio.wait_for(stop.wait(), timeout=wait)
            except TimeoutError:
                pass
            self.reconnects += 1

    async def _session(self, stop: asyncio.Event) -> None:
        conn = await connect(self._dsn, role="listener")
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        try:
            await conn.add_listener(CHANNEL, self._deliver)
            self.connected = self._had_connection = True
            self.backend_pid = conn.get_server_pid()
            rows = await self._on_connected()
            log.info("listener_connected", channel=CHANNEL, resynced_rows=rows)
            self.ready.set()
            while not stop.is_set() and not lost.is_set():
                waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(lost.wait())]
                done, pending = await asyncio.wait(
                    waiters, timeout=HEALTH_INTERVAL, return_when=asyncio.FIRST_COMPLETED
                )
                for waiter in pending:
                    waiter.cancel()
                if not done:
                    await conn.fetchval("SELECT 1", timeout=HEALTH_TIMEOUT)
            if lost.is_set() and not stop.is_set():
                raise DatabaseError("listener connection lost")
        finally:
            self.connected = False
            if not conn.is_closed():
                try:
                    await asyncio.wait_for(conn.close(), timeout=2)
                except (TimeoutError, OSError, asyncpg.PostgresError):
                    conn.terminate()

    def _deliver(self, _conn: Any, _pid: int, _channel: str, payload: Any) -> None:
        try:
            self._on_notification(str(payload))
        except Exception:
            # A bug in handling one notification must not kill the listener.
            log.exception("notification_handling_failed")
