"""A channel that hangs cannot delay a booking: while every notification worker is
stuck on a receiver that never answers in time, the next burst fires as on time as a
burst with no channel at all. Daemon subprocess, simulator, real HTTP receiver.

The receiver hangs 5.5 s, through the second burst's firing and answers (what
matters), not the issue's 30 s of wall time: the whole test takes about 10 s.
`python -m bench.notify_hang` runs the 30 s hang beside no channel at all."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg
import pytest

from prebookd.sim.server import Simulator
from tests.receivers import http_receiver
from tests.support import (
    add_box,
    add_member,
    add_prebooking,
    open_class,
    running_daemon,
    wait_rows_final,
)
from tests.test_notify_daemon import add_channels

HANG = 5.5
BURST = 20


@pytest.mark.first_run_only  # threads and timing, not SQL
async def test_a_hung_channel_does_not_delay_the_next_burst(
    conn: asyncpg.Connection, db_dsn: str, sim: Simulator, tmp_path: Path
) -> None:
    box = await add_box(conn, sim, "hang")
    first = [f"a{k:02d}@hang.test" for k in range(BURST)]
    second = [f"b{k:02d}@hang.test" for k in range(BURST)]
    for email in first + second:
        await add_member(conn, sim, email)
    async with http_receiver(hang=HANG) as receiver:
        await add_channels(conn, receiver, first + second)
        t1 = time.time() + 2.5
        # The first burst's messages start 1 s after t1 (none starts within 2 s of an
        # instant) and hang through t2.
        t2 = t1 + 4.0
        open_class(sim, "hang", "1", t1, 100)
        open_class(sim, "hang", "2", t2, 100)
        async with running_daemon(db_dsn, tmp_path, notify_timeout=HANG + 5) as daemon:
            early = [await add_prebooking(conn, box, e, "1", t1) for e in first]
            late = [await add_prebooking(conn, box, e, "2", t2) for e in second]
            await wait_rows_final(conn, early)
            await asyncio.sleep(max(0.0, t2 - 0.1 - time.time()))
            hung_at_second = receiver.in_flight  # every worker stuck on the receiver
            rows = await wait_rows_final(conn, late)
            assert time.time() < t1 + 1.0 + HANG  # measured while the sends still hang
            assert not receiver.received
            assert await daemon.stop(timeout=30) == 0

    lateness = sorted(r["lateness_ms"] for r in rows)
    assert hung_at_second == 4  # PREBOOKD_NOTIFY_WORKERS' default
    assert [r["outcome"] for r in rows] == ["booked"] * BURST
    print(f"second burst lateness ms: first {lateness[0]:.2f}, max {lateness[-1]:.2f}")
    assert lateness[-1] < 25.0  # a burst of 20 on loopback: a few ms; one stuck loop: seconds
