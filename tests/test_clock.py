"""Precise wake against an injected wall clock: on time, never early, and robust to
the wall clock being stepped while asleep."""

from __future__ import annotations

import time

from prebookd.daemon.clock import sleep_until


class SteppedClock:
    """The real clock plus an offset that can jump, like an NTP step."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


async def test_never_returns_before_the_instant() -> None:
    clock = SteppedClock()
    for _ in range(20):
        instant = clock() + 0.01
        await sleep_until(instant, spin_window=0.002, clock=clock)
        assert clock() >= instant


async def test_returns_soon_after_the_instant() -> None:
    # A loose bound only: real precision is the benchmark's business (bench/precision.py).
    lateness = []
    for _ in range(20):
        instant = time.time() + 0.02
        await sleep_until(instant, spin_window=0.003)
        lateness.append(time.time() - instant)
    lateness.sort()
    assert lateness[0] >= 0
    assert lateness[len(lateness) // 2] < 0.02, lateness


async def test_an_instant_in_the_past_returns_at_once() -> None:
    started = time.monotonic()
    await sleep_until(time.time() - 10)
    assert time.monotonic() - started < 0.01


async def test_wall_clock_stepped_back_while_asleep_still_waits_for_the_instant() -> None:
    import asyncio

    clock = SteppedClock()
    instant = clock() + 0.3

    async def step_back() -> None:
        await asyncio.sleep(0.1)
        clock.offset -= 0.5  # the wall clock jumps back: the instant is further away

    stepper = asyncio.create_task(step_back())
    await sleep_until(instant, spin_window=0.002, clock=clock)
    await stepper
    assert clock() >= instant


async def test_wall_clock_stepped_forward_while_asleep_is_noticed_promptly() -> None:
    import asyncio

    clock = SteppedClock()
    instant = clock() + 5.0
    started = time.monotonic()

    async def step_forward() -> None:
        await asyncio.sleep(0.1)
        clock.offset += 4.95  # the instant is now 50 ms away

    stepper = asyncio.create_task(step_forward())
    await sleep_until(instant, spin_window=0.002, clock=clock)
    await stepper
    assert clock() >= instant
    assert time.monotonic() - started < 1.5, "a step is noticed within MAX_CHUNK"
