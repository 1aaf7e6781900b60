"""The simulator's account site (login, setrefresh, tokenUpdate, whoami) and session
ageing, over real HTTP on 127.0.0.1; and `prebookd simulate` with those features."""

from __future__ import annotations

import asyncio
import hashlib
import html
import json
import re
import signal
import time
from collections.abc import Awaitable, Callable
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from prebookd.sim.server import SimClass, Simulator
from tests.test_simulator import _free_port, _simulate

DAY = "20261201"
ANA = "ana@example.com"
FINGERPRINT = hashlib.sha256(ANA.encode()).hexdigest()[:50]


@pytest.fixture
async def sim(make_sim: Callable[..., Awaitable[Simulator]]) -> Simulator:
    simulator = await make_sim(max_login_failures=3, login_lock_time=0.3)
    simulator.add_box("alpha", box_id="1001")
    simulator.add_class("alpha", SimClass("106015104", DAY, capacity=10, opens_at=0.0))
    simulator.add_member(ANA, "ana-cookie", password="s3cret", name="Ana")
    return simulator


async def login(
    http: aiohttp.ClientSession, base: str, password: str, username: str = ANA
) -> tuple[int, dict[str, Any], SimpleCookie]:
    body = {"username": username, "password": password, "fingerprint": FINGERPRINT, "iniframe": 0}
    async with http.post(f"{base}/api/login", json=body) as response:
        cookies = SimpleCookie()
        for header in response.headers.getall("Set-Cookie", []):
            cookies.load(header)
        return response.status, await response.json(), cookies


async def book(http: aiohttp.ClientSession, sim: Simulator, cookie: str) -> dict[str, Any]:
    form = {"id": "106015104", "day": DAY, "insist": "0", "familyId": ""}
    headers = {"Cookie": f"amhrdrauth={cookie}"}
    async with http.post(f"{sim.box_url('alpha')}/api/book", data=form, headers=headers) as r:
        answer: dict[str, Any] = await r.json()
        return answer


async def refresh(http: aiohttp.ClientSession, base: str, token: str) -> tuple[Any, SimpleCookie]:
    form = {"token": token, "ciclo": "1", "fingerprint": FINGERPRINT}
    async with http.post(f"{base}/api/tokenUpdate", data=form) as response:
        assert response.status == 200
        cookies = SimpleCookie()
        for header in response.headers.getall("Set-Cookie", []):
            cookies.load(header)
        return await response.json(), cookies


async def whoami(http: aiohttp.ClientSession, base: str, cookie: str | None) -> Any:
    headers = {"Cookie": f"amhrdrauth={cookie}"} if cookie else {}
    async with http.get(f"{base}/api/whoami", headers=headers) as response:
        assert response.status == 200
        return await response.json()


async def test_login_gives_a_token_and_a_cookie_that_books(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    status, answer, cookies = await login(http, sim.base_url, "s3cret")
    assert status == 200
    token = answer["data"]["auth"]["refreshToken"]
    user = answer["data"]["userData"]
    assert answer == {"data": {"auth": {"authOK": True, "refreshToken": token}, "userData": user}}
    assert (user["email"], user["name"], type(user["id"])) == (ANA, "Ana", int)
    assert set(cookies) == {"amhrdrauth", "AWSALB", "AWSALBCORS", "PHPSESSID"}
    auth = cookies["amhrdrauth"]
    assert (auth["path"], auth["httponly"]) == ("/", True)
    assert auth.value != "ana-cookie", "a new cookie per login"

    assert (await book(http, sim, auth.value))["bookState"] == 1
    assert await whoami(http, sim.base_url, auth.value) == {"data": [user]}
    assert await whoami(http, sim.base_url, None) == {"data": []}
    assert await whoami(http, sim.base_url, "nobody") == {"data": []}
    assert [(r.box, r.path, r.email) for r in sim.requests] == [
        ("", "/api/login", ANA),
        ("alpha", "/api/book", ANA),
        ("", "/api/whoami", ANA),
        ("", "/api/whoami", None),
        ("", "/api/whoami", None),
    ]


async def test_wrong_credentials_and_a_form_body_are_refused(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    wrong = {"error": {"code": 401, "message": "LOGIN_ERROR_LOGIN"}}
    assert (await login(http, sim.base_url, "guess"))[:2] == (401, wrong)
    assert (await login(http, sim.base_url, "s3cret", "bo@example.com"))[:2] == (401, wrong)
    sim.add_member("cookie-only@example.com", "c1")  # no password: cannot log in
    assert (await login(http, sim.base_url, "", "cookie-only@example.com"))[:2] == (401, wrong)

    form = {"username": ANA, "password": "s3cret", "fingerprint": FINGERPRINT, "iniframe": "0"}
    async with http.post(f"{sim.base_url}/api/login", data=form) as response:
        assert response.status == 400
        assert await response.json() == {
            "error": {"code": 400, "message": "LOGIN_ERROR_MALFORMED_BODY"}
        }
        assert "Set-Cookie" not in response.headers


async def test_repeated_failures_lock_the_account_for_a_while(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    for _ in range(3):  # max_login_failures=3
        assert (await login(http, sim.base_url, "guess"))[0] == 401
    status, answer, cookies = await login(http, sim.base_url, "s3cret")
    assert status == 401
    assert "demasiadas veces" in answer["error"]["message"]
    assert not cookies, "locked: the right password gets nothing"

    await asyncio.sleep(0.35)  # login_lock_time=0.3
    assert (await login(http, sim.base_url, "s3cret"))[0] == 200
    # A success clears the count: two more failures do not lock.
    for _ in range(2):
        await login(http, sim.base_url, "guess")
    assert (await login(http, sim.base_url, "s3cret"))[0] == 200


async def test_setrefresh_is_accepted_and_recorded(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    params = {"token": "refresh-ana-cookie", "fingerprint": FINGERPRINT}
    async with http.get(f"{sim.base_url}/setrefresh", params=params) as response:
        assert (response.status, await response.json()) == (200, {})
    (recorded,) = sim.requests
    assert (recorded.box, recorded.path, recorded.email) == ("", "/setrefresh", ANA)


async def test_token_update_rotates_the_token_and_the_new_cookie_books(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    _, answer, _ = await login(http, sim.base_url, "s3cret")
    old = answer["data"]["auth"]["refreshToken"]

    fresh, cookies = await refresh(http, sim.base_url, old)
    new = fresh["newToken"]
    assert new != old
    assert "amhrdrauth" in cookies
    assert await refresh(http, sim.base_url, old) == ({"logout": 1}, SimpleCookie())
    assert (await book(http, sim, cookies["amhrdrauth"].value))["bookState"] == 1
    # The new token refreshes in turn; add_member's default token is refresh-{cookie}.
    assert "newToken" in (await refresh(http, sim.base_url, new))[0]
    assert "newToken" in (await refresh(http, sim.base_url, "refresh-ana-cookie"))[0]
    assert (await refresh(http, sim.base_url, "unknown"))[0] == {"logout": 1}


async def test_a_token_older_than_token_max_age_cannot_be_refreshed(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    sim.token_max_age = 60
    sim.add_member("old@example.com", "old-cookie", token="old-token", issued_at=time.time() - 61)
    sim.add_member("new@example.com", "new-cookie", token="new-token", issued_at=time.time() - 50)
    assert (await refresh(http, sim.base_url, "old-token"))[0] == {"logout": 1}
    assert "newToken" in (await refresh(http, sim.base_url, "new-token"))[0]


async def test_an_aged_session_is_logged_out_on_box_endpoints(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    sim.session_max_age = 60
    sim.add_member("old@example.com", "old-cookie", token="old-token", issued_at=time.time() - 61)
    assert await book(http, sim, "old-cookie") == {"logout": 1}
    listing = f"{sim.box_url('alpha')}/api/bookings?day={DAY}"
    async with http.get(listing, headers={"Cookie": "amhrdrauth=old-cookie"}) as response:
        assert await response.json() == {"logout": 1}
    assert await whoami(http, sim.base_url, "old-cookie") == {"data": []}
    assert (await book(http, sim, "ana-cookie"))["bookState"] == 1, "a young one still books"

    # The token outlives the cookie here (no token_max_age): refreshing revives the session.
    fresh, cookies = await refresh(http, sim.base_url, "old-token")
    assert "newToken" in fresh
    assert (await book(http, sim, cookies["amhrdrauth"].value))["bookState"] == 1
    assert sim.bookings("alpha", "106015104") == [ANA, "old@example.com"]


async def test_members_with_passwords_through_the_control_endpoint(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    member = {"email": "bo@example.com", "password": "pw", "issued_at": time.time()}
    async with http.post(f"{sim.base_url}/_sim/members", json=member) as response:
        assert response.status == 200
    assert (await login(http, sim.base_url, "pw", "bo@example.com"))[0] == 200
    assert sim.members == [ANA, "bo@example.com"]


async def test_prebookd_simulate_with_logins_ageing_waitlist_and_faults(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    config = tmp_path / "sim.toml"
    config.write_text(
        "[settings]\nsession_max_age = 600\nwaitlist = 1\n\n"
        '[[boxes]]\nsubdomain = "open"\ndaily_limit = 5\n\n'
        '[[boxes]]\nsubdomain = "blocked"\n\n'
        f'[[classes]]\nbox = "open"\nsession_id = "42"\nday = "{DAY}"\ncapacity = 1\n\n'
        '[[members]]\nemail = "old@example.com"\nauth_cookie = "old"\nissued_at = "-20m"\n\n'
        '[[faults]]\nbox = "blocked"\nforbidden = true\n'
    )
    port = _free_port()
    proc = await _simulate(
        "--port", str(port), "--config", str(config), "--password", f"{ANA}=pw",
        "--member", "bo@example.com=bo", "--faults", "open:latency=0.01",
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        listening = json.loads(await asyncio.wait_for(proc.stderr.readline(), 10))
        base = listening["url"]
        status, _, cookies = await login(http, base, "pw")
        assert status == 200
        form = {"id": "42", "day": DAY, "insist": "1", "familyId": ""}
        states = []
        for cookie in (cookies["amhrdrauth"].value, "bo", "old"):
            async with http.post(
                f"{base}/open/api/book", data=form, headers={"Cookie": f"amhrdrauth={cookie}"}
            ) as response:
                states.append(await response.json())
        assert [s.get("bookState") for s in states] == [1, 0, None]
        assert states[2] == {"logout": 1}, "issued 20 minutes ago, session_max_age 600 s"
        async with http.post(f"{base}/blocked/api/book", data=form) as response:
            assert response.status == 403
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--faults", "open:error_rate=0.7,html_rate=0.7"], "add up to more than 1"),
        (["--faults", "nowhere:forbidden=true"], "unknown box"),
        (["--faults", "open"], "SUBDOMAIN:KEY=VALUE"),
        (["--password", "ana"], "EMAIL=PASSWORD"),
    ],
)
async def test_prebookd_simulate_refuses_bad_fault_and_password_flags(
    args: list[str], message: str
) -> None:
    proc = await _simulate("--port", str(_free_port()), "--box", "open", *args)
    _, stderr = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 2
    assert message in stderr.decode()


# --- who the member is: roles, whoami; the older HTML login ----------------------------


async def test_login_and_whoami_list_the_boxes_the_member_belongs_to(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    sim.add_box("beta", box_id="2002", name="Beta Box")
    sim.add_member("bo@example.com", "bo-cookie", password="pw", user_id=4242, boxes=["beta"])
    _, answer, cookies = await login(http, sim.base_url, "pw", "bo@example.com")
    user = answer["data"]["userData"]
    assert user["id"] == 4242
    assert user["roles"] == [
        {"boid": 2002, "centre_url": sim.box_url("beta"), "name": "Beta Box", "role": "client"}
    ]
    assert await whoami(http, sim.base_url, cookies["amhrdrauth"].value) == {"data": [user]}

    # Without boxes of their own a member belongs to every box; a role's centre_url is
    # where the client books.
    _, answer, cookies = await login(http, sim.base_url, "s3cret")
    roles = answer["data"]["userData"]["roles"]
    assert [(r["boid"], r["centre_url"]) for r in roles] == [
        (1001, sim.box_url("alpha")),
        (2002, sim.box_url("beta")),
    ]
    form = {"id": "106015104", "day": DAY, "insist": "0", "familyId": ""}
    headers = {"Cookie": f"amhrdrauth={cookies['amhrdrauth'].value}"}
    async with http.post(f"{roles[0]['centre_url']}/api/book", data=form, headers=headers) as r:
        assert (await r.json())["bookState"] == 1


async def html_login(
    http: aiohttp.ClientSession, base: str, password: str, mail: str = ANA
) -> tuple[int, str, str, SimpleCookie]:
    form = {"mail": mail, "pw": password, "login": "Iniciar sesión", "loginiframe": "0",
            "loginfingerprint": FINGERPRINT}  # fmt: skip
    async with http.post(f"{base}/login", data=form) as response:
        cookies = SimpleCookie()
        for header in response.headers.getall("Set-Cookie", []):
            cookies.load(header)
        return response.status, response.content_type, await response.text(), cookies


async def test_the_old_html_login_sets_the_cookie_and_hands_over_a_token(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    status, kind, page, cookies = await html_login(http, sim.base_url, "s3cret")
    assert (status, kind) == (200, "text/html")
    assert set(cookies) == {"amhrdrauth", "AWSALB", "AWSALBCORS", "PHPSESSID"}
    assert "window.location.href" in page and "loginErrors" not in page
    src = re.search(r'<iframe src="([^"]+)"', page)
    assert src is not None
    setrefresh = URL(html.unescape(src.group(1)))
    assert setrefresh.path == "/setrefresh"
    assert setrefresh.query["fingerprint"] == FINGERPRINT

    assert (await book(http, sim, cookies["amhrdrauth"].value))["bookState"] == 1
    fresh, _ = await refresh(http, sim.base_url, setrefresh.query["token"])
    assert "newToken" in fresh, "the iframe's token is a refresh token"
    first = sim.requests[0]
    assert (first.path, first.email, first.status, first.answer) == ("/login", ANA, 200, {})


async def test_the_old_html_login_shows_errors_in_the_page_and_locks_too(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    status, kind, page, cookies = await html_login(http, sim.base_url, "guess")
    assert (status, kind, cookies) == (200, "text/html", SimpleCookie())
    assert 'id="loginErrors"' in page and 'name="pw"' in page, "the form again, with the error"
    for _ in range(2):  # max_login_failures=3, the JSON login's count
        await login(http, sim.base_url, "guess")
    _, _, page, cookies = await html_login(http, sim.base_url, "s3cret")
    assert "demasiadas veces" in page and not cookies

    async with http.get(f"{sim.base_url}/login") as response:
        assert response.status == 200
        assert 'name="login"' in await response.text()
