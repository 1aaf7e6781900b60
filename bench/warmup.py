"""What staging buys: one burst to one box, with and without warm-up, side by side.

With staging (the default) every request is built and its connection opened 3 s
before the instant; without it (`PREBOOKD_STAGE_REQUESTS=false`) the daemon builds,
connects and sends everything at the instant. Same daemon, same simulator, same rows.

Usage: .venv/bin/python -m bench.warmup [--burst 50] [--rounds 3]
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
from tests.support import (
    add_box,
    add_member,
    add_prebooking,
    open_class,
    running_daemon,
    wait_rows_final,
)


async def one_burst(server_dsn: str, state: Path, burst: int, staged: bool) -> dict[str, float]:
    name, dsn = await fresh_database(server_dsn)
    sim = Simulator()
    await sim.start()
    try:
        conn = await connect(dsn)
        await migrate(conn)
        box = await add_box(conn, sim, "warm")
        emails = [f"m{i:03d}@bench.test" for i in range(burst)]
        for email in emails:
            await add_member(conn, sim, email)
        async with running_daemon(dsn, state, stage_requests=str(staged).lower()) as daemon:
            t = time.time() + 5.0
            open_class(sim, "warm", "1", t, burst)
            ids = [await add_prebooking(conn, box, email, "1", t) for email in emails]
            rows = await wait_rows_final(conn, ids, timeout=30)
            await daemon.stop()
        await conn.close()
        written = sorted(r["written_at"].timestamp() for r in rows)
        arrived = sorted(r.arrived_at for r in sim.requests if r.path == "/api/book")
        return {
            "first_written_ms": (written[0] - t) * 1000,
            "last_written_ms": (written[-1] - t) * 1000,
            "first_arrival_ms": (arrived[0] - t) * 1000,
            "last_arrival_ms": (arrived[-1] - t) * 1000,
        }
    finally:
        await sim.stop()
        await drop_database(server_dsn, name)


async def run(server_dsn: str, burst: int, rounds: int) -> dict[str, list[dict[str, float]]]:
    results: dict[str, list[dict[str, float]]] = {"warm-up": [], "no warm-up": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(rounds):  # interleaved, so both see the same machine
            for label, staged in (("warm-up", True), ("no warm-up", False)):
                state = Path(tmp) / f"{label}-{len(results[label])}"
                results[label].append(await one_burst(server_dsn, state, burst, staged))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--burst", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    async def go() -> dict[str, list[dict[str, float]]]:
        dsn = os.environ.get("PREBOOKD_DATABASE_URL")
        if dsn:
            return await run(dsn, args.burst, args.rounds)
        with tempfile.TemporaryDirectory() as tmp:
            embedded = start_embedded(Path(tmp))
            try:
                return await run(embedded.dsn, args.burst, args.rounds)
            finally:
                embedded.stop()

    results = asyncio.run(go())
    print(f"burst of {args.burst} to one box, medians of {args.rounds} rounds (ms after T)")
    keys = ["first_written_ms", "last_written_ms", "first_arrival_ms", "last_arrival_ms"]
    print(f"{'':<12}" + "".join(f"{k:>18}" for k in keys))
    for label, runs in results.items():
        cells = "".join(f"{statistics.median(r[k] for r in runs):>18.3f}" for k in keys)
        print(f"{label:<12}{cells}")


if __name__ == "__main__":
    main()
