"""Workloads as the web app would write them: boxes, members with background sessions,
classes in the simulator, and prebookings, plus reading the rows back afterwards.

A workload is a plan (who books which class at which instant, in created_at order),
so the same one can be given to prebookd and to each baseline.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from prebookd.sim.server import Simulator
from tests.support import add_box, add_member, open_class, utc

SINGLE = "single"
BURST = "burst"
DAY = "20301201"


@dataclass(frozen=True)
class Planned:
    """One prebooking to insert; the plan's order is the created_at order."""

    box: str  # subdomain
    email: str
    session_id: str
    instant: float  # epoch seconds: available_at
    kind: str  # SINGLE or BURST: which group its lateness is reported in


@dataclass(frozen=True)
class Workload:
    boxes: tuple[str, ...]
    members: tuple[str, ...]
    rows: tuple[Planned, ...]
    capacity: dict[str, int]  # session id -> places

    @property
    def last_instant(self) -> float:
        return max(p.instant for p in self.rows)

    @property
    def first_instant(self) -> float:
        return min(p.instant for p in self.rows)


def precision_workload(
    *, rows: int, seconds: float, burst: int, start: float, seed: int = 6
) -> Workload:
    """Bursts of `burst` rows at one instant, and single rows in between, over
    `seconds` from `start`. Half the rows (rounded down to whole bursts) are in bursts.
    created_at order is shuffled against member order, so FIFO is really tested."""
    members = tuple(f"member{i:04d}@bench.test" for i in range(max(burst, 1)))
    n_bursts = max(1, (rows // 2) // burst)
    n_singles = max(0, rows - n_bursts * burst)
    plan: list[Planned] = []
    capacity: dict[str, int] = {}
    for k in range(n_bursts):
        instant = round(start + seconds * (k + 0.5) / n_bursts, 3)
        capacity[f"b{k}"] = max(1, burst * 6 // 10)  # some booked, the rest "full"
        plan += [Planned("bench", email, f"b{k}", instant, BURST) for email in members]
    for k in range(n_singles):
        instant = round(start + seconds * (k + 0.25) / n_singles, 3)
        capacity[f"s{k}"] = 1
        plan.append(Planned("bench", members[k % len(members)], f"s{k}", instant, SINGLE))
    random.Random(seed).shuffle(plan)
    return Workload(("bench",), members, tuple(plan), capacity)


def burst_workload(*, boxes: int, per_box: int, instant: float, seed: int = 6) -> Workload:
    """`boxes` boxes, one class each opening at the same instant, `per_box` members in
    each (the same members in every box), created_at order shuffled across boxes."""
    names = tuple(f"box{b:02d}" for b in range(boxes))
    members = tuple(f"member{i:04d}@bench.test" for i in range(per_box))
    plan = [Planned(box, email, "c0", instant, BURST) for box in names for email in members]
    random.Random(seed).shuffle(plan)
    return Workload(names, members, tuple(plan), {"c0": max(1, per_box // 10)})


async def seed(
    conn: asyncpg.Connection, sim: Simulator, workload: Workload
) -> dict[str, uuid.UUID]:
    """Boxes, members and classes, in the table and in the simulator. Returns the boxes'
    row ids by subdomain. Members' tokens are fresh: no refresh on the hot path."""
    box_ids = {name: await add_box(conn, sim, name) for name in workload.boxes}
    for email in workload.members:
        await add_member(conn, sim, email)
    classes = {(p.box, p.session_id): p.instant for p in workload.rows}
    for (box, session_id), instant in classes.items():
        open_class(sim, box, session_id, instant, workload.capacity[session_id])
    return box_ids


async def insert_rows(
    conn: asyncpg.Connection,
    box_ids: dict[str, uuid.UUID],
    rows: Sequence[Planned],
    *,
    batch: int = 200,
) -> None:
    """INSERT the plan, created_at 1 µs apart in plan order (so FIFO is well defined
    even within one transaction), in batches: one NOTIFY per row at each commit."""
    base = utc(time.time())
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        await conn.executemany(
            """INSERT INTO prebookings (user_email, box_id, booking_data, available_at,
                                        created_at)
               VALUES ($1, $2, $3, $4, $5)""",
            [
                (
                    p.email,
                    box_ids[p.box],
                    {"day": DAY, "familyId": "", "id": p.session_id, "insist": 0},
                    utc(p.instant),
                    base + dt.timedelta(microseconds=start + i),
                )
                for i, p in enumerate(chunk)
            ],
        )


async def wait_final(conn: asyncpg.Connection, deadline: float, poll: float = 0.5) -> int:
    """Wait (bounded by the wall-clock `deadline`) until every row is completed or
    failed; returns how many were not."""
    while True:
        left = int(
            await conn.fetchval(
                "SELECT count(*) FROM prebookings WHERE status NOT IN ('completed', 'failed')"
            )
        )
        if left == 0 or time.time() >= deadline:
            return left
        await asyncio.sleep(min(poll, max(0.0, deadline - time.time())))


@dataclass(frozen=True)
class Row:
    """A prebooking as it ended up: what the sender says it did."""

    id: uuid.UUID
    box: str
    email: str
    session_id: str
    instant: float
    created_at: float
    written_at: float | None
    lateness_ms: float | None  # the sender's own: written_at - available_at
    loaded_at: float | None
    status: str
    outcome: str | None


def _epoch(value: dt.datetime | None) -> float | None:
    return None if value is None else value.timestamp()


async def fetch_rows(conn: asyncpg.Connection) -> list[Row]:
    records = await conn.fetch(
        """SELECT p.id, b.subdomain, p.user_email, p.booking_data->>'id' AS session_id,
                  p.available_at, p.created_at, p.written_at, p.lateness_ms, p.loaded_at,
                  p.status, p.outcome
             FROM prebookings p JOIN boxes b ON b.id = p.box_id"""
    )
    return [
        Row(
            id=r["id"],
            box=r["subdomain"],
            email=r["user_email"],
            session_id=r["session_id"],
            instant=r["available_at"].timestamp(),
            created_at=r["created_at"].timestamp(),
            written_at=_epoch(r["written_at"]),
            lateness_ms=r["lateness_ms"],
            loaded_at=_epoch(r["loaded_at"]),
            status=r["status"],
            outcome=r["outcome"],
        )
        for r in records
    ]
