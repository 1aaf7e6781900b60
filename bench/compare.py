"""Scenario `baselines`: the approaches prebookd replaces, on the precision workload.

Each baseline (bench/baselines.py) runs on a copy of the precision workload, with the
same simulator and metrics, and its lateness is divided by prebookd's from the
`precision` scenario of the same run (so both were measured on the same machine
under the same conditions, minutes apart).

The 60 s poller gets a workload of its own, 4 minutes of instants and 150 rows (one
burst of 100, 50 single ones): on the 60 s workload it would tick once or twice
while rows pile up, and at 50 rows a tick (LIMIT 50) draining 1000 rows would take
20 minutes. Its ratios are still to
prebookd's precision result (prebookd's lateness does not depend on how the
instants are spread). Rows a baseline has not sent when its drain time runs out are
censored: counted as late by at least the time waited, and shown with ">=".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from bench import precision
from bench.harness import Approach
from bench.report import Line, connections_line, zero_line
from bench.stats import fmt_summary, ratio

NAME = "baselines"


@dataclass(frozen=True)
class Size:
    fast: precision.Size  # for the 1 s poller and the sleeper
    slow: precision.Size  # for the 60 s poller


FULL = Size(
    fast=precision.Size(rows=1000, seconds=60.0, burst=100, drain=15.0),
    slow=precision.Size(rows=150, seconds=240.0, burst=100, drain=130.0),
)
QUICK = Size(
    fast=precision.Size(rows=100, seconds=6.0, burst=25, lead=3.0, drain=8.0),
    # Too short for a 60 s poller to tick during it: everything it sends is censored.
    slow=precision.Size(rows=40, seconds=4.0, burst=20, lead=3.0, drain=8.0),
)

APPROACHES = (
    (Approach("poller every 60 s", "poll", ("--interval", "60", "--limit", "50")), "slow"),
    (Approach("poller every 1 s", "poll", ("--interval", "1", "--limit", "50")), "fast"),
    (Approach("sleep until T+30 ms", "sleeper"), "fast"),
)


def describe(size: Size) -> str:
    return (
        f"60 s poller on {precision.describe(size.slow)}; 1 s poller and sleeper on "
        f"{precision.describe(size.fast)}"
    )


def _lateness(result: dict[str, Any], group: str) -> dict[str, Any]:
    stats: dict[str, Any] = result["metrics"]["lateness_ms"]["arrival"][group]
    return stats


async def run(server_dsn: str, size: Size, earlier: dict[str, Any]) -> dict[str, Any]:
    reference = earlier.get(precision.NAME)
    approaches = []
    for approach, which in APPROACHES:
        workload_size = getattr(size, which)
        result = await precision.run_approach(
            server_dsn, approach, workload_size, f"{NAME}_{approach.kind}"
        )
        result["ratios_to_prebookd"] = ratios(result, reference)
        approaches.append(result)
    return {
        "size": asdict(size),
        # What the ratios divide by: prebookd's arrival lateness from `precision`.
        "prebookd_reference_ms": None
        if reference is None
        else {g: _lateness(reference, g) for g in ("all", "single", "first_of_burst")},
        "approaches": approaches,
    }


def ratios(result: dict[str, Any], reference: dict[str, Any] | None) -> dict[str, Any]:
    """p50 and p99 lateness (arrival) of a baseline over prebookd's, per group."""
    if reference is None:
        return {}
    found = {}
    for group in ("all", "single", "first_of_burst"):
        mine, theirs = _lateness(result, group), _lateness(reference, group)
        for key in ("p50", "p99"):
            found[f"{group}_{key}"] = ratio(mine.get(key), theirs.get(key))
        found[f"{group}_lower_bound"] = bool(mine.get("lower_bound"))
    return found


def _times(value: float | None, bound: bool) -> str:
    if value is None:
        return "-"
    return f"{'>=' if bound else ''}{value:,.0f}x"


def table(result: dict[str, Any]) -> list[Line]:
    lines = []
    reference = result.get("prebookd_reference_ms")
    if reference:
        lines += [
            Line("prebookd (precision run): all lateness, arrival", fmt_summary(reference["all"])),
            Line("prebookd (precision run): single, arrival", fmt_summary(reference["single"])),
        ]
    for approach in result["approaches"]:
        name, m = approach["approach"], approach["metrics"]
        r = approach["ratios_to_prebookd"]
        arrival = m["lateness_ms"]["arrival"]
        lines += [
            Line(f"{name}: all lateness, arrival", fmt_summary(arrival["all"])),
            Line(f"{name}: single lateness, arrival", fmt_summary(arrival["single"])),
            Line(f"{name}: first-of-burst, arrival", fmt_summary(arrival["first_of_burst"])),
            Line(f"{name}: burst spread, arrival", fmt_summary(m["burst_spread_ms"]["arrival"])),
        ]
        if r:
            lines.append(
                Line(
                    f"{name}: ratio to prebookd p50 / p99",
                    f"all {_times(r['all_p50'], r['all_lower_bound'])} / "
                    f"{_times(r['all_p99'], r['all_lower_bound'])}; single "
                    f"{_times(r['single_p50'], r['single_lower_bound'])} / "
                    f"{_times(r['single_p99'], r['single_lower_bound'])}",
                )
            )
        lines += [
            zero_line(f"{name}: early requests", m["early"]),
            zero_line(f"{name}: FIFO violations", m["fifo_violations"]),
            Line(f"{name}: rows not sent in time", str(m["unsent"])),
            connections_line(approach["db_connections"], f"{name}: DB connections"),
        ]
    return lines
