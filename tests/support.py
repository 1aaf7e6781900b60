"""Helpers for tests that run the daemon: seed rows as the web app would, and run
`prebookd run` as a real subprocess against a test database and the simulator."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from prebookd.db.embedded import EmbeddedPostgres
from prebookd.sim.server import SimClass, Simulator


def utc(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.UTC)


async def add_box(conn: asyncpg.Connection, sim: Simulator, subdomain: str) -> uuid.UUID:
    sim.add_box(subdomain, box_id=f"{abs(hash(subdomain)) % 100000}")
    row_id: uuid.UUID = await conn.fetchval(
        """INSERT INTO boxes (box_id, subdomain, name, base_url, timezone)
           VALUES ($1, $2, $3, $4, 'Europe/Madrid') RETURNING id""",
        f"{abs(hash(subdomain)) % 100000}",
        subdomain,
        subdomain.title(),
        sim.box_url(subdomain),
    )
    return row_id


async def add_member(
    conn: asyncpg.Connection,
    sim: Simulator,
    email: str,
    *,
    issued_ago: float = 0.0,
    refreshed_ago: float = 0.0,
    token: str | None = None,
) -> str:
    """A member with a background session the simulator knows: its cookie and token
    were issued `issued_ago` seconds ago (the simulator ages them), and the table says
    the token was refreshed `refreshed_ago` seconds ago. `token` overrides the one
    stored in the table (one the simulator does not know is a dead session)."""
    cookie = uuid.uuid4().hex
    sim.add_member(email, cookie, issued_at=time.time() - issued_ago)
    await conn.execute(
        """INSERT INTO auth_sessions (user_email, aimharder_token, aimharder_cookies,
                                      fingerprint, session_type, last_token_update_date)
           VALUES ($1, $2, $3, $4, 'background', $5)""",
        email,
        token or "refresh-" + cookie,
        [{"name": "amhrdrauth", "value": cookie}, {"name": "PHPSESSID", "value": "php1"}],
        uuid.uuid4().hex[:50],
        utc(time.time() - refreshed_ago),
    )
    return cookie


async def add_prebooking(
    conn: asyncpg.Connection,
    box: uuid.UUID,
    email: str,
    session_id: str,
    available_at: float,
    *,
    day: str = "20301201",
    booking_data: object = None,
) -> uuid.UUID:
    """INSERT as the web app does: created_at and status from the column defaults."""
    data = booking_data or {"day": day, "familyId": "", "id": session_id, "insist": 0}
    row_id: uuid.UUID = await conn.fetchval(
        """INSERT INTO prebookings (user_email, box_id, booking_data, available_at)
           VALUES ($1, $2, $3, $4) RETURNING id""",
        email,
        box,
        data,
        utc(available_at),
    )
    return row_id


def open_class(sim: Simulator, box: str, session_id: str, opens_at: float, capacity: int) -> None:
    sim.add_class(
        box, SimClass(session_id=session_id, day="20301201", capacity=capacity, opens_at=opens_at)
    )


@dataclass
class DaemonProcess:
    process: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)
    _reader: asyncio.Task[None] | None = None

    def events(self, name: str) -> list[str]:
        return [line for line in self.lines if f"{name}" in line.split()]

    async def wait_for(self, name: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.events(name)
            if found:
                return found[0]
            if self.process.returncode is not None:
                break
            await asyncio.sleep(0.02)
        raise AssertionError(f"no {name} in daemon output:\n" + "\n".join(self.lines[-40:]))

    async def kill(self) -> None:
        """Make sure the process is gone (test clean-up)."""
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        if self._reader is not None:
            await self._reader

    async def stop(self, timeout: float = 20.0) -> int:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(self.process.wait(), timeout)
        if self._reader is not None:
            await self._reader
        return code


def daemon_env(db_dsn: str, state_dir: Path, **settings: object) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREBOOKD_")}
    env["PREBOOKD_DATABASE_URL"] = db_dsn
    env["PREBOOKD_STATE_DIR"] = str(state_dir)
    env["PREBOOKD_INSTANCE_NAME"] = "test-instance"
    env["PREBOOKD_LOG_FORMAT"] = "console"
    env["PREBOOKD_STATUS_PORT"] = "0"  # tests run side by side: no fixed port
    # Never the real AimHarder: a refused port unless a test names its simulator.
    env["PREBOOKD_AIMHARDER_URL"] = "http://127.0.0.1:9"
    # The simulator's boxes and account site are plain http on loopback: named here.
    env["PREBOOKD_BOX_HOSTS"] = "127.0.0.1"
    for name, value in settings.items():
        env[f"PREBOOKD_{name.upper()}"] = str(value)
    return env


async def start_daemon(
    db_dsn: str,
    state_dir: Path,
    *,
    extra_env: dict[str, str] | None = None,
    **settings: object,
) -> DaemonProcess:
    """`prebookd run` in a subprocess (stdout and stderr in `lines`); not yet ready."""
    env = daemon_env(db_dsn, state_dir, **settings)
    env.update(extra_env or {})
    return await start_daemon_with_env(env)


async def start_daemon_with_env(env: dict[str, str]) -> DaemonProcess:
    """`prebookd run` in a subprocess with exactly this environment; not yet ready."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "prebookd",
        "run",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    daemon = DaemonProcess(process)

    async def read() -> None:
        assert process.stdout is not None
        async for raw in process.stdout:
            daemon.lines.append(raw.decode(errors="replace").rstrip())

    daemon._reader = asyncio.create_task(read())
    return daemon


@contextlib.asynccontextmanager
async def running_daemon(
    db_dsn: str, state_dir: Path, **settings: object
) -> AsyncIterator[DaemonProcess]:
    """`prebookd run` in a subprocess, ready (listener up, rows armed) on entry."""
    daemon = await start_daemon(db_dsn, state_dir, **settings)
    try:
        await daemon.wait_for("daemon_ready")
        yield daemon
    finally:
        await daemon.kill()


async def wait_rows_final(
    conn: asyncpg.Connection, ids: list[uuid.UUID], timeout: float = 20.0
) -> list[asyncpg.Record]:
    """Wait until every row is completed or failed; return them all."""
    deadline = time.monotonic() + timeout
    while True:
        rows = await conn.fetch("SELECT * FROM prebookings WHERE id = ANY($1)", ids)
        if all(r["status"] in ("completed", "failed") for r in rows) and len(rows) == len(ids):
            return list(rows)
        if time.monotonic() > deadline:
            states = json.dumps({str(r["id"]): r["status"] for r in rows})
            raise AssertionError(f"rows not final after {timeout} s: {states}")
        await asyncio.sleep(0.1)


def clean_env(**settings: str) -> dict[str, str]:
    """This process's environment without any PREBOOKD_* of the developer's, plus these."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("PREBOOKD_") and key != "STATE_DIRECTORY"
    }
    env.update(settings)
    return env


async def run_prebookd(
    *args: str, env: dict[str, str], timeout: float = 90.0
) -> tuple[int, str, str]:
    """Run `python -m prebookd ARGS`; return its exit code, stdout and stderr. Killed
    (and TimeoutError) if it has not exited after `timeout` seconds."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "prebookd",
        *args,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def stop_postgres(server: EmbeddedPostgres) -> None:
    """Stop an embedded Postgres outright (fast shutdown), whoever else uses it."""
    await asyncio.to_thread(server._server._stop)


async def start_postgres(server: EmbeddedPostgres) -> None:
    await asyncio.to_thread(server.start_again)
