"""The daemon as systemd runs it: sd_notify messages, signals, reload, and a Postgres
outage around an instant. Real subprocesses, real signals, real Postgres."""

from __future__ import annotations

import asyncio
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from prebookd.db.connection import connect
from prebookd.db.embedded import EmbeddedPostgres
from prebookd.sim.server import Faults, Simulator
from tests.support import (
    add_box,
    add_member,
    add_prebooking,
    daemon_env,
    open_class,
    run_prebookd,
    running_daemon,
    start_daemon,
    start_postgres,
    stop_postgres,
    wait_rows_final,
)


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket playing systemd's side of sd_notify."""
    folder = tempfile.mkdtemp(prefix="prebookd-notify-")
    path = f"{folder}/notify.sock"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(path)
    receiver.setblocking(False)
    try:
        yield receiver, path
    finally:
        receiver.close()


async def next_messages(receiver: socket.socket, wanted: str, timeout: float = 20.0) -> list[str]:
    """Datagrams received until one holding `wanted` (each datagram: its lines)."""
    loop = asyncio.get_running_loop()
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = await asyncio.wait_for(loop.sock_recv(receiver, 4096), 0.5)
        except TimeoutError:
            continue
        lines = data.decode().splitlines()
        seen.extend(lines)
        if wanted in lines:
            return seen
    raise AssertionError(f"no {wanted} from the daemon; got {seen}")


async def test_plays_systemd_ready_watchdog_reload_stopping(
    db_dsn: str, tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    receiver, path = notify_socket
    env_file = tmp_path / "prebookd.env"
    env_file.write_text("PREBOOKD_RETRY_INTERVAL=0.05\n")
    daemon = await start_daemon(
        db_dsn,
        tmp_path,
        extra_env={
            "NOTIFY_SOCKET": path,
            "WATCHDOG_USEC": "400000",
            "PREBOOKD_ENV_FILE": str(env_file),
        },
    )
    try:
        first = await next_messages(receiver, "READY=1")
        assert not any(m.startswith("STOPPING") for m in first)
        assert any(m.startswith("STATUS=armed 0") for m in first)
        assert "WATCHDOG=1" in await next_messages(receiver, "WATCHDOG=1", timeout=2)

        # The operator edits the env file and reloads.
        env_file.write_text(
            "PREBOOKD_RETRY_INTERVAL=0.1\nPREBOOKD_DB_POOL_MAX=5\nPREBOOKD_RETRYWINDOW=9\n"
        )
        daemon.process.send_signal(signal.SIGHUP)
        reload = await next_messages(receiver, "RELOADING=1")
        assert "READY=1" not in reload[reload.index("RELOADING=1") :]
        usec = [m for m in reload if m.startswith("MONOTONIC_USEC=")]
        assert usec, "RELOADING=1 comes with MONOTONIC_USEC="
        assert abs(int(usec[-1].split("=")[1]) / 1e6 - time.monotonic()) < 5
        await next_messages(receiver, "READY=1")
        line = await daemon.wait_for("settings_reloaded")
        assert "retry_interval" in line and "db_pool_max" in line
        assert "settings_need_restart" in " ".join(daemon.lines)
        # A typo in the file just edited is named, with the setting it resembles.
        typo = await daemon.wait_for("unknown_setting")
        assert "PREBOOKD_RETRYWINDOW" in typo and "suggestion=PREBOOKD_RETRY_WINDOW" in typo
        assert "[warning]" in typo

        daemon.process.send_signal(signal.SIGTERM)
        await next_messages(receiver, "STOPPING=1")
        assert await daemon.stop() == 0
    finally:
        await daemon.kill()


async def test_sighup_during_a_stream_fires_every_row_once_on_time(
    conn: asyncpg.Connection, db_dsn: str, sim: Simulator, tmp_path: Path
) -> None:
    box = await add_box(conn, sim, "box-h")
    emails = [f"stream{i}@x.es" for i in range(30)]
    cookies = [await add_member(conn, sim, email) for email in emails]
    start = time.time() + 4.0
    instants = [start + 0.1 * i for i in range(30)]
    for i, instant in enumerate(instants):
        open_class(sim, "box-h", f"{700 + i}", instant, 5)
    async with running_daemon(db_dsn, tmp_path) as daemon:
        ids = [
            await add_prebooking(conn, box, email, f"{700 + i}", instants[i])
            for i, email in enumerate(emails)
        ]
        for _ in range(4):
            await asyncio.sleep(max(0.0, start - time.time()) / 4 + 0.3)
            daemon.process.send_signal(signal.SIGHUP)
        rows = await wait_rows_final(conn, ids)
        assert await daemon.stop() == 0
    assert len(daemon.events("settings_reloaded")) == 4
    arrivals = [r for r in sim.requests if r.path == "/api/book"]
    assert sorted(r.email for r in arrivals) == sorted(emails), "each exactly once"
    for request in arrivals:
        opens = instants[int(request.session_id or "0") - 700]
        assert opens <= request.arrived_at < opens + 0.05
    assert {r["status"] for r in rows} == {"completed"}
    # Nothing secret in a whole run's log: cookies and tokens of every member.
    log_text = "\n".join(daemon.lines)
    assert not [c for c in cookies if c in log_text]


async def test_sigterm_lets_requests_in_flight_finish_and_records_them(
    conn: asyncpg.Connection, db_dsn: str, tmp_path: Path
) -> None:
    slow = Simulator(default_capacity=100)
    await slow.start()
    try:
        box = await add_box(conn, slow, "box-slow")
        slow.set_faults("box-slow", Faults(latency=1.5))  # answers take 1.5 s
        await add_member(conn, slow, "slow@x.es")
        t = time.time() + 3.0
        open_class(slow, "box-slow", "1", t, 5)
        row = await add_prebooking(conn, box, "slow@x.es", "1", t)
        daemon = await start_daemon(db_dsn, tmp_path)
        try:
            await daemon.wait_for("daemon_ready")
            await asyncio.sleep(t + 0.3 - time.time())  # the request is on the wire
            daemon.process.send_signal(signal.SIGTERM)
            assert await daemon.stop() == 0
        finally:
            await daemon.kill()
        final = await conn.fetchrow("SELECT * FROM prebookings WHERE id = $1", row)
        assert final["status"] == "completed", "the answer came after SIGTERM, before exit"
        assert final["outcome"] == "booked"
    finally:
        await slow.stop()


@pytest.mark.parametrize("restart_prebookd", [False, True], ids=["stays-up", "restarted"])
async def test_postgres_down_across_the_instant_loses_nothing(
    own_postgres: EmbeddedPostgres,
    sim: Simulator,
    tmp_path: Path,
    restart_prebookd: bool,
) -> None:
    server, dsn = own_postgres, own_postgres.dsn
    conn = await connect(dsn)
    box = await add_box(conn, sim, "box-o")
    emails = [f"outage{i}@x.es" for i in range(5)]
    for email in emails:
        await add_member(conn, sim, email)
    t = time.time() + 6.0
    open_class(sim, "box-o", "1", t, 3)
    ids = [await add_prebooking(conn, box, email, "1", t) for email in emails]
    await conn.close()

    daemon = await start_daemon(dsn, tmp_path)
    try:
        await daemon.wait_for("daemon_ready")
        await asyncio.sleep(t - 2.0 - time.time())
        await stop_postgres(server)
        down_at = time.time()
        await daemon.wait_for("instant_fired", timeout=10)
        if restart_prebookd:
            await asyncio.sleep(1.0)
            daemon.process.kill()  # SIGKILL: only the spool remembers the results
            await daemon.stop()
            daemon = await start_daemon(dsn, tmp_path)
            await daemon.wait_for("database_unreachable")
        await asyncio.sleep(down_at + 6.0 - time.time())  # down from 2 s before to 4 s after
        await start_postgres(server)
        await daemon.wait_for("daemon_ready" if restart_prebookd else "listener_connected")
        conn = await connect(dsn)
        try:
            rows = await wait_rows_final(conn, ids, timeout=20)
        finally:
            await conn.close()
        assert await daemon.stop() == 0
    finally:
        await daemon.kill()

    arrivals = [r for r in sim.requests if r.path == "/api/book"]
    assert sorted(r.email for r in arrivals) == sorted(emails)
    assert all(t <= r.arrived_at < t + 0.05 for r in arrivals), "fired on time, from memory"
    outcomes = sorted(r["outcome"] for r in rows)
    assert outcomes == ["booked"] * 3 + ["full"] * 2
    assert all(r["lateness_ms"] is not None and r["lateness_ms"] < 50 for r in rows)
    if restart_prebookd:
        assert daemon.events("spool_recovered")


async def test_sigterm_with_a_row_armed_ahead_stops_at_once_and_gives_it_back(
    conn: asyncpg.Connection, db_dsn: str, sim: Simulator, tmp_path: Path
) -> None:
    box = await add_box(conn, sim, "box-q")
    await add_member(conn, sim, "later@x.es")
    async with running_daemon(db_dsn, tmp_path) as daemon:
        row = await add_prebooking(conn, box, "later@x.es", "1", time.time() + 40)
        for _ in range(100):  # claimed: within arm_lead (60 s)
            if await conn.fetchval("SELECT status FROM prebookings WHERE id = $1", row) == "loaded":
                break
            await asyncio.sleep(0.05)
        started = time.monotonic()
        assert await daemon.stop() == 0
        took = time.monotonic() - started
    assert took < 8, f"a firing with nothing in flight held the stop for {took:.1f} s"
    status = await conn.fetchval("SELECT status FROM prebookings WHERE id = $1", row)
    assert status == "pending", "the claim is given back for the next start"
    assert daemon.events("claims_released")


async def test_a_second_run_on_a_state_directory_in_use_exits_at_once_touching_nothing(
    db_dsn: str, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    async with running_daemon(db_dsn, state) as daemon:
        before = files_of(state)
        code, out, err = await run_prebookd("run", env=daemon_env(db_dsn, state), timeout=10)
        assert code == 2
        assert (out, err.splitlines()) == (
            "",
            [
                f"prebookd: error: state directory {state} is in use by pid "
                f"{daemon.process.pid} (another prebookd run); stop it or set "
                "PREBOOKD_STATE_DIR"
            ],
        )
        assert files_of(state) == before, "the state directory as it was"
        assert daemon.process.returncode is None
        assert await daemon.stop() == 0


def files_of(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file under `folder`: size, modification time, content."""
    return {
        str(path): (stat.st_size, stat.st_mtime_ns, path.read_bytes())
        for path in folder.rglob("*")
        if path.is_file() and (stat := path.stat())
    }
