"""The README's "Use" walk-through, run as written: every command in order, in bash,
against `prebookd simulate` and a fresh database, so the README cannot drift from the
code. Only the simulator's port is changed (tests run side by side)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sys
from pathlib import Path

import asyncpg
import pytest

from tests.support import clean_env

README = Path(__file__).resolve().parent.parent / "README.md"
README_PORT = "8099"


def use_walkthrough() -> str:
    """The first ```sh block of the README's "## Use" section."""
    text = README.read_text()
    section = text[text.index("\n## Use\n") :]
    match = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert match, "README's Use section has no ```sh block"
    return match.group(1)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_the_walkthrough_is_one_the_tests_can_run() -> None:
    script = use_walkthrough()
    assert f"--port {README_PORT}" in script
    assert "prebookd run &" in script
    assert "kill $(jobs -p)" in script, "the walk-through must stop what it started"


@pytest.mark.first_run_only  # the README as a user runs it: any Postgres
async def test_the_readme_use_walkthrough_runs_as_written(
    empty_db_dsn: str, tmp_path: Path
) -> None:
    script = use_walkthrough().replace(README_PORT, str(_free_port()))
    env = clean_env(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        PREBOOKD_DATABASE_URL=empty_db_dsn,
        PREBOOKD_STATE_DIR=str(tmp_path / "state"),
        PREBOOKD_STATUS_PORT="0",  # not the default 8791: tests run side by side
        HOME=str(tmp_path),
    )
    # Output to files, not pipes: a background job (the simulator) left running by a
    # failed step would keep a pipe open, and the test would wait for it, not for bash.
    out_path, err_path = tmp_path / "stdout", tmp_path / "stderr"
    with out_path.open("w") as out_file, err_path.open("w") as err_file:
        proc = await asyncio.create_subprocess_exec(
            "bash",
            "-euo",
            "pipefail",
            "-c",
            script,
            cwd=tmp_path,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out_file,
            stderr=err_file,
            start_new_session=True,  # its background jobs are killed with it
        )
    try:
        await asyncio.wait_for(proc.wait(), timeout=90)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    out, err = out_path.read_text(), err_path.read_text()
    assert proc.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}"
    assert "Traceback" not in err, err
    assert "[error]" not in err and "[warning]" not in err, err
    assert "applied 0001" in out
    assert "106015104" in out  # the class, as `classes` lists it

    conn = await asyncpg.connect(empty_db_dsn)
    try:
        rows = await conn.fetch(
            "SELECT status, outcome, attempts FROM prebookings ORDER BY created_at"
        )
    finally:
        await conn.close()
    assert [(r["status"], r["outcome"], r["attempts"]) for r in rows] == [
        ("cancelled", None, 0),
        ("completed", "booked", 1),
    ]
    # What the last `list --all` printed: both rows, the booked one as booked.
    last_listing = out[out.rindex("ID ") :]
    assert re.search(r"completed\s+booked", last_listing), last_listing
    assert "cancelled" in last_listing
