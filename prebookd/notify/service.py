"""Notifications as the daemon sees them: one object to start, hook and show.

It owns the outbox sender, the heartbeat (when `heartbeat_url` is set) and the watch
on Postgres (the operator is told, directly, when it has been away `alarm_after`: the
outbox is in Postgres). The daemon hands in what it knows as callables: its hot
windows, its next instant and whether its listener is connected.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any
from uuid import UUID

import asyncpg
import structlog

from prebookd.db import notify_store
from prebookd.errors import describe
from prebookd.log import mask_email
from prebookd.notify import channels
from prebookd.notify.heartbeat import Heartbeat
from prebookd.notify.operator import Alert, firing_alerts, instant_missed, unclean_start_alert
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
        firings: Callable[[], Sequence[Mapping[str, Any]]] = tuple,
        spooled: Callable[[], int] = int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._pool = pool
        self._clock = clock
        self._db_connected = db_connected
        self._firings = firings
        self._spooled = spooled
        self._seen_firings: deque[str] = deque(maxlen=100)
        self._spool_growing_since: float | None = None
        self._spool_last = 0
        self._spool_alarmed = False
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
        self._missed_until = 0.0  # unhealthy until then: an instant was missed
        self._heartbeat_interval = settings.heartbeat_interval
        self.messages_on = True  # False: the role may not write the outbox (started())
        self._db_alarmed = False
        self._tasks: set[asyncio.Task[Any]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        parts = [self.sender.run(stop), self._watch(stop)]
        if self.heartbeat is not None:
            parts.append(self.heartbeat.run(stop))
        await asyncio.gather(*parts)

    def healthy(self) -> bool:
        """Postgres reached (the listener's connection up, or down only for a blip), and
        no instant missed in the last heartbeat interval (that says /fail once)."""
        now = self._clock()
        if now < self._missed_until:
            return False
        if self._db_connected():
            return True
        if self._db_down_since is None:
            self._db_down_since = now
        # A heartbeat tick (1 s) later at most, /fail is out within alarm_after.
        return now - self._db_down_since < min(UNHEALTHY_AFTER, self.alarm_after / 4)

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

    async def warn_row(self, prebooking_id: UUID, email: str, cause: str) -> bool:
        """Warn a row's member that it is at risk (`cause`, messages.WARNINGS), once per
        row and cause (the outbox's key); True when a message is new. Raises what
        Postgres raised."""
        await self.sender.quiet()
        new = await notify_store.enqueue_row_warning(self._pool, prebooking_id, cause)
        if new:
            log.info(
                "notify_warning_queued",
                member=mask_email(email),
                prebooking_id=str(prebooking_id),
                cause=cause,
            )
            self.sender.wake()
        return bool(new)

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
            self._watch_spool(now)
            for summary in list(self._firings()):
                key = str(summary.get("instant"))
                if key not in self._seen_firings:
                    self._seen_firings.append(key)
                    if instant_missed(summary):
                        log.error("instant_missed", instant=key, count=summary.get("count"))
                        self._missed_until = now + self._heartbeat_interval
                    for alert in firing_alerts(summary):
                        await self._enqueue(alert)
            try:
                await asyncio.wait_for(stop.wait(), timeout=WATCH_TICK)
            except TimeoutError:
                pass

    def _watch_spool(self, now: float) -> None:
        """Results waiting in the spool, more of them for `alarm_after`: say so once."""
        spooled = self._spooled()
        if spooled == 0:
            self._spool_growing_since, self._spool_alarmed = None, False
        elif spooled > self._spool_last and self._spool_growing_since is None:
            self._spool_growing_since = now
        self._spool_last = spooled
        since = self._spool_growing_since
        if since is not None and now - since >= self.alarm_after and not self._spool_alarmed:
            self._spool_alarmed = True
            log.error("result_spool_growing", spooled=spooled)
            self._alert(
                "result spool growing",
                f"{spooled} results have waited for Postgres for {now - since:.0f} s or more.",
            )

    async def started(self, predecessor: str | None, spool_bytes: int) -> None:
        """At start, before anything is armed: may this role write messages at all? Did
        the process before this one stop uncleanly? The operator hears what that means
        (through the outbox)."""
        try:
            async with asyncio.timeout(5.0):  # a start never waits long on this
                self.messages_on = await notify_store.may_notify(self._pool)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("notify_grants_unknown", error=describe(exc))
        if not self.messages_on:
            # Results must be written whatever becomes of their messages.
            log.error(
                "notifications_off",
                reason="the role may not read prebookd_notify_channels or write "
                "prebookd_outbox: run deploy/prebookd-role.sql again",
            )
        if not self.sender.operator_urls or (predecessor is None and not spool_bytes):
            return
        try:
            async with asyncio.timeout(5.0):
                left = (
                    await notify_store.rows_left_by(self._pool, predecessor) if predecessor else {}
                )
            alert = unclean_start_alert(predecessor, left, spool_bytes)
            if alert is not None:
                log.warning("unclean_stop_before", **left, spool_bytes=spool_bytes)
                await self._enqueue(alert)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("notify_start_check_failed", error=describe(exc))

    async def _enqueue(self, alert: Alert) -> None:
        """An operator message through the outbox (once per key)."""
        if not self.sender.operator_urls:
            return
        try:
            payload = {"title": alert.title, "body": alert.body}
            if await notify_store.enqueue_operator(self._pool, alert.key, "operator", payload):
                log.warning("operator_alert_queued", key=alert.key, title=alert.title)
                self.sender.wake()
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("operator_alert_not_queued", key=alert.key, error=describe(exc))

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
