"""The printed table: one section per scenario, one line per metric, with the target
it is held against and whether it was met (measured values only, never adjusted)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench.stats import fmt_summary


@dataclass(frozen=True)
class Line:
    metric: str
    measured: str
    target: str = ""
    met: bool | None = None  # None: no target, information only

    @property
    def verdict(self) -> str:
        return {True: "met", False: "NOT MET", None: ""}[self.met]

    def as_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "measured": self.measured,
            "target": self.target,
            "met": self.met,
        }


def below(stats: dict[str, Any], key: str, limit_ms: float) -> bool | None:
    """Is the statistic `key` under `limit_ms`? None when there is nothing measured."""
    if not stats.get("n"):
        return None
    return bool(stats[key] < limit_ms and not stats.get("lower_bound"))


def lateness_line(name: str, stats: dict[str, Any], key: str, limit_ms: float) -> Line:
    return Line(name, fmt_summary(stats), f"{key} < {limit_ms:g} ms", below(stats, key, limit_ms))


def zero_line(name: str, counts: dict[str, int]) -> Line:
    text = ", ".join(f"{k} {v}" for k, v in counts.items())
    return Line(name, text, "0", all(v == 0 for v in counts.values()))


# prebookd's defaults: PREBOOKD_DB_POOL_MAX (4) plus the listener's own connection.
PREBOOKD_CONNECTION_LIMIT = 4 + 1


def connections_line(
    held: dict[str, Any], name: str = "DB connections held", limit: int | None = None
) -> Line:
    if not held.get("samples"):
        return Line(name, "not sampled", "constant", None)
    peaks = ", ".join(f"{k} {v}" for k, v in held["peak_by_application"].items())
    text = f"{held['min']}..{held['max']} over {held['samples']} samples (peaks: {peaks})"
    if limit is not None:
        text += f"; limit {limit}"
    return Line(name, text, "constant", bool(held["constant"]))


def render(title: str, lines: Sequence[Line]) -> str:
    header = Line("metric", "measured", "target")
    rows = [header, *lines]
    widths = [
        max(len(r.metric) for r in rows),
        max(len(r.measured) for r in rows),
        max(len(r.target) for r in rows),
    ]
    out = [f"== {title} =="]
    for row in rows:
        verdict = "verdict" if row is header else row.verdict
        out.append(
            f"{row.metric:<{widths[0]}}  {row.measured:<{widths[1]}}  "
            f"{row.target:<{widths[2]}}  {verdict}".rstrip()
        )
    return "\n".join(out)


def sender_process_line(
    result: dict[str, Any], name: str = "sender preempted by the kernel"
) -> Line:
    """Context for a late request on a busy machine (see bench.infra.preemptions)."""
    proc = result.get("sender_process") or {}
    return Line(name, f"{proc.get('preemptions')} times during the run ({proc.get('cpu_s')} s CPU)")
