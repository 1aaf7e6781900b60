"""The engine: rows in, firings out.

Rows come from resyncs and notifications. Each waits in the `Schedule` heap until
`arm_lead` before its instant; one `loop.call_at` timer is armed for the head. When
it rings, the due rows are claimed (lease) and loaded with their box and session in
one query, and handed to the `Firing` of their instant, which stages and releases
them. Cancels and reschedules reach a row wherever it is: heap, claim in flight, or
firing (up to its gate).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import heapq
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg
import structlog

from prebookd.aimharder.account import SessionDead
from prebookd.aimharder.client import AimHarderClient
from prebookd.daemon.clock import HotWindows, WallClock
from prebookd.daemon.firing import Firing, Timing, iso_instant
from prebookd.daemon.metrics import Metrics
from prebookd.daemon.results import ResultUpdate, ResultWriter
from prebookd.daemon.scheduler import Entry, Schedule
from prebookd.daemon.sessions import SessionKeeper
from prebookd.db import store
from prebookd.errors import BadRow, describe
from prebookd.models import Booking, MemberSession, RowState, build_booking, parse_notice
from prebookd.settings import Settings

log = structlog.get_logger(__name__)

# The head timer is re-armed at least this often, mapping wall time to loop time
# afresh each time, so a wall-clock step is noticed within this long.
MAX_TIMER_DELAY = 30.0
ARM_RETRY_DELAY = 1.0
# A row that could not be read (Postgres away), or that a claim skipped because a
# transaction (the web app's) holds it, is read again after this long, not at once.
FETCH_RETRY_DELAY = 0.2
# Rows sent (or failed) by this instance are not armed again for this long, whatever
# the table says: their results may not be in it yet (Postgres down, a batch in
# flight), and sending twice would book twice.
DONE_MEMORY = 900.0
ACTIVE = ("pending", "loaded", "executing")  # not final: someone may still have to send it
WATCH_INTERVAL = 1.0
RESYNC_CHUNK = 1000  # rows accepted per loop turn during a resync


@dataclass(frozen=True)
class EngineConfig:
    instance: str
    arm_lead: float
    fire_offset: float
    late_grace: float
    horizon: float
    max_lead: float
    lease_seconds: float
    timing: Timing

    @classmethod
    def from_settings(cls, settings: Settings) -> EngineConfig:
        return cls(
            instance=settings.instance_name,
            arm_lead=settings.arm_lead,
            fire_offset=settings.fire_offset,
            late_grace=settings.late_grace,
            horizon=settings.horizon,
            max_lead=settings.max_lead_days * 86_400.0,
            lease_seconds=settings.lease_seconds,
            timing=Timing(
                stage_lead=settings.stage_lead,
                stage_requests=settings.stage_requests,
                spin_window=settings.spin_window,
                retry_window=settings.retry_window,
                retry_interval=settings.retry_interval,
            ),
        )


class Engine:
    def __init__(
        self,
        config: EngineConfig,
        *,
        pool: asyncpg.Pool,
        client: AimHarderClient,
        results: ResultWriter,
        on_crash: Callable[[BaseException], None],
        hot: HotWindows,
        sessions: SessionKeeper | None = None,
        metrics: Metrics | None = None,
        clock: WallClock = time.time,
    ) -> None:
        self.config = config
        self._sessions = sessions
        self._metrics = metrics
        self._pool = pool
        self._client = client
        self._results = results
        self._on_crash = on_crash
        self._clock = clock
        self.schedule = Schedule()
        self.firings: dict[float, Firing] = {}
        self._armed: dict[UUID, Firing] = {}
        # Rows whose claim is in flight, and what happened to them meanwhile: the
        # claim's answer is acted on only once it is back (see _arm).
        self._arming: set[UUID] = set()
        self._forgotten_while_arming: set[UUID] = set()
        self._moved_while_arming: dict[UUID, Entry] = {}
        self._touched: dict[UUID, float] = {}  # id -> clock() of the last notification
        self._to_fetch: set[UUID] = set()
        self._fetch_wakeup = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._arm_not_before = 0.0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._firing_of: dict[asyncio.Task[Any], Firing] = {}
        self._stopping = False
        self.hot = hot
        self.last_firings: deque[dict[str, Any]] = deque(maxlen=20)
        self._done: dict[UUID, float] = {}  # id -> clock() when sent or failed
        self._watched: dict[UUID, RowState] = {}  # rows another instance holds

    # ---- what the daemon asks ------------------------------------------------

    @property
    def armed_count(self) -> int:
        return len(self.schedule) + len(self._armed)

    def next_instant(self) -> float | None:
        instants = list(self.firings)
        head = self.schedule.head()
        if head is not None:
            instants.append(head.available_at + self.config.fire_offset)
        return min(instants, default=None)

    def reconfigure(self, config: EngineConfig) -> None:
        """New settings (SIGHUP): firings already armed keep theirs, new ones use these."""
        self.config = config
        self._rearm()

    def snapshot(self) -> dict[str, Any]:
        """What `prebookd status` shows of the engine."""
        rows_at: Counter[float] = Counter()
        for firing in self.firings.values():
            rows_at[firing.instant] += len(firing)
        upcoming = heapq.nsmallest(200, self.schedule.entries())
        for entry in upcoming:
            rows_at[entry.available_at + self.config.fire_offset] += 1
        return {
            "armed": self.armed_count,
            "next_instants": [
                {"instant": iso_instant(instant), "rows": rows}
                for instant, rows in sorted(rows_at.items())[:10]
            ],
            "last_firings": list(reversed(self.last_firings)),
        }

    async def resync(self) -> int:
        """Bring memory in line with the table (after connecting, and periodically)."""
        await self.hot.wait_clear()
        started = self._clock()
        now = started
        records = await store.rows_to_schedule(
            self._pool,
            horizon_end=now + self.config.horizon,
            absurd_after=now + self.config.max_lead,
        )
        self._done = {i: t for i, t in self._done.items() if t > started - DONE_MEMORY}
        seen = set()
        for index, record in enumerate(records):
            if index and index % RESYNC_CHUNK == 0:
                await self.hot.wait_clear()  # a big table must not hold up an instant
                await asyncio.sleep(0)
            row = RowState.from_record(record)
            seen.add(row.id)
            self._accept(row)
        # Known rows the table no longer offers us were cancelled, deleted, or taken,
        # unless a notification about them arrived after the query began.
        unsent = set().union(*(f.unsent_ids() for f in self.firings.values()))
        known = self.schedule.ids() | unsent | set(self._watched) | self._arming
        for row_id in known - seen:
            if self._touched.get(row_id, 0.0) < started:
                self._forget(row_id, "gone from the table")
        self._touched = {i: t for i, t in self._touched.items() if t >= started}
        return len(records)

    def on_notification(self, payload: str) -> None:
        try:
            notice = parse_notice(payload)
        except ValueError as exc:
            log.error("notification_malformed", error=describe(exc), payload=payload[:200])
            return
        self._touched[notice.id] = self._clock()
        if notice.op == "delete":
            self._forget(notice.id, "deleted")
        elif notice.status == "pending":
            if notice.created_at is None or notice.available_at is None:
                self._fetch(notice.id)  # the table says more than the payload
            else:
                self._accept(notice.row_state(), from_table=False)
        elif notice.status == "loaded":
            firing = self._armed.get(notice.id)
            if (
                firing is not None
                and notice.available_at is not None
                and firing.instant == notice.available_at.timestamp() + self.config.fire_offset
            ):
                return  # our own claim, instant unchanged
            if notice.id in self._arming and notice.created_at and notice.available_at:
                # Our own claim, or a change crossing it (the web app moving the row
                # it just took): the claim's answer is weighed against this instant.
                self._accept(notice.row_state(), from_table=False)
                return
            self._fetch(notice.id)
        else:
            # executing (being sent: by us, or by the holder of its lease), or final.
            self._forget(notice.id, notice.status or "no status")

    async def fetch_loop(self, stop: asyncio.Event) -> None:
        """Read rows a notification could not tell enough about, in batches."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(self._fetch_wakeup.wait(), timeout=1.0)
            except TimeoutError:
                continue
            self._fetch_wakeup.clear()
            ids, self._to_fetch = list(self._to_fetch), set()
            if not ids:
                continue
            try:
                records = await store.rows_by_id(self._pool, ids)
            except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
                log.warning("row_fetch_failed", rows=len(ids), error=describe(exc))
                # Some may be due soon: not left to the next reconcile.
                self._fetch_later(ids, ARM_RETRY_DELAY)
                continue
            found = {r["id"] for r in records}
            for record in records:
                self._accept(RowState.from_record(record))
            for row_id in set(ids) - found:
                self._forget(row_id, "deleted")

    async def lease_loop(self, stop: asyncio.Event) -> None:
        """Renew the leases of rows held (every third of a lease); every second, look
        at rows other instances hold, to take over those whose lease ran out."""
        loop = asyncio.get_running_loop()
        renew_at = loop.time()
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=WATCH_INTERVAL)
            except TimeoutError:
                pass
            if stop.is_set():
                break
            try:
                if loop.time() >= renew_at:
                    renew_at = loop.time() + self.config.lease_seconds / 3
                    await self._renew_leases()
                await self._check_watched()
            except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
                log.warning("lease_upkeep_failed", error=describe(exc))

    async def _renew_leases(self) -> None:
        held = list(self._armed)
        if not held:
            return
        await self.hot.wait_clear()
        kept = await store.renew_leases(
            self._pool, held, self.config.instance, self.config.lease_seconds
        )
        for row_id in set(held) - kept:
            firing = self._armed.get(row_id)
            # Lost while we could not renew (Postgres away longer than a lease): the
            # row may be another instance's now; never send what it will send.
            if firing is not None and firing.withdraw(row_id):
                del self._armed[row_id]
                log.warning("lease_lost", prebooking_id=str(row_id))

    async def _check_watched(self) -> None:
        now = self._clock()
        expired = [
            row_id
            for row_id, row in self._watched.items()
            if row.lease_expires_at is None or row.lease_expires_at <= now
        ]
        if not expired:
            return
        await self.hot.wait_clear()
        records = await store.rows_by_id(self._pool, expired)
        found = {r["id"] for r in records}
        for record in records:
            row = RowState.from_record(record)
            if not self._held_elsewhere(row) and row.status in ACTIVE:
                log.info(
                    "lease_taken_over", prebooking_id=str(row.id), previous_owner=row.lease_owner
                )
            self._accept(row)
        for row_id in set(expired) - found:
            self._forget(row_id, "deleted")

    async def shutdown(self, deadline: float) -> list[UUID]:
        """Stop arming; let released requests finish until the loop-time deadline.

        Returns the ids claimed but never sent, for the daemon to release."""
        self._stopping = True
        if self._timer is not None:
            self._timer.cancel()
        unsent: list[UUID] = []
        for firing in list(self.firings.values()):
            unsent.extend(firing.cancel_unsent())
        loop = asyncio.get_running_loop()
        for task in list(self._tasks):
            waiting = self._firing_of.get(task)
            # Claims in progress, and firings still waiting for their instant (their
            # bookings withdrawn just now), have nothing in flight: stop them now.
            if task.get_name().startswith("arm-") or (waiting is not None and not waiting.released):
                task.cancel()
        in_flight = [t for t in self._tasks if not t.done()]
        if in_flight:
            _, pending = await asyncio.wait(in_flight, timeout=max(0.0, deadline - loop.time()))
            for task in pending:
                task.cancel()
            if pending:
                log.warning("shutdown_cancelled_requests", tasks=len(pending))
                await asyncio.wait(pending, timeout=1.0)
        return unsent

    # ---- rows in and out -----------------------------------------------------

    def _accept(self, row: RowState, *, from_table: bool = True) -> None:
        """Schedule, move, watch or forget a row. A row known only from a notification
        (`from_table=False`) is never failed on its word: anyone may pg_notify; it is
        read from the table first."""
        cfg = self.config
        if row.id in self._done:
            return  # sent or failed already; the table may not know it yet
        if row.status not in ACTIVE:
            self._forget(row.id, row.status)
            return
        if self._held_elsewhere(row):
            # Another instance fires it. Watch its lease: if that instance dies, the
            # lease runs out and this one takes the row over.
            self._forget(row.id, "held by another instance")
            self._watched[row.id] = row
            return
        self._watched.pop(row.id, None)
        now = self._clock()
        absurd = row.available_at is None or row.available_at > now + cfg.max_lead
        if absurd and not from_table:
            self._fetch(row.id)
            return
        if row.available_at is None:
            self._fail(row.id, "bad_row", "available_at is null: no instant to fire at")
            return
        if row.available_at > now + cfg.max_lead:
            self._fail(
                row.id,
                "bad_row",
                f"available_at is more than {cfg.max_lead / 86_400:g} days ahead: not a "
                "plausible opening instant",
            )
            return
        if row.available_at > now + cfg.horizon:
            self._forget(row.id, "beyond the horizon")  # a later resync brings it back
            return
        entry = Entry(row.available_at, row.created_at, row.id)
        if row.id in self._arming:
            # Being claimed right now (a resync or a notification crossed the claim).
            # Scheduling it again would let a second claim arm it twice: the claim
            # in flight takes the news into account when it is back.
            self._moved_while_arming[row.id] = entry
            self._forgotten_while_arming.discard(row.id)  # the latest news counts
            return
        firing = self._armed.get(row.id)
        if firing is not None:
            if firing.instant == row.available_at + cfg.fire_offset:
                return
            if not firing.withdraw(row.id):
                return  # already on the wire: too late to move it
            del self._armed[row.id]
            log.info("prebooking_rescheduled", prebooking_id=str(row.id))
        if self.schedule.upsert(entry) and self.schedule.head() == entry:
            # A new head: wake earlier. (A head moved later just wakes for nothing.)
            self._rearm()

    def _held_elsewhere(self, row: RowState) -> bool:
        return (
            row.status in ("loaded", "executing")
            and row.lease_owner not in (None, self.config.instance)
            and row.lease_expires_at is not None
            and row.lease_expires_at > self._clock()
        )

    def _forget(self, row_id: UUID, why: str) -> None:
        self._watched.pop(row_id, None)
        removed = self.schedule.remove(row_id) is not None
        firing = self._armed.get(row_id)
        if firing is not None and firing.withdraw(row_id):
            del self._armed[row_id]
            removed = True
        if row_id in self._arming:
            self._forgotten_while_arming.add(row_id)
            self._moved_while_arming.pop(row_id, None)
            removed = True
        if removed:
            log.info("prebooking_withdrawn", prebooking_id=str(row_id), reason=why)
            self._rearm()

    def _fetch(self, row_id: UUID) -> None:
        self._to_fetch.add(row_id)
        self._fetch_wakeup.set()

    def _fetch_later(self, ids: Sequence[UUID], delay: float) -> None:
        def fetch() -> None:
            for row_id in ids:
                self._fetch(row_id)

        asyncio.get_running_loop().call_later(delay, fetch)

    def _record(self, update: ResultUpdate) -> None:
        """Results of firings pass here on their way to the writer."""
        if update.written_at is not None or update.status in ("completed", "failed"):
            self._done[update.id] = self._clock()
        if self._metrics is not None and update.status in ("completed", "failed"):
            firing = self._armed.get(update.id)
            self._metrics.observe_request(
                lateness_ms=update.lateness_ms,
                outcome=update.outcome or update.status,
                box=(firing.box_of(update.id) if firing else None) or "",
            )
        self._results.report(update)

    def _fail(self, row_id: UUID, code: str, reason: str) -> None:
        self.schedule.remove(row_id)
        self._done[row_id] = self._clock()
        log.error("prebooking_rejected", prebooking_id=str(row_id), reason=reason)
        self._results.report(
            ResultUpdate(
                row_id,
                "failed",
                outcome=code,
                error_message=reason,
                executed_at=self._clock(),
                fired_by=self.config.instance,
            )
        )

    # ---- the head timer and arming -------------------------------------------

    def _rearm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        head = self.schedule.head()
        if head is None or self._stopping:
            return
        now = self._clock()
        wake_at = max(head.available_at - self.config.arm_lead, self._arm_not_before)
        delay = min(max(0.0, wake_at - now), MAX_TIMER_DELAY)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_at(loop.time() + delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        now = self._clock()
        if now >= self._arm_not_before:
            due = self.schedule.pop_due(now + self.config.arm_lead)
            if due:
                self._spawn(self._arm(due), name=f"arm-{len(due)}")
        self._rearm()

    async def _arm(self, entries: Sequence[Entry]) -> None:
        ids = [e.id for e in entries]
        self._arming.update(ids)
        try:
            await self.hot.wait_clear()
            records = await store.claim(
                self._pool, ids, self.config.instance, self.config.lease_seconds
            )
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            log.warning("arming_failed", rows=len(ids), error=describe(exc))
            forgotten, moved = self._news_while_arming(ids)
            for entry in entries:
                if entry.id not in forgotten:
                    self.schedule.upsert(moved.get(entry.id, entry))
            self._arm_not_before = self._clock() + ARM_RETRY_DELAY
            self._rearm()
            return
        finally:
            self._arming.difference_update(ids)
        forgotten, moved = self._news_while_arming(ids)
        stale = []
        fresh = []
        for record in records:
            row_id = record["id"]
            if row_id in self._armed or row_id in self._done:
                # Already in a firing, or sent: ours either way. Arming it again
                # would send it twice (the claim takes back our own rows, see store).
                continue
            news = moved.get(row_id)
            claimed_at = record["available_at"]
            if news is not None and (
                claimed_at is None or news.available_at != claimed_at.timestamp()
            ):
                stale.append(row_id)  # moved while we were claiming: claim it anew
                self.schedule.upsert(news)
            elif row_id in forgotten or row_id in self.schedule:
                stale.append(row_id)  # cancelled (or moved) while we were claiming
            else:
                fresh.append(dict(record))
        if stale:
            await self._release(stale)
            self._rearm()
        for row in await self._with_live_sessions(fresh):
            self._arm_one(row)
        unclaimed = set(ids) - {r["id"] for r in records} - forgotten
        if unclaimed:
            await self._look_again(unclaimed)

    def _news_while_arming(self, ids: Sequence[UUID]) -> tuple[set[UUID], dict[UUID, Entry]]:
        """What was heard of these rows while their claim was in flight (only theirs:
        other claims may be in flight too): those withdrawn, and new instants."""
        forgotten = self._forgotten_while_arming.intersection(ids)
        self._forgotten_while_arming -= forgotten
        moved = {i: self._moved_while_arming.pop(i) for i in ids if i in self._moved_while_arming}
        return forgotten, moved

    async def _look_again(self, ids: set[UUID]) -> None:
        """Rows the claim did not get: another instance holds them (watch them), they
        changed (cancelled, done) meanwhile, or a transaction holds them (SKIP LOCKED
        passed them by: read them again shortly, and claim them then)."""
        try:
            records = await store.rows_by_id(self._pool, list(ids))
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            log.warning("row_fetch_failed", rows=len(ids), error=describe(exc))
            self._fetch_later(list(ids), ARM_RETRY_DELAY)
            return
        locked = []
        for record in records:
            row = RowState.from_record(record)
            if row.status == "pending" or (row.status in ACTIVE and not self._held_elsewhere(row)):
                locked.append(row.id)  # claimable, yet not claimed
            else:
                self._accept(row)
        if locked:
            log.debug("claim_skipped_locked_rows", prebooking_ids=[str(i) for i in locked])
            self._fetch_later(locked, FETCH_RETRY_DELAY)
        for row_id in ids - {r["id"] for r in records}:
            self._forget(row_id, "deleted")

    async def _with_live_sessions(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Refresh the sessions that are old by now (once per member); fail the rows
        whose session AimHarder has ended. Returns the rows still to arm."""
        keeper = self._sessions
        if keeper is None:
            return records
        sessions = {}
        for record in records:
            session = MemberSession.from_record(record)
            if session is not None and keeper.is_stale(session):
                sessions[session.id] = session
        outcomes = dict(
            zip(
                sessions,
                await asyncio.gather(*(keeper.refresh(s) for s in sessions.values())),
                strict=True,
            )
        )
        alive = []
        for record in records:
            outcome = outcomes.get(record["session_id"])
            if isinstance(outcome, SessionDead):
                self._fail(record["id"], "session_expired", "session expired: log in again")
                continue
            if isinstance(outcome, MemberSession):
                record["aimharder_cookies"] = outcome.cookies
                record["aimharder_token"] = outcome.token
                record["last_token_update_date"] = dt.datetime.fromtimestamp(
                    outcome.refreshed_at or self._clock(), dt.UTC
                )
            alive.append(record)
        return alive

    async def _renew(self, booking: Booking) -> Booking | None:
        """At the instant AimHarder said the session is dead: refresh it, once."""
        if self._sessions is None or booking.session is None or booking.session.token is None:
            return None
        outcome = await self._sessions.refresh(booking.session)
        return booking.with_session(outcome) if isinstance(outcome, MemberSession) else None

    def _arm_one(self, record: dict[str, Any]) -> None:
        cfg = self.config
        try:
            booking = build_booking(record)
        except BadRow as exc:
            self._fail(record["id"], "bad_row", exc.reason)
            return
        late = self._clock() - booking.available_at
        if late > cfg.late_grace:
            if booking.prior_attempts:
                self._fail(
                    booking.id,
                    "unknown",
                    "sent, but the instance sending it stopped before recording the "
                    "answer; not sent again this late: check AimHarder",
                )
            else:
                self._fail(
                    booking.id,
                    "missed",
                    f"opening instant passed {late:.0f} s ago, more than late_grace "
                    f"({cfg.late_grace:g} s): not sent",
                )
            return
        instant = booking.available_at + cfg.fire_offset
        firing = self.firings.get(instant)
        if firing is None:
            firing = Firing(
                instant,
                client=self._client,
                timing=cfg.timing,
                report=self._record,
                instance=cfg.instance,
                hot=self.hot,
                renew=self._renew,
                clock=self._clock,
            )
            self.firings[instant] = firing
            task = self._spawn(self._run_firing(firing), name=f"firing-{instant:.3f}")
            self._firing_of[task] = firing
        firing.add(booking)
        self._armed[booking.id] = firing
        log.debug("prebooking_armed", prebooking_id=str(booking.id), instant=instant)

    async def _run_firing(self, firing: Firing) -> None:
        try:
            summary = await firing.run()
            if summary is not None:
                self.last_firings.append(summary)
                if self._metrics is not None:
                    self._metrics.observe_instant(
                        count=summary["count"], spread_ms=summary["spread_ms"]
                    )
        finally:
            if self.firings.get(firing.instant) is firing:
                del self.firings[firing.instant]
            for row_id in firing.booking_ids():
                if self._armed.get(row_id) is firing:
                    del self._armed[row_id]

    async def _release(self, ids: list[UUID]) -> None:
        try:
            await store.release_claims(self._pool, ids, self.config.instance)
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            log.warning("release_failed", rows=len(ids), error=describe(exc))

    def _spawn(self, coro: Awaitable[Any], *, name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        self._firing_of.pop(task, None)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("engine_task_crashed", task=task.get_name(), error=repr(error))
            self._on_crash(error)
