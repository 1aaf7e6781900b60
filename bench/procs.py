"""The senders under test as real subprocesses: `prebookd run`, and each baseline.

A sender runs in a process of its own, as it would in production, so the simulator
and the benchmark's bookkeeping (in this process) do not share its event loop. Its
output is kept line by line (`DaemonProcess.lines`) for the events a scenario reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from prebookd.sim.server import Simulator
from tests.support import DaemonProcess, daemon_env

STOP_TIMEOUT = 30.0


async def spawn(argv: Sequence[str], env: dict[str, str]) -> DaemonProcess:
    """A Python module as a subprocess, stdout and stderr read into `lines`."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *argv,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    daemon = DaemonProcess(process)

    async def read() -> None:
        assert process.stdout is not None
        async for raw in process.stdout:
            daemon.lines.append(raw.decode(errors="replace").rstrip())

    daemon._reader = asyncio.create_task(read(), name=f"read-{argv[-1]}")
    return daemon


async def stop(daemon: DaemonProcess) -> int | None:
    """SIGTERM and wait; SIGKILL if it does not stop in time. The exit code, or None
    when it had to be killed."""
    process = daemon.process
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
    try:
        code = await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
    except TimeoutError:
        await daemon.kill()
        return None
    if daemon._reader is not None:
        await daemon._reader
    return code


@contextlib.asynccontextmanager
async def running_prebookd(
    dsn: str,
    sim: Simulator | None,
    *,
    ready_timeout: float = 60.0,
    **settings: object,
) -> AsyncIterator[DaemonProcess]:
    """`prebookd run` on `dsn`, ready (listener up, rows armed) on entry; stopped with
    SIGTERM on exit. Settings are PREBOOKD_* names without the prefix."""
    with tempfile.TemporaryDirectory(prefix="prebookd-bench-state-") as state_dir:
        if sim is not None:
            settings.setdefault("aimharder_url", sim.base_url)
        # The scenarios measure how close to a given time prebookd writes: to
        # `available_at`, so by our clock (aim=send), comparable run to run. Aiming at a
        # box's own clock moves that time on purpose (by aim_margin, 1.5 ms, even on
        # loopback): `--scenario aim` measures that, and sets `aim` itself.
        settings.setdefault("aim", "send")
        env = daemon_env(dsn, Path(state_dir), **settings)
        env["PREBOOKD_INSTANCE_NAME"] = "bench"
        daemon = await spawn(["-m", "prebookd", "run"], env)
        try:
            await daemon.wait_for("daemon_ready", timeout=ready_timeout)
            yield daemon
        finally:
            await stop(daemon)


@contextlib.asynccontextmanager
async def running_baseline(dsn: str, kind: str, *args: str) -> AsyncIterator[DaemonProcess]:
    """`python -m bench.baselines KIND` on `dsn`, ready on entry, stopped on exit."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREBOOKD_")}
    daemon = await spawn(["-m", "bench.baselines", kind, "--dsn", dsn, *args], env)
    try:
        await daemon.wait_for("baseline_ready", timeout=30.0)
        yield daemon
    finally:
        await stop(daemon)


def log_time(line: str) -> float:
    """The epoch time of a prebookd log line (console format starts with an ISO UTC
    timestamp, e.g. `2026-11-28T18:43:42.123456Z [info] daemon_ready ...`)."""
    stamp = line.split(maxsplit=1)[0]
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def log_fields(line: str) -> dict[str, str]:
    """key=value fields of a console-format log line (values without spaces)."""
    fields = {}
    for token in line.split():
        key, sep, value = token.partition("=")
        if sep and key.isidentifier():
            fields[key] = value.strip("'\"")
    return fields
