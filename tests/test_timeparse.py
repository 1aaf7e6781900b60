"""Days and instants as people type them, against fixed datetimes (no clock involved)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from prebookd.errors import UsageError
from prebookd.timeparse import (
    BookingWindow,
    check_opening,
    format_day,
    format_local,
    format_offset,
    format_utc,
    iso_utc,
    localize,
    opening_instant,
    parse_clock,
    parse_day,
    parse_instant,
    parse_window,
    parse_window_message,
    parse_zone,
    window_from_columns,
    window_from_message,
)

MADRID = ZoneInfo("Europe/Madrid")
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
YEAR = timedelta(days=400)


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, us, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20261201", date(2026, 12, 1)),
        ("2026-12-01", date(2026, 12, 1)),
        (" 20240229 ", date(2024, 2, 29)),
    ],
)
def test_parse_day(text: str, expected: date) -> None:
    assert parse_day(text) == expected
    assert format_day(expected) == expected.strftime("%Y%m%d")


@pytest.mark.parametrize("text", ["", "2026121", "20261301", "20250229", "2026/12/01", "tomorrow"])
def test_parse_day_refuses(text: str) -> None:
    with pytest.raises(UsageError, match=r"malformed day .*YYYYMMDD"):
        parse_day(text)


@pytest.mark.parametrize("name", ["Europe/Madrid", "America/New_York", "UTC", "Asia/Kolkata"])
def test_parse_zone(name: str) -> None:
    assert parse_zone(name).key == name


@pytest.mark.parametrize(
    "name", ["Mars/Olympus", "Europe", "../etc/passwd", "/etc/localtime", "localtime"]
)
def test_parse_zone_refuses(name: str) -> None:
    with pytest.raises(UsageError, match="invalid time zone"):
        parse_zone(name)


@pytest.mark.parametrize("name", [None, "", "  "])
def test_parse_zone_refuses_missing(name: str | None) -> None:
    with pytest.raises(UsageError, match="missing time zone"):
        parse_zone(name)


@pytest.mark.parametrize(
    ("text", "zone", "expected"),
    [
        # Madrid, the day before and the day of the 2026 spring-forward (29 March).
        ("2026-03-28 07:00", "Europe/Madrid", utc(2026, 3, 28, 6, 0)),
        ("2026-03-29 07:00", "Europe/Madrid", utc(2026, 3, 29, 5, 0)),
        ("2026-03-29T07:00:00", "Europe/Madrid", utc(2026, 3, 29, 5, 0)),
        # Just outside the gap on either side.
        ("2026-03-29 01:59:59", "Europe/Madrid", utc(2026, 3, 29, 0, 59, 59)),
        ("2026-03-29 03:00", "Europe/Madrid", utc(2026, 3, 29, 1, 0)),
        # Madrid fall-back (25 October 2026): before and after the repeated hour.
        ("2026-10-25 01:59", "Europe/Madrid", utc(2026, 10, 24, 23, 59)),
        ("2026-10-25 03:00", "Europe/Madrid", utc(2026, 10, 25, 2, 0)),
        ("2026-12-01 15:00:00.250", "Europe/Madrid", utc(2026, 12, 1, 14, 0, 0, 250_000)),
        # Southern hemisphere: Sydney is on summer time (+11:00) in December.
        ("2026-12-01 07:00", "Australia/Sydney", utc(2026, 11, 30, 20, 0)),
        ("2026-07-01 07:00", "Australia/Sydney", utc(2026, 6, 30, 21, 0)),
        # Half-hour zone without DST.
        ("2026-12-01 07:00", "Asia/Kolkata", utc(2026, 12, 1, 1, 30)),
        # An explicit offset wins over the box's zone.
        ("2026-12-01T07:00:00+01:00", "America/New_York", utc(2026, 12, 1, 6, 0)),
        ("2026-03-29T02:30:00+01:00", "Europe/Madrid", utc(2026, 3, 29, 1, 30)),
        ("2026-10-25T02:30:00+02:00", "Europe/Madrid", utc(2026, 10, 25, 0, 30)),
        ("2026-10-25T02:30:00+01:00", "Europe/Madrid", utc(2026, 10, 25, 1, 30)),
        ("2026-12-01T06:00:00Z", "Europe/Madrid", utc(2026, 12, 1, 6, 0)),
        ("2026-12-01T01:00:00-05:00", "Europe/Madrid", utc(2026, 12, 1, 6, 0)),
    ],
)
def test_parse_instant(text: str, zone: str, expected: datetime) -> None:
    parsed = parse_instant(text, ZoneInfo(zone))
    assert parsed == expected
    assert parsed.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2026-03-29 02:30", r"does not exist in Europe/Madrid.*\+01:00 to \+02:00.*UTC offset"),
        ("2026-03-29 02:00", "does not exist in Europe/Madrid"),
        ("2026-10-25 02:30", r"happens twice in Europe/Madrid.*2026-10-25T02:30:00\+02:00"),
        ("2026-10-25 02:00", "happens twice in Europe/Madrid"),
        ("garbage", "malformed instant 'garbage'"),
        ("2026-12-01", "malformed instant"),  # a day alone is not an instant
        ("20261201", "malformed instant"),
        ("2026-12-01 25:00", "malformed instant"),
        ("2026-12-01T07:00:00+25:00", "malformed instant"),
        ("", "malformed instant"),
    ],
)
def test_parse_instant_refuses(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_instant(text, MADRID)


def test_localize_new_york_gap_and_overlap() -> None:
    new_york = ZoneInfo("America/New_York")
    with pytest.raises(UsageError, match=r"does not exist.*-05:00 to -04:00"):
        localize(datetime(2026, 3, 8, 2, 30), new_york)
    with pytest.raises(UsageError, match=r"happens twice.*-04:00 to -05:00"):
        localize(datetime(2026, 11, 1, 1, 30), new_york)
    assert localize(datetime(2026, 11, 1, 2, 30), new_york) == utc(2026, 11, 1, 7, 30)


def test_check_opening_accepts_a_future_instant_before_the_class() -> None:
    # Booking opening at 00:00 on the class day itself (a window some boxes use).
    check_opening(
        utc(2026, 3, 9, 23, 0), day=date(2026, 3, 10), zone=MADRID, now=NOW, max_lead=YEAR
    )


@pytest.mark.parametrize(
    ("instant", "message"),
    [
        (NOW, "already past"),
        (NOW - timedelta(microseconds=1), "already past"),
        (NOW + YEAR + timedelta(seconds=1), "more than 400 days ahead"),
        # 00:30 Madrid on the 11th is after the class day, though still the 10th in UTC.
        (utc(2026, 3, 10, 23, 30), "after the class day 20260310"),
    ],
)
def test_check_opening_refuses(instant: datetime, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        check_opening(instant, day=date(2026, 3, 10), zone=MADRID, now=NOW, max_lead=YEAR)


def test_formatting() -> None:
    instant = utc(2026, 3, 29, 5, 0)
    assert format_local(instant, MADRID) == "2026-03-29 07:00:00+02:00"
    assert format_local(utc(2026, 3, 28, 6, 0), MADRID) == "2026-03-28 07:00:00+01:00"
    assert format_utc(instant) == "2026-03-29 05:00:00Z"
    assert iso_utc(instant) == "2026-03-29T05:00:00Z"
    assert iso_utc(utc(2026, 3, 29, 5, 0, 0, 1500)) == "2026-03-29T05:00:00.001500Z"
    assert datetime.fromisoformat(iso_utc(instant)) == instant
    assert format_offset(timedelta(hours=-5)) == "-05:00"
    assert format_offset(timedelta(hours=5, minutes=30)) == "+05:30"


# --- booking windows -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "length", "code"),
    [
        ("4d", "days", 4, "4d"),
        ("4 days", "days", 4, "4d"),
        ("1 day", "days", 1, "1d"),
        (" 7D ", "days", 7, "7d"),
        ("72h", "hours", 72, "72h"),
        ("46 hours", "hours", 46, "46h"),
        ("96h", "hours", 96, "96h"),  # hours stay hours: they differ from 4d across DST
        ("same-day", "same_day", None, "same-day"),
        ("Same_Day", "same_day", None, "same-day"),
    ],
)
def test_parse_window(text: str, kind: str, length: int | None, code: str) -> None:
    window = parse_window(text)
    assert window == BookingWindow(kind, length)
    assert window.code == code
    assert parse_window(window.code) == window
    assert window_from_columns(window.kind, window.length) == window


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "malformed booking window"),
        ("4", "malformed booking window"),
        ("four days", "malformed booking window"),
        ("4w", "malformed booking window"),
        ("-4d", "malformed booking window"),
        ("0h", "out of range: 1 to 744 hours"),
        ("32d", "out of range: 1 to 31 days"),
    ],
)
def test_parse_window_refuses(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_window(text)


@pytest.mark.parametrize(
    ("kind", "length"), [(None, None), ("days", None), ("hours", 0), ("weeks", 2)]
)
def test_window_from_columns_without_a_usable_window(kind: str | None, length: int | None) -> None:
    assert window_from_columns(kind, length) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [("07:00", time(7, 0)), ("7:05", time(7, 5)), ("0700", time(7, 0)), ("23:59", time(23, 59))],
)
def test_parse_clock(text: str, expected: time) -> None:
    assert parse_clock(text) == expected


@pytest.mark.parametrize("text", ["", "7", "24:00", "07:60", "7h", "07:00:00"])
def test_parse_clock_refuses(text: str) -> None:
    with pytest.raises(UsageError, match="malformed class time"):
        parse_clock(text)


SEVEN = time(7, 0)


@pytest.mark.parametrize(
    ("day", "start", "window", "opens"),
    [
        # A 07:00 Madrid class with a 4-day window opens 07:00 Madrid four days earlier,
        # whichever side of a change each day is on. 2026: summer time from 29 March,
        # winter time from 25 October.
        (date(2026, 3, 10), SEVEN, "4d", utc(2026, 3, 6, 6, 0)),  # both +01:00
        (date(2026, 3, 31), SEVEN, "4d", utc(2026, 3, 27, 6, 0)),  # class +02:00, opens +01:00
        (date(2026, 3, 29), SEVEN, "4d", utc(2026, 3, 25, 6, 0)),  # class on the change day
        (date(2026, 10, 27), SEVEN, "4d", utc(2026, 10, 23, 5, 0)),  # class +01:00, opens +02:00
        (date(2026, 7, 1), SEVEN, "7d", utc(2026, 6, 24, 5, 0)),
        # Hours are elapsed hours: across the March change 72 h before 07:00 is 06:00.
        (date(2026, 3, 31), SEVEN, "72h", utc(2026, 3, 28, 5, 0)),
        (date(2026, 3, 10), SEVEN, "72h", utc(2026, 3, 7, 6, 0)),
        (date(2026, 10, 27), SEVEN, "72h", utc(2026, 10, 24, 6, 0)),
        (date(2026, 12, 3), time(9, 30), "46h", utc(2026, 12, 1, 10, 30)),  # 11:30
        (date(2026, 5, 10), SEVEN, "120h", utc(2026, 5, 5, 5, 0)),
        # Same day: 00:00 of the class day, box time.
        (date(2026, 3, 29), SEVEN, "same-day", utc(2026, 3, 28, 23, 0)),
        (date(2026, 3, 30), time(20, 0), "same-day", utc(2026, 3, 29, 22, 0)),
    ],
)
def test_opening_instant_madrid(day: date, start: time, window: str, opens: datetime) -> None:
    assert opening_instant(day, start, MADRID, parse_window(window)) == opens


def test_opening_instant_local_time_is_kept_in_other_zones() -> None:
    new_york = ZoneInfo("America/New_York")  # summer time from 8 March 2026
    opens = opening_instant(date(2026, 3, 10), SEVEN, new_york, parse_window("4d"))
    assert opens == utc(2026, 3, 6, 12, 0)
    assert format_local(opens, new_york) == "2026-03-06 07:00:00-05:00"


@pytest.mark.parametrize(
    ("day", "start", "message"),
    [
        # Four days before a 02:30 class on 2 April is 02:30 on the spring-forward night.
        (date(2026, 4, 2), time(2, 30), "does not exist in Europe/Madrid"),
        (date(2026, 10, 29), time(2, 30), "happens twice in Europe/Madrid"),
    ],
)
def test_opening_instant_refuses_a_wall_time_the_change_skips_or_repeats(
    day: date, start: time, message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        opening_instant(day, start, MADRID, parse_window("4d"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("No puedes reservar clases con más de 4 días de antelación", timedelta(days=4)),
        ("No puedes reservar clases con mas de 7 dias de antelacion", timedelta(days=7)),
        ("No puedes reservar clases con más de 1 día de antelación", timedelta(days=1)),
        ("No puedes reservar clases con más de 72 horas de antelación", timedelta(hours=72)),
        ("No pots reservar classes amb més de 4 dies d'antelació", timedelta(days=4)),
        ("No pots reservar classes amb més de 46 hores d'antelació", timedelta(hours=46)),
        ("You cannot book classes more than 5 days in advance", timedelta(days=5)),
        ("You can't book classes more than 120 hours in advance", timedelta(hours=120)),
        ("You cannot book more than 48h in advance", timedelta(hours=48)),
    ],
)
def test_parse_window_message(text: str, expected: timedelta) -> None:
    assert parse_window_message(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "No puedes reservar dos clases a la misma hora",
        # A limit too, but on how late one may book: not the window.
        "No puedes reservar clases con menos de 2 horas de antelación",
        "No quedan plazas libres en esta clase",
        "No puedes reservar clases con más de 0 días de antelación",
    ],
)
def test_parse_window_message_without_a_window(text: str) -> None:
    assert parse_window_message(text) is None


def test_window_from_message_keeps_the_unit() -> None:
    assert window_from_message("con más de 96 horas de antelación") == BookingWindow("hours", 96)
    assert window_from_message("con más de 4 días de antelación") == BookingWindow("days", 4)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("today", date(2030, 12, 31)),
        ("Tomorrow", date(2031, 1, 1)),
        ("+5", date(2031, 1, 5)),
        ("+5d", date(2031, 1, 5)),
        (" +0d ", date(2030, 12, 31)),
        ("20301201", date(2030, 12, 1)),
    ],
)
def test_parse_day_relative_to_today(text: str, expected: date) -> None:
    assert parse_day(text, today=date(2030, 12, 31)) == expected


@pytest.mark.parametrize("text", ["+", "-1d", "+5w", "yesterday", "+99999"])
def test_parse_day_refuses_what_is_not_a_day_after_today(text: str) -> None:
    with pytest.raises(UsageError, match="today, tomorrow or \\+N"):
        parse_day(text, today=date(2030, 12, 31))


def test_relative_days_need_today() -> None:
    with pytest.raises(UsageError, match="malformed day"):
        parse_day("tomorrow")


def test_parse_instant_relative_to_now() -> None:
    now = datetime(2030, 3, 31, 0, 59, 50, tzinfo=UTC)
    assert parse_instant("+30s", MADRID, now=now) == datetime(2030, 3, 31, 1, 0, 20, tzinfo=UTC)
    assert parse_instant("+5m", MADRID, now=now) == now + timedelta(minutes=5)
    assert parse_instant("+2h", MADRID, now=now) == now + timedelta(hours=2)
    # Rounded up to a whole second, as opening instants are.
    assert parse_instant("+10s", MADRID, now=now.replace(microsecond=1)) == now + timedelta(
        seconds=11
    )
    with pytest.raises(UsageError, match=r"\+30s, \+5m, \+2h from now"):
        parse_instant("+5d", MADRID, now=now)
    with pytest.raises(UsageError, match="malformed instant"):
        parse_instant("+30s", MADRID)  # without now, no relative instants
