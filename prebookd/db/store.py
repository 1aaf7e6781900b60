"""Every SQL statement the daemon runs, as named functions. The rest never sees SQL.

Claims follow the design's multi-instance rule. A lease belongs to one process (its
`owner`, never a host name), and one process fires a whole (box, instant) group, so that
FIFO holds across machines. A row is held elsewhere when it, or another row of its
group, is `loaded`/`executing` under another process's live lease; a row that is not
(pending, ours, or under a lease that ran out: its holder died) may be claimed. A
holder renews its leases while it holds them. `FOR UPDATE SKIP LOCKED` and advisory
try-locks keep two instances from waiting on each other.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Awaitable, Sequence
from typing import TypeVar
from uuid import UUID

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from prebookd.db.notify_store import OUTCOME_OUTBOX
from prebookd.models import ResultUpdate
from prebookd.text import clip

T = TypeVar("T")

# A statement that has not answered after this long is given up on, and its connection
# closed (see _bounded).
QUERY_TIMEOUT = 15.0
Db = asyncpg.Connection | asyncpg.Pool


async def _bounded(conn: asyncpg.Connection | PoolConnectionProxy, call: Awaitable[T]) -> T:
    """`call` on `conn`, given up after QUERY_TIMEOUT. A statement given up on (timed
    out, or cancelled by its caller: shutdown) closes its connection outright. The
    connection may have gone silent (half-open TCP, a firewall dropping its packets),
    and asyncpg would otherwise cancel the statement over a new connection, down the
    same dead path, and hold the connection until that is done."""
    try:
        async with asyncio.timeout(QUERY_TIMEOUT):
            return await call
    except (TimeoutError, asyncio.CancelledError):
        conn.terminate()
        raise


async def _fetch(
    db: Db, query: str, *args: object, acquire_timeout: float | None = None
) -> list[asyncpg.Record]:
    if isinstance(db, asyncpg.Pool):
        async with db.acquire(timeout=acquire_timeout) as conn:
            return await _bounded(conn, conn.fetch(query, *args))
    return await db.fetch(query, *args)


async def _execute(db: Db, query: str, *args: object) -> str:
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn:
            return await _bounded(conn, conn.execute(query, *args))
    return await db.execute(query, *args)


def _clamped(column: str, alias: str | None = None) -> str:
    """`column` kept within years 1900-9999 (NULL stays NULL). The web app may store
    any timestamptz, but asyncpg cannot decode one past 9999 in UTC; an instant out
    there is absurd anyway and fails as such."""
    return (
        f"CASE WHEN {column} IS NULL THEN NULL ELSE least(greatest({column}, "
        f"'1900-01-01'::timestamptz), '9999-01-01'::timestamptz) END "
        f"AS {alias or column.split('.')[-1]}"
    )


def _live_lease(row: str) -> str:
    """`row` is held: loaded or executing under a lease that has not run out."""
    return (
        f"({row}.status IN ('loaded', 'executing') AND {row}.lease_owner IS NOT NULL "
        f"AND {row}.lease_expires_at > now())"
    )


def _group_key(row: str) -> str:
    """The advisory lock key of `row`'s (box, instant) group. The instant as epoch
    seconds, not timestamptz::text, which follows each session's TimeZone."""
    return (
        f"hashtextextended(coalesce({row}.box_id::text, '') || ' ' || "
        f"coalesce(extract(epoch FROM {row}.available_at)::text, ''), 0)"
    )


def _row_states(where: str) -> str:
    """What the engine reads of the rows `where` picks (on `p`), with the lease that
    decides who fires each: its own live lease, else the latest live lease on another
    row of its (box, instant) group, else none (lease_owner NULL)."""
    return f"""
    WITH held AS (
        SELECT DISTINCT ON (box_id, available_at)
               box_id, available_at, lease_owner, lease_expires_at
          FROM prebookings h WHERE {_live_lease("h")}
         ORDER BY box_id, available_at, lease_expires_at DESC
    ), r AS (
        SELECT p.id, p.available_at, p.created_at, p.status,
               CASE WHEN {_live_lease("p")} THEN p.lease_owner
                    ELSE g.lease_owner END AS lease_owner,
               CASE WHEN {_live_lease("p")} THEN p.lease_expires_at
                    ELSE g.lease_expires_at END AS lease_expires_at
          FROM prebookings p
          LEFT JOIN held g ON g.box_id = p.box_id AND g.available_at = p.available_at
         WHERE {where}
    )
    SELECT id, {_clamped("available_at")}, {_clamped("created_at")}, status, lease_owner,
           {_clamped("lease_expires_at")}
      FROM r"""


async def rows_to_schedule(
    conn: Db, horizon_end: float, absurd_after: float
) -> list[asyncpg.Record]:
    """Rows to hold in memory: those opening before the horizon that are not final
    (held by another instance too: watched, and taken over if it dies), plus broken
    ones (no instant, or an absurd one) so that they can be failed with a reason."""
    where = """p.status IN ('pending', 'loaded', 'executing')
               AND (p.available_at IS NULL OR p.available_at < $1 OR p.available_at > $2)"""
    return list(
        await _fetch(
            conn,
            _row_states(where) + " ORDER BY available_at NULLS FIRST, created_at, id",
            _ts(horizon_end),
            _ts(absurd_after),
        )
    )


async def rows_by_id(conn: Db, ids: Sequence[UUID]) -> list[asyncpg.Record]:
    return list(await _fetch(conn, _row_states("p.id = ANY($1::uuid[])"), list(ids)))


async def claim(
    conn: Db,
    ids: Sequence[UUID],
    owner: str,
    lease_seconds: float,
    *,
    predecessor: str | None = None,
) -> list[asyncpg.Record]:
    """Take the lease on these rows and return them with their box and session.

    Rows held elsewhere (see above), no longer active, locked by a transaction, or of a
    group another instance is claiming at this moment are simply absent from the
    answer. Rows leased to `predecessor` (the dead process this one replaces) count as
    this owner's. The lease runs `lease_seconds`; the holder renews it."""
    owners = [owner] if predecessor is None else [owner, predecessor]
    if isinstance(conn, asyncpg.Pool):
        async with conn.acquire() as db:
            return await _bounded(db, _claim(db, list(ids), owner, owners, lease_seconds))
    return await _claim(conn, list(ids), owner, owners, lease_seconds)


async def _claim(
    conn: asyncpg.Connection | PoolConnectionProxy,
    ids: list[UUID],
    owner: str,
    owners: list[str],
    lease_seconds: float,
) -> list[asyncpg.Record]:
    async with conn.transaction():
        # First the groups, each under a lock held until commit: two instances never
        # claim rows of one group at once. Then, in a second statement (a snapshot taken
        # after the lock, so it sees what the group's previous claimer committed), the
        # rows of the groups locked that nobody else holds.
        groups = await conn.fetch(
            f"""
            SELECT key FROM (SELECT DISTINCT {_group_key("p")} AS key
                               FROM prebookings p WHERE p.id = ANY($1::uuid[])) groups
             WHERE pg_try_advisory_xact_lock(key)
            """,
            ids,
        )
        if not groups:
            return []
        return list(
            await conn.fetch(
                f"""
                WITH target AS (
                    SELECT p.id FROM prebookings p
                    WHERE p.id = ANY($2::uuid[])
                      AND p.status IN ('pending', 'loaded', 'executing')
                      AND {_group_key("p")} = ANY($5::bigint[])
                      AND NOT EXISTS (
                          SELECT 1 FROM prebookings g
                           WHERE (g.id = p.id OR (g.box_id = p.box_id
                                                  AND g.available_at = p.available_at))
                             AND {_live_lease("g")} AND g.lease_owner <> ALL($4::text[]))
                    FOR UPDATE OF p SKIP LOCKED
                ), claimed AS (
                    UPDATE prebookings p
                       SET status = 'loaded', loaded_at = now(), lease_owner = $1,
                           lease_expires_at = now() + make_interval(secs => $3)
                      FROM target
                     WHERE p.id = target.id
                 RETURNING p.id, p.user_email, p.box_id, p.booking_data,
                           {_clamped("p.available_at")}, {_clamped("p.created_at")},
                           p.attempts, p.alternatives
                )
                SELECT c.*, b.id IS NOT NULL AS box_found, b.subdomain, b.base_url,
                       b.proxy_url, s.found IS NOT NULL AS session_found, s.aimharder_cookies,
                       s.session_id, s.aimharder_token, s.fingerprint,
                       {_clamped("s.last_token_update_date")}
                  FROM claimed c
                  LEFT JOIN boxes b ON b.id = c.box_id
                  LEFT JOIN LATERAL (
                       SELECT true AS found, a.aimharder_cookies, a.id AS session_id,
                              a.aimharder_token, a.fingerprint, a.last_token_update_date
                         FROM auth_sessions a
                        WHERE lower(a.user_email) = lower(c.user_email)
                          AND a.session_type = 'background'
                        ORDER BY a.updated_at DESC NULLS LAST
                        LIMIT 1) s ON true
                 ORDER BY c.available_at, c.created_at, c.id
                """,
                owner,
                ids,
                lease_seconds,
                owners,
                [group["key"] for group in groups],
            )
        )


# A renewal waits at most this long for a pool connection (claims and result batches
# may hold them all): it is tried again a third of a lease later, well before it runs out.
RENEW_ACQUIRE_TIMEOUT = 2.0


async def renew_leases(
    conn: Db,
    ids: Sequence[UUID],
    owner: str,
    lease_seconds: float,
) -> set[UUID]:
    """Extend the leases this process still holds; returns the ids it still holds.

    Never waits on a row lock (the web app's transaction, a result batch): a row locked
    now is not renewed this time, yet still counted as held, since the lease is ours."""
    records = await _fetch(
        conn,
        """
        WITH unlocked AS (
            SELECT id FROM prebookings
             WHERE id = ANY($1::uuid[]) AND lease_owner = $2
               AND status IN ('loaded', 'executing')
               FOR UPDATE SKIP LOCKED
        ), renewed AS (
            UPDATE prebookings p
               SET lease_expires_at = now() + make_interval(secs => $3)
              FROM unlocked
             WHERE p.id = unlocked.id
         RETURNING p.id
        )
        SELECT id FROM prebookings
         WHERE id = ANY($1::uuid[]) AND lease_owner = $2
           AND status IN ('loaded', 'executing')
        """,
        list(ids),
        owner,
        lease_seconds,
        acquire_timeout=RENEW_ACQUIRE_TIMEOUT,
    )
    return {record["id"] for record in records}


async def release_claims(conn: Db, ids: Sequence[UUID], owner: str) -> int:
    """Give back rows claimed but not sent (shutdown, withdrawn): pending again."""
    result = await _execute(
        conn,
        """
        UPDATE prebookings
           SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL
         WHERE id = ANY($1::uuid[]) AND status = 'loaded' AND lease_owner = $2
        """,
        list(ids),
        owner,
    )
    return int(result.split()[-1])


async def write_results(
    conn: Db, updates: Sequence[ResultUpdate], *, with_messages: bool = True
) -> None:
    """Write a batch of outcomes in one statement, with the messages that report them
    (notify_store.OUTCOME_OUTBOX): a message exists exactly when its result does.
    Without them when the role may not write the outbox (notify_store.may_notify).

    A final row (completed/failed) is never rewritten. A row cancelled while its
    request was already on the wire still gets the truth recorded. `booked_choice`
    (migration 0010) is set only by a batch with rows that have alternatives, so a
    role not granted it yet (deploy/prebookd-role.sql) still writes every other result."""
    if not updates:
        return
    choices = any(u.booked_choice is not None for u in updates)
    await _execute(
        conn,
        """
        WITH updated AS (
        UPDATE prebookings p
           SET status        = u.status,
               outcome       = coalesce(u.outcome, p.outcome),
               error_message = coalesce(u.error_message, p.error_message),
               result        = coalesce(u.result::jsonb, p.result),
               written_at    = coalesce(u.written_at, p.written_at),
               lateness_ms   = coalesce(u.lateness_ms, p.lateness_ms),
               attempts      = greatest(coalesce(u.attempts, 0), p.attempts),
               executed_at   = coalesce(u.executed_at, p.executed_at),
               fired_by      = coalesce(u.fired_by, p.fired_by),
               send_note     = coalesce(u.send_note, p.send_note)"""
        + (", booked_choice = coalesce(u.booked_choice, p.booked_choice)" if choices else "")
        + """
          FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                      $6::timestamptz[], $7::float8[], $8::int[], $9::timestamptz[],
                      $10::text[], $11::text[], $12::smallint[])
               AS u(id, status, outcome, error_message, result, written_at, lateness_ms,
                    attempts, executed_at, fired_by, send_note, booked_choice)
         WHERE p.id = u.id
           AND (p.status IN ('pending', 'loaded', 'executing')
                OR (p.status = 'cancelled' AND u.written_at IS NOT NULL))
        RETURNING p.id, p.user_email, p.box_id, p.status, p.outcome, p.error_message,
                  p.lateness_ms, p.attempts, p.available_at, p.written_at, p.booking_data,
                  p.class_label, p.booked_choice, p.alternatives
        )"""
        + (OUTCOME_OUTBOX if with_messages else "SELECT 1"),  # the results' messages
        [u.id for u in updates],
        [u.status for u in updates],
        [u.outcome for u in updates],
        [u.error_message for u in updates],
        [None if u.result is None else json.dumps(u.result) for u in updates],
        [_ts(u.written_at) for u in updates],
        [u.lateness_ms for u in updates],
        [u.attempts for u in updates],
        [_ts(u.executed_at) for u in updates],
        [u.fired_by for u in updates],
        [u.send_note for u in updates],
        [u.booked_choice for u in updates],
    )


async def sessions_to_keep(
    conn: Db, horizon_end: float, stale_before: float
) -> list[asyncpg.Record]:
    """Background sessions of members with a prebooking opening before `horizon_end`
    whose token was last refreshed before `stale_before` (or never)."""
    return list(
        await _fetch(
            conn,
            f"""
            SELECT a.id AS session_id, a.user_email, a.aimharder_token, a.fingerprint,
                   a.aimharder_cookies, {_clamped("a.last_token_update_date")}
              FROM auth_sessions a
             WHERE a.session_type = 'background'
               AND a.aimharder_token IS NOT NULL
               AND (a.last_token_update_date IS NULL OR a.last_token_update_date < $2)
               AND EXISTS (SELECT 1 FROM prebookings p
                            WHERE lower(p.user_email) = lower(a.user_email)
                              AND p.status IN ('pending', 'loaded')
                              AND p.available_at < $1)
            """,
            _ts(horizon_end),
            _ts(stale_before),
        )
    )


async def save_session_refresh(
    conn: Db,
    session_id: UUID,
    token: str,
    cookies: list[dict[str, str]],
) -> None:
    await _execute(
        conn,
        """
        UPDATE auth_sessions
           SET aimharder_token = $2, aimharder_cookies = $3,
               last_token_update_date = now(),
               token_update_count = coalesce(token_update_count, 0) + 1,
               last_token_update_error = NULL, updated_at = now()
         WHERE id = $1
        """,
        session_id,
        token,
        cookies,  # the pool's jsonb codec encodes it
    )


async def record_session_error(conn: Db, session_id: UUID, error: str) -> None:
    await _execute(
        conn,
        """
        UPDATE auth_sessions SET last_token_update_error = $2, updated_at = now()
         WHERE id = $1
        """,
        session_id,
        clip(error, 500),
    )


def _ts(epoch: float | None) -> dt.datetime | None:
    return None if epoch is None else dt.datetime.fromtimestamp(epoch, dt.UTC)
