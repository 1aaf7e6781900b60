"""Percentiles and ratios, the same way for every scenario and every approach."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

PERCENTILES = (("p50", 0.50), ("p99", 0.99), ("p99.9", 0.999))


def quantile(values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile: always a value that was measured, never an interpolation
    (a p99.9 of 500 values is their maximum, and says so by being equal to it)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def summary(values: Sequence[float], *, censored: int = 0) -> dict[str, Any]:
    """n, p50, p99, p99.9 and max of `values`.

    `censored` counts values that are only lower bounds (a request never sent before
    the run ended: its lateness is at least the time left). Any censored value makes
    every statistic a lower bound, and `lower_bound` says so."""
    if not values:
        return {"n": 0}
    result: dict[str, Any] = {"n": len(values)}
    for name, q in PERCENTILES:
        result[name] = quantile(values, q)
    result["max"] = max(values)
    if censored:
        result["censored"] = censored
        result["lower_bound"] = True
    return result


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def fmt_ms(value: float | None, *, bound: bool = False) -> str:
    """A lateness for the table: ms, or s once it is that large."""
    if value is None:
        return "-"
    prefix = ">=" if bound else ""
    if abs(value) >= 10_000:
        return f"{prefix}{value / 1000:.2f} s"
    return f"{prefix}{value:.3f} ms"


def fmt_summary(stats: dict[str, Any], keys: Sequence[str] = ("p50", "p99", "p99.9", "max")) -> str:
    """'p50 / p99 / p99.9 / max' of a summary in one unit, for one table cell."""
    if not stats.get("n"):
        return "no values"
    seconds = abs(stats["max"]) >= 10_000
    scale, unit, digits = (1000.0, "s", 2) if seconds else (1.0, "ms", 3)
    cells = " / ".join(f"{stats[k] / scale:.{digits}f}" for k in keys)
    prefix = ">= " if stats.get("lower_bound") else ""
    return f"{prefix}{cells} {unit} (n={stats['n']})"
