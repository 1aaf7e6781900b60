"""Load for the chaos runs: web-app writers insert, reschedule, cancel and delete rows
while they fire (the `load` scenario).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from bench.chaos_bed import BOX, Bed, bed, burst_instants, finish, utc
from bench.chaos_verdict import CANCEL_GRACE, RowPlan, Verdict
from prebookd.db.connection import connect

GUARD = 2.0  # writers move a row only while both instants are this far away


@dataclass
class Writers:
    """Web-app writers: insert, reschedule, cancel and delete rows at random while they
    fire, recording when each change committed (the judge needs it)."""

    bed: Bed
    until: float
    rate: float  # actions per second, all writers together
    count: int
    actions: dict[str, int] = field(default_factory=dict)
    _busy: set[str] = field(default_factory=set)

    async def run(self) -> None:
        await asyncio.gather(*(self._writer() for _ in range(self.count)))

    async def _writer(self) -> None:
        rng = random.Random(self.bed.rng.random())
        conn = await connect(self.bed.db_dsn)
        try:
            max_actions = int((self.until - time.time()) * self.rate / self.count * 2) + 1
            for _ in range(max_actions):  # bounded in count, and in time below
                await asyncio.sleep(rng.expovariate(self.rate / self.count))
                if time.time() >= self.until:
                    break
                kind = rng.choices(["insert", "reschedule", "cancel", "delete"], [3, 3, 2, 2])[0]
                done = await getattr(self, f"_{kind}")(conn, rng)
                key = kind if done else f"{kind} (no-op)"
                self.actions[key] = self.actions.get(key, 0) + 1
        finally:
            await conn.close()

    def _pick(self, rng: random.Random, low: float, high: float) -> RowPlan | None:
        now = time.time()
        choices = [
            p
            for p in self.bed.plans.values()
            if p.id is not None
            and p.withdrawn_at is None
            and p.session_id not in self._busy
            and now + low <= p.available_at <= now + high
        ]
        return rng.choice(choices) if choices else None

    async def _insert(self, conn: asyncpg.Connection, rng: random.Random) -> bool:
        if self.until - time.time() < GUARD + 0.5:
            return False
        await self.bed.add_rows([rng.uniform(time.time() + GUARD, self.until)], conn)
        return True

    async def _reschedule(self, conn: asyncpg.Connection, rng: random.Random) -> bool:
        plan = self._pick(rng, GUARD + 0.5, 3600)
        if plan is None or self.until - time.time() < GUARD + 0.5:
            return False
        new = round(rng.uniform(time.time() + GUARD, self.until), 3)
        if any(abs(new - old) < GUARD for old in plan.instants):
            return False  # too close to an instant it had: the judge could not tell them apart
        self._busy.add(plan.session_id)
        try:
            sent = time.time()
            moved = await conn.fetchval(
                "UPDATE prebookings SET available_at = $2 WHERE id = $1 "
                "AND status IN ('pending', 'loaded') RETURNING id",
                plan.id,
                utc(new),
            )
            if moved is None:
                return False
            done = time.time()
            plan.racy |= done - sent > 0.5 or done > min(plan.available_at, new) - 1.0
            plan.instants.append(new)
            cls = self.bed.sim.box(BOX).classes[plan.session_id]
            self.bed.sim.add_class(BOX, dataclasses.replace(cls, opens_at=new))
            return True
        finally:
            self._busy.discard(plan.session_id)

    async def _cancel(self, conn: asyncpg.Connection, rng: random.Random) -> bool:
        return await self._withdraw(conn, rng, "cancel")

    async def _delete(self, conn: asyncpg.Connection, rng: random.Random) -> bool:
        return await self._withdraw(conn, rng, "delete")

    async def _withdraw(self, conn: asyncpg.Connection, rng: random.Random, how: str) -> bool:
        # Near the instant on purpose: some cancels race the request.
        plan = self._pick(rng, -0.3, 6.0)
        if plan is None:
            return False
        self._busy.add(plan.session_id)
        try:
            if how == "cancel":
                sql = "UPDATE prebookings SET status = 'cancelled' WHERE id = $1 "
            else:
                sql = "DELETE FROM prebookings WHERE id = $1 "
            sql += "AND status IN ('pending', 'loaded') RETURNING id"
            if await conn.fetchval(sql, plan.id) is None:
                return False  # already executing or final: the web app no longer cancels it
            if how == "cancel":
                plan.cancelled_at = time.time()
            else:
                plan.deleted_at = time.time()
            return True
        finally:
            self._busy.discard(plan.session_id)


async def run_load(
    db_dsn: str,
    state_dir: Path,
    *,
    rows: int,
    span: float,
    writers: int,
    rate: float,
    rng: random.Random,
) -> Verdict:
    """`rows` prebookings over `span` seconds while writers change rows under prebookd."""
    async with bed(db_dsn, state_dir, rng=rng, members=200) as b:
        await b.start()
        start = time.time() + 4.0
        await b.add_rows(burst_instants(start, span, rows))
        team = Writers(b, until=start + span, rate=rate, count=writers)
        await team.run()
        changes = sum(n for kind, n in team.actions.items() if "no-op" not in kind)
        verdict = await finish(b, "load", changes, start + span)
        verdict.notes.append(
            "writers: " + ", ".join(f"{k} {v}" for k, v in sorted(team.actions.items()))
        )
        before = sum(1 for lag in verdict.raced if lag < 0)
        after = [lag for lag in verdict.raced if lag >= 0]
        verdict.notes.append(
            f"{verdict.withdrawn} rows cancelled or deleted: {before} once their request "
            f"was written (it stands), {len(after)} under {CANCEL_GRACE:g} s before it "
            f"was written (at most {max(after, default=0) * 1000:.0f} ms), "
            f"{verdict.withdrawn - len(verdict.raced)} never sent"
        )
        racy = sum(1 for p in b.plans.values() if p.racy)
        if racy:
            verdict.notes.append(f"{racy} reschedules too slow to judge their instant")
        return verdict
