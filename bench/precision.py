"""Scenario `precision`: how late, how spread, how ordered are prebookd's requests?

1000 prebookings over 60 s: bursts of 100 at one instant, single ones in between.
Lateness (p50/p99/p99.9/max) of single requests and of the first request of each
burst, from the simulator's arrival times and from prebookd's own `lateness_ms`;
the spread of each burst; early requests; FIFO violations; DB connections held.

This module used to be a runner of its own; `python -m bench.precision` now runs
`python -m bench.run --scenario precision` (same options as bench.run).
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from typing import Any

from bench.harness import PREBOOKD, Approach, run_workload
from bench.infra import create_database
from bench.infra import drop_database as drop_database  # re-exported, see below
from bench.report import (
    PREBOOKD_CONNECTION_LIMIT,
    Line,
    connections_line,
    lateness_line,
    sender_process_line,
    zero_line,
)
from bench.stats import fmt_summary
from bench.workload import precision_workload

NAME = "precision"

# The database helpers this module had before bench.run, which bench/warmup.py
# imports from here: fresh_database(server_dsn) -> (name, dsn), drop_database.


async def fresh_database(server_dsn: str) -> tuple[str, str]:
    return await create_database(server_dsn, "warmup")


@dataclass(frozen=True)
class Size:
    rows: int
    seconds: float  # instants spread over this long
    burst: int  # rows per burst
    lead: float = 10.0  # seconds from the sender being ready to the first instant
    drain: float = 15.0  # seconds after the last instant to wait for results


FULL = Size(rows=1000, seconds=60.0, burst=100)
QUICK = Size(rows=100, seconds=6.0, burst=25, lead=3.0)


def describe(size: Size) -> str:
    return f"{size.rows} rows over {size.seconds:g} s, bursts of {size.burst}"


async def run_approach(
    server_dsn: str, approach: Approach, size: Size, label: str
) -> dict[str, Any]:
    """`approach` on the precision workload of `size`; also used by the baselines."""
    result, lines = await run_workload(
        server_dsn,
        approach,
        lambda start: precision_workload(
            rows=size.rows, seconds=size.seconds, burst=size.burst, start=start
        ),
        lead=size.lead,
        drain=size.drain,
        label=label,
    )
    return {"size": asdict(size), "workload": describe(size), **result, "log": lines}


async def run(server_dsn: str, size: Size, earlier: dict[str, Any]) -> dict[str, Any]:
    return await run_approach(server_dsn, PREBOOKD, size, NAME)


def table(result: dict[str, Any]) -> list[Line]:
    m = result["metrics"]
    arrival, sender = m["lateness_ms"]["arrival"], m["lateness_ms"]["sender"]
    spread = m["burst_spread_ms"]
    return [
        lateness_line("single lateness, arrival", arrival["single"], "p99", 0.5),
        lateness_line("single lateness, sender", sender["single"], "p99", 0.5),
        lateness_line("first-of-burst lateness, arrival", arrival["first_of_burst"], "p99", 0.5),
        lateness_line("first-of-burst lateness, sender", sender["first_of_burst"], "p99", 0.5),
        lateness_line("burst spread, arrival", spread["arrival"], "max", 6.0),
        lateness_line("burst spread, sender", spread["sender"], "max", 6.0),
        Line("all requests' lateness, arrival", fmt_summary(arrival["all"])),
        zero_line("early requests", m["early"]),
        zero_line("FIFO violations", m["fifo_violations"]),
        zero_line("rows never sent", {"unsent": m["unsent"]}),
        connections_line(result["db_connections"], limit=PREBOOKD_CONNECTION_LIMIT),
        sender_process_line(result),
        Line("outcomes", ", ".join(f"{k} {v}" for k, v in sorted(m["outcomes"].items()))),
    ]


def main() -> None:
    from bench.run import main as run_main

    run_main(["--scenario", NAME, *sys.argv[1:]])


if __name__ == "__main__":
    main()
