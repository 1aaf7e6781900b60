"""Leases: renewed while this instance holds rows; rows other instances hold are
watched, and taken over when their lease runs out (their holder died)."""

from __future__ import annotations

import asyncio

import asyncpg
import structlog

from prebookd.daemon.core import ACTIVE, EngineCore
from prebookd.daemon.supervise import first_of
from prebookd.db import store
from prebookd.errors import describe
from prebookd.models import RowState

log = structlog.get_logger(__name__)

WATCH_INTERVAL = 1.0


class Leases(EngineCore):
    async def lease_loop(self, stop: asyncio.Event) -> None:
        """Renew the leases of rows held (every third of a lease) and, every second,
        look at rows other instances hold, to take over those whose lease ran out. Two
        loops: a slow look at watched rows must not hold up a renewal."""
        await asyncio.gather(self._renew_loop(stop), self._watch_loop(stop))

    async def _renew_loop(self, stop: asyncio.Event) -> None:
        while True:
            await first_of(stop.wait(), timeout=self.config.lease_seconds / 3)
            if stop.is_set():
                return
            try:
                await self._renew_leases()
            except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
                log.warning("lease_renewal_failed", error=describe(exc))

    async def _watch_loop(self, stop: asyncio.Event) -> None:
        while True:
            await first_of(stop.wait(), timeout=WATCH_INTERVAL)
            if stop.is_set():
                return
            try:
                await self._check_watched()
            except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
                log.warning("lease_watch_failed", error=describe(exc))

    async def _renew_leases(self) -> None:
        # Rows in firings, and rows sent whose final result Postgres has not confirmed
        # yet: until it has, the table says `loaded`/`executing`, and a lease run out
        # would let another instance take a row this one has already sent.
        unconfirmed = [i for i in self._done if i not in self._confirmed]
        held = [*self._armed, *unconfirmed]
        if not held:
            return
        await self.hot.wait_clear()
        kept = await store.renew_leases(
            self._pool, held, self.config.lease_owner, self.config.lease_seconds
        )
        # Only rows asked about: one armed while the renewal was on its way is ours.
        for row_id in set(held) - kept:
            firing = self._armed.get(row_id)
            # Lost while we could not renew (Postgres away longer than a lease): the
            # row may be another instance's now; never send what it will send.
            if firing is not None and firing.withdraw(row_id):
                del self._armed[row_id]
                log.warning("lease_lost", prebooking_id=str(row_id))

    async def _check_watched(self) -> None:
        now = self._clock()
        expired = [
            row_id
            for row_id, row in self._watched.items()
            if row.lease_expires_at is None or row.lease_expires_at <= now
        ]
        if not expired:
            return
        await self.hot.wait_clear()
        records = await store.rows_by_id(self._pool, expired)
        found = {r["id"] for r in records}
        for record in records:
            row = RowState.from_record(record)
            if not self._held_elsewhere(row) and row.status in ACTIVE:
                # The lease read now is the live one, if any: name the one that ran out.
                watched = self._watched.get(row.id)
                log.info(
                    "lease_taken_over",
                    prebooking_id=str(row.id),
                    previous_owner=watched.lease_owner if watched else None,
                )
            self._accept(row)
        for row_id in set(expired) - found:
            self._forget(row_id, "deleted")
