"""The engine's memory of rows, and the one timer that arms them.

Every row this instance knows is in exactly one place: the `Schedule` heap (waiting for
`arm_lead` before its instant), a claim in flight (`_arming`), a `Firing` (`_armed`),
done (`_done`: sent or failed, remembered until the table says so), or watched (held by
another instance). `_accept` and `_forget` move rows between them for every kind of
news; intake, claims and leases (their own modules) bring the news.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg
import structlog

from prebookd.aimharder.client import AimHarderClient
from prebookd.daemon.aim import AimConfig, BoxClocks
from prebookd.daemon.clock import HotWindows, WallClock
from prebookd.daemon.firing import Firing, Timing
from prebookd.daemon.metrics import Metrics
from prebookd.daemon.results import ResultWriter
from prebookd.daemon.rowlog import RowLog, instant_of, outcome_level, row_fields
from prebookd.daemon.scheduler import Entry, Schedule
from prebookd.daemon.sessions import SessionKeeper
from prebookd.hosts import DEFAULT_BOX_HOSTS
from prebookd.models import ResultUpdate, RowState
from prebookd.settings import Settings

log = structlog.get_logger(__name__)

# The head timer is re-armed at least this often, mapping wall time to loop time
# afresh each time, so a wall-clock step is noticed within this long.
MAX_TIMER_DELAY = 30.0
ARM_RETRY_DELAY = 1.0
ACTIVE = ("pending", "loaded", "executing")  # not final: someone may still have to send it


@dataclass(frozen=True)
class EngineConfig:
    instance: str  # a display name (fired_by, logs), which several processes may share
    lease_owner: str  # this process's own, never shared (statedir.py makes it)
    arm_lead: float
    fire_offset: float
    late_grace: float
    horizon: float
    max_lead: float
    lease_seconds: float
    timing: Timing
    box_hosts: tuple[str, ...] = DEFAULT_BOX_HOSTS  # PREBOOKD_BOX_HOSTS
    # The lease owner of the process that ran before this one on its state directory,
    # dead (statedir.py): its rows are this one's to take back at once.
    predecessor: str | None = None
    # Issue 18: aiming at the boxes' clocks (aim.py).
    aim: AimConfig = dataclasses.field(default_factory=AimConfig)

    @classmethod
    def from_settings(
        cls, settings: Settings, lease_owner: str, predecessor: str | None
    ) -> EngineConfig:
        return cls(
            instance=settings.instance_name,
            lease_owner=lease_owner,
            predecessor=predecessor,
            arm_lead=settings.arm_lead,
            fire_offset=settings.fire_offset,
            late_grace=settings.late_grace,
            horizon=settings.horizon,
            max_lead=settings.max_lead_days * 86_400.0,
            lease_seconds=settings.lease_seconds,
            box_hosts=settings.box_hosts,
            timing=Timing(
                stage_lead=settings.stage_lead,
                stage_requests=settings.stage_requests,
                spin_window=settings.spin_window,
                retry_window=settings.retry_window,
                retry_interval=settings.retry_interval,
                retry_unexpected=settings.retry_unexpected,
                fast_retry_interval=settings.fast_retry_interval,
                fast_retry_window=settings.fast_retry_window,
                max_requests=settings.max_requests,
            ),
            aim=AimConfig.of(settings),
        )

    @property
    def wake_lead(self) -> float:
        """Rows are armed this long before available_at: arm_lead before the earliest
        a request may be planned (max_advance before it, aimed at a box's clock)."""
        return self.arm_lead + (self.aim.max_advance if self.aim.aim == "arrive" else 0.0)

    def owns(self, lease_owner: str | None) -> bool:
        return lease_owner is not None and lease_owner in (self.lease_owner, self.predecessor)


class EngineCore:
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
        self.clocks = BoxClocks(client, config.aim, hot=hot, clock=clock)  # the boxes' clocks
        self.rows = RowLog(hot.wait_clear)  # lines about rows: written when no instant is near
        self.last_firings: deque[dict[str, Any]] = deque(maxlen=20)
        # id -> clock() when sent or failed. Kept until Postgres has confirmed the final
        # result and a resync has read the table since (see `resync`): until then the
        # table may still offer the row, and arming it again would send it twice.
        self._done: dict[UUID, float] = {}
        self._confirmed: dict[UUID, float] = {}  # id -> clock() when its result was in
        results.on_confirmed(self._results_confirmed)
        self._watched: dict[UUID, RowState] = {}  # rows another instance holds

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
            # Another instance fires it (or its group). Watch that lease: if the
            # instance dies, the lease runs out and this one takes the row over.
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
            moved = True
        else:
            moved = (held := self.schedule.get(row.id)) is not None and held != entry
        if moved:
            self.rows.info(
                "prebooking_rescheduled",
                prebooking_id=str(row.id),
                instant=instant_of(row.available_at),
            )
        if self.schedule.upsert(entry) and self.schedule.head() == entry:
            # A new head: wake earlier. (A head moved later just wakes for nothing.)
            self._rearm()

    def _held_elsewhere(self, row: RowState) -> bool:
        """Another live process fires this row. One process fires a whole (box,
        instant) group, so for a row read from the table its lease is the one that
        decides: the row's own, or that of another row of its group (see store)."""
        return (
            row.status in ACTIVE
            and row.lease_owner is not None
            and not self.config.owns(row.lease_owner)
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
            self.rows.info("prebooking_withdrawn", prebooking_id=str(row_id), reason=why)
            self._rearm()

    def _knows(self, row_id: UUID) -> bool:
        """The row is somewhere in this process's memory (see the module's docstring)."""
        return (
            row_id in self.schedule
            or row_id in self._armed
            or row_id in self._arming
            or row_id in self._done
            or row_id in self._watched
        )

    def _received(self, row_id: UUID, via: str, available_at: object) -> None:
        self.rows.info(
            "prebooking_received",
            prebooking_id=str(row_id),
            via=via,
            instant=instant_of(available_at),
        )

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
                attempts=update.attempts or 0,
            )
        self._results.report(update)

    def _results_confirmed(self, updates: Sequence[ResultUpdate]) -> None:
        now = self._clock()
        for update in updates:
            self._confirmed[update.id] = now
            self.rows.info(
                "result_written",
                prebooking_id=str(update.id),
                status=update.status,
                outcome=update.outcome,
            )

    def _fail(
        self, row_id: UUID, code: str, reason: str, about: Mapping[str, Any] | None = None
    ) -> None:
        """Fail a row before any request (`about`: the claimed row, when there is one)."""
        self.schedule.remove(row_id)
        self._done[row_id] = self._clock()
        self.rows.log(
            outcome_level("failed", code),
            "prebooking_rejected",
            prebooking_id=str(row_id),
            **(row_fields(about) if about is not None else {}),
            outcome=code,
            reason=reason,
        )
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

    # ---- the head timer ------------------------------------------------------

    def _rearm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        head = self.schedule.head()
        if head is None or self._stopping:
            return
        now = self._clock()
        wake_at = max(head.available_at - self.config.wake_lead, self._arm_not_before)
        delay = min(max(0.0, wake_at - now), MAX_TIMER_DELAY)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_at(loop.time() + delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        now = self._clock()
        if now >= self._arm_not_before:
            due = self.schedule.pop_due(now + self.config.wake_lead)
            if due:
                self._spawn(self._arm(due), name=f"arm-{len(due)}")
        self._rearm()

    async def _arm(self, entries: Sequence[Entry]) -> None:
        """Claim and arm rows that are due (claims.py)."""
        raise NotImplementedError

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
