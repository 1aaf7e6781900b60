"""The lines that tell a prebooking's life, one per step, and how they are written.

    prebooking_received   info     heard of: a NOTIFY of an insert or a change (each
                                   one), or a resync (rows new to this process: the
                                   RESYNC_LISTED opening soonest one by one, and when
                                   there were more, as on starting with a big table,
                                   one `prebookings_received` line with how many)
    prebooking_armed      info     claimed (lease held), the member's session loaded
    prebooking_staged     info     request built, connection opening: waits at its gate
    prebooking_fired      info     first request written: lateness, whether it waited
                                   ready at its gate (`warm`), AimHarder's first answer
    booking_sent          info     booked, waitlisted, already booked (on a backup
                                   class: that class, `choice`, `backup_for`)
                          warning  did not book (full, not open after the retry window,
                                   refused, ...): `reason` in words, as the row says
    booking_not_sent      warning  never written (box paused, connections lost)
    prebooking_rejected   warning  failed before any request: its session expired
                          error    a row that cannot be sent at all (bad_row, missed,
                                   unknown: the row or the daemon is at fault)
    result_written        info     its final result is in Postgres

Lines about a row carry `prebooking_id`, and, where the daemon knows them, the member
(masked), the box, the class and the instant. So `journalctl -p warning` lists the
bookings that did not book, each in one line a person can act on.

A line costs tens of microseconds (redaction, rendering, the write): a burst of
answers, a resync or a flood of NOTIFYs would be milliseconds of them. So callers only
queue a line (`RowLog`), and a task writes the queue a few lines per loop turn, none
from just before an instant until QUIET_AFTER past it (a burst's last writes go out
tens of milliseconds after its first; lines held longer than MAX_HOLD, instants
following each other, wait only for the usual hot window). The lines keep the order
they were queued in.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl

import structlog

from prebookd.daemon.firing_report import iso_instant
from prebookd.log import mask_email
from prebookd.models import Booking, ResultUpdate
from prebookd.text import one_line

log = structlog.get_logger(__name__)

RESYNC_LISTED = 50  # rows new to a resync told one by one, at most
LINES_PER_TURN = 16  # a few milliseconds at most, well inside an instant's guard
QUIET_AFTER = 0.05  # no line this long after an instant: 2000 requests are written in ~50 ms
MAX_HOLD = 1.0  # a line waits at most this long for QUIET_AFTER (then for the hot window only)
# Rows that cannot be sent at all: the row or the daemon is at fault, not the box.
ERROR_OUTCOMES = frozenset({"bad_row", "missed", "unknown"})
_LEVELS = logging.getLevelNamesMapping()

# HotWindows.wait_clear: returns once no instant is near (`settle`: how long after it).
WaitClear = Callable[[float | None], Awaitable[None]]


async def _never_wait(settle: float | None = None) -> None:
    return None


class RowLog:
    """Lines queued by the engine and its firings, written in order when no instant
    is near. `flush()` writes what is left at once (the daemon stopping)."""

    def __init__(self, wait_clear: WaitClear = _never_wait) -> None:
        self._wait_clear = wait_clear
        # (loop time queued, level, event, fields)
        self._queue: deque[tuple[float, int, str, dict[str, Any]]] = deque()
        self._writer: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._queue)

    def info(self, event: str, **fields: Any) -> None:
        self.log("info", event, **fields)

    def log(self, level: str, event: str, **fields: Any) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a test calling in directly): write now
            self._queue.append((0.0, _LEVELS[level.upper()], event, fields))
            self.flush()
            return
        self._queue.append((loop.time(), _LEVELS[level.upper()], event, fields))
        if self._writer is None:
            self._writer = loop.create_task(self._write(), name="row-log")

    def flush(self) -> None:
        while self._queue:
            self._write_one()

    async def _write(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                hold = self._queue[0][0] + MAX_HOLD - loop.time()  # the oldest line's
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wait_clear(QUIET_AFTER), max(hold, 0.0))
                await self._wait_clear(None)
                for _ in range(min(LINES_PER_TURN, len(self._queue))):
                    self._write_one()
                await asyncio.sleep(0)  # whatever else is ready goes first
        finally:
            self._writer = None

    def _write_one(self) -> None:
        _, level, event, fields = self._queue.popleft()
        try:
            log.log(level, event, **fields)
        except Exception:
            pass  # a line lost must not stop the engine


# ---- what the lines say -------------------------------------------------------------


def tell_outcome(rows: RowLog, booking: Booking, label: str | None, update: ResultUpdate) -> None:
    """A booking's final result, from its row's own `update`: `booking_sent` (or
    `booking_not_sent`), at the level its outcome deserves, with the reason in words.
    A row booked on a backup class (`booked_choice` n > 0) names that class, with
    `choice` n and the first choice it stood in for as `backup_for`."""
    lateness = update.lateness_ms
    fields = booking_fields(booking, label)
    backup = next((a for a in booking.alternatives if a.choice == update.booked_choice), None)
    if backup is not None and backup.choice > 0 and update.status == "completed":
        fields["backup_for"] = fields["class"]
        fields["class"] = class_of_booking(backup)
        fields["choice"] = backup.choice
    rows.log(
        outcome_level(update.status, update.outcome),
        "booking_sent" if update.written_at is not None else "booking_not_sent",
        prebooking_id=str(update.id),
        **fields,
        lateness_ms=None if lateness is None else round(lateness, 3),
        attempts=update.attempts,
        outcome=update.outcome,
        **({"reason": update.error_message} if update.status == "failed" else {}),
    )


def outcome_level(status: str, outcome: str | None) -> str:
    """info for a booking that booked; warning for one that did not; error for a row
    that could not be sent at all."""
    if status == "completed":
        return "info"
    return "error" if outcome in ERROR_OUTCOMES else "warning"


def class_of(booking_data: Any) -> str:
    """The class a row asks for, as a person reads it: `WOD 07:00 - 08:00 on 2030-12-01
    (class 106015104)` when the row names it (`className`, `time`, as AimHarder's
    listings do), else `class 106015104 on 2030-12-01`. Never raises: rows may hold
    anything."""
    data = booking_data
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except (ValueError, RecursionError):
            return "?"
    if not isinstance(data, Mapping):
        return "?"
    session = _field(data.get("id"))
    day = _field(data.get("day"))
    if len(day) == 8 and day.isdigit():
        day = f"{day[:4]}-{day[4:6]}-{day[6:]}"
    name = " ".join(s for s in (_field(data.get("className")), _field(data.get("time"))) if s)
    when = f" on {day}" if day else ""
    if name:
        return f"{name}{when} (class {session or '?'})"
    return f"class {session or '?'}{when}"


def class_of_booking(booking: Booking) -> str:
    """The class of a ready request, read back from its form (id, day)."""
    try:
        return class_of(dict(parse_qsl(booking.body.decode())))
    except ValueError:
        return "?"


def row_fields(record: Mapping[str, Any]) -> dict[str, Any]:
    """Who, where, what and when of a claimed row (joined with its box), as lines show
    them; whatever the row holds."""
    return {
        "member": mask_email(_field(record.get("user_email")) or None),
        "box": _field(record.get("subdomain")) or "?",
        "class": class_of(record.get("booking_data")),
        "instant": instant_of(record.get("available_at")),
    }


def booking_fields(booking: Booking, label: str | None = None) -> dict[str, Any]:
    return {
        "member": mask_email(booking.member),
        "box": booking.box,
        "class": label or class_of_booking(booking),
        "instant": iso_instant(booking.available_at),
    }


def instant_of(value: Any) -> str | None:
    """An instant (epoch seconds, or a datetime from a row) as lines show it; None when
    there is none, or none that reads as one."""
    try:
        if isinstance(value, dt.datetime):
            value = value.timestamp()
        if isinstance(value, float | int) and not isinstance(value, bool):
            return iso_instant(value)
    except (OverflowError, OSError, ValueError):
        pass
    return None


def _field(value: Any) -> str:
    """A short value of a row as one printable line; "" when absent or not text."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return ""
    return one_line(str(value), 64)
