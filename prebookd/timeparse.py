"""Parsing the days and instants people type, in a box's IANA time zone.

Pure functions: no clock, no I/O. `now` is an argument, so tests pin it and the
daylight-saving edges are tested with fixed datetimes. Every error is a `UsageError`
whose message names what was typed and what was expected.

An instant given without an offset is a wall-clock time in the box's zone. Twice a
year such a time is not one instant: in the spring-forward gap it never happens, in the
fall-back hour it happens twice. Guessing there would fire an hour early or late, so
both are refused and the user is asked for an explicit offset.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from prebookd.errors import UsageError

_DAY = re.compile(r"^(\d{4})-?(\d{2})-?(\d{2})$")
# fromisoformat() takes a bare date as midnight; an opening instant needs a time.
_DATE_ONLY = re.compile(r"^\d{4}-?\d{2}-?\d{2}$")

# Files in /usr/share/zoneinfo that zoneinfo loads but that are not IANA zone names:
# stored on a box they would mean "whatever the machine reading the row uses".
_HOST_ZONE_FILES = frozenset({"localtime", "posixrules"})

INSTANT_FORMS = (
    "an ISO 8601 date and time with an offset (2030-12-01T07:00:00+01:00, "
    "2030-12-01T06:00:00Z) or a local time in the box's time zone (2030-12-01 07:00)"
)


def parse_day(text: str) -> date:
    """`YYYYMMDD` (AimHarder's form) or `YYYY-MM-DD`."""
    match = _DAY.match(text.strip())
    if match:
        try:
            return date(int(match[1]), int(match[2]), int(match[3]))
        except ValueError:
            pass
    raise UsageError(f"malformed day {text!r}: expected YYYYMMDD, e.g. 20301201")


def format_day(day: date) -> str:
    """The day as `booking_data.day` holds it: YYYYMMDD."""
    return day.strftime("%Y%m%d")


def parse_zone(name: str | None) -> ZoneInfo:
    """An IANA zone such as `Europe/Madrid`; anything zoneinfo cannot load is refused."""
    if not name or not name.strip():
        raise UsageError("missing time zone: expected an IANA name such as Europe/Madrid")
    if name.strip() in _HOST_ZONE_FILES:
        raise UsageError(
            f"invalid time zone {name!r}: it names this machine's zone, not a box's; "
            "expected an IANA name such as Europe/Madrid"
        )
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError, OSError):
        # ValueError: a path-like key ("../x"); OSError: a folder such as "Europe".
        raise UsageError(
            f"invalid time zone {name!r}: expected an IANA name such as Europe/Madrid"
        ) from None


def parse_instant(text: str, zone: ZoneInfo) -> datetime:
    """The instant `text` names, in UTC; a time without offset is local to `zone`."""
    cleaned = text.strip()
    if not cleaned or _DATE_ONLY.match(cleaned):
        raise UsageError(f"malformed instant {text!r}: expected {INSTANT_FORMS}")
    try:
        parsed = datetime.fromisoformat(cleaned)
    except ValueError:
        raise UsageError(f"malformed instant {text!r}: expected {INSTANT_FORMS}") from None
    if parsed.tzinfo is None:
        return localize(parsed, zone)
    return parsed.astimezone(UTC)


def localize(wall: datetime, zone: ZoneInfo) -> datetime:
    """The one UTC instant at which clocks in `zone` show `wall` (naive), or an error."""
    first = wall.replace(tzinfo=zone, fold=0)
    second = wall.replace(tzinfo=zone, fold=1)
    first_offset, second_offset = first.utcoffset(), second.utcoffset()
    if first_offset == second_offset:
        return first.astimezone(UTC)
    assert first_offset is not None and second_offset is not None
    shown = wall.isoformat(sep=" ", timespec="seconds")
    example = wall.isoformat(timespec="seconds")
    # In a gap, fold=0 maps to a UTC instant whose wall time is an hour later; in an
    # overlap both folds map back to the same wall time.
    if first.astimezone(UTC).astimezone(zone).replace(tzinfo=None) != wall:
        raise UsageError(
            f"{shown} does not exist in {zone.key}: the clocks jump from "
            f"{format_offset(first_offset)} to {format_offset(second_offset)} over it; "
            f"give the instant with a UTC offset instead, "
            f"e.g. {example}{format_offset(first_offset)}"
        )
    raise UsageError(
        f"{shown} happens twice in {zone.key}: the clocks go back from "
        f"{format_offset(first_offset)} to {format_offset(second_offset)}; give the instant "
        f"with a UTC offset: {example}{format_offset(first_offset)} (the first) or "
        f"{example}{format_offset(second_offset)} (the second)"
    )


def check_opening(
    instant: datetime, *, day: date, zone: ZoneInfo, now: datetime, max_lead: timedelta
) -> None:
    """Refuse an opening instant that cannot be right for a class on `day`."""
    if instant <= now:
        raise UsageError(
            f"the opening instant {format_utc(instant)} is already past "
            f"(now {format_utc(now)}): booking for it has opened"
        )
    if instant - now > max_lead:
        # The daemon fails such rows as absurd; refusing here says so before it is stored.
        raise UsageError(
            f"the opening instant {format_utc(instant)} is more than {max_lead.days} days "
            f"ahead (PREBOOKD_MAX_LEAD_DAYS)"
        )
    local_day = instant.astimezone(zone).date()
    if local_day > day:
        raise UsageError(
            f"the opening instant {format_local(instant, zone)} is after the class day "
            f"{format_day(day)}: booking opens before the class, not after it"
        )


def format_offset(offset: timedelta) -> str:
    """`+01:00`, `-05:00`, `+05:30`."""
    sign = "-" if offset < timedelta(0) else "+"
    minutes = abs(int(offset.total_seconds())) // 60
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def format_local(instant: datetime, zone: ZoneInfo) -> str:
    """`2030-03-31 07:00:00+02:00`: the wall time in `zone` with its offset."""
    return instant.astimezone(zone).isoformat(sep=" ", timespec="seconds")


def format_utc(instant: datetime) -> str:
    """`2030-03-31 05:00:00Z`: for people."""
    return instant.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="seconds") + "Z"


def iso_utc(instant: datetime) -> str:
    """`2030-03-31T05:00:00Z` (microseconds kept when present): for JSON."""
    return instant.astimezone(UTC).replace(tzinfo=None).isoformat() + "Z"
