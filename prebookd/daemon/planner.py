"""The planner: turns recurring rules into prebookings, inside `prebookd run`.

Every `plan_interval` (off the hot windows around instants) a round reads the rules,
the days away and the rows rules made; `plan.decide` says what to withdraw, move and
still make; the listing of each (box, day) still needed is read once, with the
background session of a member who has a rule there (the next one's if that session
is dead), and `plan.place` finds each rule's class in it. Rows are inserted with their
(rule, day) key, so two instances planning at once make one row. A class the listing
lacks is looked for again each round until its instant passes, then reported once
(`rule_class_missing`), whichever instance gets there first.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import structlog

from prebookd import timeparse
from prebookd.aimharder.classes import ClassInfo
from prebookd.aimharder.proxy import ProxiedSessions
from prebookd.daemon.clock import WallClock
from prebookd.daemon.listings import read_listing
from prebookd.daemon.plan import (
    Away,
    Need,
    Rule,
    RuleRow,
    class_labels,
    decide,
    missing_text,
    place,
)
from prebookd.db import rules_store
from prebookd.errors import UsageError, describe
from prebookd.log import mask_email

log = structlog.get_logger(__name__)

MAX_ERRORS_KEPT = 10


class Planner:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        horizon: float,
        interval: float,
        allowed_hosts: Sequence[str],
        wait_clear: Callable[[], Awaitable[None]],
        clock: WallClock = time.time,
        proxy_url: str | None = None,  # PREBOOKD_PROXY_URL
    ) -> None:
        self._pool = pool
        self._proxy_url = proxy_url
        self.horizon = horizon
        self.interval = interval
        self._allowed_hosts = allowed_hosts
        self._wait_clear = wait_clear
        self._clock = clock
        self._http: ProxiedSessions | None = None
        self._boxes: dict[UUID, dict[str, Any]] = {}
        self.rounds = 0
        self.last_round_at: float | None = None
        self.last_errors: list[str] = []
        self.rules_active = 0
        self.next_day: date | None = None

    async def start(self) -> None:
        self._http = ProxiedSessions(self._proxy_url, limit=4)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def run(self, stop: asyncio.Event) -> None:
        """A round every `interval` until `stop`; a failed round is logged, not fatal."""
        while not stop.is_set():
            try:
                await self.plan_once()
            except Exception as exc:
                # Bookings already armed matter more than planning new ones: a round
                # that fails (Postgres away, a bug) is logged and tried again.
                self.last_errors = [f"planning round failed: {describe(exc)}"]
                log.warning("planning_failed", error=describe(exc))
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.interval)
            except TimeoutError:
                pass

    async def plan_once(self) -> dict[str, int]:
        """One round; returns what it did (for logs and tests)."""
        await self._wait_clear()
        now = datetime.fromtimestamp(self._clock(), UTC)
        since = now.date() - timedelta(days=2)
        rules = self._rules(await rules_store.planner_rules(self._pool))
        aways = [_away(r) for r in await rules_store.planner_away(self._pool, since)]
        rows = [_row(r) for r in await rules_store.planner_rows(self._pool, since)]
        decided = decide(now, rules, aways, rows, timedelta(seconds=self.horizon))
        errors = list(decided.problems)
        withdrawn = set(await rules_store.withdraw_rows(self._pool, decided.withdraw))
        for row_id, reason in decided.withdraw:
            if row_id in withdrawn:
                log.info("rule_row_withdrawn", prebooking_id=str(row_id), reason=reason)
        moved = await rules_store.move_rows(self._pool, decided.moves)
        if moved:
            log.info("rule_rows_moved", rows=moved)
        listings = await self._listings(decided.needs, errors)
        planned, missing = place(decided.needs, listings)
        made = 0
        for item in planned:
            await self._wait_clear()
            new_id = await rules_store.insert_rule_row(
                self._pool,
                rule_id=item.rule.id,
                day=item.day,
                user_email=item.rule.user_email,
                box=item.rule.box,
                booking_data=item.booking_data,
                available_at=item.instant,
                class_label=item.class_label,
                alternatives=item.alternatives or None,
                watch=item.rule.watch,
            )
            if new_id is not None:
                made += 1
                log.info(
                    "rule_row_planned",
                    rule=item.rule.id,
                    prebooking_id=str(new_id),
                    day=timeparse.format_day(item.day),
                    available_at=timeparse.iso_utc(item.instant),
                    class_label=item.class_label,
                )
        for need in missing:
            await rules_store.record_miss(self._pool, need.rule.id, need.day, need.instant)
            log.debug(
                "rule_class_not_listed", rule=need.rule.id, text=missing_text(need.rule, need.day)
            )
        reported = await self._report(decided.passed)
        gone = {row_id for row_id, _ in decided.withdraw}
        kept = [row for row in rows if row.id not in gone]
        self._note_round(now, rules, kept, planned, errors)
        return {
            "planned": made,
            "withdrawn": len(withdrawn),
            "moved": moved,
            "missing": len(missing),
            "reported": reported,
        }

    def _rules(self, records: Sequence[asyncpg.Record]) -> list[Rule]:
        self._boxes = {}
        rules = []
        for record in records:
            self._boxes[record["box_id"]] = dict(record)
            try:
                zone = timeparse.parse_zone(record["timezone"])
            except UsageError:
                zone = None
            rules.append(
                Rule(
                    id=record["id"],
                    user_email=record["user_email"],
                    box=record["box_id"],
                    weekdays=frozenset(record["weekdays"]),
                    class_time=record["class_time"],
                    class_name=record["class_name"],
                    family_id=record["family_id"],
                    insist=record["insist"],
                    active=record["active"],
                    created_at=record["created_at"],
                    zone=zone,
                    window=timeparse.window_from_columns(
                        record["booking_window_kind"], record["booking_window_length"]
                    ),
                    alternatives=class_labels(record["alternatives"]),
                    watch=record["watch"],
                )
            )
        return rules

    async def _listings(
        self, needs: Sequence[Need], errors: list[str]
    ) -> dict[tuple[UUID, date], list[ClassInfo]]:
        """Each (box, day) listing the needs want, read once, with the first live
        session among the members who need it."""
        members: dict[tuple[UUID, date], list[str]] = {}
        for need in needs:
            emails = members.setdefault(need.listing, [])
            if need.rule.user_email.lower() not in emails:
                emails.append(need.rule.user_email.lower())
        listings = {}
        for (box, day), emails in members.items():
            found = await self._listing(box, day, emails, errors)
            if found is not None:
                listings[(box, day)] = found
        return listings

    async def _listing(
        self, box: UUID, day: date, emails: list[str], errors: list[str]
    ) -> list[ClassInfo] | None:
        assert self._http is not None, "planner not started"
        info = self._boxes[box]
        read = await read_listing(
            self._http,
            self._pool,
            info,
            day,
            emails,
            allowed_hosts=self._allowed_hosts,
            wait_clear=self._wait_clear,
        )
        errors.extend(read.problems)
        for email in read.rejected:
            log.warning("planner_session_dead", member=mask_email(email), box=info["subdomain"])
        if read.failed is not None:
            log.warning("planner_listing_failed", box=info["subdomain"], error=read.failed)
        return read.classes

    async def _report(self, passed: Sequence[Need]) -> int:
        by_key = {(n.rule.id, n.day): n for n in passed}
        claimed = await rules_store.claim_reports(self._pool, list(by_key))
        for key in claimed:
            need = by_key[key]
            log.warning(
                "rule_class_missing",
                rule=need.rule.id,
                member=mask_email(need.rule.user_email),
                box=self._boxes.get(need.rule.box, {}).get("subdomain"),
                day=timeparse.format_day(need.day),
                text=missing_text(need.rule, need.day),
            )
        return len(claimed)

    def _note_round(
        self,
        now: datetime,
        rules: Sequence[Rule],
        rows: Sequence[RuleRow],
        planned: Sequence[Any],
        errors: list[str],
    ) -> None:
        self.rounds += 1
        self.last_round_at = now.timestamp()
        self.last_errors = errors[:MAX_ERRORS_KEPT]
        self.rules_active = sum(1 for r in rules if r.active)
        days = [r.day for r in rows if r.status == "pending" and r.day >= now.date()]
        days += [p.day for p in planned]
        self.next_day = min(days, default=None)
        if errors:
            log.warning("planning_problems", count=len(errors), first=errors[0])

    def snapshot(self) -> dict[str, Any]:
        """What `prebookd status` shows of the planner."""
        last = self.last_round_at
        return {
            "rules_active": self.rules_active,
            "next_planned_day": self.next_day.isoformat() if self.next_day else None,
            "last_round_at": datetime.fromtimestamp(last, UTC).isoformat() if last else None,
            "rounds": self.rounds,
            "last_errors": list(self.last_errors),
        }


def _away(record: asyncpg.Record) -> Away:
    return Away(
        record["id"],
        record["user_email"],
        record["box_id"],
        record["first_day"],
        record["last_day"],
    )


def _row(record: asyncpg.Record) -> RuleRow:
    return RuleRow(
        record["id"],
        record["rule_id"],
        record["rule_day"],
        record["status"],
        record["available_at"],
        record["booking_data"],
        record["class_label"],
    )
