"""Aiming at each box's opening by the box's clock (issue 18).

`BoxClocks` keeps, per box, the estimate of its clock (aimharder/boxclock.py) and
measures it again when a firing that sends to the box is armed, if the last
measurement is older than `clock_probe_every`: `clock_probes` HEAD requests of the
box's base URL, each aimed at the tick of the box's second, over the pool's keep-alive
connections (they are the connections the staged requests then reuse, warm). Probing
ends before staging begins, and no probe is written in or just before the hot window
of an armed instant: a probe due then waits for the same phase of a later second.

`plan(box, instant)` is the write time of that box's requests at that instant: with
`aim=arrive` and a close enough estimate, so that they arrive `aim_margin` after the
box opens, never more than `max_advance` before the instant; else the instant. It
becomes every `Attempt`'s `not_before` for the box (firing.py, choices.py), and the
client's write hook holds each request until then, whatever the path.

A box whose Date header is missing or contradicts itself is warned about once and
aimed at our clock (`send`) until a later measurement works.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog

from prebookd.aimharder.boxclock import (
    Estimate,
    Plan,
    Sample,
    Unusable,
    corrected,
    estimate,
    next_probe_at,
    plan,
)
from prebookd.aimharder.client import AimHarderClient, probe_clock
from prebookd.daemon.clock import HotWindows, WallClock, sleep_until
from prebookd.models import Booking
from prebookd.settings import Settings

log = structlog.get_logger(__name__)

# Probing stops when the bracket is this tight (half-width): closer is not needed.
GOOD_ENOUGH = 0.0005
# A probe is not written when an armed instant is this close after it (its answer
# would be read in the instant's hot window).
PROBE_CLEAR = 0.25
PROBE_TIMEOUT = 2.0
# No probe is written later than this before staging begins (a firing does not wait
# for a probe past then: it stages, and the probe's answer comes when it comes).
PROBE_RESERVE = 0.25
# The last stretch before a probe is waited out on the wall clock (see clock.py), and
# the time aiohttp takes to send a HEAD is allowed for (up to MAX_OVERHEAD).
PROBE_SPIN = 0.002
MAX_OVERHEAD = 0.005
# An estimate is used for at most this long after it was made (clocks drift).
ESTIMATE_TTL = 3600.0
NO_ANSWER = "no probe answered"
# A box whose estimate the answers contradict more often than this (since it was
# measured) is measured again.
MAX_CORRECTIONS = 2
# "Not open yet" this much earlier than the estimate allows is not the probes' timing
# a little off: the box is measured again rather than aimed that much later.
MAX_SHIFT = 0.02
# Answers that say the class was open for booking when the request arrived.
OPEN = frozenset({"booked", "waitlisted", "full", "already_booked"})


@dataclass(frozen=True)
class AimConfig:
    aim: str = "send"  # a Firing made without settings (tests) aims at our clock
    max_advance: float = 0.5
    margin: float = 0.0015
    bound_max: float = 0.005
    probes: int = 10
    probe_every: float = 300.0

    @classmethod
    def of(cls, settings: Settings) -> AimConfig:
        return cls(
            aim=settings.aim,
            max_advance=settings.max_advance,
            margin=settings.aim_margin,
            bound_max=settings.clock_bound_max,
            probes=settings.clock_probes,
            probe_every=settings.clock_probe_every,
        )


def base_url_of(booking: Booking) -> str:
    """The box's base URL, as `boxes.base_url` gives it (its requests go to /api/...)."""
    url = str(booking.url)
    return url[: url.rindex("/api/")] + "/"


class BoxClocks:
    def __init__(
        self,
        client: AimHarderClient,
        config: AimConfig,
        *,
        hot: HotWindows,
        clock: WallClock = time.time,
    ) -> None:
        self._client = client
        self.config = config
        self._hot = hot
        self._clock = clock
        self._estimates: dict[str, Estimate] = {}
        self._unusable: dict[str, tuple[float, str]] = {}  # box -> (when, why)
        self._tried_at: dict[str, float] = {}
        self._measuring: dict[str, asyncio.Task[None]] = {}
        self._corrections: dict[str, int] = {}  # box -> since its last measurement

    def estimate_of(self, box: str) -> Estimate | None:
        est = self._estimates.get(box)
        if est is None or self._clock() - est.measured_at > ESTIMATE_TTL:
            return None
        return est

    def plan(self, box: str, instant: float) -> Plan:
        cfg = self.config
        return plan(
            instant,
            self.estimate_of(box),
            aim=cfg.aim,
            margin=cfg.margin,
            max_advance=cfg.max_advance,
            bound_max=cfg.bound_max,
        )

    def measure_soon(
        self, box: str, base_url: str, *, until: float, like: Booking | None = None
    ) -> asyncio.Task[None] | None:
        """Start measuring the box's clock if due, probing until `until` at the latest;
        the measurement under way, or None."""
        cfg = self.config
        if cfg.aim != "arrive" or cfg.probes == 0:
            return None
        task = self._measuring.get(box)
        if task is None:
            now = self._clock()
            if now - self._tried_at.get(box, -math.inf) < cfg.probe_every:
                return None
            if until - now < PROBE_RESERVE:
                return None  # armed too late to probe before staging: a later instant will
            self._tried_at[box] = now
            task = asyncio.create_task(
                self._measure(box, base_url, until, like), name=f"clock-{box}"
            )
            self._measuring[box] = task
            task.add_done_callback(functools.partial(self._measured, box))
        return task

    async def measure(self, boxes: dict[str, str], *, until: float) -> None:
        """Measure these boxes' clocks (box -> base URL) where due, by `until`."""
        tasks = [t for b, url in boxes.items() if (t := self.measure_soon(b, url, until=until))]
        if tasks:
            await asyncio.wait(tasks, timeout=max(0.0, until - self._clock()))

    def _measured(self, box: str, _task: asyncio.Task[None]) -> None:
        self._measuring.pop(box, None)

    async def _measure(self, box: str, base_url: str, until: float, like: Booking | None) -> None:
        """Probe the box (through the proxy `like`'s requests take) until `until`."""
        samples: list[Sample] = []
        reason = NO_ANSWER
        overhead = 0.0  # from asking aiohttp for a HEAD to its head being sent
        for _ in range(self.config.probes):
            at = next_probe_at(samples, self._clock() + overhead)
            while self._near_instant(at):
                at += 1.0  # the same phase of the next second
            if at + PROBE_RESERVE > until:
                break  # no time left before staging: what was had is used
            # Written at `at` as closely as the instant's requests are: a probe off its
            # aim halves the bracket less.
            await sleep_until(at - overhead, spin_window=PROBE_SPIN, clock=self._clock)
            called = self._clock()
            try:
                async with asyncio.timeout(PROBE_TIMEOUT):
                    samples.append(await probe_clock(self._client, base_url, like=like))
                overhead = min(max(0.0, samples[-1].sent - called), MAX_OVERHEAD)
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                reason = f"a probe failed: {type(exc).__name__}"
                break
            try:
                est = estimate(samples)
            except Unusable as exc:
                self._give_up(box, str(exc))
                return
            if est.bound <= GOOD_ENOUGH:
                break
        if not samples:
            if reason == NO_ANSWER:  # no time to probe (armed late): another firing will
                self._tried_at.pop(box, None)
                log.debug("box_clock_not_measured", box=box, reason="armed too late to probe")
            else:
                self._give_up(box, reason)
            return
        est = estimate(samples)
        self._estimates[box] = est
        self._corrections.pop(box, None)
        self._unusable.pop(box, None)
        log.info("box_clock_measured", box=box, probes=len(samples), **est.shown())

    def _near_instant(self, at: float) -> bool:
        return self._hot.busy_until(at + PROBE_CLEAR, settle=2 * PROBE_CLEAR) is not None

    def _give_up(self, box: str, why: str) -> None:
        self._estimates.pop(box, None)
        if box not in self._unusable:  # one warning per box, until it works again
            log.warning("box_clock_unusable", box=box, reason=why, aim="send")
        self._unusable[box] = (self._clock(), why)

    def correct(self, box: str, instant: float, *, early: float, opened: float | None) -> None:
        """The first answers at `instant` said "not open yet" (a request written at
        `early`), and one written at `opened` found it open: aim later next time
        (boxclock.corrected), or measure again."""
        est = self._estimates.get(box)
        if est is None:
            return
        fixed = corrected(est, instant, early=early, opened=opened)
        self._corrections[box] = self._corrections.get(box, 0) + 1
        far = est.low - (instant - early) > MAX_SHIFT
        if far or (fixed.low != est.low and self._corrections[box] > MAX_CORRECTIONS):
            # Far off, or contradicted again and again: not the clock that was
            # measured (or not a matter of clocks: an available_at a second off). Aimed
            # at our clock until measured again, at the next arming.
            del self._estimates[box]
            self._tried_at.pop(box, None)
            log.warning(
                "box_clock_corrected",
                box=box,
                reason="answered not open yet when aimed at its opening, "
                + ("far from the estimate" if far else "again")
                + ": measured again",
                before=est.shown(),
                aim="send",
            )
            return
        self._estimates[box] = fixed
        # A warning when the answers contradicted the bracket; jitter past the margin
        # only trims its top, which is worth an info line.
        (log.warning if fixed.low != est.low else log.info)(
            "box_clock_corrected",
            box=box,
            reason="answered not open yet when aimed at its opening",
            before=est.shown(),
            **fixed.shown(),
        )

    def close(self) -> None:
        """Shutdown: measurements under way are given up."""
        for task in list(self._measuring.values()):
            task.cancel()

    def snapshot(self) -> dict[str, Any]:
        """Per box: offset, bound, trip and age (ms, s), or why it is not aimed at."""
        now = self._clock()
        boxes: dict[str, Any] = {}
        for box, est in self._estimates.items():
            boxes[box] = {**est.shown(), "age_s": round(now - est.measured_at, 1)}
        for box, (when, why) in self._unusable.items():
            boxes[box] = {"aim": "send", "reason": why, "age_s": round(now - when, 1)}
        return {"aim": self.config.aim, "boxes": boxes}


class Aims:
    """The planned write times of one instant's boxes. Until `fix()` (after the boxes'
    clocks were measured, before staging) every box is planned at the instant."""

    def __init__(self, instant: float, clocks: BoxClocks | None) -> None:
        self.instant = instant
        self.clocks = clocks
        self._plans: dict[str, Plan] = {}
        self.fixed = False
        self._measuring: set[asyncio.Task[None]] = set()
        self._answers: dict[str, list[tuple[float, str]]] = {}  # box -> (written, code)

    def at(self, box: str) -> float:
        """`not_before` of this box's requests at this instant."""
        if not self.fixed:
            return self.instant
        if box not in self._plans:
            clocks = self.clocks
            self._plans[box] = (
                Plan(self.instant, "send", "aim=send")
                if clocks is None
                else clocks.plan(box, self.instant)
            )
        return self._plans[box].at

    def watch(self, booking: Booking, *, until: float) -> None:
        """A booking for this instant: its box's clock is measured if due, by `until`."""
        if self.clocks is not None and not self.fixed:
            task = self.clocks.measure_soon(
                booking.box, base_url_of(booking), until=until, like=booking
            )
            if task is not None:
                self._measuring.add(task)

    async def measured(self, *, until: float, clock: WallClock) -> None:
        """Wait for the measurements of this instant's boxes, until `until` at most.
        (Not cancelled by this wait, ending or cancelled: another firing may need them.)"""
        while (pending := {t for t in self._measuring if not t.done()}) and (
            left := until - clock()
        ) > 0:
            # A box seen meanwhile joins at the next turn.
            await asyncio.wait(pending, timeout=min(left, 0.5))

    def fix(self, boxes: set[str]) -> list[float]:
        """Plan these boxes now; returns the distinct planned times, earliest first."""
        self.fixed = True
        return sorted({self.at(box) for box in boxes})

    def earliest_possible(self) -> float:
        """Nothing of this instant is written before this (staging is planned by it)."""
        clocks = self.clocks
        if clocks is None or clocks.config.aim != "arrive":
            return self.instant
        return self.instant - clocks.config.max_advance

    def saw(self, box: str, answers: list[tuple[float, str]]) -> None:
        """A booking's writes to `box` at this instant and their answers' codes."""
        self._answers.setdefault(box, []).extend(answers)

    def correct(self) -> None:
        """Once the instant's answers are in: a box aimed at whose first answers said
        "not open yet" gets its clock estimate corrected for the next instants, by the
        latest write it found not open and the earliest it found open (of all the
        bookings sent to it)."""
        for box, answers in self._answers.items():
            plan_ = self._plans.get(box)
            if self.clocks is None or plan_ is None or plan_.aim != "arrive":
                continue
            first = min(answers, default=None)
            opened = [at for at, code in answers if code in OPEN]
            if first is None or first[1] != "not_open" or not opened:
                continue  # never found open: not a matter of its clock (a wrong instant)
            early = max(at for at, code in answers if code == "not_open")
            self.clocks.correct(box, self.instant, early=early, opened=min(opened))

    def shown(self) -> dict[str, Any]:
        """Per box, for the instant's log line: aim, planned (ms from the instant),
        and the clock estimate it came from."""
        shown: dict[str, Any] = {}
        for box, plan_ in self._plans.items():
            est = self.clocks.estimate_of(box) if self.clocks is not None else None
            shown[box] = {
                "aim": plan_.aim,
                "planned_ms": round((plan_.at - self.instant) * 1000, 2),
                **(est.shown() if est is not None else {}),
            }
        return shown
