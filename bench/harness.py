"""One approach on one workload: fresh database, simulator, the sender as a
subprocess, rows inserted as the web app would, a bounded wait for the results, and
the metrics. prebookd and every baseline go through the same steps."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from bench.infra import (
    BASELINE_APP,
    PREBOOKD_APPS,
    cpu_seconds,
    cpus_apart,
    fresh_database,
    preemptions,
    sample_connections,
)
from bench.measure import measure
from bench.procs import running_baseline, running_prebookd
from bench.workload import Workload, fetch_rows, insert_rows, seed, wait_final
from prebookd.db.connection import connect
from prebookd.sim.server import Simulator
from tests.support import DaemonProcess


@dataclass(frozen=True)
class Approach:
    name: str  # as the report shows it
    kind: str  # "prebookd", or a bench.baselines kind ("poll", "sleeper")
    args: tuple[str, ...] = ()  # baseline command-line arguments
    settings: dict[str, object] = field(default_factory=dict)  # PREBOOKD_* for prebookd
    pin: bool = False  # sender and simulator on CPUs of their own (bench.infra.cpus_apart)


PREBOOKD = Approach("prebookd", "prebookd")


@contextlib.asynccontextmanager
async def simulator() -> AsyncIterator[Simulator]:
    sim = Simulator()
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


@contextlib.asynccontextmanager
async def sender(approach: Approach, dsn: str, sim: Simulator) -> AsyncIterator[DaemonProcess]:
    if approach.kind == "prebookd":
        started = running_prebookd(dsn, sim, **approach.settings)
    else:
        started = running_baseline(dsn, approach.kind, *approach.args)
    async with started as process:
        if not approach.pin:
            yield process
            return
        with cpus_apart(process.process.pid):
            yield process


async def run_workload(
    server_dsn: str,
    approach: Approach,
    make_workload: Callable[[float], Workload],
    *,
    lead: float,
    drain: float,
    label: str,
) -> tuple[dict[str, Any], list[str]]:
    """Run `approach` on the workload `make_workload(first instant)` and measure it;
    returns the result and the sender's output lines.

    The first instant is `lead` seconds after the sender is ready (time to seed and
    insert). Waits until every row is final or `drain` seconds after the last
    instant; rows still unsent then are censored (see bench.measure)."""
    apps = PREBOOKD_APPS if approach.kind == "prebookd" else (BASELINE_APP,)
    async with (
        fresh_database(server_dsn, label) as dsn,
        simulator() as sim,
    ):
        conn = await connect(dsn, role="bench")
        try:
            async with (
                sender(approach, dsn, sim) as process,
                sample_connections(dsn, apps) as held,
            ):
                pid = process.process.pid
                preempted, cpu = preemptions(pid), cpu_seconds(pid)
                workload = make_workload(time.time() + lead)
                box_ids = await seed(conn, sim, workload)
                inserted = time.time()
                await insert_rows(conn, box_ids, workload.rows)
                inserted_in = time.time() - inserted
                left = await wait_final(conn, workload.last_instant + drain)
                censor_at = time.time() if left else None
                preempted, cpu = preemptions(pid) - preempted, cpu_seconds(pid) - cpu
            rows = await fetch_rows(conn)
        finally:
            await conn.close()
    kind_of = {(p.box, p.session_id): p.kind for p in workload.rows}
    metrics = measure(rows, sim.requests, kind_of, censor_at=censor_at)
    result = {
        "approach": approach.name,
        "metrics": metrics,
        "db_connections": held.report(),
        "not_final_at_deadline": left,
        "insert_seconds": round(inserted_in, 3),
        "sender_process": {"preemptions": preempted, "cpu_s": round(cpu, 2)},
        "exit_code": process.process.returncode,
    }
    return result, process.lines
