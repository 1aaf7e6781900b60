"""Every SQL statement of notifications: members' channels and the outbox.

A message is a row of `prebookd_outbox`, inserted in the same statement as the news it
reports (a result: `OUTCOME_OUTBOX` runs inside store.write_results; a warning: with
its row), keyed by `dedup_key` so that the same news written twice (a batch retried, a
spool replayed after a crash) is one message. The sender claims due rows by pushing
their `next_attempt_at` ahead (a lease: a sender that dies leaves them due again after
it), sends, and marks each `sent`, to retry, or `dead`.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any
from uuid import UUID

import asyncpg

from prebookd.text import clip

Db = asyncpg.Connection | asyncpg.Pool

# The tail of store.write_results' statement: `updated` is its UPDATE ... RETURNING
# (id, user_email, box_id, status, outcome, error_message, lateness_ms, attempts,
# available_at, written_at, booking_data, class_label, booked_choice, alternatives). One
# message per final row and channel of its member that takes outcomes; the facts travel
# in `payload`, never a cookie or token. A row whose answer was for an alternative
# names that class (its id and day: class_label is the first choice's).
OUTCOME_OUTBOX = """
INSERT INTO prebookd_outbox (dedup_key, channel_id, prebooking_id, event, payload)
SELECT 'outcome:' || d.id || ':' || c.id, c.id, d.id, 'outcome',
       jsonb_build_object(
           'status', d.status, 'outcome', d.outcome,
           'error', left(d.error_message, 300),
           'lateness_ms', d.lateness_ms, 'attempts', d.attempts,
           'available_at', extract(epoch FROM d.available_at),
           'written_at', extract(epoch FROM d.written_at),
           'day', k.choice->>'day', 'class_id', k.choice->>'id',
           'class_name', CASE WHEN coalesce(d.booked_choice, 0) = 0 THEN d.class_label END,
           'choice', d.booked_choice,
           'box', coalesce(b.name, b.subdomain), 'timezone', b.timezone)
  FROM updated d
 CROSS JOIN LATERAL (
       SELECT CASE WHEN coalesce(d.booked_choice, 0) > 0
                    AND jsonb_typeof(d.alternatives) = 'array'
                   THEN coalesce(d.alternatives->(d.booked_choice - 1), d.booking_data)
                   ELSE d.booking_data END AS choice) k
  JOIN prebookd_notify_channels c
    ON lower(c.user_email) = lower(d.user_email) AND 'outcome' = ANY(c.events)
  LEFT JOIN boxes b ON b.id = d.box_id
 WHERE d.status IN ('completed', 'failed')
ON CONFLICT (dedup_key) DO NOTHING
"""
# The same for a second outcome of a row (a freed place booked, a waiting list turned
# into a place): its own key, so the first outcome's message does not swallow it.
LATER_OUTCOME_OUTBOX = OUTCOME_OUTBOX.replace("'outcome:' ||", "'later-outcome:' ||")


async def may_notify(db: Db) -> bool:
    """The role may read channels and write the outbox (deploy/prebookd-role.sql, run
    again after the upgrade that brought migration 0008)."""
    return bool(
        await db.fetchval(
            """SELECT has_table_privilege('prebookd_notify_channels', 'SELECT')
                  AND has_table_privilege('prebookd_outbox', 'SELECT, INSERT, UPDATE')"""
        )
    )


# --- channels ------------------------------------------------------------------------


async def add_channel(
    db: Db, email: str, url: str, events: Sequence[str], lang: str
) -> asyncpg.Record:
    record = await db.fetchrow(
        """INSERT INTO prebookd_notify_channels (user_email, url, events, lang)
           VALUES ($1, $2, $3, $4) RETURNING id, user_email, url, events, lang, created_at""",
        email,
        url,
        list(events),
        lang,
    )
    assert record is not None
    return record


async def list_channels(db: Db, email: str | None = None) -> list[asyncpg.Record]:
    return list(
        await db.fetch(
            """SELECT id, user_email, url, events, lang, created_at
                 FROM prebookd_notify_channels
                WHERE $1::text IS NULL OR lower(user_email) = lower($1)
                ORDER BY user_email, id""",
            email,
        )
    )


async def remove_channel(db: Db, channel_id: int) -> bool:
    result = await db.execute("DELETE FROM prebookd_notify_channels WHERE id = $1", channel_id)
    return bool(result.endswith(" 1"))


# --- the outbox ----------------------------------------------------------------------


# One warning per (cause, row) and channel of the row's member taking warnings; `{rows}`
# picks the rows, always pending (a claimed row fails at arming: its outcome says it).
_WARNING_OUTBOX = """
INSERT INTO prebookd_outbox (dedup_key, channel_id, prebooking_id, event, payload)
SELECT 'warning:' || $2 || ':' || p.id || ':' || c.id, c.id, p.id, 'warning',
       jsonb_build_object(
           'cause', $2::text,
           'available_at', extract(epoch FROM p.available_at),
           'day', p.booking_data->>'day', 'class_id', p.booking_data->>'id',
           'class_name', p.class_label,
           'box', coalesce(b.name, b.subdomain), 'timezone', b.timezone)
  FROM prebookings p
  JOIN prebookd_notify_channels c
    ON lower(c.user_email) = lower(p.user_email) AND 'warning' = ANY(c.events)
  LEFT JOIN boxes b ON b.id = p.box_id
 WHERE {rows} AND p.status = 'pending' AND p.available_at > now()
ON CONFLICT (dedup_key) DO NOTHING
"""


async def enqueue_member_warning(db: Db, email: str, cause: str, horizon_end: float) -> int:
    """A warning of `cause` for each prebooking of the member still to fire before
    `horizon_end`; returns how many messages are new (0: all told already)."""
    result = await db.execute(
        _WARNING_OUTBOX.format(rows="lower(p.user_email) = lower($1) AND p.available_at < $3"),
        email,
        cause,
        dt.datetime.fromtimestamp(horizon_end, dt.UTC),
    )
    return int(result.split()[-1])


async def enqueue_row_warning(db: Db, prebooking_id: UUID, cause: str) -> int:
    """A warning of `cause` for this prebooking while it is pending and unclaimed;
    returns how many messages are new (0: told already, or no channel takes warnings)."""
    result = await db.execute(
        _WARNING_OUTBOX.format(rows="p.id = $1 AND p.lease_owner IS NULL"), prebooking_id, cause
    )
    return int(result.split()[-1])


async def watched_rows(db: Db, after: float, before: float, limit: int) -> list[asyncpg.Record]:
    """Hand-made rows (rules' rows are the planner's) pending and unclaimed, opening
    between `after` and `before`, soonest first, with what reading their listing needs."""
    return list(
        await db.fetch(
            """
            SELECT p.id, p.user_email, p.box_id, p.available_at,
                   p.booking_data->>'day' AS day, p.booking_data->>'id' AS class_id,
                   b.subdomain, b.base_url, b.box_id AS aimharder_box_id, b.proxy_url
              FROM prebookings p
              JOIN boxes b ON b.id = p.box_id
             WHERE p.status = 'pending' AND p.rule_id IS NULL AND p.lease_owner IS NULL
               AND p.available_at > $1 AND p.available_at < $2
             ORDER BY p.available_at, p.created_at, p.id
             LIMIT $3
            """,
            dt.datetime.fromtimestamp(after, dt.UTC),
            dt.datetime.fromtimestamp(before, dt.UTC),
            limit,
        )
    )


async def enqueue_operator(db: Db, dedup_key: str, event: str, payload: dict[str, Any]) -> bool:
    """A message for the operator's channels (settings), once per `dedup_key`."""
    result = await db.execute(
        """INSERT INTO prebookd_outbox (dedup_key, event, payload)
           VALUES ('operator:' || $1, $2, $3::jsonb) ON CONFLICT (dedup_key) DO NOTHING""",
        dedup_key,
        event,
        json.dumps(payload),
    )
    return result.endswith(" 1")


async def rows_left_by(db: Db, owner: str) -> dict[str, int]:
    """Rows a dead process left claimed (`loaded`) or on the wire (`executing`)."""
    records = await db.fetch(
        """SELECT status, count(*) AS n FROM prebookings
            WHERE lease_owner = $1 AND status IN ('loaded', 'executing') GROUP BY status""",
        owner,
    )
    counts = {"loaded": 0, "executing": 0}
    counts.update({r["status"]: r["n"] for r in records})
    return counts


async def claim_due(db: Db, limit: int, lease_seconds: float) -> list[asyncpg.Record]:
    """Due messages, leased to this sender for `lease_seconds` (pushed ahead: another
    sender, or this one after a crash, sees them again only once the lease is over)."""
    return list(
        await db.fetch(
            """
            WITH due AS (
                SELECT id FROM prebookd_outbox
                 WHERE status = 'pending' AND next_attempt_at <= now()
                 ORDER BY next_attempt_at, id
                 LIMIT $1
                   FOR UPDATE SKIP LOCKED
            ), claimed AS (
                UPDATE prebookd_outbox o
                   SET next_attempt_at = now() + make_interval(secs => $2),
                       attempts = o.attempts + 1
                  FROM due WHERE o.id = due.id
             RETURNING o.id, o.channel_id, o.prebooking_id, o.event, o.payload,
                       o.attempts, o.created_at
            )
            SELECT m.*, c.url, c.lang
              FROM claimed m LEFT JOIN prebookd_notify_channels c ON c.id = m.channel_id
             ORDER BY m.id
            """,
            limit,
            lease_seconds,
        )
    )


async def mark_sent(db: Db, message_id: int) -> None:
    await db.execute(
        """UPDATE prebookd_outbox SET status = 'sent', sent_at = now(), last_error = NULL
            WHERE id = $1""",
        message_id,
    )


async def mark_failed(db: Db, message_id: int, error: str, retry_at: float | None) -> None:
    """Tried and failed: again at `retry_at`, or never (`dead`) when None."""
    await db.execute(
        """UPDATE prebookd_outbox
              SET status = CASE WHEN $3::timestamptz IS NULL THEN 'dead' ELSE status END,
                  next_attempt_at = coalesce($3::timestamptz, next_attempt_at),
                  last_error = $2
            WHERE id = $1""",
        message_id,
        clip(error, 500),
        None if retry_at is None else dt.datetime.fromtimestamp(retry_at, dt.UTC),
    )


async def outbox_counts(db: Db) -> dict[str, int]:
    """Messages by status, and how many pending ones have been tried already."""
    records = await db.fetch(
        """SELECT status, count(*) AS n, count(*) FILTER (WHERE attempts > 0) AS tried
             FROM prebookd_outbox GROUP BY status"""
    )
    counts = {"pending": 0, "sent": 0, "dead": 0, "retrying": 0}
    for record in records:
        counts[record["status"]] = record["n"]
        if record["status"] == "pending":
            counts["retrying"] = record["tried"]
    return counts
