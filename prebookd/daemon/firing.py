"""One opening instant: stage every request before it, release them all at it.

Timeline of a `Firing` for instant T; each box has its planned time P (aim.py: T, or
aimed at the box's clock, never before T - max_advance), fixed when staging may begin:

- until then: bookings are added (claimed rows) or withdrawn freely; their boxes'
  clocks are measured where due;
- at min(P) - stage_lead: each booking's request is staged (built, connection opened)
  and parks at its own gate;
- at each box's P (precise wake): its gates open in `(created_at, id)` order, so
  requests are written in FIFO order; then "not open yet" answers are retried (fast
  just after P, see choices.py) until T + retry_window, and a "full" answer releases
  the booking's next alternative, staged at a gate of its own.

A booking withdrawn before its gate opens is never written. A staged request whose
connection is lost before its gate opens (a load balancer closing it as idle, with or
without a 408; a reset; a connection that cannot be opened) was never written: it is
staged again, at the same gate, and a request never written is retried while the retry
window is open. No byte goes out before its box's planned time on any of these paths:
every `Attempt` carries it, and the client's write hook waits for it (client.py).
Results go to the `report` callback (the batched writer): `executing` when written,
then final.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

import structlog

from prebookd.aimharder.client import AimHarderClient, Attempt, Exchange
from prebookd.daemon.aim import Aims, BoxClocks
from prebookd.daemon.choices import Choices, Renew, Sent, Timing
from prebookd.daemon.clock import HotWindows, WallClock, gc_paused, sleep_until
from prebookd.daemon.firing_report import (
    ExchangeSummary,
    final_update,
    iso_instant,
    send_note,
    summarize,
)
from prebookd.daemon.rowlog import RowLog, tell_outcome
from prebookd.daemon.slots import RELEASE_CHUNK, Slot, open_gates
from prebookd.models import Booking, ResultUpdate

__all__ = ["Firing", "Renew", "Timing"]  # Timing lives with the retries (choices.py)

log = structlog.get_logger(__name__)

# Requests staged per loop iteration: staging 100 at once would hold the loop for
# ~20 ms, long enough to make another instant late.
STAGE_CHUNK = 10
# The burst's writes are recorded and logged this long after the release, this many
# per loop turn.
AFTER_RELEASE = 0.02
REPORT_CHUNK = 64
# Garbage collection stays off from this long before the instant to this long after.
GC_PAUSE = 0.05
# A staged request that lost its connection is staged again after at most this long
# (sooner if its gate opens): a box refusing connections is not asked in a tight loop.
RESTAGE_DELAY = 0.1
# This long before the instant, requests parked on connections as old as those a load
# balancer closed as idle (seen in this firing) are staged again on fresh ones: a close
# that lands just before the instant would cost a handshake at the instant.
RECHECK_LEAD = 0.25


class Firing:
    def __init__(
        self,
        instant: float,
        *,
        client: AimHarderClient,
        timing: Timing,
        report: Callable[[ResultUpdate], None],
        instance: str,
        hot: HotWindows,
        renew: Renew | None = None,
        clock: WallClock = time.time,
        rows: RowLog | None = None,
        clocks: BoxClocks | None = None,
    ) -> None:
        self.instant = instant
        self._rows = RowLog(hot.wait_clear) if rows is None else rows  # see rowlog.py
        self._hot = hot
        self._aims = Aims(instant, clocks)  # each box's planned write time (aim.py)
        self._choices = Choices(
            instant,
            client=client,
            timing=timing,
            hot=hot,
            renew=renew,
            clock=clock,
            rows=self._rows,
            planned=self._aims.at,
        )
        self._client = client
        self._timing = timing
        self._report = report
        self._instance = instance
        self._clock = clock
        self._slots: dict[UUID, Slot] = {}
        self._staged = False
        self.released = False
        # Set once staging is done; slots added later are placed into it by FIFO order.
        # (Empty is a real value: every booking withdrawn before staging.)
        self._release_order: list[Slot] | None = None
        # The shortest time a parked request's connection lasted before it was lost.
        self._idle_limit: float | None = None
        self._planned: list[float] = []  # the boxes' planned write times, once fixed
        self._released_upto: float | None = None  # gates of boxes planned by then: open
        self._probe_until = self._aims.earliest_possible() - timing.stage_lead

    def __len__(self) -> int:
        return len(self._slots)

    def booking_ids(self) -> set[UUID]:
        return set(self._slots)

    def box_of(self, booking_id: UUID) -> str | None:
        slot = self._slots.get(booking_id)
        return None if slot is None else slot.booking.box

    def add(self, booking: Booking, *, label: str | None = None) -> None:
        if booking.id in self._slots:
            return
        loop = asyncio.get_running_loop()
        slot = Slot(booking, self._attempt(loop.create_future(), booking.box), label)
        self._slots[booking.id] = slot
        self._aims.watch(booking, until=self._probe_until)  # its box's clock, if due
        if self.released:
            slot.gate.set_result(None)  # late arrival: the instant has come, send now
        elif self._release_order is not None:
            bisect.insort(self._release_order, slot, key=lambda s: s.booking.order)
        if self._staged:
            self._stage(slot)

    def withdraw(self, booking_id: UUID) -> bool:
        """Take a booking out; False when its request may already be on the wire."""
        slot = self._slots.get(booking_id)
        if slot is None or slot.gate.done():
            return False
        del self._slots[booking_id]
        if slot.task is not None:
            slot.task.cancel()
        for parked in slot.parked:
            parked.request.cancel()
        return True

    def unsent_ids(self) -> list[UUID]:
        return [i for i, s in self._slots.items() if not s.gate.done()]

    async def run(self) -> dict[str, Any] | None:
        """Stage, release, retry; return the instant's summary (None: nothing sent)."""
        self._hot.add(self.instant)
        try:
            return await self._run()
        finally:
            self._hot.discard(self.instant)
            for at in self._planned:
                self._hot.discard(at)

    async def _run(self) -> dict[str, Any] | None:
        t = self._timing
        # The boxes' clocks, measured where due (see add), by when staging may begin;
        # planned then (not before: an earlier instant may correct a box's clock).
        await self._aims.measured(until=self._probe_until, clock=self._clock)
        await sleep_until(self._probe_until, clock=self._clock)
        first = self._plan()
        if t.stage_requests:
            await sleep_until(first - t.stage_lead, clock=self._clock)
            self._staged = True
            await self._stage_all()
            self._release_order = self._ordered()
            if t.stage_lead > RECHECK_LEAD:
                await sleep_until(first - RECHECK_LEAD, clock=self._clock)
                self._recheck(first)
                self._choices.restage([s.parked for s in self._slots.values()], self._idle_limit)
        await sleep_until(first - GC_PAUSE, clock=self._clock)
        with gc_paused(asyncio.get_running_loop(), GC_PAUSE):
            # Each box at its planned time (the instant, unless aimed at its clock).
            while (at := self._next_release()) is not None:
                await sleep_until(at, spin_window=t.spin_window, clock=self._clock)
                self._release(at) if t.stage_requests else self._send_unstaged(at)
            self.released = self._staged = True  # a row added from now on goes at once
        summaries: list[ExchangeSummary] = []
        waited: set[asyncio.Task[ExchangeSummary]] = set()
        # Again while bookings keep arriving (rows inserted at the instant).
        while batch := [s.task for s in self._slots.values() if s.task and s.task not in waited]:
            waited.update(batch)
            # A booking withdrawn meanwhile ends cancelled: not a summary, not an error.
            done = await asyncio.gather(*batch, return_exceptions=True)
            for outcome in done:
                if isinstance(outcome, ExchangeSummary):
                    summaries.append(outcome)
                elif not isinstance(outcome, asyncio.CancelledError):
                    log.error("send_crashed", error=repr(outcome))  # a bug: say it loudly
        self._aims.correct()
        summary = summarize(summaries, self.instant, self._aims.at)
        if summary is not None and (aims := self._aims.shown()):
            summary["aim"] = aims
        if summary is not None:
            self._rows.info("instant_fired", **summary)
        return summary

    def cancel_unsent(self) -> list[UUID]:
        """Shutdown: withdraw what has not been written; return those ids."""
        ids = self.unsent_ids()
        for booking_id in ids:
            self.withdraw(booking_id)
        return ids

    def _attempt(self, gate: asyncio.Future[None] | None, box: str) -> Attempt:
        return self._choices.attempt(gate, box)

    def _plan(self) -> float:
        """Fix each box's planned write time (aim.py), and every request's `not_before`
        with it (the client's write hook holds each until then); the earliest."""
        self._planned = self._aims.fix({s.booking.box for s in self._slots.values()})
        for slot in self._slots.values():
            slot.attempt.not_before = self._aims.at(slot.booking.box)
        for at in self._planned:
            self._hot.add(at)  # kept clear of deferrable work, as the instant is
        return min([self.instant, *self._planned])

    def _next_release(self) -> float | None:
        """The earliest planned time among the requests not yet released."""
        done = self._released_upto
        planned = (self._aims.at(s.booking.box) for s in self._slots.values())
        return min((at for at in planned if done is None or at > done), default=None)

    def _recheck(self, first: float) -> None:
        """Requests parked on a connection that may be closed as idle before the instant
        (as old, by then, as the shortest-lived one lost in this firing) are staged again
        now, on fresh connections the instant finds young."""
        limit = self._idle_limit
        if limit is None:
            return
        by_then = first + RECHECK_LEAD  # the answer must come back on it too
        for slot in self._slots.values():
            parked_at = slot.attempt.parked_at
            staging = slot.staging
            if parked_at is None or staging is None or staging.done() or slot.gate.done():
                continue
            if by_then - parked_at >= 0.8 * limit:
                slot.restaged += 1
                slot.lost_because = (
                    f"its connection was older than those closed as idle ({limit:.1f} s)"
                )
                staging.cancel()

    def _ordered(self) -> list[Slot]:
        return sorted(self._slots.values(), key=lambda s: s.booking.order)

    def _release(self, at: float) -> None:
        """Open the gates of the boxes planned by `at`, in FIFO order."""
        self.released = True
        self._released_upto = at
        order = self._release_order if self._release_order is not None else self._ordered()
        slots = [s for s in order if not s.gate.done() and self._aims.at(s.booking.box) <= at]
        open_gates(slots, 0, RELEASE_CHUNK)
        # After the gates: bookkeeping is work, and the writes come first.
        asyncio.get_running_loop().call_later(AFTER_RELEASE, self._after_release, slots)

    def _send_unstaged(self, at: float) -> None:
        """Without staging (PREBOOKD_STAGE_REQUESTS=false, to measure what it buys):
        build, connect and send the boxes planned by `at` now, in FIFO order."""
        self.released = self._staged = True
        self._released_upto = at
        for slot in self._ordered():
            if not slot.gate.done() and self._aims.at(slot.booking.box) <= at:
                slot.gate.set_result(None)
                self._stage(slot)

    def _after_release(self, slots: list[Slot], start: int = 0) -> None:
        """The burst is on the wire: record which requests were written now, not when
        their answers come (a slow AimHarder can take seconds), so that a crash
        meanwhile leaves `executing` and the attempt in the row. Then say so.

        In chunks, one per loop turn: the writes of a burst of thousands are still
        going out, and must not wait behind this bookkeeping."""
        end = start + REPORT_CHUNK
        for slot in slots[start:end]:
            self._report_written(slot)
        if end < len(slots):
            asyncio.get_running_loop().call_soon(self._after_release, slots, end)
            return
        self._rows.info(
            "instant_released",
            instant=iso_instant(self.instant),
            rows=len(slots),
            # Ready at the gate: request built, connection open, only the write left.
            warm=sum(1 for s in slots if s.attempt.parked),
            new_connections=sum(1 for s in slots if s.attempt.new_connection),
        )

    async def _stage_all(self) -> None:
        slots = self._ordered()
        for start in range(0, len(slots), STAGE_CHUNK):
            await self._hot.wait_clear()
            for slot in slots[start : start + STAGE_CHUNK]:
                if slot.task is None and self._slots.get(slot.booking.id) is slot:
                    self._stage(slot)
            await asyncio.sleep(0)  # these run up to their gate before the next chunk
        # Then alternatives, on connections of their own while the pool has room (a
        # first choice never waits for one an alternative holds); the rest go cold.
        for slot in (s for s in slots if s.booking.alternatives and s.task and not s.parked):
            if not self._client.has_room(len(slot.booking.alternatives) + 2 * STAGE_CHUNK):
                break
            await self._hot.wait_clear()
            if self._slots.get(slot.booking.id) is slot and not slot.gate.done():
                slot.parked = self._choices.park(slot.booking)
                await asyncio.sleep(0)

    def _stage(self, slot: Slot) -> None:
        slot.task = asyncio.create_task(self._send(slot), name=f"send-{slot.booking.id}")
        if self.released:
            return  # sent at once (a late arrival, or staging turned off): not staged
        self._rows.info(
            "prebooking_staged",
            prebooking_id=str(slot.booking.id),
            box=slot.booking.box,
            instant=iso_instant(self.instant),
            before_instant_s=round(self.instant - self._clock(), 3),
        )

    def _report_written(self, slot: Slot) -> None:
        """`executing`, with the first write's time and the attempt, once per slot."""
        written_at = slot.attempt.written_at
        if written_at is None or slot.written_reported:
            return
        slot.written_reported = True
        self._report(
            ResultUpdate(
                slot.booking.id,
                "executing",
                written_at=written_at,
                lateness_ms=(written_at - self.instant) * 1000,
                attempts=slot.booking.prior_attempts + 1,
                fired_by=self._instance,
            )
        )

    async def _first_exchange(self, slot: Slot) -> Exchange:
        """The booking's first request, staged at its gate, and staged again on a fresh
        connection each time the one it waits on is lost while the gate is shut.

        Lost before its gate opened, it was never written: whatever answered (a 408,
        a reset, a close) answered no request of ours, and nothing is retried early.
        The gate is the slot's, so a withdrawal still reaches a request staged again."""
        while True:
            staging = asyncio.ensure_future(self._client.book(slot.booking, slot.attempt))
            slot.staging = staging
            try:
                await asyncio.wait({staging})
            except asyncio.CancelledError:  # withdrawn, or shutdown
                staging.cancel()
                raise
            if staging.cancelled():  # by _recheck: staged again at once, on a fresh one
                slot.attempt = self._attempt(slot.gate, slot.booking.box)
                continue
            exchange = staging.result()
            if exchange.written_at is not None or slot.gate.done():
                return exchange
            lost = slot.attempt
            if lost.parked_at is not None:
                lasted = self._clock() - lost.parked_at
                self._idle_limit = min(lasted, self._idle_limit or lasted)
            slot.restaged += 1
            slot.lost_because = exchange.outcome.reason
            self._rows.info(
                "staged_request_lost",
                prebooking_id=str(slot.booking.id),
                box=slot.booking.box,
                reason=exchange.outcome.reason,
                http_status=exchange.http_status,
                restaged=slot.restaged,
                before_instant_s=round(self.instant - self._clock(), 3),
            )
            await asyncio.wait({slot.gate}, timeout=RESTAGE_DELAY)
            slot.attempt = self._attempt(slot.gate, slot.booking.box)

    async def _send(self, slot: Slot) -> ExchangeSummary:
        try:
            first = await self._first_exchange(slot)
            return await self._send_choices(slot, first)
        finally:
            for parked in slot.parked:  # alternatives not needed: never written
                parked.request.cancel()

    async def _send_choices(self, slot: Slot, first: Exchange) -> ExchangeSummary:
        booking = slot.booking
        slot.sent_cold = first.written_at is None or not slot.attempt.parked
        await self._hot.wait_clear()
        attempts = booking.prior_attempts + (1 if first.written_at is not None else 0)
        written_at = first.written_at
        self._report_written(slot)  # if the answer came before _after_release ran
        if written_at is not None:
            self._rows.info(
                "prebooking_fired",
                prebooking_id=str(booking.id),
                box=booking.box,
                lateness_ms=round((written_at - self.instant) * 1000, 3),
                warm=slot.attempt.parked,  # it waited at its gate: only the write was left
                new_connection=slot.attempt.new_connection,
                restaged=slot.restaged,
                answer=first.outcome.code,
            )
        sent = await self._choices.follow(Sent(first, booking, attempts, written_at), slot.parked)
        self._aims.saw(booking.box, sent.answers)  # "not open yet" corrects the box's clock
        exchange, written_at = sent.exchange, sent.written_at
        lateness_ms = None if written_at is None else (written_at - self.instant) * 1000
        note = send_note(slot.restaged, slot.lost_because, slot.sent_cold, written_at, sent.tried)
        update = final_update(
            exchange,
            booking_id=booking.id,
            attempts=sent.attempts,
            written_at=written_at,
            lateness_ms=lateness_ms,
            retry_window=self._timing.retry_window,
            instance=self._instance,
            note=note,
            choice=sent.booking.choice if booking.alternatives else None,
        )
        self._report(update)
        tell_outcome(self._rows, booking, slot.label, update)
        return ExchangeSummary(
            booking,
            written_at,
            lateness_ms,
            exchange.outcome.code,
            exchange.outcome.verdict,
            attempts=sent.attempts - booking.prior_attempts,
        )
