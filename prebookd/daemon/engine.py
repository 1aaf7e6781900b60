"""The engine: rows in, firings out.

Rows come from resyncs and notifications (intake.py). Each waits in the `Schedule` heap
until `arm_lead` before its instant; one `loop.call_at` timer is armed for the head
(core.py). When it rings, the due rows are claimed (lease) and loaded with their box and
session in one query, and handed to the `Firing` of their instant, which stages and
releases them (claims.py). Leases are renewed, and taken over from dead instances
(leases.py). Cancels and reschedules reach a row wherever it is: heap, claim in flight,
or firing (up to its gate). This module is what the daemon sees of it.
"""

from __future__ import annotations

import asyncio
import heapq
from collections import Counter
from typing import Any
from uuid import UUID

import structlog

from prebookd.daemon.claims import Claims
from prebookd.daemon.core import EngineConfig
from prebookd.daemon.firing_report import iso_instant
from prebookd.daemon.intake import Intake
from prebookd.daemon.leases import Leases

__all__ = ["Engine", "EngineConfig"]

log = structlog.get_logger(__name__)


class Engine(Intake, Claims, Leases):
    @property
    def armed_count(self) -> int:
        return len(self.schedule) + len(self._armed)

    def next_instant(self) -> float | None:
        instants = list(self.firings)
        head = self.schedule.head()
        if head is not None:
            instants.append(head.available_at + self.config.fire_offset)
        return min(instants, default=None)

    def reconfigure(self, config: EngineConfig) -> None:
        """New settings (SIGHUP): firings already armed keep theirs, new ones use these."""
        self.config = config
        self.clocks.config = config.aim
        self._rearm()

    def snapshot(self) -> dict[str, Any]:
        """What `prebookd status` shows of the engine."""
        rows_at: Counter[float] = Counter()
        for firing in self.firings.values():
            rows_at[firing.instant] += len(firing)
        upcoming = heapq.nsmallest(200, self.schedule.entries())
        for entry in upcoming:
            rows_at[entry.available_at + self.config.fire_offset] += 1
        return {
            "armed": self.armed_count,
            "next_instants": [
                {"instant": iso_instant(instant), "rows": rows}
                for instant, rows in sorted(rows_at.items())[:10]
            ],
            "last_firings": list(reversed(self.last_firings)),
            "box_clocks": self.clocks.snapshot(),
        }

    async def shutdown(self, deadline: float) -> list[UUID]:
        """Stop arming; let released requests finish until the loop-time deadline.

        Returns the ids claimed but never sent, for the daemon to release."""
        self._stopping = True
        self.clocks.close()
        if self._timer is not None:
            self._timer.cancel()
        unsent: list[UUID] = []
        for firing in list(self.firings.values()):
            unsent.extend(firing.cancel_unsent())
        loop = asyncio.get_running_loop()
        for task in list(self._tasks):
            waiting = self._firing_of.get(task)
            # Claims in progress, and firings still waiting for their instant (their
            # bookings withdrawn just now), have nothing in flight: stop them now.
            if task.get_name().startswith("arm-") or (waiting is not None and not waiting.released):
                task.cancel()
        in_flight = [t for t in self._tasks if not t.done()]
        if in_flight:
            _, pending = await asyncio.wait(in_flight, timeout=max(0.0, deadline - loop.time()))
            for task in pending:
                task.cancel()
            if pending:
                log.warning("shutdown_cancelled_requests", tasks=len(pending))
                await asyncio.wait(pending, timeout=1.0)
        return unsent
