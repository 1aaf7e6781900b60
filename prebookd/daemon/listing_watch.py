"""The listing watch: early warnings for hand-made rows at risk (issue 15).

Every `listing_check_interval` the rows made by hand (rules' rows are the planner's:
it reads their listings itself), pending and unclaimed, opening within
`session_keep_horizon`, are checked against their (box, day) listing. Each listing is
read once a round for all its rows, with the background session of one of their
members: the one checked longest ago first, so that round after round each member's
own session is tried. A session the box rejects (logout, 401, a redirect to the login
page) warns that member's rows there (`session_rejected`) and the next member is
tried; a class missing from a listing read fine warns its row (`class_gone`). Each
warning goes once per row and cause (the outbox's key). A listing that fails otherwise
(5xx, 429, a timeout) warns nobody: it is logged and its box left alone for a while.

No request goes near an instant: none within `arm_lead` (and a request's time) before
the next one, none for a few seconds after one, none in the hot windows; and at most
`listing_check_max` listing requests a round.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from uuid import UUID

import asyncpg
import structlog

from prebookd.aimharder.classes import ClassInfo
from prebookd.aimharder.proxy import ProxiedSessions
from prebookd.daemon.clock import WallClock
from prebookd.daemon.listings import read_listing
from prebookd.daemon.supervise import Backoff, first_of
from prebookd.db import notify_store
from prebookd.errors import describe
from prebookd.log import mask_email
from prebookd.settings import Settings

log = structlog.get_logger(__name__)

# A listing request lasts at most this long (account.REQUEST_TIMEOUT's 20 s): it must
# be over before the arming `arm_lead` ahead of an instant begins.
REQUEST_BUDGET = 20.0
# After an instant its retries, answers and results go first.
AFTER_INSTANT = 5.0
POLL = 1.0
BACKOFF_CAP = 3600.0
MAX_ROWS = 5000  # rows checked a round, soonest first

Warn = Callable[[UUID, str, str], Awaitable[bool]]  # (row, member, cause): a message new


@dataclass(frozen=True)
class Watched:
    """A hand-made row the watch checks."""

    id: UUID
    email: str  # lower case
    box: UUID
    day: date
    class_id: str


def group_rows(records: Iterable[asyncpg.Record]) -> dict[tuple[UUID, date], list[Watched]]:
    """Rows by (box, day), in the order given (soonest first); a row whose booking_data
    has no readable day or class id is left out (it fails as a bad row when armed)."""
    groups: dict[tuple[UUID, date], list[Watched]] = {}
    for record in records:
        try:
            day = datetime.strptime(str(record["day"]), "%Y%m%d").date()
        except ValueError:
            continue
        if not record["class_id"]:
            continue
        row = Watched(
            record["id"], record["user_email"].lower(), record["box_id"], day, record["class_id"]
        )
        groups.setdefault((row.box, day), []).append(row)
    return groups


def members_order(rows: Sequence[Watched], checked: Mapping[str, float]) -> list[str]:
    """The members of `rows`, the one whose session was checked longest ago (or never)
    first; ties in the rows' order."""
    emails = list(dict.fromkeys(row.email for row in rows))
    return sorted(emails, key=lambda email: checked.get(email, 0.0))


def gone(rows: Sequence[Watched], classes: Sequence[ClassInfo]) -> list[Watched]:
    """The rows whose class the listing lacks."""
    listed = {c.session_id for c in classes}
    return [row for row in rows if row.class_id not in listed]


class _Stopping(Exception):
    """The daemon stops while a round waits for a quiet moment."""


class ListingWatch:
    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Callable[[], Settings],
        *,
        next_instant: Callable[[], float | None],
        wait_clear: Callable[[], Awaitable[None]],
        warn: Warn,
        clock: WallClock = time.time,
    ) -> None:
        self._pool = pool
        self._settings = settings  # read each round: a reload applies at the next
        self._next_instant = next_instant
        self._wait_clear = wait_clear
        self._warn = warn
        self._clock = clock
        self._http: ProxiedSessions | None = None
        self._stop = asyncio.Event()  # run()'s
        self._last_instant = 0.0
        self._checked: dict[str, float] = {}  # member: when their session was last tried
        self._backoffs: dict[UUID, Backoff] = {}
        self._paused_until: dict[UUID, float] = {}  # box: its listing failed
        self._told: set[tuple[UUID, str]] = set()  # (row, cause) warned of
        self.rounds = 0

    async def run(self, stop: asyncio.Event) -> None:
        """A round every `listing_check_interval` until `stop`; a failed round is logged."""
        self._http, self._stop = ProxiedSessions(self._settings().proxy, limit=2), stop
        try:
            while not stop.is_set():
                try:
                    await self.check_once()
                except _Stopping:
                    break
                except Exception as exc:  # Postgres away, a bug: bookings go on regardless
                    log.warning("listing_check_failed", error=describe(exc))
                await first_of(stop.wait(), timeout=self._settings().listing_check_interval)
        finally:
            await self._http.close()
            self._http = None

    async def check_once(self) -> dict[str, int]:
        """One round; returns what it did (for logs and tests)."""
        assert self._http is not None, "listing watch not running"
        settings = self._settings()
        await self._quiet()
        now = self._clock()
        records = await notify_store.watched_rows(
            self._pool, now + settings.arm_lead, now + settings.session_keep_horizon, MAX_ROWS
        )
        boxes = {r["box_id"]: dict(r) for r in records}
        counts: Counter[str] = Counter(rows=len(records))
        budget = settings.listing_check_max
        seen: set[str] = set()
        for (box, day), rows in group_rows(records).items():
            emails = members_order(rows, self._checked)
            seen.update(emails)
            if budget <= 0 or self._paused_until.get(box, 0.0) > now:
                counts["deferred"] += 1
                continue
            read = await read_listing(
                self._http,
                self._pool,
                boxes[box],
                day,
                emails[:budget],
                allowed_hosts=settings.box_hosts,
                wait_clear=self._quiet,
            )
            where = (boxes[box]["subdomain"], day.isoformat())
            budget -= read.requests
            counts["listings"] += read.requests
            for email in read.rejected:
                self._checked[email] = self._clock()
                for row in rows:
                    if row.email == email and await self._tell(row, "session_rejected", where):
                        counts["warned"] += 1
            if read.classes is not None and read.reader is not None:
                self._checked[read.reader] = self._clock()
                self._backoffs.pop(box, None)
                for row in gone(rows, read.classes):
                    if await self._tell(row, "class_gone", where):
                        counts["warned"] += 1
            elif read.failed is not None:
                backoff = self._backoffs.setdefault(
                    box, Backoff(settings.listing_check_interval, BACKOFF_CAP)
                )
                self._paused_until[box] = self._clock() + backoff.next()
                counts["failed"] += 1
                log.warning(
                    "listing_check_listing_failed", box=where[0], day=where[1], error=read.failed
                )
            elif not read.rejected:
                log.debug(
                    "listing_check_no_session", box=where[0], day=where[1], problems=read.problems
                )
        self._checked = {e: t for e, t in self._checked.items() if e in seen}
        ids = {r["id"] for r in records}
        self._told = {(row, cause) for row, cause in self._told if row in ids}
        self.rounds += 1
        log.debug("listing_check_round", **counts)
        return dict(counts)

    async def _tell(self, row: Watched, cause: str, where: tuple[str, str]) -> bool:
        """Warn of `cause` once per row: logged the first time this process finds it
        (the outbox keeps the once, also across instances); True if a message is new."""
        if (row.id, cause) in self._told:
            return False
        new = await self._warn(row.id, row.email, cause)
        self._told.add((row.id, cause))
        log.info(
            "listing_row_at_risk",
            prebooking_id=str(row.id),
            member=mask_email(row.email),
            box=where[0],
            day=where[1],
            cause=cause,
            messages=new,
        )
        return new

    async def _quiet(self) -> None:
        """Wait until no instant is due within `arm_lead` and a request's time, none
        passed less than AFTER_INSTANT ago, and no hot window is open."""
        while True:
            await self._wait_clear()
            now = self._clock()
            upcoming = self._next_instant()
            if upcoming is not None and upcoming - now < self._settings().arm_lead + REQUEST_BUDGET:
                self._last_instant = max(self._last_instant, upcoming)
            wait = self._last_instant + AFTER_INSTANT - now
            if wait <= 0:
                return
            await first_of(self._stop.wait(), timeout=min(wait, POLL))
            if self._stop.is_set():
                raise _Stopping
