"""Scenario `aim` (issue 18): aiming at each box's opening by the box's own clock.

Nine simulator boxes, one per cell of clock offset -300 / 0 / +300 ms (the box's
clock minus ours) and one-way delay 1 / 15 / 40 ms (each way, jitter 0.5 ms). Every
`spacing` seconds a class opens in every box, by the box's clock, and `per_class`
members prebook it (`capacity` places). The same workload runs twice, one after the
other, each on a fresh database and simulator: prebookd with `aim=send` (written at
available_at by our clock) and with `aim=arrive` (the default).

Per cell and approach: the first successful booking's arrival minus the opening, by
the box's clock (p50, p99 over the instants), "not open yet" answers per booking,
booking requests per booking, and (arrive) the clock estimate prebookd logged.
Target for `arrive`: p99 within 0-5 ms of the opening, at most 2 "not open yet" per
booking, in every cell.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any

from bench.harness import Approach, sender, simulator
from bench.infra import fresh_database
from bench.report import Line
from bench.stats import quantile
from bench.workload import SINGLE, Planned, Workload, insert_rows, seed, wait_final
from prebookd.db.connection import connect
from prebookd.sim.server import BoxClock

NAME = "aim"
OFFSETS_MS = (-300, 0, 300)
DELAYS_MS = (1, 15, 40)
JITTER_MS = 0.5
TARGET_MS = 5.0
NOT_OPEN_MAX = 2.0
BOOKED_STATES = (1, 0)


@dataclass(frozen=True)
class Size:
    instants: int  # classes opening per box
    spacing: float  # seconds between instants
    per_class: int  # members prebooking each class
    capacity: int  # places in each class
    lead: float = 20.0  # sender ready -> first instant: the boxes' clocks are measured
    drain: float = 8.0


FULL = Size(instants=30, spacing=1.0, per_class=3, capacity=2)
QUICK = Size(instants=6, spacing=0.8, per_class=2, capacity=1)


def describe(size: Size) -> str:
    return (
        f"9 boxes (offset {'/'.join(map(str, OFFSETS_MS))} ms x delay "
        f"{'/'.join(map(str, DELAYS_MS))} ms, jitter {JITTER_MS} ms), {size.instants} "
        f"instants {size.spacing:g} s apart, {size.per_class} bookings a class; "
        "aim=send, then aim=arrive"
    )


def box_name(offset_ms: int, delay_ms: int) -> str:
    sign = "m" if offset_ms < 0 else "p" if offset_ms > 0 else "z"
    return f"{sign}{abs(offset_ms)}d{delay_ms}"


CELLS = {box_name(o, d): BoxClock(o, d, JITTER_MS) for o in OFFSETS_MS for d in DELAYS_MS}


def aim_workload(size: Size, start: float) -> Workload:
    members = tuple(f"member{i:02d}@aim.bench" for i in range(size.per_class))
    rows: list[Planned] = []
    capacity: dict[str, int] = {}
    for k in range(size.instants):
        instant = round(start + k * size.spacing, 3)
        for c, box in enumerate(CELLS):
            session_id = f"{k + 1}{c:02d}"
            capacity[session_id] = size.capacity
            rows += [Planned(box, email, session_id, instant, SINGLE) for email in members]
    return Workload(tuple(CELLS), members, tuple(rows), capacity)


def is_not_open(answer: dict[str, Any]) -> bool:
    return answer.get("bookState") == -4 or str(answer.get("errorMssgLang", "")).startswith(
        "ERROR_ANTELACION"
    )


async def run_one(server_dsn: str, aim: str, size: Size) -> dict[str, Any]:
    approach = Approach(
        f"prebookd aim={aim}",
        "prebookd",
        # Armed (and each box's clock measured) as soon as the rows are in.
        settings={"aim": aim, "arm_lead": size.lead + 2, "log_level": "info"},
    )
    async with fresh_database(server_dsn, f"aim_{aim}") as dsn, simulator() as sim:
        conn = await connect(dsn, role="bench")
        try:
            async with sender(approach, dsn, sim) as process:
                workload = aim_workload(size, time.time() + size.lead)
                box_ids = await seed(conn, sim, workload)
                for box, clock in CELLS.items():
                    sim.set_box_clock(box, clock)
                await insert_rows(conn, box_ids, workload.rows)
                left = await wait_final(conn, workload.last_instant + size.drain)
        finally:
            await conn.close()
    instant_of = {p.session_id: p.instant for p in workload.rows}
    by_class: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for r in sim.requests:
        if r.path == "/api/book" and r.session_id in instant_of:
            by_class[(r.box, r.session_id)].append(r)
    cells: dict[str, Any] = {}
    for box in CELLS:
        firsts: list[float] = []
        not_open = requests = 0
        for k in range(size.instants):
            session_id = f"{k + 1}{list(CELLS).index(box):02d}"
            calls = by_class.get((box, session_id), [])
            requests += len(calls)
            not_open += sum(1 for c in calls if is_not_open(c.answer))
            booked = [
                c.box_arrived_at
                for c in calls
                if c.answer.get("bookState") in BOOKED_STATES and c.box_arrived_at is not None
            ]
            if booked:
                firsts.append((min(booked) - instant_of[session_id]) * 1000)
        bookings = size.instants * size.per_class
        cells[box] = {
            "first_booked_ms": {
                "n": len(firsts),
                "p50": round(quantile(firsts, 0.5), 2) if firsts else None,
                "p99": round(quantile(firsts, 0.99), 2) if firsts else None,
                "min": round(min(firsts), 2) if firsts else None,
                "each": [round(f, 2) for f in firsts],  # instant by instant
            },
            "not_open_per_booking": round(not_open / bookings, 2),
            "requests_per_booking": round(requests / bookings, 2),
        }
    estimates = {}
    for line in process.lines:
        if "box_clock_measured" in line.split() or "box_clock_corrected" in line.split():
            fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
            if fields.get("box") in CELLS:
                estimates[fields["box"]] = {
                    k: fields.get(k) for k in ("offset_ms", "bound_ms", "trip_ms", "probes")
                }
    return {
        "aim": aim,
        "cells": cells,
        "estimates": estimates,
        "not_final_at_deadline": left,
        "log": process.lines,
    }


async def run(server_dsn: str, size: Size, earlier: dict[str, Any]) -> dict[str, Any]:
    runs = {aim: await run_one(server_dsn, aim, size) for aim in ("send", "arrive")}
    return {
        "size": asdict(size),
        "workload": describe(size),
        "by_aim": {aim: {k: v for k, v in r.items() if k != "log"} for aim, r in runs.items()},
        # Each run's prebookd output, which bench.run saves as logs/aim-prebookd-aim=*.log.
        "approaches": [{"approach": f"prebookd aim={a}", "log": r["log"]} for a, r in runs.items()],
    }


def _cell_text(cell: dict[str, Any]) -> str:
    first = cell["first_booked_ms"]
    if not first["n"]:
        return "nothing booked"
    return (
        f"p50 {first['p50']:+.1f} ms, p99 {first['p99']:+.1f} ms; not open "
        f"{cell['not_open_per_booking']:.2f}/booking; {cell['requests_per_booking']:.2f} "
        "requests/booking"
    )


def table(result: dict[str, Any]) -> list[Line]:
    lines = []
    for box, clock in CELLS.items():
        label = f"offset {clock.clock_offset_ms:+.0f} ms, delay {clock.delay_ms:.0f} ms"
        for aim in ("send", "arrive"):
            cell = result["by_aim"][aim]["cells"][box]
            first = cell["first_booked_ms"]
            met = None
            if aim == "arrive":
                met = bool(
                    first["n"]
                    and first["min"] >= 0
                    and first["p99"] <= TARGET_MS
                    and cell["not_open_per_booking"] <= NOT_OPEN_MAX
                )
            target = (
                f"p99 0-{TARGET_MS:g} ms, <= {NOT_OPEN_MAX:g} not open" if met is not None else ""
            )
            lines.append(Line(f"{label}, aim={aim}", _cell_text(cell), target, met))
    for box, e in sorted(result["by_aim"]["arrive"]["estimates"].items()):
        clock = CELLS[box]
        lines.append(
            Line(
                f"offset {clock.clock_offset_ms:+.0f} ms, delay {clock.delay_ms:.0f} ms: estimate",
                f"offset {e['offset_ms']} ms ±{e['bound_ms']}, trip {e['trip_ms']} ms"
                + (f", {e['probes']} probes" if e.get("probes") else " (corrected)"),
            )
        )
    return lines


def markdown(result: dict[str, Any]) -> str:
    """The README's table."""
    out = [
        "| box clock | one-way | aim=send p50 / p99 | not open, requests per booking | "
        "aim=arrive p50 / p99 | not open, requests per booking |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for box, clock in CELLS.items():
        row = [f"{clock.clock_offset_ms:+.0f} ms", f"{clock.delay_ms:.0f} ms"]
        for aim in ("send", "arrive"):
            cell = result["by_aim"][aim]["cells"][box]
            first = cell["first_booked_ms"]
            row.append(f"{first['p50']:+.1f} / {first['p99']:+.1f} ms" if first["n"] else "-")
            row.append(f"{cell['not_open_per_booking']:.2f}, {cell['requests_per_booking']:.2f}")
        out.append("| " + " | ".join(row) + " |")
    return "\n".join(out)


def main() -> None:
    from bench.run import main as run_main

    run_main(["--scenario", NAME, *sys.argv[1:]])


if __name__ == "__main__":
    main()
