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
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from prebookd.errors import UsageError

_DAY = re.compile(r"^(\d{4})-?(\d{2})-?(\d{2})$")
# fromisoformat() takes a bare date as midnight; an opening instant needs a time.
_DATE_ONLY = re.compile(r"^\d{4}-?\d{2}-?\d{2}$")
_RELATIVE_DAY = re.compile(r"^\+(\d{1,4})d?$")
_NAMED_DAYS = {"today": 0, "tomorrow": 1}
_RELATIVE_INSTANT = re.compile(r"^\+(\d{1,6})(s|m|h)$")
_UNIT = {"s": timedelta(seconds=1), "m": timedelta(minutes=1), "h": timedelta(hours=1)}

# Files in /usr/share/zoneinfo that zoneinfo loads but that are not IANA zone names:
# stored on a box they would mean "whatever the machine reading the row uses".
_HOST_ZONE_FILES = frozenset({"localtime", "posixrules"})

INSTANT_FORMS = (
    "an ISO 8601 date and time with an offset (2030-12-01T07:00:00+01:00, "
    "2030-12-01T06:00:00Z) or a local time in the box's time zone (2030-12-01 07:00)"
)


def parse_day(text: str, today: date | None = None) -> date:
    """`YYYYMMDD` (AimHarder's form) or `YYYY-MM-DD`; given `today` (in the box's
    zone), also `today`, `tomorrow` and `+N` / `+Nd` (N days after today)."""
    cleaned = text.strip().lower()
    if today is not None:
        relative = _RELATIVE_DAY.match(cleaned)
        if cleaned in _NAMED_DAYS:
            return today + timedelta(days=_NAMED_DAYS[cleaned])
        if relative:
            return today + timedelta(days=int(relative[1]))
    match = _DAY.match(cleaned)
    if match:
        try:
            return date(int(match[1]), int(match[2]), int(match[3]))
        except ValueError:
            pass
    relative_forms = ", today, tomorrow or +N (days from today)" if today is not None else ""
    raise UsageError(f"malformed day {text!r}: expected YYYYMMDD, e.g. 20301201{relative_forms}")


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


def parse_instant(text: str, zone: ZoneInfo, now: datetime | None = None) -> datetime:
    """The instant `text` names, in UTC; a time without offset is local to `zone`.
    Given `now`, also `+30s`, `+5m`, `+2h` (that long from now, rounded up to a whole
    second: for trying things)."""
    cleaned = text.strip()
    relative = _RELATIVE_INSTANT.match(cleaned)
    if relative and now is not None:
        # Rounded up to a whole second: an opening instant as a box would have it.
        later = now + int(relative[1]) * _UNIT[relative[2]]
        whole = later.replace(microsecond=0)
        return (whole if whole == later else whole + timedelta(seconds=1)).astimezone(UTC)
    forms = f"{INSTANT_FORMS}{', or +30s, +5m, +2h from now' if now is not None else ''}"
    if not cleaned or _DATE_ONLY.match(cleaned):
        raise UsageError(f"malformed instant {text!r}: expected {forms}")
    try:
        parsed = datetime.fromisoformat(cleaned)
    except ValueError:
        raise UsageError(f"malformed instant {text!r}: expected {forms}") from None
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


def read_iso(value: object) -> datetime | None:
    """An ISO 8601 time as JSON carries it (`prebookd status`, its snapshot), aware;
    a naive one is taken as UTC (the daemon's instants are). Anything else: None."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# --- booking windows -----------------------------------------------------------------
#
# A box opens booking a fixed time before each class (shared/AIMHARDER.md, "When booking
# opens"). Days and hours are kept apart on purpose, because they differ across a
# daylight-saving change: "4 days before" is the same wall time four calendar days
# earlier (07:00 stays 07:00 across the March change), while "72 hours before" is 72
# elapsed hours (07:00 becomes 06:00 or 08:00 across it). AimHarder says which it counts
# ("4 días" / "72 horas", ERROR_ANTELACION_CLIENTE / _HORAS); how it treats an hours
# window across the change is not documented, and elapsed hours is what the words mean.

WINDOW_KINDS = ("days", "hours", "same_day")
WINDOW_FORMS = "Nd (days before, same wall time), Nh (hours before) or same-day (00:00 that day)"
MAX_WINDOW_DAYS = 31
MAX_WINDOW_HOURS = 31 * 24

_WINDOW = re.compile(r"^(\d{1,4})\s*(d|days?|h|hours?)$", re.IGNORECASE)
_SAME_DAY = frozenset({"same-day", "same_day", "sameday", "0d"})
_CLOCK = re.compile(r"^(\d{1,2}):?(\d{2})$")


@dataclass(frozen=True)
class BookingWindow:
    """When a box opens booking for a class: `length` days or hours before its start,
    or (`same_day`) at 00:00 of the class day. Stored as `boxes.booking_window_kind`
    and `boxes.booking_window_length`."""

    kind: str  # one of WINDOW_KINDS
    length: int | None  # None for same_day

    @property
    def code(self) -> str:
        """What `--window` takes and `box list` shows: `4d`, `72h`, `same-day`."""
        if self.kind == "same_day":
            return "same-day"
        return f"{self.length}{self.kind[0]}"

    def describe(self) -> str:
        if self.kind == "same_day":
            return "at 00:00 on the class day"
        return f"{self.length} {self.kind} before the class"


def parse_window(text: str) -> BookingWindow:
    """`4d`, `4 days`, `72h`, `72 hours` or `same-day`."""
    cleaned = text.strip().lower()
    if cleaned in _SAME_DAY:
        return BookingWindow("same_day", None)
    match = _WINDOW.match(cleaned)
    if match:
        length, kind = int(match[1]), ("days" if match[2].startswith("d") else "hours")
        limit = MAX_WINDOW_DAYS if kind == "days" else MAX_WINDOW_HOURS
        if 1 <= length <= limit:
            return BookingWindow(kind, length)
        raise UsageError(f"booking window {text!r} out of range: 1 to {limit} {kind}")
    raise UsageError(f"malformed booking window {text!r}: expected {WINDOW_FORMS}")


def window_from_columns(kind: str | None, length: int | None) -> BookingWindow | None:
    """The window stored on a boxes row; None when the box has none (or an unknown one)."""
    if kind == "same_day":
        return BookingWindow("same_day", None)
    if kind in ("days", "hours") and length is not None and length > 0:
        return BookingWindow(kind, length)
    return None


def parse_clock(text: str) -> time:
    """A class's start time: `07:00`, `7:00` or `0700`."""
    match = _CLOCK.match(text.strip())
    if match:
        try:
            return time(int(match[1]), int(match[2]))
        except ValueError:
            pass
    raise UsageError(f"malformed class time {text!r}: expected HH:MM, e.g. 07:00")


def opening_instant(day: date, start: time, zone: ZoneInfo, window: BookingWindow) -> datetime:
    """The UTC instant booking opens for a class on `day` starting at `start` (wall time
    in `zone`). A wall time that does not exist or happens twice is refused (localize)."""
    if window.kind == "same_day":
        return localize(datetime.combine(day, time(0, 0)), zone)
    assert window.length is not None
    if window.kind == "days":
        return localize(datetime.combine(day - timedelta(days=window.length), start), zone)
    class_start = localize(datetime.combine(day, start), zone)
    return class_start - timedelta(hours=window.length)


# "No puedes reservar clases con más de 4 días de antelación", "... 72 horas ...";
# Catalan "No pots reservar classes amb més de 4 dies d'antelació"; English "You cannot
# book classes more than 4 days in advance". The number and its unit are what count.
# "más de" / "més de" / "more than" is required: "con menos de 2 horas" (too late to
# book) names a different limit.
_WINDOW_MESSAGE = re.compile(
    r"\b(?:m[aá]s de|m[eé]s de|more than)\s+(\d{1,4})\s*"
    r"(d[ií]as?|dies|days?|horas?|hores|hours?|h)\b",
    re.IGNORECASE,
)


def parse_window_message(text: str) -> timedelta | None:
    """The window in AimHarder's localised "not open yet" message, or None.

    Only a hint for a person (`errorMssgLang` is what code branches on): the text is
    localised and may change."""
    window = window_from_message(text)
    if window is None or window.length is None:
        return None
    if window.kind == "days":
        return timedelta(days=window.length)
    return timedelta(hours=window.length)


def window_from_message(text: str) -> BookingWindow | None:
    """Like `parse_window_message`, keeping whether the box counts days or hours."""
    match = _WINDOW_MESSAGE.search(text or "")
    if not match:
        return None
    length = int(match[1])
    kind = "hours" if match[2].lower().startswith("h") else "days"
    limit = MAX_WINDOW_DAYS if kind == "days" else MAX_WINDOW_HOURS
    return BookingWindow(kind, length) if 1 <= length <= limit else None


# ---- a box's cancellation cutoff (`box set --cancel-cutoff`) -------------------------

CUTOFF_FORMS = "a duration such as 2h, 90m, 1h30m or 0 (members may cancel until the start)"
MAX_CUTOFF = 7 * 86_400  # boxes.cancel_cutoff_seconds' CHECK
_CUTOFF = re.compile(r"^(?:(\d{1,3})\s*h(?:ours?)?)?\s*(?:(\d{1,5})\s*m(?:in(?:utes?)?)?)?$")


def parse_cutoff(text: str) -> int:
    """How long before a class members may no longer cancel, in seconds: `2h`,
    `90m`, `1h30m`, `45 min`, `0`."""
    cleaned = text.strip().lower()
    if cleaned == "0":
        return 0
    match = _CUTOFF.match(cleaned)
    if not cleaned or match is None or (match[1] is None and match[2] is None):
        raise UsageError(f"malformed cancellation cutoff {text!r}: expected {CUTOFF_FORMS}")
    seconds = int(match[1] or 0) * 3600 + int(match[2] or 0) * 60
    if seconds > MAX_CUTOFF:
        raise UsageError(f"cancellation cutoff {text!r} out of range: 0 to {MAX_CUTOFF // 3600}h")
    return seconds


def format_cutoff(seconds: int | None) -> str:
    """`2h`, `90m` -> `1h30m`, `0`; "" for none (as `box list` shows it)."""
    if seconds is None:
        return ""
    hours, minutes = divmod(seconds // 60, 60)
    if not hours and not minutes:
        return "0"
    return f"{hours}h" * bool(hours) + f"{minutes}m" * bool(minutes)
