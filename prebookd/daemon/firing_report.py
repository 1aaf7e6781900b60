"""What a firing tells: the final result of each booking (for its row), the summary
of the instant (for the log and `prebookd status`), and how instants are written."""

from __future__ import annotations

import itertools
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import structlog

from prebookd.aimharder.client import Exchange
from prebookd.aimharder.outcomes import Verdict
from prebookd.models import Booking, ResultUpdate

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class ExchangeSummary:
    booking: Booking
    written_at: float | None
    lateness_ms: float | None
    outcome: str
    verdict: Verdict
    attempts: int  # requests written for it at this instant


def final_update(
    exchange: Exchange,
    *,
    booking_id: UUID,
    attempts: int,
    written_at: float | None,
    lateness_ms: float | None,
    retry_window: float,
    instance: str,
    note: str | None,
    choice: int | None = None,
) -> ResultUpdate:
    """What the row records of a booking's last exchange."""
    outcome = exchange.outcome
    if outcome.verdict is Verdict.COMPLETED:
        status, message = "completed", None
    elif outcome.verdict is Verdict.RETRY:
        status = "failed"
        if outcome.code == "not_open":
            message = (
                f"{outcome.reason}; still so {retry_window:g} s after the instant "
                f"({attempts} attempts)"
            )
        else:
            message = f"{outcome.reason} ({attempts} attempts)"
        if attempts and outcome.code in ("bad_answer", "transport_error"):
            # The request reached AimHarder but its answer did not reach us.
            message += "; the booking may have gone through: check AimHarder"
    else:
        status, message = "failed", outcome.reason
    result = exchange.answer
    if result is None:
        result = {"http_status": exchange.http_status, "error": outcome.reason}
    return ResultUpdate(
        booking_id,
        status,
        outcome=outcome.code,
        error_message=message,
        result=result,
        written_at=written_at,
        lateness_ms=lateness_ms,
        attempts=attempts,
        executed_at=exchange.answered_at,
        fired_by=instance,
        send_note=note,
        booked_choice=choice,
    )


def summarize(
    summaries: list[ExchangeSummary],
    instant: float,
    planned: Callable[[str], float] | None = None,
) -> dict[str, Any] | None:
    """The instant's summary (the firing logs it as `instant_fired`); None when nothing
    was sent. Lateness and spread are of each first write behind its box's planned time
    (`planned(box)`, daemon/aim.py; the instant when not aimed at the box's clock)."""
    if not summaries:
        return None
    plan = planned or (lambda _box: instant)
    behind = [
        (s.written_at - plan(s.booking.box)) * 1000 for s in summaries if s.written_at is not None
    ]
    lateness = [s.lateness_ms for s in summaries if s.lateness_ms is not None]
    if planned is not None:
        lateness = behind
    # FIFO held if, in prebooking order, each first request was written no earlier
    # than the one before it.
    written = [s.written_at for s in sorted(summaries, key=lambda s: s.booking.order)]
    sent = [w for w in written if w is not None]
    fifo = all(a <= b for a, b in itertools.pairwise(sent))
    summary = {
        "instant": iso_instant(instant),
        "count": len(summaries),
        "fifo": fifo,
        "lateness_p50_ms": round(statistics.median(lateness), 3) if lateness else None,
        "lateness_max_ms": round(max(lateness), 3) if lateness else None,
        "spread_ms": round(max(behind) - min(behind), 3) if behind else None,
        "outcomes": dict(Counter(s.outcome for s in summaries)),
        # Requests written per box, retries included: what AimHarder saw of us.
        "requests": dict(_requests_by_box(summaries)),
    }
    return summary


def iso_instant(epoch: float) -> str:
    """2026-12-01T06:00:00.000Z: millisecond precision, for logs and status."""
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch))
    return f"{whole}.{int(epoch * 1000) % 1000:03d}Z"


def send_note(
    restaged: int,
    lost_because: str | None,
    sent_cold: bool,
    written_at: float | None,
    tried: list[str] | None = None,
) -> str | None:
    """What the row says of how its request went out, when not simply from its gate,
    and what the choices before the last answered ("first choice: class full")."""
    notes = list(tried or [])
    if restaged:
        notes.append(
            f"staged again {restaged} time(s): the connection it waited on was lost "
            f"before the instant ({lost_because})"
        )
    if written_at is not None and sent_cold and restaged:
        notes.append("not staged again in time: built and sent at the instant")
    return "; ".join(notes) or None


def _requests_by_box(summaries: list[ExchangeSummary]) -> Counter[str]:
    requests: Counter[str] = Counter()
    for summary in summaries:
        requests[summary.booking.box] += summary.attempts
    return requests
