"""The SQL of recurring rules and days away: the `rule` and `away` commands, and the
daemon's planner. Nothing here decides; `prebookd.daemon.plan` does.

A rule's row is keyed by (rule_id, rule_day), unique: two planners inserting the same
day make one row. Withdrawing a rule's rows (paused, removed, edited, a day away)
cancels the pending ones and clears their rule_day, so the day may be planned again;
a row cancelled by hand keeps its key and is never made again.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg

from prebookd.db.store import Db, _execute, _fetch

# Rows a rule may still withdraw: not yet being sent.
WITHDRAWABLE = ["pending", "loaded"]


@dataclass(frozen=True)
class RuleView:
    id: int
    user_email: str
    box_id: UUID
    subdomain: str | None
    weekdays: list[int]
    class_time: dt.time
    class_name: str
    family_id: str
    insist: int
    alternatives: Any
    active: bool
    created_at: dt.datetime
    pending: int  # rows still to fire
    next_day: dt.date | None  # the next class day it has a row for


@dataclass(frozen=True)
class AwayView:
    id: int
    user_email: str
    box_id: UUID | None
    subdomain: str | None
    first_day: dt.date
    last_day: dt.date
    created_at: dt.datetime


# --- the commands --------------------------------------------------------------------


async def insert_rule(
    conn: asyncpg.Connection,
    *,
    user_email: str,
    box: UUID,
    weekdays: Sequence[int],
    class_time: dt.time,
    class_name: str,
    family_id: str,
    insist: int,
    alternatives: list[str],
    watch: bool = False,
) -> int:
    new_id = await conn.fetchval(
        """
        INSERT INTO prebookd_rules (user_email, box_id, weekdays, class_time, class_name,
                                    family_id, insist, alternatives, watch)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
        RETURNING id
        """,
        user_email,
        box,
        sorted(weekdays),
        class_time,
        class_name,
        family_id,
        insist,
        alternatives,
        watch,
    )
    assert isinstance(new_id, int)
    return new_id


async def list_rules(
    conn: Db, rule_id: int | None = None, user_email: str | None = None
) -> list[RuleView]:
    rows = await _fetch(
        conn,
        """
        SELECT r.id, r.user_email, r.box_id, b.subdomain, r.weekdays, r.class_time,
               r.class_name, r.family_id, r.insist, r.alternatives, r.active, r.created_at,
               count(p.id) FILTER (WHERE p.status = ANY($2::text[])) AS pending,
               min(p.rule_day) FILTER (WHERE p.status = ANY($2::text[])) AS next_day
        FROM prebookd_rules r
        LEFT JOIN boxes b ON b.id = r.box_id
        LEFT JOIN prebookings p ON p.rule_id = r.id AND p.rule_day IS NOT NULL
        WHERE ($1::bigint IS NULL OR r.id = $1)
          AND ($3::text IS NULL OR lower(r.user_email) = lower($3))
        GROUP BY r.id, b.subdomain
        ORDER BY r.id
        """,
        rule_id,
        WITHDRAWABLE,
        user_email,
    )
    return [RuleView(**dict(row)) for row in rows]


async def set_rule_active(conn: asyncpg.Connection, rule_id: int, active: bool) -> bool:
    """False: no such rule."""
    found = await conn.fetchval(
        "UPDATE prebookd_rules SET active = $2 WHERE id = $1 RETURNING id", rule_id, active
    )
    return found is not None


async def delete_rule(conn: asyncpg.Connection, rule_id: int) -> bool:
    found = await conn.fetchval("DELETE FROM prebookd_rules WHERE id = $1 RETURNING id", rule_id)
    return found is not None


async def insert_away(
    conn: asyncpg.Connection,
    *,
    user_email: str,
    box: UUID | None,
    first_day: dt.date,
    last_day: dt.date,
) -> int:
    new_id = await conn.fetchval(
        """
        INSERT INTO prebookd_away (user_email, box_id, first_day, last_day)
        VALUES ($1, $2, $3, $4) RETURNING id
        """,
        user_email,
        box,
        first_day,
        last_day,
    )
    assert isinstance(new_id, int)
    return new_id


async def list_away(conn: Db) -> list[AwayView]:
    rows = await _fetch(
        conn,
        """
        SELECT a.id, a.user_email, a.box_id, b.subdomain, a.first_day, a.last_day,
               a.created_at
        FROM prebookd_away a LEFT JOIN boxes b ON b.id = a.box_id
        ORDER BY a.first_day, a.id
        """,
    )
    return [AwayView(**dict(row)) for row in rows]


async def delete_away(conn: asyncpg.Connection, away_id: int) -> bool:
    found = await conn.fetchval("DELETE FROM prebookd_away WHERE id = $1 RETURNING id", away_id)
    return found is not None


async def withdraw_rule_rows(conn: Db, rule_id: int, reason: str) -> int:
    """Cancel every pending row of a rule (paused, removed)."""
    status = await _execute(
        conn,
        """
        UPDATE prebookings
        SET status = 'cancelled', error_message = $2, rule_day = NULL
        WHERE rule_id = $1 AND rule_day IS NOT NULL AND status = ANY($3::text[])
        """,
        rule_id,
        reason,
        WITHDRAWABLE,
    )
    return int(status.split()[-1])


async def withdraw_away_rows(
    conn: Db, *, user_email: str, box: UUID | None, first_day: dt.date, last_day: dt.date
) -> int:
    """Cancel the pending rows rules made for this member inside these days (never a
    row made by hand: those have no rule)."""
    status = await _execute(
        conn,
        """
        UPDATE prebookings
        SET status = 'cancelled', rule_day = NULL,
            error_message = 'away ' || $3::date || ' to ' || $4::date
        WHERE rule_id IS NOT NULL AND rule_day BETWEEN $3 AND $4
          AND lower(user_email) = lower($1)
          AND ($2::uuid IS NULL OR box_id = $2)
          AND status = ANY($5::text[])
        """,
        user_email,
        box,
        first_day,
        last_day,
        WITHDRAWABLE,
    )
    return int(status.split()[-1])


# --- the planner ---------------------------------------------------------------------


async def planner_rules(db: Db) -> list[asyncpg.Record]:
    """Every rule with what planning needs of its box."""
    return await _fetch(
        db,
        """
        SELECT r.id, r.user_email, r.box_id, r.weekdays, r.class_time, r.class_name,
               r.family_id, r.insist, r.active, r.created_at, r.alternatives, r.watch,
               b.subdomain, b.box_id AS aimharder_box_id, b.base_url, b.timezone,
               b.booking_window_kind, b.booking_window_length, b.proxy_url
        FROM prebookd_rules r JOIN boxes b ON b.id = r.box_id
        ORDER BY r.id
        """,
    )


async def planner_away(db: Db, since: dt.date) -> list[asyncpg.Record]:
    return await _fetch(
        db,
        "SELECT id, user_email, box_id, first_day, last_day FROM prebookd_away "
        "WHERE last_day >= $1",
        since,
    )


async def planner_rows(db: Db, since: dt.date) -> list[asyncpg.Record]:
    """Rows rules made, still keyed to a day: those from `since` on, and any not final."""
    return await _fetch(
        db,
        """
        SELECT id, rule_id, rule_day, status, available_at, booking_data, class_label
        FROM prebookings
        WHERE rule_id IS NOT NULL AND rule_day IS NOT NULL
          AND (rule_day >= $1 OR status = ANY($2::text[]))
        """,
        since,
        WITHDRAWABLE,
    )


async def background_session(db: Db, user_email: str) -> asyncpg.Record | None:
    rows = await _fetch(
        db,
        """
        SELECT aimharder_cookies FROM auth_sessions
        WHERE lower(user_email) = lower($1) AND session_type = 'background'
        ORDER BY updated_at DESC NULLS LAST, id
        LIMIT 1
        """,
        user_email,
    )
    return rows[0] if rows else None


async def insert_rule_row(
    db: Db,
    *,
    rule_id: int,
    day: dt.date,
    user_email: str,
    box: UUID,
    booking_data: dict[str, Any],
    available_at: dt.datetime,
    class_label: str,
    alternatives: list[dict[str, Any]] | None = None,
    watch: bool = False,
) -> UUID | None:
    """The rule's row for `day`, unless one exists (any instance's) or the rule was
    paused or removed meanwhile: then None."""
    rows = await _fetch(
        db,
        """
        INSERT INTO prebookings (user_email, box_id, booking_data, available_at, status,
                                 class_label, rule_id, rule_day, alternatives, watch)
        SELECT $1, $2, $3, $4, 'pending', $5, $6, $7, $8, $9
        WHERE EXISTS (SELECT 1 FROM prebookd_rules WHERE id = $6 AND active)
        ON CONFLICT (rule_id, rule_day) WHERE rule_day IS NOT NULL DO NOTHING
        RETURNING id
        """,
        user_email,
        box,
        booking_data,
        available_at,
        class_label,
        rule_id,
        day,
        alternatives,
        watch,
    )
    return rows[0]["id"] if rows else None


async def withdraw_rows(db: Db, withdrawals: Sequence[tuple[UUID, str]]) -> list[UUID]:
    """Cancel these rows, each with its reason, if still pending or loaded: the ids
    this call cancelled (another planner may have been first)."""
    if not withdrawals:
        return []
    rows = await _fetch(
        db,
        """
        UPDATE prebookings p
        SET status = 'cancelled', error_message = w.reason, rule_day = NULL
        FROM unnest($1::uuid[], $2::text[]) AS w(id, reason)
        WHERE p.id = w.id AND p.status = ANY($3::text[])
        RETURNING p.id
        """,
        [w[0] for w in withdrawals],
        [w[1] for w in withdrawals],
        WITHDRAWABLE,
    )
    return [row["id"] for row in rows]


async def move_rows(db: Db, moves: Sequence[tuple[UUID, dt.datetime]]) -> int:
    if not moves:
        return 0
    status = await _execute(
        db,
        """
        UPDATE prebookings p SET available_at = m.at
        FROM unnest($1::uuid[], $2::timestamptz[]) AS m(id, at)
        WHERE p.id = m.id AND p.status = ANY($3::text[])
          AND p.available_at IS DISTINCT FROM m.at
        """,
        [m[0] for m in moves],
        [m[1] for m in moves],
        WITHDRAWABLE,
    )
    return int(status.split()[-1])


async def record_miss(db: Db, rule_id: int, day: dt.date, available_at: dt.datetime) -> None:
    await _execute(
        db,
        """
        INSERT INTO prebookd_rule_misses (rule_id, day, available_at) VALUES ($1, $2, $3)
        ON CONFLICT (rule_id, day) DO UPDATE SET seen_at = now(), available_at = $3
        """,
        rule_id,
        day,
        available_at,
    )


async def claim_reports(db: Db, due: Sequence[tuple[int, dt.date]]) -> list[tuple[int, dt.date]]:
    """Of these (rule, day) whose instant passed, those found missing from the listing,
    with no row made since, not reported yet: marked reported, for exactly one caller."""
    if not due:
        return []
    rows = await _fetch(
        db,
        """
        UPDATE prebookd_rule_misses m SET reported_at = now()
        FROM unnest($1::bigint[], $2::date[]) AS d(rule_id, day)
        WHERE m.rule_id = d.rule_id AND m.day = d.day AND m.reported_at IS NULL
          AND NOT EXISTS (SELECT 1 FROM prebookings p
                          WHERE p.rule_id = m.rule_id AND p.rule_day = m.day)
        RETURNING m.rule_id, m.day
        """,
        [d[0] for d in due],
        [d[1] for d in due],
    )
    return [(row["rule_id"], row["day"]) for row in rows]
