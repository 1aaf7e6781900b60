"""Counters and histograms of the firings, rendered in Prometheus' text format.

Hand-written rather than `prometheus_client`: four metric families and a handful of
gauges read from the daemon's snapshot at scrape time are about a hundred lines of
plain code, with no global registry, no locks (everything runs on the event loop)
and no dependency to keep in step. The exposition format (version 0.0.4) is small
and stable; tests/test_status.py parses what this module writes.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Lateness of a request: from 0.1 ms (what a good firing looks like) to 1 s (what
# the serverless attempts got). Spread of a burst: first to last write of an instant.
LATENESS_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)
SPREAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)

# Help text of the gauges the daemon's snapshot provides; others get a generic line.
GAUGE_HELP = {
    "prebookd_armed_rows": "Prebookings held in memory (waiting or armed).",
    "prebookd_listener_connected": "1 while the LISTEN connection is up.",
    "prebookd_listener_reconnects": "Times the LISTEN connection was re-established.",
    "prebookd_db_pool_size": "Connections open in the asyncpg pool.",
    "prebookd_db_pool_idle": "Idle connections in the asyncpg pool.",
    "prebookd_db_pool_max": "The asyncpg pool's max_size.",
    "prebookd_http_connections_in_use": "aiohttp connections in use.",
    "prebookd_http_connections_limit": "aiohttp connector limit.",
    "prebookd_sessions_kept": "Member sessions kept alive for upcoming prebookings.",
    "prebookd_results_backlog": "Results waiting to be written to Postgres.",
    "prebookd_results_spooled": "Results in the spool file, waiting for Postgres.",
    "prebookd_next_instant_seconds": "Unix time of the next opening instant armed.",
    "prebookd_start_time_seconds": "Unix time the daemon started.",
    "prebookd_box_clock_offset_seconds": "A box's clock minus ours, from its Date header.",
    "prebookd_box_clock_bound_seconds": "How far the box clock estimate may be off.",
    "prebookd_box_clock_trip_seconds": "One-way trip to a box (shortest round trip / 2).",
}


def box_clock_gauges(snapshot: Mapping[str, Any]) -> dict[str, float]:
    """Per box, its clock estimate (daemon/aim.py), as labelled gauges."""
    gauges = {}
    for box, shown in ((snapshot.get("box_clocks") or {}).get("boxes") or {}).items():
        labels = _labels({"box": box})
        for key in ("offset", "bound", "trip"):
            if isinstance(value := shown.get(f"{key}_ms"), int | float):
                gauges[f"prebookd_box_clock_{key}_seconds{labels}"] = value / 1000
    return gauges


class Histogram:
    """Cumulative buckets, a sum and a count, as Prometheus histograms are."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self._counts = [0] * len(self.bounds)  # per bucket, not cumulative
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.count += 1
        self.sum += value
        for index, bound in enumerate(self.bounds):
            if value <= bound:
                self._counts[index] += 1
                return
        # above the last bound: counted only in +Inf, which is `count`

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, cumulative count) pairs, ending with +Inf."""
        out = []
        running = 0
        for bound, count in zip(self.bounds, self._counts, strict=True):
            running += count
            out.append((_number(bound), running))
        out.append(("+Inf", self.count))
        return out


class Metrics:
    """What happened since the daemon started; the engine feeds it, /metrics reads it."""

    def __init__(self) -> None:
        self.lateness = Histogram(LATENESS_BUCKETS)
        self.spread = Histogram(SPREAD_BUCKETS)
        self.requests: Counter[tuple[str, str]] = Counter()  # (outcome, box) -> n
        self.written: Counter[str] = Counter()  # box -> requests written to AimHarder
        self.instants = 0

    def observe_request(
        self, *, lateness_ms: float | None, outcome: str, box: str, attempts: int = 0
    ) -> None:
        """One booking's final outcome, after `attempts` requests; lateness of its first
        write, None if never sent."""
        self.requests[(outcome, box)] += 1
        self.written[box] += attempts
        if lateness_ms is not None:
            self.lateness.observe(lateness_ms / 1000.0)

    def observe_instant(self, *, count: int, spread_ms: float | None) -> None:
        """One instant fired: `count` requests, first to last write `spread_ms` apart."""
        self.instants += 1
        if spread_ms is not None:
            self.spread.observe(spread_ms / 1000.0)

    def render(self, gauges: Mapping[str, float]) -> str:
        lines: list[str] = []
        _histogram(
            lines,
            "prebookd_request_lateness_seconds",
            "First write of a booking request after its opening instant.",
            self.lateness,
        )
        lines.append("# HELP prebookd_requests_total Bookings by final outcome and box.")
        lines.append("# TYPE prebookd_requests_total counter")
        for (outcome, box), count in sorted(self.requests.items()):
            labels = _labels({"outcome": outcome, "box": box})
            lines.append(f"prebookd_requests_total{labels} {count}")
        lines.append(
            "# HELP prebookd_booking_requests_total Booking requests written to AimHarder "
            "(first tries and retries), by box."
        )
        lines.append("# TYPE prebookd_booking_requests_total counter")
        for box, count in sorted(self.written.items()):
            lines.append(f"prebookd_booking_requests_total{_labels({'box': box})} {count}")
        lines.append("# HELP prebookd_instants_total Opening instants fired.")
        lines.append("# TYPE prebookd_instants_total counter")
        lines.append(f"prebookd_instants_total {self.instants}")
        _histogram(
            lines,
            "prebookd_burst_spread_seconds",
            "Time from the first to the last write of one instant's burst.",
            self.spread,
        )
        typed = set()
        for name, value in sorted(gauges.items()):
            base = name.split("{", 1)[0]  # a gauge per box: one HELP and TYPE for all
            if base not in typed:
                typed.add(base)
                help_text = GAUGE_HELP.get(base, "Read from the daemon's status snapshot.")
                lines.append(f"# HELP {base} {_escape_help(help_text)}")
                lines.append(f"# TYPE {base} gauge")
            lines.append(f"{name} {_number(value)}")
        return "\n".join(lines) + "\n"


def _histogram(lines: list[str], name: str, help_text: str, histogram: Histogram) -> None:
    lines.append(f"# HELP {name} {_escape_help(help_text)}")
    lines.append(f"# TYPE {name} histogram")
    for le, count in histogram.cumulative():
        lines.append(f'{name}_bucket{{le="{le}"}} {count}')
    lines.append(f"{name}_sum {_number(histogram.sum)}")
    lines.append(f"{name}_count {histogram.count}")


def _labels(labels: Mapping[str, str]) -> str:
    inner = ",".join(f'{key}="{_escape_label(value)}"' for key, value in labels.items())
    return "{" + inner + "}"


def _escape_label(value: str) -> str:
    # The format's three escapes; a box name is free text from the boxes table.
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))  # 4, not 4.0: what people and client libraries write
    # repr is the shortest text that reads back as the same float.
    return repr(float(value))
