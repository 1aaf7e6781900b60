"""Results written back in batches, off the hot path.

Firings `report()` updates (no I/O: a dict write); a background task flushes them
in one statement, GATHER after a report woke it (the rest of a burst reports
meanwhile), and at least every `flush_interval`. Updates for the same row are merged, so an
`executing` and a `completed` that meet in one batch become one write. Each batch
goes to the spool file first (see spool.py); if Postgres is unreachable the batch
stays there and in memory and is retried with backoff.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from uuid import UUID

import asyncpg
import structlog

from prebookd.daemon.spool import Spool
from prebookd.daemon.supervise import Backoff
from prebookd.errors import describe
from prebookd.models import ResultUpdate
from prebookd.text import clip

log = structlog.get_logger(__name__)

# Once woken by a report, the writer waits this long for the rest of the burst's
# reports (written 20 ms after the release, answers a few ms later), then writes.
GATHER = 0.05


Writer = Callable[[Sequence[ResultUpdate]], Awaitable[None]]
WaitClear = Callable[[], Awaitable[None]]


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
    ) -> None:
        self._write = write
        self._spool = spool
        self.spooled = 0  # updates in the spool file, not yet confirmed by Postgres
        self.flush_interval = flush_interval
        self._wait_clear = wait_clear  # keeps batch writes out of an instant's way
        self._pending: dict[UUID, ResultUpdate] = {}
        self._flush_lock = asyncio.Lock()
        self._wakeup = asyncio.Event()
        self.written = 0

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
        """Write what is pending; False (and everything kept) if the write failed."""
        async with self._flush_lock:  # one batch at a time: drain waits for the last
            return await self._flush()

    async def _flush(self) -> bool:
        if not self._pending:
            return True
        batch, self._pending = self._pending, {}
        updates = list(batch.values())
        if self._spool is not None:
            try:
                # In a thread: an fsync may take milliseconds, the loop has better to do.
                await asyncio.to_thread(self._spool.append, updates)
                self.spooled += len(updates)
            except OSError as exc:
                log.error("spool_write_failed", path=str(self._spool.path), error=describe(exc))
        try:
            await self._write(updates)
        except asyncpg.DataError as exc:
            # Postgres refused a value (not the connection): one row's result must not
            # hold back the batch forever. Write them one by one; one refused alone is
            # written without its raw answer.
            log.warning("results_batch_refused", rows=len(batch), error=describe(exc))
            if not await self._write_one_by_one(updates):
                return False  # some kept for later; the spool still holds them
        except BaseException as exc:  # cancelled too: the batch stays ours
            for update in updates:
                self._keep(update)
            if not isinstance(exc, Exception):
                raise
            log.warning("results_write_failed", rows=len(batch), error=describe(exc))
            return False
        self.written += len(batch)
        log.debug("results_written", rows=len(batch))
        if self._spool is not None and self.spooled:
            # Whatever the spool held was in this batch, or merged into it.
            try:
                await asyncio.to_thread(self._spool.clear)
                self.spooled = 0
            except OSError as exc:
                log.error("spool_clear_failed", path=str(self._spool.path), error=describe(exc))
        return True

    async def _write_one_by_one(self, updates: list[ResultUpdate]) -> bool:
        """True when every update was written (some perhaps without their answer)."""
        all_written = True
        for update in updates:
            try:
                try:
                    await self._write([update])
                except asyncpg.DataError as exc:
                    log.error("result_refused", prebooking_id=str(update.id), error=describe(exc))
                    await self._write([_without_answer(update)])
            except Exception as exc:  # the connection this time: keep it for later
                self._keep(update)
                all_written = False
                log.warning("results_write_failed", rows=1, error=describe(exc))
        return all_written

    def _keep(self, update: ResultUpdate) -> None:
        """Put an unwritten update back under anything reported since (which is newer)."""
        newer = self._pending.get(update.id)
        self._pending[update.id] = update if newer is None else update.merged_with(newer)

    def recover(self, spool: Spool) -> int:
        """Queue what an earlier run spooled but never wrote; returns how many."""
        updates = spool.load()
        for update in updates:
            self.report(update)
        self.spooled = len(updates)
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
            if loop.time() >= deadline:
                break
            await asyncio.sleep(min(0.5, deadline - loop.time()))
        log.error("results_not_written", rows=len(self._pending), spooled=self.spooled)
        return False


def _without_answer(update: ResultUpdate) -> ResultUpdate:
    """The update Postgres refused, without the raw answer it could not store."""
    note = " (AimHarder's answer could not be stored)"
    return dataclasses.replace(
        update, result=None, error_message=clip(update.error_message or "", 200) + note
    )
