"""Freed places: rows that ended "full" with `watch` set are booked when a place frees.

Every round (a few a minute, off the hot windows around instants) the watched rows are
read, grouped by (box, day), and each group's listing is read once for all its
watchers, every `watch_interval` (`watch_interval_last_hour` once one of its classes
starts within the hour), with the background session of one of its watchers: each
read the next one in turn that has a working session. Where a watched class shows
`ocupation < limit`, its watchers are booked oldest first (`created_at`), one request
each, as many as places show free; a "full" answer ends that class's turn.

Before a watcher's request the row is claimed in Postgres (`watch_store.claim_turn`):
two instances on one database never both send for a row, and while another instance
holds a claim on a watcher of the class (its request in flight), this one leaves that
class alone for the round, so a younger row never goes before an older one. A claim
runs out after CLAIM_SECONDS (a crashed instance blocks nothing for long).

A member who holds the class already (booked or on its waiting list: by hand, say)
is not booked again, and their watch ends then, so a cancellation by hand is never
undone: the listing shows it for its reader (its `bookState` is the reader's), and
before booking any other watcher their own view of the day is read (a request like
the others). Watching a row ends also when it is booked, when it is cancelled (it is
no longer `failed`), or at `watch_until` (default: the class start minus the box's
cancellation cutoff, `boxes.cancel_cutoff_seconds`, else `watch_cutoff`).

The waiting list: a row `completed` as `waitlisted` is watched in the same rounds, with
the listing read with its own member's session (the listing's `bookState` is the
reader's): when it shows a place (`bookState` 1) the row's outcome becomes `booked`
(and the member is told); when it shows neither place nor wait, the member left the
list and the watch ends; at the class start it ends too.

Bounded: at most `watch_requests_per_minute` requests (listings, members' views and
bookings) per box per minute, nothing to a box the client has paused (HTTP 429, an
HTML 403), and a listing that fails is read again after a doubling delay (up to 10
minutes). Every booking goes through the client's write hook with the row's instant as
`not_before`, like any other request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

import aiohttp
import asyncpg
import structlog

from prebookd.aimharder.account import AccountError
from prebookd.aimharder.classes import ClassInfo, list_classes
from prebookd.aimharder.client import AimHarderClient, Attempt
from prebookd.aimharder.proxy import ProxiedSessions
from prebookd.daemon.clock import WallClock
from prebookd.db import watch_store
from prebookd.errors import BadRow, describe
from prebookd.hosts import box_base_url
from prebookd.log import mask_email
from prebookd.models import build_booking
from prebookd.proxies import box_proxy_url
from prebookd.settings import Settings

log = structlog.get_logger(__name__)

MAX_BACKOFF = 600.0
LAST_HOUR = 3600.0
# A watch claim's length: far above a view and a booking request (each bounded by the
# client's timeouts), short enough that a crashed instance's claim frees its class soon.
CLAIM_SECONDS = 60.0


@dataclass(frozen=True)
class WatchTiming:
    interval: float = 60.0
    interval_last_hour: float = 15.0
    requests_per_minute: int = 20
    cutoff: float = 3600.0  # watching ends this long before the class starts

    @classmethod
    def of(cls, settings: Settings) -> WatchTiming:
        return cls(
            settings.watch_interval,
            settings.watch_interval_last_hour,
            settings.watch_requests_per_minute,
            settings.watch_cutoff,
        )


def class_start(info: ClassInfo, day: str, timezone: str | None) -> float | None:
    """The class's start (epoch) from its listed time ("07:00 - 08:00") and day
    (YYYYMMDD) in the box's time zone; None when they cannot be read."""
    try:
        hour, minute = (int(x) for x in info.start.split(":", 1))
        date = dt.datetime.strptime(day, "%Y%m%d")
        zone = ZoneInfo(timezone or "Europe/Madrid")
    except (ValueError, KeyError):
        return None
    return date.replace(hour=hour, minute=minute, tzinfo=zone).timestamp()


def read_interval(starts: Sequence[float], now: float, timing: WatchTiming) -> float:
    """How long until a group's listing is read again."""
    soon = any(0 <= start - now <= LAST_HOUR for start in starts)
    return timing.interval_last_hour if soon else timing.interval


class Budget:
    """Requests per box in the last minute, at most `per_minute`."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._sent: dict[str, deque[float]] = defaultdict(deque)

    def take(self, box: str, now: float) -> bool:
        sent = self._sent[box]
        while sent and sent[0] <= now - 60.0:
            sent.popleft()
        if len(sent) >= self.per_minute:
            return False
        sent.append(now)
        return True


@dataclass
class _Group:
    next_read: float = 0.0
    backoff: float = 0.0
    turn: int = 0  # whose session reads the listing next: an index into its watchers


class Watcher:
    def __init__(
        self,
        pool: asyncpg.Pool,
        client: AimHarderClient,
        *,
        timing: WatchTiming,
        allowed_hosts: Sequence[str],
        wait_clear: Callable[[], Awaitable[None]],
        owner: str,
        clock: WallClock = time.time,
    ) -> None:
        self._pool = pool
        self._owner = owner  # this process's own name in watch claims (its lease owner)
        self._client = client
        self.timing = timing
        self._allowed_hosts = allowed_hosts
        self._wait_clear = wait_clear
        self._clock = clock
        self._budget = Budget(timing.requests_per_minute)
        self._groups: dict[tuple[UUID, str], _Group] = {}
        self._http: ProxiedSessions | None = None
        self.booked = 0

    async def start(self) -> None:
        self._http = ProxiedSessions(self._client.proxy_url, limit=4)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self._wait_clear()
            try:
                await self.watch_once()
            except Exception as exc:
                # As the planner's: bookings armed matter more than second chances; a
                # round that fails (Postgres away, a bug) is logged and tried again.
                log.warning("watch_round_failed", error=describe(exc))
            tick = min(max(min(self.timing.interval, self.timing.interval_last_hour) / 3, 0.2), 5.0)
            try:
                await asyncio.wait_for(stop.wait(), timeout=tick)
            except TimeoutError:
                pass

    async def watch_once(self) -> None:
        records = await watch_store.watched_rows(self._pool)
        groups: dict[tuple[UUID, str], list[asyncpg.Record]] = defaultdict(list)
        for record in records:
            data = record["booking_data"]
            if isinstance(data, dict) and isinstance(data.get("day"), str):
                groups[(record["box_id"], data["day"])].append(record)
        for key in set(self._groups) - set(groups):
            del self._groups[key]  # nobody watches there any more
        for key, members in groups.items():
            group = self._groups.setdefault(key, _Group())
            if self._clock() >= group.next_read:
                await self._watch_group(key[1], group, members)

    async def _watch_group(self, day: str, group: _Group, records: list[asyncpg.Record]) -> None:
        box = records[0]["subdomain"] or ""
        now = self._clock()
        if self._client.paused(box) is not None or not self._budget.take(box, now):
            return
        listing = await self._listing(day, records, group.turn)
        if listing is None:
            group.backoff = min(max(2 * group.backoff, self.timing.interval), MAX_BACKOFF)
            group.next_read = now + group.backoff
            return
        read_by, classes = listing
        group.turn = read_by + 1  # the next read: the next watcher's session
        reader = records[read_by]["id"]
        group.backoff = 0.0
        by_id = {c.session_id: c for c in classes}
        starts: list[float] = []
        free: dict[str, int] = {}
        for record in records:
            info = by_id.get(str(record["booking_data"].get("id")))
            if info is None:
                continue  # not listed (yet): looked for again next read
            start = class_start(info, day, record["timezone"])
            starts += [] if start is None else [start]
            if record["waitlisted"]:
                if start is not None and self._clock() >= start:
                    await watch_store.stop_watching(self._pool, record["id"], "class started")
                elif record["id"] == reader:
                    await self._waitlisted(record, info)
                else:
                    await self._waitlisted(record, await self._own_view(day, record, info))
                continue
            if await self._watch_over(record, start, box):
                continue
            if record["id"] == reader and (info.booked or info.waitlisted):
                await self._holds(record)
                continue
            left = free.setdefault(info.session_id, info.limit - info.occupancy)
            if left <= 0 or self._client.paused(box) is not None:
                continue
            if not self._budget.take(box, self._clock()):
                break
            if not await watch_store.claim_turn(
                self._pool, record["id"], self._owner, CLAIM_SECONDS
            ):
                # Another instance's request for this class is in flight (or the row
                # changed meanwhile): the class's turn is theirs this round.
                free[info.session_id] = 0
                log.info("watch_turn_held", prebooking_id=str(record["id"]), box=box)
                continue
            try:
                code = await self._turn(day, record, info, reader)
            finally:
                await watch_store.release_turn(self._pool, record["id"], self._owner)
            if code == "no_budget":
                break
            free[info.session_id] = 0 if code == "full" else left - (code == "booked")
        group.next_read = now + read_interval(starts, now, self.timing)

    async def _watch_over(self, record: asyncpg.Record, start: float | None, box: str) -> bool:
        """End the row's watch if its time is up: `watch_until`, else the class start
        minus the box's cancellation cutoff (else `watch_cutoff`)."""
        until = record["watch_until"]
        cutoff = record["cancel_cutoff_seconds"]
        cutoff = self.timing.cutoff if cutoff is None else float(cutoff)
        end = until.timestamp() if until else (start - cutoff if start is not None else None)
        if end is None or self._clock() < end:
            return False
        await watch_store.stop_watching(self._pool, record["id"], "watch ended")
        log.info("watch_ended", prebooking_id=str(record["id"]), box=box)
        return True

    async def _holds(self, record: asyncpg.Record) -> None:
        """The member holds the class already (booked or waitlisted, by hand maybe):
        their watch ends, so a later cancellation of theirs is never undone."""
        note = "watch ended: the member holds the class already"
        if await watch_store.record_booked(self._pool, record["id"], "already_booked", {}, note):
            log.info("watch_ended", reason="holds the class already",
                     prebooking_id=str(record["id"]), box=record["subdomain"])  # fmt: skip

    async def _turn(self, day: str, record: asyncpg.Record, info: ClassInfo, reader: UUID) -> str:
        """A claimed watcher's turn at a free place (one request taken from the budget
        already): their own view first unless they read the listing, then their
        booking. The outcome code; "no_budget" when the booking had to wait."""
        box = record["subdomain"] or ""
        if record["id"] != reader:
            view = await self._listing(day, [record], 0)
            mine = None if view is None else next(
                (c for c in view[1] if c.session_id == info.session_id), None
            )  # fmt: skip
            if mine is None:  # their view cannot be read: not booked blind this round
                log.info("watch_view_failed", prebooking_id=str(record["id"]), box=box)
                return "no_view"
            if mine.booked or mine.waitlisted:
                await self._holds(record)
                return "holds"
            if self._client.paused(box) is not None or not self._budget.take(box, self._clock()):
                return "no_budget"
        return await self._book(record)

    async def _listing(
        self, day: str, records: list[asyncpg.Record], turn: int
    ) -> tuple[int, list[ClassInfo]] | None:
        """The (box, day) listing, read with the session of the watcher at `turn`, or
        of the next one after it whose session works; with that watcher's index."""
        assert self._http is not None, "watcher not started"
        first = records[0]
        try:
            url = box_base_url(first["base_url"], first["subdomain"], self._allowed_hosts)
            http = self._http.get(box_proxy_url(first["proxy_url"]))
        except BadRow as exc:
            log.warning("watch_listing_failed", box=first["subdomain"], error=exc.reason)
            return None
        for step in range(len(records)):
            index = (turn + step) % len(records)
            record = records[index]
            cookies = record["aimharder_cookies"]
            if not isinstance(cookies, list) or not cookies:
                continue
            await self._wait_clear()
            try:
                classes = await list_classes(
                    http, url, first["aimharder_box_id"] or "", day, cookies
                )
            except AccountError as exc:  # a dead session: the next watcher's
                log.warning(
                    "watch_listing_failed",
                    box=first["subdomain"],
                    member=mask_email(record["user_email"] or ""),
                    error=describe(exc),
                )
                continue
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("watch_listing_failed", box=first["subdomain"], error=describe(exc))
                return None
            return index, classes
        return None

    async def _own_view(
        self, day: str, record: asyncpg.Record, shared: ClassInfo
    ) -> ClassInfo | None:
        """The class as the row's member sees it (their bookState), or None."""
        box = record["subdomain"] or ""
        if self._client.paused(box) is not None or not self._budget.take(box, self._clock()):
            return None
        listing = await self._listing(day, [record], 0)
        if listing is None:
            return None
        return next((c for c in listing[1] if c.session_id == shared.session_id), None)

    async def _waitlisted(self, record: asyncpg.Record, info: ClassInfo | None) -> None:
        fields = {"prebooking_id": str(record["id"]), "box": record["subdomain"]}
        if info is None or info.waitlisted:
            return
        if info.booked:
            note = "moved from the waiting list to a place"
            if await watch_store.record_promoted(self._pool, record["id"], note):
                log.info("watch_promoted", **fields)
        else:
            note = "watch ended: no longer on the waiting list"
            await watch_store.stop_watching(self._pool, record["id"], note)
            log.info("watch_ended", reason="left the waiting list", **fields)

    async def _book(self, record: asyncpg.Record) -> str:
        """One booking request for a watched row; the outcome code."""
        try:
            booking = build_booking(record, self._allowed_hosts)
        except BadRow as exc:
            await watch_store.stop_watching(self._pool, record["id"], f"watch ended: {exc.reason}")
            return "bad_row"
        booking = dataclasses.replace(booking, alternatives=())
        await self._wait_clear()
        exchange = await self._client.book(booking, Attempt(None, not_before=booking.available_at))
        outcome = exchange.outcome
        fields: dict[str, Any] = {"prebooking_id": str(booking.id), "box": booking.box}
        if outcome.code in ("booked", "waitlisted", "already_booked"):
            answer = exchange.answer if exchange.answer is not None else {}
            note = "booked when a place was freed"
            if await watch_store.record_booked(self._pool, booking.id, outcome.code, answer, note):
                self.booked += 1
                log.info("watch_booked", answer=outcome.code, **fields)
        else:
            log.info("watch_not_booked", answer=outcome.code, reason=outcome.reason, **fields)
        return outcome.code
