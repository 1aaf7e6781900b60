"""A staged request puts no byte on the wire before its gate opens, seen from the server.

The server here is a raw TCP listener, not aiohttp: it notes when each connection
arrives and when each chunk of bytes comes in, so "nothing before the gate" is checked
on the socket, not on the client's idea of when it wrote. aiohttp 3.10 and 3.11 wrote
the request line and headers (the member's cookies included) before the trace hook the
gate parks in; these tests fail there.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from prebookd.aimharder.client import AimHarderClient, Attempt
from prebookd.daemon.clock import HotWindows
from prebookd.daemon.firing import Firing, Timing
from prebookd.models import Booking, ResultUpdate, build_booking

HOLD = 0.5  # how long a gate stays closed once every request is staged
STAGED = 5
COOKIE = "amhrdrauth=member-secret"
ANSWER_BODY = b'{"bookState": 1, "id": "1"}'
ANSWER = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: application/json; charset=UTF-8\r\n"
    b"Content-Length: " + str(len(ANSWER_BODY)).encode() + b"\r\n"
    b"Connection: keep-alive\r\n"
    b"\r\n" + ANSWER_BODY
)


def staged(gate: asyncio.Future[None] | None) -> Attempt:
    """An attempt held by its gate alone: its instant (`not_before`) has passed already."""
    return Attempt(gate, not_before=time.time())


@dataclass(frozen=True)
class Chunk:
    connection: int  # the order in which its TCP connection arrived, from 0
    at: float  # time.monotonic() when the server read it
    wall: float  # time.time() then
    data: bytes


@dataclass
class RecordingServer:
    """HTTP/1.1 on a raw socket: every request is answered `bookState: 1`, keep-alive.

    With `idle_timeout`, it acts as AWS's load balancer does on a connection that moved
    no byte for that long: closes it (`idle_action` "close"), or answers 408 first."""

    port: int = 0
    idle_timeout: float | None = None
    idle_action: str = "close"
    idle_closed: int = 0
    connections: list[float] = field(default_factory=list)  # monotonic arrival times
    chunks: list[Chunk] = field(default_factory=list)
    requests: list[tuple[int, bytes]] = field(default_factory=list)  # (connection, request)

    def bytes_received(self) -> int:
        return sum(len(chunk.data) for chunk in self.chunks)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = len(self.connections)
        self.connections.append(time.monotonic())
        pending = b""
        try:
            while data := await self._read(reader, writer):
                self.chunks.append(Chunk(connection, time.monotonic(), time.time(), data))
                pending += data
                while (split := _one_request(pending)) is not None:
                    request, pending = split
                    self.requests.append((connection, request))
                    writer.write(ANSWER)
                    await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        """The next bytes; b"" once the connection is closed (by either side)."""
        if self.idle_timeout is None:
            return await reader.read(65_536)
        try:
            return await asyncio.wait_for(reader.read(65_536), self.idle_timeout)
        except TimeoutError:
            self.idle_closed += 1
            if self.idle_action == "408":
                writer.write(
                    b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n"
                    b"Connection: close\r\n\r\n"
                )
            return b""


def _one_request(pending: bytes) -> tuple[bytes, bytes] | None:
    """The first whole request in `pending` and what follows it, or None if incomplete."""
    end = pending.find(b"\r\n\r\n")
    if end < 0:
        return None
    length = 0
    for line in pending[:end].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    stop = end + 4 + length
    if len(pending) < stop:
        return None
    return pending[:stop], pending[stop:]


@pytest.fixture
async def wire() -> AsyncIterator[RecordingServer]:
    recorder = RecordingServer()
    server = await asyncio.start_server(recorder.serve, "127.0.0.1", 0)
    recorder.port = server.sockets[0].getsockname()[1]
    async with server:
        yield recorder


@pytest.fixture
async def client(wire: RecordingServer) -> AsyncIterator[AimHarderClient]:
    # Depends on `wire` so that it is closed first: the server's handlers then end.
    client = AimHarderClient(limit=20, limit_per_host=20, request_timeout=5.0)
    await client.start()
    try:
        yield client
    finally:
        await client.close()


def booking_for(wire: RecordingServer) -> Booking:
    """A claimed row of a box whose base URL is the recording server."""
    return build_booking(
        {
            "id": uuid.uuid4(),
            "user_email": "member@x.es",
            "box_id": uuid.uuid4(),
            "booking_data": {"day": "20301201", "familyId": "", "id": "1", "insist": 0},
            "available_at": dt.datetime(2030, 11, 27, 6, tzinfo=dt.UTC),
            "created_at": dt.datetime(2030, 11, 1, tzinfo=dt.UTC),
            "box_found": True,
            "subdomain": "box-a",
            "base_url": f"http://127.0.0.1:{wire.port}",
            "session_found": True,
            "aimharder_cookies": [{"name": "amhrdrauth", "value": "member-secret"}],
        },
        allowed_hosts=("127.0.0.1",),
    )


async def until(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.005)


def assert_booking_request(request: bytes) -> None:
    head, _, body = request.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /api/book HTTP/1.1"
    assert b"Cookie: " + COOKIE.encode() in lines
    assert body == b"id=1&day=20301201&insist=0&familyId="


async def test_staged_requests_write_nothing_until_the_gate_opens(
    wire: RecordingServer, client: AimHarderClient
) -> None:
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    attempts = [staged(gate) for _ in range(STAGED)]
    tasks = [asyncio.create_task(client.book(booking_for(wire), a)) for a in attempts]
    try:
        await until(
            lambda: len(wire.connections) == STAGED and all(a.parked for a in attempts),
            f"{STAGED} connections open and every request parked at its gate",
        )
        assert all(a.new_connection for a in attempts)
        await asyncio.sleep(HOLD)
        early = wire.chunks
        assert not early, f"bytes reached the server while the gate was closed: {early[0].data!r}"

        opened_at, opened_wall = time.monotonic(), time.time()
        gate.set_result(None)
        exchanges = await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    assert [e.outcome.code for e in exchanges] == ["booked"] * STAGED
    assert min(chunk.at for chunk in wire.chunks) >= opened_at
    for exchange in exchanges:
        assert exchange.written_at is not None and exchange.written_at >= opened_wall
    assert sorted(connection for connection, _ in wire.requests) == list(range(STAGED))
    for _, request in wire.requests:
        assert_booking_request(request)


async def test_a_request_staged_on_a_kept_alive_connection_waits_for_its_gate(
    wire: RecordingServer, client: AimHarderClient
) -> None:
    first = staged(None)
    answered = await client.book(booking_for(wire), first)
    assert answered.outcome.code == "booked"
    assert first.new_connection is True
    received_before = wire.bytes_received()
    assert received_before > 0
    chunks_before = len(wire.chunks)

    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    second = staged(gate)
    task = asyncio.create_task(client.book(booking_for(wire), second))
    try:
        await until(lambda: second.parked, "the second request parked at its gate")
        assert second.new_connection is False, "the kept-alive connection was not reused"
        await asyncio.sleep(HOLD)
        early = wire.chunks[chunks_before:]
        assert not early, f"bytes reached the server while the gate was closed: {early[0].data!r}"

        opened_at, opened_wall = time.monotonic(), time.time()
        gate.set_result(None)
        exchange = await task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    assert exchange.outcome.code == "booked"
    assert exchange.written_at is not None and exchange.written_at >= opened_wall
    assert wire.bytes_received() > received_before
    assert all(chunk.at >= opened_at for chunk in wire.chunks[chunks_before:])
    assert len(wire.connections) == 1
    assert [connection for connection, _ in wire.requests] == [0, 0]
    for _, request in wire.requests:
        assert_booking_request(request)


async def test_a_request_with_no_gate_writes_nothing_before_its_instant(
    wire: RecordingServer, client: AimHarderClient
) -> None:
    """A retry, or a request staged again, carries no gate: its instant holds it, on a
    fresh connection and on a kept-alive one alike."""
    warm = await client.book(booking_for(wire), staged(None))  # a connection to reuse
    assert warm.outcome.code == "booked"
    before = wire.bytes_received()
    instant = time.time() + HOLD
    attempts = [Attempt(None, not_before=instant) for _ in range(3)]
    exchanges = await asyncio.gather(*(client.book(booking_for(wire), a) for a in attempts))

    assert [e.outcome.code for e in exchanges] == ["booked"] * 3
    late_chunks = [c for c in wire.chunks if c.wall >= instant]
    early = wire.bytes_received() - before - sum(len(c.data) for c in late_chunks)
    assert early == 0, "bytes of a request reached the server before its instant"
    for attempt in attempts:
        assert attempt.written_at is not None and attempt.written_at >= instant


def firing_at(
    instant: float,
    client: AimHarderClient,
    reports: list[ResultUpdate],
    *,
    stage_lead: float,
    retry_window: float,
) -> Firing:
    """The daemon's firing of one instant, reporting into `reports`."""
    timing = Timing(
        stage_lead=stage_lead, spin_window=0.003, retry_window=retry_window, retry_interval=0.05
    )
    return Firing(
        instant,
        client=client,
        timing=timing,
        report=reports.append,
        instance="test",
        hot=HotWindows(),
    )


@pytest.mark.parametrize("idle_action", ["close", "408"])
async def test_a_staged_request_whose_connection_is_closed_as_idle_goes_at_its_instant(
    wire: RecordingServer, client: AimHarderClient, idle_action: str
) -> None:
    """A load balancer closes connections idle for 0.3 s, with a 408 or without; the
    requests wait 1 s at their gate. Each is staged again, none is written before the
    instant, and each reaches the server just after it."""
    wire.idle_timeout, wire.idle_action = 0.3, idle_action
    reports: list[ResultUpdate] = []
    instant = time.time() + 1.3
    firing = firing_at(instant, client, reports, stage_lead=1.0, retry_window=1.0)
    for _ in range(3):
        firing.add(booking_for(wire))
    await firing.run()

    assert wire.idle_closed >= 3
    assert min(chunk.wall for chunk in wire.chunks) >= instant
    assert len(wire.requests) == 3
    final = [u for u in reports if u.status in ("completed", "failed")]
    assert [u.outcome for u in final] == ["booked"] * 3
    for update in final:
        assert update.lateness_ms is not None and 0 <= update.lateness_ms < 250
        assert update.send_note is not None and "staged again" in update.send_note


async def test_requests_on_connections_soon_closed_as_idle_are_staged_again_before_it(
    wire: RecordingServer, client: AimHarderClient
) -> None:
    """Connections last 0.8 s idle here. Staged 1.5 s ahead, lost at -0.7 s and staged
    again at -0.6 s, a request would wait on a connection that could be closed at the
    instant itself (a handshake then, instead of a write). Just before the instant it is
    staged once more, on a fresh connection."""
    wire.idle_timeout = 0.8
    reports: list[ResultUpdate] = []
    lead = 1.55
    instant, instant_mono = time.time() + lead, time.monotonic() + lead
    firing = firing_at(instant, client, reports, stage_lead=1.5, retry_window=1.0)
    for _ in range(2):
        firing.add(booking_for(wire))
    await firing.run()

    assert [u.outcome for u in reports if u.status == "completed"] == ["booked"] * 2
    for connection, _ in wire.requests:
        opened = wire.connections[connection] - instant_mono
        assert -0.35 < opened < 0, f"the request went out on a connection opened {opened:.2f} s"


async def test_a_booking_staged_again_can_still_be_withdrawn(
    wire: RecordingServer, client: AimHarderClient
) -> None:
    """A cancel (or a reschedule) reaches a request staged again after its connection
    was closed as idle, as it reaches one staged once: nothing of it is ever written."""
    wire.idle_timeout = 0.2
    reports: list[ResultUpdate] = []
    instant = time.time() + 1.2
    firing = firing_at(instant, client, reports, stage_lead=1.0, retry_window=0.5)
    kept, withdrawn = booking_for(wire), booking_for(wire)
    firing.add(kept)
    firing.add(withdrawn)
    running = asyncio.create_task(firing.run())
    await until(lambda: wire.idle_closed >= 2, "both staged connections closed as idle")
    await asyncio.sleep(0.15)  # staged again meanwhile
    assert firing.withdraw(withdrawn.id)
    await running

    assert len(wire.requests) == 1  # the kept one only
    assert {u.id for u in reports} == {kept.id}
