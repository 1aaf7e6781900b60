"""Claims and arming: due rows are claimed (lease) and loaded with their box and
session in one query, their sessions refreshed when old, and each handed to the `Firing`
of its instant. News heard while a claim is in flight is weighed against its answer."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Sequence
from typing import Any
from uuid import UUID

import asyncpg
import structlog

from prebookd.aimharder.account import SessionDead
from prebookd.daemon.core import ACTIVE, ARM_RETRY_DELAY, EngineCore
from prebookd.daemon.firing import Firing
from prebookd.daemon.rowlog import row_fields
from prebookd.daemon.scheduler import Entry
from prebookd.db import store
from prebookd.errors import BadRow, describe
from prebookd.models import Booking, MemberSession, RowState, build_booking

log = structlog.get_logger(__name__)

# A row that could not be read (Postgres away), or that a claim skipped because a
# transaction (the web app's) holds it, is read again after this long, not at once.
FETCH_RETRY_DELAY = 0.2


class Claims(EngineCore):
    async def _arm(self, entries: Sequence[Entry]) -> None:
        ids = [e.id for e in entries]
        self._arming.update(ids)
        try:
            await self.hot.wait_clear()
            records = await store.claim(
                self._pool,
                ids,
                self.config.lease_owner,
                self.config.lease_seconds,
                predecessor=self.config.predecessor,
            )
            # Sessions are refreshed while the rows still count as being claimed: news
            # of them meanwhile (a cancel, a move) is kept and weighed below, not lost.
            claimed = [dict(r) for r in records if not self._sent_or_armed(r["id"])]
            alive = {r["id"]: r for r in await self._with_live_sessions(claimed)}
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            log.warning("arming_failed", rows=len(ids), error=describe(exc))
            forgotten, moved = self._news_while_arming(ids)
            for entry in entries:
                if entry.id not in forgotten:
                    self.schedule.upsert(moved.get(entry.id, entry))
            self._arm_not_before = self._clock() + ARM_RETRY_DELAY
            self._rearm()
            return
        finally:
            self._arming.difference_update(ids)
        forgotten, moved = self._news_while_arming(ids)
        stale = []
        fresh = []
        for record in records:
            row_id = record["id"]
            if self._sent_or_armed(row_id) or row_id not in alive:
                # Already in a firing, or sent: ours either way. Arming it again would
                # send it twice (the claim takes back our own rows, see store). Or its
                # session is dead: failed already.
                continue
            news = moved.get(row_id)
            claimed_at = record["available_at"]
            if news is not None and (
                claimed_at is None or news.available_at != claimed_at.timestamp()
            ):
                stale.append(row_id)  # moved while we were claiming: claim it anew
                self.schedule.upsert(news)
            elif row_id in forgotten or row_id in self.schedule:
                stale.append(row_id)  # cancelled (or moved) while we were claiming
            else:
                fresh.append(alive[row_id])
        if stale:
            await self._release(stale)
            self._rearm()
        for row in fresh:
            self._arm_one(row)
        unclaimed = set(ids) - {r["id"] for r in records} - forgotten
        if unclaimed:
            await self._look_again(unclaimed)

    def _sent_or_armed(self, row_id: UUID) -> bool:
        return row_id in self._armed or row_id in self._done

    def _news_while_arming(self, ids: Sequence[UUID]) -> tuple[set[UUID], dict[UUID, Entry]]:
        """What was heard of these rows while their claim was in flight (only theirs:
        other claims may be in flight too): those withdrawn, and new instants."""
        forgotten = self._forgotten_while_arming.intersection(ids)
        self._forgotten_while_arming -= forgotten
        moved = {i: self._moved_while_arming.pop(i) for i in ids if i in self._moved_while_arming}
        return forgotten, moved

    async def _look_again(self, ids: set[UUID]) -> None:
        """Rows the claim did not get: another instance holds them or their group
        (watch them), they changed (cancelled, done) meanwhile, or a transaction holds
        them (SKIP LOCKED passed them by), or another instance was claiming their group
        at that moment: read those again shortly, and claim them then."""
        try:
            records = await store.rows_by_id(self._pool, list(ids))
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            log.warning("row_fetch_failed", rows=len(ids), error=describe(exc))
            self._fetch_later(list(ids), ARM_RETRY_DELAY)
            return
        locked = []
        for record in records:
            row = RowState.from_record(record)
            if row.status in ACTIVE and not self._held_elsewhere(row):
                locked.append(row.id)  # claimable, yet not claimed
            else:
                self._accept(row)
        if locked:
            log.debug("claim_skipped_locked_rows", prebooking_ids=[str(i) for i in locked])
            self._fetch_later(locked, FETCH_RETRY_DELAY)
        for row_id in ids - {r["id"] for r in records}:
            self._forget(row_id, "deleted")

    async def _with_live_sessions(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Refresh the sessions that are old by now (once per member); fail the rows
        whose session AimHarder has ended. Returns the rows still to arm."""
        keeper = self._sessions
        if keeper is None:
            return records
        sessions = {}
        for record in records:
            session = MemberSession.from_record(record)
            if session is not None and keeper.is_stale(session):
                sessions[session.id] = session
        outcomes = dict(
            zip(
                sessions,
                await asyncio.gather(*(keeper.refresh(s) for s in sessions.values())),
                strict=True,
            )
        )
        alive = []
        for record in records:
            outcome = outcomes.get(record["session_id"])
            if isinstance(outcome, SessionDead):
                self._fail(record["id"], "session_expired", "session expired: log in again", record)
                continue
            if isinstance(outcome, MemberSession):
                record["aimharder_cookies"] = outcome.cookies
                record["aimharder_token"] = outcome.token
                record["last_token_update_date"] = dt.datetime.fromtimestamp(
                    outcome.refreshed_at or self._clock(), dt.UTC
                )
            alive.append(record)
        return alive

    async def _renew(self, booking: Booking) -> Booking | None:
        """At the instant AimHarder said the session is dead: refresh it, once."""
        if self._sessions is None or booking.session is None or booking.session.token is None:
            return None
        outcome = await self._sessions.refresh(booking.session)
        return booking.with_session(outcome) if isinstance(outcome, MemberSession) else None

    def _arm_one(self, record: dict[str, Any]) -> None:
        cfg = self.config
        try:
            booking = build_booking(record, cfg.box_hosts)
        except BadRow as exc:
            self._fail(record["id"], "bad_row", exc.reason, record)
            return
        late = self._clock() - booking.available_at
        if late > cfg.late_grace:
            if booking.prior_attempts:
                self._fail(
                    booking.id,
                    "unknown",
                    "sent, but the instance sending it stopped before recording the "
                    "answer; not sent again this late: check AimHarder",
                    record,
                )
            else:
                self._fail(
                    booking.id,
                    "missed",
                    f"opening instant passed {late:.0f} s ago, more than late_grace "
                    f"({cfg.late_grace:g} s): not sent",
                    record,
                )
            return
        instant = booking.available_at + cfg.fire_offset
        firing = self.firings.get(instant)
        if firing is None:
            firing = Firing(
                instant,
                client=self._client,
                timing=cfg.timing,
                report=self._record,
                instance=cfg.instance,
                hot=self.hot,
                renew=self._renew,
                clock=self._clock,
                rows=self.rows,
                clocks=self.clocks,
            )
            self.firings[instant] = firing
            task = self._spawn(self._run_firing(firing), name=f"firing-{instant:.3f}")
            self._firing_of[task] = firing
        fields = row_fields(record)
        self.rows.info("prebooking_armed", prebooking_id=str(booking.id), **fields)
        firing.add(booking, label=fields["class"])  # staged at once if its firing is
        self._armed[booking.id] = firing

    async def _run_firing(self, firing: Firing) -> None:
        try:
            summary = await firing.run()
            if summary is not None:
                self.last_firings.append(summary)
                if self._metrics is not None:
                    self._metrics.observe_instant(
                        count=summary["count"], spread_ms=summary["spread_ms"]
                    )
        finally:
            if self.firings.get(firing.instant) is firing:
                del self.firings[firing.instant]
            for row_id in firing.booking_ids():
                if self._armed.get(row_id) is firing:
                    del self._armed[row_id]

    async def _release(self, ids: list[UUID]) -> None:
        try:
            await store.release_claims(self._pool, ids, self.config.lease_owner)
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            log.warning("release_failed", rows=len(ids), error=describe(exc))
