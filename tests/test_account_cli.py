"""`prebookd login`, `prebookd classes`, `add --class` and box booking windows, against a
real Postgres and the simulator as AimHarder, both in this process. The commands run
in this process too, as `prebookd.cli.main.main` (tests/cli_support.py: a subprocess
costs about a second to start).

Classes are in 2030 so the tests do not expire; PREBOOKD_MAX_LEAD_DAYS is raised so
that far a lead is allowed.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from prebookd.aimharder.account import fingerprint_for
from prebookd.sim.model import SimClass
from prebookd.sim.server import Simulator
from tests.cli_support import Run, cli

EMAIL = "jane@example.com"
PASSWORD = "correct-Horse-9-battery"
DAY = "20301204"  # a Wednesday; Madrid is on winter time (+01:00) the whole week


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    simulator = Simulator()
    simulator.add_box("alpha", box_id="1001", name="Alpha Box")
    simulator.add_member(EMAIL, "seed-cookie", password=PASSWORD)
    for session_id, start, name in (
        ("106015104", "07:00", "WOD"),
        ("106015105", "08:00", "Halterofilia"),
        ("106015106", "19:00", "WOD"),
    ):
        end = f"{int(start[:2]) + 1:02d}:00"
        simulator.add_class(
            "alpha",
            SimClass(
                session_id, DAY, capacity=16, opens_at=0.0, name=name, time=f"{start} - {end}"
            ),
        )
    await simulator.start()
    try:
        yield simulator
    finally:
        await simulator.stop()


@pytest.fixture
async def box(conn: asyncpg.Connection, sim: Simulator) -> uuid.UUID:
    box_id: uuid.UUID = await conn.fetchval(
        "INSERT INTO boxes (box_id, subdomain, name, base_url, timezone) "
        "VALUES ('1001', 'alpha', 'Alpha Box', $1, 'Europe/Madrid') RETURNING id",
        sim.box_url("alpha"),
    )
    return box_id


async def prebookd(
    dsn: str, sim: Simulator | None, *args: str, stdin: str = "", account: str | None = None
) -> Run:
    """`prebookd ARGS` with the simulator as AimHarder (`account`: another account site),
    in this process (tests/cli_support.py); logging at debug: nothing secret may show
    even there. The simulator is plain http on loopback; never the real AimHarder."""
    aimharder = "http://127.0.0.1:9" if sim is None else (account or sim.base_url)
    return await cli(dsn, *args, stdin=stdin, log_level="debug", aimharder_url=aimharder)


def assert_refused(run: Run, *fragments: str, code: int | None = None) -> None:
    """One line on stderr naming the problem, nothing on stdout, a non-zero exit."""
    assert run.code != 0 and (code is None or run.code == code), run
    assert run.out == "", run
    lines = [line for line in run.err.splitlines() if line.startswith("prebookd: error: ")]
    assert len(lines) == 1, run
    for fragment in fragments:
        assert fragment in lines[0], run


async def sessions(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    return [dict(r) for r in await conn.fetch("SELECT * FROM auth_sessions ORDER BY created_at")]


def logins(sim: Simulator) -> list[Any]:
    return [r for r in sim.requests if r.box == "" and r.path == "/api/login"]


# --- login ---------------------------------------------------------------------------


async def test_login_stores_the_background_session(
    db_dsn: str, conn: asyncpg.Connection, sim: Simulator, box: uuid.UUID
) -> None:
    before = time.time()
    run = await prebookd(
        db_dsn, sim, "login", "--email", "Jane@Example.com", "--box", "alpha",
        stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert run.code == 0, run
    assert "logged in jane@example.com: background session stored" in run.out
    assert "box alpha accepts the session" in run.out
    # The simulator lists the member's boxes (login's userData.roles), as AimHarder does.
    assert "AimHarder says jane@example.com belongs to: alpha" in run.out
    assert len(logins(sim)) == 1 and logins(sim)[0].email == EMAIL
    # The JSON login's cookies are the session: no setrefresh (the older HTML login's).
    assert [r.path for r in sim.requests if r.box == ""] == ["/api/login"]

    (row,) = await sessions(conn)
    assert row["user_email"] == EMAIL
    assert row["fingerprint"] == fingerprint_for(EMAIL)
    assert row["session_type"] == "background"
    assert row["token_update_count"] == 0 and row["last_token_update_error"] is None
    assert row["last_token_update_date"].timestamp() >= before - 1
    # What was stored is a live session: the simulator knows its token and cookie.
    member = sim.member_for_token(row["aimharder_token"])
    assert member is not None and member.email == EMAIL
    cookies = {c["name"]: c["value"] for c in row["aimharder_cookies"]}
    assert set(cookies) == {"amhrdrauth", "AWSALB", "AWSALBCORS", "PHPSESSID"}
    assert sim.member_for_cookie(cookies["amhrdrauth"], time.time()) is member

    # The password went to AimHarder once and nowhere else.
    assert PASSWORD not in run.out + run.err
    dump = json.dumps(await sessions(conn), default=str)
    assert PASSWORD not in dump and row["aimharder_token"] not in run.out + run.err

    # Logging in again updates the same row (upsert on e-mail and fingerprint).
    again = await prebookd(db_dsn, sim, "login", "--email", EMAIL, "--password-stdin",
                           stdin=PASSWORD)  # fmt: skip
    assert again.code == 0 and "background session updated" in again.out, again
    (updated,) = await sessions(conn)
    assert updated["id"] == row["id"] and updated["aimharder_token"] != row["aimharder_token"]


async def test_login_updates_the_web_apps_row_keeping_its_spelling(
    db_dsn: str, conn: asyncpg.Connection, sim: Simulator
) -> None:
    await conn.execute(
        "INSERT INTO auth_sessions (user_email, fingerprint, session_type, aimharder_token, "
        "token_update_count, last_token_update_error) "
        "VALUES ('Jane@Example.com', $1, 'background', 'stale', 41, 'logout')",
        fingerprint_for(EMAIL),
    )
    run = await prebookd(db_dsn, sim, "login", "--email", EMAIL, stdin=PASSWORD)
    assert run.code == 0 and "background session updated" in run.out, run
    (row,) = await sessions(conn)
    assert row["user_email"] == "Jane@Example.com"
    assert row["aimharder_token"] != "stale"
    assert row["token_update_count"] == 0 and row["last_token_update_error"] is None


async def test_wrong_password_is_one_request_and_stores_nothing(
    db_dsn: str, conn: asyncpg.Connection, sim: Simulator
) -> None:
    wrong = "wrong-Password-123"
    run = await prebookd(db_dsn, sim, "login", "--email", EMAIL, stdin=wrong + "\n")
    assert_refused(run, "wrong e-mail or password")
    assert len(logins(sim)) == 1  # never retried: retries lock the account
    assert await sessions(conn) == []
    assert wrong not in run.out + run.err


async def test_login_refusals_before_anything_is_sent(
    db_dsn: str, sim: Simulator, box: uuid.UUID
) -> None:
    empty, bad_email, bad_box = await asyncio.gather(
        prebookd(db_dsn, sim, "login", "--email", EMAIL, stdin="\n"),
        prebookd(db_dsn, sim, "login", "--email", "nope", stdin=PASSWORD),
        prebookd(db_dsn, sim, "login", "--email", EMAIL, "--box", "nope", stdin=PASSWORD),
    )
    assert_refused(empty, "empty password")
    assert_refused(bad_email, "malformed e-mail")
    assert_refused(bad_box, "unknown box 'nope'")
    assert logins(sim) == []


class AccountSite:
    """An account site on loopback whose login answers carry `data.userData.roles` (as
    AimHarder's do; the simulator's do not yet): it passes the login on to the
    simulator, so the session is one the simulator's boxes accept, and adds `roles`.
    Its setrefresh fails, and every path asked is recorded."""

    def __init__(self, sim: Simulator, roles: Any) -> None:
        self.sim, self.roles, self.paths = sim, roles, list[str]()
        self.app = web.Application()
        self.app.router.add_post("/api/login", self._login)
        self.app.router.add_get("/setrefresh", self._setrefresh)
        self.runner = web.AppRunner(self.app)
        self.url = ""

    async def start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    async def _login(self, request: web.Request) -> web.Response:
        self.paths.append(request.path)
        async with (
            aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http,
            http.post(f"{self.sim.base_url}/api/login", data=await request.read()) as answer,
        ):
            body = await answer.json()
            cookies = answer.headers.getall("Set-Cookie", [])
        if answer.status == 200:
            body["data"]["userData"]["roles"] = self.roles
        response = web.json_response(body, status=answer.status)
        for cookie in cookies:
            response.headers.add("Set-Cookie", cookie)
        return response

    async def _setrefresh(self, request: web.Request) -> web.Response:
        self.paths.append(request.path)
        return web.Response(status=500, text="setrefresh is gone")


@pytest.fixture
async def account_site(sim: Simulator) -> AsyncIterator[Callable[[Any], Awaitable[AccountSite]]]:
    sites: list[AccountSite] = []

    async def make(roles: Any) -> AccountSite:
        site = AccountSite(sim, roles)
        await site.start()
        sites.append(site)
        return site

    yield make
    for site in sites:
        await site.runner.cleanup()


async def test_login_says_which_boxes_the_member_belongs_to(
    db_dsn: str,
    conn: asyncpg.Connection,
    sim: Simulator,
    box: uuid.UUID,
    account_site: Callable[[Any], Awaitable[AccountSite]],
) -> None:
    site = await account_site(
        [
            {"boid": 1001, "centre_url": sim.box_url("alpha"), "role": "athlete"},
            {"boid": "2002", "centre_url": "https://beta.aimharder.com"},
        ]
    )
    run = await prebookd(
        db_dsn, sim, "login", "--email", EMAIL, "--box", "alpha", stdin=PASSWORD,
        account=site.url,
    )  # fmt: skip
    assert run.code == 0, run
    assert (
        "AimHarder says jane@example.com belongs to: alpha (box id 1001), "
        "https://beta.aimharder.com (not added) (box id 2002)"
    ) in run.out
    assert "box alpha accepts the session" in run.out
    # No setrefresh after the JSON login: it would have failed here.
    assert site.paths == ["/api/login"]
    (row,) = await sessions(conn)
    assert sim.member_for_token(row["aimharder_token"]) is not None


async def test_login_refuses_a_box_the_member_has_no_role_at(
    db_dsn: str,
    conn: asyncpg.Connection,
    sim: Simulator,
    box: uuid.UUID,
    account_site: Callable[[Any], Awaitable[AccountSite]],
) -> None:
    site = await account_site([{"boid": "2002", "centre_url": "https://beta.aimharder.com"}])
    run = await prebookd(
        db_dsn, sim, "login", "--email", EMAIL, "--box", "alpha", stdin=PASSWORD,
        account=site.url,
    )  # fmt: skip
    assert_refused(
        run, "jane@example.com does not belong to box alpha (box id 1001)",
        "https://beta.aimharder.com (not added) (box id 2002)", "nothing was stored", code=2,
    )  # fmt: skip
    assert await sessions(conn) == []
    assert [r.path for r in sim.requests if r.box == "alpha"] == []
    # Without --box the same member logs in: the box is only named, not required.
    plain = await prebookd(db_dsn, sim, "login", "--email", EMAIL, stdin=PASSWORD, account=site.url)
    assert plain.code == 0 and "belongs to: https://beta.aimharder.com" in plain.out, plain


@pytest.mark.parametrize("roles", [[], {}], ids=["empty list", "empty object"])
async def test_a_login_with_no_box_at_all_fails(
    db_dsn: str,
    conn: asyncpg.Connection,
    sim: Simulator,
    box: uuid.UUID,
    account_site: Callable[[Any], Awaitable[AccountSite]],
    roles: Any,
) -> None:
    """AimHarder's own clients refuse it: "El usuario no tiene ningún box asociado"."""
    site = await account_site(roles)
    run = await prebookd(db_dsn, sim, "login", "--email", EMAIL, stdin=PASSWORD, account=site.url)
    assert_refused(run, "the member belongs to no box", "nothing was stored", code=1)
    assert await sessions(conn) == []
    assert site.paths == ["/api/login"]


async def test_a_box_whose_url_is_not_allowed_is_sent_no_cookie(
    db_dsn: str, conn: asyncpg.Connection, sim: Simulator
) -> None:
    """The web app wrote a base_url on a host PREBOOKD_BOX_HOSTS does not name (the
    simulator as `localhost`: it would see any request)."""
    trap = sim.box_url("alpha").replace("127.0.0.1", "localhost")
    await conn.execute(
        "INSERT INTO boxes (box_id, subdomain, name, base_url, timezone) "
        "VALUES ('1001', 'alpha', 'Alpha Box', $1, 'Europe/Madrid')",
        trap,
    )
    await store_session(conn)
    listing, login, add = await asyncio.gather(
        prebookd(db_dsn, sim, "classes", "--box", "alpha", "--day", DAY, "--email", EMAIL),
        prebookd(db_dsn, sim, "login", "--email", EMAIL, "--box", "alpha", stdin=PASSWORD),
        prebookd(db_dsn, sim, "add", "--email", EMAIL, "--box", "alpha", "--day", DAY,
                 "--class", "07:00 WOD", "--at", "2030-11-30 07:00"),
    )  # fmt: skip
    for run in (listing, login, add):
        assert_refused(
            run, f"box alpha: box base_url {trap} is not allowed",
            "host localhost is not in PREBOOKD_BOX_HOSTS", code=2,
        )  # fmt: skip
    assert sim.requests == []  # not even the login: refused before the password is read


# --- classes -------------------------------------------------------------------------


async def store_session(conn: asyncpg.Connection, cookie: str = "seed-cookie") -> None:
    await conn.execute(
        "INSERT INTO auth_sessions (user_email, fingerprint, session_type, aimharder_token, "
        "aimharder_cookies) VALUES ($1, $2, 'background', 'refresh-seed', $3)",
        EMAIL,
        fingerprint_for(EMAIL),
        [{"name": "amhrdrauth", "value": cookie}, {"name": "PHPSESSID", "value": "p1"}],
    )


async def test_classes_lists_the_day_as_the_member_sees_it(
    db_dsn: str, conn: asyncpg.Connection, sim: Simulator, box: uuid.UUID
) -> None:
    await store_session(conn)
    await conn.execute(
        "UPDATE boxes SET booking_window_kind = 'days', booking_window_length = 4 WHERE id = $1",
        box,
    )
    import aiohttp  # the member books the 08:00 class as the web app would

    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{sim.box_url('alpha')}/api/book",
            data={"id": "106015105", "day": DAY, "insist": "0", "familyId": ""},
            headers={"Cookie": "amhrdrauth=seed-cookie"},
        ) as response,
    ):
        assert (await response.json())["bookState"] == 1

    table, as_json = await asyncio.gather(
        prebookd(db_dsn, sim, "classes", "--box", "alpha", "--day", DAY, "--email", EMAIL),
        prebookd(db_dsn, sim, "classes", "--box", "alpha", "--day", DAY, "--email", EMAIL,
                 "--json"),
    )  # fmt: skip
    assert table.code == 0, table
    header, *lines = table.out.splitlines()
    assert header.split() == [
        "TIME", "CLASS", "SESSION", "ID", "BOOKED", "WAITING", "YOU", "OPENS", "(Europe/Madrid)",
    ]  # fmt: skip
    assert lines[0].split() == [
        "07:00", "-", "08:00", "WOD", "106015104", "0/16", "0", "2030-11-30", "07:00:00+01:00",
    ]  # fmt: skip
    assert lines[1].split()[3:8] == ["Halterofilia", "106015105", "1/16", "0", "booked"]
    listed = json.loads(as_json.out)
    assert [(c["session_id"], c["start"], c["name"], c["booked"]) for c in listed] == [
        ("106015104", "07:00", "WOD", False),
        ("106015105", "08:00", "Halterofilia", True),
        ("106015106", "19:00", "WOD", False),
    ]
    assert listed[1]["reservation_id"] and listed[0]["reservation_id"] is None
    assert listed[0]["opens_at"] == "2030-11-30T06:00:00Z"
    assert all(r.email == EMAIL for r in sim.requests if r.path == "/api/bookings")


async def test_classes_without_a_usable_session(
    db_dsn: str, conn: asyncpg.Connection, sim: Simulator, box: uuid.UUID
) -> None:
    command = ["classes", "--box", "alpha", "--day", DAY, "--email", EMAIL]
    missing = await prebookd(db_dsn, sim, *command)
    assert_refused(missing, "jane@example.com has no background session", "prebookd login")
    await store_session(conn, cookie="unknown-to-aimharder")
    dead = await prebookd(db_dsn, sim, *command)
    assert_refused(dead, "session is dead", "prebookd login --email jane@example.com")


# --- box windows and add --class ---------------------------------------------------------


async def test_box_windows_are_stored_and_shown(
    db_dsn: str, conn: asyncpg.Connection, sim: Simulator
) -> None:
    def box_add(subdomain: str, *extra: str) -> list[str]:
        box_id = str(sum(map(ord, subdomain)))  # a number of its own for each box
        return ["box", "add", "--subdomain", subdomain, "--box-id", box_id, "--name", "B",
                *extra]  # fmt: skip

    runs = await asyncio.gather(
        prebookd(db_dsn, None, *box_add("days", "--window", "4d")),
        prebookd(db_dsn, None, *box_add("hours", "--window", "72h")),
        prebookd(db_dsn, None, *box_add("sameday", "--window", "same-day")),
        prebookd(db_dsn, None, *box_add("nowindow")),
        prebookd(db_dsn, None, *box_add("bad", "--window", "4 weeks")),
    )
    for run in runs[:4]:
        assert run.code == 0, run
    assert "booking opens 4 days before the class" in runs[0].out
    assert_refused(runs[4], "malformed booking window '4 weeks'")

    changed, cleared, unknown = await asyncio.gather(
        prebookd(db_dsn, None, "box", "set-window", "nowindow", "46h"),
        prebookd(db_dsn, None, "box", "set-window", "sameday", "none"),
        prebookd(db_dsn, None, "box", "set-window", "nope", "4d"),
    )
    assert changed.code == 0 and "46 hours before the class" in changed.out, changed
    assert cleared.code == 0 and "cleared" in cleared.out, cleared
    assert_refused(unknown, "unknown box 'nope'")

    stored = {
        r["subdomain"]: (r["booking_window_kind"], r["booking_window_length"])
        for r in await conn.fetch("SELECT * FROM boxes")
    }
    assert stored == {
        "days": ("days", 4),
        "hours": ("hours", 72),
        "sameday": (None, None),
        "nowindow": ("hours", 46),
    }
    table, as_json = await asyncio.gather(
        prebookd(db_dsn, None, "box", "list"), prebookd(db_dsn, None, "box", "list", "--json")
    )
    assert table.out.splitlines()[0].split()[-1] == "WINDOW"
    assert [line.split()[-1] for line in table.out.splitlines()[1:]][:2] == ["4d", "72h"]
    assert {b["subdomain"]: b["booking_window"] for b in json.loads(as_json.out)} == {
        "days": "4d",
        "hours": "72h",
        "nowindow": "46h",
        "sameday": None,
    }


async def added(conn: asyncpg.Connection, run: Run) -> asyncpg.Record:
    assert run.code == 0, run
    row = await conn.fetchrow(
        "SELECT booking_data, available_at FROM prebookings WHERE id = $1",
        uuid.UUID(run.out.strip()),
    )
    assert row is not None
    return row


async def test_add_by_class_name_derives_the_opening_from_the_window(
    db_dsn: str, conn: asyncpg.Connection, sim: Simulator, box: uuid.UUID
) -> None:
    await store_session(conn)
    set_window = await prebookd(db_dsn, None, "box", "set-window", "alpha", "4d")
    assert set_window.code == 0, set_window
    add = ["add", "--email", EMAIL, "--box", "alpha", "--day", DAY]

    by_name, by_id, by_time = await asyncio.gather(
        prebookd(db_dsn, sim, *add, "--class", "07:00 wod"),
        prebookd(db_dsn, sim, *add, "--class-id", "106015105"),  # start from the listing
        prebookd(db_dsn, sim, *add, "--class-id", "106015106", "--class-time", "19:00"),
    )
    first = await added(conn, by_name)
    assert first["booking_data"] == {"day": DAY, "familyId": "", "id": "106015104", "insist": 0}
    # 07:00 Madrid four days before, on winter time: 06:00 UTC.
    assert first["available_at"] == datetime(2030, 11, 30, 6, 0, tzinfo=UTC)
    assert "4 days before the class, class at 07:00" in by_name.err
    second = await added(conn, by_id)
    assert second["available_at"] == datetime(2030, 11, 30, 7, 0, tzinfo=UTC)
    third = await added(conn, by_time)
    assert third["booking_data"]["id"] == "106015106"
    assert third["available_at"] == datetime(2030, 11, 30, 18, 0, tzinfo=UTC)
    # --class-id with --class-time needs no listing: two lookups for three prebookings.
    assert len([r for r in sim.requests if r.path == "/api/bookings"]) == 2

    ambiguous, unknown, missing_id = await asyncio.gather(
        prebookd(db_dsn, sim, *add, "--class", "WOD"),
        prebookd(db_dsn, sim, *add, "--class", "09:00 Yoga"),
        prebookd(db_dsn, sim, *add, "--class-id", "999"),
    )
    assert_refused(
        ambiguous, "'WOD' matches 2 classes", "07:00 WOD (id 106015104)",
        "19:00 WOD (id 106015106)", "--class-id",
    )  # fmt: skip
    assert_refused(unknown, "no class '09:00 Yoga'", "08:00 Halterofilia (id 106015105)")
    assert_refused(missing_id, "no class 999 at alpha on 20301204")


async def test_add_without_at_needs_a_window(
    db_dsn: str, conn: asyncpg.Connection, sim: Simulator, box: uuid.UUID
) -> None:
    add = ["add", "--email", EMAIL, "--box", "alpha", "--day", DAY, "--class-id", "106015104",
           "--class-time", "07:00"]  # fmt: skip
    bare = await prebookd(db_dsn, sim, *add)
    assert_refused(bare, "box 'alpha' has no booking window", "--at", "box set-window alpha")
    assert "AimHarder told" not in bare.err

    # An earlier refusal at this box names the window: it is offered as a suggestion.
    await conn.execute(
        "INSERT INTO prebookings (user_email, box_id, booking_data, available_at, status, "
        "result, executed_at) VALUES ($1, $2, '{}', now(), 'failed', $3, now())",
        EMAIL,
        box,
        {
            "bookState": -12,
            "errorMssg": "No puedes reservar clases con más de 4 días de antelación",
            "errorMssgLang": "ERROR_ANTELACION_CLIENTE",
        },
    )
    hinted = await prebookd(db_dsn, sim, *add)
    assert_refused(hinted, "has no booking window", "suggests `prebookd box set-window alpha 4d`")
    # Nothing was asked of AimHarder to find that out, least of all a booking.
    assert sim.requests == []


async def test_new_commands_have_help() -> None:
    dsn = "postgresql://prebookd@127.0.0.1:9/never"
    login, classes, set_window, add = [
        await cli(dsn, *command, "--help")  # in-process: no database, no AimHarder
        for command in (["login"], ["classes"], ["box", "set-window"], ["add"])
    ]
    assert login.code == 0 and "--password-stdin" in login.out and "never stored" in login.out
    assert classes.code == 0 and "--day" in classes.out and "--json" in classes.out
    assert set_window.code == 0 and "same-day" in set_window.out
    assert add.code == 0 and "--class 'HH:MM NAME'" in add.out and "--class-time" in add.out


async def test_add_without_at_across_a_dst_change_and_for_a_same_day_box(
    db_dsn: str, conn: asyncpg.Connection, sim: Simulator, box: uuid.UUID
) -> None:
    await store_session(conn)
    # Madrid moves to summer time on Sunday 2030-03-31: a 07:00 class on Tuesday
    # 2030-04-02 (+02:00) with a 4-day window opens at 07:00 on Friday 03-29 (+01:00).
    assert (await prebookd(db_dsn, None, "box", "set-window", "alpha", "4d")).code == 0
    across = await prebookd(
        db_dsn, None, "add", "--email", EMAIL, "--box", "alpha", "--day", "20300402",
        "--class-id", "106015104", "--class-time", "07:00",
    )  # fmt: skip
    assert (await added(conn, across))["available_at"] == datetime(2030, 3, 29, 6, 0, tzinfo=UTC)
    # A box that opens booking on the day of the class, at 00:00 local time.
    assert (await prebookd(db_dsn, None, "box", "set-window", "alpha", "same-day")).code == 0
    same_day = await prebookd(
        db_dsn, None, "add", "--email", EMAIL, "--box", "alpha", "--day", "20300402",
        "--class-id", "106015105", "--class-time", "08:00",
    )  # fmt: skip
    opens = (await added(conn, same_day))["available_at"]
    assert opens == datetime(2030, 4, 1, 22, 0, tzinfo=UTC), "00:00 Madrid summer time"


async def test_classes_without_email_uses_a_members_session_and_says_whose(
    db_dsn: str,
    conn: asyncpg.Connection,
    sim: Simulator,
    box: uuid.UUID,
) -> None:
    """Run in this process (tests/cli_support.py): the simulator answers from this loop."""
    bob = "bob@example.com"
    sim.add_member(bob, "bob-cookie")
    await store_session(conn)  # jane's: a session, no prebooking at the box
    await conn.execute(
        "INSERT INTO auth_sessions (user_email, fingerprint, session_type, aimharder_cookies, "
        "updated_at) VALUES ('Bob@Example.com', 'fp-bob', 'background', $1, "
        "now() - interval '1 day')",
        [{"name": "amhrdrauth", "value": "bob-cookie"}],
    )
    await conn.execute(
        "INSERT INTO prebookings (user_email, box_id, booking_data, available_at, status) "
        "VALUES ($1, $2, '{}', now(), 'completed')",
        bob,
        box,
    )
    command = ["classes", "--box", "alpha", "--day", DAY]

    # Bob has a prebooking at the box: his session is the one used, though older.
    as_bob = await cli(db_dsn, *command)
    assert as_bob.code == 0, as_bob
    assert as_bob.err == (
        "classes as bo***@example.com sees them (their background session; --email to choose)\n"
    )
    assert as_bob.out.splitlines()[1].split()[3:5] == ["WOD", "106015104"]
    listings = [r for r in sim.requests if r.path == "/api/bookings"]
    assert [r.email for r in listings] == [bob]

    # His session dead: the next one is used (jane's), and said.
    await conn.execute(
        "UPDATE auth_sessions SET aimharder_cookies = $1 WHERE fingerprint = 'fp-bob'",
        [{"name": "amhrdrauth", "value": "forgotten-by-aimharder"}],
    )
    as_jane = await cli(db_dsn, *command, "--json")
    assert as_jane.code == 0, as_jane
    assert as_jane.err.startswith("classes as ja***@example.com sees them")
    assert [c["session_id"] for c in json.loads(as_jane.out)] == [
        "106015104", "106015105", "106015106",
    ]  # fmt: skip

    await conn.execute("DELETE FROM auth_sessions")
    nobody = await cli(db_dsn, *command)
    assert nobody.code == 2
    assert "no member has a background session to list the classes with" in nobody.error_line
