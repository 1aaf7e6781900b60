"""A hung notification channel beside a burst: lateness of a burst fired while every
notification worker is stuck on a receiver that hangs 30 s, and of the same burst with
no channel at all. Same daemon, simulator and rows; rounds interleaved.

Each round: a first burst at T1 whose members' messages go to the receiver (it hangs:
sends start 1 s after T1 and hold the 4 workers), then the measured burst at T1 + 4 s.

Usage: .venv/bin/python -m bench.notify_hang [--burst 50] [--rounds 3] [--hang 30]
With PREBOOKD_DATABASE_URL set it uses that server, else an embedded Postgres.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench.precision import drop_database, fresh_database
from prebookd.db.connection import connect
from prebookd.db.embedded import start_embedded
from prebookd.db.migrate import migrate
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


async def one_round(
    server_dsn: str, state: Path, burst: int, hang: float, channels: bool
) -> dict[str, float]:
    name, dsn = await fresh_database(server_dsn)
    sim = Simulator(default_capacity=1000)
    await sim.start()
    try:
        conn = await connect(dsn)
        await migrate(conn)
        box = await add_box(conn, sim, "hang")
        first = [f"a{i:03d}@bench.test" for i in range(burst)]
        second = [f"b{i:03d}@bench.test" for i in range(burst)]
        for email in first + second:
            await add_member(conn, sim, email)
        async with http_receiver(hang=hang) as receiver:
            if channels:
                await add_channels(conn, receiver, first + second)
            async with running_daemon(dsn, state, notify_timeout=hang + 5) as daemon:
                t1 = time.time() + 3.0
                t2 = t1 + 4.0
                open_class(sim, "hang", "1", t1, burst)
                open_class(sim, "hang", "2", t2, burst)
                for email in first:
                    await add_prebooking(conn, box, email, "1", t1)
                ids = [await add_prebooking(conn, box, email, "2", t2) for email in second]
                await asyncio.sleep(max(0.0, t2 - 0.05 - time.time()))
                in_flight = receiver.in_flight
                rows = await wait_rows_final(conn, ids, timeout=30)
                await daemon.stop(timeout=60)
        await conn.close()
        written = sorted(r["written_at"].timestamp() for r in rows)
        arrived = sorted(
            r.arrived_at for r in sim.requests if r.path == "/api/book" and r.arrived_at > t2 - 1
        )
        return {
            "hung_sends": float(in_flight),
            "first_written_ms": (written[0] - t2) * 1000,
            "last_written_ms": (written[-1] - t2) * 1000,
            "last_arrival_ms": (arrived[-1] - t2) * 1000,
        }
    finally:
        await sim.stop()
        await drop_database(server_dsn, name)


async def run(server_dsn: str, burst: int, rounds: int, hang: float) -> dict[str, list[dict]]:
    results: dict[str, list[dict[str, float]]] = {"hung channel": [], "no channel": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(rounds):
            for label, channels in (("hung channel", True), ("no channel", False)):
                state = Path(tmp) / f"{label}-{len(results[label])}"
                results[label].append(await one_round(server_dsn, state, burst, hang, channels))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--burst", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hang", type=float, default=30.0)
    args = parser.parse_args()

    async def go() -> dict[str, list[dict[str, float]]]:
        dsn = os.environ.get("PREBOOKD_DATABASE_URL")
        if dsn:
            return await run(dsn, args.burst, args.rounds, args.hang)
        with tempfile.TemporaryDirectory() as tmp:
            embedded = start_embedded(Path(tmp))
            try:
                return await run(embedded.dsn, args.burst, args.rounds, args.hang)
            finally:
                embedded.stop()

    results = asyncio.run(go())
    print(f"second burst of {args.burst}, medians (max) of {args.rounds} rounds, ms after T2")
    keys = ["hung_sends", "first_written_ms", "last_written_ms", "last_arrival_ms"]
    print(f"{'':<14}" + "".join(f"{k:>22}" for k in keys))
    for label, runs in results.items():
        cells = "".join(
            f"{statistics.median(r[k] for r in runs):>12.2f} ({max(r[k] for r in runs):>6.2f})"
            for k in keys
        )
        print(f"{label:<14}{cells}")


if __name__ == "__main__":
    main()
