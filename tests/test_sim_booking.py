"""What the simulator's box answers to bookings it must refuse (an unknown session id,
a day that is not the session's, someone else's familyId), and the class listing's
optional formats, over real HTTP on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp
import pytest

from prebookd.sim.server import Simulator
from tests.test_simulator import DAY, MEMBERS, a_class, book, classes_of_day

ANA = "m0@example.com"


@pytest.fixture
async def sim(make_sim: Callable[..., Awaitable[Simulator]]) -> Simulator:
    simulator = await make_sim()
    simulator.add_box("alpha", box_id="1001", name="Alpha Box")
    simulator.add_class("alpha", a_class(capacity=2))
    for email, cookie in MEMBERS.items():
        simulator.add_member(email, cookie)
    return simulator


async def test_an_unknown_session_id_is_refused_not_booked(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    answer = await book(http, sim.box_url("alpha"), ANA, session_id="999")
    assert answer == {
        "clasesContratadas": "WOD",
        "bookState": -12,
        "errorMssgLang": "ERROR_CLASE_NO_EXISTE",
        "errorMssg": "La clase que intentas reservar no existe",
    }
    assert "999" not in sim.box("alpha").classes
    (recorded,) = sim.requests
    assert (recorded.session_id, recorded.status, recorded.fault) == ("999", 200, None)
    assert recorded.answer["errorMssgLang"] == "ERROR_CLASE_NO_EXISTE"


async def test_a_session_id_of_another_box_is_unknown_here(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    sim.add_box("beta")
    sim.add_class("beta", a_class(session_id="555"))
    answer = await book(http, sim.box_url("alpha"), ANA, session_id="555")
    assert (answer["bookState"], answer["errorMssgLang"]) == (-12, "ERROR_CLASE_NO_EXISTE")
    assert sim.bookings("beta", "555") == []


async def test_with_ad_hoc_classes_an_unknown_session_id_is_created(
    make_sim: Callable[..., Awaitable[Simulator]], http: aiohttp.ClientSession
) -> None:
    sim = await make_sim(ad_hoc_classes=True, default_capacity=1)
    sim.add_box("alpha")
    for email, cookie in MEMBERS.items():
        sim.add_member(email, cookie)
    two = list(MEMBERS)[:2]
    answers = [await book(http, sim.box_url("alpha"), e, session_id="77") for e in two]
    assert [a["bookState"] for a in answers] == [1, -1], "one place, the default"
    assert sim.box("alpha").classes["77"].day == DAY


async def test_a_day_that_is_not_the_sessions_is_refused(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    answer = await book(http, sim.box_url("alpha"), ANA, day="20261202")
    assert answer == {
        "clasesContratadas": "WOD",
        "bookState": -12,
        "errorMssgLang": "ERROR_FECHA_CLASE",
        "errorMssg": "La fecha no corresponde a la clase",
    }
    assert sim.bookings("alpha", "106015104") == []
    assert (await book(http, sim.box_url("alpha"), ANA))["bookState"] == 1, "the right day"


async def test_a_family_id_must_be_one_of_the_members_family(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    sim.add_member(ANA, MEMBERS[ANA], family_ids=["5501"])
    url = sim.box_url("alpha")
    stranger = await book(http, url, ANA, family_id="9999")
    assert (stranger["bookState"], stranger["errorMssgLang"]) == (-12, "ERROR_FAMILIAR_NO_VALIDO")
    not_hers = await book(http, url, "m1@example.com", family_id="5501")
    assert not_hers["errorMssgLang"] == "ERROR_FAMILIAR_NO_VALIDO", "another member's child"

    # The family member's place is their own: the account holder books one too.
    child = await book(http, url, ANA, family_id="5501")
    assert child["bookState"] == 1
    assert (await book(http, url, ANA))["bookState"] == 1
    assert sim.bookings("alpha", "106015104") == [ANA, ANA]
    assert sim.reservation_id("alpha", "106015104", ANA, "5501") == child["id"]
    again = await book(http, url, ANA, family_id="5501")
    assert again["errorMssgLang"] == "NOPUEDESRESERVAMISMAHORA"

    # The listing with that familyId shows the family member's place.
    params = {"day": DAY, "familyId": "5501"}
    headers = {"Cookie": f"amhrdrauth={MEMBERS[ANA]}"}
    async with http.get(f"{url}/api/bookings", params=params, headers=headers) as response:
        (entry,) = (await response.json())["bookings"]
    assert (entry["bookState"], entry["idres"]) == (1, int(child["id"]))


async def test_the_limit_shows_waiting_places_per_box_or_per_class(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    sim.add_class("alpha", a_class(16, waitlist_capacity=3))
    sim.add_class("alpha", a_class(8, session_id="2", time="09:00 - 10:00", waitlist_capacity=2,
                                   limit_shows_waitlist=False))  # fmt: skip
    url = sim.box_url("alpha")

    def limits(listing: dict[str, object]) -> list[tuple[object, object]]:
        entries = listing["bookings"]
        assert isinstance(entries, list)
        return [(e["limit"], e["limitc"]) for e in entries]

    assert limits(await classes_of_day(http, url, ANA)) == [("16", 16), ("8", 8)]
    sim.add_box("alpha", box_id="1001", name="Alpha Box", limit_shows_waitlist=True)
    assert limits(await classes_of_day(http, url, ANA)) == [("16 (3)", 16), ("8", 8)]


async def test_the_day_can_come_back_as_spanish_text(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    sim.add_box("alpha", box_id="1001", name="Alpha Box", day_as_text=True)
    listing = await classes_of_day(http, sim.box_url("alpha"), ANA)
    assert listing["day"] == "martes, 1 de diciembre"  # 2026-12-01
    assert [b["id"] for b in listing["bookings"]] == [106015104], "the classes of that day"
    (recorded,) = sim.requests
    assert recorded.day == DAY
