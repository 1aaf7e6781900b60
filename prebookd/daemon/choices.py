"""After a booking's first request is answered: its retries inside the window, then
its alternatives (backup classes, `prebookings.alternatives`), one after another.

An alternative is tried when the choice before it answers "full", or "already booked
at that time" to its first request (the member holds another class at that hour; a
repeat answered so may be our own earlier request gone through, and ends the row).
Its request was staged before the instant at a gate of its own (`Parked`), so when the
"full" answer comes only the write is left; the gate opens then, never before the
instant: the `Attempt` carries `not_before` like every other (aimharder/client.py).
Shortly before the instant (firing.py's RECHECK_LEAD, as for first choices) the
alternatives whose staged request was lost (a load balancer closed its idle
connection) or waits on a connection as old, by then, as the shortest-lived one lost
in this firing are staged again on fresh connections (`restage`), while the pool keeps
room for first choices. One whose staged request was lost, or never staged (the pool
had no room, a row added late), is built and sent when needed, under the same rule.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from prebookd.aimharder.client import AimHarderClient, Attempt, Exchange
from prebookd.daemon.clock import HotWindows, WallClock
from prebookd.daemon.retries import Tries, next_try, pause
from prebookd.daemon.rowlog import RowLog
from prebookd.models import Booking

# Given a booking whose session AimHarder says is dead, the same booking with a
# refreshed session, or None when the session cannot be renewed.
Renew = Callable[[Booking], Awaitable[Booking | None]]

# Connections `restage` leaves free in the pool for first choices staged again at the
# same moment (firing.py leaves 2 * STAGE_CHUNK when it parks alternatives).
FIRST_CHOICE_ROOM = 20


@dataclass(frozen=True)
class Timing:
    stage_lead: float
    spin_window: float
    retry_window: float
    retry_interval: float
    stage_requests: bool = True
    retry_unexpected: int = 2  # other answers worth another try, at most this many times
    # Issue 18: "not open yet" retried every fast_retry_interval for fast_retry_window
    # after the planned time; at most max_requests written per booking and instant.
    fast_retry_interval: float = 0.005
    fast_retry_window: float = 0.0
    max_requests: int = 1000


@dataclass
class Parked:
    """An alternative's request, staged at its own gate before the instant."""

    booking: Booking
    attempt: Attempt
    request: asyncio.Future[Exchange]


@dataclass
class Sent:
    """What a booking's requests at this instant came to, choice after choice."""

    exchange: Exchange  # the last answer
    booking: Booking  # the choice it answered (with a renewed session, maybe)
    attempts: int  # requests written for the row, earlier runs included
    written_at: float | None  # the first write of the row
    tried: list[str] = dataclasses.field(default_factory=list)  # earlier choices' answers
    # Each write and its answer's code: what the box's clock did (aim.py corrects by it).
    answers: list[tuple[float, str]] = dataclasses.field(default_factory=list)


def moves_on(exchange: Exchange, writes_for_choice: int) -> bool:
    """Whether the next alternative is tried after this final answer to a choice."""
    code = exchange.outcome.code
    return code == "full" or (code == "already_booked" and writes_for_choice <= 1)


def choice_name(choice: int) -> str:
    return "first choice" if choice == 0 else f"alternative {choice}"


class Choices:
    """Retries and alternatives of the bookings of one instant."""

    def __init__(
        self,
        instant: float,
        *,
        client: AimHarderClient,
        timing: Timing,
        hot: HotWindows,
        renew: Renew | None,
        clock: WallClock,
        rows: RowLog,
        planned: Callable[[str], float] | None = None,
    ) -> None:
        self._instant = instant
        # A box's planned write time at this instant (aim.py): every Attempt's not_before.
        self._planned = planned or (lambda _box: instant)
        self._client = client
        self._timing = timing
        self._hot = hot
        self._renew = renew
        self._clock = clock
        self._rows = rows

    def attempt(self, gate: asyncio.Future[None] | None, box: str) -> Attempt:
        return Attempt(gate, not_before=self._planned(box), clock=self._clock)

    def park(self, booking: Booking) -> list[Parked]:
        """Stage each alternative's request at a gate of its own (opened only if the
        choices before it are full)."""
        loop = asyncio.get_running_loop()
        parked = []
        for alternative in booking.alternatives:
            attempt = self.attempt(loop.create_future(), alternative.box)
            request = asyncio.ensure_future(self._client.book(alternative, attempt))
            parked.append(Parked(alternative, attempt, request))
        return parked

    def restage(self, parked: Iterable[list[Parked]], idle_limit: float | None) -> int:
        """Called as long before the instant as the first choices' re-check: stage
        again, on fresh connections, the alternatives whose staged request was lost
        (never written: its gate is shut) or that wait on a connection as old, by
        then, as `idle_limit` (the shortest-lived connection lost in this firing).
        "By then" is as long after the instant as now is before it: the "full" answer
        comes first. Returns how many were staged again."""
        loop = asyncio.get_running_loop()
        count = 0
        for alternative in (p for row in parked for p in row):
            # The box's planned time stands for the instant (aim.py).
            by_then = 2 * self._planned(alternative.booking.box) - self._clock()
            gate = alternative.attempt.gate
            if gate is None or gate.done():
                continue  # released (or withdrawn): not ours to touch any more
            parked_at = alternative.attempt.parked_at
            if not alternative.request.done() and (
                idle_limit is None or parked_at is None or by_then - parked_at < 0.8 * idle_limit
            ):
                continue  # staged, on a connection young enough
            if not self._client.has_room(1 + FIRST_CHOICE_ROOM):
                break
            alternative.request.cancel()  # lost already, or on an old connection
            alternative.attempt = self.attempt(loop.create_future(), alternative.booking.box)
            alternative.request = asyncio.ensure_future(
                self._client.book(alternative.booking, alternative.attempt)
            )
            count += 1
        return count

    async def follow(self, sent: Sent, parked: list[Parked]) -> Sent:
        """Retry the first choice inside the window, then the alternatives in order."""
        loop = asyncio.get_running_loop()
        # The window is measured on the loop's monotonic clock: a wall-clock step after
        # the release must not stretch (or cut) the retries.
        # From the box's planned time when aimed later than the instant (its clock behind).
        start = max(self._instant, self._planned(sent.booking.box))
        left = start + self._timing.retry_window - self._clock()
        retry_until = loop.time() + max(0.0, left)
        writes = 1 if sent.exchange.written_at is not None else 0
        cap = sent.attempts - writes + self._timing.max_requests  # attempts allowed, at most
        if sent.exchange.written_at is not None:
            sent.answers.append((sent.exchange.written_at, sent.exchange.outcome.code))
        writes = await self._retry(sent, retry_until, writes, cap)
        alternatives = sent.booking.alternatives  # the first choice's
        by_choice = {p.booking.choice: p for p in parked}
        for alternative in alternatives:
            if not moves_on(sent.exchange, writes) or sent.attempts >= cap:
                break
            sent.tried.append(f"{choice_name(sent.booking.choice)}: {sent.exchange.outcome.reason}")
            answered_at = sent.exchange.answered_at
            session = sent.booking.session  # renewed since it was armed, maybe
            sent.booking = alternative
            if session is not None and session is not alternative.session:
                sent.booking = alternative.with_session(session)
            sent.exchange, warm = await self._send_alternative(
                sent.booking, by_choice.pop(alternative.choice, None)
            )
            writes = 0
            if sent.exchange.written_at is not None:
                writes = 1
                sent.attempts += 1
                sent.written_at = sent.written_at or sent.exchange.written_at
                self._rows.info(
                    "alternative_fired",
                    prebooking_id=str(sent.booking.id),
                    box=sent.booking.box,
                    choice=alternative.choice,
                    after_answer_ms=round((sent.exchange.written_at - answered_at) * 1000, 3),
                    lateness_ms=round((sent.exchange.written_at - self._instant) * 1000, 3),
                    warm=warm,
                    answer=sent.exchange.outcome.code,
                )
            writes = await self._retry(sent, retry_until, writes, cap)
        return sent

    async def _send_alternative(
        self, booking: Booking, parked: Parked | None
    ) -> tuple[Exchange, bool]:
        """Its staged request, released now; or a new one when that was lost."""
        if parked is not None and not parked.request.done():
            assert parked.attempt.gate is not None
            parked.attempt.gate.set_result(None)
            exchange = await parked.request
            if exchange.written_at is not None:
                return exchange, parked.attempt.parked
        return await self._client.book(booking, self.attempt(None, booking.box)), False

    async def _retry(self, sent: Sent, retry_until: float, writes: int, cap: int) -> int:
        """Try the current choice again while its answer asks for it, the window is
        open and the booking has requests left; returns the requests written for this
        choice."""
        loop = asyncio.get_running_loop()
        tries = Tries()
        t = self._timing
        while loop.time() < retry_until and sent.attempts < cap:
            step = next_try(sent.exchange, tries, retry_unexpected=self._timing.retry_unexpected)
            if step == "stop":
                break
            if step == "wait":
                planned = self._planned(sent.booking.box)
                await asyncio.sleep(
                    pause(
                        sent.exchange,
                        self._clock() - planned,
                        fast=(t.fast_retry_interval, t.fast_retry_window),
                        interval=t.retry_interval,
                    )
                )
            elif step == "renew":
                # The session died since it was armed: refresh it once and try again.
                renewed = await self._renew(sent.booking) if self._renew else None
                if renewed is None:
                    break
                sent.booking = renewed
            sent.exchange = await self._client.book(
                sent.booking, self.attempt(None, sent.booking.box)
            )
            await self._hot.wait_clear()
            if sent.exchange.written_at is not None:
                sent.answers.append((sent.exchange.written_at, sent.exchange.outcome.code))
                writes += 1
                sent.attempts += 1
                sent.written_at = sent.written_at or sent.exchange.written_at
        return writes
