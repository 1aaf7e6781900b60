"""Results written back in batches, off the hot path.

Firings `report()` updates (no I/O: a dict write); a background task flushes them
in one statement, GATHER after a report woke it (the rest of a burst reports
meanwhile), and at least every `flush_interval`. Updates for the same row are merged, so an
`executing` and a `completed` that meet in one batch become one write. Each batch
goes to the spool file first (see spool.py); if Postgres is unreachable the batch
stays there and in memory and is retried with backoff.

Postgres refusing a row (a value it cannot store, a CHECK constraint, a missing grant)
is not Postgres being away: the batch is then written row by row, and a row refused
alone is kept (in memory and in the spool) and tried again alone every REFUSED_RETRY,
while every other result goes through.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Sequence
from uuid import UUID

import asyncpg
import structlog

from prebookd.daemon.spool import Spool
from prebookd.daemon.supervise import Backoff
from prebookd.errors import describe
from prebookd.models import FINAL_STATUSES, ResultUpdate
from prebookd.text import clip

log = structlog.get_logger(__name__)

# Once woken by a report, the writer waits this long for the rest of the burst's
# reports (written 20 ms after the release, answers a few ms later), then writes.
GATHER = 0.05
# A result Postgres refused is tried again, alone, after this long.
REFUSED_RETRY = 60.0

# Errors that say nothing about the rows: Postgres away, restarting, overloaded, a
# lock or a transaction to retry. The same batch may go through later.
_TRANSIENT = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.TransactionRollbackError,
    asyncpg.exceptions.LockNotAvailableError,
    asyncpg.exceptions.ReadOnlySQLTransactionError,
)


def _refused(exc: BaseException) -> bool:
    """Postgres refused the statement itself: the same rows would be refused again."""
    return isinstance(exc, asyncpg.PostgresError) and not isinstance(exc, _TRANSIENT)


Writer = Callable[[Sequence[ResultUpdate]], Awaitable[None]]
WaitClear = Callable[[], Awaitable[None]]
# Told of the final results Postgres now holds (the engine forgets rows only then).
Confirmed = Callable[[Sequence[ResultUpdate]], None]


async def _never_wait() -> None:
    return None


class ResultWriter:
    def __init__(
        self,
        write: Writer,
        *,
        flush_interval: float,
        wait_clear: WaitClear = _never_wait,
        spool: Spool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._write = write
        self._spool = spool
        self.flush_interval = flush_interval
        self._wait_clear = wait_clear  # keeps batch writes out of an instant's way
        self._clock = clock
        self._pending: dict[UUID, ResultUpdate] = {}
        # What the spool file holds, by row: an update already there is not appended
        # again at each retry (an outage must not grow the file with every flush).
        self._in_spool: dict[UUID, ResultUpdate] = {}
        self._refused_until: dict[UUID, float] = {}  # id -> clock() of the next try
        self._confirmed: list[Confirmed] = []
        self._flush_lock = asyncio.Lock()
        self._wakeup = asyncio.Event()
        self.written = 0

    @property
    def spooled(self) -> int:
        """Updates in the spool file, not yet confirmed by Postgres."""
        return len(self._in_spool)

    def on_confirmed(self, listener: Confirmed) -> None:
        self._confirmed.append(listener)

    def report(self, update: ResultUpdate) -> None:
        known = self._pending.get(update.id)
        self._pending[update.id] = update if known is None else known.merged_with(update)
        # A final result, or a request written: both are worth having in the spool
        # soon (a crash must not hide that a request went out).
        self._wakeup.set()

    @property
    def backlog(self) -> int:
        return len(self._pending)

    async def run(self, stop: asyncio.Event) -> None:
        """Flush until `stop` is set; the caller flushes what remains (`drain`)."""
        backoff = Backoff(self.flush_interval * 2, 5.0)
        wait = self.flush_interval
        while not stop.is_set():
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout=wait)
            except TimeoutError:
                pass
            # Let a burst finish reporting before writing: one batch, not one per row.
            await asyncio.sleep(min(GATHER, self.flush_interval))
            await self._wait_clear()
            self._wakeup.clear()
            if await self.flush():
                backoff.reset()
                wait = self.flush_interval
            else:
                wait = backoff.next()

    async def flush(self) -> bool:
        """Write what is pending; False (and everything kept) if Postgres could not be
        reached. Results Postgres refused stay pending, and do not make it False."""
        async with self._flush_lock:  # one batch at a time: drain waits for the last
            return await self._flush()

    async def _flush(self) -> bool:
        now = self._clock()
        batch = [u for u in self._pending.values() if self._refused_until.get(u.id, 0.0) <= now]
        if not batch:
            return True
        for update in batch:
            del self._pending[update.id]
        written: list[ResultUpdate] = []
        try:
            await self._to_spool(batch)
            reachable = await self._write_batch(batch, written)
        except BaseException:  # cancelled (shutdown): what was not written stays ours
            self._keep_unwritten(batch, written)
            raise
        self._keep_unwritten(batch, written)
        if written:
            self.written += len(written)
            log.debug("results_written", rows=len(written))
            await self._spool_only_pending()
            final = [u for u in written if u.status in FINAL_STATUSES]
            for listener in self._confirmed:
                listener(final)
        return reachable

    async def _write_batch(self, batch: list[ResultUpdate], written: list[ResultUpdate]) -> bool:
        """Write `batch`, appending to `written` what Postgres took; False when it could
        not be reached."""
        try:
            await self._write(batch)
        except Exception as exc:
            if not _refused(exc):
                log.warning("results_write_failed", rows=len(batch), error=describe(exc))
                return False
            log.warning("results_batch_refused", rows=len(batch), error=describe(exc))
            return await self._write_one_by_one(batch, written)
        written.extend(batch)
        return True

    async def _write_one_by_one(
        self, updates: list[ResultUpdate], written: list[ResultUpdate]
    ) -> bool:
        for update in updates:
            try:
                try:
                    await self._write([update])
                except asyncpg.DataError as exc:
                    # A value in the raw answer it cannot store: the rest of the result
                    # is worth more than waiting for a fix.
                    log.error("result_refused", prebooking_id=str(update.id), error=describe(exc))
                    await self._write([_without_answer(update)])
            except Exception as exc:
                if not _refused(exc):
                    log.warning("results_write_failed", rows=1, error=describe(exc))
                    return False
                self._refused_until[update.id] = self._clock() + REFUSED_RETRY
                log.error(
                    "result_refused",
                    prebooking_id=str(update.id),
                    # Postgres's own words, without the DETAIL that repeats the row.
                    error=getattr(exc, "message", None) or describe(exc),
                    retry_in_s=REFUSED_RETRY,
                )
                continue
            written.append(update)
            self._refused_until.pop(update.id, None)
        return True

    def _keep_unwritten(self, batch: list[ResultUpdate], written: list[ResultUpdate]) -> None:
        taken = {u.id for u in written}
        for update in batch:
            if update.id not in taken:
                self._keep(update)

    def _keep(self, update: ResultUpdate) -> None:
        """Put an unwritten update back under anything reported since (which is newer)."""
        newer = self._pending.get(update.id)
        self._pending[update.id] = update if newer is None else update.merged_with(newer)

    async def _to_spool(self, batch: list[ResultUpdate]) -> None:
        """Append to the spool what it does not hold yet (in a thread: an fsync may take
        milliseconds, and the loop has better to do)."""
        if self._spool is None:
            return
        new = [u for u in batch if self._in_spool.get(u.id) != u]
        if not new:
            return
        try:
            await asyncio.to_thread(self._spool.append, new)
        except OSError as exc:
            log.error("spool_write_failed", path=str(self._spool.path), error=describe(exc))
            return
        self._in_spool.update((u.id, u) for u in new)

    async def _spool_only_pending(self) -> None:
        """Postgres holds what was written: the spool keeps only what is still pending."""
        if self._spool is None or not self._in_spool:
            return
        keep = [u for u in self._in_spool.values() if u.id in self._pending]
        try:
            if keep:
                await asyncio.to_thread(self._spool.rewrite, keep)
            else:
                await asyncio.to_thread(self._spool.clear)
        except OSError as exc:
            log.error("spool_clear_failed", path=str(self._spool.path), error=describe(exc))
            return
        self._in_spool = {u.id: u for u in keep}

    def recover(self, spool: Spool) -> int:
        """Queue what an earlier run spooled but never wrote; returns how many."""
        updates = spool.load()
        for update in updates:
            self.report(update)
            self._in_spool[update.id] = self._pending[update.id]
        return len(updates)

    async def drain(self, deadline: float) -> bool:
        """Flush until nothing is pending or the loop-time deadline passes (a batch
        still in flight is waited for: True means every result is in Postgres)."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                remaining = max(deadline - loop.time(), 0.1)
                if await asyncio.wait_for(self.flush(), remaining) and not self._pending:
                    return True
            except TimeoutError:
                break
            if self._pending.keys() <= self._refused_until.keys():
                break  # only results Postgres refuses are left: waiting will not help
            if loop.time() >= deadline:
                break
            await asyncio.sleep(min(0.5, deadline - loop.time()))
        # Results that came while a batch hung on a silent Postgres (it holds the flush
        # until its statement times out, QUERY_TIMEOUT, maybe after the deadline) were
        # never in a batch, so never spooled: the spool keeps them for the next start.
        await self._to_spool(list(self._pending.values()))
        log.error("results_not_written", rows=len(self._pending), spooled=self.spooled)
        return False


def _without_answer(update: ResultUpdate) -> ResultUpdate:
    """The update Postgres refused, without the raw answer it could not store."""
    note = " (AimHarder's answer could not be stored)"
    return dataclasses.replace(
        update, result=None, error_message=clip(update.error_message or "", 200) + note
    )
