"""The embedded Postgres: what `prebookd migrate` does with no PREBOOKD_DATABASE_URL."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from prebookd.db.connection import connect
from prebookd.sim.server import Simulator
from tests.support import (
    add_box,
    add_member,
    add_prebooking,
    clean_env,
    daemon_env,
    open_class,
    run_prebookd,
    start_daemon_with_env,
    wait_rows_final,
)


def postgres_running_in(data_dir: Path) -> bool:
    """A server holds `postmaster.pid` while it runs, and names its data dir in its
    command line."""
    if (data_dir / "postmaster.pid").exists():
        return True
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:  # the process ended meanwhile
            continue
        if str(data_dir).encode() in args and any(b"postgres" in arg for arg in args):
            return True
    return False


async def test_migrate_runs_on_an_embedded_postgres_and_stops_it(tmp_path: Path) -> None:
    env = clean_env(PREBOOKD_STATE_DIR=str(tmp_path))
    data_dir = tmp_path / "pgdata"

    code, out, err = await run_prebookd("migrate", env=env)

    assert code == 0, err
    assert "applied 0001_" in out
    # A command's stderr holds what it has to say: the server's start and stop are
    # debug lines for a command (the daemon logs them at info).
    assert "embedded_postgres" not in out + err
    assert (data_dir / "PG_VERSION").exists()
    assert not postgres_running_in(data_dir)

    code, out, err = await run_prebookd("migrate", env={**env, "PREBOOKD_LOG_LEVEL": "debug"})

    assert code == 0, err
    assert "nothing to apply" in out
    assert "applied" not in out
    # Logs go to stderr; stdout holds only what the command says.
    assert "embedded_postgres" not in out
    started = [line for line in err.splitlines() if "embedded_postgres_started" in line]
    assert len(started) == 1 and "[debug]" in started[0], err
    assert str(data_dir) in started[0]
    assert not postgres_running_in(data_dir)


def _postmaster(data_dir: Path) -> tuple[int, str]:
    """The embedded server's pid and a DSN for it, from its postmaster.pid."""
    lines = (data_dir / "postmaster.pid").read_text().splitlines()
    pid, port, socket_dir = int(lines[0]), lines[3].strip(), lines[4].strip()
    return pid, f"postgresql://postgres@/postgres?host={socket_dir}&port={port}"


async def test_the_daemon_starts_its_embedded_postgres_again_when_it_goes_away(
    tmp_path: Path, sim: Simulator
) -> None:
    state = tmp_path / "state"
    env = daemon_env("", state)
    del env["PREBOOKD_DATABASE_URL"]  # the embedded Postgres, under the state directory
    daemon = await start_daemon_with_env(env)
    try:
        await daemon.wait_for("daemon_ready", timeout=90)
        pid, dsn = _postmaster(state / "pgdata")
        # Gone as if killed with the cgroup of the command that first started it: a
        # fast shutdown (SIGINT to the postmaster) ends every connection.
        os.kill(pid, signal.SIGINT)
        await daemon.wait_for("embedded_postgres_gone", timeout=20)
        await daemon.wait_for("embedded_postgres_started_again", timeout=60)
        await daemon.wait_for("listener_connected", timeout=30)

        new_pid, dsn = _postmaster(state / "pgdata")
        assert new_pid != pid
        conn = await connect(dsn)
        try:
            box = await add_box(conn, sim, "again")
            await add_member(conn, sim, "back@again.test")
            instant = round(time.time() + 3.0, 3)
            open_class(sim, "again", "1", instant, capacity=1)
            row = await add_prebooking(conn, box, "back@again.test", "1", instant)
            await wait_rows_final(conn, [row], timeout=20)
            status = await conn.fetchval("SELECT status FROM prebookings WHERE id = $1", row)
        finally:
            await conn.close()
        assert status == "completed"
        assert sim.bookings("again", "1") == ["back@again.test"]
    finally:
        code = await daemon.stop(timeout=30)
    assert code == 0
    assert not postgres_running_in(state / "pgdata"), "the daemon stopped what it started"
