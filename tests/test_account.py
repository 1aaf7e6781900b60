"""prebookd.aimharder.account: the parsing helpers against plain values, and the client against the
simulator over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from http.cookies import SimpleCookie
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web
from structlog.testing import capture_logs

from prebookd.aimharder.account import (
    MAX_ANSWER_BYTES,
    AccountError,
    LoginFailed,
    Refreshed,
    Role,
    SessionDead,
    SessionExpired,
    cookie_updates,
    fingerprint_for,
    login,
    merge_cookies,
    parse_login_answer,
    parse_refresh_answer,
    parse_roles,
    refresh_token,
    set_refresh,
)
from prebookd.aimharder.classes import ClassInfo, list_classes, parse_classes
from prebookd.errors import PrebookdError
from prebookd.log import configure_logging, forget_secrets
from prebookd.sim.model import Faults, SimClass
from prebookd.sim.server import Simulator

EMAIL = "jane@example.com"
PASSWORD = "s3cret-Pa55word"
DAY = "20301201"
FP = fingerprint_for(EMAIL)


# --- pure helpers --------------------------------------------------------------------


def test_fingerprint_is_the_start_of_the_lower_cased_emails_sha256() -> None:
    assert hashlib.sha256(b"jane@example.com").hexdigest()[:50] == FP
    assert len(FP) == 50 and int(FP, 16) >= 0
    assert fingerprint_for("Jane@Example.COM") == FP
    assert fingerprint_for("john@example.com") != FP


def _body(value: Any) -> bytes:
    return json.dumps(value).encode()


def test_parse_login_answer_ok() -> None:
    answer = {"data": {"auth": {"authOK": True, "refreshToken": "T1"}, "userData": {"id": 7}}}
    assert parse_login_answer(200, _body(answer)) == ("T1", {"id": 7})


@pytest.mark.parametrize(
    ("status", "answer", "error", "message"),
    [
        (401, {"error": {"code": 401, "message": "LOGIN_ERROR_LOGIN"}}, LoginFailed,
         "wrong e-mail or password"),
        (401, {"error": {"code": 401, "message": "Has intentado entrar demasiadas veces"}},
         LoginFailed, "too many failed attempts"),
        (400, {"error": {"code": 400, "message": "LOGIN_ERROR_MALFORMED_BODY"}}, AccountError,
         "LOGIN_ERROR_MALFORMED_BODY"),
        (401, {"error": {"code": 401, "message": "SOMETHING_NEW"}}, LoginFailed, "SOMETHING_NEW"),
        (200, {"data": {"auth": {"authOK": False}}}, LoginFailed, "authOK false"),
        (200, {"data": {"auth": {"authOK": True}}}, AccountError, "no refreshToken"),
        (200, {"data": []}, AccountError, "unexpected answer"),
        (200, [1, 2], AccountError, "unexpected answer"),
        (502, "<html>", AccountError, "HTTP 502"),
        (403, "<html>", AccountError, "HTTP 403"),
    ],
)  # fmt: skip
def test_parse_login_answer_refusals(
    status: int, answer: Any, error: type[Exception], message: str
) -> None:
    raw = answer.encode() if isinstance(answer, str) else _body(answer)
    with pytest.raises(error, match=message) as raised:
        parse_login_answer(status, raw)
    assert isinstance(raised.value, PrebookdError)
    if error is AccountError:
        assert not isinstance(raised.value, LoginFailed)


def test_parse_login_answer_without_json() -> None:
    with pytest.raises(AccountError, match="HTTP 200 without JSON"):
        parse_login_answer(200, b"<html>login</html>")


@pytest.mark.parametrize(
    ("status", "raw", "expected"),
    [
        (200, _body({"newToken": "T2"}), "T2"),
        (200, _body({"logout": 1}), SessionDead),
        (401, b"", SessionDead),
    ],
)
def test_parse_refresh_answer(status: int, raw: bytes, expected: Any) -> None:
    answer = parse_refresh_answer(status, raw)
    if expected is SessionDead:
        assert isinstance(answer, SessionDead) and answer.reason
    else:
        assert answer == expected


@pytest.mark.parametrize(
    ("status", "raw", "message"),
    [
        (200, _body({"newToken": ""}), r"without newToken \(keys: newToken\)"),
        (200, _body({"token": "leak-me"}), r"keys: token\)$"),
        (200, b"<html>", "without JSON"),
        (500, b"oops", "HTTP 500"),
        (404, _body({"error": "no"}), "HTTP 404"),
    ],
)
def test_parse_refresh_answer_garbage(status: int, raw: bytes, message: str) -> None:
    with pytest.raises(AccountError, match=message) as raised:
        parse_refresh_answer(status, raw)
    assert "leak-me" not in str(raised.value)


LISTED = {
    "clasesDisp": "",
    "day": DAY,
    "timetable": [],
    "seminars": [],
    "bookings": [
        {"id": 106015104, "time": "07:00 - 08:00", "className": "WOD", "bookState": None,
         "idres": None, "ocupation": 11, "limit": "16", "limitc": 16, "waitlist": 0},
        {"id": "106015105", "time": "08:00 - 09:00", "className": "Halterofilia",
         "bookState": 1, "idres": 9001, "ocupation": "16", "limit": "16", "waitlist": 2},
        {"id": 106015106, "time": "19:00 - 20:00", "className": "WOD", "bookState": 0,
         "idres": 9002, "ocupation": 20, "limit": "20", "limitc": "", "waitlist": 3},
    ],
}  # fmt: skip


def test_parse_classes() -> None:
    assert parse_classes(200, _body(LISTED)) == [
        ClassInfo("106015104", "07:00 - 08:00", "WOD", 11, 16, 0, False, False, None),
        ClassInfo("106015105", "08:00 - 09:00", "Halterofilia", 16, 16, 2, True, False, "9001"),
        ClassInfo("106015106", "19:00 - 20:00", "WOD", 20, 20, 3, False, True, "9002"),
    ]
    first = parse_classes(200, _body(LISTED))[0]
    assert (first.start, first.label) == ("07:00", "07:00 WOD")
    assert parse_classes(200, _body({"day": DAY, "bookings": []})) == []


@pytest.mark.parametrize(
    ("status", "raw", "error", "message"),
    [
        (200, _body({"logout": 1}), SessionExpired, "session is dead"),
        (401, b"<html>401</html>", SessionExpired, "HTTP 401 .* session is dead"),
        (302, b"", SessionExpired, "HTTP 302 .* session is dead"),
        (200, _body({"day": DAY}), AccountError, "unexpected answer"),
        (200, _body({"bookings": [{"id": 1}]}), AccountError, r"bookings\.0\.time"),
        (200, _body({"bookings": [{"id": 1, "time": "x", "ocupation": "many"}]}),
         AccountError, "ocupation"),
        (200, b"<html>", AccountError, "without JSON"),
        (503, b"", AccountError, "HTTP 503"),
    ],
)  # fmt: skip
def test_parse_classes_refusals(
    status: int, raw: bytes, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        parse_classes(status, raw)


def test_cookie_updates_and_merge() -> None:
    jar: SimpleCookie = SimpleCookie()
    for header in (
        "amhrdrauth=new; Path=/; HttpOnly",
        "PHPSESSID=deleted; Max-Age=0",  # how PHP deletes a cookie
        "AWSALBCORS=x; Max-Age=0",
        "NEWONE=v1",
    ):
        jar.load(header)
    updates = cookie_updates(jar)
    assert updates == [
        ("amhrdrauth", "new"),
        ("PHPSESSID", None),
        ("AWSALBCORS", None),
        ("NEWONE", "v1"),
    ]
    old = [
        {"name": "amhrdrauth", "value": "old"},
        {"name": "AWSALB", "value": "a+b/c=="},
        {"name": "PHPSESSID", "value": "p"},
    ]
    assert merge_cookies(old, updates) == [
        {"name": "amhrdrauth", "value": "new"},  # replaced in place
        {"name": "AWSALB", "value": "a+b/c=="},  # untouched
        {"name": "NEWONE", "value": "v1"},  # added last
    ]
    # A value that would break the Cookie header is not kept.
    assert merge_cookies([], [("bad", "a;b"), ("ok", "1")]) == [{"name": "ok", "value": "1"}]


# --- over HTTP, against the simulator ------------------------------------------------


@pytest.fixture
async def sim(make_sim: Callable[..., Awaitable[Simulator]]) -> Simulator:
    simulator = await make_sim(max_login_failures=3)
    simulator.add_box("alpha", box_id="1001", name="Alpha Box")
    simulator.add_member(EMAIL, "seed-cookie", password=PASSWORD)
    for session_id, hour, name in (("106015104", 7, "WOD"), ("106015105", 8, "Halterofilia")):
        simulator.add_class(
            "alpha",
            SimClass(
                session_id=session_id,
                day=DAY,
                capacity=16,
                opens_at=0.0,
                name=name,
                time=f"{hour:02d}:00 - {hour + 1:02d}:00",
            ),
        )
    return simulator


def account_requests(sim: Simulator, path: str) -> list[Any]:
    return [r for r in sim.requests if r.box == "" and r.path == path]


async def test_login_then_setrefresh_then_listing(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    result = await login(http, sim.base_url, EMAIL, PASSWORD, FP)
    assert result.token
    names = [c["name"] for c in result.cookies]
    assert sorted(names) == sorted(["amhrdrauth", "AWSALB", "AWSALBCORS", "PHPSESSID"])
    assert all(c["value"] for c in result.cookies)
    assert result.user["email"] == EMAIL
    (sent,) = account_requests(sim, "/api/login")
    assert (sent.method, sent.email, sent.status) == ("POST", EMAIL, 200)

    cookies = await set_refresh(http, sim.base_url, result.token, FP, result.cookies)
    assert {c["name"] for c in cookies} >= {"amhrdrauth"}
    (refreshed,) = account_requests(sim, "/setrefresh")
    assert refreshed.email == EMAIL

    listed = await list_classes(http, sim.box_url("alpha"), "1001", DAY, cookies)
    assert [(c.session_id, c.label, c.limit, c.booked) for c in listed] == [
        ("106015104", "07:00 WOD", 16, False),
        ("106015105", "08:00 Halterofilia", 16, False),
    ]


async def test_listing_shows_the_members_own_booking(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    cookies = [{"name": "amhrdrauth", "value": "seed-cookie"}]
    async with http.post(
        f"{sim.box_url('alpha')}/api/book",
        data={"id": "106015105", "day": DAY, "insist": "0", "familyId": ""},
        headers={"Cookie": "amhrdrauth=seed-cookie"},
    ) as response:
        booked = await response.json()
    assert booked["bookState"] == 1

    listed = {c.session_id: c for c in await list_classes(
        http, sim.box_url("alpha"), "1001", DAY, cookies
    )}  # fmt: skip
    assert listed["106015105"].booked and listed["106015105"].occupancy == 1
    assert listed["106015105"].reservation_id == str(booked["id"])
    assert not listed["106015104"].booked and listed["106015104"].reservation_id is None
    (sent,) = [r for r in sim.requests if r.path == "/api/bookings"]
    assert sent.box == "alpha" and sent.email == EMAIL and sent.day == DAY


async def test_wrong_password_is_one_request_and_never_echoed(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    wrong = "not-the-Pa55word"
    with pytest.raises(LoginFailed, match="wrong e-mail or password") as raised:
        await login(http, sim.base_url, EMAIL, wrong, FP)
    assert raised.value.code == "LOGIN_ERROR_LOGIN"
    assert wrong not in str(raised.value) and EMAIL not in str(raised.value)
    assert len(account_requests(sim, "/api/login")) == 1


async def test_repeated_failures_lock_the_account(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    for _ in range(3):
        with pytest.raises(LoginFailed, match="wrong"):
            await login(http, sim.base_url, EMAIL, "wrong", FP)
    with pytest.raises(LoginFailed, match="too many failed attempts") as raised:
        await login(http, sim.base_url, EMAIL, PASSWORD, FP)
    assert PASSWORD not in str(raised.value)
    assert len(account_requests(sim, "/api/login")) == 4


async def test_a_form_body_is_refused_as_malformed(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    # What the login endpoint says to a client of the old (form) flow; prebookd's own
    # login always sends JSON, so the answer is fed to its parser.
    form = {"username": EMAIL, "password": PASSWORD, "fingerprint": FP}
    async with http.post(f"{sim.base_url}/api/login", data=form) as response:
        status, raw = response.status, await response.read()
    with pytest.raises(AccountError, match="LOGIN_ERROR_MALFORMED_BODY") as raised:
        parse_login_answer(status, raw)
    assert not isinstance(raised.value, LoginFailed)


async def test_refresh_gives_a_working_session_and_kills_the_old_token(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    first = await login(http, sim.base_url, EMAIL, PASSWORD, FP)
    refreshed = await refresh_token(http, sim.base_url, first.token, FP, first.cookies)
    assert isinstance(refreshed, Refreshed)
    assert refreshed.token and refreshed.token != first.token
    old, new = dict_of(first.cookies), dict_of(refreshed.cookies)
    assert set(new) == set(old) and new["amhrdrauth"] != old["amhrdrauth"]
    (sent,) = account_requests(sim, "/api/tokenUpdate")
    assert (sent.method, sent.email) == ("POST", EMAIL)

    listed = await list_classes(http, sim.box_url("alpha"), "1001", DAY, refreshed.cookies)
    assert len(listed) == 2
    # The token used for the refresh is spent: using it again ends the session.
    dead = await refresh_token(http, sim.base_url, first.token, FP, first.cookies)
    assert isinstance(dead, SessionDead) and "logout" in dead.reason


async def test_an_old_session_is_dead_everywhere(http: aiohttp.ClientSession) -> None:
    sim = Simulator(session_max_age=60, token_max_age=60)
    sim.add_box("alpha", box_id="1001")
    sim.add_member(EMAIL, "old-cookie", token="old-token", issued_at=time.time() - 3600)
    await sim.start()
    try:
        cookies = [{"name": "amhrdrauth", "value": "old-cookie"}]
        dead = await refresh_token(http, sim.base_url, "old-token", FP, cookies)
        assert isinstance(dead, SessionDead)
        with pytest.raises(SessionExpired, match="log in again"):
            await list_classes(http, sim.box_url("alpha"), "1001", DAY, cookies)
    finally:
        await sim.stop()


@pytest.mark.parametrize(
    ("faults", "message"),
    [
        (Faults(error_rate=1.0), r"HTTP 5\d\d"),
        (Faults(forbidden=True), "HTTP 403"),
        (Faults(html_rate=1.0), "without JSON"),
    ],
)
async def test_listing_faults_are_account_errors(
    sim: Simulator, http: aiohttp.ClientSession, faults: Faults, message: str
) -> None:
    sim.set_faults("alpha", faults)
    cookies = [{"name": "amhrdrauth", "value": "seed-cookie"}]
    with pytest.raises(AccountError, match=message):
        await list_classes(http, sim.box_url("alpha"), "1001", DAY, cookies)


async def test_unreachable_account_site(http: aiohttp.ClientSession) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    with pytest.raises(AccountError, match="login: cannot reach") as raised:
        await login(http, url, EMAIL, PASSWORD, FP)
    assert PASSWORD not in str(raised.value)
    with pytest.raises(AccountError, match="token refresh: cannot reach"):
        await refresh_token(http, url, "secret-token", FP, [])


def dict_of(cookies: list[dict[str, str]]) -> dict[str, str]:
    return {c["name"]: c["value"] for c in cookies}


# --- the login answer's roles --------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "roles"),
    [
        ({"id": 7}, None),  # not said: nothing to check against
        ({"roles": None}, None),
        ({"roles": "athlete"}, None),
        ({"roles": [{"role": "athlete"}, 3]}, None),  # none readable
        (
            {"roles": [{"boid": 1001, "centre_url": "https://alpha.aimharder.com"},
                       {"boid": "2002"}, {"boid": True}, {"boid": ""}, "x"]},
            (Role("1001", "https://alpha.aimharder.com"), Role("2002", "")),
        ),
        # PHP writes an array whose keys have gaps as an object.
        ({"roles": {"0": {"boid": 7, "centre_url": "https://b.aimharder.es"}}},
         (Role("7", "https://b.aimharder.es"),)),
    ],
)  # fmt: skip
def test_parse_roles(user: dict[str, Any], roles: Any) -> None:
    assert parse_roles(user) == roles


@pytest.mark.parametrize("roles", [[], {}])
def test_a_member_of_no_box_is_refused(roles: Any) -> None:
    with pytest.raises(LoginFailed, match="belongs to no box"):
        parse_roles({"id": 7, "roles": roles})


async def test_setrefresh_failing_leaves_the_session_as_it_was(
    http: aiohttp.ClientSession,
) -> None:
    """No JSON client calls it; if anything does and it fails, the login stands."""
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    cookies = [{"name": "amhrdrauth", "value": "kept"}]
    with capture_logs() as logs:
        assert await set_refresh(http, url, "secret-token", FP, cookies) == cookies
    (warning,) = [e for e in logs if e["event"] == "account_setrefresh_failed"]
    assert "secret-token" not in str(warning)


# --- class listings as boxes write them --------------------------------------------


def entry(**fields: Any) -> dict[str, Any]:
    return {"id": 106015104, "time": "07:00 - 08:00", "className": "WOD", "ocupation": 11,
            **fields}  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "limit", "booked", "waitlisted"),
    [
        ({"limit": "16 (3)"}, 16, False, False),  # places (waiting-list places)
        ({"limit": "16 (3)", "limitc": "16 (3)"}, 16, False, False),
        ({"limit": " 20"}, 20, False, False),
        ({"limit": "sin límite"}, 0, False, False),
        ({"limit": None, "limitc": None}, 0, False, False),
        ({"limit": [16]}, 0, False, False),
        ({"bookState": None}, 0, False, False),
        ({"bookState": "null"}, 0, False, False),
        ({"bookState": "nan"}, 0, False, False),
        ({"bookState": {"x": 1}}, 0, False, False),
        ({"bookState": 1, "idres": 9001}, 0, True, False),
        ({"bookState": "1", "idres": "9001"}, 0, True, False),
        ({"bookState": 1.0, "idres": 9001}, 0, True, False),
        ({"bookState": 0, "idres": 9002}, 0, False, True),
        ({"bookState": "0", "idres": ""}, 0, False, False),
        ({"bookState": 0, "idres": None}, 0, False, False),
        ({"day": "martes, 1 de diciembre"}, 0, False, False),
        ({"ocupation": None, "waitlist": None}, 0, False, False),
    ],
)
def test_a_listing_as_boxes_write_it(
    fields: dict[str, Any], limit: int, booked: bool, waitlisted: bool
) -> None:
    answer = {"day": "martes, 1 de diciembre", "bookings": [entry(**fields)]}
    (listed,) = parse_classes(200, _body(answer))
    assert (listed.session_id, listed.label) == ("106015104", "07:00 WOD")
    assert (listed.limit, listed.booked, listed.waitlisted) == (limit, booked, waitlisted)
    assert listed.reservation_id in (None, "9001", "9002")


def test_json_nested_too_deep_is_a_bad_answer() -> None:
    deep = b'{"bookings": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(AccountError, match=r"class listing: .* nested too deeply"):
        parse_classes(200, deep)
    with pytest.raises(AccountError, match=r"login: .* nested too deeply"):
        parse_login_answer(200, deep)
    with pytest.raises(AccountError, match=r"token refresh: .* nested too deeply"):
        parse_refresh_answer(200, deep)


@pytest.fixture
async def slow_box() -> AsyncIterator[dict[str, Any]]:
    """A box on loopback whose listing arrives in two parts, 0.2 s apart (how a 78 kB
    listing came from AimHarder), chunked or with a Content-Length."""
    served: dict[str, Any] = {"body": b"", "chunked": True}

    async def listing(request: web.Request) -> web.StreamResponse:
        body: bytes = served["body"]
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        if not served["chunked"]:
            response.content_length = len(body)
        await response.prepare(request)
        half = len(body) // 2
        await response.write(body[:half])
        await asyncio.sleep(0.2)
        await response.write(body[half:])
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/alpha/api/bookings", listing)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    served["url"] = f"http://127.0.0.1:{runner.addresses[0][1]}/alpha"
    try:
        yield served
    finally:
        await runner.cleanup()


def big_listing(count: int) -> bytes:
    bookings = [
        entry(id=106_000_000 + n, time=f"{n % 24:02d}:00 - {n % 24:02d}:59",
              className=f"WOD {n} " + "x" * 150, limit="16 (3)", coachName="Coach " * 10)
        for n in range(count)
    ]  # fmt: skip
    return _body({"day": DAY, "timetable": [], "bookings": bookings})


@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
async def test_a_listing_in_several_reads_is_read_whole(
    slow_box: dict[str, Any], http: aiohttp.ClientSession, chunked: bool
) -> None:
    slow_box.update(body=big_listing(250), chunked=chunked)
    assert 70_000 < len(slow_box["body"]) < 90_000
    listed = await list_classes(http, slow_box["url"], "1001", DAY, [])
    assert len(listed) == 250
    assert listed[-1].session_id == "106000249" and listed[-1].limit == 16


async def test_an_endless_answer_is_refused(
    slow_box: dict[str, Any], http: aiohttp.ClientSession
) -> None:
    slow_box.update(body=b" " * (MAX_ANSWER_BYTES + 1))
    with pytest.raises(AccountError, match=r"class listing: .* answered more than 2 MiB"):
        await list_classes(http, slow_box["url"], "1001", DAY, [])


# --- what passes through is never logged ---------------------------------------------


@pytest.fixture
def rendered_logs(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[[], str]]:
    configure_logging("debug", "console")
    try:
        yield lambda: capsys.readouterr().err
    finally:
        structlog.reset_defaults()
        forget_secrets()


async def test_a_sessions_secrets_are_masked_wherever_they_show_up(
    sim: Simulator, http: aiohttp.ClientSession, rendered_logs: Callable[[], str]
) -> None:
    first = await login(http, sim.base_url, EMAIL, PASSWORD, FP)
    renewed = await refresh_token(http, sim.base_url, first.token, FP, first.cookies)
    assert isinstance(renewed, Refreshed)
    secrets = [first.token, renewed.token, PASSWORD]
    secrets += [c["value"] for c in (*first.cookies, *renewed.cookies)]
    log = structlog.get_logger("test")
    for secret in secrets:
        # Where no key or pattern says it is a secret: only its value gives it away.
        log.warning("odd_answer", url=f"{sim.base_url}/x?state={secret}", note=f"<{secret}>")
        log.warning(f"{secret} in the event name", detail=ValueError(secret))
    out = rendered_logs()
    assert out.count("odd_answer") == len(secrets)
    for secret in secrets:
        assert secret not in out
