"""The SQL of the producer-side commands on boxes and members' sessions (`box`,
`login`, `classes`); `admin_prebookings` holds that on prebookings (`add`, `list`,
`cancel`).

The rows are written as the web app writes them: plain INSERT/UPDATE on its tables,
so the trigger wakes the daemon exactly as it would for the web app. Nothing here
decides anything; the command modules (`prebookd.cli.*`) validate first and call these
functions last.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

# Statuses a row ends with. Any other (pending, loaded, executing, none at all, one
# the web app invented) may still be sent, or is being sent.
FINAL_STATUSES = ("completed", "failed", "cancelled")


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
    cancel_cutoff_seconds: int | None = None  # None: the watch_cutoff setting
    proxy_url: str | None = None  # its own proxy; None: PREBOOKD_PROXY_URL (migration 0012)


@dataclass(frozen=True)
class BackgroundSession:
    """The session the daemon books with; `cookies` as stored ([{"name", "value"}])."""

    id: uuid.UUID
    user_email: str | None
    aimharder_token: str | None
    aimharder_cookies: Any
    fingerprint: str | None
    last_token_update_date: datetime | None


_BOX_COLUMNS = (
    "id, box_id, subdomain, name, base_url, timezone, created_at, "
    "booking_window_kind, booking_window_length, cancel_cutoff_seconds, proxy_url"
)


def _box(row: asyncpg.Record) -> Box:
    return Box(**dict(row))


async def find_box(conn: asyncpg.Connection, subdomain: str) -> Box | None:
    row = await conn.fetchrow(f"SELECT {_BOX_COLUMNS} FROM boxes WHERE subdomain = $1", subdomain)
    return _box(row) if row else None


async def find_boxes_like(conn: asyncpg.Connection, subdomain: str, box_id: str) -> list[Box]:
    """Boxes that already use this subdomain or this AimHarder box id (`subdomain` ""
    for the box id alone)."""
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


async def update_box(
    conn: asyncpg.Connection,
    box: uuid.UUID,
    *,
    name: str | None,
    base_url: str | None,
    timezone: str | None,
    box_id: str | None,
    set_window: bool,
    window_kind: str | None,
    window_length: int | None,
    set_cutoff: bool = False,
    cutoff: int | None = None,
) -> Box:
    """Change what is given (None: as it is); the window only with `set_window`, the
    cancellation cutoff only with `set_cutoff`, where None clears them."""
    row = await conn.fetchrow(
        f"""
        UPDATE boxes
        SET name = coalesce($2, name), base_url = coalesce($3, base_url),
            timezone = coalesce($4, timezone), box_id = coalesce($5, box_id),
            booking_window_kind = CASE WHEN $6 THEN $7 ELSE booking_window_kind END,
            booking_window_length = CASE WHEN $6 THEN $8::integer
                                         ELSE booking_window_length END,
            cancel_cutoff_seconds = CASE WHEN $9 THEN $10::integer
                                         ELSE cancel_cutoff_seconds END,
            updated_at = now()
        WHERE id = $1
        RETURNING {_BOX_COLUMNS}
        """,
        box,
        name,
        base_url,
        timezone,
        box_id,
        set_window,
        window_kind,
        window_length,
        set_cutoff,
        cutoff,
    )
    assert row is not None
    return _box(row)


async def set_box_proxy(conn: asyncpg.Connection, box: uuid.UUID, proxy_url: str | None) -> Box:
    """Set a box's own proxy (None: the global one)."""
    row = await conn.fetchrow(
        f"UPDATE boxes SET proxy_url = $2, updated_at = now() WHERE id = $1 "
        f"RETURNING {_BOX_COLUMNS}",
        box,
        proxy_url,
    )
    assert row is not None
    return _box(row)


async def lock_box(conn: asyncpg.Connection, subdomain: str) -> Box | None:
    """The box, its row locked until the transaction ends: a prebooking added for it
    meanwhile (its foreign key check) waits, and fails if the box is then gone."""
    row = await conn.fetchrow(
        f"SELECT {_BOX_COLUMNS} FROM boxes WHERE subdomain = $1 FOR UPDATE", subdomain
    )
    return _box(row) if row else None


async def count_box_rows(conn: asyncpg.Connection, box: uuid.UUID) -> tuple[dict[str, int], int]:
    """The box's prebookings: how many not final, by status ("none" for a null one),
    and how many final (its history)."""
    rows = await conn.fetch(
        "SELECT status, count(*) AS n FROM prebookings WHERE box_id = $1 GROUP BY status", box
    )
    open_rows = {r["status"] or "none": r["n"] for r in rows if r["status"] not in FINAL_STATUSES}
    return open_rows, sum(r["n"] for r in rows if r["status"] in FINAL_STATUSES)


async def delete_box(conn: asyncpg.Connection, box: uuid.UUID) -> int:
    """Delete the box and its final prebookings; how many of those. A row not final
    makes the delete fail on the foreign key (or, where the web app's key cascades,
    never exists: the command checked under the box's lock)."""
    deleted = await conn.fetchval(
        """
        WITH gone AS (
            DELETE FROM prebookings WHERE box_id = $1 AND status = ANY($2::text[])
            RETURNING 1
        )
        SELECT count(*) FROM gone
        """,
        box,
        list(FINAL_STATUSES),
    )
    await conn.execute("DELETE FROM boxes WHERE id = $1", box)
    return int(deleted)


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


async def sessions_for_box(
    conn: asyncpg.Connection, box: uuid.UUID, limit: int
) -> list[BackgroundSession]:
    """Background sessions to list a box's classes with, when no member is named: of
    members with a prebooking at the box first, then anyone's; those whose last token
    refresh did not fail before those that did; the freshest first."""
    rows = await conn.fetch(
        """
        SELECT a.id, a.user_email, a.aimharder_token, a.aimharder_cookies, a.fingerprint,
               a.last_token_update_date
        FROM auth_sessions a
        WHERE a.session_type = 'background'
          AND jsonb_typeof(a.aimharder_cookies) = 'array'
          AND jsonb_array_length(a.aimharder_cookies) > 0
        ORDER BY EXISTS (SELECT 1 FROM prebookings p
                         WHERE p.box_id = $1
                           AND lower(p.user_email) = lower(a.user_email)) DESC,
                 a.last_token_update_error IS NULL DESC,
                 a.updated_at DESC NULLS LAST, a.id
        LIMIT $2
        """,
        box,
        limit,
    )
    return [BackgroundSession(**dict(row)) for row in rows]
