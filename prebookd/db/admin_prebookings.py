"""The SQL of the producer-side commands on prebookings (`add`, `list`, `cancel`).

Rows are written as the web app writes them: plain INSERT/UPDATE, so the trigger wakes
the daemon exactly as it would for the web app. Nothing here decides anything; the
command modules validate first and call these functions last.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from prebookd.db.admin_store import FINAL_STATUSES

# A row may still be withdrawn only before a daemon starts sending it.
CANCELLABLE_STATUSES = ("pending", "loaded")


@dataclass(frozen=True)
class PrebookingView:
    """A prebooking as `prebookd list` and `cancel` show it, with its box's subdomain
    and zone; `upcoming`: not final, or its instant still ahead."""

    id: uuid.UUID
    user_email: str | None
    box: str | None
    box_timezone: str | None
    booking_data: Any
    class_label: str | None
    available_at: datetime | None
    status: str | None
    result: Any
    error_message: str | None
    created_at: datetime | None
    executed_at: datetime | None
    written_at: datetime | None
    lateness_ms: float | None
    attempts: int | None
    fired_by: str | None
    outcome: str | None
    send_note: str | None
    upcoming: bool


# $1: the final statuses.
_VIEW = """
    SELECT p.id, p.user_email, b.subdomain AS box, b.timezone AS box_timezone,
           p.booking_data, p.class_label, p.available_at, p.status, p.result,
           p.error_message, p.created_at, p.executed_at, p.written_at, p.lateness_ms,
           p.attempts, p.fired_by, p.outcome, p.send_note,
           (p.status IS NULL OR p.status <> ALL($1::text[]) OR p.available_at > now())
               IS TRUE AS upcoming
    FROM prebookings p
    LEFT JOIN boxes b ON b.id = p.box_id
"""


def _view(row: asyncpg.Record) -> PrebookingView:
    values = dict(row)
    values.pop("matches", None)
    return PrebookingView(**values)


async def insert_prebooking(
    conn: asyncpg.Connection,
    *,
    user_email: str,
    box: uuid.UUID,
    booking_data: dict[str, Any],
    available_at: datetime,
    class_label: str | None = None,
    watch: bool = False,
) -> uuid.UUID:
    """A new `pending` row; `created_at` (its FIFO place) is the database's now()."""
    new_id = await conn.fetchval(
        """
        INSERT INTO prebookings (user_email, box_id, booking_data, available_at, status,
                                 class_label, watch)
        VALUES ($1, $2, $3, $4, 'pending', $5, $6)
        RETURNING id
        """,
        user_email,
        box,
        booking_data,
        available_at,
        class_label,
        watch,
    )
    assert isinstance(new_id, uuid.UUID)
    return new_id


async def list_prebookings(
    conn: asyncpg.Connection,
    *,
    status: str | None,
    box: uuid.UUID | None,
    user_email: str | None,
    since: datetime | None,
    everything: bool,
    limit: int,
    rule_id: int | None = None,
) -> list[PrebookingView]:
    """Matching rows in firing order (available_at, then FIFO by created_at): the
    upcoming ones, and of the others (history) those whose instant is at or after
    `since`, or all with `everything`. Cut at `limit`, the upcoming rows are kept
    first, soonest first, then the latest history."""
    rows = await conn.fetch(
        f"""
        SELECT * FROM (
            SELECT * FROM ({_VIEW}
                WHERE ($2::text IS NULL OR p.status = $2)
                  AND ($3::uuid IS NULL OR p.box_id = $3)
                  AND ($4::text IS NULL OR lower(p.user_email) = lower($4))
                  AND ($8::bigint IS NULL OR p.rule_id = $8)
            ) AS matching
            WHERE upcoming OR $5 OR available_at >= $6
            ORDER BY upcoming DESC,
                     CASE WHEN upcoming THEN available_at END ASC NULLS LAST,
                     available_at DESC NULLS LAST, created_at, id
            LIMIT $7
        ) AS kept
        ORDER BY available_at NULLS LAST, created_at, id
        """,
        list(FINAL_STATUSES),
        status,
        box,
        user_email,
        everything,
        since,
        limit,
        rule_id,
    )
    return [_view(row) for row in rows]


async def find_by_prefix(
    conn: asyncpg.Connection, prefix: str, limit: int
) -> tuple[int, list[PrebookingView]]:
    """Rows whose id starts with `prefix` (hex digits, no dashes): how many, and the
    first `limit` of them by id. A range on the primary key, not a scan."""
    low = uuid.UUID(prefix.ljust(32, "0"))
    high = uuid.UUID(prefix.ljust(32, "f"))
    rows = await conn.fetch(
        f"""
        SELECT *, count(*) OVER () AS matches FROM ({_VIEW}
            WHERE p.id BETWEEN $2 AND $3
        ) AS found
        ORDER BY id
        LIMIT $4
        """,
        list(FINAL_STATUSES),
        low,
        high,
        limit,
    )
    return (rows[0]["matches"] if rows else 0), [_view(row) for row in rows]


async def cancel_prebooking(conn: asyncpg.Connection, prebooking_id: uuid.UUID) -> bool:
    """Set `cancelled` if the row is still pending or loaded; False if it was not."""
    # One conditional UPDATE: a daemon moving the row to `executing` at the same moment
    # either sees `cancelled` or makes this match nothing; never both.
    cancelled = await conn.fetchval(
        """
        UPDATE prebookings SET status = 'cancelled'
        WHERE id = $1 AND status = ANY($2::text[])
        RETURNING id
        """,
        prebooking_id,
        list(CANCELLABLE_STATUSES),
    )
    return cancelled is not None


async def prebooking_status(
    conn: asyncpg.Connection, prebooking_id: uuid.UUID
) -> tuple[bool, str | None]:
    """(whether the row exists, its status)."""
    row = await conn.fetchrow("SELECT status FROM prebookings WHERE id = $1", prebooking_id)
    if row is None:
        return False, None
    status: str | None = row["status"]
    return True, status


async def last_window_message(conn: asyncpg.Connection, box: uuid.UUID) -> str | None:
    """AimHarder's latest "not open yet" message to a booking at this box, which names the
    box's window ("... con más de 4 días de antelación"); None if there was none."""
    message: str | None = await conn.fetchval(
        """
        SELECT result->>'errorMssg' FROM prebookings
        WHERE box_id = $1
          AND result->>'errorMssgLang' LIKE 'ERROR\\_ANTELACION\\_CLIENTE%'
          AND result->>'errorMssg' IS NOT NULL
        ORDER BY executed_at DESC NULLS LAST, created_at DESC
        LIMIT 1
        """,
        box,
    )
    return message
