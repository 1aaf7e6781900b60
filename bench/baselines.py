"""The designs prebookd replaces (shared DESIGN.md, "Earlier attempts"), rebuilt small
and clean so they can be measured on the same rows, simulator and metrics:

- `poll --interval 60`: a cron hitting a stateless route every minute;
- `poll --interval 1`: a route polling every second;
- `sleeper`: one scheduled message per prebooking, delivered 5 s early, whose run
  sleeps until the instant plus 30 ms and then sends.

Both pollers run `status='pending' AND available_at <= now()` ordered by created_at,
LIMIT 50, then send the rows concurrently over one keep-alive session (the kindest
reading of "send each": sequential sends would spread a burst further) and mark them.
The sleeper's runs are independent, as serverless runs are: each has its own HTTP
session, so its connection is opened when it sends.

What is *not* reproduced: cron and queue delivery jitter, cold starts, function time
limits, pool exhaustion. Each baseline is therefore a lower bound on how late the
real one was. Requests are built by prebookd's own `build_booking` (same URL, form,
headers, cookies) and stamped like prebookd's (aiohttp `on_request_chunk_sent`, right
before the write), and results go to the same columns, so `bench.measure` reads
every approach alike.

Usage: python -m bench.baselines {poll,sleeper} --dsn DSN [--interval S] [--limit N]
Prints `baseline_ready` once polling; SIGTERM stops it (in-flight sends finish).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import signal
import time
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import aiohttp
import asyncpg

from prebookd.aimharder.outcomes import Verdict, classify_http, transport_failure
from prebookd.models import Booking, build_booking

APPLICATION_NAME = "bench-baseline"  # as bench.infra.BASELINE_APP counts it
SLEEPER_DELIVERY_LEAD = 5.0  # the queue delivers each message this long before the instant
SLEEPER_DELAY = 0.030  # then the route sleeps until the instant plus this
SLEEPER_POLL = 1.0  # how often the simulated queue looks for messages to deliver
DRAIN_TIMEOUT = 10.0
# The baselines only ever send to the simulator (PREBOOKD_BOX_HOSTS as tests set it).
BOX_HOSTS = ("127.0.0.1",)

# The rows to send, joined with what building the request needs (the shape
# prebookd.models.build_booking reads). $2 is how far ahead of the instant a row is
# taken: 0 for the pollers (due rows only), the delivery lead for the sleeper.
DUE_ROWS = """
WITH due AS (
    SELECT id FROM prebookings
     WHERE status = 'pending'
       AND available_at <= now() + make_interval(secs => $2)
     ORDER BY created_at
     LIMIT $1
     FOR UPDATE SKIP LOCKED
), taken AS (
    UPDATE prebookings p SET status = 'loaded', loaded_at = now()
      FROM due WHERE p.id = due.id
 RETURNING p.id, p.user_email, p.box_id, p.booking_data, p.available_at, p.created_at
)
SELECT t.*, 0 AS attempts, b.id IS NOT NULL AS box_found, b.subdomain, b.base_url,
       s.found IS NOT NULL AS session_found, s.aimharder_cookies
  FROM taken t
  LEFT JOIN boxes b ON b.id = t.box_id
  LEFT JOIN LATERAL (
       SELECT true AS found, a.aimharder_cookies FROM auth_sessions a
        WHERE a.user_email = t.user_email AND a.session_type = 'background'
        ORDER BY a.updated_at DESC NULLS LAST LIMIT 1) s ON true
 ORDER BY t.created_at
"""

MARK = """
UPDATE prebookings
   SET status = $2, outcome = $3, result = $4::jsonb, error_message = $5,
       written_at = $6, lateness_ms = $7, executed_at = now(), attempts = $8,
       fired_by = 'baseline'
 WHERE id = $1
"""


async def _stamp_write(
    session: aiohttp.ClientSession, ctx: Any, params: aiohttp.TraceRequestChunkSentParams
) -> None:
    # Awaited by aiohttp right before the request goes to the socket: the same
    # instant prebookd records as written_at.
    stamp = ctx.trace_request_ctx
    if stamp is not None and stamp.written_at is None:
        stamp.written_at = time.time()


def http_session(*, limit: int) -> aiohttp.ClientSession:
    trace = aiohttp.TraceConfig()
    trace.on_request_chunk_sent.append(_stamp_write)
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, limit_per_host=limit),
        timeout=aiohttp.ClientTimeout(total=10),
        trace_configs=[trace],
        cookie_jar=aiohttp.DummyCookieJar(),  # each request carries its member's cookies
    )


async def send(http: aiohttp.ClientSession, booking: Booking) -> tuple[Any, ...]:
    """POST /api/book once; the MARK parameters for the row."""
    stamp = SimpleNamespace(written_at=None)
    try:
        async with http.post(
            booking.url,
            data=booking.body,
            headers=dict(booking.headers),
            allow_redirects=False,
            trace_request_ctx=stamp,
        ) as response:
            outcome, answer = classify_http(response.status, await response.read())
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        outcome, answer = transport_failure(exc), None
    written_at = stamp.written_at
    lateness_ms = None if written_at is None else (written_at - booking.available_at) * 1000
    status = "completed" if outcome.verdict is Verdict.COMPLETED else "failed"
    return (
        booking.id,
        status,
        outcome.code,
        None if answer is None else json.dumps(answer),
        None if status == "completed" else outcome.reason,
        None if written_at is None else _utc(written_at),
        lateness_ms,
        0 if written_at is None else 1,
    )


def _utc(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.UTC)


async def take_due(pool: asyncpg.Pool, limit: int, ahead: float) -> list[Booking]:
    records = await pool.fetch(DUE_ROWS, limit, ahead)
    return [build_booking(dict(r), BOX_HOSTS) for r in records]


async def poller(pool: asyncpg.Pool, stop: asyncio.Event, interval: float, limit: int) -> None:
    """Every `interval`: take up to `limit` due rows, send them all, mark them."""
    async with http_session(limit=100) as http:
        loop = asyncio.get_running_loop()
        tick = loop.time()
        while not stop.is_set():
            bookings = await take_due(pool, limit, 0.0)
            marks = await asyncio.gather(*(send(http, b) for b in bookings))
            if marks:
                await pool.executemany(MARK, marks)
            tick += interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, tick - loop.time()))


async def sleeper(pool: asyncpg.Pool, stop: asyncio.Event) -> None:
    """A queue that delivers each row's message SLEEPER_DELIVERY_LEAD early; each
    delivery starts an independent run that sleeps to the instant + 30 ms, sends on
    a session of its own, and marks its row."""
    runs: set[asyncio.Task[None]] = set()

    async def run(booking: Booking) -> None:
        async with http_session(limit=1) as http:  # a serverless run: nothing shared
            # setTimeout-style: a relative sleep computed from the wall clock.
            await asyncio.sleep(max(0.0, booking.available_at + SLEEPER_DELAY - time.time()))
            mark = await send(http, booking)
        await pool.execute(MARK, *mark)

    while not stop.is_set():
        for booking in await take_due(pool, 100_000, SLEEPER_DELIVERY_LEAD):
            task = asyncio.create_task(run(booking), name=f"run-{booking.id}")
            runs.add(task)
            task.add_done_callback(runs.discard)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SLEEPER_POLL)
    if runs:
        await asyncio.wait(runs, timeout=DRAIN_TIMEOUT)


async def _init(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def main_async(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    pool = await asyncpg.create_pool(
        args.dsn,
        min_size=1,
        max_size=4,
        init=_init,
        server_settings={"application_name": APPLICATION_NAME},
    )
    assert pool is not None
    body: Callable[[], Awaitable[None]]
    if args.kind == "poll":
        body = lambda: poller(pool, stop, args.interval, args.limit)  # noqa: E731
    else:
        body = lambda: sleeper(pool, stop)  # noqa: E731
    print(f"baseline_ready kind={args.kind} interval={args.interval}", flush=True)
    try:
        await body()
    finally:
        await pool.close()
    print("baseline_stopped", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=("poll", "sleeper"))
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--interval", type=float, default=1.0, help="poll: seconds per tick")
    parser.add_argument("--limit", type=int, default=50, help="poll: rows per tick")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
