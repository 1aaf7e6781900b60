"""Days and instants as people type them, against fixed datetimes (no clock involved)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from prebookd.errors import UsageError
from prebookd.timeparse import (
    check_opening,
    format_day,
    format_local,
    format_offset,
    format_utc,
    iso_utc,
    localize,
    parse_day,
    parse_instant,
    parse_zone,
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
