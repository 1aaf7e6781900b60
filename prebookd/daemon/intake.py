"""Rows in: resyncs from the table, notifications, and reads of rows a notification
could not tell enough about."""

from __future__ import annotations

import asyncio
from uuid import UUID

import asyncpg
import structlog

from prebookd.daemon.core import ARM_RETRY_DELAY, EngineCore
from prebookd.daemon.rowlog import RESYNC_LISTED
from prebookd.db import store
from prebookd.errors import describe
from prebookd.models import RowState, parse_notice
from prebookd.text import one_line

log = structlog.get_logger(__name__)

RESYNC_CHUNK = 1000  # rows accepted per loop turn during a resync


class Intake(EngineCore):
    async def resync(self) -> int:
        """Bring memory in line with the table (after connecting, and periodically)."""
        await self.hot.wait_clear()
        started = self._clock()
        now = started
        records = await store.rows_to_schedule(
            self._pool,
            horizon_end=now + self.config.horizon,
            absurd_after=now + self.config.max_lead,
        )
        # Rows sent here are forgotten once the table itself says they are done: their
        # final result was confirmed before this snapshot was read. Not sooner, however
        # long Postgres was away (a booked row armed again would be sent twice, or
        # marked missed).
        settled = [i for i, at in self._confirmed.items() if at < started]
        for row_id in settled:
            self._done.pop(row_id, None)
            del self._confirmed[row_id]
        seen = set()
        new = 0  # rows this process did not know: told one by one, the soonest first,
        # up to RESYNC_LISTED (a start on a big table must not write a line per row)
        for index, record in enumerate(records):
            if index and index % RESYNC_CHUNK == 0:
                await self.hot.wait_clear()  # a big table must not hold up an instant
                await asyncio.sleep(0)
            row = RowState.from_record(record)
            seen.add(row.id)
            if not self._heard_since(row.id, started):
                if not self._knows(row.id):
                    new += 1
                    if new <= RESYNC_LISTED:
                        self._received(row.id, "resync", row.available_at)
                self._accept(row)
        if new > RESYNC_LISTED:
            self.rows.info("prebookings_received", via="resync", rows=new, listed=RESYNC_LISTED)
        # Known rows the table no longer offers us were cancelled, deleted, or taken,
        # unless a notification about them arrived after the query began.
        unsent = set().union(*(f.unsent_ids() for f in self.firings.values()))
        known = self.schedule.ids() | unsent | set(self._watched) | self._arming
        for row_id in known - seen:
            if not self._heard_since(row_id, started):
                self._forget(row_id, "gone from the table")
        self._touched = {
            i: t for i, t in self._touched.items() if t >= started - store.QUERY_TIMEOUT * 2
        }
        return len(records)

    def on_notification(self, payload: str) -> None:
        try:
            notice = parse_notice(payload)
        except ValueError as exc:
            log.error("notification_malformed", error=describe(exc), payload=one_line(payload, 200))
            return
        self._touched[notice.id] = self._clock()
        if notice.op == "delete":
            self._forget(notice.id, "deleted")
        elif notice.status == "pending":
            self._received(notice.id, "notify", notice.available_at)
            if notice.created_at is None or notice.available_at is None:
                self._fetch(notice.id)  # the table says more than the payload
            else:
                self._accept(notice.row_state(), from_table=False)
        elif notice.status == "loaded":
            firing = self._armed.get(notice.id)
            if (
                firing is not None
                and notice.available_at is not None
                and firing.instant == notice.available_at.timestamp() + self.config.fire_offset
            ):
                return  # our own claim, instant unchanged
            if notice.id in self._arming and notice.created_at and notice.available_at:
                # Our own claim, or a change crossing it (the web app moving the row
                # it just took): the claim's answer is weighed against this instant.
                self._accept(notice.row_state(), from_table=False)
                return
            self._fetch(notice.id)
        else:
            # executing (being sent: by us, or by the holder of its lease), or final.
            self._forget(notice.id, notice.status or "no status")

    async def fetch_loop(self, stop: asyncio.Event) -> None:
        """Read rows a notification could not tell enough about, in batches."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(self._fetch_wakeup.wait(), timeout=1.0)
            except TimeoutError:
                continue
            self._fetch_wakeup.clear()
            ids, self._to_fetch = list(self._to_fetch), set()
            if not ids:
                continue
            started = self._clock()
            try:
                records = await store.rows_by_id(self._pool, ids)
            except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
                log.warning("row_fetch_failed", rows=len(ids), error=describe(exc))
                # Some may be due soon: not left to the next reconcile.
                self._fetch_later(ids, ARM_RETRY_DELAY)
                continue
            found = {r["id"] for r in records}
            for record in records:
                if not self._heard_since(record["id"], started):
                    self._accept(RowState.from_record(record))
            for row_id in set(ids) - found:
                if not self._heard_since(row_id, started):
                    self._forget(row_id, "deleted")

    def _heard_since(self, row_id: UUID, started: float) -> bool:
        """A notification about the row arrived after a read of the table began: it is
        newer than what that read returns, which must not undo it."""
        return self._touched.get(row_id, 0.0) >= started
