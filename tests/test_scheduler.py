"""The heap: firing order, lazy deletion, reschedules. Pure logic, fixed numbers."""

from __future__ import annotations

import uuid

from prebookd.daemon.scheduler import Entry, Schedule

Z, A, B, C = (uuid.UUID(int=i) for i in range(4))


def test_due_entries_come_out_by_instant_then_created_at_then_id() -> None:
    schedule = Schedule()
    schedule.upsert(Entry(100.0, 5.0, A))
    schedule.upsert(Entry(100.0, 1.0, B))
    schedule.upsert(Entry(50.0, 9.0, C))
    schedule.upsert(Entry(100.0, 1.0, Z))
    due = schedule.pop_due(100.0)
    assert [e.id for e in due] == [C, Z, B, A]
    assert len(schedule) == 0


def test_only_entries_up_to_the_deadline_are_due() -> None:
    schedule = Schedule()
    for i, instant in enumerate([10.0, 20.0, 30.0]):
        schedule.upsert(Entry(instant, 0.0, uuid.UUID(int=i)))
    assert [e.available_at for e in schedule.pop_due(20.0)] == [10.0, 20.0]
    assert schedule.head() == Entry(30.0, 0.0, uuid.UUID(int=2))
    assert schedule.pop_due(29.999) == []


def test_removed_entry_is_never_due() -> None:
    schedule = Schedule()
    schedule.upsert(Entry(10.0, 0.0, A))
    schedule.upsert(Entry(20.0, 0.0, B))
    assert schedule.remove(A) == Entry(10.0, 0.0, A)
    assert schedule.head() == Entry(20.0, 0.0, B)
    assert [e.id for e in schedule.pop_due(100.0)] == [B]
    assert schedule.remove(A) is None


def test_rescheduled_entry_is_due_at_its_new_instant_only() -> None:
    schedule = Schedule()
    schedule.upsert(Entry(10.0, 0.0, A))
    assert schedule.upsert(Entry(50.0, 0.0, A))
    assert schedule.pop_due(10.0) == []
    assert schedule.pop_due(50.0) == [Entry(50.0, 0.0, A)]
    assert schedule.pop_due(1e9) == [], "the stale entry does not come back"


def test_upsert_of_an_unchanged_entry_says_nothing_changed() -> None:
    schedule = Schedule()
    assert schedule.upsert(Entry(10.0, 0.0, A))
    assert not schedule.upsert(Entry(10.0, 0.0, A))
    assert len(schedule) == 1


def test_stale_entries_do_not_pile_up() -> None:
    schedule = Schedule()
    for step in range(10_000):
        schedule.upsert(Entry(float(step), 0.0, A))  # the same row moved 10,000 times
    assert len(schedule) == 1
    assert len(schedule._heap) < 200
    assert schedule.pop_due(1e9) == [Entry(9999.0, 0.0, A)]
