"""What prebookd deletes of its own records, and when: delivered (or given up) messages
of `prebookd_outbox` and the rule misses of `prebookd_rule_misses`, once older than
`history_days`. Prebookings are the web app's rows: prebookd never deletes them.

A message still pending is kept however old (its sender may be retrying); a rule miss
goes by its class day, so one not yet reported is never deleted before its instant.
"""

from __future__ import annotations

import asyncpg

Db = asyncpg.Connection | asyncpg.Pool


async def purge(db: Db, keep_days: int) -> dict[str, int]:
    """Delete what is older than `keep_days`; how many of each were deleted."""
    messages = await db.execute(
        """DELETE FROM prebookd_outbox
            WHERE status IN ('sent', 'dead')
              AND coalesce(sent_at, created_at) < now() - make_interval(days => $1)""",
        keep_days,
    )
    misses = await db.execute(
        """DELETE FROM prebookd_rule_misses
            WHERE day < current_date - $1::integer
              AND available_at < now() - make_interval(days => $1)""",
        keep_days,
    )
    return {"messages": _count(messages), "rule_misses": _count(misses)}


def _count(status: str) -> int:
    """The row count of a command tag such as "DELETE 3"."""
    return int(status.rsplit(" ", 1)[-1])
