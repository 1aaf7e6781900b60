"""A box's clock, as its HTTP `Date` header shows it: pure arithmetic, no I/O.

AimHarder opens a class by *its* clock, and a request reaches it one network trip
after we write it. What matters for aiming is one number per box, its *arrival
offset*: the box's clock when our request arrives, minus our clock when we wrote it
(the box's clock offset plus the one-way trip). A request written at our `s` reaches
a box that opens at `T` (box time) just after the opening when `s = T - arrival`.

The `Date` header has a resolution of one second, but a probe written at our `s`
that reads `Date: D` says `D <= s + arrival < D + 1`. A probe written just before the
box's second ticks reads the old second, one just after reads the new one: probes
spaced around the tick bracket the arrival offset as tightly as they are spaced, not
to within a round trip. So each probe is aimed (`next_probe_at`) at the middle of
the bracket so far, halving it: ten probes take one second down to about 2 ms.

The bracket's lower end is what aiming uses: a request written at `T - low` arrives
at or after the opening (up to jitter, which `aim_margin` covers). The offset and the
one-way trip are shown apart (offset = arrival - trip, trip = the shortest round trip
over two); only their sum is measured.

A `Date` header missing or unreadable, or probes that contradict each other beyond
`tolerance` (a clock that jumps), give no estimate: the box is aimed at our clock.
"""

from __future__ import annotations

import email.utils
import math
from dataclasses import dataclass

# A probe's Date more than this far from our clock is not believed (a box whose clock
# is an hour off is misconfigured, or the header is something else).
PLAUSIBLE_OFFSET = 60.0
# Probes whose brackets miss each other by up to this much are taken as jitter (the
# trip varies a little from request to request); more is a clock that jumps.
TOLERANCE = 0.005
# The next probe is written at least this long after the previous answer.
MIN_GAP = 0.002


@dataclass(frozen=True)
class Sample:
    """One probe: when its bytes were written and its answer read (our clock), and
    the box's `Date` (epoch seconds, whole; None when missing or unreadable)."""

    sent: float
    received: float
    date: float | None


@dataclass(frozen=True)
class Estimate:
    """The box's arrival offset lies in [low, high); `rtt` is the shortest round trip."""

    low: float
    high: float
    rtt: float
    measured_at: float  # our clock, the last probe's answer
    samples: int

    @property
    def arrival(self) -> float:
        return (self.low + self.high) / 2

    @property
    def bound(self) -> float:
        """Half the bracket's width: how far `arrival` may be off."""
        return (self.high - self.low) / 2

    @property
    def trip(self) -> float:
        return self.rtt / 2

    @property
    def offset(self) -> float:
        """The box's clock minus ours (box = ours + offset), trip taken out."""
        return self.arrival - self.trip

    def shown(self) -> dict[str, float]:
        """For logs, `prebookd status` and metrics, in milliseconds."""
        return {
            "offset_ms": round(self.offset * 1000, 2),
            "bound_ms": round(self.bound * 1000, 2),
            "trip_ms": round(self.trip * 1000, 2),
        }


class Unusable(ValueError):
    """The probes give no estimate; the message says why (for the warning)."""


def parse_date(value: str | None) -> float | None:
    """An HTTP `Date` header as epoch seconds, or None when missing or unreadable."""
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:
        return None
    stamp = parsed.timestamp()
    return stamp if math.isfinite(stamp) else None


def bracket(samples: list[Sample], *, tolerance: float = TOLERANCE) -> tuple[float, float]:
    """[low, high) of the arrival offset from these probes; raises `Unusable`."""
    if not samples:
        raise Unusable("no probe answered")
    low = -math.inf
    high = math.inf
    for sample in samples:
        if sample.date is None:
            raise Unusable("an answer had no readable Date header")
        if sample.date != int(sample.date):
            raise Unusable("a Date header was not whole seconds")
        if abs(sample.date - sample.sent) > PLAUSIBLE_OFFSET:
            raise Unusable(f"a Date header was more than {PLAUSIBLE_OFFSET:g} s from our clock")
        low = max(low, sample.date - sample.sent)
        high = min(high, sample.date + 1 - sample.sent)
    if low > high + tolerance:
        raise Unusable(f"probes contradict each other by {(low - high) * 1000:.0f} ms")
    if low > high:  # a little jitter: both edges are as good a guess, keep the earlier
        low, high = high, low
    return low, high


def estimate(samples: list[Sample], *, tolerance: float = TOLERANCE) -> Estimate:
    """The estimate these probes make; raises `Unusable`."""
    low, high = bracket(samples, tolerance=tolerance)
    rtt = min(max(0.0, s.received - s.sent) for s in samples)
    return Estimate(low, high, rtt, max(s.received for s in samples), len(samples))


def next_probe_at(samples: list[Sample], now: float) -> float:
    """When to write the next probe: so that, by the bracket so far, the box's second
    ticks as the probe arrives, halving the bracket whichever second it reads."""
    if not samples:
        return now
    try:
        low, high = bracket(samples, tolerance=math.inf)
    except Unusable:
        return now  # the caller stops on the estimate; any time will do
    middle = (low + high) / 2
    earliest = now + MIN_GAP
    # Written at s = n - middle (n whole), it arrives at box time n: the tick.
    return math.ceil(earliest + middle) - middle


@dataclass(frozen=True)
class Plan:
    """When to write a box's first request for one instant, and why."""

    at: float
    aim: str  # "arrive" (aimed at the box's opening) or "send" (at the instant)
    why: str


def plan(
    instant: float,
    est: Estimate | None,
    *,
    aim: str,
    margin: float,
    max_advance: float,
    bound_max: float,
) -> Plan:
    """The planned write time for a box's requests at `instant` (its opening, box time).

    `arrive`: written so as to reach the box `margin` after it opens, by the bracket's
    lower end; never more than `max_advance` before the instant, nor after it (a box
    whose `Date` says it is further behind, a cache's stale header maybe, is not
    trusted that far: "not open yet" answers are retried); and only from an estimate
    whose bound is at most `bound_max` (else as `send`). `send`: the instant."""
    if aim != "arrive":
        return Plan(instant, "send", "aim=send")
    if est is None:
        return Plan(instant, "send", "the box's clock is not measured")
    if est.bound > bound_max:
        return Plan(
            instant,
            "send",
            f"the box's clock is known to {est.bound * 1000:.1f} ms only "
            f"(clock_bound_max {bound_max * 1000:g} ms)",
        )
    at = instant - est.low + margin
    if at < instant - max_advance:
        return Plan(instant - max_advance, "arrive", "advance capped at max_advance")
    if at > instant + max_advance:
        return Plan(instant + max_advance, "arrive", "delay capped at max_advance")
    return Plan(at, "arrive", "aimed at the box's opening")


def corrected(est: Estimate, instant: float, *, early: float, opened: float | None) -> Estimate:
    """The estimate after a request written at `early` (our clock) was answered "not
    open yet" at `instant`, and (`opened`) one written later found the box open.

    Not open says `arrival < instant - early`. A bracket that allows it (jitter past
    `aim_margin`) only gets its top trimmed. One that does not (the probes' timing a
    little off) moves just below it, keeping its width, and not below what the open
    answer says (`arrival >= instant - opened`): the next instant is aimed that much
    later. One answer cannot tell how far off the bracket was: a box corrected again
    and again is measured again (daemon/aim.py)."""
    limit = instant - early
    if est.low < limit:
        return Estimate(est.low, min(est.high, limit), est.rtt, est.measured_at, est.samples)
    low = limit - (est.high - est.low)
    if opened is not None:
        low = max(low, min(instant - opened, limit - 0.0001))
    return Estimate(low, limit, est.rtt, est.measured_at, est.samples)
