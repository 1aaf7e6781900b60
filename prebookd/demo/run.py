"""`prebookd demo`: prebookd doing its job, with nothing to configure.

It brings up, in a temporary directory: a Postgres (embedded, or a throw-away database
on the server PREBOOKD_DATABASE_URL names), the AimHarder simulator in this process,
a box whose members have background sessions, three classes opening a few seconds
apart, and prebookings written by plain SQL as the web app writes them. Then it runs
the real daemon (`prebookd run`) as a subprocess, the way systemd does (READY=1 on a
notify socket), counts down to each instant, and shows who was sent when, in which
order, and what AimHarder answered. Everything is torn down at the end, or on Ctrl-C.

The daemon runs with its default settings: the user's PREBOOKD_* variables are not
passed on, so what the demo shows is what a fresh install does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import functools
import math
import os
import random
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from prebookd.daemon.clock import gc_paused
from prebookd.db import admin_store
from prebookd.db.connection import connect, database_dsn
from prebookd.db.migrate import migrate
from prebookd.demo.view import (
    MIN_LEAD,
    Countdown,
    DemoClass,
    InstantReport,
    Scenario,
    build_report,
    build_scenario,
    render_final,
    render_plan,
    render_summary,
    render_table,
)
from prebookd.errors import DatabaseError, PrebookdError
from prebookd.log import configure_logging
from prebookd.settings import Settings, mask_dsn
from prebookd.sim.server import AUTH_COOKIE, SimClass, Simulator

say = functools.partial(print, flush=True)

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 25.0  # the daemon's own drain deadline is 20 s
RESULT_TIMEOUT = 10.0  # after an instant: retry window (3 s) plus answers and writes
DB_QUIET = 1.0  # no queries of ours this close to an instant
BOX, BOX_ID, BOX_NAME = "demo", "10001", "CrossFit Demo"

# --- the command ---------------------------------------------------------------------


DEMO_EPILOG = """\
examples:
  prebookd demo
  prebookd demo --members 50 --places 5 --lead 15
  prebookd demo --state-dir ~/.cache/prebookd-demo --verbose    # faster the next time
"""


def add_demo_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "demo",
        help="watch prebookd book a class against a simulated AimHarder",
        description=__doc__.split("\n\n")[1],
        epilog=DEMO_EPILOG,
    )
    add = parser.add_argument
    add("--members", type=int, default=30, help="members prebooking (%(default)s)")
    add("--places", type=int, default=10, help="places of the first class (%(default)s)")
    add(
        "--lead",
        type=float,
        default=8.0,
        help=f"seconds until the first class opens, at least {MIN_LEAD:g} (%(default)s)",
    )
    add(
        "--state-dir",
        type=Path,
        help="keep the embedded Postgres here (faster next time) instead of a temporary "
        "directory; its demo database is still dropped at the end",
    )
    add("--verbose", action="store_true", help="show the daemon's log (at info level)")
    parser.set_defaults(handler=run_demo)


async def run_demo(args: argparse.Namespace, settings: Settings) -> int:
    scenario = build_scenario(args.members, args.places, args.lead, random.Random())
    configure_logging("info" if args.verbose else "warning", settings.log_format)
    # Ctrl-C (asyncio.run's SIGINT handler) and SIGTERM both cancel this task, so
    # everything below is torn down in order, the daemon first.
    task, terminated = asyncio.current_task(), asyncio.Event()
    assert task is not None

    def on_sigterm() -> None:
        terminated.set()
        task.cancel()

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_sigterm)
    say(
        f"prebookd demo: {len(scenario.members)} members, a class of {args.places} "
        f"place{'s' if args.places != 1 else ''} opening in {args.lead:g} s, two more after it"
    )
    workdir = Path(tempfile.mkdtemp(prefix="prebookd-demo-"))
    daemon = DemoDaemon(workdir, verbose=args.verbose)
    try:
        async with contextlib.AsyncExitStack() as stack:
            stack.callback(_remove_workdir, workdir)
            dsn = await stack.enter_async_context(demo_database(settings, args.state_dir, workdir))
            sim = await stack.enter_async_context(running_simulator())
            conn = await connect(dsn, role="demo")
            stack.push_async_callback(conn.close)
            box = await seed(conn, sim, scenario)
            stack.push_async_callback(daemon.stop)
            await daemon.start(dsn, sim.base_url)
            countdown = Countdown(sys.stdout, tty=sys.stdout.isatty())
            reports = await play(conn, sim, box, scenario, countdown, daemon.ensure_running)
    except asyncio.CancelledError:
        say("interrupted: everything cleaned up")
        if terminated.is_set():
            task.uncancel()
            return 128 + signal.SIGTERM
        raise
    if daemon.exit_code != 0 or not all(report.ok for report in reports):
        problem = "the daemon did not exit cleanly" if daemon.exit_code else "an instant went wrong"
        print(f"prebookd: demo: {problem}, see above", file=sys.stderr)
        return 1
    return 0


# --- the pieces ----------------------------------------------------------------------


def _remove_workdir(workdir: Path) -> None:
    shutil.rmtree(workdir, ignore_errors=True)
    say(f"removed    {workdir}")


@contextlib.asynccontextmanager
async def demo_database(
    settings: Settings, state_dir: Path | None, workdir: Path
) -> AsyncIterator[str]:
    """A migrated database of the demo's own, on the configured server or an embedded
    one (in `state_dir`, else in the temporary `workdir`); dropped at the end."""
    embedded = settings.database_url is None
    home = state_dir or workdir
    started = time.monotonic()
    up = False
    try:
        async with (
            database_dsn(settings.model_copy(update={"state_dir": home})) as server_dsn,
            temporary_database(server_dsn) as (name, dsn),
        ):
            where = f"embedded, data in {home / 'pgdata'}" if embedded else mask_dsn(server_dsn)
            ready = time.monotonic() - started
            say(f"postgres   {where}; database {name} (ready in {ready:.1f} s)")
            up = True
            yield dsn
    finally:
        if embedded and up:
            say("postgres   embedded server stopped")


@contextlib.asynccontextmanager
async def temporary_database(server_dsn: str) -> AsyncIterator[tuple[str, str]]:
    name = f"prebookd_demo_{secrets.token_hex(4)}"
    admin = await connect(server_dsn, role="demo")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    except asyncpg.PostgresError as exc:
        raise DatabaseError(
            f"cannot create the demo's database on {mask_dsn(server_dsn)}: {exc}"
        ) from exc
    finally:
        await admin.close()
    try:
        yield name, urlsplit(server_dsn)._replace(path=f"/{name}").geturl()
    finally:
        admin = await connect(server_dsn, role="demo")
        try:
            # FORCE: a daemon that would not stop must not keep the database alive.
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
        say(f"postgres   database {name} dropped")


@contextlib.asynccontextmanager
async def running_simulator() -> AsyncIterator[Simulator]:
    sim = Simulator()
    base = await sim.start()
    say(f"simulator  AimHarder at {base} (in this process)")
    try:
        yield sim
    finally:
        await sim.stop()
        say("simulator  stopped")


# What the web app writes. Plain SQL on its tables, so the trigger wakes the daemon
# exactly as it does in production.
INSERT_SESSION = """
    INSERT INTO auth_sessions (user_email, aimharder_token, aimharder_cookies, fingerprint,
                               session_type, last_token_update_date)
    VALUES ($1, $2, $3, $4, 'background', now())"""
INSERT_PREBOOKING = """
    INSERT INTO prebookings (user_email, box_id, booking_data, available_at)
    VALUES ($1, $2, $3, $4)"""
SELECT_CLASS_ROWS = """
    SELECT user_email, status, outcome, lateness_ms FROM prebookings
    WHERE booking_data->>'id' = $1 ORDER BY created_at, id"""
COUNT_CLAIMED = """
    SELECT count(*) FILTER (WHERE status <> 'pending') FROM prebookings
    WHERE booking_data->>'id' = $1"""


async def seed(conn: asyncpg.Connection, sim: Simulator, scenario: Scenario) -> uuid.UUID:
    """Schema, the box, and members whose background sessions the simulator knows."""
    await migrate(conn)
    sim.add_box(BOX, box_id=BOX_ID, name=BOX_NAME)
    box = await admin_store.insert_box(
        conn,
        box_id=BOX_ID,
        subdomain=BOX,
        name=BOX_NAME,
        base_url=sim.box_url(BOX),
        timezone="Europe/Madrid",
    )
    sessions = []
    for email in scenario.members:
        cookie = secrets.token_hex(16)
        sim.add_member(email, cookie)  # its refresh token: f"refresh-{cookie}"
        cookies = [{"name": AUTH_COOKIE, "value": cookie}]
        sessions.append((email, f"refresh-{cookie}", cookies, secrets.token_hex(8)))
    await conn.executemany(INSERT_SESSION, sessions)
    return box.id


async def play(
    conn: asyncpg.Connection,
    sim: Simulator,
    box: uuid.UUID,
    scenario: Scenario,
    countdown: Countdown,
    check: Callable[[], None],
) -> list[InstantReport]:
    """Open the classes, prebook, then watch each instant and report on it."""
    # Instants on whole seconds: the table reads better, and the lead only grows.
    first = math.ceil(time.time() + scenario.lead)
    instants = {c.session_id: first + c.offset for c in scenario.classes}
    day = (dt.date.fromtimestamp(first) + dt.timedelta(days=4)).strftime("%Y%m%d")
    for cls in scenario.classes:
        opens = instants[cls.session_id]
        sim.add_class(BOX, SimClass(cls.session_id, day, cls.places, opens, name=cls.name,
                                    waitlist_capacity=cls.waitlist))  # fmt: skip
    waitlisted = {c.session_id for c in scenario.classes if c.waitlist}
    for email, session_id in scenario.prebookings:
        # One statement each, as members prebook one by one: created_at = prebooked order.
        # Members of a class with a waiting list ask to join it when the class is full.
        insist = 1 if session_id in waitlisted else 0
        data = {"day": day, "familyId": "", "id": session_id, "insist": insist}
        available_at = dt.datetime.fromtimestamp(instants[session_id], dt.UTC)
        await conn.execute(INSERT_PREBOOKING, email, box, data, available_at)
    say(render_plan(scenario, instants))
    reports = []
    for cls in scenario.classes:
        instant = instants[cls.session_id]
        total = scenario.prebooked(cls.session_id)
        await count_down(conn, cls, instant, total, countdown, check)
        rows = await wait_final(conn, cls.session_id, instant + RESULT_TIMEOUT, check)
        books = [r for r in sim.requests if r.box == BOX and r.path == "/api/book"]
        requests = [r for r in books if r.session_id == cls.session_id]
        report = build_report(cls.name, instant, cls.places, [dict(r) for r in rows], requests)
        say(f"{render_table(report)}\n{render_summary(report)}\n")
        reports.append(report)
    say(render_final(reports))
    return reports


async def count_down(
    conn: asyncpg.Connection,
    cls: DemoClass,
    instant: float,
    total: int,
    countdown: Countdown,
    check: Callable[[], None],
) -> None:
    claimed = 0
    try:
        while (remaining := instant - time.time()) > 0.2:
            check()
            if remaining > DB_QUIET:
                claimed = await conn.fetchval(COUNT_CLAIMED, cls.session_id)
            countdown.show(cls.name, remaining, claimed, total)
            await asyncio.sleep(min(0.1, remaining - 0.2))
    finally:
        countdown.done()  # also on Ctrl-C: what follows starts on a clean line
    # The simulator shares this process: a garbage collection across the burst would
    # stamp its arrivals late and blame prebookd for it.
    with gc_paused(asyncio.get_running_loop(), linger=0.5):
        await asyncio.sleep(max(0.0, instant - time.time()) + 0.1)


async def wait_final(
    conn: asyncpg.Connection, session_id: str, deadline: float, check: Callable[[], None]
) -> list[asyncpg.Record]:
    """The class's rows once each is completed or failed (or as they are at `deadline`)."""
    while True:
        check()
        rows = list(await conn.fetch(SELECT_CLASS_ROWS, session_id))
        if all(r["status"] in ("completed", "failed") for r in rows) or time.time() > deadline:
            return rows
        await asyncio.sleep(0.1)


class DemoDaemon:
    """`prebookd run` in a subprocess, started as systemd starts it: ready when it sends
    READY=1 to NOTIFY_SOCKET, stopped with SIGTERM. Its log goes to a file, shown with
    --verbose or when it fails."""

    def __init__(self, workdir: Path, *, verbose: bool) -> None:
        self.log_path = workdir / "daemon.log"
        self._notify_path = workdir / "notify.sock"
        self._state_dir = workdir / "daemon"
        self._verbose = verbose
        self._process: asyncio.subprocess.Process | None = None
        self._ready = False
        self.exit_code: int | None = None

    def _env(self, dsn: str, aimharder_url: str) -> dict[str, str]:
        # Not the user's PREBOOKD_* settings, nor the systemd context of our own parent.
        dropped = ("STATE_DIRECTORY", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREBOOKD_")}
        env = {k: v for k, v in env.items() if k not in dropped}
        env.update(
            PREBOOKD_DATABASE_URL=dsn,
            PREBOOKD_AIMHARDER_URL=aimharder_url,
            PREBOOKD_BOX_HOSTS="127.0.0.1",  # the simulator: plain http on loopback
            PREBOOKD_STATUS_PORT="0",
            PREBOOKD_STATE_DIR=str(self._state_dir),
            PREBOOKD_INSTANCE_NAME="demo",
            PREBOOKD_LOG_LEVEL="info" if self._verbose else "warning",
            NOTIFY_SOCKET=str(self._notify_path),
        )
        return env

    async def start(self, dsn: str, aimharder_url: str) -> None:
        started = time.monotonic()
        self._state_dir.mkdir()
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            notify.bind(str(self._notify_path))
            notify.setblocking(False)
            log_fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                self._process = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "prebookd", "run",
                    env=self._env(dsn, aimharder_url), stdin=asyncio.subprocess.DEVNULL,
                    stdout=log_fd, stderr=asyncio.subprocess.STDOUT,
                )  # fmt: skip
            finally:
                os.close(log_fd)  # the daemon has its own copy
            await self._wait_ready(self._process, notify)
        finally:
            notify.close()
        say(
            f"daemon     prebookd run, pid {self._process.pid}, ready in "
            f"{time.monotonic() - started:.1f} s (READY=1 on its notify socket)"
        )

    async def _wait_ready(self, process: asyncio.subprocess.Process, notify: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT
        while process.returncode is None and loop.time() < deadline:
            try:
                message = await asyncio.wait_for(loop.sock_recv(notify, 4096), 0.2)
            except TimeoutError:
                continue  # look at the process again: it may have died
            if b"READY=1" in message.split(b"\n"):
                self._ready = True
                return
        code = process.returncode
        why = f"exited with code {code}" if code is not None else "was not ready in time"
        raise PrebookdError(f"the daemon {why} (its log is above)")

    def ensure_running(self) -> None:
        if self._process is not None and self._process.returncode is not None:
            code = self._process.returncode
            raise PrebookdError(f"the daemon exited by itself (code {code}); its log is above")

    async def stop(self) -> None:
        process = self._process
        if process is None:
            return
        by_itself = process.returncode is not None
        if not by_itself:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
            except TimeoutError:
                process.kill()
                await process.wait()
        self.exit_code = process.returncode
        how = "exited by itself" if by_itself else "stopped by SIGTERM"
        say(f"daemon     {how}, exit code {self.exit_code}")
        if self._verbose or self.exit_code != 0 or not self._ready or by_itself:
            say(f"--- the daemon's log ({self.log_path}) ---\n{self._log_text()}--- end ---")

    def _log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)\n"
