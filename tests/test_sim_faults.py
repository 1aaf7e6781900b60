"""The simulator's faults that answer like AimHarder refusing or blocking a client (a
box rule's errorMssg, an unlisted -12, 401, a redirect to the login page, 429) and a
box whose clock is behind ours, over real HTTP on 127.0.0.1, as a client sees them."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from prebookd.sim.server import Faults, Simulator
from tests.test_simulator import (
    DAY,
    MEMBERS,
    _free_port,
    _simulate,
    a_class,
    book,
    classes_of_day,
    cookie_of,
    raw_book,
)

ANA = "m0@example.com"
SESSION = "106015104"


@pytest.fixture
async def sim(make_sim: Callable[..., Awaitable[Simulator]]) -> Simulator:
    simulator = await make_sim()
    simulator.add_box("alpha", box_id="1001")
    simulator.add_class("alpha", a_class())
    for email, cookie in MEMBERS.items():
        simulator.add_member(email, cookie)
    return simulator


def log(sim: Simulator) -> list[tuple[str, str | None, int]]:
    return [(r.path, r.fault, r.status) for r in sim.requests]


async def test_a_box_rule_refuses_with_an_error_message_and_no_book_state(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    message = "No puedes reservar: penalización por no asistir"
    sim.set_faults("alpha", Faults(refusal_rate=1.0, refusal_message=message))
    assert await book(http, sim.box_url("alpha"), ANA) == {"errorMssg": message}
    assert sim.bookings("alpha", SESSION) == []
    # Only bookings are refused: the listing answers as ever, and records no fault.
    assert (await classes_of_day(http, sim.box_url("alpha"), ANA))["bookings"]
    assert log(sim) == [("/api/book", "refusal", 200), ("/api/bookings", None, 200)]
    assert sim.requests[0].answer == {"errorMssg": message}


async def test_a_dead_session_is_a_logout_even_when_a_refusal_is_drawn(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    sim.set_faults("alpha", Faults(refusal_rate=1.0))
    assert await book(http, sim.box_url("alpha"), None, cookie="stale") == {"logout": 1}
    assert log(sim) == [("/api/book", None, 200)]


async def test_an_unlisted_minus_12_code(sim: Simulator, http: aiohttp.ClientSession) -> None:
    sim.set_faults("alpha", Faults(unlisted_rate=1.0))
    answer = await book(http, sim.box_url("alpha"), ANA)
    assert answer == {
        "bookState": -12,
        "errorMssgLang": "ERROR_RESERVA_NO_DISPONIBLE",
        "errorMssg": "Esta reserva no está disponible en este momento",
    }
    assert sim.bookings("alpha", SESSION) == []
    assert log(sim) == [("/api/book", "unlisted", 200)]


@pytest.mark.parametrize(
    ("faults", "fault", "status"),
    [
        (Faults(unauthorized_rate=1.0), "unauthorized", 401),
        (Faults(throttled_rate=1.0), "throttled", 429),
        (Faults(forbidden=True), "forbidden", 403),
    ],
)
async def test_http_refusals_answer_an_html_page(
    sim: Simulator, http: aiohttp.ClientSession, faults: Faults, fault: str, status: int
) -> None:
    sim.set_faults("alpha", faults)
    got, kind, body = await raw_book(http, sim.box_url("alpha"), ANA)
    assert (got, kind) == (status, "text/html")
    assert body.startswith(b"<!DOCTYPE html>") and str(status).encode() in body
    assert sim.bookings("alpha", SESSION) == [], "answered in front of the box"
    assert [(r.fault, r.status, r.answer) for r in sim.requests] == [(fault, status, {})]


async def test_a_redirect_to_the_login_page(sim: Simulator, http: aiohttp.ClientSession) -> None:
    sim.set_faults("alpha", Faults(login_redirect_rate=1.0))
    form = {"id": SESSION, "day": DAY, "insist": "0", "familyId": ""}
    url = f"{sim.box_url('alpha')}/api/book"
    headers = cookie_of(ANA)
    async with http.post(url, data=form, headers=headers, allow_redirects=False) as response:
        assert response.status == 302
        assert response.headers["Location"] == f"{sim.base_url}/login"
    # A client that follows it lands on the old login form: HTTP 200, HTML.
    async with http.post(url, data=form, headers=headers) as response:
        assert (response.status, response.content_type) == (200, "text/html")
        assert 'name="mail"' in await response.text()
    assert sim.bookings("alpha", SESSION) == []
    assert log(sim) == [
        ("/api/book", "login_redirect", 302),
        ("/api/book", "login_redirect", 302),
        ("/login", None, 200),
    ]


async def test_a_clock_behind_ours_opens_booking_that_much_later(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    opens_at = time.time() + 0.1
    sim.add_class("alpha", a_class(opens_at=opens_at))
    sim.set_faults("alpha", Faults(clock_behind_ms=250))
    url = sim.box_url("alpha")
    early = await book(http, url, ANA)  # not open by either clock
    await asyncio.sleep(max(0.0, opens_at + 0.05 - time.time()))
    behind = await book(http, url, ANA)  # open by ours, not by the box's
    await asyncio.sleep(max(0.0, opens_at + 0.3 - time.time()))
    booked = await book(http, url, ANA)

    assert early == behind
    assert (behind["bookState"], behind["errorMssgLang"]) == (-12, "ERROR_ANTELACION_CLIENTE")
    assert booked["bookState"] == 1
    assert [r.fault for r in sim.requests] == [None, "clock_behind", None]


@pytest.mark.parametrize("code", ["ERROR_ANTELACION_CLIENTE_HORAS", "ERROR_RESERVA_NO_DISPONIBLE"])
async def test_not_open_yet_can_carry_another_code(
    sim: Simulator, http: aiohttp.ClientSession, code: str
) -> None:
    sim.add_class("alpha", a_class(opens_at=time.time() + 60))
    sim.set_faults("alpha", Faults(not_open_code=code))
    answer = await book(http, sim.box_url("alpha"), ANA)
    assert (answer["bookState"], answer["errorMssgLang"]) == (-12, code)
    assert sim.bookings("alpha", SESSION) == []


def test_an_unknown_not_open_code_is_refused() -> None:
    with pytest.raises(ValueError, match="not_open_code"):
        Faults(not_open_code="ERROR_INVENTADO")
    with pytest.raises(ValueError, match="add up to more than 1"):
        Faults(refusal_rate=0.6, throttled_rate=0.6)


async def test_the_new_faults_through_the_control_endpoint(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    code = "ERROR_RESERVA_NO_DISPONIBLE"
    faults = {"box": "alpha", "unlisted_rate": 1, "clock_behind_ms": 5, "not_open_code": code}
    async with http.post(f"{sim.base_url}/_sim/faults", json=faults) as response:
        assert response.status == 200
    assert sim.box("alpha").faults == Faults(
        unlisted_rate=1.0, clock_behind_ms=5, not_open_code=code
    )
    for bad in ({"box": "alpha", "not_open_code": "NOPE"}, {"box": "alpha", "throttled_rate": 2},
                {"box": "alpha", "clock_behind_ms": -1}):  # fmt: skip
        async with http.post(f"{sim.base_url}/_sim/faults", json=bad) as response:
            assert response.status == 400, bad


async def test_prebookd_simulate_takes_the_new_knobs_from_its_config(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    config = tmp_path / "sim.toml"
    config.write_text(
        '[[boxes]]\nsubdomain = "late"\nbox_id = "7"\nlimit_shows_waitlist = true\n'
        "day_as_text = true\n\n"
        f'[[classes]]\nbox = "late"\nsession_id = "42"\nday = "{DAY}"\nopens_at = "-1s"\n'
        "waitlist_capacity = 2\n\n"
        '[[members]]\nemail = "ana@example.com"\nauth_cookie = "ana"\nfamily_ids = ["5"]\n\n'
        '[[faults]]\nbox = "late"\nclock_behind_ms = 60000\n'
        'not_open_code = "ERROR_RESERVA_NO_DISPONIBLE"\n'
    )
    proc = await _simulate("--port", str(_free_port()), "--config", str(config), "--ad-hoc-classes")
    try:
        assert proc.stderr is not None
        box_url = json.loads(await asyncio.wait_for(proc.stderr.readline(), 10))["boxes"]["late"]
        answer = await book(http, box_url, None, "42", cookie="ana", family_id="5")
        assert answer["errorMssgLang"] == "ERROR_RESERVA_NO_DISPONIBLE", "the box's clock"
        headers = {"Cookie": "amhrdrauth=ana"}
        async with http.get(f"{box_url}/api/bookings?day={DAY}", headers=headers) as response:
            listing = await response.json()
        assert listing["day"] == "martes, 1 de diciembre"
        assert listing["bookings"][0]["limit"] == "20 (2)"
        ad_hoc = await book(http, box_url, None, "43", cookie="ana")
        assert ad_hoc["bookState"] == 1, "--ad-hoc-classes: an unknown id is created, open"
    finally:
        proc.terminate()
        await proc.wait()
