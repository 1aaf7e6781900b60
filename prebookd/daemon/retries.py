"""When a booking's request is tried again, after an answer: pure, no I/O."""

from __future__ import annotations

from dataclasses import dataclass

from prebookd.aimharder.client import Exchange
from prebookd.aimharder.outcomes import Verdict


@dataclass
class Tries:
    """What a booking has used of its retries."""

    unwritten: int = 0
    unexpected: int = 0
    renewed: bool = False


def next_try(exchange: Exchange, tries: Tries, *, retry_unexpected: int) -> str:
    """What follows `exchange` while the retry window is open: "now", "wait" (the retry
    interval), "renew" (the session, then now) or "stop".

    "Not open yet" is tried again for the whole window; a request never written (its
    connection lost at the gate) answered nothing, so it goes again at once; a dead
    session is renewed once; any other answer worth a retry (5xx, unreadable, a reset
    after the write) is retried at most `retry_unexpected` times, so a box in trouble
    is not hammered; anything else is final."""
    outcome = exchange.outcome
    if exchange.written_at is None and outcome.verdict is Verdict.RETRY:
        tries.unwritten += 1
        return "now" if tries.unwritten == 1 else "wait"
    if outcome.code == "session_expired" and not tries.renewed:
        tries.renewed = True
        return "renew"
    if outcome.code == "not_open":
        return "wait"
    if outcome.verdict is Verdict.RETRY and tries.unexpected < retry_unexpected:
        tries.unexpected += 1
        return "wait"
    return "stop"


def pause(
    exchange: Exchange, since_planned: float, *, fast: tuple[float, float], interval: float
) -> float:
    """How long to wait before a "wait" retry. "Not open yet" within `fast`'s window
    (seconds after the box's planned write time) is retried every `fast`'s interval: the
    box's clock may be a little behind our aim, and the class fills in seconds. The rest
    waits `interval`."""
    fast_interval, fast_window = fast
    if exchange.outcome.code == "not_open" and since_planned < fast_window:
        return fast_interval
    return interval
