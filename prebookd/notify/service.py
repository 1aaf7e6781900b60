"""Notifications as the daemon sees them: one object to start, hook and show.

It owns the outbox sender, the heartbeat (when `heartbeat_url` is set) and the watch
on Postgres (the operator is told, directly, when it has been away `alarm_after`: the
outbox is in Postgres). The daemon hands in what it knows as callables: its hot
windows, its next instant and whether its listener is connected.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import structlog

from prebookd.db import notify_store
from prebookd.errors import describe
from prebookd.log import mask_email
from prebookd.notify import channels
from prebookd.notify.heartbeat import Heartbeat
from prebookd.notify.sender import OutboxSender
from prebookd.settings import Settings

log = structlog.get_logger(__name__)

WATCH_TICK = 1.0
# The listener's connection down this long (a reconnect blip excluded) counts as
# Postgres away for the heartbeat: it says /fail well within `alarm_after`.
UNHEALTHY_AFTER = 5.0


class Notifications:
    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool,
        *,
        wait_clear: Callable[[], Awaitable[None]],
        next_instant: Callable[[], float | None],
        db_connected: Callable[[], bool],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._pool = pool
        self._clock = clock
        self._db_connected = db_connected
        self.alarm_after = settings.alarm_after
        self.keep_horizon = settings.session_keep_horizon
        urls = settings.operator_notify_urls
        self.sender = OutboxSender(
            pool,
            operator_urls=_split(urls.get_secret_value() if urls else ""),
            workers=settings.notify_workers,
            send_timeout=settings.notify_timeout,
            wait_clear=wait_clear,
            next_instant=next_instant,
            clock=clock,
        )
        self.heartbeat: Heartbeat | None = None
        if settings.heartbeat_url is not None and settings.heartbeat_url.get_secret_value():
            self.heartbeat = Heartbeat(
                settings.heartbeat_url.get_secret_value(),
                settings.heartbeat_interval,
                healthy=self.healthy,
                quiet=self.sender.quiet,
                clock=clock,
            )
        self._db_down_since: float | None = None
        self._db_alarmed = False
        self._tasks: set[asyncio.Task[Any]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        parts = [self.sender.run(stop), self._watch(stop)]
        if self.heartbeat is not None:
            parts.append(self.heartbeat.run(stop))
        await asyncio.gather(*parts)

    def healthy(self) -> bool:
        down = self._db_down_since
        return down is None or self._clock() - down < min(UNHEALTHY_AFTER, self.alarm_after / 2)

    def results_written(self, _updates: object) -> None:
        """A result batch is in Postgres, with its messages: send them."""
        self.sender.wake()

    def session_dead(self, email: str) -> None:
        """AimHarder ended a member's session: warn of each prebooking it would fail
        (once per row: the outbox's key), off the path that found it out."""
        task = asyncio.create_task(self._warn_dead(email), name="notify-session-dead")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _warn_dead(self, email: str) -> None:
        horizon_end = self._clock() + self.keep_horizon
        try:
            await self.sender.quiet()
            new = await notify_store.enqueue_member_warning(
                self._pool, email, "session_dead", horizon_end
            )
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("notify_warning_not_queued", member=mask_email(email), error=describe(exc))
            return
        if new:
            log.info("notify_warning_queued", member=mask_email(email), cause="session_dead")
            self.sender.wake()

    async def _watch(self, stop: asyncio.Event) -> None:
        """Postgres away longer than `alarm_after`: the operator is told directly."""
        while not stop.is_set():
            now = self._clock()
            if self._db_connected():
                if self._db_alarmed:
                    self._alert("Postgres is back", "prebookd reaches Postgres again.")
                self._db_down_since, self._db_alarmed = None, False
            else:
                if self._db_down_since is None:
                    self._db_down_since = now
                away = now - self._db_down_since
                if away >= self.alarm_after and not self._db_alarmed:
                    self._db_alarmed = True
                    log.error("postgres_unreachable_alarm", away_s=round(away))
                    self._alert(
                        "Postgres unreachable",
                        f"prebookd has not reached Postgres for {away:.0f} s. Armed rows "
                        "still fire; results wait in the spool.",
                    )
            try:
                await asyncio.wait_for(stop.wait(), timeout=WATCH_TICK)
            except TimeoutError:
                pass

    def _alert(self, title: str, body: str) -> None:
        if self.sender.operator_urls:
            self.sender.send_direct(self.sender.operator_urls, "prebookd: " + title, body)

    def snapshot(self) -> dict[str, Any]:
        shown: dict[str, Any] = {"notifications": self.sender.snapshot()}
        if self.heartbeat is not None:
            shown["heartbeat"] = self.heartbeat.snapshot()
        return shown


def _split(text: str) -> list[str]:
    urls = [part.strip() for part in text.split(",") if part.strip()]
    for url in urls:
        channels.register_url(url)
    return urls
