"""Every SQL statement of the freed-places watch (daemon/watchers.py).

A row is watched while it ended `failed` with outcome `full`, has `watch` set, and its
`watch_until` (when set) is ahead. The watch books it by turning that row `completed`
(`booked`, or `already_booked` when the member holds the class already), or ends the
watch by clearing `watch` with a note saying why. Each change is conditional on the
row still being watched, so a row cancelled or rewritten meanwhile is left alone.
"""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

import asyncpg

from prebookd.db.store import _clamped

Db = asyncpg.Connection | asyncpg.Pool

WATCHED = "p.watch AND p.status = 'failed' AND p.outcome = 'full'"


async def watched_rows(db: Db) -> list[asyncpg.Record]:
    """The watched rows, oldest first, each joined with its box and the member's
    background session as `models.build_booking` reads them."""
    return list(
        await db.fetch(
            f"""
            SELECT p.id, p.user_email, p.box_id, p.booking_data, p.attempts,
                   {_clamped("p.available_at")}, {_clamped("p.created_at")},
                   {_clamped("p.watch_until")},
                   b.id IS NOT NULL AS box_found, b.subdomain, b.base_url,
                   b.box_id AS aimharder_box_id, b.timezone,
                   s.found IS NOT NULL AS session_found, s.aimharder_cookies
              FROM prebookings p
              LEFT JOIN boxes b ON b.id = p.box_id
              LEFT JOIN LATERAL (
                   SELECT true AS found, a.aimharder_cookies
                     FROM auth_sessions a
                    WHERE lower(a.user_email) = lower(p.user_email)
                      AND a.session_type = 'background'
                    ORDER BY a.updated_at DESC NULLS LAST
                    LIMIT 1) s ON true
             WHERE {WATCHED} AND (p.watch_until IS NULL OR p.watch_until > now())
             ORDER BY p.created_at, p.id
            """
        )
    )


async def record_booked(db: Db, row_id: UUID, outcome: str, answer: Any, note: str) -> bool:
    """The watch booked the row (or found it booked): completed, with the answer."""
    status = await db.execute(
        f"""
        UPDATE prebookings p
           SET status = 'completed', outcome = $2, result = $3::jsonb, error_message = NULL,
               executed_at = now(), attempts = p.attempts + 1, watch = false,
               send_note = concat_ws('; ', p.send_note, $4::text)
         WHERE p.id = $1 AND {WATCHED}
        """,
        row_id,
        outcome,
        json.dumps(answer),
        note,
    )
    return status.endswith(" 1")


async def stop_watching(db: Db, row_id: UUID, note: str) -> bool:
    """End a row's watch, saying why in its note; it stays `failed: full`."""
    status = await db.execute(
        f"""
        UPDATE prebookings p
           SET watch = false, send_note = concat_ws('; ', p.send_note, $2::text)
         WHERE p.id = $1 AND {WATCHED}
        """,
        row_id,
        note,
    )
    return status.endswith(" 1")
