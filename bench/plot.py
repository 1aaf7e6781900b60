"""The lateness histogram: one curve per approach, on a log axis (prebookd's
sub-millisecond lateness and a poller's tens of seconds on one picture)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bench.stats import fmt_ms, quantile

FLOOR_MS = 1e-3  # a request written before its instant (never expected) plots here


def series(results: dict[str, Any]) -> list[tuple[str, list[float], int]]:
    """(label, arrival lateness of every row's request in ms, rows never sent)."""
    found = []
    runs = []
    if "precision" in results:
        runs.append(results["precision"])
    runs += results.get("baselines", {}).get("approaches", [])
    for run in runs:
        raw = run["metrics"]["raw"]["arrival_ms"]
        values = [max(v, FLOOR_MS) for v in raw if v is not None]
        found.append((run["approach"], values, sum(1 for v in raw if v is None)))
    for run in results.get("burst", {}).get("runs", []):
        raw = run["metrics"]["raw"]["arrival_ms"]
        values = [max(v, FLOOR_MS) for v in raw if v is not None]
        found.append((f"prebookd, burst of {len(raw)}, {run['variant']}", values, raw.count(None)))
    return found


def plot_lateness(results: dict[str, Any], path: Path) -> Path | None:
    """Write the PNG; None when matplotlib is not installed or nothing was measured."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display: render to a file
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    everything = series(results)
    curves = [c for c in everything if c[1]]
    if not curves:
        return None
    low = min(min(v) for _, v, _ in curves)
    high = max(max(v) for _, v, _ in curves)
    edges = _log_edges(low, high)
    fig, ax = plt.subplots(figsize=(10, 5.5))
    for label, values, unsent in curves:
        median = quantile(values, 0.5)  # as the table computes it
        text = f"{label}: n={len(values)}, p50 {fmt_ms(median)}"
        if unsent:
            text += f", {unsent} never sent"
        ax.hist(values, bins=edges, histtype="step", linewidth=1.6, label=text)
    for label, values, unsent in everything:
        if not values:  # nothing sent before the run ended: say so in the legend
            ax.plot([], [], " ", label=f"{label}: none of {unsent} sent within the run")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("lateness at the simulator (first byte of the request - opening instant), ms")
    ax.set_ylabel("requests")
    ax.set_title("Lateness of each prebooking's request, per approach")
    ax.axvline(1.0, color="grey", linestyle=":", linewidth=1)
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(True, which="major", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _log_edges(low: float, high: float, per_decade: int = 20) -> list[float]:
    start = math.floor(math.log10(max(low, FLOOR_MS)))
    stop = math.ceil(math.log10(max(high, low * 10)))
    count = (stop - start) * per_decade
    return [10 ** (start + i / per_decade) for i in range(count + 1)]
