"""One instant's firing, on its own: bookings coming and going around the staging
moment still go at the instant, once, in FIFO order. The AimHarder side is the fake of
test_clock_steps (no HTTP here: what is tested is the order and timing of the gates)."""

from __future__ import annotations

import asyncio

from prebookd.daemon.clock import HotWindows
from prebookd.daemon.firing import Firing, Timing
from prebookd.models import ResultUpdate
from tests.test_clock_steps import FakeAimHarder, SteppingClock, bookings

STAGE_LEAD = 0.3


def firing_at(instant: float, clock: SteppingClock, client: FakeAimHarder) -> Firing:
    reports: list[ResultUpdate] = []
    return Firing(
        instant,
        client=client,  # type: ignore[arg-type]
        timing=Timing(STAGE_LEAD, 0.003, 0.5, 0.05),
        report=reports.append,
        instance="test",
        hot=HotWindows(clock=clock),
        clock=clock,
    )


async def test_a_booking_added_after_staging_an_emptied_firing_goes_at_the_instant() -> None:
    clock = SteppingClock()
    client = FakeAimHarder(clock)
    instant = clock() + 0.5
    first, late = bookings(instant, 2)
    firing = firing_at(instant, clock, client)
    firing.add(first)
    assert firing.withdraw(first.id)  # cancelled before staging: nothing to stage
    run = asyncio.create_task(firing.run())
    await asyncio.sleep(instant - STAGE_LEAD + 0.1 - clock())  # staged (nothing)
    firing.add(late)  # claimed late, still before the instant

    await asyncio.wait_for(run, timeout=5)

    assert [s.booking for s in client.sent] == [late.id]
    assert instant <= client.sent[0].wall < instant + 0.05


async def test_bookings_added_after_staging_keep_fifo_with_those_staged() -> None:
    clock = SteppingClock()
    client = FakeAimHarder(clock)
    instant = clock() + 0.5
    rows = bookings(instant, 4)  # created in this order
    firing = firing_at(instant, clock, client)
    firing.add(rows[1])
    firing.add(rows[3])
    run = asyncio.create_task(firing.run())
    await asyncio.sleep(instant - STAGE_LEAD + 0.1 - clock())
    firing.add(rows[2])
    firing.add(rows[0])

    await asyncio.wait_for(run, timeout=5)

    assert [s.booking for s in client.sent] == [b.id for b in rows]
    assert all(s.wall >= instant for s in client.sent)
