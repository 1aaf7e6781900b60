"""Every SQL statement of the watch (daemon/watchers.py): freed places, waiting lists.

A row is watched for a freed place while it ended `failed` with outcome `full`, has
`watch` set, and its `watch_until` (when set) is ahead. The watch books it by turning
that row `completed` (`booked`, or `already_booked` when the member holds the class
already), or ends the watch by clearing `watch` with a note saying why.

A row `completed` as `waitlisted` is watched for its promotion while its
`watch_until` is null or ahead: promoted, its outcome becomes `booked`; a member who
left the waiting list, or a class that started, ends it (`watch_until` set to now).

Each change is conditional on the row still being watched, so a row cancelled or
rewritten meanwhile is left alone, and each writes the member's message in the same
statement (notify_store.LATER_OUTCOME_OUTBOX), unless the role may not.

Two instances may watch one database (migration 0011): before a freed-place request
the sender claims the row (`claim_turn`), and gets it only while no other process
holds a live claim on a watcher of the same class (box, day, class id); claims of one
class are taken one at a time (an advisory lock), and run out after a while.
"""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

import asyncpg

from prebookd.db.notify_store import LATER_OUTCOME_OUTBOX
from prebookd.db.store import _clamped

Db = asyncpg.Connection | asyncpg.Pool

WATCHED = "p.watch AND p.status = 'failed' AND p.outcome = 'full'"
WAITLISTED = "p.status = 'completed' AND p.outcome = 'waitlisted'"
# What OUTCOME_OUTBOX reads of `updated`.
RETURNED = """p.id, p.user_email, p.box_id, p.status, p.outcome, p.error_message,
              p.lateness_ms, p.attempts, p.available_at, p.written_at, p.booking_data,
              p.class_label, p.booked_choice, p.alternatives"""


async def watched_rows(db: Db) -> list[asyncpg.Record]:
    """The watched rows (both kinds: `waitlisted` tells which), oldest first, each
    joined with its box and the member's background session as `models.build_booking`
    reads them."""
    return list(
        await db.fetch(
            f"""
            SELECT p.id, p.user_email, p.box_id, p.booking_data, p.attempts,
                   p.status = 'completed' AS waitlisted,
                   {_clamped("p.available_at")}, {_clamped("p.created_at")},
                   {_clamped("p.watch_until")},
                   b.id IS NOT NULL AS box_found, b.subdomain, b.base_url,
                   b.box_id AS aimharder_box_id, b.timezone, b.cancel_cutoff_seconds,
                   b.proxy_url,
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
             WHERE (({WATCHED}) OR ({WAITLISTED}))
               AND (p.watch_until IS NULL OR p.watch_until > now())
             ORDER BY p.created_at, p.id
            """
        )
    )


async def _with_messages(db: Db, query: str, *args: object) -> bool:
    """`query` (an UPDATE ... RETURNING as `updated`) with the messages of what it
    changed; without them when the role may not write the outbox."""
    head = f"WITH updated AS ({query} RETURNING {RETURNED})"
    count = "SELECT count(*) FROM updated"
    try:
        changed = await db.fetchval(f"{head}, told AS ({LATER_OUTCOME_OUTBOX}) {count}", *args)
    except asyncpg.InsufficientPrivilegeError:
        changed = await db.fetchval(f"{head} {count}", *args)
    return bool(changed)


async def record_booked(db: Db, row_id: UUID, outcome: str, answer: Any, note: str) -> bool:
    """The watch booked the row (or found it booked): completed, with the answer."""
    return await _with_messages(
        db,
        f"""
        UPDATE prebookings p
           SET status = 'completed', outcome = $2, result = $3::jsonb, error_message = NULL,
               executed_at = now(), attempts = p.attempts + 1, watch = false,
               watch_claim_owner = NULL, watch_claim_expires_at = NULL,
               send_note = concat_ws('; ', p.send_note, $4::text)
         WHERE p.id = $1 AND {WATCHED}
        """,
        row_id,
        outcome,
        json.dumps(answer),
        note,
    )


async def record_promoted(db: Db, row_id: UUID, note: str) -> bool:
    """A waitlisted row's member got a place: its outcome becomes `booked`."""
    return await _with_messages(
        db,
        f"""
        UPDATE prebookings p
           SET outcome = 'booked', watch_until = now(),
               send_note = concat_ws('; ', p.send_note, $2::text)
         WHERE p.id = $1 AND {WAITLISTED}
        """,
        row_id,
        note,
    )


async def stop_watching(db: Db, row_id: UUID, note: str) -> bool:
    """End a row's watch, saying why in its note; it stays as it is otherwise."""
    status = await db.execute(
        f"""
        UPDATE prebookings p
           SET watch = false, watch_until = CASE WHEN {WAITLISTED} THEN now()
                                                 ELSE p.watch_until END,
               send_note = concat_ws('; ', p.send_note, $2::text)
         WHERE p.id = $1 AND (({WATCHED}) OR ({WAITLISTED}))
        """,
        row_id,
        note,
    )
    return status.endswith(" 1")


# The class a watched row asks for: rows of one class compete for its freed places.
_SAME_CLASS = """g.box_id = p.box_id AND g.booking_data->>'day' = p.booking_data->>'day'
                 AND g.booking_data->>'id' = p.booking_data->>'id'"""
_CLASS_KEY = """hashtextextended('prebookd watch ' || p.box_id::text || ' '
                || coalesce(p.booking_data->>'day', '') || ' '
                || coalesce(p.booking_data->>'id', ''), 0)"""


async def claim_turn(pool: asyncpg.Pool, row_id: UUID, owner: str, seconds: float) -> bool:
    """Claim a watched row for its freed-place request, for `seconds`. False when the
    row is no longer watched, or another process holds (or is taking) a live claim on
    a watcher of the same class: that class's turn is theirs."""
    async with pool.acquire() as conn, conn.transaction():
        # First the class's lock (until commit); then, in a second statement with a
        # snapshot taken after it, the claims the class's previous claimer committed.
        locked = await conn.fetchval(
            f"SELECT pg_try_advisory_xact_lock({_CLASS_KEY}) FROM prebookings p WHERE p.id = $1",
            row_id,
        )
        if not locked:
            return False
        status = await conn.execute(
            f"""
            UPDATE prebookings p
               SET watch_claim_owner = $2,
                   watch_claim_expires_at = now() + make_interval(secs => $3)
             WHERE p.id = $1 AND {WATCHED}
               AND NOT EXISTS (
                   SELECT 1 FROM prebookings g
                    WHERE g.watch_claim_owner IS NOT NULL AND g.watch_claim_owner <> $2
                      AND g.watch_claim_expires_at > now() AND {_SAME_CLASS})
            """,
            row_id,
            owner,
            seconds,
        )
    return status.endswith(" 1")


async def release_turn(db: Db, row_id: UUID, owner: str) -> None:
    """Give back a claim (the request answered, or not sent after all)."""
    await db.execute(
        """
        UPDATE prebookings SET watch_claim_owner = NULL, watch_claim_expires_at = NULL
         WHERE id = $1 AND watch_claim_owner = $2
        """,
        row_id,
        owner,
    )
