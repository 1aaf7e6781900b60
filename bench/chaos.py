"""Chaos runs: prebookd under SIGKILLs, Postgres restarts, a broken network to Postgres,
a partition between two instances, and writers changing rows under it; every row is
judged against the simulator.

Each scenario runs `prebookd run` as a subprocess (restarted at once when killed, or
when it exits by itself, as systemd would) against a database of its own and the
simulator (in this process, on loopback), then judges every row (bench/chaos_verdict.py
says what each column of the table means).

Usage: .venv/bin/python -m bench.chaos [--quick]
                      [--only kills,pg,proxy,partition,load,balancer] [--seed N] [--logs DIR]
Default: the long runs (about 22 minutes: 20 kills; 5 Postgres restarts; 9 proxy
faults; 5 partitions; 10,000 rows over 10 minutes with 10 writers; 1,000 rows behind a
load balancer closing idle connections); --quick: short versions of each (about 5
minutes). Exits 1 when any scenario found a problem.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.chaos_bed import (
    DAEMON_SETTINGS,
    LISTENER_BACK,
    Bed,
    bed,
    burst_instants,
    finish,
    held_by,
    sleep_until,
    wait_event,
)
from bench.chaos_load import run_load
from bench.chaos_verdict import Fault, Verdict, events, first_after, table
from prebookd.db.connection import connect
from prebookd.db.embedded import EmbeddedPostgres, start_embedded
from prebookd.db.migrate import migrate
from prebookd.sim.server import Balancer
from tests.pgproxy import PgProxy, pg_proxy
from tests.support import start_postgres, stop_postgres

# ---- scenarios -------------------------------------------------------------------------


async def run_kills(
    db_dsn: str, state_dir: Path, *, rows: int, span: float, kills: int, rng: random.Random
) -> Verdict:
    """SIGKILL at random moments while rows fire, restarted at once each time."""
    async with bed(db_dsn, state_dir, rng=rng) as b:
        await b.start()
        start = time.time() + 3.0
        await b.add_rows(burst_instants(start, span, rows))
        moments = sorted(rng.uniform(start, start + span) for _ in range(kills))
        for moment in moments:
            await sleep_until(moment)
            await b.kill_restart()
        await b.daemon.wait_for("daemon_ready", timeout=60)
        verdict = await finish(b, "sigkill", len(b.kills), start + span)
        recovered = len(events(b.lines, "spool_recovered"))
        verdict.notes.append(f"{recovered} of {len(b.kills)} restarts replayed the result spool")
        return verdict


async def run_pg_restarts(
    server: EmbeddedPostgres,
    db_dsn: str,
    state_dir: Path,
    *,
    rows: int,
    span: float,
    restarts: int,
    down_for: float,
    rng: random.Random,
) -> Verdict:
    """Postgres stopped (fast shutdown) and started again mid-burst, `restarts` times."""
    async with bed(db_dsn, state_dir, rng=rng) as b:
        await b.start()
        start = time.time() + 3.0
        await b.add_rows(burst_instants(start, span, rows))
        await b.conn.close()
        slot = span / restarts
        injected = []
        for k in range(restarts):
            at = start + slot * k + rng.uniform(0, max(0.0, slot - down_for))
            await sleep_until(at)
            injected.append((time.time(), Fault("restart", at - start, down_for)))
            await stop_postgres(server)
            await asyncio.sleep(down_for)
            await start_postgres(server)
        b._conn = await connect(db_dsn)
        return await _finish_faults(b, "pg-restart", start + span, injected)


async def _finish_faults(
    b: Bed, name: str, last_instant: float, injected: list[tuple[float, Fault]]
) -> Verdict:
    """Let the listener come back after the last fault (however slowly), then judge."""
    if injected:
        healed = max(at + fault.lasts for at, fault in injected)
        await sleep_until(healed)
        with contextlib.suppress(AssertionError):  # "never" shows in the notes
            await wait_event(b, "listener_connected", after=healed, timeout=LISTENER_BACK)
    verdict = await finish(b, name, len(injected), last_instant)
    verdict.injected = injected
    verdict.notes += _listener_notes(verdict.lines, injected)
    return verdict


async def run_proxy(
    db_dsn: str,
    state_dir: Path,
    *,
    rows: int,
    span: float,
    faults: Sequence[Fault],
    rng: random.Random,
    name: str = "proxy",
) -> Verdict:
    """prebookd talks to Postgres through a proxy that cuts, refuses or blackholes."""
    async with (
        pg_proxy(db_dsn) as proxy,
        bed(db_dsn, state_dir, rng=rng, daemon_dsn=proxy.dsn(db_dsn)) as b,
    ):
        await b.start()
        start = time.time() + 3.0
        await b.add_rows(burst_instants(start, span, rows))
        injected = []
        for fault in sorted(faults, key=lambda f: f.at):
            await sleep_until(start + fault.at)
            injected.append((time.time(), fault))
            await _inject(proxy, fault)
        return await _finish_faults(b, name, start + span, injected)


async def _inject(proxy: PgProxy, fault: Fault) -> None:
    if fault.kind == "cut":
        proxy.cut()
        return
    if fault.kind == "refuse":
        proxy.cut()  # what a Postgres going away does to its connections
        proxy.refuse()
    elif fault.kind == "blackhole":
        proxy.blackhole()
    else:
        raise ValueError(f"unknown fault {fault.kind!r}")
    await asyncio.sleep(fault.lasts)
    proxy.pass_()


def _listener_notes(lines: list[str], injected: list[tuple[float, Fault]]) -> list[str]:
    """How long after each fault the listener noticed it, and reconnected."""
    notes = []
    for at, fault in injected:
        noticed = first_after(lines, "listener_disconnected", at)
        again = first_after(lines, "listener_connected", noticed)
        notes.append(
            f"{fault.kind} at +{fault.at:.1f} s: listener_disconnected after "
            + ("never" if noticed is None else f"{noticed - at:.1f} s")
            + ", listener_connected after "
            + ("never" if again is None else f"{again - at:.1f} s")
        )
    return notes


async def run_partition(
    db_dsn: str, state_dir: Path, *, rows: int, rounds: int, rng: random.Random
) -> Verdict:
    """Two instances; just before an instant, the one holding its rows (alpha) loses
    Postgres (blackhole) for longer than a lease, while the other (beta) still reaches
    it. Each round: alpha claims, beta starts, the partition, beta stops."""
    lease = 3.0
    arm_lead = float(str(DAEMON_SETTINGS["arm_lead"]))
    async with pg_proxy(db_dsn) as proxy:
        async with bed(
            db_dsn,
            state_dir / "alpha",
            rng=rng,
            daemon_dsn=proxy.dsn(db_dsn),
            settings={"instance_name": "alpha", "lease_seconds": lease},
        ) as b:
            await b.start()
            for _ in range(rounds):
                instant = time.time() + arm_lead + 3.0
                plans = await b.add_rows([instant] * rows)
                await held_by(b, [p.id for p in plans], "alpha", timeout=10)
                beta = await b.start_other("beta", db_dsn)
                await sleep_until(instant - 3.5)
                proxy.blackhole()  # alpha's last renewal: its leases end before the instant
                await sleep_until(instant + lease + 1.0)
                healed = time.time()
                proxy.pass_()
                await wait_event(b, "listener_connected", after=healed, timeout=30)
                await b.wait_settled(timeout=30)
                await beta.stop(timeout=60)
            verdict = await finish(b, "partition", rounds, time.time())
        verdict.notes.append(f"{len(events(verdict.lines, 'lease_taken_over'))} rows taken over")
        return verdict


# ---- the script ------------------------------------------------------------------------


async def run_balancer(
    db_dsn: str, state_dir: Path, *, rows: int, span: float, rng: random.Random
) -> Verdict:
    """AimHarder's load balancer closes connections idle for 1.2 s while requests wait
    3 s at their gates (the default stage_lead): with a FIN, then a 408, then a reset,
    a third of the run each."""
    idle = 1.2
    async with bed(db_dsn, state_dir, rng=rng, balancer=Balancer(idle_timeout=idle)) as b:
        await b.start()
        start = time.time() + 3.0
        await b.add_rows(burst_instants(start, span, rows))
        for k, action in enumerate(("close", "408", "reset")):
            await sleep_until(start + span * k / 3)
            b.sim.set_balancer(Balancer(idle_timeout=idle, idle_action=action))
        verdict = await finish(b, "balancer", 3, start + span)
        stats = b.sim.balancer_stats
        restaged = len(events(b.lines, "staged_request_lost"))
        verdict.notes.append(
            f"idle connections closed {stats.idle_closed}, answered 408 {stats.idle_408}, "
            f"reset {stats.idle_reset}; staged requests lost and staged again {restaged}"
        )
        return verdict


async def _fresh_database(server: EmbeddedPostgres, name: str) -> str:
    database = f"chaos_{name.replace('-', '_')}_{uuid.uuid4().hex[:6]}"
    admin = await connect(server.dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{database}"')
    finally:
        await admin.close()
    dsn = urlsplit(server.dsn)._replace(path=f"/{database}").geturl()
    conn = await connect(dsn)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    return dsn


SCENARIOS = ("kills", "pg", "proxy", "partition", "load", "balancer")


async def main_async(args: argparse.Namespace) -> list[Verdict]:
    rng = random.Random(args.seed)
    quick = args.quick
    work = Path(tempfile.mkdtemp(prefix="prebookd-chaos-"))
    server = await asyncio.to_thread(start_embedded, work)
    verdicts = []
    try:
        for name in args.only:
            state = work / name
            dsn = await _fresh_database(server, name)
            print(f"--- {name} ...", file=sys.stderr, flush=True)
            if name == "kills":
                verdict = await run_kills(
                    dsn, state, rows=300 if quick else 1000, span=15 if quick else 60,
                    kills=5 if quick else 20, rng=rng,
                )  # fmt: skip
            elif name == "pg":
                verdict = await run_pg_restarts(
                    server, dsn, state, rows=200 if quick else 1000, span=18 if quick else 75,
                    restarts=2 if quick else 5, down_for=6.0 if quick else 8.0, rng=rng,
                )  # fmt: skip
            elif name == "proxy":
                verdict = await run_proxy(dsn, state, rng=rng, **_proxy_plan(quick))
            elif name == "partition":
                verdict = await run_partition(
                    dsn, state, rows=10 if quick else 50, rounds=1 if quick else 5, rng=rng
                )
            elif name == "load":
                verdict = await run_load(
                    dsn, state, rows=1000 if quick else 10_000, span=30 if quick else 600,
                    writers=4 if quick else 10, rate=10 if quick else 5, rng=rng,
                )  # fmt: skip
            elif name == "balancer":
                verdict = await run_balancer(
                    dsn, state, rows=150 if quick else 1000, span=30 if quick else 120, rng=rng
                )
            else:
                raise ValueError(f"unknown scenario {name!r}")
            verdicts.append(verdict)
            if args.logs is not None:
                args.logs.mkdir(parents=True, exist_ok=True)
                (args.logs / f"{name}.log").write_text("\n".join(verdict.lines) + "\n")
            print(table([verdict]).splitlines()[-1], file=sys.stderr, flush=True)
    finally:
        await asyncio.to_thread(server._server.ensure_postgres_running)
        await asyncio.to_thread(server.stop)
        shutil.rmtree(work, ignore_errors=True)
    return verdicts


def _proxy_plan(quick: bool) -> dict[str, Any]:
    if quick:
        faults = [Fault("cut", 2), Fault("refuse", 5, 2), Fault("blackhole", 9, 17)]
        return {"rows": 200, "span": 30, "faults": faults}
    faults = [Fault("cut", 5 + 10 * k) for k in range(5)]
    faults += [Fault("refuse", 60, 3), Fault("refuse", 75, 8)]
    faults += [Fault("blackhole", 90, 12), Fault("blackhole", 115, 20)]
    return {"rows": 1000, "span": 150, "faults": faults}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs (a few minutes)")
    parser.add_argument(
        "--only",
        type=lambda s: s.split(","),
        default=list(SCENARIOS),
        help="comma-separated scenarios: " + ",".join(SCENARIOS),
    )
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--logs", type=Path, help="write each scenario's daemon log here")
    args = parser.parse_args()
    unknown = set(args.only) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}; known: {', '.join(SCENARIOS)}")
    print(f"seed {args.seed}", file=sys.stderr)
    verdicts = asyncio.run(main_async(args))
    print(table(verdicts))
    bad = False
    for verdict in verdicts:
        for note in verdict.notes:
            print(f"{verdict.name}: {note}")
        for problem, items in verdict.problems().items():
            bad = True
            print(f"{verdict.name}: {problem} ({len(items)}):")
            for item in items[:10]:
                print(f"    {item}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
