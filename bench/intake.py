"""Scenario `intake`: how soon a new prebooking is armed, and how late it may come.

1. Insert-to-armed latency at 100 inserts per second, one INSERT (its own
   transaction) at a time, as the web app does. Each row opens ~50 s later, within
   prebookd's arm_lead (60 s), so it is claimed as soon as it is seen. Measured from
   the moment the INSERT returned (committed; at most one loopback round trip after
   the commit itself) to prebookd's debug event `prebooking_armed` for that row,
   whose timestamp is taken when the row has been claimed, loaded and handed to the
   firing of its instant: the daemon has the row and nothing is left to do before
   staging. That is the honest end point. The row's `loaded_at` (the claim's
   `now()`, when the claim *started*) is shown beside it, earlier by the claim's
   own round trip. The rows are deleted before they open, so no firing disturbs
   the measurement.
2. The shortest lead that still fires on time: a row inserted 1000, 500, 300, 200,
   100, 50 ms before its instant, a few times each; on time = its request arrived at
   the simulator no earlier than the instant and less than 1 ms after it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from bench.harness import simulator
from bench.infra import PREBOOKD_APPS, fresh_database, sample_connections
from bench.measure import book_requests, first_requests
from bench.procs import log_fields, log_time, running_prebookd
from bench.report import PREBOOKD_CONNECTION_LIMIT, Line, below, connections_line
from bench.stats import fmt_ms, fmt_summary, summary
from bench.workload import DAY, Workload, seed
from prebookd.db.connection import connect
from prebookd.sim.server import Simulator
from tests.support import DaemonProcess, open_class, utc

NAME = "intake"
ON_TIME_MS = 1.0
# Intake rows open OPENS_AFTER s after the last insert, CLASSES instants half a second
# apart: late enough that nothing stages (3 s before) while intake is measured, and
# early enough that even the first insert is within arm_lead (60 s), so every row is
# claimed as soon as it is seen.
OPENS_AFTER = 15.0
CLASSES = 10
ARM_LEAD = 60.0


@dataclass(frozen=True)
class Size:
    rate: float  # inserts per second
    seconds: float  # for this long
    leads_ms: tuple[int, ...] = (1000, 500, 300, 200, 100, 50)
    trials: int = 5  # per lead
    members: int = 50


FULL = Size(rate=100.0, seconds=20.0)
QUICK = Size(rate=100.0, seconds=3.0, trials=2)


def describe(size: Size) -> str:
    return (
        f"{size.rate:g} inserts/s for {size.seconds:g} s; leads "
        f"{', '.join(map(str, size.leads_ms))} ms x {size.trials}"
    )


async def run(server_dsn: str, size: Size, earlier: dict[str, Any]) -> dict[str, Any]:
    members = tuple(f"member{i:04d}@bench.test" for i in range(size.members))
    async with fresh_database(server_dsn, NAME) as dsn, simulator() as sim:
        conn = await connect(dsn, role="bench")
        try:
            # No rows yet: seed() only needs the boxes and members.
            box_ids = await seed(conn, sim, Workload(("intake",), members, (), {}))
            box = box_ids["intake"]
            async with (
                # A short shutdown_timeout: at the end, armed firings of deleted rows are
                # still sleeping towards their instants and shutdown would wait for them.
                running_prebookd(dsn, sim, log_level="debug", shutdown_timeout=3) as daemon,
                sample_connections(dsn, PREBOOKD_APPS) as held,
            ):
                rate = await _rate(conn, sim, daemon, box, members, size)
                leads = [
                    await _lead(conn, sim, box, members[0], lead, size) for lead in size.leads_ms
                ]
        finally:
            await conn.close()
    on_time = [entry["lead_ms"] for entry in leads if entry["on_time"] == entry["trials"]]
    shortest = min(on_time, default=None)
    return {
        "size": asdict(size),
        "rate": rate,
        "leads": leads,
        "leads_all_on_time_ms": on_time,
        "shortest_on_time_lead_ms": shortest,
        "db_connections": held.report(),
        "log": daemon.lines,
    }


async def _rate(
    conn: Any,
    sim: Simulator,
    daemon: DaemonProcess,
    box: uuid.UUID,
    members: tuple[str, ...],
    size: Size,
) -> dict[str, Any]:
    """Phase 1: paced inserts; returns latency summaries."""
    total = int(size.rate * size.seconds)
    begun = time.time()
    instants = [round(begun + size.seconds + OPENS_AFTER + k / 2, 3) for k in range(CLASSES)]
    assert instants[-1] - begun < ARM_LEAD, "intake too long: its rows would not be armed at once"
    for k, instant in enumerate(instants):
        open_class(sim, "intake", f"i{k}", instant, capacity=total)
    committed: dict[uuid.UUID, float] = {}
    # A slow Postgres must not stretch the run, nor let the instants come near.
    give_up = begun + size.seconds + 5.0
    for n in range(total):
        if time.time() > give_up:
            break
        target = begun + n / size.rate
        if (wait := target - time.time()) > 0:
            await asyncio.sleep(wait)
        row_id = await _insert(
            conn, box, members[n % len(members)], f"i{n % CLASSES}", instants[n % CLASSES]
        )
        committed[row_id] = time.time()
    elapsed = time.time() - begun
    # Wait (bounded) for the last rows, but delete them all before anything stages.
    deadline = min(time.time() + 10.0, instants[0] - 5.0)
    armed = await _armed_times(daemon, set(committed), deadline=deadline)
    loaded = {
        r["id"]: r["loaded_at"].timestamp()
        for r in await conn.fetch(
            "SELECT id, loaded_at FROM prebookings WHERE loaded_at IS NOT NULL"
        )
    }
    # Withdraw them all before their instant: this phase measures intake only.
    await conn.execute("DELETE FROM prebookings WHERE id = ANY($1::uuid[])", list(committed))
    order = list(committed)  # insert order
    return {
        "raw": {
            "committed_at": [committed[i] for i in order],
            "armed_ms": [
                None if i not in armed else (armed[i] - committed[i]) * 1000 for i in order
            ],
            "claim_started_ms": [
                None if i not in loaded else (loaded[i] - committed[i]) * 1000 for i in order
            ],
        },
        "inserts": len(committed),
        "achieved_rate": round(len(committed) / elapsed, 1),
        "armed_ms": summary([(armed[i] - t) * 1000 for i, t in committed.items() if i in armed]),
        "claim_started_ms": summary(
            [(loaded[i] - t) * 1000 for i, t in committed.items() if i in loaded]
        ),
        "not_armed": sum(1 for i in committed if i not in armed),
    }


async def _insert(
    conn: Any, box: uuid.UUID, email: str, session_id: str, instant: float
) -> uuid.UUID:
    row_id: uuid.UUID = await conn.fetchval(
        """INSERT INTO prebookings (user_email, box_id, booking_data, available_at)
           VALUES ($1, $2, $3, $4) RETURNING id""",
        email,
        box,
        {"day": DAY, "familyId": "", "id": session_id, "insist": 0},
        utc(instant),
    )
    return row_id


async def _armed_times(
    daemon: DaemonProcess, ids: set[uuid.UUID], deadline: float
) -> dict[uuid.UUID, float]:
    """prebooking_armed timestamps of these rows, waiting (bounded) for the last ones."""
    wanted = {str(i): i for i in ids}
    found: dict[uuid.UUID, float] = {}
    scanned = 0
    while True:
        lines = daemon.lines
        for line in lines[scanned:]:
            if "prebooking_armed" in line.split():
                row = wanted.get(log_fields(line).get("prebooking_id", ""))
                if row is not None:
                    found.setdefault(row, log_time(line))
        scanned = len(lines)
        if len(found) == len(ids) or time.time() >= deadline:
            return found
        await asyncio.sleep(0.1)


async def _lead(
    conn: Any, sim: Simulator, box: uuid.UUID, email: str, lead_ms: int, size: Size
) -> dict[str, Any]:
    """Phase 2: rows inserted `lead_ms` before their instant; how late they went."""
    arrival_ms: list[float | None] = []
    sender_ms: list[float | None] = []
    for trial in range(size.trials):
        session_id = f"lead{lead_ms}_{trial}"
        instant = time.time() + lead_ms / 1000
        open_class(sim, "intake", session_id, instant, capacity=1)
        row_id = await _insert(conn, box, email, session_id, instant)
        deadline = instant + 5.0
        while time.time() < deadline:
            status = await conn.fetchval("SELECT status FROM prebookings WHERE id = $1", row_id)
            if status in ("completed", "failed"):
                break
            await asyncio.sleep(0.05)
        first = first_requests(book_requests(sim.requests)).get(("intake", session_id, email))
        arrival_ms.append(None if first is None else (first - instant) * 1000)
        sender_ms.append(
            await conn.fetchval("SELECT lateness_ms FROM prebookings WHERE id = $1", row_id)
        )
        await asyncio.sleep(0.2)  # let its results be written before the next one
    # Fired on time: written (prebookd's own stamp) within ON_TIME_MS of the instant,
    # and not early at the simulator. The simulator's arrival stamp is shown too, but
    # not judged by: on a busy machine it adds the simulator's own wait for a CPU.
    on_time = sum(
        1
        for sent, seen in zip(sender_ms, arrival_ms, strict=True)
        if sent is not None and 0 <= sent < ON_TIME_MS and seen is not None and seen >= 0
    )
    return {
        "lead_ms": lead_ms,
        "trials": size.trials,
        "on_time": on_time,
        "arrival_ms": arrival_ms,
        "sender_ms": sender_ms,
    }


def table(result: dict[str, Any]) -> list[Line]:
    rate = result["rate"]
    lines = [
        Line(
            f"insert-to-armed (prebooking_armed), {rate['achieved_rate']:g}/s",
            fmt_summary(rate["armed_ms"], ("p50", "p99", "max")),
            "p99 < 10 ms",
            below(rate["armed_ms"], "p99", 10.0),
        ),
        Line(
            "insert-to-claim start (loaded_at)",
            fmt_summary(rate["claim_started_ms"], ("p50", "p99", "max")),
        ),
        Line("rows never armed", str(rate["not_armed"]), "0", rate["not_armed"] == 0),
    ]
    for entry in result["leads"]:
        sent = max((v for v in entry["sender_ms"] if v is not None), default=None)
        seen = max((v for v in entry["arrival_ms"] if v is not None), default=None)
        lines.append(
            Line(
                f"lead {entry['lead_ms']} ms: on time",
                f"{entry['on_time']} of {entry['trials']} "
                f"(latest: written {fmt_ms(sent)}, arrived {fmt_ms(seen)})",
            )
        )
    shortest = result["shortest_on_time_lead_ms"]
    missed = [e["lead_ms"] for e in result["leads"] if e["on_time"] != e["trials"]]
    lines += [
        Line(
            "shortest lead with every trial on time (written < 1 ms)",
            ("none" if shortest is None else f"{shortest} ms")
            + (f"; some trials late at {', '.join(map(str, missed))} ms" if missed else ""),
            "100 ms on time",
            100 in result["leads_all_on_time_ms"],
        ),
        connections_line(result["db_connections"], limit=PREBOOKD_CONNECTION_LIMIT),
    ]
    return lines
