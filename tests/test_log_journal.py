"""`prebookd run` under systemd: its stderr is the journal (JOURNAL_STREAM names it), so
each line carries its syslog priority and no timestamp; anywhere else, the lines are
as they always were. A real subprocess whose stderr is a file standing in for the
journal's stream; no Postgres needed (one that never answers is a warning a minute)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

from tests.support import clean_env

ISO_STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")
SECRET = "dsnS3cret"


async def run_until_warned(tmp_path: Path, journal: str | None) -> list[str]:
    """`prebookd run` against a Postgres that refuses connections, until it has said so
    (a warning) at least once; its stderr lines. `journal`: JOURNAL_STREAM, where
    "stderr" stands for the device:inode of the file its stderr goes to."""
    log_path = tmp_path / "stderr.log"
    with log_path.open("wb") as stderr:
        env = clean_env(
            PREBOOKD_DATABASE_URL=f"postgresql://prebookd:{SECRET}@127.0.0.1:9/prebookd",
            PREBOOKD_STATE_DIR=str(tmp_path / "state"),
            PREBOOKD_STATUS_PORT="0",
        )
        env.pop("JOURNAL_STREAM", None)
        if journal == "stderr":
            stat = os.fstat(stderr.fileno())
            env["JOURNAL_STREAM"] = f"{stat.st_dev}:{stat.st_ino}"
        elif journal is not None:
            env["JOURNAL_STREAM"] = journal
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "prebookd", "run", env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip
        try:
            for _ in range(300):
                if "database_unreachable" in log_path.read_text():
                    break
                await asyncio.sleep(0.05)
            process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(process.wait(), 20) == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    return log_path.read_text().splitlines()


async def test_under_systemd_each_line_carries_its_priority_and_no_timestamp(
    tmp_path: Path,
) -> None:
    lines = await run_until_warned(tmp_path, journal="stderr")

    starting = [line for line in lines if "daemon_starting" in line.split()]
    warned = [line for line in lines if "database_unreachable" in line.split()]
    assert starting and starting[0].startswith("<6>[info] daemon_starting "), lines
    assert warned and warned[0].startswith("<4>[warning] database_unreachable "), lines
    assert all(re.match(r"<[2-7]>\[", line) for line in lines), lines
    assert not any(ISO_STAMP.search(line) for line in lines), "journald stamps lines itself"
    assert not any(SECRET in line for line in lines)


async def test_on_a_terminal_or_a_file_lines_are_as_they_always_were(tmp_path: Path) -> None:
    # No JOURNAL_STREAM; then one inherited from a service but naming another stream.
    for journal in (None, "8:12345"):
        lines = await run_until_warned(tmp_path, journal=journal)

        warned = [line for line in lines if "database_unreachable" in line.split()]
        assert warned, lines
        stamped = ISO_STAMP.pattern + r"\.\d{6}Z \[warning\] database_unreachable "
        assert re.match(stamped, warned[0]), warned
        assert not any(line.startswith("<") for line in lines), lines
