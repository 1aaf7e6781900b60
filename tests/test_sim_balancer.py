"""The simulator's load balancer: what happens to idle connections, seen by a client
over real TCP on 127.0.0.1 (raw streams, so every byte and the way the connection ends
are visible)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from prebookd.sim.model import IdleAction
from prebookd.sim.server import Balancer, Faults, Simulator
from tests.test_simulator import _free_port, _simulate

IDLE = 0.3  # the idle timeout of these tests, in seconds
MakeSim = Callable[..., Awaitable[Simulator]]


class Client:
    """One client connection, spoken to in raw HTTP/1.1 (keep-alive by default)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def get(self, path: str) -> tuple[int, bytes]:
        """Send a request and read its answer: (status, body)."""
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: sim\r\n\r\n".encode())
        await self.writer.drain()
        return await self.answer()

    async def answer(self) -> tuple[int, bytes]:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
        length = re.search(rb"(?i)content-length: *(\d+)", head)
        assert length is not None, head
        body = await self.reader.readexactly(int(length.group(1)))
        return int(head.split(b" ", 2)[1]), body

    async def rest(self) -> bytes:
        """Everything the server sends until it closes the connection."""
        return await asyncio.wait_for(self.reader.read(), 5)


@pytest.fixture
async def connect() -> AsyncIterator[Callable[[Simulator], Awaitable[Client]]]:
    clients: list[Client] = []

    async def open_client(sim: Simulator) -> Client:
        host, port = sim.base_url.removeprefix("http://").rsplit(":", 1)
        client = Client(*await asyncio.open_connection(host, int(port)))
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        client.writer.close()
        with contextlib.suppress(ConnectionError):
            await client.writer.wait_closed()


async def balanced(make_sim: MakeSim, action: IdleAction, **options: Any) -> Simulator:
    sim = await make_sim(balancer=Balancer(idle_timeout=IDLE, idle_action=action), **options)
    sim.add_box("alpha")
    return sim


def counts(sim: Simulator) -> tuple[int, int, int]:
    stats = sim.balancer_stats
    return stats.idle_closed, stats.idle_408, stats.idle_reset


# --- each action, on a fresh connection and on one kept alive --------------------------


@pytest.mark.parametrize("requests_first", [0, 2], ids=["fresh", "kept_alive"])
async def test_an_idle_connection_is_closed(
    make_sim: MakeSim, connect: Callable[[Simulator], Awaitable[Client]], requests_first: int
) -> None:
    sim = await balanced(make_sim, "close")
    client = await connect(sim)
    for _ in range(requests_first):
        assert (await client.get("/_sim/bookings"))[0] == 200
    idle_from = time.monotonic()
    assert await client.rest() == b"", "an orderly close (EOF), nothing written"
    assert time.monotonic() - idle_from >= IDLE - 0.02
    assert counts(sim) == (1, 0, 0)


@pytest.mark.parametrize("requests_first", [0, 1], ids=["fresh", "kept_alive"])
async def test_an_idle_connection_is_answered_408_then_closed(
    make_sim: MakeSim, connect: Callable[[Simulator], Awaitable[Client]], requests_first: int
) -> None:
    sim = await balanced(make_sim, "408")
    client = await connect(sim)
    for _ in range(requests_first):
        assert (await client.get("/_sim/bookings"))[0] == 200
    assert await client.answer() == (408, b"")
    assert await client.rest() == b"", "then EOF"
    assert counts(sim) == (0, 1, 0)


@pytest.mark.parametrize("requests_first", [0, 1], ids=["fresh", "kept_alive"])
async def test_an_idle_connection_is_reset(
    make_sim: MakeSim, connect: Callable[[Simulator], Awaitable[Client]], requests_first: int
) -> None:
    sim = await balanced(make_sim, "reset")
    client = await connect(sim)
    for _ in range(requests_first):
        assert (await client.get("/_sim/bookings"))[0] == 200
    with pytest.raises(ConnectionResetError):
        await client.rest()
    assert counts(sim) == (0, 0, 1)


# --- what the balancer leaves alone ---------------------------------------------------


async def test_a_connection_busier_than_the_timeout_is_never_touched(
    make_sim: MakeSim, connect: Callable[[Simulator], Awaitable[Client]]
) -> None:
    sim = await balanced(make_sim, "reset")
    client = await connect(sim)
    started = time.monotonic()
    while time.monotonic() - started < 3 * IDLE:
        assert (await client.get("/alpha/api/bookings?day=20261201"))[0] == 200
        await asyncio.sleep(IDLE / 3)
    assert counts(sim) == (0, 0, 0)
    served = [r.connection_served for r in sim.requests]
    assert served == list(range(len(served))), "all on the one connection"


@pytest.mark.parametrize("requests_first", [0, 1], ids=["fresh", "kept_alive"])
async def test_a_request_just_before_the_timeout_is_answered(
    make_sim: MakeSim, connect: Callable[[Simulator], Awaitable[Client]], requests_first: int
) -> None:
    sim = await balanced(make_sim, "reset")
    client = await connect(sim)
    for _ in range(requests_first):
        assert (await client.get("/_sim/bookings"))[0] == 200
    await asyncio.sleep(IDLE - 0.08)
    status, body = await client.get("/alpha/api/bookings?day=20261201")
    assert status == 200
    assert json.loads(body) == {"logout": 1}, "the box's own answer (no cookie was sent)"
    assert counts(sim) == (0, 0, 0)
    # The clock restarts after each answer: idle again, the connection goes.
    with pytest.raises(ConnectionResetError):
        await client.rest()
    (recorded,) = sim.requests
    assert (recorded.box, recorded.path, recorded.status) == ("alpha", "/api/bookings", 200)


async def test_a_request_slower_than_the_timeout_is_received_and_answered(
    make_sim: MakeSim, connect: Callable[[Simulator], Awaitable[Client]]
) -> None:
    sim = await balanced(make_sim, "reset")
    sim.set_faults("alpha", Faults(latency=1.5 * IDLE))  # the answer takes longer than IDLE
    client = await connect(sim)
    # Half the request, a pause longer than the timeout, then the rest.
    client.writer.write(b"GET /alpha/api/bookings?day=20261201 HTTP/1.1\r\n")
    await asyncio.sleep(1.5 * IDLE)
    client.writer.write(b"Host: sim\r\n\r\n")
    assert (await client.answer())[0] == 200
    assert counts(sim) == (0, 0, 0)


# --- settings ------------------------------------------------------------------------


async def test_no_balancer_leaves_idle_connections_alone(
    make_sim: MakeSim, connect: Callable[[Simulator], Awaitable[Client]]
) -> None:
    sim = await make_sim()
    client = await connect(sim)
    await asyncio.sleep(2 * IDLE)
    assert (await client.get("/_sim/bookings"))[0] == 200
    assert counts(sim) == (0, 0, 0)


async def control(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    """One control request on a connection of its own: the balancer may close any
    connection left idle, a client's pooled ones too."""
    async with aiohttp.ClientSession() as http, http.request(method, url, json=body) as response:
        return response.status, await response.json()


async def test_the_balancer_set_through_the_control_endpoint(
    make_sim: MakeSim, connect: Callable[[Simulator], Awaitable[Client]]
) -> None:
    sim = await make_sim()
    url = f"{sim.base_url}/_sim/balancer"
    waiting = await connect(sim)  # idle already when the balancer is set
    settings = {"idle_timeout": IDLE, "idle_action": 408}  # a number is taken as "408"
    assert await control("POST", url, settings) == (200, {"ok": True})
    assert sim.balancer == Balancer(idle_timeout=IDLE, idle_action="408")
    assert await waiting.answer() == (408, b"")

    assert await control("GET", url) == (
        200,
        {
            "idle_timeout": IDLE,
            "idle_action": "408",
            "connect_delay": 0.0,
            "idle_closed": 0,
            "idle_408": 1,
            "idle_reset": 0,
        },
    )
    for bad in ({"idle_action": "drop"}, {"idle_timeout": -1}, {"typo": 1}):
        assert (await control("POST", url, bad))[0] == 400, bad

    # Balancer() turns it off, for connections idle already too.
    idle = await connect(sim)
    assert (await control("POST", url, {}))[0] == 200
    await asyncio.sleep(2 * IDLE)
    assert (await idle.get("/_sim/bookings"))[0] == 200
    sim.reset()
    assert counts(sim) == (0, 0, 0), "reset forgets what the balancer did"


async def test_a_connect_delay_holds_back_the_first_request(
    make_sim: MakeSim, connect: Callable[[Simulator], Awaitable[Client]]
) -> None:
    sim = await make_sim(balancer=Balancer(connect_delay=IDLE))
    sim.add_box("alpha")
    client = await connect(sim)  # returns at once: the kernel accepted it
    sent_at = time.time()
    assert (await client.get("/alpha/api/bookings?day=20261201"))[0] == 200
    assert time.time() - sent_at >= IDLE - 0.02
    (recorded,) = sim.requests
    assert recorded.arrived_at - sent_at >= IDLE - 0.02, "read, so stamped, after the delay"
    # Later requests on the connection are not delayed.
    sent_at = time.time()
    assert (await client.get("/alpha/api/bookings?day=20261201"))[0] == 200
    assert time.time() - sent_at < IDLE / 2


# --- `prebookd simulate` --------------------------------------------------------------


async def test_prebookd_simulate_takes_the_balancer_from_file_and_flag(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    config = tmp_path / "sim.toml"
    config.write_text(f'[balancer]\nidle_timeout = {IDLE}\nidle_action = "close"\n')
    port = _free_port()
    proc = await _simulate(
        "--port", str(port), "--config", str(config), "--balancer", "idle_action=reset"
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        assert json.loads(await asyncio.wait_for(proc.stderr.readline(), 10))["event"] == (
            "simulator_listening"
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(reader.read(), 5)
        finally:
            writer.close()
        async with http.get(f"http://127.0.0.1:{port}/_sim/balancer") as response:
            seen = await response.json()
        assert (seen["idle_timeout"], seen["idle_action"], seen["idle_reset"]) == (
            IDLE,
            "reset",
            1,
        )
    finally:
        proc.kill()
        await proc.wait()


async def test_prebookd_simulate_refuses_a_bad_balancer_in_one_line() -> None:
    proc = await _simulate("--port", str(_free_port()), "--balancer", "idle_action=drop")
    _, stderr = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 2
    message = stderr.decode().strip()
    assert message.startswith("prebookd: error: --balancer: idle_action"), message
    assert "\n" not in message
