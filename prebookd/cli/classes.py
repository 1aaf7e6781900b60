"""`prebookd classes`, and the class lookup `prebookd add --class` makes: a day's
classes at a box, as a member sees them, listed with a stored background session.

Without `--email` the listing is made with the background session of a member with a
prebooking at the box (else of anyone): whose is said on stderr, the address masked.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg

from prebookd import timeparse
from prebookd.aimharder.account import SessionExpired
from prebookd.aimharder.classes import ClassInfo, list_classes
from prebookd.cli.common import (
    box_zone,
    checked_box_url,
    database,
    known_box,
    member_http,
    parse_email,
    parse_subdomain,
    parse_token,
    print_json,
    print_table,
)
from prebookd.db import admin_prebookings, admin_store
from prebookd.errors import UsageError
from prebookd.log import mask_email
from prebookd.proxies import box_proxy_url
from prebookd.settings import Settings

_HEADERS = ("TIME", "CLASS", "SESSION ID", "BOOKED", "WAITING", "YOU")
SESSIONS_TRIED = 3  # without --email: dead sessions skipped before giving up

EPILOG = """\
The SESSION ID is what `prebookd add --class-id` takes; `--class "07:00 WOD"` names
the same class by its time and name.

examples:
  prebookd classes --box crossfitnorte --day +5d
  prebookd classes --box crossfitnorte --day 20301201 --email jane@example.com
  prebookd classes --box crossfitnorte --day tomorrow --json | jq -r '.[] | .time + " " + .name'
"""


def add_classes_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    classes = commands.add_parser(
        "classes",
        help="list a day's classes at a box",
        description="List a day's classes at a box as a member sees them (with their "
        "background session): time, name, session id, places taken, waiting list, and "
        "whether the member is booked. With a booking window on the box, also when "
        "booking opens for each.",
        epilog=EPILOG,
    )
    classes.add_argument("--box", required=True, metavar="SUBDOMAIN", help="the box")
    classes.add_argument(
        "--day", required=True, help="the day: YYYYMMDD, YYYY-MM-DD, today, tomorrow or +N"
    )
    classes.add_argument(
        "--email",
        help="whose session to list them with; default: a member with a prebooking at the "
        "box, else anyone with a background session (said on stderr)",
    )
    classes.add_argument("--family-id", default="", help="family member id (default: none)")
    classes.add_argument("--json", action="store_true", help="print JSON")
    classes.set_defaults(handler=_classes)


async def _classes(args: argparse.Namespace, settings: Settings) -> int:
    email = parse_email(args.email) if args.email is not None else None
    subdomain = parse_subdomain(args.box)
    family_id = parse_token("family id", args.family_id) if args.family_id.strip() else ""
    async with database(settings) as conn:
        box = await known_box(conn, subdomain)
        zone = box_zone(box)
        day = box_day(args.day, zone)
        if email is not None:
            listed = await list_for(settings, conn, box, email, day, family_id)
        else:
            listed = await _list_with_any_session(settings, conn, box, day, family_id)
    window = timeparse.window_from_columns(box.booking_window_kind, box.booking_window_length)
    opens = {c.session_id: _opening_or_none(c, day, zone, window) for c in listed}
    if args.json:
        print_json([_class_json(c, opens[c.session_id]) for c in listed])
    elif not listed:
        print(f"no classes at {subdomain} on {timeparse.format_day(day)}")
    else:
        headers: Sequence[str] = _HEADERS
        rows: list[tuple[object, ...]] = [_class_row(c) for c in listed]
        if window is not None:
            headers = (*headers, f"OPENS ({zone.key})")
            rows = [
                (*row, _format_opening(opens[c.session_id], zone))
                for row, c in zip(rows, listed, strict=True)
            ]
        print_table(headers, rows)
    return 0


def box_day(text: str, zone: ZoneInfo) -> date:
    """`--day`, with today, tomorrow and +N counted from today in the box's zone."""
    return timeparse.parse_day(text, today=datetime.now(UTC).astimezone(zone).date())


async def list_for(
    settings: Settings,
    conn: asyncpg.Connection,
    box: admin_store.Box,
    email: str,
    day: date,
    family_id: str,
) -> list[ClassInfo]:
    """The day's classes as `email` sees them, with their stored background session."""
    checked_box_url(box, settings.box_hosts)  # refused before any session is looked at
    session = await admin_store.find_background_session(conn, email)
    if session is None or not session.aimharder_cookies:
        raise UsageError(
            f"{email} has no background session: run `prebookd login --email {email}` first"
        )
    if not isinstance(session.aimharder_cookies, list):
        raise UsageError(f"{email}'s background session cookies are malformed: log in again")
    try:
        return await _list_with(settings, box, session, day, family_id)
    except SessionExpired:
        raise SessionExpired(
            f"{email}'s background session is dead (AimHarder answered logout): run "
            f"`prebookd login --email {email}`"
        ) from None


async def _list_with_any_session(
    settings: Settings, conn: asyncpg.Connection, box: admin_store.Box, day: date, family_id: str
) -> list[ClassInfo]:
    checked_box_url(box, settings.box_hosts)  # refused before any session is looked at
    sessions = await admin_store.sessions_for_box(conn, box.id, SESSIONS_TRIED)
    if not sessions:
        raise UsageError(
            "no member has a background session to list the classes with: run "
            "`prebookd login --email EMAIL`, or give --email"
        )
    dead = []
    for session in sessions:
        whose = mask_email((session.user_email or "").lower())
        try:
            listed = await _list_with(settings, box, session, day, family_id)
        except SessionExpired:
            dead.append(whose)
            continue
        print(
            f"classes as {whose} sees them (their background session; --email to choose)",
            file=sys.stderr,
        )
        return listed
    raise SessionExpired(
        f"the background sessions tried ({', '.join(dead)}) are dead (AimHarder answered "
        "logout): run `prebookd login --email EMAIL`, or give --email"
    )


async def _list_with(
    settings: Settings,
    box: admin_store.Box,
    session: admin_store.BackgroundSession,
    day: date,
    family_id: str,
) -> list[ClassInfo]:
    box_url = checked_box_url(box, settings.box_hosts)
    # The box's own proxy (it may be blocked without), else PREBOOKD_PROXY_URL.
    async with member_http(box_proxy_url(box.proxy_url) or settings.proxy) as http:
        return await list_classes(
            http,
            box_url,
            box.box_id or "",
            timeparse.format_day(day),
            session.aimharder_cookies,
            family_id,
        )


def _opening_or_none(
    cls: ClassInfo, day: date, zone: ZoneInfo, window: timeparse.BookingWindow | None
) -> datetime | None:
    if window is None:
        return None
    try:
        return timeparse.opening_instant(day, timeparse.parse_clock(cls.start), zone, window)
    except UsageError:
        return None  # an odd time in the listing, or a wall time a DST change skips


def _format_opening(instant: datetime | None, zone: ZoneInfo) -> str:
    return timeparse.format_local(instant, zone) if instant else "?"


def _class_row(cls: ClassInfo) -> tuple[object, ...]:
    you = "booked" if cls.booked else "waiting list" if cls.waitlisted else ""
    return (cls.time, cls.name, cls.session_id, f"{cls.occupancy}/{cls.limit}", cls.waitlist, you)


def _class_json(cls: ClassInfo, opens: datetime | None) -> dict[str, Any]:
    return {
        "session_id": cls.session_id,
        "time": cls.time,
        "start": cls.start,
        "name": cls.name,
        "occupancy": cls.occupancy,
        "limit": cls.limit,
        "waitlist": cls.waitlist,
        "booked": cls.booked,
        "waitlisted": cls.waitlisted,
        "reservation_id": cls.reservation_id,
        "opens_at": timeparse.iso_utc(opens) if opens else None,
    }


# --- for `prebookd add` ----------------------------------------------------------------


async def resolve_class(
    settings: Settings,
    conn: asyncpg.Connection,
    box: admin_store.Box,
    email: str,
    day: date,
    query: str | None,
    session_id: str | None,
    family_id: str = "",
) -> ClassInfo:
    """The class `query` ("07:00 WOD") or `session_id` names in the day's listing."""
    listed = await list_for(settings, conn, box, email, day, family_id)
    where = f"at {box.subdomain} on {timeparse.format_day(day)}"
    if session_id is not None:
        found = [c for c in listed if c.session_id == session_id]
        if not found:
            raise UsageError(f"no class {session_id} {where}: {_candidates(listed)}")
        return found[0]
    assert query is not None
    return find_class(listed, query, where)


def find_class(listed: Sequence[ClassInfo], query: str, where: str = "") -> ClassInfo:
    """The one class `query` names: "07:00 WOD", "07:00" or "WOD" (names compared without
    case; a unique partial name is accepted). Unknown or ambiguous: a UsageError that
    lists the candidates."""
    where = f" {where}" if where else ""
    words = query.split()
    if not words:
        raise UsageError("empty --class: expected e.g. '07:00 WOD'")
    start: str | None = None
    with contextlib.suppress(UsageError):
        start = f"{timeparse.parse_clock(words[0]):%H:%M}"
    name = " ".join(words[1:] if start else words).casefold()
    at_time = [c for c in listed if start is None or _start_of(c) == start]
    matches = [c for c in at_time if not name or c.name.casefold() == name]
    if not matches and name:
        matches = [c for c in at_time if name in c.name.casefold()]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise UsageError(f"no class {query!r}{where}: {_candidates(listed)}")
    raise UsageError(
        f"{query!r} matches {len(matches)} classes{where}: {_candidates(matches)}; give --class-id"
    )


def _start_of(cls: ClassInfo) -> str | None:
    try:
        return f"{timeparse.parse_clock(cls.start):%H:%M}"
    except UsageError:
        return None


def _candidates(listed: Sequence[ClassInfo]) -> str:
    if not listed:
        return "AimHarder lists no classes that day"
    return "the classes are " + ", ".join(f"{c.label} (id {c.session_id})" for c in listed)


async def missing_window_error(conn: asyncpg.Connection, box: admin_store.Box) -> UsageError:
    """Why `add` without --at cannot go on, with a window to try if AimHarder told one.

    Booking just to read the window from the refusal is not an option: if booking
    happened to be open, it would book. An earlier refusal stored at this box is used."""
    hint = ""
    message = await admin_prebookings.last_window_message(conn, box.id)
    window = timeparse.window_from_message(message) if message else None
    if window is not None:
        hint = (
            f"; AimHarder told an earlier booking at this box {message!r}, which suggests "
            f"`prebookd box set-window {box.subdomain} {window.code}`"
        )
    return UsageError(
        f"box {box.subdomain!r} has no booking window: give --at INSTANT, or set the box's "
        f"window (`prebookd box set-window {box.subdomain} 4d|72h|same-day`){hint}"
    )
