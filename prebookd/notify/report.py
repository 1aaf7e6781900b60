"""What `/metrics` and `prebookd status` show of notifications, from the daemon's
snapshot: pure, and light to import (no apprise) for the status command."""

from __future__ import annotations

from typing import Any


def gauges(snapshot: dict[str, Any]) -> dict[str, float]:
    """The snapshot's notification numbers under Prometheus names (for /metrics)."""
    shown: dict[str, float] = {}
    for key, value in (snapshot.get("notifications") or {}).items():
        shown[f"prebookd_notifications_{key}"] = float(value)
    heartbeat = snapshot.get("heartbeat")
    if heartbeat:
        shown["prebookd_heartbeat_healthy"] = 1.0 if heartbeat.get("healthy") else 0.0
        shown["prebookd_heartbeat_pings"] = float(heartbeat.get("pings", 0))
        shown["prebookd_heartbeat_fails"] = float(heartbeat.get("fails", 0))
    return shown


def status_line(snapshot: dict[str, Any]) -> str | None:
    """`prebookd status`'s line about notifications, or None from an older daemon."""
    sent = snapshot.get("notifications")
    if not sent:
        return None
    line = (
        f"  notify     {sent.get('sent', 0)} sent, {sent.get('retried', 0)} retried, "
        f"{sent.get('dead', 0)} dead, {sent.get('hung', 0)} hung"
    )
    heartbeat = snapshot.get("heartbeat")
    if heartbeat:
        state = "healthy" if heartbeat.get("healthy") else "FAILING"
        line += f"; heartbeat {state} ({heartbeat.get('pings', 0)} pings)"
    return line
