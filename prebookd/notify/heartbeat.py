"""The dead-man's switch: a URL fetched while the daemon is healthy, `URL/fail` once
when it stops being so (healthchecks.io's convention, also Uptime Kuma's push
monitors). The service outside raises the alarm when the pings stop, so a machine
that is down, frozen or cut off is noticed by its silence.

Pure state (`HeartbeatState`: what to fetch, given `now` and health) and a loop that
fetches it between instants.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import structlog

from prebookd.errors import describe
from prebookd.notify.channels import mask_url, register_url

log = structlog.get_logger(__name__)

TICK = 1.0  # health is looked at this often
FETCH_TIMEOUT = 10.0


@dataclass
class HeartbeatState:
    interval: float
    healthy: bool = True
    last_ping: float | None = None
    failed_sent: bool = False

    def due(self, now: float, healthy: bool) -> str | None:
        """'ping', 'fail' or None: what to fetch now."""
        if healthy:
            if not self.healthy or self.last_ping is None or now - self.last_ping >= self.interval:
                self.healthy, self.failed_sent, self.last_ping = True, False, now
                return "ping"
            return None
        self.healthy = False
        if not self.failed_sent:
            self.failed_sent = True
            return "fail"
        return None


class Heartbeat:
    def __init__(
        self,
        url: str,
        interval: float,
        *,
        healthy: Callable[[], bool],
        quiet: Callable[[], Awaitable[None]],
        clock: Callable[[], float],
    ) -> None:
        register_url(url)
        self.url = url.rstrip("/")
        self.state = HeartbeatState(interval)
        self._healthy = healthy
        self._quiet = quiet
        self._clock = clock
        self.pings = 0
        self.fails = 0
        self.errors = 0

    async def run(self, stop: asyncio.Event) -> None:
        timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while not stop.is_set():
                what = self.state.due(self._clock(), self._healthy())
                if what is not None:
                    await self._quiet()
                    await self._fetch(http, what)
                try:
                    await asyncio.wait_for(stop.wait(), timeout=TICK)
                except TimeoutError:
                    pass

    async def _fetch(self, http: aiohttp.ClientSession, what: str) -> None:
        url = self.url if what == "ping" else self.url + "/fail"
        try:
            async with http.get(url) as answer:
                await answer.read()
                ok = answer.status < 400
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self.errors += 1
            log.warning("heartbeat_failed", url=mask_url(self.url), error=describe(exc))
            if what == "fail":
                self.state.failed_sent = False  # say it again at the next tick
            else:
                self.state.last_ping = None
            return
        if what == "ping":
            self.pings += 1
        else:
            self.fails += 1
            log.warning("heartbeat_fail_sent", url=mask_url(self.url))
        if not ok:
            log.warning("heartbeat_refused", url=mask_url(self.url), status=answer.status)

    def snapshot(self) -> dict[str, object]:
        return {
            "healthy": self.state.healthy,
            "pings": self.pings,
            "fails": self.fails,
            "errors": self.errors,
        }
