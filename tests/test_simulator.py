"""The AimHarder simulator, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from prebookd.cli.simulate import parse_opens_at
from prebookd.sim.server import Faults, SimClass, Simulator

DAY = "20261201"
MEMBERS = {f"m{i}@example.com": f"cookie-{i}" for i in range(12)}


@pytest.fixture
async def sim(make_sim: Callable[..., Awaitable[Simulator]]) -> Simulator:
    simulator = await make_sim()
    simulator.add_box("alpha", box_id="1001", name="Alpha Box")
    simulator.add_class("alpha", a_class())  # the class `book` books unless told
    for email, cookie in MEMBERS.items():
        simulator.add_member(email, cookie)
    return simulator


async def book(
    http: aiohttp.ClientSession,
    box_url: str,
    email: str | None,
    session_id: str = "106015104",
    day: str = DAY,
    cookie: str | None = None,
    insist: int = 0,
    family_id: str = "",
) -> dict[str, Any]:
    headers = {"X-Requested-With": "XMLHttpRequest"}
    auth = cookie if cookie is not None else MEMBERS.get(email or "")
    if auth is not None:
        headers["Cookie"] = f"amhrdrauth={auth}; PHPSESSID=abc"
    form = {"id": session_id, "day": day, "insist": str(insist), "familyId": family_id}
    async with http.post(f"{box_url}/api/book", data=form, headers=headers) as response:
        assert response.status == 200
        answer: dict[str, Any] = await response.json()
        return answer


def a_class(
    capacity: int = 20,
    opens_at: float = 0.0,
    session_id: str = "106015104",
    day: str = DAY,
    **extra: Any,
) -> SimClass:
    return SimClass(session_id, day, capacity=capacity, opens_at=opens_at, **extra)


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


async def test_control_classes_take_times_and_days_as_people_write_them(
    http: aiohttp.ClientSession,
) -> None:
    sim = Simulator()
    base = await sim.start()
    try:
        sim.add_box("gamma")
        before = time.time()
        payload = {
            "box": "gamma",
            "session_id": "555",
            "day": "+5d",
            "opens_at": "+60s",
            "starts_at": "2030-12-01T07:00:00+01:00",
        }
        async with http.post(f"{base}/_sim/classes", data=json.dumps(payload)) as response:
            assert response.status == 200, await response.text()
        cls = sim.box("gamma").classes["555"]
        today = datetime.fromtimestamp(before, ZoneInfo("Europe/Madrid")).date()
        assert cls.day == (today + timedelta(days=5)).strftime("%Y%m%d")
        assert before + 60 <= cls.opens_at <= time.time() + 60
        assert cls.starts_at == datetime(2030, 12, 1, 6, tzinfo=UTC).timestamp()
        async with http.post(
            f"{base}/_sim/classes", json={**payload, "day": "2030-12-01", "opens_at": None}
        ) as response:
            assert response.status == 200
        assert sim.box("gamma").classes["555"].day == "20301201"

        for field, bad in [("day", "next week"), ("day", "20301301"), ("opens_at", "soon")]:
            async with http.post(f"{base}/_sim/classes", json={**payload, field: bad}) as answer:
                assert answer.status == 400
                assert field in (await answer.json())["error"]
    finally:
        await sim.stop()


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


# --- classes of a day, waiting lists, limits, cancelling ------------------------------


def cookie_of(email: str | None) -> dict[str, str]:
    return {"Cookie": f"amhrdrauth={MEMBERS[email]}"} if email else {}


async def classes_of_day(
    http: aiohttp.ClientSession, box_url: str, email: str | None, day: str = DAY
) -> dict[str, Any]:
    params = {"day": day, "familyId": "", "box": "1001", "_": str(int(time.time() * 1000))}
    async with http.get(f"{box_url}/api/bookings", params=params, headers=cookie_of(email)) as r:
        assert r.status == 200
        answer: dict[str, Any] = await r.json()
        return answer


async def cancel(
    http: aiohttp.ClientSession, box_url: str, email: str | None, idres: str, late: int = 0
) -> dict[str, Any]:
    form = {"id": idres, "late": str(late), "familyId": ""}
    async with http.post(f"{box_url}/api/cancelBook", data=form, headers=cookie_of(email)) as r:
        assert r.status == 200
        answer: dict[str, Any] = await r.json()
        return answer


async def test_classes_of_a_day_in_aimharders_shape(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    # Added out of time order, plus a class of another day: listed by time, that day only.
    sim.add_class("alpha", a_class(1, session_id="106015105", name="Open Box",
                                   time="18:30 - 19:30", waitlist_capacity=2))  # fmt: skip
    sim.add_class("alpha", a_class(16, class_id=41, coach="Marta"))
    sim.add_class("alpha", a_class(5, session_id="7", day="20261202"))
    url = sim.box_url("alpha")
    booked = await book(http, url, "m0@example.com", "106015104")
    assert (await book(http, url, "m1@example.com", "106015105"))["bookState"] == 1
    waiting = await book(http, url, "m0@example.com", "106015105", insist=1)
    assert waiting["bookState"] == 0

    listing = await classes_of_day(http, url, "m0@example.com")
    same = {"enabled": 1, "boxName": "Alpha Box", "resadmin": 0, "included": 1}
    assert listing == {
        "clasesDisp": "",
        "day": DAY,
        "timetable": [
            {"id": "0700_60", "time": "07:00 - 08:00"},
            {"id": "1830_60", "time": "18:30 - 19:30"},
        ],
        "seminars": [],
        "bookings": [
            {"id": 106015104, "time": "07:00 - 08:00", "timeid": "0700_60", "classId": 41,
             "className": "WOD", "classLength": 60, "bookState": 1,
             "idres": int(booked["id"]), "ocupation": 1, "limit": "16", "limitc": 16,
             "waitlist": 0, "coachName": "Marta", **same},
            {"id": 106015105, "time": "18:30 - 19:30", "timeid": "1830_60", "classId": 1,
             "className": "Open Box", "classLength": 60, "bookState": 0,
             "idres": int(waiting["id"]), "ocupation": 1, "limit": "1", "limitc": 1,
             "waitlist": 1, "coachName": "", **same},
        ],
    }  # fmt: skip
    # Another member sees the same classes with nothing of theirs in them.
    other = await classes_of_day(http, url, "m5@example.com")
    assert [(b["bookState"], b["idres"]) for b in other["bookings"]] == [(None, None)] * 2
    assert (await classes_of_day(http, url, "m5@example.com", "20261203"))["bookings"] == []
    assert await classes_of_day(http, url, None) == {"logout": 1}
    bad_day = f"{url}/api/bookings?day=2026-12-01"
    async with http.get(bad_day, headers=cookie_of("m0@example.com")) as r:
        assert r.status == 400


async def test_a_full_class_fills_its_waiting_list_then_refuses(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    sim.add_class("alpha", a_class(capacity=2, waitlist_capacity=2))
    emails = list(MEMBERS)[:5]
    answers = [await book(http, sim.box_url("alpha"), email, insist=1) for email in emails]

    assert [a["bookState"] for a in answers] == [1, 1, 0, 0, -1]
    assert answers[2] == {"clasesContratadas": "WOD", "bookState": 0, "id": answers[2]["id"]}
    assert answers[4]["errorMssgLang"] == "ERROR_CLASE_LLENA", "the waiting list is full"
    assert sim.bookings("alpha", "106015104") == emails[:2]
    assert sim.waitlist("alpha", "106015104") == emails[2:4]
    again = await book(http, sim.box_url("alpha"), emails[2], insist=1)
    assert again["errorMssgLang"] == "NOPUEDESRESERVAMISMAHORA", "waiting counts as held"


async def test_without_insist_a_full_class_is_full_though_its_waiting_list_has_room(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    sim.add_class("alpha", a_class(capacity=1, waitlist_capacity=5))
    url = sim.box_url("alpha")
    assert (await book(http, url, "m0@example.com"))["bookState"] == 1
    full = await book(http, url, "m1@example.com", insist=0)
    assert (full["bookState"], full["errorMssgLang"]) == (-1, "ERROR_CLASE_LLENA")
    assert sim.waitlist("alpha", "106015104") == [], "insist=0 joins no waiting list"
    assert (await book(http, url, "m1@example.com", insist=1))["bookState"] == 0
    assert sim.waitlist("alpha", "106015104") == ["m1@example.com"]


async def test_a_daily_limit_answers_minus_8_with_max(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    sim.add_box("alpha", box_id="1001", name="Alpha Box", daily_limit=2)
    for sid in ("1", "2", "3"):
        sim.add_class("alpha", a_class(session_id=sid))
    sim.add_class("alpha", a_class(session_id="4", day="20261202"))
    url = sim.box_url("alpha")
    answers = [await book(http, url, "m0@example.com", sid) for sid in ("1", "2", "3")]
    assert [a["bookState"] for a in answers] == [1, 1, -8]
    assert answers[2] == {"clasesContratadas": "WOD", "bookState": -8, "max": 2}
    assert (await book(http, url, "m0@example.com", "4", day="20261202"))["bookState"] == 1
    assert (await book(http, url, "m1@example.com", "3"))["bookState"] == 1, "per member"
    # Cancelling frees a place in the day's count.
    assert (await cancel(http, url, "m0@example.com", answers[0]["id"]))["cancelState"] == 1
    assert (await book(http, url, "m0@example.com", "3"))["bookState"] == 1


async def test_a_member_without_credits_gets_minus_2(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    sim.add_member("poor@example.com", "poor-cookie", no_credits=True)
    answer = await book(http, sim.box_url("alpha"), None, cookie="poor-cookie")
    assert answer["bookState"] == -2
    assert sim.bookings("alpha", "106015104") == []


async def test_cancelling_frees_the_place_for_the_first_waiting(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    sim.add_class("alpha", a_class(capacity=1, waitlist_capacity=3))
    url = sim.box_url("alpha")
    ana_id, bo_id, cy_id = [
        (await book(http, url, f"m{i}@example.com", insist=1))["id"] for i in range(3)
    ]

    assert await cancel(http, url, "m0@example.com", ana_id) == {"cancelState": 1}
    assert sim.bookings("alpha", "106015104") == ["m1@example.com"]
    assert sim.waitlist("alpha", "106015104") == ["m2@example.com"]
    (promoted,) = (await classes_of_day(http, url, "m1@example.com"))["bookings"]
    assert (promoted["bookState"], promoted["idres"]) == (1, int(bo_id)), "same idres"
    # Leaving the waiting list promotes nobody; a cancelled idres is then unknown.
    assert await cancel(http, url, "m2@example.com", cy_id) == {"cancelState": 1}
    assert sim.waitlist("alpha", "106015104") == []
    assert await cancel(http, url, "m2@example.com", cy_id) == {"cancelState": 3}
    assert await cancel(http, url, "m0@example.com", bo_id) == {"cancelState": 3}, "not hers"
    assert await cancel(http, url, "m0@example.com", "123") == {"cancelState": 3}
    assert await cancel(http, url, None, bo_id) == {"logout": 1}
    assert sim.bookings("alpha", "106015104") == ["m1@example.com"]


async def test_a_late_cancel_warns_until_confirmed(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    sim.add_box("alpha", box_id="1001", name="Alpha Box", late_cancel_window=3600)
    sim.add_class("alpha", a_class(starts_at=time.time() + 600))
    sim.add_class("alpha", a_class(session_id="2", starts_at=time.time() + 7200))
    url = sim.box_url("alpha")
    soon = (await book(http, url, "m0@example.com"))["id"]
    later = (await book(http, url, "m0@example.com", "2"))["id"]

    assert await cancel(http, url, "m0@example.com", soon) == {"cancelState": 2}
    assert sim.bookings("alpha", "106015104") == ["m0@example.com"], "not cancelled yet"
    assert await cancel(http, url, "m0@example.com", soon, late=1) == {"cancelState": 1}
    assert sim.bookings("alpha", "106015104") == []
    assert await cancel(http, url, "m0@example.com", later) == {"cancelState": 1}


# --- fault injection ------------------------------------------------------------------


async def raw_book(
    http: aiohttp.ClientSession, box_url: str, email: str, timeout: float = 5.0
) -> tuple[int, str, bytes]:
    """Status, Content-Type and raw body of a booking, however malformed."""
    form = {"id": "106015104", "day": DAY, "insist": "0", "familyId": ""}
    async with http.post(
        f"{box_url}/api/book",
        data=form,
        headers=cookie_of(email),
        timeout=aiohttp.ClientTimeout(total=timeout),
    ) as response:
        return response.status, response.content_type, await response.read()


async def test_forbidden_errors_and_html_are_answered_in_front_of_the_box(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    url = sim.box_url("alpha")
    sim.set_faults("alpha", Faults(forbidden=True))
    status, kind, body = await raw_book(http, url, "m0@example.com")
    assert (status, kind) == (403, "text/html")
    assert b"403 Forbidden" in body

    sim.set_faults("alpha", Faults(error_rate=1.0))
    error_status, kind, _ = await raw_book(http, url, "m0@example.com")
    assert error_status in (500, 502, 503)
    assert kind == "text/html"

    sim.set_faults("alpha", Faults(html_rate=1.0))
    status, kind, body = await raw_book(http, url, "m0@example.com")
    assert (status, kind) == (200, "text/html")
    assert body.startswith(b"<!DOCTYPE html>")

    assert sim.bookings("alpha", "106015104") == [], "none of them reached the box"
    assert [(r.fault, r.status, r.answer) for r in sim.requests] == [
        ("forbidden", 403, {}),
        ("error", error_status, {}),
        ("html", 200, {}),
    ]


async def test_a_reset_closes_the_connection_without_an_answer(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    sim.set_faults("alpha", Faults(reset_rate=1.0))
    with pytest.raises(aiohttp.ClientConnectionError):
        await raw_book(http, sim.box_url("alpha"), "m0@example.com")
    assert sim.bookings("alpha", "106015104") == []
    assert [(r.fault, r.status) for r in sim.requests] == [("reset", 0)]


async def test_a_truncated_answer_is_invalid_json_but_the_booking_happened(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    sim.set_faults("alpha", Faults(truncated_rate=1.0))
    status, kind, body = await raw_book(http, sim.box_url("alpha"), "m0@example.com")
    assert (status, kind) == (200, "application/json")
    with pytest.raises(ValueError):
        json.loads(body)
    assert sim.bookings("alpha", "106015104") == ["m0@example.com"]
    (recorded,) = sim.requests
    assert (recorded.fault, recorded.answer["bookState"]) == ("truncated", 1)


async def test_a_slow_body_outlasts_a_client_timeout_yet_books(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    url = sim.box_url("alpha")
    sim.set_faults("alpha", Faults(slow_body=1.0, slow_body_seconds=30))
    with pytest.raises(asyncio.TimeoutError):
        await raw_book(http, url, "m0@example.com", timeout=0.3)
    assert sim.bookings("alpha", "106015104") == ["m0@example.com"]

    # A patient client gets the whole answer, just late.
    sim.set_faults("alpha", Faults(slow_body=1.0, slow_body_seconds=0.3))
    started = time.monotonic()
    status, _, body = await raw_book(http, url, "m1@example.com")
    assert time.monotonic() - started >= 0.3
    assert (status, json.loads(body)["bookState"]) == (200, 1)
    assert [r.fault for r in sim.requests] == ["slow_body", "slow_body"]


async def test_latency_and_jitter_delay_the_answer_not_the_decision(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    sim.set_faults("alpha", Faults(latency=0.2, jitter=0.1))
    started = time.monotonic()
    assert (await book(http, sim.box_url("alpha"), "m0@example.com"))["bookState"] == 1
    assert 0.2 <= time.monotonic() - started < 0.3 + 0.2
    (recorded,) = sim.requests
    assert recorded.fault is None
    assert recorded.handled_at - recorded.arrived_at < 0.1


async def test_faults_stay_on_their_box(sim: Simulator, http: aiohttp.ClientSession) -> None:
    sim.add_box("beta")
    sim.add_class("beta", a_class())
    sim.set_faults("alpha", Faults(forbidden=True))
    assert (await book(http, sim.box_url("beta"), "m0@example.com"))["bookState"] == 1
    headers = cookie_of("m0@example.com")
    async with http.get(f"{sim.base_url}/api/whoami", headers=headers) as response:
        assert (await response.json())["data"][0]["email"] == "m0@example.com"
    assert [r.fault for r in sim.requests] == [None, None]
    sim.set_faults("alpha", Faults())
    assert (await book(http, sim.box_url("alpha"), "m0@example.com"))["bookState"] == 1


async def _fault_sequence(sim: Simulator, http: aiohttp.ClientSession, n: int) -> list[str | None]:
    for _ in range(n):
        await raw_book(http, sim.box_url("alpha"), "m0@example.com")
    return [r.fault for r in sim.requests[-n:]]


async def test_faults_are_drawn_from_the_seed(http: aiohttp.ClientSession) -> None:
    mixed = Faults(error_rate=0.3, html_rate=0.2, truncated_rate=0.2)
    sequences = []
    for seed in (7, 7, 8):
        sim = Simulator(seed=seed)
        sim.add_box("alpha")
        sim.add_member("m0@example.com", MEMBERS["m0@example.com"])
        sim.set_faults("alpha", mixed)
        await sim.start()
        try:
            first = await _fault_sequence(sim, http, 20)
            sim.reset()  # restarts the sequence
            assert await _fault_sequence(sim, http, 20) == first
        finally:
            await sim.stop()
        sequences.append(first)

    assert sequences[0] == sequences[1], "same seed, same faults"
    assert sequences[0] != sequences[2], "another seed, other faults"
    assert {"error", "html", "truncated", None} == set(sequences[0])


async def test_faults_set_through_the_control_endpoint(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    async with http.post(
        f"{sim.base_url}/_sim/faults", json={"box": "alpha", "forbidden": True}
    ) as r:
        assert r.status == 200
    assert (await raw_book(http, sim.box_url("alpha"), "m0@example.com"))[0] == 403
    for bad in ({"box": "alpha", "error_rate": 0.6, "html_rate": 0.6}, {"box": "nope"},
                {"box": "alpha", "error_rate": 2}, {"box": "alpha", "typo": 1}):  # fmt: skip
        async with http.post(f"{sim.base_url}/_sim/faults", json=bad) as r:
            assert r.status == 400, bad
    async with http.get(f"{sim.base_url}/_sim/requests") as r:
        (recorded,) = await r.json()
    assert (recorded["fault"], recorded["status"]) == ("forbidden", 403)
