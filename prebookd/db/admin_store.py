"""Every SQL statement of the producer-side commands (`box`, `add`, `list`, `cancel`,
`login`, `classes`).

The rows are written as the web app writes them: plain INSERT/UPDATE on its tables,
so the trigger wakes the daemon exactly as it would for the web app. Nothing here
decides anything; the command modules (`admin`, `box_cli`) validate first and call these
functions last.
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
    booking_window_kind: str | None
    booking_window_length: int | None


@dataclass(frozen=True)
class BackgroundSession:
    """The session the daemon books with; `cookies` as stored ([{"name", "value"}])."""

    id: uuid.UUID
    user_email: str | None
    aimharder_token: str | None
    aimharder_cookies: Any
    fingerprint: str | None
    last_token_update_date: datetime | None


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


_BOX_COLUMNS = (
    "id, box_id, subdomain, name, base_url, timezone, created_at, "
    "booking_window_kind, booking_window_length"
)


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
    window_kind: str | None = None,
    window_length: int | None = None,
) -> Box:
    row = await conn.fetchrow(
        f"""
        INSERT INTO boxes (box_id, subdomain, name, base_url, timezone,
                           booking_window_kind, booking_window_length)
        VALUES ($1, $2, $3, $4, $5, $6, $7)
        RETURNING {_BOX_COLUMNS}
        """,
        box_id,
        subdomain,
        name,
        base_url,
        timezone,
        window_kind,
        window_length,
    )
    assert row is not None
    return _box(row)


async def set_box_window(
    conn: asyncpg.Connection, subdomain: str, kind: str | None, length: int | None
) -> Box | None:
    """Set (or, with None, clear) a box's booking window; None if the box is unknown."""
    row = await conn.fetchrow(
        f"""
        UPDATE boxes SET booking_window_kind = $2, booking_window_length = $3,
                         updated_at = now()
        WHERE subdomain = $1
        RETURNING {_BOX_COLUMNS}
        """,
        subdomain,
        kind,
        length,
    )
    return _box(row) if row else None


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


async def find_background_session(
    conn: asyncpg.Connection, user_email: str
) -> BackgroundSession | None:
    """The member's background session; of several, the one updated last (as the daemon
    picks it)."""
    row = await conn.fetchrow(
        """
        SELECT id, user_email, aimharder_token, aimharder_cookies, fingerprint,
               last_token_update_date
        FROM auth_sessions
        WHERE lower(user_email) = lower($1) AND session_type = 'background'
        ORDER BY updated_at DESC NULLS LAST, id
        LIMIT 1
        """,
        user_email,
    )
    return BackgroundSession(**dict(row)) if row else None


async def store_background_session(
    conn: asyncpg.Connection,
    *,
    user_email: str,
    fingerprint: str,
    token: str,
    cookies: list[dict[str, str]],
) -> bool:
    """Store a fresh login as the member's background session: update the row with this
    fingerprint, or insert one. True if a row was inserted.

    A row the web app wrote keeps its own spelling of the e-mail (the daemon matches
    prebookings to sessions on it); a new row gets `user_email` as given. A new login
    starts a new token chain, so the refresh count starts again at 0."""
    async with conn.transaction():
        updated = await conn.fetchval(
            """
            UPDATE auth_sessions
            SET aimharder_token = $3, aimharder_cookies = $4, session_type = 'background',
                last_token_update_date = now(), token_update_count = 0,
                last_token_update_error = NULL, updated_at = now()
            WHERE id = (SELECT id FROM auth_sessions
                        WHERE lower(user_email) = lower($1) AND fingerprint = $2
                        ORDER BY updated_at DESC NULLS LAST, id LIMIT 1)
            RETURNING id
            """,
            user_email,
            fingerprint,
            token,
            cookies,
        )
        if updated is not None:
            return False
        # ON CONFLICT: another login for the same member between the two statements.
        inserted: bool = await conn.fetchval(
            """
            INSERT INTO auth_sessions (user_email, fingerprint, aimharder_token,
                                       aimharder_cookies, session_type,
                                       last_token_update_date, token_update_count)
            VALUES ($1, $2, $3, $4, 'background', now(), 0)
            ON CONFLICT (user_email, fingerprint) DO UPDATE
            SET aimharder_token = EXCLUDED.aimharder_token,
                aimharder_cookies = EXCLUDED.aimharder_cookies,
                session_type = 'background', last_token_update_date = now(),
                token_update_count = 0, last_token_update_error = NULL, updated_at = now()
            RETURNING xmax = 0
            """,
            user_email,
            fingerprint,
            token,
            cookies,
        )
        return inserted


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
