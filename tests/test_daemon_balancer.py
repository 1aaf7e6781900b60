"""AimHarder behind a load balancer that closes connections idle for 1.2 s, while the
daemon's requests wait 3 s at their gates (the default stage_lead): the daemon with its
default settings sends nothing early, loses no one, and books as the class allows."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

from prebookd.sim.server import Balancer, Simulator
from tests.support import (
    add_box,
    add_member,
    add_prebooking,
    open_class,
    running_daemon,
    wait_rows_final,
)

MEMBERS = 8
PLACES = 5


@pytest.mark.parametrize("idle_action", ["close", "408"])
async def test_idle_connections_closed_at_the_gate_cost_no_one_their_place(
    conn: asyncpg.Connection,
    db_dsn: str,
    make_sim: Callable[..., Awaitable[Simulator]],
    tmp_path: Path,
    idle_action: str,
) -> None:
    sim = await make_sim(
        default_capacity=100, balancer=Balancer(idle_timeout=1.2, idle_action=idle_action)
    )
    instant = round(time.time() + 5.0, 3)
    box = await add_box(conn, sim, "busy")
    open_class(sim, "busy", "1", instant, PLACES)
    emails = [f"m{k}@lb.test" for k in range(MEMBERS)]
    for email in emails:
        await add_member(conn, sim, email)
    async with running_daemon(db_dsn, tmp_path) as daemon:
        ids = [await add_prebooking(conn, box, email, "1", instant) for email in emails]
        rows = await wait_rows_final(conn, ids, timeout=30)
        assert await daemon.stop() == 0

    books = [r for r in sim.requests if r.path == "/api/book"]
    assert books, "no booking request reached AimHarder"
    early = [r.arrived_at - instant for r in books if r.arrived_at < instant]
    assert early == [], f"requests before the instant: {early}"
    first = {r.email: r.arrived_at for r in sorted(books, key=lambda r: -r.arrived_at)}
    assert set(first) == set(emails)  # every member's request reached AimHarder
    late = {e: round(at - instant, 3) for e, at in first.items() if at - instant > 0.25}
    assert late == {}, f"first requests later than 250 ms: {late}"
    outcomes = sorted((r["status"], r["outcome"]) for r in rows)
    assert outcomes == sorted(
        [("completed", "booked")] * PLACES + [("failed", "full")] * (MEMBERS - PLACES)
    )
    assert sim.balancer_stats.idle_closed + sim.balancer_stats.idle_408 >= MEMBERS
    assert all("staged again" in (r["send_note"] or "") for r in rows), [
        r["send_note"] for r in rows
    ]
