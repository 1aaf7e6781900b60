"""What the operator is told of, decided from what the daemon knows: pure, no I/O.

Each alert has a key: the outbox sends one message per key, however often the same
trouble is seen (a burst summary is looked at every second while it is recent).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SLOW_BURST_MS = 1000.0  # an instant's rows not all written within this: the operator hears
# Outcomes that say a box is pushing back on us, and how the operator reads them.
PUSHBACK = {"rate_limited": "rate-limiting", "blocked": "blocking"}
MISSED_LATE_MS = 1000.0  # a first request this late after its instant: the instant is missed


def instant_missed(summary: Mapping[str, Any]) -> bool:
    """Whether an instant's summary says its places were lost to lateness: a request a
    second or more late, rows not all sent within a second, or rows given up as missed.
    The heartbeat fails once for it: something outside should look at this machine."""
    late = summary.get("lateness_max_ms")
    spread = summary.get("spread_ms")
    missed = (summary.get("outcomes") or {}).get("missed")
    return bool(
        (isinstance(late, int | float) and late >= MISSED_LATE_MS)
        or (isinstance(spread, int | float) and spread > SLOW_BURST_MS)
        or missed
    )


@dataclass(frozen=True)
class Alert:
    key: str
    title: str
    body: str


def firing_alerts(summary: Mapping[str, Any]) -> list[Alert]:
    """An instant's summary (firing_report.summarize): too slow, or a box pushing back."""
    instant = summary.get("instant", "?")
    count = summary.get("count", "?")
    alerts = []
    spread = summary.get("spread_ms")
    if isinstance(spread, int | float) and spread > SLOW_BURST_MS:
        alerts.append(
            Alert(
                f"slow:{instant}",
                "prebookd: an instant's rows were not all sent within 1 s",
                f"The {count} rows of {instant} took {spread:.0f} ms from first to last write.",
            )
        )
    outcomes = summary.get("outcomes") or {}
    boxes = ", ".join(sorted(summary.get("requests") or {})) or "?"
    for code, doing in PUSHBACK.items():
        rows = outcomes.get(code)
        if rows:
            alerts.append(
                Alert(
                    f"{code}:{instant}",
                    f"prebookd: a box is {doing} us",
                    f"{rows} row(s) of {instant} ended {code} (boxes: {boxes}).",
                )
            )
    return alerts


def unclean_start_alert(
    predecessor: str | None, left: Mapping[str, int], spool_bytes: int
) -> Alert | None:
    """The process before this one died without its goodbye: rows it left on the wire are
    sent again (AimHarder answers "already booked"), rows it left claimed fire late or
    are missed, results it spooled are written now."""
    executing, loaded = left.get("executing", 0), left.get("loaded", 0)
    if not (executing or loaded or spool_bytes):
        return None
    parts = []
    if executing:
        parts.append(f"{executing} row(s) were on the wire and are sent again")
    if loaded:
        parts.append(f"{loaded} claimed row(s) fire now, late or missed if their instant passed")
    if spool_bytes:
        parts.append("results it had only in the spool are written now")
    return Alert(
        f"unclean:{predecessor or 'spool'}",
        "prebookd: started after an unclean stop",
        "The daemon before this one stopped without draining: " + "; ".join(parts) + ".",
    )
