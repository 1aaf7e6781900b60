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
import bisect
import contextlib
import gc
import time
from collections.abc import Callable, Iterator

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
    while (remaining := instant - clock()) > 0:
        if remaining > spin_window:
            delay = min(remaining - spin_window, MAX_CHUNK)
            await _sleep_loop_time(loop, loop.time() + delay)
            continue
        # Busy-wait the last stretch, at most spin_window long: should the clock be
        # stepped back meanwhile, go back to sleeping instead of spinning it out.
        while 0 < (remaining := instant - clock()) <= spin_window:
            pass


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


class HotWindows:
    """The moments around armed instants, kept free of deferrable work.

    The event loop runs one callback at a time: 100 answers being parsed, a burst of
    requests being staged, or a batch of results being encoded can hold it for
    several milliseconds, and an instant that falls inside makes its requests that
    late. So work that can wait calls `wait_clear()` first, which waits out any
    window from `guard` before an instant to `settle` after it.
    """

    def __init__(
        self, *, guard: float = 0.010, settle: float = 0.003, clock: WallClock = time.time
    ) -> None:
        self._guard = guard
        self._settle = settle
        self._clock = clock
        self._instants: list[float] = []  # sorted; an instant once per firing holding it

    def add(self, instant: float) -> None:
        bisect.insort(self._instants, instant)

    def discard(self, instant: float) -> None:
        index = bisect.bisect_left(self._instants, instant)
        if index < len(self._instants) and self._instants[index] == instant:
            del self._instants[index]

    def busy_until(self, now: float, settle: float | None = None) -> float | None:
        """End of the hot window `now` falls in, or None when the loop is free. `settle`:
        how long after an instant the window lasts, when not the usual."""
        settle = self._settle if settle is None else settle
        # Instants in [now - settle, now + guard] make `now` hot; the last one decides.
        first = bisect.bisect_left(self._instants, now - settle)
        last = bisect.bisect_right(self._instants, now + self._guard)
        if first >= last:
            return None
        return self._instants[last - 1] + settle

    async def wait_clear(self, settle: float | None = None) -> None:
        """Return once no instant is about to fire, or has just fired (`settle` ago)."""
        while (end := self.busy_until(self._clock(), settle)) is not None:
            await sleep_until(end, clock=self._clock)


_gc_pauses = 0


@contextlib.contextmanager
def gc_paused(loop: asyncio.AbstractEventLoop, linger: float) -> Iterator[None]:
    """No garbage collection from here until `linger` seconds after the block.

    A collection can take milliseconds; one that starts while a burst is written
    makes the rest of the burst that late. The pause outlives the block by `linger`
    because the writes happen in the loop iterations right after the release."""
    global _gc_pauses
    _gc_pauses += 1
    gc.disable()
    try:
        yield
    finally:
        loop.call_later(linger, _gc_resume)


def _gc_resume() -> None:
    global _gc_pauses
    _gc_pauses -= 1
    if _gc_pauses == 0:
        gc.enable()
