"""Scenario `scale`: a million pending prebookings over the next 30 days.

The rows are bulk-inserted (generate_series, one statement) before prebookd starts,
with the NOTIFY trigger disabled for that one transaction: nobody listens yet, and a
million queued notifications would only measure Postgres's notify queue. The first
instant is 10 minutes ahead, so nothing fires while the daemon is measured and
"idle" means idle.

prebookd holds in memory only the rows opening within PREBOOKD_HORIZON (24 h by
default): about 1/30 of them here. The rest stay in the table until a resync brings
them inside the horizon.

Reported: start-up time (process start to the `daemon_ready` line's timestamp), RSS
after ready (VmRSS, /proc/PID/status), CPU over 30 idle seconds (utime + stime from
/proc/PID/stat), and, in a second window, the CPU of the first periodic reconcile
(a full resync of the horizon, every PREBOOKD_RECONCILE_INTERVAL = 60 s).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import asyncpg

from bench.infra import PREBOOKD_APPS, cpu_over, fresh_database, rss_mb, sample_connections
from bench.procs import log_fields, log_time, running_prebookd
from bench.report import PREBOOKD_CONNECTION_LIMIT, Line, connections_line
from bench.workload import DAY
from prebookd.db.connection import connect

NAME = "scale"
FIRST_AFTER = 600.0  # seconds from now to the first instant
RECONCILE_INTERVAL = 60.0  # prebookd's default PREBOOKD_RECONCILE_INTERVAL


@dataclass(frozen=True)
class Size:
    rows: int
    days: float = 30.0
    members: int = 1000
    idle: float = 30.0  # seconds of the idle CPU window
    reconcile: bool = True  # also measure a window holding the first reconcile


FULL = Size(rows=1_000_000)
QUICK = Size(rows=20_000, idle=5.0, reconcile=False)


def describe(size: Size) -> str:
    return f"{size.rows:,} pending rows over {size.days:g} days; {size.idle:g} s idle window"


BULK_MEMBERS = """
INSERT INTO auth_sessions (user_email, aimharder_token, aimharder_cookies, fingerprint,
                           session_type, last_token_update_date)
SELECT 'member' || g || '@bench.test', 'refresh-' || g,
       jsonb_build_array(jsonb_build_object('name', 'amhrdrauth', 'value', 'c' || g)),
       'fp' || g, 'background', now()
  FROM generate_series(1, $1) AS g
"""

# Instants evenly spread over [first, first + span]; created_at 1 µs apart. The
# classes (300 of them, ids s0..s299) make bursts at shared instants unlikely here:
# this scenario is about holding rows, not firing them.
BULK_ROWS = """
INSERT INTO prebookings (user_email, box_id, booking_data, available_at, created_at)
SELECT 'member' || (1 + g % $2) || '@bench.test', $3::uuid,
       jsonb_build_object('day', $6::text, 'familyId', '', 'id', 's' || (g % 300), 'insist', 0),
       to_timestamp($4::float8 + g * $5::float8),
       now() + g * interval '1 microsecond'
  FROM generate_series(0, $1 - 1) AS g
"""


async def bulk_load(conn: asyncpg.Connection, size: Size, first: float) -> float:
    """The rows, as fast as Postgres takes them; returns the seconds it took."""
    started = time.monotonic()
    box: uuid.UUID = await conn.fetchval(
        "INSERT INTO boxes (box_id, subdomain, name, base_url) "
        "VALUES ('scale', 'scale', 'Scale', 'http://127.0.0.1:9/scale') RETURNING id"
    )
    async with conn.transaction():
        await conn.execute(
            "ALTER TABLE prebookings DISABLE TRIGGER prebookings_notify_insert_delete"
        )
        await conn.execute(BULK_MEMBERS, size.members)
        step = size.days * 86_400 / size.rows
        await conn.execute(BULK_ROWS, size.rows, size.members, box, first, step, DAY)
        await conn.execute(
            "ALTER TABLE prebookings ENABLE TRIGGER prebookings_notify_insert_delete"
        )
    await conn.execute("ANALYZE prebookings")
    return time.monotonic() - started


async def run(server_dsn: str, size: Size, earlier: dict[str, Any]) -> dict[str, Any]:
    async with fresh_database(server_dsn, NAME) as dsn:
        conn = await connect(dsn, role="bench")
        try:
            first = time.time() + FIRST_AFTER
            load_seconds = await bulk_load(conn, size, first)
            in_horizon = await conn.fetchval(
                "SELECT count(*) FROM prebookings WHERE available_at < now() + interval '24 hours'"
            )
        finally:
            await conn.close()
        spawned = time.time()
        async with (
            running_prebookd(dsn, None, log_level="debug", ready_timeout=120.0) as daemon,
            sample_connections(dsn, PREBOOKD_APPS) as held,
        ):
            ready_line = daemon.events("daemon_ready")[0]
            ready_at = log_time(ready_line)
            pid = daemon.process.pid
            after_ready = rss_mb(pid)
            await asyncio.sleep(2.0)  # whatever READY=1 set off settles
            idle = await cpu_over(pid, size.idle)
            reconcile = None
            if size.reconcile:
                # The reconcile task waits one interval from start-up before its first run.
                left = ready_at + RECONCILE_INTERVAL + 5.0 - time.time()
                reconcile = await cpu_over(pid, max(left, 1.0))
            after_idle = rss_mb(pid)
            reconciled = [log_fields(line) for line in daemon.events("reconciled")]
    return {
        "size": asdict(size),
        "bulk_load_seconds": round(load_seconds, 1),
        "rows_within_horizon": in_horizon,
        "ready_seconds": round(ready_at - spawned, 3),
        "armed_at_ready": int(log_fields(ready_line).get("armed", -1)),
        "memory_after_ready": after_ready,
        "memory_after_idle": after_idle,
        "idle_cpu": idle,
        "reconcile_window_cpu": reconcile,
        "reconciles_seen": reconciled,
        "db_connections": held.report(),
        "note": "prebookd holds only rows opening within PREBOOKD_HORIZON (24 h) in memory",
        "log": daemon.lines,
    }


def table(result: dict[str, Any]) -> list[Line]:
    size = result["size"]
    idle = result["idle_cpu"]
    lines = [
        Line(
            "bulk load (not prebookd)", f"{size['rows']:,} rows in {result['bulk_load_seconds']} s"
        ),
        Line(
            "rows held in memory (horizon 24 h)",
            f"{result['armed_at_ready']:,} armed at ready ({result['rows_within_horizon']:,} "
            "in the table within 24 h)",
        ),
        Line(
            "start-up to READY",
            f"{result['ready_seconds']:.2f} s",
            "< 10 s",
            result["ready_seconds"] < 10.0,
        ),
        Line(
            "RSS after ready / after idle (peak)",
            f"{result['memory_after_ready']['rss_mb']:.0f} / "
            f"{result['memory_after_idle']['rss_mb']:.0f} MB "
            f"({result['memory_after_idle']['peak_rss_mb']:.0f} MB)",
            "< 500 MB",
            result["memory_after_idle"]["peak_rss_mb"] < 500,
        ),
        Line(
            f"idle CPU over {idle['seconds']:g} s",
            f"{idle['core_pct']:.2f} % of a core ({idle['cpu_s']} s)",
            "< 1 %",
            idle["core_pct"] < 1.0,
        ),
    ]
    window = result["reconcile_window_cpu"]
    if window is not None:
        seen = result["reconciles_seen"]
        what = f"{len(seen)} reconcile(s) of {seen[0].get('rows')} rows" if seen else "no reconcile"
        lines.append(
            Line(
                f"CPU over the next {window['seconds']:g} s ({what})",
                f"{window['core_pct']:.2f} % of a core ({window['cpu_s']} s)",
            )
        )
    lines.append(connections_line(result["db_connections"], limit=PREBOOKD_CONNECTION_LIMIT))
    return lines
