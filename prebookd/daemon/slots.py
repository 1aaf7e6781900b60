"""A booking's place in a `Firing` (firing.py), and the opening of the gates its
request waits at."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from prebookd.aimharder.client import Attempt, Exchange
from prebookd.daemon.choices import Parked
from prebookd.daemon.firing_report import ExchangeSummary
from prebookd.models import Booking

# Gates opened per loop turn (see open_gates).
RELEASE_CHUNK = 16


@dataclass
class Slot:
    booking: Booking
    attempt: Attempt  # the latest staging of its first request
    label: str | None = None  # its class, as lines show it
    task: asyncio.Task[ExchangeSummary] | None = None
    staging: asyncio.Future[Exchange] | None = None  # the request of `attempt`, in flight
    written_reported: bool = False
    # Stagings lost before the gate opened, and the last reason why.
    restaged: int = 0
    lost_because: str | None = None
    sent_cold: bool = False  # its first write was not a request waiting at its gate
    parked: list[Parked] = field(default_factory=list)  # its alternatives, staged

    @property
    def gate(self) -> asyncio.Future[None]:
        assert self.attempt.gate is not None
        return self.attempt.gate


def open_gates(slots: list[Slot], start: int, count: int) -> None:
    """Open gates [start, start + count), and all the rest in the next loop turn.

    Opening a gate only schedules its request; the write happens when the loop
    runs it, and the requests opened together are written back to back in one
    turn. Opening all 2000 at once would delay the first write by the cost of
    scheduling the other 1999; opening them in many small chunks would let the
    first answers be handled between the chunks. So: the first RELEASE_CHUNK (a
    small burst goes out whole), then everything else behind them. FIFO holds."""
    for slot in slots[start : start + count]:
        if not slot.gate.done():
            slot.gate.set_result(None)
    if start + count < len(slots):
        asyncio.get_running_loop().call_soon(open_gates, slots, start + count, len(slots))
