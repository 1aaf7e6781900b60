"""A box's own clock and its distance from the client (issue 18): the box's clock runs
`clock_offset_ms` ahead of real time (behind when negative), and every request and
every answer spends a one-way delay on the way, `delay_ms` plus up to `jitter_ms`.

The simulator reads a request's bytes the instant they reach its socket; the box is
made to *receive* it one one-way delay later (the request is stamped as arriving then,
and handled then), and its answer reaches the client another one-way delay after that.
The box's clock is what the box shows (the `Date` header) and what it decides by
(booking opening, the late-cancel window, session age at the box). The account site
keeps real time, and so does the load balancer in front of everything
(prebookd/sim/connection.py): its idle clock runs at the simulator's socket, and its
closes reach the client without a delay.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from dataclasses import dataclass
from email.utils import formatdate

from aiohttp import web


@dataclass(frozen=True)
class BoxClock:
    """clock_offset_ms: the box's clock minus real time, in ms (may be negative).
    delay_ms: one-way delay, each direction, in ms. jitter_ms: each one-way delay gets
    a uniform draw in [0, jitter_ms] added (never negative, bounded by
    delay_ms + jitter_ms). The default is a box on time, next door."""

    clock_offset_ms: float = 0.0
    delay_ms: float = 0.0
    jitter_ms: float = 0.0

    def __post_init__(self) -> None:
        if not math.isfinite(self.clock_offset_ms):
            raise ValueError(
                f"clock_offset_ms must be a finite number, not {self.clock_offset_ms!r}"
            )
        for name in ("delay_ms", "jitter_ms"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, not {value!r}")

    @property
    def distant(self) -> bool:
        return self.delay_ms > 0 or self.jitter_ms > 0

    def one_way(self, rng: random.Random) -> float:
        """Seconds one trip takes, drawn (a draw only when there is jitter, so a box
        without jitter leaves its sequence untouched)."""
        jitter = rng.random() * self.jitter_ms if self.jitter_ms > 0 else 0.0
        return (self.delay_ms + jitter) / 1000


def http_date(moment: float) -> str:
    """An HTTP `Date` (RFC 7231, IMF-fixdate) of epoch seconds, truncated to the second
    as servers write it (never rounded up)."""
    return formatdate(math.floor(moment), usegmt=True)


async def wait_until(moment: float) -> float:
    """Sleep until `moment` (epoch seconds) and return time.time() then, never less than
    `moment` (the loop's clock and the wall clock are not quite the same clock)."""
    left = moment - time.time()
    if left > 0:
        await asyncio.sleep(left)
    return max(time.time(), moment)


class DatedRequest(web.BaseRequest):
    """A request whose answer carries the `Date` the simulator chose (the box's clock
    when it handled the request) rather than aiohttp's (this machine's clock when the
    answer is written): every kind of answer goes through here, a plain JSON one, a
    fault's page, a body trickling out."""

    ATTRS = web.BaseRequest.ATTRS | frozenset(["answer_date"])
    answer_date: str | None = None

    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        # Called by aiohttp after it filled in the default headers and before it writes
        # them: the only point every answer passes.
        if self.answer_date is not None:
            response.headers["Date"] = self.answer_date
        await super()._prepare_hook(response)
