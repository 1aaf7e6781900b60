"""Every SQL statement of the producer-side commands (`box`, `add`, `list`, `cancel`).

The rows are written as the web app writes them: plain INSERT/UPDATE on its tables,
so the trigger wakes the daemon exactly as it would for the web app. Nothing here
decides anything; `prebookd.admin` validates first and calls these functions last.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

# A row may still be withdrawn only before a daemon starts sending it.
CANCELLABLE_STATUSES = ("pending", "loaded")


@dataclass(frozen=True)
class Box:
    id: uuid.UUID
    box_id: str | None
    subdomain: str | None
    name: str | None
    base_url: str | None
    timezone: str | None
    created_at: datetime | None


@dataclass(frozen=True)
class PrebookingView:
    """A prebooking as `prebookd list` shows it, with its box's subdomain and zone."""

    id: uuid.UUID
    user_email: str | None
    box: str | None
    box_timezone: str | None
    booking_data: Any
    available_at: datetime | None
    status: str | None
    result: Any
    error_message: str | None
    created_at: datetime | None
    executed_at: datetime | None
    lateness_ms: float | None
    outcome: str | None


_BOX_COLUMNS = "id, box_id, subdomain, name, base_url, timezone, created_at"


def _box(row: asyncpg.Record) -> Box:
    return Box(**dict(row))


async def find_box(conn: asyncpg.Connection, subdomain: str) -> Box | None:
    row = await conn.fetchrow(f"SELECT {_BOX_COLUMNS} FROM boxes WHERE subdomain = $1", subdomain)
    return _box(row) if row else None


async def find_boxes_like(conn: asyncpg.Connection, subdomain: str, box_id: str) -> list[Box]:
    """Boxes that already use this subdomain or this AimHarder box id."""
    rows = await conn.fetch(
        f"SELECT {_BOX_COLUMNS} FROM boxes WHERE subdomain = $1 OR box_id = $2",
        subdomain,
        box_id,
    )
    return [_box(row) for row in rows]


async def insert_box(
    conn: asyncpg.Connection,
    *,
    box_id: str,
    subdomain: str,
    name: str,
    base_url: str,
    timezone: str,
) -> Box:
    row = await conn.fetchrow(
        f"""
        INSERT INTO boxes (box_id, subdomain, name, base_url, timezone)
        VALUES ($1, $2, $3, $4, $5)
        RETURNING {_BOX_COLUMNS}
        """,
        box_id,
        subdomain,
        name,
        base_url,
        timezone,
    )
    assert row is not None
    return _box(row)


async def list_boxes(conn: asyncpg.Connection) -> list[Box]:
    rows = await conn.fetch(f"SELECT {_BOX_COLUMNS} FROM boxes ORDER BY subdomain, id")
    return [_box(row) for row in rows]


async def has_background_session(conn: asyncpg.Connection, user_email: str) -> bool:
    """Whether the member has the session the daemon will book with."""
    found = await conn.fetchval(
        """
        SELECT EXISTS (
            SELECT 1 FROM auth_sessions
            WHERE lower(user_email) = lower($1) AND session_type = 'background'
        )
        """,
        user_email,
    )
    return bool(found)


async def insert_prebooking(
    conn: asyncpg.Connection,
    *,
    user_email: str,
    box: uuid.UUID,
    booking_data: dict[str, Any],
    available_at: datetime,
) -> uuid.UUID:
    """A new `pending` row; `created_at` (its FIFO place) is the database's now()."""
    new_id = await conn.fetchval(
        """
        INSERT INTO prebookings (user_email, box_id, booking_data, available_at, status)
        VALUES ($1, $2, $3, $4, 'pending')
        RETURNING id
        """,
        user_email,
        box,
        booking_data,
        available_at,
    )
    assert isinstance(new_id, uuid.UUID)
    return new_id


async def list_prebookings(
    conn: asyncpg.Connection,
    *,
    status: str | None,
    box: uuid.UUID | None,
    user_email: str | None,
    limit: int,
) -> list[PrebookingView]:
    """Matching rows in firing order (available_at, then FIFO by created_at)."""
    rows = await conn.fetch(
        """
        SELECT p.id, p.user_email, b.subdomain AS box, b.timezone AS box_timezone,
               p.booking_data, p.available_at, p.status, p.result, p.error_message,
               p.created_at, p.executed_at, p.lateness_ms, p.outcome
        FROM prebookings p
        LEFT JOIN boxes b ON b.id = p.box_id
        WHERE ($1::text IS NULL OR p.status = $1)
          AND ($2::uuid IS NULL OR p.box_id = $2)
          AND ($3::text IS NULL OR lower(p.user_email) = lower($3))
        ORDER BY p.available_at, p.created_at, p.id
        LIMIT $4
        """,
        status,
        box,
        user_email,
        limit,
    )
    return [PrebookingView(**dict(row)) for row in rows]


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
