"""A box's endpoints (shared/AIMHARDER.md): the classes of a day, book, cancelBook, and
the page at its base URL.

Each route reads the request as the simulator received it and decides from the state
and the box's clock, `call.box_now` / `call.box_arrived_at`; nothing here waits or
does I/O.
"""

from __future__ import annotations

import datetime as dt
import html
import re
from typing import Any
from urllib.parse import parse_qsl

from prebookd.sim.faults import CLOCK_BEHIND, REFUSAL, UNLISTED
from prebookd.sim.model import (
    ALREADY_BOOKED,
    AUTH_COOKIE,
    BAD_PARAMETERS,
    BOOKED,
    CONTRACTED,
    FULL,
    LOGOUT,
    NO_CREDITS,
    NOT_AVAILABLE,
    NOT_OPEN_ANSWERS,
    NOT_YOUR_FAMILY,
    UNKNOWN_CLASS,
    WRONG_DAY,
    Answer,
    Box,
    Call,
    Reservation,
    SimClass,
    refusal,
)
from prebookd.sim.state import Route, SimState

_DAY = re.compile(r"^\d{8}$")
_TIME_RANGE = re.compile(r"^(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})$")


def form_of(call: Call) -> dict[str, str]:
    return dict(parse_qsl(call.body.decode("utf-8", "replace"), keep_blank_values=True))


def _member_email(state: SimState, call: Call) -> str | None:
    member = state.member_for_cookie(call.request.cookies.get(AUTH_COOKIE), call.box_now)
    return member.email if member else None


# --- book ----------------------------------------------------------------------------


async def book(state: SimState, call: Call) -> Answer:
    assert call.box is not None
    box = call.box
    form = form_of(call)
    session_id, day = form.get("id") or None, form.get("day") or None
    family_id = form.get("familyId", "")
    email = _member_email(state, call)
    if email is None:  # a dead session is not an HTTP error on AimHarder (most boxes)
        if box.faults.dead_session_status == 401:
            return Answer({}, status=401, html="<html><body>401</body></html>")
        return Answer(LOGOUT, session_id=session_id, day=day)

    def answer(payload: dict[str, Any], fault: str | None = None) -> Answer:
        return Answer(payload, email=email, session_id=session_id, day=day, fault=fault)

    if session_id is None or day is None:
        return answer(BAD_PARAMETERS)
    cls = box.classes.get(session_id)
    if cls is None and state.ad_hoc_classes:  # any session id is a class with the defaults
        cls = SimClass(
            session_id,
            day,
            state.default_capacity,
            state.default_opens_at,
            waitlist_capacity=state.default_waitlist_capacity,
        )
        box.classes[session_id] = cls
    if cls is None:
        return answer(UNKNOWN_CLASS)
    if day != cls.day:
        return answer(WRONG_DAY)
    member = state.member(email)
    if family_id and (member is None or family_id not in member.family_ids):
        return answer(NOT_YOUR_FAMILY)
    # The box's own refusals, drawn in front of its rules (see Faults).
    if call.fault == REFUSAL:
        return answer(refusal(box.faults.refusal_message), REFUSAL)
    if call.fault == UNLISTED:
        return answer(NOT_AVAILABLE, UNLISTED)
    # Compare the first-byte time, never the handler time: a request that reached the
    # box before the instant was early, however long it then queued here. The instant
    # is the box's own clock's: a box whose clock is behind ours opens that much later,
    # by ours.
    if call.box_arrived_at < cls.opens_at:
        behind = CLOCK_BEHIND if call.arrived_at >= cls.opens_at else None  # open by ours
        return answer(NOT_OPEN_ANSWERS[box.faults.not_open_code], behind)
    if (session_id, email, family_id) in box.by_member:
        return answer(ALREADY_BOOKED)
    if member is not None and member.no_credits:
        return answer(NO_CREDITS)
    if box.daily_limit is not None and box.per_day[(email, family_id, cls.day)] >= box.daily_limit:
        return answer({"clasesContratadas": CONTRACTED, "bookState": -8, "max": box.daily_limit})
    booked = box.booked.get(session_id, [])
    if len(booked) < cls.capacity:
        waiting = False
    elif form.get("insist") == "1" and len(box.waiting.get(session_id, [])) < cls.waitlist_capacity:
        waiting = True  # only when asked: insist=0 on a full class is a plain -1
    else:
        return answer(FULL)
    res = Reservation(state.next_reservation_id(), session_id, cls.day, email, family_id)
    box.hold(res, waiting=waiting)
    if waiting:
        # The shape of AimHarder's waiting-list answer is not documented beyond
        # bookState 0; the reservation id is given, as for a place, so it can be cancelled.
        return answer({"clasesContratadas": CONTRACTED, "bookState": 0, "id": res.idres})
    return answer({**BOOKED, "id": res.idres})


# --- cancelBook ----------------------------------------------------------------------


async def cancel_book(state: SimState, call: Call) -> Answer:
    assert call.box is not None
    box = call.box
    form = form_of(call)
    idres = form.get("id", "")
    email = _member_email(state, call)
    if email is None:
        return Answer(LOGOUT)
    res = box.by_idres.get(idres)
    if res is None or res.email != email:  # someone else's reservation is unknown to you
        return Answer({"cancelState": 3}, email=email)

    def answer(state_code: int) -> Answer:
        return Answer(
            {"cancelState": state_code}, email=email, session_id=res.session_id, day=res.day
        )

    cls = box.classes.get(res.session_id)
    late = (
        not box.is_waiting(res)  # leaving a waiting list costs nothing
        and cls is not None
        and cls.starts_at is not None
        and cls.starts_at - call.box_now < box.late_cancel_window
    )
    if late and form.get("late") != "1":
        return answer(2)  # the member must confirm losing the credit
    promoted = not box.is_waiting(res) and box.waiting.get(res.session_id)
    box.release(res)
    if promoted:
        first = box.waiting[res.session_id][0]
        box.release(first)
        box.hold(first, waiting=False)  # the same idres: the wait became a place
    return answer(1)


# --- classes of a day ----------------------------------------------------------------


def _timing(cls: SimClass) -> tuple[str, int]:
    """(timeid, classLength) from "07:00 - 08:00": ("0700_60", 60)."""
    match = _TIME_RANGE.match(cls.time.strip())
    if match is None:  # a free-form time: still a usable id
        return re.sub(r"\D", "", cls.time)[:4] + "_60", 60
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    length = (h2 * 60 + m2 - h1 * 60 - m1) % (24 * 60)
    return f"{h1:02d}{m1:02d}_{length}", length


def _limit(box: Box, cls: SimClass) -> str:
    """The listing's limit: "16", or "16 (3)" (places, waiting-list places) as some
    boxes write it."""
    shows = (
        box.limit_shows_waitlist if cls.limit_shows_waitlist is None else cls.limit_shows_waitlist
    )
    return f"{cls.capacity} ({cls.waitlist_capacity})" if shows else str(cls.capacity)


_WEEKDAYS = ("lunes", "martes", "miércoles", "jueves", "viernes", "sábado", "domingo")
_MONTHS = ("enero", "febrero", "marzo", "abril", "mayo", "junio", "julio", "agosto",
           "septiembre", "octubre", "noviembre", "diciembre")  # fmt: skip


def spanish_date(day: str) -> str:
    """A YYYYMMDD day as some boxes write it: 20261201 is "martes, 1 de diciembre"
    (spelled out here, not by the locale, so it does not depend on the machine's)."""
    date = dt.date(int(day[:4]), int(day[4:6]), int(day[6:]))
    return f"{_WEEKDAYS[date.weekday()]}, {date.day} de {_MONTHS[date.month - 1]}"


def _listing_entry(box: Box, cls: SimClass, email: str, family_id: str) -> dict[str, Any]:
    mine = box.by_member.get((cls.session_id, email, family_id))
    timeid, length = _timing(cls)
    return {
        "id": int(cls.session_id) if cls.session_id.isdigit() else cls.session_id,
        "time": cls.time,
        "timeid": timeid,
        "classId": cls.class_id,
        "className": cls.name,
        "classLength": length,
        "bookState": None if mine is None else (0 if box.is_waiting(mine) else 1),
        "idres": None if mine is None else int(mine.idres),
        "ocupation": len(box.booked.get(cls.session_id, [])),  # sic: AimHarder's spelling
        "limit": _limit(box, cls),
        "limitc": cls.capacity,
        "waitlist": len(box.waiting.get(cls.session_id, [])),
        # 1 even when booking is not open yet, as on AimHarder.
        "enabled": 1,
        "coachName": cls.coach,
        "boxName": box.name,
        "resadmin": 0,
        "included": 1,
    }


async def classes_of_day(state: SimState, call: Call) -> Answer:
    assert call.box is not None
    box = call.box
    day = call.request.query.get("day", "")
    family_id = call.request.query.get("familyId", "")
    email = _member_email(state, call)
    if email is None:
        return Answer(LOGOUT, day=day or None)
    if not _DAY.match(day):
        # Invented: AimHarder's answer to a malformed day is not known; a 400 makes a
        # client bug loud instead of looking like an empty day.
        raise ValueError(f"day must be YYYYMMDD, not {day!r}")
    classes = sorted(
        (c for c in box.classes.values() if c.day == day), key=lambda c: (_timing(c), c.time)
    )
    entries = [_listing_entry(box, cls, email, family_id) for cls in classes]
    timetable = {e["timeid"]: {"id": e["timeid"], "time": e["time"]} for e in entries}
    payload = {
        "clasesDisp": "",  # meaning unknown (not needed to book); present, as on AimHarder
        "day": spanish_date(day) if box.day_as_text else day,
        "timetable": list(timetable.values()),
        "seminars": [],
        "bookings": entries,
    }
    return Answer(payload, email=email, day=day)


# --- the box's page ------------------------------------------------------------------


async def home(state: SimState, call: Call) -> Answer:
    """The box's page at its base URL, for anyone: what a probe of the box's clock
    (HEAD, reading the Date header) gets, at no cost. AimHarder serves the box's public
    page there; a short page stands in for it."""
    assert call.box is not None
    name = html.escape(call.box.name)
    return Answer({}, html=f"<!DOCTYPE html>\n<html><head><title>{name}</title></head></html>\n")


BOX_ROUTES: dict[tuple[str, str], Route] = {
    ("GET", "/"): home,
    ("HEAD", "/"): home,
    ("POST", "/api/book"): book,
    ("POST", "/api/cancelBook"): cancel_book,
    ("GET", "/api/bookings"): classes_of_day,
}
