"""Members told of their outcomes by the running daemon: `prebookd run` as a
subprocess, the simulator over loopback, a real HTTP receiver for json:// channels."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from prebookd.db.connection import connect
from prebookd.sim.server import Simulator
from tests.receivers import HttpReceiver, http_receiver
from tests.support import (
    add_box,
    add_member,
    add_prebooking,
    open_class,
    running_daemon,
    wait_rows_final,
)


@pytest.fixture
async def sim(make_sim: Callable[..., Awaitable[Simulator]]) -> Simulator:
    return await make_sim(default_capacity=100, session_max_age=600, token_max_age=3600)


async def add_channels(conn: asyncpg.Connection, receiver: HttpReceiver, emails: list[str]) -> None:
    for k, email in enumerate(emails):
        await conn.execute(
            "INSERT INTO prebookd_notify_channels (user_email, url, lang) VALUES ($1, $2, $3)",
            email,
            receiver.url("json", f"hook/{email}"),
            "en" if k % 2 else "es",
        )


async def wait_messages(receiver: HttpReceiver, count: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while len(receiver.received) < count and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    assert len(receiver.received) >= count, f"{len(receiver.received)} of {count} messages"


def status_checker(db_dsn: str) -> tuple[Callable[[str, dict[str, Any]], Awaitable[Any]], list]:
    """An on_receive that reads, as each message arrives, its member's row in Postgres."""
    conns: list[asyncpg.Connection] = []
    one_at_a_time = asyncio.Lock()

    async def check(path: str, _body: dict[str, Any]) -> Any:
        email = path.rsplit("/", 1)[-1]
        async with one_at_a_time:
            if not conns:
                conns.append(await connect(db_dsn))
            return await conns[0].fetchval(
                "SELECT status || ':' || coalesce(outcome, '') FROM prebookings "
                "WHERE user_email = $1",
                email,
            )

    return check, conns


async def test_a_burst_of_50_tells_each_member_once_after_the_result_is_in_postgres(
    conn: asyncpg.Connection, db_dsn: str, sim: Simulator, tmp_path: Path
) -> None:
    box = await add_box(conn, sim, "burst")
    emails = [f"m{k:02d}@burst.test" for k in range(50)]
    for email in emails:
        await add_member(conn, sim, email)
    check, conns = status_checker(db_dsn)
    async with http_receiver(on_receive=check) as receiver:
        await add_channels(conn, receiver, emails)
        t = time.time() + 4.0
        open_class(sim, "burst", "7", t, 15)
        try:
            async with running_daemon(db_dsn, tmp_path) as daemon:
                ids = [await add_prebooking(conn, box, email, "7", t) for email in emails]
                rows = await wait_rows_final(conn, ids)
                await wait_messages(receiver, 50)
                await asyncio.sleep(0.5)  # a 51st would come now
                assert await daemon.stop() == 0
        finally:
            for c in conns:
                await c.close()

    outcome = {r["user_email"]: r["outcome"] for r in rows}
    assert sorted(outcome.values()).count("booked") == 15
    assert len(receiver.received) == 50
    for k, email in enumerate(emails):
        (message,) = receiver.at(f"hook/{email}")
        title, body = message.body["title"], message.body["message"]
        expected = {
            ("booked", 1): "Booked",
            ("booked", 0): "Reservada",
            ("full", 1): "Class full",
            ("full", 0): "Clase llena",
        }[outcome[email], k % 2]
        assert expected in title, (email, title)
        assert "Burst" in body and "7" in body and "ms" in body
        # It left only once the result was in Postgres (read as it arrived).
        assert (
            message.checked
            == f"{'completed' if outcome[email] == 'booked' else 'failed'}:" + (outcome[email])
        )
        assert message.at > t
    sent = await conn.fetchval("SELECT count(*) FROM prebookd_outbox WHERE status = 'sent'")
    assert sent == 50
    assert daemon.events("notification_sent")


async def test_rows_failed_at_arming_tell_their_members_too(
    conn: asyncpg.Connection, db_dsn: str, sim: Simulator, tmp_path: Path
) -> None:
    box = await add_box(conn, sim, "arming")
    emails = ["absurd@arming.es", "dead@arming.es"]
    await add_member(conn, sim, emails[0])
    await add_member(conn, sim, emails[1], refreshed_ago=1800, token="revoked")
    async with http_receiver() as receiver:
        await add_channels(conn, receiver, emails)  # absurd: es, dead: en
        t = time.time() + 3.0
        open_class(sim, "arming", "1", t, 10)
        async with running_daemon(db_dsn, tmp_path, aimharder_url=sim.base_url) as daemon:
            ids = [
                await add_prebooking(conn, box, emails[0], "1", time.time() + 500 * 86_400),
                await add_prebooking(conn, box, emails[1], "1", t),
            ]
            rows = await wait_rows_final(conn, ids)
            await wait_messages(receiver, 2)
            await asyncio.sleep(0.5)  # a third would come now
            assert await daemon.stop() == 0

    assert [r["outcome"] for r in rows] == ["bad_row", "session_expired"]
    (absurd,) = receiver.at(f"hook/{emails[0]}")
    assert absurd.body["title"] == "❌ La prerreserva no es válida"
    # The dead session is found out at arming (the row already claimed): its outcome
    # says it, no early warning besides.
    (dead,) = receiver.at(f"hook/{emails[1]}")
    assert dead.body["title"] == "❌ Session expired: log in again"
