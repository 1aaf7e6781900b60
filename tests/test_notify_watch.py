"""Early warnings and the daemon's own alarms: a member whose session is dead is warned
before the instant; the heartbeat pings while healthy and says /fail when Postgres goes
away; the operator is told. Daemon subprocess, simulator, real HTTP receiver, a TCP
proxy to Postgres that refuses on command."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg

from prebookd.notify.service import Notifications
from prebookd.settings import load_settings
from prebookd.sim.server import Faults, Simulator
from tests.pgproxy import pg_proxy
from tests.receivers import HttpReceiver, http_receiver
from tests.support import (
    add_box,
    add_member,
    add_prebooking,
    open_class,
    running_daemon,
    start_daemon,
    wait_rows_final,
)


async def wait_for_path(receiver: HttpReceiver, path: str, count: int = 1, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while len(receiver.at(path)) < count:
        assert time.monotonic() < deadline, f"{len(receiver.at(path))} of {count} at {path}"
        await asyncio.sleep(0.05)
    return receiver.at(path)


async def test_a_dead_session_warns_the_member_once_before_the_instant(
    conn: asyncpg.Connection, db_dsn: str, sim: Simulator, tmp_path: Path
) -> None:
    box = await add_box(conn, sim, "warn")
    # A token AimHarder no longer knows, older than the refresh age: tokenUpdate at
    # start answers {"logout": 1}.
    await add_member(conn, sim, "dead@warn.es", refreshed_ago=1800, token="revoked-token")
    t = time.time() + 600.0  # ten minutes ahead
    open_class(sim, "warn", "1", t, 10)  # listed: the listing watch has nothing to say
    async with http_receiver() as receiver:
        for url, lang in (
            (receiver.url("json", "warn/dead"), "en"),
            (receiver.url("json", "outcome-only"), "es"),
        ):
            await conn.execute(
                "INSERT INTO prebookd_notify_channels (user_email, url, lang, events) "
                "VALUES ($1, $2, $3, $4)",
                "Dead@warn.es",
                url,
                lang,
                ["warning", "outcome"] if "warn" in url else ["outcome"],
            )
        row = await add_prebooking(conn, box, "dead@warn.es", "1", t)
        async with running_daemon(db_dsn, tmp_path, aimharder_url=sim.base_url) as daemon:
            (warning,) = await wait_for_path(receiver, "warn/dead")
            # The keeper asks again (SIGHUP resyncs, refreshes): still one warning.
            await daemon.wait_for("session_dead")
            await asyncio.sleep(1.5)
            assert await daemon.stop() == 0

    assert warning.at < t
    assert "Booking at risk" in warning.body["title"]
    assert "log in again before" in warning.body["message"]
    assert "Warn" in warning.body["message"]
    assert len(receiver.received) == 1  # not to the outcome-only channel, not twice
    assert "revoked-token" not in "\n".join(daemon.lines)
    status = await conn.fetchval("SELECT status FROM prebookings WHERE id = $1", row)
    assert status == "pending"  # nothing fired: only told


async def test_heartbeat_pings_while_healthy_and_fails_when_postgres_goes_away(
    db_dsn: str, tmp_path: Path
) -> None:
    alarm_after = 3.0
    async with pg_proxy(db_dsn) as proxy, http_receiver() as receiver:
        settings = {
            "heartbeat_url": receiver.url("http", "ping/uuid-1234"),
            "heartbeat_interval": 1,
            "alarm_after": alarm_after,
            "operator_notify_urls": receiver.url("json", "operator"),
        }
        async with running_daemon(proxy.dsn(), tmp_path, **settings) as daemon:
            await wait_for_path(receiver, "ping/uuid-1234", count=2)
            proxy.refuse()
            proxy.cut()
            gone_at = time.time()
            (fail,) = await wait_for_path(receiver, "ping/uuid-1234/fail")
            pings_when_failed = len(receiver.at("ping/uuid-1234"))
            (alarm,) = await wait_for_path(receiver, "operator")  # alarm_after later
            assert len(receiver.at("ping/uuid-1234")) == pings_when_failed  # silence
            assert len(receiver.at("ping/uuid-1234/fail")) == 1  # once
            proxy.pass_()
            back = await wait_for_path(receiver, "ping/uuid-1234", count=pings_when_failed + 1)
            await wait_for_path(receiver, "operator", count=2)  # "Postgres is back"
            assert await daemon.stop() == 0

    assert fail.at - gone_at < alarm_after
    assert alarm_after <= alarm.at - gone_at < alarm_after + 3
    assert "Postgres unreachable" in alarm.body["title"]
    assert back[-1].at > fail.at
    assert "uuid-1234" not in "\n".join(daemon.lines)  # the URL is a secret


async def test_the_operator_hears_of_an_unclean_stop_and_of_a_box_rate_limiting(
    conn: asyncpg.Connection, db_dsn: str, sim: Simulator, tmp_path: Path
) -> None:
    box = await add_box(conn, sim, "ops")
    sim.set_faults("ops", Faults(throttled_rate=1.0))
    await add_member(conn, sim, "m@ops.es")
    t = time.time() + 4.0
    open_class(sim, "ops", "1", t, 10)
    async with http_receiver() as receiver:
        operator = {"operator_notify_urls": receiver.url("json", "ops")}
        first = await start_daemon(db_dsn, tmp_path, **operator)
        try:
            await first.wait_for("daemon_ready")
            row = await add_prebooking(conn, box, "m@ops.es", "1", t)
            status = "SELECT status FROM prebookings WHERE id = $1"
            while await conn.fetchval(status, row) != "loaded":  # noqa: ASYNC110
                await asyncio.sleep(0.02)  # claimed (arm_lead is 60 s): then killed
            await first.kill()
        finally:
            await first.kill()
        async with running_daemon(db_dsn, tmp_path, **operator) as daemon:
            (final,) = await wait_rows_final(conn, [row])
            await wait_for_path(receiver, "ops", count=2)
            assert await daemon.stop() == 0

    assert final["outcome"] == "rate_limited"
    unclean, limited = (m.body for m in receiver.at("ops"))
    assert "unclean stop" in unclean["title"]
    assert "1 claimed row(s) fire now" in unclean["message"]
    assert "rate-limiting" in limited["title"] and "ops" in limited["message"]


async def test_a_missed_instant_fails_the_heartbeat_once_then_pings_resume() -> None:
    """Postgres up all along, but an instant's request went out 2.5 s late: the
    dead-man's switch says /fail once, and pings again an interval later."""
    now = [1_000.0]
    firings: list[dict[str, object]] = [
        {"instant": "T0", "count": 3, "lateness_max_ms": 0.4, "spread_ms": 2.0},
    ]
    service = Notifications(
        load_settings(heartbeat_url="http://127.0.0.1:9/ping/x", heartbeat_interval=60),
        None,  # type: ignore[arg-type]  # no message is queued on this path
        wait_clear=asyncio.sleep,  # type: ignore[arg-type]
        next_instant=lambda: None,
        db_connected=lambda: True,
        firings=lambda: firings,
        clock=lambda: now[0],
    )
    assert service.heartbeat is not None
    state = service.heartbeat.state

    async def watch_once() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(service._watch(stop))
        await asyncio.sleep(0.05)
        stop.set()
        await task

    await watch_once()
    assert state.due(now[0], service.healthy()) == "ping"
    firings.append({"instant": "T1", "count": 1, "lateness_max_ms": 2_500.0, "spread_ms": 0.0})
    now[0] += 5
    await watch_once()
    assert state.due(now[0], service.healthy()) == "fail"
    now[0] += 30
    await watch_once()  # the same summary seen again: no second /fail
    assert state.due(now[0], service.healthy()) is None
    now[0] += 31
    assert state.due(now[0], service.healthy()) == "ping"
