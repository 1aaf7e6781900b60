"""prebookd's own records are deleted once older than `history_days`: messages
delivered or given up, and rule misses; pending messages and prebookings never."""

from __future__ import annotations

import asyncio
import datetime as dt

import asyncpg
import structlog

from prebookd.daemon.clock import HotWindows
from prebookd.daemon.upkeep import purge_history
from prebookd.db import history_store


async def add_message(conn: asyncpg.Connection, key: str, status: str, days_old: int) -> None:
    await conn.execute(
        """INSERT INTO prebookd_outbox (dedup_key, event, status, created_at, sent_at)
           VALUES ($1, 'outcome', $2, now() - make_interval(days => $3),
                   CASE WHEN $2 = 'sent' THEN now() - make_interval(days => $3) END)""",
        key,
        status,
        days_old,
    )


async def add_miss(conn: asyncpg.Connection, rule: int, days_old: int) -> None:
    await conn.execute(
        """INSERT INTO prebookd_rule_misses (rule_id, day, available_at)
           VALUES ($1, current_date - $2::integer, now() - make_interval(days => $2 + 4))""",
        rule,
        days_old,
    )


async def add_rule(conn: asyncpg.Connection) -> int:
    box = await conn.fetchval(
        "INSERT INTO boxes (box_id, subdomain, name) VALUES ('1', 'norte', 'N') RETURNING id"
    )
    rule: int = await conn.fetchval(
        """INSERT INTO prebookd_rules (user_email, box_id, weekdays, class_time, class_name)
           VALUES ('ana@example.com', $1, '{1}', '07:00', 'WOD') RETURNING id""",
        box,
    )
    return rule


async def kept(conn: asyncpg.Connection) -> tuple[list[str], list[dt.date]]:
    keys = await conn.fetch("SELECT dedup_key FROM prebookd_outbox ORDER BY dedup_key")
    days = await conn.fetch("SELECT day FROM prebookd_rule_misses ORDER BY day")
    return [r["dedup_key"] for r in keys], [r["day"] for r in days]


async def test_old_delivered_messages_and_rule_misses_go_pending_ones_stay(
    conn: asyncpg.Connection,
) -> None:
    await add_message(conn, "sent-old", "sent", 40)
    await add_message(conn, "dead-old", "dead", 31)
    await add_message(conn, "sent-new", "sent", 2)
    await add_message(conn, "pending-old", "pending", 40)  # still being retried
    rule = await add_rule(conn)
    await add_miss(conn, rule, 45)
    await add_miss(conn, rule, 3)

    assert await history_store.purge(conn, 30) == {"messages": 2, "rule_misses": 1}

    keys, days = await kept(conn)
    assert keys == ["pending-old", "sent-new"]
    assert days == [dt.date.today() - dt.timedelta(days=3)]
    assert await history_store.purge(conn, 30) == {"messages": 0, "rule_misses": 0}


async def test_the_daemons_purge_runs_at_start_and_says_what_it_deleted(
    conn: asyncpg.Connection, db_dsn: str
) -> None:
    await add_message(conn, "sent-old", "sent", 10)
    await add_message(conn, "sent-new", "sent", 1)
    pool = await asyncpg.create_pool(db_dsn, min_size=1, max_size=1)
    stop = asyncio.Event()
    try:
        with structlog.testing.capture_logs() as logs:
            task = asyncio.create_task(purge_history(pool, lambda: 7, HotWindows(), stop))
            for _ in range(250):  # its first round runs at once: 5 s at most
                if (await kept(conn))[0] == ["sent-new"]:
                    break
                await asyncio.sleep(0.02)
            stop.set()
            await asyncio.wait_for(task, 5)
    finally:
        await pool.close()
    (line,) = [entry for entry in logs if entry["event"] == "history_purged"]
    assert (line["messages"], line["rule_misses"], line["days"]) == (1, 0, 7)
