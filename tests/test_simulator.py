"""The AimHarder simulator, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from prebookd.simulator import SimClass, Simulator
from prebookd.simulator_cli import parse_opens_at

DAY = "20261201"
MEMBERS = {f"m{i}@example.com": f"cookie-{i}" for i in range(12)}


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    simulator = Simulator()
    simulator.add_box("alpha", box_id="1001", name="Alpha Box")
    for email, cookie in MEMBERS.items():
        simulator.add_member(email, cookie)
    await simulator.start()
    try:
        yield simulator
    finally:
        await simulator.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # No cookie jar: each request carries its member's cookie explicitly, as prebookd does.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


async def book(
    http: aiohttp.ClientSession,
    box_url: str,
    email: str | None,
    session_id: str = "106015104",
    day: str = DAY,
    cookie: str | None = None,
) -> dict[str, Any]:
    headers = {"X-Requested-With": "XMLHttpRequest"}
    auth = cookie if cookie is not None else MEMBERS.get(email or "")
    if auth is not None:
        headers["Cookie"] = f"amhrdrauth={auth}; PHPSESSID=abc"
    form = {"id": session_id, "day": day, "insist": "0", "familyId": ""}
    async with http.post(f"{box_url}/api/book", data=form, headers=headers) as response:
        assert response.status == 200
        answer: dict[str, Any] = await response.json()
        return answer


def a_class(capacity: int = 20, opens_at: float = 0.0, session_id: str = "106015104") -> SimClass:
    return SimClass(session_id=session_id, day=DAY, capacity=capacity, opens_at=opens_at)


async def test_before_opening_the_answer_is_not_open_yet(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    sim.add_class("alpha", a_class(opens_at=time.time() + 60))
    answer = await book(http, sim.box_url("alpha"), "m0@example.com")
    assert answer == {
        "clasesContratadas": "WOD",
        "bookState": -12,
        "errorMssg": "No puedes reservar clases con más de 4 días de antelación",
        "errorMssgLang": "ERROR_ANTELACION_CLIENTE",
    }
    assert sim.bookings("alpha", "106015104") == []


async def test_places_go_in_arrival_order_then_the_class_is_full(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    sim.add_class("alpha", a_class(capacity=3))
    emails = list(MEMBERS)[:5]
    answers = [await book(http, sim.box_url("alpha"), email) for email in emails]

    assert [a["bookState"] for a in answers] == [1, 1, 1, -1, -1]
    assert all(a["hasPublicMemberships"] == 1 for a in answers[:3])
    assert len({a["id"] for a in answers[:3]}) == 3, "each booking has its own reservation id"
    assert answers[3]["errorMssgLang"] == "ERROR_CLASE_LLENA"
    assert sim.bookings("alpha", "106015104") == emails[:3]


async def test_a_concurrent_burst_is_won_by_the_first_to_arrive(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    sim.add_class("alpha", a_class(capacity=4))
    emails = list(MEMBERS)
    answers = await asyncio.gather(*(book(http, sim.box_url("alpha"), e) for e in emails))

    assert sorted(a["bookState"] for a in answers) == [-1] * 8 + [1] * 4
    by_arrival = sorted(sim.requests, key=lambda r: r.arrived_at)
    assert [r.seq for r in by_arrival] == list(range(len(emails)))
    assert sim.bookings("alpha", "106015104") == [r.email for r in by_arrival[:4]]
    for recorded in sim.requests:
        assert recorded.arrived_at <= recorded.handled_at
        assert recorded.answer["bookState"] == (1 if recorded.seq < 4 else -1)


async def test_the_same_member_twice_is_already_booked(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    first = await book(http, sim.box_url("alpha"), "m1@example.com")
    again = await book(http, sim.box_url("alpha"), "m1@example.com")
    assert first["bookState"] == 1
    assert again["bookState"] == -12
    assert again["errorMssgLang"] == "NOPUEDESRESERVAMISMAHORA"
    assert sim.bookings("alpha", "106015104") == ["m1@example.com"]


async def test_an_unknown_or_missing_cookie_is_a_logout(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    assert await book(http, sim.box_url("alpha"), None, cookie="stale") == {"logout": 1}
    assert await book(http, sim.box_url("alpha"), None) == {"logout": 1}
    assert [r.email for r in sim.requests] == [None, None]
    assert sim.bookings("alpha", "106015104") == []


async def test_a_booking_without_class_id_is_refused(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    answer = await book(http, sim.box_url("alpha"), "m0@example.com", session_id="")
    assert (answer["bookState"], answer["errorMssgLang"]) == (-12, "ERROR_PARAMETROS")


async def test_two_boxes_on_one_port_are_independent(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    sim.add_box("beta")
    for box in ("alpha", "beta"):
        sim.add_class(box, a_class(capacity=1))
    assert sim.box_url("alpha").rsplit("/", 1)[0] == sim.box_url("beta").rsplit("/", 1)[0]

    assert (await book(http, sim.box_url("alpha"), "m0@example.com"))["bookState"] == 1
    assert (await book(http, sim.box_url("beta"), "m1@example.com"))["bookState"] == 1
    assert (await book(http, sim.box_url("beta"), "m2@example.com"))["bookState"] == -1
    assert sim.bookings("alpha", "106015104") == ["m0@example.com"]
    assert sim.bookings("beta", "106015104") == ["m1@example.com"]
    assert [r.box for r in sim.requests] == ["alpha", "beta", "beta"]

    async with http.post(f"{sim.base_url}/gamma/api/book", data={"id": "1"}) as response:
        assert response.status == 404
        assert "unknown box" in (await response.json())["error"]


async def test_opening_is_judged_by_the_first_byte_not_the_handler(sim: Simulator) -> None:
    """A request that started arriving before the instant is early, however late it ends."""
    opens_at = time.time() + 0.15
    sim.add_class("alpha", a_class(opens_at=opens_at))
    body = f"id=106015104&day={DAY}&insist=0&familyId="
    head = (
        f"POST /alpha/api/book HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Cookie: amhrdrauth={MEMBERS['m0@example.com']}\r\n"
        f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\n"
    )
    host, port = sim.base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head[:20].encode())  # the first bytes before the instant...
        await writer.drain()
        await asyncio.sleep(max(0.0, opens_at - time.time()) + 0.05)
        writer.write((head[20:] + "\r\n" + body).encode())  # ...the rest after it
        early = await _read_json(reader)
        # The next request on the same keep-alive connection gets its own arrival time.
        writer.write((head + "\r\n" + body).encode())
        on_time = await _read_json(reader)
    finally:
        writer.close()
        await writer.wait_closed()

    assert early["errorMssgLang"] == "ERROR_ANTELACION_CLIENTE"
    assert on_time["bookState"] == 1
    first, second = sim.requests
    assert first.arrived_at < opens_at <= first.handled_at
    assert opens_at <= second.arrived_at <= second.handled_at


async def _read_json(reader: asyncio.StreamReader) -> dict[str, Any]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    answer: dict[str, Any] = json.loads(await reader.readexactly(length))
    return answer


async def test_control_endpoints(http: aiohttp.ClientSession) -> None:
    sim = Simulator(default_capacity=5)
    base = await sim.start()
    try:
        for path, payload in [
            ("/_sim/boxes", {"subdomain": "gamma", "box_id": "77"}),
            ("/_sim/members", {"email": "ana@example.com", "auth_cookie": "ana-cookie"}),
            ("/_sim/classes", {"box": "gamma", "session_id": 555, "day": DAY, "capacity": 1}),
        ]:
            async with http.post(base + path, json=payload) as response:
                assert response.status == 200, await response.text()

        assert (await book(http, f"{base}/gamma", None, "555", cookie="ana-cookie"))[
            "bookState"
        ] == 1
        async with http.get(f"{base}/_sim/requests") as response:
            (recorded,) = await response.json()
        assert recorded["seq"] == 0
        assert recorded["arrived_at"] <= recorded["handled_at"]
        assert {
            k: recorded[k] for k in ("box", "method", "path", "email", "session_id", "day")
        } == {
            "box": "gamma",
            "method": "POST",
            "path": "/api/book",
            "email": "ana@example.com",
            "session_id": "555",
            "day": DAY,
        }
        assert recorded["answer"]["bookState"] == 1
        async with http.get(f"{base}/_sim/bookings") as response:
            assert await response.json() == {"gamma": {"555": ["ana@example.com"]}}

        async with http.post(f"{base}/_sim/reset") as response:
            assert response.status == 200
        assert sim.requests == []
        assert sim.bookings("gamma", "555") == []

        async with http.post(f"{base}/_sim/classes", json={"box": "nope", "day": DAY}) as bad:
            assert bad.status == 400
            assert "session_id" in (await bad.json())["error"]
        async with http.post(
            f"{base}/_sim/classes", json={"box": "nope", "session_id": "1", "day": DAY}
        ) as bad:
            assert bad.status == 400
            assert "unknown box" in (await bad.json())["error"]
        assert sim.requests == [], "control requests are not recorded"
    finally:
        await sim.stop()


def test_opens_at_accepts_relative_iso_and_epoch_times() -> None:
    now = 1_800_000_000.0
    assert parse_opens_at("+5s", now) == now + 5
    assert parse_opens_at("+250ms", now) == now + 0.25
    assert parse_opens_at("+2m", now) == now + 120
    assert parse_opens_at("2027-01-15T08:00:00+00:00", now) == 1_800_000_000.0
    assert parse_opens_at(1_800_000_000, now) == 1_800_000_000.0
    with pytest.raises(ValueError, match="offset"):
        parse_opens_at("2027-01-15T09:00:00", now)
    with pytest.raises(ValueError, match="not a time"):
        parse_opens_at("tomorrow", now)


# --- `prebookd simulate` as a real process ---------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _simulate(*args: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "PREBOOKD_LOG_FORMAT": "json"}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "prebookd", "simulate", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip


async def test_prebookd_simulate_serves_and_stops_on_sigterm(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    config = tmp_path / "sim.toml"
    config.write_text(
        '[[boxes]]\nsubdomain = "crossfitx"\nbox_id = "1234"\n\n'
        f'[[classes]]\nbox = "crossfitx"\nsession_id = "42"\nday = "{DAY}"\ncapacity = 1\n'
    )
    port = _free_port()
    proc = await _simulate(
        "--port", str(port), "--config", str(config), "--box", "other",
        "--member", "ana@example.com=ana-cookie", "--member", "bo@example.com=bo-cookie",
    )  # fmt: skip
    try:
        assert proc.stderr is not None  # logs go to stderr
        line = await asyncio.wait_for(proc.stderr.readline(), 10)
        listening = json.loads(line)
        assert listening["event"] == "simulator_listening"
        assert listening["url"] == f"http://127.0.0.1:{port}"
        box_url = listening["boxes"]["crossfitx"]
        assert box_url == f"http://127.0.0.1:{port}/crossfitx"
        assert set(listening["boxes"]) == {"crossfitx", "other"}

        ana = await book(http, box_url, None, "42", cookie="ana-cookie")
        bo = await book(http, box_url, None, "42", cookie="bo-cookie")
        assert (ana["bookState"], bo["bookState"]) == (1, -1)

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
        rest = (await proc.stderr.read()).decode()
        assert [json.loads(x)["event"] for x in rest.splitlines()] == [
            "simulator_stopping",
            "simulator_stopped",
        ]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_prebookd_simulate_refuses_a_bad_config_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "sim.json"
    config.write_text('{"classes": [{"box": "nowhere", "session_id": "1", "day": "2026"}]}')
    proc = await _simulate("--port", str(_free_port()), "--config", str(config))
    _, stderr = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 2
    message = stderr.decode().strip()
    assert message.startswith("prebookd: error: config file")
    assert "day" in message
    assert "\n" not in message
