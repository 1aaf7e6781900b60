"""The planner's decisions (prebookd.daemon.plan), pure: fixed instants, DST included."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from prebookd.aimharder.classes import ClassInfo
from prebookd.daemon.plan import (
    Away,
    Rule,
    RuleRow,
    decide,
    missing_text,
    normalize_name,
    parse_weekdays,
    place,
)
from prebookd.errors import UsageError
from prebookd.timeparse import BookingWindow

MADRID = ZoneInfo("Europe/Madrid")
BOX = uuid.uuid4()
HORIZON = timedelta(days=8)


def rule(**changes: object) -> Rule:
    values: dict[str, object] = {
        "id": 1,
        "user_email": "jane@example.com",
        "box": BOX,
        "weekdays": frozenset({1, 3}),  # Mon, Wed
        "class_time": time(7, 0),
        "class_name": "WOD",
        "created_at": datetime(2026, 1, 1, tzinfo=UTC),
        "zone": MADRID,
        "window": BookingWindow("days", 4),
    }
    values.update(changes)
    return Rule(**values)  # type: ignore[arg-type]


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def listed(day: date, *labels: str) -> list[ClassInfo]:
    classes = []
    for n, label in enumerate(labels):
        start, name = label.split(" ", 1)
        hour = int(start[:2]) + 1
        classes.append(
            ClassInfo(
                f"{day:%m%d}{n}", f"{start} - {hour:02d}:00", name, 0, 16, 0, False, False, None
            )
        )
    return classes


def test_days_windows_keep_the_wall_time_across_the_march_change() -> None:
    # Clocks go forward on Sunday 28 March 2027: 07:00 is 06:00Z before, 05:00Z after.
    decided = decide(utc(2027, 3, 24, 12), [rule()], [], [], HORIZON)
    assert [(n.day, n.instant) for n in decided.needs] == [
        (date(2027, 3, 29), utc(2027, 3, 25, 6)),  # opens Thursday 25th 07:00 CET
        (date(2027, 3, 31), utc(2027, 3, 27, 6)),  # opens Saturday 27th 07:00 CET
        (date(2027, 4, 5), utc(2027, 4, 1, 5)),  # opens Thursday 1st 07:00 CEST
    ]
    assert not decided.withdraw and not decided.passed and not decided.problems


def test_days_windows_keep_the_wall_time_across_the_october_change() -> None:
    # Clocks go back on Sunday 25 October 2026: 07:00 is 05:00Z before, 06:00Z after.
    decided = decide(utc(2026, 10, 21, 12), [rule()], [], [], HORIZON)
    assert [(n.day, n.instant) for n in decided.needs] == [
        (date(2026, 10, 26), utc(2026, 10, 22, 5)),
        (date(2026, 10, 28), utc(2026, 10, 24, 5)),
        (date(2026, 11, 2), utc(2026, 10, 29, 6)),
    ]


def test_hours_windows_count_elapsed_hours_across_the_change() -> None:
    hours = rule(weekdays=frozenset({3}), window=BookingWindow("hours", 96))
    decided = decide(utc(2027, 3, 24, 12), [hours], [], [], HORIZON)
    # Wed 31 March 07:00 CEST = 05:00Z; 96 h earlier is 06:00 CET on the 27th.
    assert (decided.needs[0].day, decided.needs[0].instant) == (
        date(2027, 3, 31),
        utc(2027, 3, 27, 5),
    )


def test_a_day_planned_once_is_not_needed_again_even_if_cancelled_by_hand() -> None:
    rows = [
        RuleRow(uuid.uuid4(), 1, date(2027, 3, 29), "cancelled", None, {}, None),
        RuleRow(uuid.uuid4(), 1, date(2027, 3, 31), "completed", None, {}, None),
    ]
    decided = decide(utc(2027, 3, 24, 12), [rule()], [], rows, HORIZON)
    assert [n.day for n in decided.needs] == [date(2027, 4, 5)]
    assert not decided.withdraw


def _pending(day: date, instant: datetime, **data: object) -> RuleRow:
    booking = {"day": f"{day:%Y%m%d}", "familyId": "", "id": "1", "insist": 0, **data}
    return RuleRow(uuid.uuid4(), 1, day, "pending", instant, booking, "07:00 WOD")


def test_a_paused_or_removed_rule_withdraws_its_pending_rows_only() -> None:
    row = _pending(date(2027, 3, 29), utc(2027, 3, 25, 6))
    done = RuleRow(uuid.uuid4(), 1, date(2027, 3, 22), "completed", None, {}, None)
    paused = decide(utc(2027, 3, 24, 12), [rule(active=False)], [], [row, done], HORIZON)
    assert paused.withdraw == [(row.id, "rule 1 paused")] and not paused.needs
    removed = decide(utc(2027, 3, 24, 12), [], [], [row, done], HORIZON)
    assert removed.withdraw == [(row.id, "rule 1 removed")]


def test_an_edited_rule_withdraws_rows_of_the_old_class_and_plans_the_new_one() -> None:
    row = _pending(date(2027, 3, 29), utc(2027, 3, 25, 6))
    later = decide(utc(2027, 3, 24, 12), [rule(class_time=time(8, 0))], [], [row], HORIZON)
    assert later.withdraw == [(row.id, "rule 1 changed to 08:00 WOD")]
    assert date(2027, 3, 29) in [n.day for n in later.needs]
    fewer = decide(utc(2027, 3, 24, 12), [rule(weekdays=frozenset({3}))], [], [row], HORIZON)
    assert fewer.withdraw == [(row.id, "rule 1 no longer books mon")]
    waitlist = decide(utc(2027, 3, 24, 12), [rule(insist=1)], [], [row], HORIZON)
    assert [w[0] for w in waitlist.withdraw] == [row.id]
    same = decide(utc(2027, 3, 24, 12), [rule(class_name=" wód ")], [], [row], HORIZON)
    assert not same.withdraw


def test_a_box_window_changed_moves_pending_rows() -> None:
    row = _pending(date(2027, 3, 29), utc(2027, 3, 25, 6))
    decided = decide(
        utc(2027, 3, 24, 12), [rule(window=BookingWindow("days", 3))], [], [row], HORIZON
    )
    assert decided.moves == [(row.id, utc(2027, 3, 26, 6))] and not decided.withdraw


def test_days_away_are_not_planned_and_withdraw_the_rows_inside_them() -> None:
    row = _pending(date(2027, 3, 29), utc(2027, 3, 25, 6))
    away = Away(7, "JANE@example.com", None, date(2027, 3, 28), date(2027, 4, 1))
    decided = decide(utc(2027, 3, 24, 12), [rule()], [away], [row], HORIZON)
    assert decided.withdraw == [(row.id, "away 2027-03-28 to 2027-04-01")]
    assert [n.day for n in decided.needs] == [date(2027, 4, 5)]
    other_box = Away(8, "jane@example.com", uuid.uuid4(), date(2027, 3, 28), date(2027, 4, 1))
    assert not decide(utc(2027, 3, 24, 12), [rule()], [other_box], [row], HORIZON).withdraw


def test_a_passed_day_with_no_row_is_due_for_its_report() -> None:
    # Thursday 25th 06:00Z opened Monday 29th; a round just after it, still no row.
    decided = decide(utc(2027, 3, 25, 6, 1), [rule()], [], [], HORIZON)
    assert [n.day for n in decided.passed] == [date(2027, 3, 29)]
    # A rule made after that instant never had the chance: nothing to report.
    young = rule(created_at=utc(2027, 3, 25, 6, 0, 30))
    assert not decide(utc(2027, 3, 25, 6, 1), [young], [], [], HORIZON).passed


def test_place_matches_names_leniently_and_says_what_is_missing() -> None:
    decided = decide(utc(2027, 3, 24, 12), [rule(class_name="  wód ", insist=1)], [], [], HORIZON)
    first, second, _ = decided.needs
    listings = {
        first.listing: listed(first.day, "07:00 Yoga", "07:00 WOD"),
        second.listing: listed(second.day, "08:00 WOD"),
    }
    planned, missing = place(decided.needs, listings)
    assert [(p.day, p.class_label) for p in planned] == [(date(2027, 3, 29), "07:00 WOD")]
    assert planned[0].booking_data == {
        "day": "20270329",
        "familyId": "",
        "id": listings[first.listing][1].session_id,
        "insist": 1,
    }
    assert missing == [second]  # the third: no listing read, neither
    assert missing_text(second.rule, second.day) == "no 07:00 wód on Wednesday 31 Mar"


def test_weekdays_and_names() -> None:
    assert parse_weekdays("mon,wed,FRI") == {1, 3, 5}
    assert parse_weekdays("Monday sunday") == {1, 7}
    with pytest.raises(UsageError):
        parse_weekdays("mon,funday")
    assert normalize_name("  Cardio  Fúnción ") == "cardio funcion"


def test_a_box_without_window_is_a_problem_not_a_crash() -> None:
    decided = decide(utc(2027, 3, 24, 12), [rule(window=None)], [], [], HORIZON)
    assert not decided.needs and decided.problems


def test_rows_of_a_box_with_a_bad_zone_stay_as_they_are() -> None:
    row = _pending(date(2027, 3, 29), utc(2027, 3, 25, 6))
    decided = decide(utc(2027, 3, 24, 12), [rule(zone=None)], [], [row], HORIZON)
    assert not decided.moves and not decided.withdraw and not decided.needs
    assert decided.problems
