"""A box's own clock and distance in the simulator (issue 18): its Date header, when
booking opens by it, and the one-way delays of requests and answers, seen by a client
over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from email.utils import parsedate_to_datetime
from pathlib import Path

import aiohttp
import pytest

from prebookd.cli.main import build_parser
from prebookd.cli.simulate import build_simulator
from prebookd.errors import UsageError
from prebookd.sim.server import BoxClock, Simulator
from tests.test_simulator import MEMBERS, a_class, book

ANA = "m0@example.com"
MakeSim = Callable[..., Awaitable[Simulator]]


async def sleep_until(moment: float) -> None:
    await asyncio.sleep(max(0.0, moment - time.time()))


async def probe(http: aiohttp.ClientSession, url: str, method: str = "HEAD") -> float:
    """The box's clock as its Date header says it (epoch seconds, whole)."""
    async with http.request(method, url, allow_redirects=False) as response:
        assert response.status == 200
        return parsedate_to_datetime(response.headers["Date"]).timestamp()


async def clocked(make_sim: MakeSim, **boxes: BoxClock) -> Simulator:
    sim = await make_sim()
    for subdomain, clock in boxes.items():
        sim.add_box(subdomain, "1001")
        sim.set_box_clock(subdomain, clock)
    for email, cookie in MEMBERS.items():
        sim.add_member(email, cookie)
    return sim


async def test_the_date_header_is_the_boxs_clock_truncated_to_the_second(
    make_sim: MakeSim, http: aiohttp.ClientSession
) -> None:
    sim = await clocked(
        make_sim, ahead=BoxClock(clock_offset_ms=300), behind=BoxClock(clock_offset_ms=-300)
    )
    # Within one second of real time: the box 300 ms ahead turns to the next second at
    # .7, the one 300 ms behind to this second at .3 (150 ms from every tick).
    second = math.floor(time.time()) + 1
    seen: dict[float, tuple[float, float]] = {}
    for fraction in (0.15, 0.45, 0.85):
        await sleep_until(second + fraction)
        seen[fraction] = (
            await probe(http, sim.box_url("ahead")),
            await probe(http, sim.box_url("behind"), "GET"),
        )

    assert seen == {
        0.15: (second, second - 1),
        0.45: (second, second),
        0.85: (second + 1, second),
    }
    # Exactly: the box's clock when it handled the probe, truncated, never rounded.
    offsets = {"ahead": 0.3, "behind": -0.3}
    for r in sim.requests:
        assert (r.method, r.path) in {("HEAD", "/"), ("GET", "/")}
        assert r.box_arrived_at == pytest.approx(r.arrived_at + offsets[r.box])
    dates = [d for pair in seen.values() for d in pair]
    handled = [math.floor(r.handled_at + offsets[r.box]) for r in sim.requests]
    assert sorted(dates) == sorted(handled)


@pytest.mark.parametrize("offset_ms", [300, -300])
async def test_booking_opens_by_the_boxs_clock(
    make_sim: MakeSim, http: aiohttp.ClientSession, offset_ms: float
) -> None:
    sim = await clocked(make_sim, alpha=BoxClock(clock_offset_ms=offset_ms))
    opens_at = time.time() + 0.45  # by the box's clock
    sim.add_class("alpha", a_class(opens_at=opens_at))
    real_opening = opens_at - offset_ms / 1000

    await sleep_until(real_opening - 0.08)
    early = await book(http, sim.box_url("alpha"), ANA)
    await sleep_until(real_opening + 0.02)
    booked = await book(http, sim.box_url("alpha"), ANA)

    assert (early["bookState"], early["errorMssgLang"]) == (-12, "ERROR_ANTELACION_CLIENTE")
    assert booked["bookState"] == 1
    first, second = sim.requests
    assert first.box_arrived_at is not None and first.box_arrived_at < opens_at
    assert second.box_arrived_at is not None
    assert 0.02 <= second.box_arrived_at - opens_at < 0.2  # arrival minus opening, its clock
    assert second.box_arrived_at - second.arrived_at == pytest.approx(offset_ms / 1000)


async def test_requests_and_answers_each_take_the_one_way_delay(
    make_sim: MakeSim, http: aiohttp.ClientSession
) -> None:
    sim = await clocked(make_sim, far=BoxClock(delay_ms=100), near=BoxClock())
    opens_at = time.time() + 0.3
    sim.add_class("far", a_class(opens_at=opens_at))

    # Sent 50 ms before the opening, it reaches the box 50 ms after: booked.
    await sleep_until(opens_at - 0.05)
    sent = time.time()
    booked = await book(http, sim.box_url("far"), ANA)
    round_trip = time.time() - sent
    start = time.time()
    await probe(http, sim.box_url("near"))
    near_trip = time.time() - start

    assert booked["bookState"] == 1
    assert round_trip >= 0.2  # there and back
    assert near_trip < 0.1
    far = sim.requests[0]
    assert far.received_at is not None and far.received_at < opens_at
    assert far.arrived_at == pytest.approx(far.received_at + 0.1)
    assert far.arrived_at <= far.handled_at  # handled when it reached the box
    assert far.box_arrived_at == far.arrived_at  # its clock is on time


async def test_jitter_is_bounded_and_drawn(make_sim: MakeSim, http: aiohttp.ClientSession) -> None:
    sim = await clocked(make_sim, alpha=BoxClock(delay_ms=20, jitter_ms=30))

    async def timed() -> float:
        start = time.time()
        await probe(http, sim.box_url("alpha"))
        return time.time() - start

    trips = await asyncio.gather(*(timed() for _ in range(20)))

    assert min(trips) >= 0.04
    inbound = [r.arrived_at - (r.received_at or 0.0) for r in sim.requests]
    assert all(0.02 - 1e-6 <= d <= 0.05 + 1e-6 for d in inbound), inbound
    assert max(inbound) - min(inbound) > 0.005, "jitter varies"


async def test_pipelined_requests_on_one_connection_are_answered_in_order(
    make_sim: MakeSim,
) -> None:
    sim = await clocked(make_sim, alpha=BoxClock(delay_ms=5, jitter_ms=40))
    host, port = sim.base_url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    paths = ["/alpha/", "/alpha/api/bookings?day=20261201", "/alpha"] * 2
    writer.write(b"".join(f"GET {p} HTTP/1.1\r\nHost: sim\r\n\r\n".encode() for p in paths))
    bodies = []
    for _ in paths:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        bodies.append(await reader.readexactly(length))
    writer.close()

    assert [b"logout" in body for body in bodies] == [False, True, False] * 2
    assert [r.path for r in sim.requests] == ["/", "/api/bookings", "/"] * 2


async def test_the_control_endpoint_and_config_file_set_a_boxs_clock(
    make_sim: MakeSim, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    sim = await make_sim()
    body = {"subdomain": "alpha", "clock_offset_ms": -250.5, "delay_ms": 20, "jitter_ms": 3}
    async with http.post(f"{sim.base_url}/_sim/boxes", json=body) as response:
        assert response.status == 200
    assert sim.box("alpha").clock == BoxClock(-250.5, 20, 3)
    clock = {"box": "alpha", "clock_offset_ms": 120}  # the clock alone, the rest kept
    async with http.post(f"{sim.base_url}/_sim/box_clock", json=clock) as response:
        assert response.status == 200
    assert sim.box("alpha").clock == BoxClock(120, 0, 0)
    async with http.post(
        f"{sim.base_url}/_sim/boxes", json={"subdomain": "alpha", "delay_ms": -1}
    ) as response:
        assert response.status == 400
        assert "delay_ms" in (await response.json())["error"]

    config = tmp_path / "sim.toml"
    config.write_text('[[boxes]]\nsubdomain = "x"\nclock_offset_ms = 40\ndelay_ms = 7\n')
    args = build_parser().parse_args(
        ["simulate", "--config", str(config), "--box", "y", "--box-clock", "y:-300:20:5"]
    )
    built = build_simulator(args, time.time())
    assert built.box("x").clock == BoxClock(40, 7, 0)
    assert built.box("y").clock == BoxClock(-300, 20, 5)
    for wrong, said in [
        ("z:10", "unknown box 'z'"),
        ("y", "SUBDOMAIN:OFFSET_MS"),
        ("y:1:x", "not numbers of ms"),
        ("y:0:-5", "delay_ms must be"),
    ]:
        args = build_parser().parse_args(["simulate", "--box", "y", "--box-clock", wrong])
        with pytest.raises(UsageError, match=said):
            build_simulator(args, time.time())
