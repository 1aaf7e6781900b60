"""The running daemon's status endpoint and `prebookd status`, end to end."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import sys
import time
from pathlib import Path

import aiohttp
import asyncpg

from prebookd.sim.server import Simulator
from tests.support import (
    add_box,
    add_member,
    add_prebooking,
    open_class,
    running_daemon,
    wait_rows_final,
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_status_healthz_and_metrics_of_a_running_daemon(
    conn: asyncpg.Connection, db_dsn: str, tmp_path: Path
) -> None:
    sim = Simulator()
    await sim.start()
    port = free_port()
    try:
        box = await add_box(conn, sim, "box-st")
        await add_member(conn, sim, "watched@x.es")
        t = time.time() + 3.5
        open_class(sim, "box-st", "1", t, 5)
        async with running_daemon(db_dsn, tmp_path, status_port=port) as daemon:
            row = await add_prebooking(conn, box, "watched@x.es", "1", t)
            later = await add_prebooking(conn, box, "watched@x.es", "2", time.time() + 3600)
            base = f"http://127.0.0.1:{port}"
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{base}/healthz") as answer:
                    assert answer.status == 200
                await wait_rows_final(conn, [row])
                async with http.get(f"{base}/status") as answer:
                    status = await answer.json()
                async with http.get(f"{base}/metrics") as answer:
                    metrics = await answer.text()
            env = {**os.environ, "PREBOOKD_STATUS_PORT": str(port)}
            cli = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "prebookd", "status", "--json",
                env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            out, err = await cli.communicate()
            assert await daemon.stop() == 0
    finally:
        await sim.stop()

    assert status["listener_connected"] is True
    assert status["armed"] == 1, "the row opening in an hour"
    assert status["last_firings"][0]["count"] == 1
    assert status["last_firings"][0]["outcomes"] == {"booked": 1}
    assert status["last_firings"][0]["requests"] == {"box-st": 1}  # requests per box
    assert status["db_pool"]["max"] == status["db_pool"]["size"] == 3, "a constant pool"
    assert re.search(r'prebookd_requests_total\{[^}]*outcome="booked"[^}]*\} 1\n', metrics)
    assert 'box="box-st"' in metrics
    assert 'prebookd_booking_requests_total{box="box-st"} 1\n' in metrics
    assert "prebookd_request_lateness_seconds_bucket" in metrics
    assert cli.returncode == 0, err.decode()
    assert json.loads(out)["armed"] == 1
    assert later is not None
