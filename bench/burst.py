"""Scenario `burst`: 2000 prebookings at one instant across 10 boxes.

The simulator serves every box under a path prefix on one port, so for aiohttp all
2000 requests go to one host:port, and prebookd's `PREBOOKD_HTTP_POOL_PER_HOST`
(default 100) and `PREBOOKD_HTTP_POOL_LIMIT` (default 200) would hold all but 100
of them back until connections free up. This scenario sets both to the burst size
(2000), so every request can be staged on a connection of its own before the
instant, as it would be against 10 real boxes on 10 hosts with a per-host limit of
200. Reported: time from the instant to the first and to the last request written
(prebookd's rows, `written_at`) and arrived (simulator), FIFO within each class,
and how many requests were warm at the instant (prebookd's `instant_released`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any

from bench.harness import Approach, run_workload
from bench.procs import log_fields, log_time
from bench.report import (
    PREBOOKD_CONNECTION_LIMIT,
    Line,
    connections_line,
    sender_process_line,
    zero_line,
)
from bench.stats import fmt_ms, fmt_summary, summary
from bench.workload import burst_workload

NAME = "burst"


@dataclass(frozen=True)
class Size:
    boxes: int
    per_box: int
    lead: float = 20.0  # claiming, loading and staging 2000 rows takes seconds
    drain: float = 20.0


FULL = Size(boxes=10, per_box=200)
QUICK = Size(boxes=10, per_box=20, lead=6.0, drain=10.0)


def describe(size: Size) -> str:
    total = size.boxes * size.per_box
    return (
        f"{total} rows at one instant, {size.boxes} boxes x {size.per_box}; "
        f"PREBOOKD_HTTP_POOL_LIMIT=PREBOOKD_HTTP_POOL_PER_HOST={max(total, 200)}"
    )


# The burst runs twice: as deployed (the kernel places every process), and with
# prebookd and the simulator on CPUs of their own (see bench.infra.cpus_apart), where
# arrival stamps are honest and the simulator answers as fast as it can.
VARIANTS = (("as deployed", False), ("simulator on its own CPU", True))


async def run(server_dsn: str, size: Size, earlier: dict[str, Any]) -> dict[str, Any]:
    total = size.boxes * size.per_box
    pool = max(total, 200)  # never below prebookd's default
    runs = []
    for variant, pin in VARIANTS:
        approach = Approach(
            "prebookd",
            "prebookd",
            settings={"http_pool_limit": pool, "http_pool_per_host": pool},
            pin=pin,
        )
        runs.append(await _one(server_dsn, size, approach, variant))
    return {"size": asdict(size), "http_pool": {"limit": pool, "per_host": pool}, "runs": runs}


async def _one(server_dsn: str, size: Size, approach: Approach, variant: str) -> dict[str, Any]:
    result, lines = await run_workload(
        server_dsn,
        approach,
        lambda start: burst_workload(boxes=size.boxes, per_box=size.per_box, instant=start),
        lead=size.lead,
        drain=size.drain,
        label=NAME,
    )
    raw = result["metrics"]["raw"]
    result["variant"] = variant
    result["from_instant_ms"] = {
        view: _first_last([v for v in raw[f"{view}_ms"] if v is not None])
        for view in ("arrival", "sender")
    }
    result["instant_released"] = [log_fields(line) for line in _events(lines, "instant_released")]
    result["instant_fired"] = [log_fields(line) for line in _events(lines, "instant_fired")]
    result["answers_before_last_write"] = _answers_before_last_write(
        lines, result["from_instant_ms"]["sender"]
    )
    result["log"] = lines
    return result


def _answers_before_last_write(lines: list[str], sender: dict[str, Any]) -> int | None:
    """How many answers prebookd had handled (its `booking_sent` lines, logged once an
    answer is classified) before it wrote the burst's last request: work competing
    with the writes still to do."""
    fired = _events(lines, "instant_fired")
    if not fired or not sender.get("n"):
        return None
    instant = log_fields(fired[0]).get("instant", "")
    try:
        instant_at = dt.datetime.fromisoformat(instant.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
    last_write = instant_at + sender["last"] / 1000
    return sum(1 for line in _events(lines, "booking_sent") if log_time(line) < last_write)


def _events(lines: list[str], name: str) -> list[str]:
    return [line for line in lines if name in line.split()]


def _first_last(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {"n": len(values), "first": min(values), "last": max(values), **_spread(values)}


def _spread(values: list[float]) -> dict[str, Any]:
    stats = summary(values)
    return {"p50": stats["p50"], "p99": stats["p99"]}


def table(result: dict[str, Any]) -> list[Line]:
    lines = []
    for run in result["runs"]:
        lines += _run_lines(run, f"{run['variant']}: ")
    return lines


def _run_lines(run: dict[str, Any], prefix: str) -> list[Line]:
    m = run["metrics"]
    lines = []
    for view in ("sender", "arrival"):
        span = run["from_instant_ms"][view]
        if not span.get("n"):
            lines.append(Line(f"{prefix}{view}: requests", "none", "", False))
            continue
        first, last = span["first"], span["last"]
        lines += [
            Line(f"{prefix}first request, {view}", fmt_ms(first), "< 1 ms", 0 <= first < 1.0),
            Line(f"{prefix}last request, {view}", fmt_ms(last), "< 120 ms", last < 120.0),
        ]
    released = run["instant_released"]
    if released:
        fields = released[0]
        lines.append(
            Line(
                f"{prefix}staged at the instant (log)",
                f"{fields.get('warm')} of {fields.get('rows')} warm, "
                f"{fields.get('new_connections')} new connections",
            )
        )
    answered = run.get("answers_before_last_write")
    if answered is not None:
        lines.append(Line(f"{prefix}answers handled before the last write (log)", str(answered)))
    lines += [
        Line(f"{prefix}simulator's own queueing", fmt_summary(m["simulator_queue_ms"])),
        zero_line(f"{prefix}FIFO violations (within each class)", m["fifo_violations"]),
        zero_line(f"{prefix}early requests", m["early"]),
        zero_line(f"{prefix}rows never sent", {"unsent": m["unsent"]}),
        connections_line(
            run["db_connections"], f"{prefix}DB connections", limit=PREBOOKD_CONNECTION_LIMIT
        ),
        sender_process_line(run, f"{prefix}sender preempted by the kernel"),
        Line(f"{prefix}outcomes", ", ".join(f"{k} {v}" for k, v in sorted(m["outcomes"].items()))),
    ]
    return lines
