"""What the planner should do, given the rules, the days away, the rows rules made and
`now`: pure, no I/O, so that the daylight-saving edges are tested with fixed times.

A round has two steps around the one piece of I/O that needs AimHarder, the day's
listing: `decide` says which (rule, day) still need a row (and so which listings to
read), which pending rows a rule withdraws or moves, and which days passed with no row;
`place` turns the listings read into rows to insert, or into classes found missing.

A rule books each class day whose weekday it names, once the booking window for that
day opens within the planning horizon. Days are class days in the box's time zone, and
the opening instant is `timeparse.opening_instant` (days windows keep the wall time
across a DST change, hours windows count elapsed hours).
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

from prebookd import timeparse
from prebookd.aimharder.classes import ClassInfo
from prebookd.errors import UsageError

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # ISO 1..7
LIVE_STATUSES = frozenset({"pending", "loaded"})  # a rule may still withdraw or move these
# A day whose instant passed this long ago is no longer looked at (for its report).
REPORT_LOOKBACK = timedelta(days=1)


@dataclass(frozen=True)
class Rule:
    id: int
    user_email: str
    box: UUID
    weekdays: frozenset[int]  # ISO: 1 Monday .. 7 Sunday
    class_time: time
    class_name: str
    family_id: str = ""
    insist: int = 0
    active: bool = True
    created_at: datetime | None = None
    zone: ZoneInfo | None = None  # None: the box's zone is unusable
    window: timeparse.BookingWindow | None = None  # None: the box has no window
    alternatives: tuple[str, ...] = ()  # backup classes, "08:00 WOD", in order
    watch: bool = False  # its rows watch a full class for a freed place

    @property
    def label(self) -> str:
        return f"{self.class_time:%H:%M} {' '.join(self.class_name.split())}"


@dataclass(frozen=True)
class Away:
    id: int
    user_email: str
    box: UUID | None  # None: every box
    first_day: date
    last_day: date

    def covers(self, rule: Rule, day: date) -> bool:
        return (
            self.user_email.lower() == rule.user_email.lower()
            and (self.box is None or self.box == rule.box)
            and self.first_day <= day <= self.last_day
        )


@dataclass(frozen=True)
class RuleRow:
    """A prebooking a rule made, still keyed to its day."""

    id: UUID
    rule_id: int
    day: date
    status: str | None
    available_at: datetime | None
    booking_data: Any
    class_label: str | None


@dataclass(frozen=True)
class Need:
    """A (rule, day) with no row yet whose booking window opens within the horizon."""

    rule: Rule
    day: date
    instant: datetime

    @property
    def listing(self) -> tuple[UUID, date]:
        return (self.rule.box, self.day)


@dataclass(frozen=True)
class Planned:
    """A row to insert."""

    rule: Rule
    day: date
    instant: datetime
    booking_data: dict[str, Any]
    class_label: str
    # The rule's alternatives the listing has, as booking_data: `prebookings.alternatives`.
    alternatives: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Decisions:
    needs: list[Need] = field(default_factory=list)
    withdraw: list[tuple[UUID, str]] = field(default_factory=list)  # row, why
    moves: list[tuple[UUID, datetime]] = field(default_factory=list)  # row, new instant
    passed: list[Need] = field(default_factory=list)  # instant passed with no row
    problems: list[str] = field(default_factory=list)


def parse_weekdays(text: str) -> frozenset[int]:
    """`mon,wed,fri` (also `Mon Wed`, `monday`, `1,3,5` ISO numbers) as ISO weekdays."""
    days: set[int] = set()
    for word in text.replace(",", " ").split():
        key = word.strip().lower()
        if key.isdigit() and 1 <= int(key) <= 7:
            days.add(int(key))
        elif len(key) >= 3 and any(d.startswith(key[:3]) for d in WEEKDAYS):
            days.add(WEEKDAYS.index(key[:3]) + 1)
        else:
            raise UsageError(f"malformed --days {text!r}: expected e.g. mon,wed,fri")
    if not days:
        raise UsageError(f"empty --days {text!r}: expected e.g. mon,wed,fri")
    return frozenset(days)


def format_weekdays(days: Iterable[int]) -> str:
    return ",".join(WEEKDAYS[d - 1] for d in sorted(days))


def normalize_name(text: str) -> str:
    """A class name compared leniently: no case, no accents, spaces collapsed."""
    decomposed = unicodedata.normalize("NFKD", text)
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(bare.casefold().split())


def match_class(listed: Sequence[ClassInfo], rule: Rule) -> ClassInfo | None:
    """The listed class a rule names: same start, same name (leniently); the first."""
    return match_label(listed, f"{rule.class_time:%H:%M} {rule.class_name}")


def class_labels(raw: Any) -> tuple[str, ...]:
    """`prebookd_rules.alternatives` (a JSON list of "08:00 WOD"): its strings."""
    return tuple(a for a in raw if isinstance(a, str)) if isinstance(raw, list) else ()


def match_label(listed: Sequence[ClassInfo], label: str) -> ClassInfo | None:
    """The listed class "07:00 WOD" names: same start, same name (leniently); the first."""
    start, _, name = label.strip().partition(" ")
    start, wanted = _start_of(start) or "", normalize_name(name)
    for cls in listed:
        if _start_of(cls.start) == start and normalize_name(cls.name) == wanted:
            return cls
    return None


def missing_text(rule: Rule, day: date) -> str:
    """ "no 07:00 WOD on Monday 8 Dec": what the member is told."""
    return f"no {rule.label} on {day:%A} {day.day} {day:%b}"


def decide(
    now: datetime,
    rules: Sequence[Rule],
    aways: Sequence[Away],
    rows: Sequence[RuleRow],
    horizon: timedelta,
) -> Decisions:
    decisions = Decisions()
    by_id = {rule.id: rule for rule in rules}
    taken: set[tuple[int, date]] = set()
    for row in rows:
        rule = by_id.get(row.rule_id)
        if row.status in LIVE_STATUSES:
            why = _withdraw_reason(row, rule, aways)
            if why is not None:
                decisions.withdraw.append((row.id, why))
                continue
            assert rule is not None
            instant = _instant(rule, row.day, decisions.problems)
            if instant is not None and instant != row.available_at and instant > now:
                decisions.moves.append((row.id, instant))  # the box's window or zone changed
        taken.add((row.rule_id, row.day))
    for rule in rules:
        if not rule.active:
            continue
        if rule.zone is None or rule.window is None:
            decisions.problems.append(f"rule {rule.id}: its box has no usable time zone or window")
            continue
        for day in _candidate_days(rule, now, horizon):
            if (rule.id, day) in taken or any(a.covers(rule, day) for a in aways):
                continue
            instant = _instant(rule, day, decisions.problems)
            if instant is None or instant > now + horizon:
                continue
            need = Need(rule, day, instant)
            if instant > now:
                decisions.needs.append(need)
            elif instant > now - REPORT_LOOKBACK and (
                rule.created_at is None or instant > rule.created_at
            ):
                decisions.passed.append(need)
    decisions.needs.sort(key=lambda n: (n.instant, n.rule.id))
    return decisions


def place(
    needs: Sequence[Need], listings: Mapping[tuple[UUID, date], Sequence[ClassInfo]]
) -> tuple[list[Planned], list[Need]]:
    """Rows to insert for the needs whose listing was read and lists the class, and the
    needs whose listing lacks it. A need whose listing could not be read is neither."""
    planned: list[Planned] = []
    missing: list[Need] = []
    for need in needs:
        listed = listings.get(need.listing)
        if listed is None:
            continue
        found = match_class(listed, need.rule)
        if found is None:
            missing.append(need)
            continue
        booking_data = {  # exactly the web app's four fields (shared/AIMHARDER.md)
            "day": timeparse.format_day(need.day),
            "familyId": need.rule.family_id,
            "id": found.session_id,
            "insist": need.rule.insist,
        }
        backups = [match_label(listed, label) for label in need.rule.alternatives]
        alternatives = [
            {**booking_data, "id": alt.session_id}
            for alt in backups
            if alt is not None and alt.session_id != found.session_id
        ]
        planned.append(
            Planned(need.rule, need.day, need.instant, booking_data, found.label, alternatives)
        )
    return planned, missing


def _withdraw_reason(row: RuleRow, rule: Rule | None, aways: Sequence[Away]) -> str | None:
    if rule is None:
        return f"rule {row.rule_id} removed"
    if not rule.active:
        return f"rule {rule.id} paused"
    if row.day.isoweekday() not in rule.weekdays:
        return f"rule {rule.id} no longer books {WEEKDAYS[row.day.isoweekday() - 1]}"
    away = next((a for a in aways if a.covers(rule, row.day)), None)
    if away is not None:
        return f"away {away.first_day.isoformat()} to {away.last_day.isoformat()}"
    if not _same_class(rule, row):
        return f"rule {rule.id} changed to {rule.label}"
    return None


def _same_class(rule: Rule, row: RuleRow) -> bool:
    data = row.booking_data if isinstance(row.booking_data, dict) else {}
    if str(data.get("familyId", "")) != rule.family_id or data.get("insist", 0) != rule.insist:
        return False
    if row.class_label is None:
        return True
    start, _, name = row.class_label.partition(" ")
    return _start_of(start) == f"{rule.class_time:%H:%M}" and normalize_name(
        name
    ) == normalize_name(rule.class_name)


def _candidate_days(rule: Rule, now: datetime, horizon: timedelta) -> list[date]:
    assert rule.zone is not None and rule.window is not None
    today = now.astimezone(rule.zone).date()
    lead = rule.window.length or 0
    lead_days = lead if rule.window.kind == "days" else math.ceil(lead / 24)
    last = today + timedelta(days=math.ceil(horizon / timedelta(days=1)) + lead_days + 1)
    day = today - timedelta(days=1)
    days = []
    while day <= last:
        if day.isoweekday() in rule.weekdays:
            days.append(day)
        day += timedelta(days=1)
    return days


def _instant(rule: Rule, day: date, problems: list[str]) -> datetime | None:
    if rule.zone is None or rule.window is None:
        return None  # said once per round in `decide`'s problems
    try:
        return timeparse.opening_instant(day, rule.class_time, rule.zone, rule.window)
    except UsageError as exc:  # a wall time a DST change skips or repeats
        problems.append(f"rule {rule.id}, {timeparse.format_day(day)}: {exc}")
        return None


def _start_of(text: str) -> str | None:
    try:
        return f"{timeparse.parse_clock(text):%H:%M}"
    except UsageError:
        return None
