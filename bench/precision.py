"""Precision benchmark: how late, how spread, how ordered are prebookd's requests?

Runs `prebookd run` as a subprocess against a fresh database and the simulator (in
this process, on loopback), inserts prebookings as the web app would (bursts of many
at one instant, single ones in between), waits for every result, and prints:

- lateness of single requests and of the first request of each burst, as seen by the
  simulator (first byte of the request) and by prebookd (when it wrote the request);
- the spread of each burst (last arrival minus first);
- FIFO violations (arrival order vs created_at order within a burst), early requests;
- the DB connections prebookd held (pg_stat_activity, sampled during the run).

Usage: .venv/bin/python -m bench.precision [--rows 1000] [--seconds 30] [--burst 100]
With PREBOOKD_DATABASE_URL set it uses that server, else an embedded Postgres.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg

from prebookd.db import connect
from prebookd.embedded import start_embedded
from prebookd.migrate import migrate
from prebookd.simulator import Simulator
from tests.support import add_box, add_member, add_prebooking, open_class, running_daemon


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {
        "n": len(values),
        "p50": statistics.median(values),
        "p99": quantile(values, 0.99),
        "max": max(values),
    }


async def fresh_database(server_dsn: str) -> tuple[str, str]:
    name = f"prebookd_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    from urllib.parse import urlsplit

    return name, urlsplit(server_dsn)._replace(path=f"/{name}").geturl()


async def drop_database(server_dsn: str, name: str) -> None:
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def sample_connections(dsn: str, stop: asyncio.Event, seen: list[int]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        while not stop.is_set():
            seen.append(
                await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND application_name IN "
                    "('prebookd-pool', 'prebookd-listener')"
                )
            )
            await asyncio.sleep(0.25)
    finally:
        await conn.close()


async def run(args: argparse.Namespace, server_dsn: str, state_dir: Path) -> dict[str, Any]:
    name, dsn = await fresh_database(server_dsn)
    sim = Simulator()
    await sim.start()
    try:
        conn = await connect(dsn)
        await migrate(conn)
        box = await add_box(conn, sim, "bench")
        members = [f"member{i:04d}@bench.test" for i in range(args.burst)]
        for email in members:
            await add_member(conn, sim, email)

        start = time.time() + args.lead
        n_bursts = max(1, (args.rows // 2) // args.burst)
        n_singles = args.rows - n_bursts * args.burst
        burst_at = [start + args.seconds * (k + 0.5) / n_bursts for k in range(n_bursts)]
        single_at = [start + args.seconds * (k + 0.25) / n_singles for k in range(n_singles)]
        plan: list[tuple[str, str, float]] = []
        for k, instant in enumerate(burst_at):
            open_class(sim, "bench", f"b{k}", instant, capacity=args.burst * 6 // 10)
            plan += [(email, f"b{k}", instant) for email in members]
        for k, instant in enumerate(single_at):
            open_class(sim, "bench", f"s{k}", instant, capacity=1)
            plan.append((members[k % len(members)], f"s{k}", instant))
        # Interleave bursts' members so created_at order differs from member order.
        plan.sort(key=lambda p: (hash(p[0]) % 7, p[2]))

        stop_sampling = asyncio.Event()
        held: list[int] = []
        async with running_daemon(dsn, state_dir) as daemon:
            sampler = asyncio.create_task(sample_connections(dsn, stop_sampling, held))
            for email, session_id, instant in plan:
                await add_prebooking(conn, box, email, session_id, instant)
            deadline = start + args.seconds + 30
            while time.time() < deadline:
                left = await conn.fetchval(
                    "SELECT count(*) FROM prebookings WHERE status NOT IN ('completed','failed')"
                )
                if left == 0:
                    break
                await asyncio.sleep(0.5)
            stop_sampling.set()
            await sampler
            exit_code = await daemon.stop()

        rows = await conn.fetch("SELECT * FROM prebookings")
        await conn.close()
        return measure(sim, rows, burst_at, held, exit_code)
    finally:
        await sim.stop()
        await drop_database(server_dsn, name)


def measure(
    sim: Simulator,
    rows: list[asyncpg.Record],
    burst_at: list[float],
    held: list[int],
    exit_code: int,
) -> dict[str, Any]:
    opens = {}
    for row in rows:
        opens[row["booking_data"]["id"]] = row["available_at"].timestamp()
    books = sorted((r for r in sim.requests if r.path == "/api/book"), key=lambda r: r.arrived_at)
    by_class: dict[str, list[Any]] = {}
    for request in books:
        by_class.setdefault(request.session_id or "", []).append(request)

    single_ms = [
        (reqs[0].arrived_at - opens[sid]) * 1000 for sid, reqs in by_class.items() if sid[0] == "s"
    ]
    written_at = {r["id"]: r["written_at"].timestamp() for r in rows if r["written_at"]}
    sender_spread_ms = []
    for sid in {r["booking_data"]["id"] for r in rows if r["booking_data"]["id"][0] == "b"}:
        times = [written_at[r["id"]] for r in rows if r["booking_data"]["id"] == sid]
        sender_spread_ms.append((max(times) - min(times)) * 1000)
    first_ms, spread_ms, fifo_violations = [], [], 0
    for sid, reqs in by_class.items():
        if sid[0] != "b":
            continue
        first_ms.append((reqs[0].arrived_at - opens[sid]) * 1000)
        spread_ms.append((reqs[-1].arrived_at - reqs[0].arrived_at) * 1000)
        expected = [
            r["user_email"]
            for r in sorted(rows, key=lambda r: (r["created_at"], r["id"]))
            if r["booking_data"]["id"] == sid
        ]
        arrived = [r.email for r in reqs]
        fifo_violations += sum(1 for a, b in zip(arrived, expected, strict=False) if a != b)
    written_ms = [r["lateness_ms"] for r in rows if r["lateness_ms"] is not None]
    early = sum(1 for r in books if r.arrived_at < opens[r.session_id or ""])
    statuses: dict[str, int] = {}
    for row in rows:
        key = f"{row['status']}:{row['outcome']}"
        statuses[key] = statuses.get(key, 0) + 1
    written_by_class = {r["booking_data"]["id"]: r["lateness_ms"] for r in rows}
    raw = [
        {
            "class": r.session_id,
            "opens_at": opens[r.session_id or ""],
            "arrived_ms": (r.arrived_at - opens[r.session_id or ""]) * 1000,
            "handled_ms": (r.handled_at - opens[r.session_id or ""]) * 1000,
            "written_ms": written_by_class.get(r.session_id) if r.session_id[0] == "s" else None,
        }
        for r in books
        if r.session_id
    ]
    return {
        "raw": raw,
        "rows": len(rows),
        "requests": len(books),
        "single_lateness_ms (arrival)": summary(single_ms),
        "first_of_burst_lateness_ms (arrival)": summary(first_ms),
        "burst_spread_ms (arrival)": summary(spread_ms),
        "burst_spread_ms (sender)": summary(sender_spread_ms),
        "written_lateness_ms (sender)": summary(written_ms),
        "early_requests": early,
        "fifo_violations": fifo_violations,
        "db_connections_held": {"min": min(held, default=0), "max": max(held, default=0)},
        "outcomes": statuses,
        "daemon_exit_code": exit_code,
    }


def print_report(result: dict[str, Any]) -> None:
    print(f"rows {result['rows']}, requests {result['requests']}")
    for key, value in result.items():
        if isinstance(value, dict) and "p50" in value:
            print(
                f"{key:<40} n={value['n']:<5} p50={value['p50']:.3f}  "
                f"p99={value['p99']:.3f}  max={value['max']:.3f}"
            )
    for key in ("early_requests", "fifo_violations", "db_connections_held", "outcomes"):
        print(f"{key:<40} {result[key]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--burst", type=int, default=100)
    parser.add_argument(
        "--lead", type=float, default=10.0, help="seconds from start to the first instant"
    )
    parser.add_argument("--json", type=Path, default=Path("bench/out/precision.json"))
    args = parser.parse_args()

    async def go() -> dict[str, Any]:
        with tempfile.TemporaryDirectory() as tmp:
            dsn = os.environ.get("PREBOOKD_DATABASE_URL")
            if dsn:
                return await run(args, dsn, Path(tmp))
            embedded = start_embedded(Path(tmp))
            try:
                return await run(args, embedded.dsn, Path(tmp))
            finally:
                embedded.stop()

    result = asyncio.run(go())
    print_report(result)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"written {args.json}")


if __name__ == "__main__":
    main()
