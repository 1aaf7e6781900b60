"""Every fault the simulator can inject, as a member would see it on the row. The
daemon keeps running through all of them."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

from prebookd.sim.server import Faults, Simulator
from tests.support import (
    add_box,
    add_member,
    add_prebooking,
    open_class,
    running_daemon,
    wait_rows_final,
)

# fault -> (status, outcome, words the error_message must contain)
EXPECTED = {
    "latency": ("completed", "booked", None),
    "error": ("failed", "server_error", "HTTP 50"),
    "html": ("failed", "bad_answer", "unreadable answer"),
    "forbidden": ("failed", "blocked", "HTTP 403"),
    "reset": ("failed", "transport_error", "may have gone through"),
    "truncated": ("completed", "already_booked", None),
    "slow_body": ("failed", "transport_error", "TimeoutError"),
}
FAULTS = {
    "latency": Faults(latency=0.3),
    "error": Faults(error_rate=1.0),
    "html": Faults(html_rate=1.0),
    "forbidden": Faults(forbidden=True),
    "reset": Faults(reset_rate=1.0),
    # Cut short once, after the booking was made: the retry hears "already booked".
    "truncated": Faults(truncated_rate=0.5),
    "slow_body": Faults(slow_body=1.0, slow_body_seconds=30.0),
}


@pytest.fixture
async def sim(make_sim: Callable[..., Awaitable[Simulator]]) -> Simulator:
    return await make_sim(default_capacity=100, seed=7)


async def test_each_fault_ends_with_the_outcome_a_member_expects(
    conn: asyncpg.Connection, db_dsn: str, sim: Simulator, tmp_path: Path
) -> None:
    t = time.time() + 4.0
    boxes = {}
    for fault in [*FAULTS, "healthy"]:
        subdomain = f"box-{fault.replace('_', '-')}"
        boxes[fault] = await add_box(conn, sim, subdomain)
        await add_member(conn, sim, f"{fault}@x.es")
        open_class(sim, subdomain, "1", t, 10)
        if fault in FAULTS:
            sim.set_faults(subdomain, FAULTS[fault])
    async with running_daemon(
        db_dsn, tmp_path, retry_window=1.0, retry_interval=0.1, request_timeout=1.0
    ) as daemon:
        ids = {
            fault: await add_prebooking(conn, box, f"{fault}@x.es", "1", t)
            for fault, box in boxes.items()
        }
        rows = await wait_rows_final(conn, list(ids.values()), timeout=30)
        # Still serving: a row added after all that is booked too.
        later = time.time() + 1.5
        open_class(sim, "box-healthy", "2", later, 10)
        again = await add_prebooking(conn, boxes["healthy"], "healthy@x.es", "2", later)
        (after,) = await wait_rows_final(conn, [again])
        assert await daemon.stop() == 0

    by_id = {r["id"]: r for r in rows}
    for fault, (status, outcome, words) in EXPECTED.items():
        row = by_id[ids[fault]]
        assert (row["status"], row["outcome"]) == (status, outcome), (fault, dict(row))
        if words is not None:
            assert words in row["error_message"], (fault, row["error_message"])
    assert by_id[ids["healthy"]]["outcome"] == "booked"
    assert by_id[ids["forbidden"]]["attempts"] == 1, "a 403 is not retried"
    assert by_id[ids["error"]]["attempts"] > 1, "a 5xx is retried inside the window"
    assert after["outcome"] == "booked"
    assert not daemon.events("task_crashed")
