"""Waking at an instant of the wall clock, on time and never early.

`loop.call_at` alone is late by about a millisecond (asyncio rounds epoll timeouts up
to whole milliseconds) and it counts in loop (monotonic) time, while AimHarder judges
us by the wall clock. So: map the wall-clock instant to loop time afresh at every
arming (an NTP step between two armings cannot shift the firing), sleep in bounded
chunks until `spin_window` before the instant, then spin on `time.time()` for the
last stretch. The spin blocks the loop for at most `spin_window` (a few ms), which is
the point: nothing else should run then.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

WallClock = Callable[[], float]

# Re-read the wall clock at least this often while sleeping, so a clock step is
# noticed within this long instead of at the end of a long sleep.
MAX_CHUNK = 1.0


async def sleep_until(
    instant: float,
    *,
    spin_window: float = 0.0,
    clock: WallClock = time.time,
) -> None:
    """Return at `instant` (epoch seconds by `clock`) or just after it, never before."""
    loop = asyncio.get_running_loop()
    while (remaining := instant - clock()) > spin_window:
        delay = min(remaining - spin_window, MAX_CHUNK)
        await _sleep_loop_time(loop, loop.time() + delay)
    while clock() < instant:
        pass  # busy-wait: at most spin_window long


async def _sleep_loop_time(loop: asyncio.AbstractEventLoop, when: float) -> None:
    waiter: asyncio.Future[None] = loop.create_future()
    handle = loop.call_at(when, _wake, waiter)
    try:
        await waiter
    finally:
        handle.cancel()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
