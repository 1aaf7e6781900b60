"""The status endpoint over real loopback HTTP, and `prebookd status` as a subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from prebookd.daemon.metrics import LATENESS_BUCKETS, Metrics
from prebookd.daemon.status import StatusServer, gauges_from_snapshot


def fake_snapshot() -> dict[str, Any]:
    return {
        "instance": "vps-test",
        "started_at": "2030-11-27T06:00:00+00:00",
        "listener_connected": True,
        "listener_reconnects": 2,
        "armed": 42,
        "next_instants": [
            {"instant": "2030-11-27T07:00:00.000Z", "rows": 30},
            {"instant": "2030-11-27T08:00:00+00:00", "rows": 12},
        ],
        "last_firings": [
            {
                "instant": "2030-11-27T06:30:00+00:00",
                "count": 25,
                "fifo": True,
                "lateness_p50_ms": 0.41,
                "lateness_max_ms": 1.73,
                "outcomes": {"booked": 16, "full": 9},
            }
        ],
        "sessions_kept": 17,
        "db_pool": {"size": 3, "idle": 2, "max": 4},
        "http_pool": {"in_use": 5, "limit": 200},
        "results_backlog": 1,
        "spooled": 0,
    }


class Served:
    def __init__(self, server: StatusServer, snapshot: dict[str, Any], metrics: Metrics) -> None:
        self.server = server
        self.snapshot = snapshot
        self.metrics = metrics
        self.fail = False

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.bound_port}{path}"


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    snapshot = fake_snapshot()
    metrics = Metrics()
    holder: list[Served] = []

    def take() -> dict[str, Any]:
        if holder[0].fail:
            raise RuntimeError("snapshot bug")
        return snapshot

    server = StatusServer("127.0.0.1", 0, take, metrics)
    holder.append(Served(server, snapshot, metrics))
    await server.start()
    try:
        yield holder[0]
    finally:
        await server.stop()


async def get(url: str) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, response.headers.get("Content-Type", ""), await response.text()


# ---- the endpoint ------------------------------------------------------------


async def test_healthz_follows_the_listener(served: Served) -> None:
    status, _, body = await get(served.url("/healthz"))
    assert (status, json.loads(body)) == (200, {"status": "ok"})

    served.snapshot["listener_connected"] = False
    status, _, body = await get(served.url("/healthz"))
    assert status == 503
    assert json.loads(body)["status"] == "unavailable"


async def test_status_is_the_snapshot_as_json(served: Served) -> None:
    status, content_type, body = await get(served.url("/status"))
    assert status == 200
    assert content_type.startswith("application/json")
    assert json.loads(body) == fake_snapshot()


async def test_a_failing_snapshot_is_a_500_and_the_server_goes_on(served: Served) -> None:
    served.fail = True
    status, _, _ = await get(served.url("/status"))
    assert status == 500
    served.fail = False
    status, _, _ = await get(served.url("/healthz"))
    assert status == 200


async def test_unknown_path_is_404(served: Served) -> None:
    status, _, _ = await get(served.url("/nope"))
    assert status == 404


# ---- Prometheus exposition -----------------------------------------------------

SAMPLE = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)"
    r'(?:\{(?P<labels>[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
    r'(?:,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*")*)\})?'
    r" (?P<value>[-+]?(?:[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?|Inf|NaN))$"
)
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_exposition(text: str) -> tuple[dict[str, str], list[tuple[str, dict[str, str], float]]]:
    """(family -> type, samples). Fails the test on any line that is not valid."""
    assert text.endswith("\n")
    types: dict[str, str] = {}
    samples = []
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram"), line
            assert name not in types, f"family declared twice: {name}"
            types[name] = kind
        elif line.startswith("# HELP "):
            continue
        else:
            match = SAMPLE.match(line)
            assert match, f"not a sample line: {line!r}"
            labels = dict(LABEL.findall(match["labels"] or ""))
            samples.append((match["name"], labels, float(match["value"])))
    for name, _, _ in samples:
        family = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in types or family in types, f"sample of an undeclared family: {name}"
    return types, samples


def check_histogram(samples: list[tuple[str, dict[str, str], float]], name: str) -> list[float]:
    buckets = [(labels["le"], value) for n, labels, value in samples if n == f"{name}_bucket"]
    assert buckets, name
    assert buckets[-1][0] == "+Inf"
    bounds = [float(le) for le, _ in buckets]
    assert bounds == sorted(bounds)
    counts = [value for _, value in buckets]
    assert counts == sorted(counts), f"{name} buckets not cumulative: {counts}"
    count = [v for n, _, v in samples if n == f"{name}_count"]
    assert count == [counts[-1]]
    assert [n for n, _, _ in samples].count(f"{name}_sum") == 1
    return counts


async def test_metrics_parse_as_prometheus_exposition(served: Served) -> None:
    for lateness in (0.3, 0.3, 0.9, 4.0, 2500.0):  # ms; the last one is past every bucket
        served.metrics.observe_request(lateness_ms=lateness, outcome="booked", box="norte")
    served.metrics.observe_request(lateness_ms=None, outcome="bad_row", box="norte")
    served.metrics.observe_request(lateness_ms=0.2, outcome="full", box='sur "2"\\x')
    served.metrics.observe_instant(count=6, spread_ms=0.8)
    served.metrics.observe_instant(count=1, spread_ms=None)

    status, content_type, text = await get(served.url("/metrics"))
    assert status == 200
    assert content_type.startswith("text/plain")
    assert "version=0.0.4" in content_type
    types, samples = parse_exposition(text)

    assert types["prebookd_request_lateness_seconds"] == "histogram"
    assert types["prebookd_burst_spread_seconds"] == "histogram"
    assert types["prebookd_requests_total"] == "counter"
    assert types["prebookd_instants_total"] == "counter"

    lateness = check_histogram(samples, "prebookd_request_lateness_seconds")
    assert len(lateness) == len(LATENESS_BUCKETS) + 1
    assert lateness[-1] == 6  # every request with a lateness, the 2.5 s one only in +Inf
    assert lateness[-2] == 5
    by_le = {
        labels["le"]: value
        for name, labels, value in samples
        if name == "prebookd_request_lateness_seconds_bucket"
    }
    assert by_le["0.00025"] == 1  # the 0.2 ms one
    assert by_le["0.0005"] == 3  # plus the two 0.3 ms
    assert by_le["0.001"] == 4  # plus 0.9 ms
    assert check_histogram(samples, "prebookd_burst_spread_seconds")[-1] == 1

    requests = {
        (labels["outcome"], labels["box"]): value
        for name, labels, value in samples
        if name == "prebookd_requests_total"
    }
    assert requests == {
        ("booked", "norte"): 5,
        ("bad_row", "norte"): 1,
        ("full", 'sur \\"2\\"\\\\x'): 1,  # escaped as the format says
    }
    values = {name: value for name, labels, value in samples if not labels}
    assert values["prebookd_instants_total"] == 2
    assert values["prebookd_armed_rows"] == 42
    assert values["prebookd_listener_connected"] == 1
    assert values["prebookd_db_pool_size"] == 3
    assert values["prebookd_db_pool_idle"] == 2
    assert values["prebookd_http_connections_in_use"] == 5
    assert values["prebookd_next_instant_seconds"] == 1921993200.0  # 2030-11-27T07:00Z


def test_gauges_leave_out_what_the_snapshot_lacks() -> None:
    gauges = gauges_from_snapshot({"armed": 3, "listener_connected": False, "db_pool": {}})
    assert gauges == {"prebookd_armed_rows": 3.0, "prebookd_listener_connected": 0.0}


def test_empty_metrics_still_render_every_family() -> None:
    types, samples = parse_exposition(Metrics().render({}))
    assert set(types) == {
        "prebookd_request_lateness_seconds",
        "prebookd_requests_total",
        "prebookd_booking_requests_total",
        "prebookd_instants_total",
        "prebookd_burst_spread_seconds",
    }
    assert check_histogram(samples, "prebookd_request_lateness_seconds")[-1] == 0


async def test_scrapes_wait_out_a_hot_window() -> None:
    gate = asyncio.Event()

    async def wait_clear() -> None:
        await gate.wait()

    server = StatusServer("127.0.0.1", 0, fake_snapshot, Metrics(), wait_clear=wait_clear)
    await server.start()
    try:
        scrape = asyncio.ensure_future(get(f"http://127.0.0.1:{server.bound_port}/metrics"))
        await asyncio.sleep(0.2)
        assert not scrape.done()  # held while an instant is near
        gate.set()
        status, _, _ = await asyncio.wait_for(scrape, 5)
        assert status == 200
    finally:
        await server.stop()


# ---- prebookd status -----------------------------------------------------------


async def run_status(tmp_path: Path, port: int, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREBOOKD_")}
    env["PREBOOKD_STATUS_PORT"] = str(port)
    env["PREBOOKD_STATE_DIR"] = str(tmp_path)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "prebookd",
        "status",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_prebookd_status_prints_a_summary(served: Served, tmp_path: Path) -> None:
    code, out, err = await run_status(tmp_path, served.server.bound_port)
    assert code == 0, err
    assert "prebookd vps-test" in out
    assert "connected (reconnects: 2)" in out
    assert "42 rows" in out
    assert "2030-11-27 07:00:00.000Z" in out and "30 rows" in out
    assert "2030-11-27 08:00:00.000Z" in out and "12 rows" in out
    assert "25 requests, FIFO, lateness p50 0.41 ms, max 1.73 ms; booked 16, full 9" in out
    assert "17 kept alive" in out
    assert "3 open of 4, 2 idle" in out
    assert "5 in use of 200" in out


async def test_prebookd_status_json(served: Served, tmp_path: Path) -> None:
    code, out, err = await run_status(tmp_path, served.server.bound_port, "--json")
    assert code == 0, err
    assert json.loads(out) == fake_snapshot()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_prebookd_status_without_a_daemon(tmp_path: Path) -> None:
    port = free_port()
    code, out, err = await run_status(tmp_path, port)
    assert code == 1
    assert out == ""
    assert err.strip().splitlines() == [
        f"prebookd: error: no prebookd answering on 127.0.0.1:{port}: is it running? "
        "(PREBOOKD_STATUS_PORT)"
    ]


async def test_prebookd_status_when_the_endpoint_is_off(tmp_path: Path) -> None:
    code, _, err = await run_status(tmp_path, 0)
    assert code == 1
    assert "status endpoint is off (PREBOOKD_STATUS_PORT=0)" in err
    assert len(err.strip().splitlines()) == 1
