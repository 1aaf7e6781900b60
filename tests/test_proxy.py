"""Bookings through a proxy (PREBOOKD_PROXY_URL, a box's own `box set --proxy`): an
HTTP and a SOCKS5 proxy on loopback (tests/proxies.py) carry staged requests to the
simulator. Connections and tunnels through them open at staging, the booking's bytes
leave at the instant, and the proxy's password is never shown."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from pathlib import Path

import asyncpg
import pytest

from prebookd.aimharder.client import AimHarderClient, Attempt
from prebookd.aimharder.proxy import ProxiedSessions
from prebookd.daemon.listings import ListingRead, read_listing
from prebookd.db.connection import create_pool
from prebookd.errors import BadRow, ConfigError
from prebookd.models import Booking, build_booking
from prebookd.settings import Settings, load_settings
from prebookd.sim.server import SimClass, Simulator
from tests.proxies import ForwardProxy, running_proxy
from tests.support import (
    add_box,
    add_member,
    add_prebooking,
    daemon_env,
    open_class,
    run_prebookd,
    running_daemon,
    wait_rows_final,
)
from tests.test_staging_wire import until

SECRET = "pr0xy-s3cret-pw"  # long enough to be masked in logs too
DAY = "20301201"


def booking_at(sim: Simulator, box: str, proxy_url: str | None = None) -> Booking:
    sim.add_member(f"m@{box}.es", f"cookie-{box}")
    return build_booking(
        {
            "id": uuid.uuid4(),
            "user_email": f"m@{box}.es",
            "box_id": uuid.uuid4(),
            "booking_data": {"day": DAY, "familyId": "", "id": "1", "insist": 0},
            "available_at": dt.datetime(2030, 11, 27, 6, tzinfo=dt.UTC),
            "created_at": dt.datetime(2030, 11, 1, tzinfo=dt.UTC),
            "box_found": True,
            "subdomain": box,
            "base_url": sim.box_url(box),
            "proxy_url": proxy_url,
            "session_found": True,
            "aimharder_cookies": [{"name": "amhrdrauth", "value": f"cookie-{box}"}],
        },
        allowed_hosts=("127.0.0.1",),
    )


def sim_port(sim: Simulator) -> int:
    return int(sim.base_url.rsplit(":", 1)[1])


def before_and_after(proxy: ForwardProxy, instant: float) -> tuple[set[str], bytes]:
    """The kinds of event the proxy saw before `instant`, and the bytes after it."""
    before = {e.kind for e in proxy.events if e.at < instant}
    return before, b"".join(e.data for e in proxy.events if e.kind == "bytes" and e.at >= instant)


async def test_staged_bookings_go_through_the_global_and_the_boxs_own_proxy(
    make_sim: ..., tmp_path: Path
) -> None:
    sim: Simulator = await make_sim()
    for box in ("alpha", "beta"):
        sim.add_box(box, "1")
        sim.add_class(box, SimClass("1", DAY, capacity=5, opens_at=0.0))
    async with (
        running_proxy("ana", SECRET) as http_proxy,
        running_proxy("bea", SECRET) as socks_proxy,
    ):
        client = AimHarderClient(
            limit=10, limit_per_host=10, request_timeout=5, proxy_url=http_proxy.url("http")
        )
        await client.start()
        try:
            gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            attempts = [Attempt(gate, not_before=time.time()) for _ in range(2)]
            bookings = [
                booking_at(sim, "alpha"),  # the global proxy
                booking_at(sim, "beta", socks_proxy.url("socks5")),  # its own wins
            ]
            tasks = [
                asyncio.create_task(client.book(b, a))
                for b, a in zip(bookings, attempts, strict=True)
            ]
            await until(lambda: all(a.parked for a in attempts), "both staged")
            await asyncio.sleep(0.1)
            instant = time.time()
            gate.set_result(None)
            exchanges = await asyncio.gather(*tasks)
        finally:
            await client.close()

    assert [e.outcome.code for e in exchanges] == ["booked", "booked"]
    assert sim.bookings("alpha", "1") == ["m@alpha.es"]
    assert sim.bookings("beta", "1") == ["m@beta.es"]
    # HTTP proxy, plain-http box: the connection to it was opened at staging; the
    # request itself (absolute form) came at the instant, on that connection.
    before, after = before_and_after(http_proxy, instant)
    assert before == {"accept"}
    assert after.startswith(b"POST http://127.0.0.1:")
    assert after.split(b"\r\n")[0].endswith(b"/alpha/api/book HTTP/1.1")
    assert after.endswith(b"\r\n\r\nid=1&day=20301201&insist=0&familyId=")
    # SOCKS5: the tunnel was opened at staging; the booking's bytes came through it later.
    before, after = before_and_after(socks_proxy, instant)
    assert before == {"accept", "tunnel"}
    assert after.startswith(b"POST /beta/api/book HTTP/1.1")
    assert after.endswith(b"\r\n\r\nid=1&day=20301201&insist=0&familyId=")
    for proxy in (http_proxy, socks_proxy):
        assert len(proxy.of_kind("accept")) == 1, "no new connection at the instant"
        assert proxy.refused == 0
    assert all(r.arrived_at >= instant for r in sim.requests)


async def test_a_wrong_proxy_password_is_a_failed_booking_not_a_hang(make_sim: ...) -> None:
    sim: Simulator = await make_sim()
    sim.add_box("alpha", "1")
    sim.add_class("alpha", SimClass("1", DAY, capacity=5, opens_at=0.0))
    async with running_proxy("ana", SECRET) as proxy:
        wrong = proxy.url("socks5").replace(SECRET, "not-it")
        client = AimHarderClient(limit=2, limit_per_host=2, request_timeout=5, proxy_url=wrong)
        await client.start()
        try:
            exchange = await client.book(booking_at(sim, "alpha"), Attempt(None, time.time()))
        finally:
            await client.close()
    assert exchange.outcome.code == "transport_error"  # retried inside the window, then failed
    assert "socks5 proxy refused" in exchange.outcome.reason
    assert SECRET not in exchange.outcome.reason and "not-it" not in exchange.outcome.reason
    assert exchange.written_at is None and sim.requests == []
    assert proxy.refused == 1


def test_a_bad_proxy_url_is_a_settings_error_that_keeps_the_password() -> None:
    for url, said in [
        (f"ftp://u:{SECRET}@proxy:21", "must be an http://, https:// or socks5:// URL"),
        (f"socks5://u:{SECRET}@proxy", "host:port"),
        (f"http://u:{SECRET}@proxy:99999", "is not a URL"),
        (f"http://u:{SECRET}@proxy:3128/path", "host:port"),
    ]:
        with pytest.raises(ConfigError, match="PREBOOKD_PROXY_URL") as raised:
            load_settings(proxy_url=url)
        assert said in str(raised.value)
        assert SECRET not in str(raised.value)
    settings = load_settings(proxy_url=f" socks5://u:{SECRET}@proxy:1080 ")
    assert settings.proxy == f"socks5://u:{SECRET}@proxy:1080"
    assert settings.describe()["proxy_url"] == "socks5://u:****@proxy:1080"
    assert load_settings(proxy_url="").proxy is None


def test_a_box_whose_proxy_cannot_be_read_fails_its_rows(make_sim: ...) -> None:
    record = {"proxy_url": "socks5://proxy-without-port"}
    with pytest.raises(BadRow, match="box proxy_url expected"):
        build_booking(
            {
                "id": uuid.uuid4(),
                "user_email": "m@x.es",
                "box_id": uuid.uuid4(),
                "booking_data": {"day": DAY, "familyId": "", "id": "1", "insist": 0},
                "available_at": dt.datetime(2030, 11, 27, 6, tzinfo=dt.UTC),
                "created_at": dt.datetime(2030, 11, 1, tzinfo=dt.UTC),
                "box_found": True,
                "subdomain": "x",
                "base_url": None,
                "session_found": True,
                "aimharder_cookies": [{"name": "amhrdrauth", "value": "c"}],
                **record,
            }
        )


async def test_the_daemon_books_through_proxies_and_never_shows_their_password(
    conn: asyncpg.Connection, db_dsn: str, sim: Simulator, tmp_path: Path
) -> None:
    alpha = await add_box(conn, sim, "alpha")
    beta = await add_box(conn, sim, "beta")
    await add_member(conn, sim, "ana@x.es", refreshed_ago=3600)  # refreshed at arming
    await add_member(conn, sim, "bea@x.es")
    async with (
        running_proxy("ana", SECRET) as http_proxy,
        running_proxy("bea", SECRET) as socks_proxy,
    ):
        settings = {"proxy_url": http_proxy.url("http"), "aimharder_url": sim.base_url}
        env = daemon_env(db_dsn, tmp_path, **settings)
        code, out, err = await run_prebookd(
            "box", "set", "beta", "--proxy", socks_proxy.url("socks5"), env=env
        )
        assert code == 0, err
        assert "proxy none (PREBOOKD_PROXY_URL) -> socks5://bea:****@127.0.0.1:" in out
        code, listed, err = await run_prebookd("box", "list", "--json", env=env)
        assert code == 0, err
        code, config, err = await run_prebookd("config", env=env)
        assert code == 0, err
        assert "http://ana:****@127.0.0.1:" in config

        instant = time.time() + 4.5
        open_class(sim, "alpha", "1", instant, capacity=5)
        open_class(sim, "beta", "1", instant, capacity=5)
        async with running_daemon(db_dsn, tmp_path, **settings) as daemon:
            ids = [
                await add_prebooking(conn, alpha, "ana@x.es", "1", instant),
                await add_prebooking(conn, beta, "bea@x.es", "1", instant),
            ]
            rows = await wait_rows_final(conn, ids, timeout=15)
            assert await daemon.stop() == 0
        code, cleared, err = await run_prebookd("box", "set", "beta", "--proxy", "none", env=env)
        assert code == 0, err
        assert "-> none (PREBOOKD_PROXY_URL)" in cleared

    assert [r["status"] for r in rows] == ["completed", "completed"]
    assert sim.bookings("alpha", "1") == ["ana@x.es"]
    assert sim.bookings("beta", "1") == ["bea@x.es"]
    before, after = before_and_after(http_proxy, instant)
    assert "accept" in before and b"/alpha/api/book HTTP/1.1" in after
    sent = b"".join(e.data for e in http_proxy.of_kind("bytes"))
    assert b"POST http://127.0.0.1:%d/api/tokenUpdate" % sim_port(sim) in sent  # the account too
    before, after = before_and_after(socks_proxy, instant)
    assert "tunnel" in before and b"POST /beta/api/book HTTP/1.1" in after
    assert '"proxy_url": "socks5://bea:****@127.0.0.1:' in listed
    for shown in (out, listed, config, cleared, err, *daemon.lines):
        assert SECRET not in shown


async def test_listings_of_a_box_with_its_own_proxy_go_through_it(
    conn: asyncpg.Connection, db_dsn: str, sim: Simulator
) -> None:
    """The planner and the listing watch read a box's listing (`read_listing`) through
    the box's own proxy, as its bookings go: a box that needs one needs it for every
    request. The default proxy (here: none) serves the other boxes."""
    await add_box(conn, sim, "own")
    await add_box(conn, sim, "direct")
    await add_member(conn, sim, "ana@own.es")
    sim.add_class("own", SimClass("7", DAY, capacity=2, opens_at=time.time() + 3600))
    sim.add_class("direct", SimClass("8", DAY, capacity=2, opens_at=time.time() + 3600))
    pool = await create_pool(db_dsn, Settings(db_pool_min=1, db_pool_max=2))
    sessions = ProxiedSessions(None, limit=2)
    try:
        async with running_proxy("ana", SECRET) as proxy:
            boxes = {
                r["subdomain"]: {**dict(r), "proxy_url": None}
                for r in await conn.fetch(
                    "SELECT subdomain, base_url, box_id AS aimharder_box_id FROM boxes"
                )
            }
            boxes["own"]["proxy_url"] = proxy.url("http")

            async def clear() -> None:
                return None

            async def read(box: str) -> ListingRead:
                return await read_listing(
                    sessions, pool, boxes[box], dt.date(2030, 12, 1), ["ana@own.es"],
                    allowed_hosts=("127.0.0.1",), wait_clear=clear,
                )  # fmt: skip

            own = await read("own")
            through = b"".join(e.data for e in proxy.of_kind("bytes"))
            direct = await read("direct")
            after = b"".join(e.data for e in proxy.of_kind("bytes"))
            boxes["own"]["proxy_url"] = "ftp://nope"
            refused = await read("own")
    finally:
        await sessions.close()
        await pool.close()

    assert [c.session_id for c in own.classes or []] == ["7"], own.problems
    assert b"/own/api/bookings" in through
    assert [c.session_id for c in direct.classes or []] == ["8"], direct.problems
    assert after == through, "the other box's listing went direct"
    assert refused.classes is None and refused.failed is not None
    assert "proxy_url" in refused.failed and "nope" not in refused.failed
