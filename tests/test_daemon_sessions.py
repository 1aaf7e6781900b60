"""Sessions at work: refreshed when old, failed early when dead, renewed once when
AimHarder logs a member out at the instant. Daemon subprocess, simulator, Postgres."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

from prebookd.sim.server import Simulator
from tests.support import (
    add_box,
    add_member,
    add_prebooking,
    open_class,
    running_daemon,
    wait_rows_final,
)

HALF_HOUR = 1800.0


@pytest.fixture
async def sim(make_sim: Callable[..., Awaitable[Simulator]]) -> Simulator:
    # Cookies die after a minute; tokens live an hour: a refresh brings a cookie back.
    return await make_sim(default_capacity=100, session_max_age=60, token_max_age=3600)


async def test_old_token_refreshed_dead_session_failed_at_arming_logout_renewed(
    conn: asyncpg.Connection, db_dsn: str, sim: Simulator, tmp_path: Path
) -> None:
    box = await add_box(conn, sim, "box-s")
    # Refreshed 30 min ago (older than the 20 min threshold), cookie already dead.
    await add_member(conn, sim, "old@x.es", issued_ago=120, refreshed_ago=HALF_HOUR)
    # A token AimHarder no longer knows: tokenUpdate answers {"logout": 1}.
    await add_member(conn, sim, "dead@x.es", refreshed_ago=HALF_HOUR, token="revoked")
    # The table says fresh, but AimHarder has dropped the cookie: logout at the instant.
    await add_member(conn, sim, "instant@x.es", issued_ago=120, refreshed_ago=0)
    t = time.time() + 4.0
    open_class(sim, "box-s", "1", t, 10)
    async with running_daemon(db_dsn, tmp_path, aimharder_url=sim.base_url) as daemon:
        ids = {
            email: await add_prebooking(conn, box, email, "1", t)
            for email in ("old@x.es", "dead@x.es", "instant@x.es")
        }
        dead_failed_at = None
        while dead_failed_at is None and time.time() < t:
            status = await conn.fetchval(
                "SELECT status FROM prebookings WHERE id = $1", ids["dead@x.es"]
            )
            dead_failed_at = time.time() if status == "failed" else None
        rows = {r["user_email"]: r for r in await wait_rows_final(conn, list(ids.values()))}
        assert await daemon.stop() == 0

    assert dead_failed_at is not None and dead_failed_at < t, "failed at arming, not at T"
    assert rows["dead@x.es"]["outcome"] == "session_expired"
    assert rows["dead@x.es"]["error_message"] == "session expired: log in again"
    sent = [r.email for r in sim.requests if r.path == "/api/book"]
    assert "dead@x.es" not in sent

    assert rows["old@x.es"]["status"] == "completed"
    assert rows["old@x.es"]["attempts"] == 1, "refreshed before the instant"
    session = await conn.fetchrow("SELECT * FROM auth_sessions WHERE user_email = 'old@x.es'")
    assert session["token_update_count"] == 1
    assert time.time() - session["last_token_update_date"].timestamp() < 30
    assert session["last_token_update_error"] is None

    assert rows["instant@x.es"]["status"] == "completed"
    assert rows["instant@x.es"]["attempts"] == 2, "logout, one refresh, one retry"
    assert sim.bookings("box-s", "1") == sorted(["old@x.es", "instant@x.es"], key=sent.index)
    dead = await conn.fetchrow("SELECT * FROM auth_sessions WHERE user_email = 'dead@x.es'")
    assert "session ended" in dead["last_token_update_error"]
    assert "revoked" not in "\n".join(daemon.lines), "tokens never in the log"
