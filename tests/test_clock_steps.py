"""Wall-clock steps (NTP, a VM resumed, an operator's `date -s`) while a Firing waits.

A `Firing` with a fake AimHarder client, driven by a clock that jumps by seconds
mid-wait: nothing is released before the wall-clock instant as the stepped clock
reads it, nothing is sent twice, and a step forward past the instant releases within
`clock.MAX_CHUNK`. Then `HotWindows`' edges. Real time passes (a second or two a
test): the bounds on it are generous, what is checked against the stepped clock is
exact.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from yarl import URL

from prebookd.aimharder.client import Attempt, Exchange
from prebookd.aimharder.outcomes import classify_answer
from prebookd.daemon.clock import MAX_CHUNK, HotWindows
from prebookd.daemon.firing import Firing, Timing
from prebookd.models import Booking, ResultUpdate

BOOKED = {"bookState": 1}
NOT_OPEN = {"bookState": -12, "errorMssgLang": "ERROR_ANTELACION_CLIENTE"}
SLACK = 0.5  # real seconds allowed on top of what the code promises


class SteppingClock:
    """A wall clock running with the monotonic clock, plus steps that apply
    themselves at set monotonic moments, whenever the clock is read then: a step can
    land anywhere, even in the middle of a busy-wait."""

    def __init__(self, start: float = 1_900_000_000.0) -> None:
        self._base = start - time.monotonic()
        self._pending: list[tuple[float, float]] = []  # (monotonic when, seconds)
        self.applied: list[tuple[float, float]] = []

    def step_in(self, after: float, seconds: float) -> None:
        """Step the clock by `seconds` (negative: back) `after` real seconds from now."""
        self._pending.append((time.monotonic() + after, seconds))
        self._pending.sort()

    def step(self, seconds: float) -> None:
        self._base += seconds
        self.applied.append((time.monotonic(), seconds))

    def __call__(self) -> float:
        now = time.monotonic()
        while self._pending and self._pending[0][0] <= now:
            _, seconds = self._pending.pop(0)
            self.step(seconds)
        return now + self._base


class SpinStepClock(SteppingClock):
    """Steps back once it has been read `reads` times at or after `from_wall`: only
    a busy-wait reads it that often, so the step lands inside the spin."""

    def __init__(self, *, start: float, from_wall: float, seconds: float, reads: int = 200) -> None:
        super().__init__(start)
        self._from_wall, self._seconds, self._reads = from_wall, seconds, reads

    def __call__(self) -> float:
        now = super().__call__()
        if self._reads and now >= self._from_wall:
            self._reads -= 1
            if not self._reads:
                self.step(self._seconds)
                now += self._seconds
        return now


@dataclass(frozen=True)
class Sent:
    booking: uuid.UUID
    wall: float  # the stepped clock when the request was "written"
    real: float  # time.monotonic() then
    staged: bool  # the instant's request, held at its gate (not a retry)


class FakeAimHarder:
    """`AimHarderClient.book`'s shape: park at the gate while it is shut, then write
    (record when, by the injected clock) and answer."""

    def __init__(
        self,
        clock: Callable[[], float],
        answer: Callable[[uuid.UUID], dict[str, Any]] = lambda _: BOOKED,
        *,
        on_park: Callable[[int], None] = lambda parked: None,
        on_send: Callable[[int], None] = lambda sent: None,
    ) -> None:
        self._clock = clock
        self._answer = answer
        self._on_park = on_park  # told how many wait at their gate, as each arrives
        self._on_send = on_send  # told how many were sent, after each
        self.parked = 0
        self.sent: list[Sent] = []

    async def book(self, booking: Booking, attempt: Attempt) -> Exchange:
        if attempt.gate is not None and not attempt.gate.done():
            attempt.parked = True
            self.parked += 1
            self._on_park(self.parked)
            await attempt.gate
        attempt.written_at = self._clock()
        self.sent.append(
            Sent(booking.id, attempt.written_at, time.monotonic(), attempt.gate is not None)
        )
        self._on_send(len(self.sent))
        await asyncio.sleep(0.001)  # the answer takes a moment
        answer = self._answer(booking.id)
        return Exchange(classify_answer(answer), answer, attempt.written_at, self._clock(), 200)

    def staged_sends(self) -> list[uuid.UUID]:
        return [s.booking for s in self.sent if s.staged]


def bookings(instant: float, count: int = 5) -> list[Booking]:
    return [
        Booking(
            id=uuid.uuid4(),
            member=f"m{n}@x.es",
            box="box-a",
            available_at=instant,
            created_at=1_800_000_000.0 + n,  # FIFO: m0 first
            url=URL("http://127.0.0.1:9/box-a/api/book"),
            body=b"",
            headers={},
        )
        for n in range(count)
    ]


async def fire(
    clock: SteppingClock,
    instant: float,
    client: FakeAimHarder,
    rows: list[Booking],
    *,
    stage_lead: float = 0.3,
    spin_window: float = 0.003,
    retry_window: float = 0.5,
    retry_interval: float = 0.05,
) -> list[ResultUpdate]:
    reports: list[ResultUpdate] = []
    firing = Firing(
        instant,
        client=client,  # type: ignore[arg-type]
        timing=Timing(stage_lead, spin_window, retry_window, retry_interval),
        report=reports.append,
        instance="test",
        hot=HotWindows(clock=clock),
        clock=clock,
    )
    for booking in rows:
        firing.add(booking)
    await asyncio.wait_for(firing.run(), timeout=30)
    return reports


def assert_sent_once_in_order_never_early(
    client: FakeAimHarder, rows: list[Booking], instant: float
) -> None:
    assert client.staged_sends() == [b.id for b in rows], "each once, in FIFO order"
    early = [s for s in client.sent if s.wall < instant]
    assert early == [], f"sent {instant - early[0].wall:.3f} s early" if early else ""


# --- steps while a Firing waits ------------------------------------------------------


async def test_a_step_back_before_staging_holds_the_release_until_the_new_instant() -> None:
    clock = SteppingClock()
    instant = clock() + 0.6
    clock.step_in(0.1, -1.0)  # the instant is 1.5 s away again
    client = FakeAimHarder(clock)
    rows = bookings(instant)
    started = time.monotonic()
    await fire(clock, instant, client, rows)
    assert_sent_once_in_order_never_early(client, rows, instant)
    assert client.sent[0].real - started >= 1.6 - 0.01, "it waited out the step"


async def test_a_step_back_while_parked_at_the_gates_holds_the_release() -> None:
    clock = SteppingClock()
    instant = clock() + 0.5
    rows = bookings(instant)

    def all_parked(parked: int) -> None:
        if parked == len(rows):
            clock.step(-0.8)  # staged, waiting at the gates: the instant is further again

    client = FakeAimHarder(clock, on_park=all_parked)
    await fire(clock, instant, client, rows)
    assert_sent_once_in_order_never_early(client, rows, instant)
    ((stepped_at, _),) = clock.applied
    assert client.sent[0].real - stepped_at >= 0.8, "it waited out the step"


async def test_a_step_forward_past_the_instant_releases_promptly() -> None:
    clock = SteppingClock()
    instant = clock() + 30.0
    clock.step_in(0.2, 40.0)  # asleep for the 30 s, a chunk at a time
    client = FakeAimHarder(clock)
    rows = bookings(instant)
    await fire(clock, instant, client, rows, stage_lead=3.0)
    assert_sent_once_in_order_never_early(client, rows, instant)
    ((stepped_at, _),) = clock.applied
    assert client.sent[0].real - stepped_at < MAX_CHUNK + SLACK, "released within a chunk"


async def test_a_step_forward_to_just_before_the_instant_fires_at_the_instant() -> None:
    clock = SteppingClock()
    instant = clock() + 30.0
    clock.step_in(0.2, 30.0 - 0.2 - 0.15)  # lands 150 ms before the instant
    client = FakeAimHarder(clock)
    rows = bookings(instant)
    await fire(clock, instant, client, rows, stage_lead=3.0)
    assert_sent_once_in_order_never_early(client, rows, instant)
    ((stepped_at, _),) = clock.applied
    assert client.sent[0].real - stepped_at < MAX_CHUNK + SLACK


async def test_a_step_back_after_the_release_sends_nothing_twice() -> None:
    clock = SteppingClock()
    instant = clock() + 0.3
    # After the first write: the instant is 2 s ahead again, the rest not yet written.
    client = FakeAimHarder(clock, on_send=lambda sent: sent == 1 and clock.step(-2.0))
    rows = bookings(instant)
    reports = await fire(clock, instant, client, rows)
    # Released is released: the burst goes out whole, not held back by the step (the
    # clock was 2 s ahead, nothing can undo that), and nothing is released again.
    assert client.staged_sends() == [b.id for b in rows], "each once, in FIFO order"
    assert client.sent[0].wall >= instant
    assert client.sent[-1].real - client.sent[0].real < 0.1
    assert len(client.sent) == len(rows), "booked: no retry either"
    final = [r for r in reports if r.status == "completed"]
    assert sorted(r.id for r in final) == sorted(b.id for b in rows)


async def test_steps_both_ways_around_the_instant() -> None:
    clock = SteppingClock()
    instant = clock() + 0.8
    clock.step_in(0.1, +5.0)  # past the instant: released within a chunk...
    clock.step_in(0.15, -5.3)  # ...unless it went back first: now 0.65 s before again
    client = FakeAimHarder(clock)
    rows = bookings(instant)
    await fire(clock, instant, client, rows)
    assert_sent_once_in_order_never_early(client, rows, instant)


async def test_a_step_back_during_the_spin_does_not_block_the_loop() -> None:
    start = 1_900_000_000.0
    instant = start + 0.5
    # The last 50 ms are spun: the clock steps back a second in there.
    clock = SpinStepClock(start=start, from_wall=instant - 0.05, seconds=-1.0)
    client = FakeAimHarder(clock)
    rows = bookings(instant)
    gaps: list[float] = []

    async def heartbeat() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    beating = asyncio.create_task(heartbeat())
    try:
        await fire(clock, instant, client, rows, spin_window=0.05)
    finally:
        beating.cancel()
    assert_sent_once_in_order_never_early(client, rows, instant)
    assert max(gaps) < 0.3, f"the event loop was blocked for {max(gaps):.2f} s"


async def test_a_step_back_after_the_release_does_not_stretch_the_retries() -> None:
    clock = SteppingClock()
    instant = clock() + 0.3
    client = FakeAimHarder(
        clock,
        answer=lambda _: NOT_OPEN,
        on_send=lambda sent: sent == 6 and clock.step(-2.0),  # in the middle of the retries
    )
    rows = bookings(instant, count=2)
    reports = await fire(clock, instant, client, rows, retry_window=0.5, retry_interval=0.05)
    assert client.staged_sends() == [b.id for b in rows]
    assert all(s.wall >= instant for s in client.sent if s.staged)
    assert {r.status for r in reports if r.error_message} == {"failed"}
    span = client.sent[-1].real - client.sent[0].real
    assert span < 0.5 + SLACK, f"retried for {span:.1f} s, window 0.5 s"


# --- HotWindows -----------------------------------------------------------------------


class FixedClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


T = 1_900_000_000.0
GUARD, SETTLE = 0.010, 0.003


def windows(*instants: float) -> HotWindows:
    hot = HotWindows(guard=GUARD, settle=SETTLE, clock=FixedClock(T))
    for instant in instants:
        hot.add(instant)
    return hot


@pytest.mark.parametrize(
    ("now", "busy_until"),
    [
        (T - GUARD - 1e-6, None),  # just before the window
        (T - GUARD, T + SETTLE),  # its first moment
        (T, T + SETTLE),
        (T + SETTLE, T + SETTLE),  # its last moment
        (T + SETTLE + 1e-6, None),  # just after
    ],
)
def test_a_window_runs_from_guard_before_to_settle_after(
    now: float, busy_until: float | None
) -> None:
    assert windows(T).busy_until(now) == busy_until


def test_no_instants_no_window() -> None:
    assert windows().busy_until(T) is None


def test_overlapping_windows_chain_to_the_last_one() -> None:
    hot = windows(T, T + 0.008, T + 0.016, T + 1.0)
    ends = []
    now = T - GUARD
    while (end := hot.busy_until(now)) is not None:
        ends.append(end)
        now = end + 1e-6  # the end is still hot: the wall clock moves on from it
    # wait_clear waits window after window, and is clear only after the last one.
    assert ends == pytest.approx([T + SETTLE, T + 0.008 + SETTLE, T + 0.016 + SETTLE])
    assert hot.busy_until(T + 1.0 - GUARD) == T + 1.0 + SETTLE


def test_an_instant_is_held_once_per_firing_holding_it() -> None:
    hot = windows(T, T)
    hot.discard(T)
    assert hot.busy_until(T) == T + SETTLE, "the other firing still holds it"
    hot.discard(T)
    assert hot.busy_until(T) is None
    hot.discard(T)  # not held: nothing happens
    hot.discard(T + 1e-9)
    assert hot.busy_until(T) is None


def test_instants_added_in_any_order() -> None:
    hot = windows(T + 2, T, T + 1)
    assert [hot.busy_until(T + k) for k in range(3)] == [T + k + SETTLE for k in range(3)]


async def test_wait_clear_returns_at_once_when_clear() -> None:
    clock = SteppingClock(start=T - 5.0)
    hot = HotWindows(guard=GUARD, settle=SETTLE, clock=clock)
    hot.add(T)
    started = time.monotonic()
    await hot.wait_clear()
    assert time.monotonic() - started < 0.05


async def test_wait_clear_waits_out_the_window_by_the_stepped_clock() -> None:
    clock = SteppingClock()
    instant = clock() + 0.002
    hot = HotWindows(guard=0.010, settle=0.050, clock=clock)
    hot.add(instant)
    clock.step_in(0.02, -0.5)  # mid-window, back: the window is half a second away
    await hot.wait_clear()
    assert clock() >= instant + 0.050, "never returns inside the window"


async def test_wait_clear_returns_within_a_chunk_of_a_step_forward() -> None:
    clock = SteppingClock()
    hot = HotWindows(guard=30.0, settle=30.0, clock=clock)
    hot.add(clock() + 5.0)  # hot for a minute
    clock.step_in(0.1, 120.0)
    started = time.monotonic()
    await asyncio.wait_for(hot.wait_clear(), timeout=10)
    assert time.monotonic() - started < MAX_CHUNK + SLACK
