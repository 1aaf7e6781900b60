"""Commands that talk to AimHarder as a member: `login` and `classes`, plus the class
lookup and opening-instant helpers `prebookd add` uses.

`login` is the one place a password passes through prebookd: it is read without echo
(or from stdin), sent once in the login request and dropped; it is never stored,
logged, or put in a message. What is stored is the session AimHarder hands back, as
the member's `background` row in `auth_sessions`, which the daemon books with.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import sys
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import asyncpg

from prebookd import timeparse
from prebookd.aimharder import account
from prebookd.aimharder.account import Role, SessionExpired
from prebookd.aimharder.classes import ClassInfo, list_classes
from prebookd.cli.common import (
    box_zone,
    checked_box_url,
    database,
    known_box,
    parse_email,
    parse_subdomain,
    parse_token,
    print_json,
    print_table,
)
from prebookd.db import admin_store
from prebookd.errors import UsageError
from prebookd.settings import Settings
from prebookd.text import one_line

_CLASSES_HEADERS = ("TIME", "CLASS", "SESSION ID", "BOOKED", "WAITING", "YOU")


def add_account_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    login = commands.add_parser(
        "login",
        help="log a member in and store their background session",
        description="Log in to AimHarder as a member and store the session as their "
        "`background` session in auth_sessions (what the daemon books with). The password "
        "is asked without echo, or read from stdin when stdin is not a terminal; it is "
        "sent once, never retried (repeated failures lock the account) and never stored.",
    )
    login.add_argument("--email", required=True, help="the member's AimHarder e-mail")
    login.add_argument(
        "--box",
        metavar="SUBDOMAIN",
        help="the member must belong to this box (AimHarder's roles say so); also check "
        "that it accepts the session (lists today's classes)",
    )
    login.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    login.set_defaults(handler=_login)

    classes = commands.add_parser(
        "classes",
        help="list a day's classes at a box",
        description="List a day's classes at a box as a member sees them (with their "
        "background session): time, name, session id, places taken, waiting list, and "
        "whether the member is booked. With a booking window on the box, also when "
        "booking opens for each.",
    )
    classes.add_argument("--box", required=True, metavar="SUBDOMAIN", help="the box")
    classes.add_argument("--day", required=True, help="the day, YYYYMMDD")
    classes.add_argument("--email", required=True, help="whose session to list them with")
    classes.add_argument("--family-id", default="", help="family member id (default: none)")
    classes.add_argument("--json", action="store_true", help="print JSON")
    classes.set_defaults(handler=_classes)


@contextlib.asynccontextmanager
async def _http() -> AsyncIterator[aiohttp.ClientSession]:
    # No cookie jar: the member's cookies go in explicitly and come back through
    # prebookd.aimharder.account, never kept by aiohttp (shared/AIMHARDER.md, Session).
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        yield http


# --- login ---------------------------------------------------------------------------


async def _login(args: argparse.Namespace, settings: Settings) -> int:
    email = parse_email(args.email)
    subdomain = parse_subdomain(args.box) if args.box else None
    fingerprint = account.fingerprint_for(email)
    # The database first: a schema or box problem is told before a password is typed.
    async with database(settings) as conn:
        box = await known_box(conn, subdomain) if subdomain else None
        box_url = checked_box_url(box, settings.box_hosts) if box else None
        # Read on the loop's thread, blocking it (nothing else runs): in a worker thread,
        # Ctrl-C would leave getpass waiting with the terminal's echo off.
        password = _read_password(email, args.password_stdin)
        async with _http() as http:
            result = await account.login(http, settings.aimharder_url, email, password, fingerprint)
            del password  # nothing below needs it
            boxes = await admin_store.list_boxes(conn)
            if box is not None and result.roles is not None:
                _require_role(email, box, result.roles, boxes)
            # No setrefresh: the JSON login's cookies are the session (shared/AIMHARDER.md).
            created = await admin_store.store_background_session(
                conn,
                user_email=email,
                fingerprint=fingerprint,
                token=result.token,
                cookies=result.cookies,
            )
            print(
                f"logged in {email}: background session {'stored' if created else 'updated'} "
                f"(fingerprint {fingerprint[:12]}...)"
            )
            print(_describe_roles(email, result.roles, boxes))
            if box is not None and box_url is not None:
                await _check_box(http, box, box_url, email, result.cookies)
    return 0


def _role_matches(role: Role, box: admin_store.Box) -> bool:
    if role.box_id == (box.box_id or "").strip():
        return True
    own = (box.base_url or f"https://{box.subdomain}.aimharder.com").rstrip("/").lower()
    return bool(role.centre_url) and role.centre_url.rstrip("/").lower() == own


def _require_role(
    email: str, box: admin_store.Box, roles: Sequence[Role], boxes: Sequence[admin_store.Box]
) -> None:
    """Refuse a --box the member has no role at: their bookings there would all fail."""
    if not any(_role_matches(role, box) for role in roles):
        raise UsageError(
            f"{email} does not belong to box {box.subdomain} (box id {box.box_id}): "
            f"{_describe_roles(email, roles, boxes)}; nothing was stored"
        )


def _describe_roles(
    email: str, roles: Sequence[Role] | None, boxes: Sequence[admin_store.Box]
) -> str:
    if roles is None:
        return f"AimHarder did not say which boxes {email} belongs to"
    named = []
    for role in roles:
        known = [b.subdomain for b in boxes if _role_matches(role, b)]
        where = known[0] if known else f"{role.centre_url or 'a box'} (not added)"
        named.append(f"{one_line(where, 120)} (box id {role.box_id})")
    return f"AimHarder says {email} belongs to: {', '.join(named)}"


def _read_password(email: str, from_stdin: bool) -> str:
    if from_stdin or not sys.stdin.isatty():
        # One line: `printf '%s\n' "$PW" | prebookd login ...` or a here-string.
        password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    else:
        password = getpass.getpass(f"AimHarder password for {email}: ")
    if not password:
        raise UsageError("empty password: nothing was sent to AimHarder")
    return password


async def _check_box(
    http: aiohttp.ClientSession,
    box: admin_store.Box,
    box_url: str,
    email: str,
    cookies: account.Cookies,
) -> None:
    """List today's classes at the box with the new session: proof the box accepts it."""
    today = datetime.now(UTC).astimezone(box_zone(box)).date()
    try:
        listed = await list_classes(
            http, box_url, box.box_id or "", timeparse.format_day(today), cookies
        )
    except SessionExpired:
        raise account.AccountError(
            f"the session was stored, but box {box.subdomain} answered logout to it: "
            f"AimHarder may not accept it there yet; try `prebookd classes --box "
            f"{box.subdomain} --email {email}` in a minute"
        ) from None
    print(f"box {box.subdomain} accepts the session: {len(listed)} classes today")


# --- classes -------------------------------------------------------------------------


async def _classes(args: argparse.Namespace, settings: Settings) -> int:
    email = parse_email(args.email)
    subdomain = parse_subdomain(args.box)
    day = timeparse.parse_day(args.day)
    family_id = parse_token("family id", args.family_id) if args.family_id.strip() else ""
    async with database(settings) as conn:
        box = await known_box(conn, subdomain)
        zone = box_zone(box)
        listed = await _list_for(settings, conn, box, email, day, family_id)
    window = timeparse.window_from_columns(box.booking_window_kind, box.booking_window_length)
    opens = {c.session_id: _opening_or_none(c, day, zone, window) for c in listed}
    if args.json:
        print_json([_class_json(c, opens[c.session_id]) for c in listed])
    elif not listed:
        print(f"no classes at {subdomain} on {timeparse.format_day(day)}")
    else:
        headers: Sequence[str] = _CLASSES_HEADERS
        rows: list[tuple[object, ...]] = [_class_row(c) for c in listed]
        if window is not None:
            headers = (*headers, f"OPENS ({zone.key})")
            rows = [
                (*row, _format_opening(opens[c.session_id], zone))
                for row, c in zip(rows, listed, strict=True)
            ]
        print_table(headers, rows)
    return 0


async def _list_for(
    settings: Settings,
    conn: asyncpg.Connection,
    box: admin_store.Box,
    email: str,
    day: date,
    family_id: str,
) -> list[ClassInfo]:
    """The day's classes as `email` sees them, with their stored background session."""
    box_url = checked_box_url(box, settings.box_hosts)
    session = await admin_store.find_background_session(conn, email)
    if session is None or not session.aimharder_cookies:
        raise UsageError(
            f"{email} has no background session: run `prebookd login --email {email}` first"
        )
    cookies = session.aimharder_cookies
    if not isinstance(cookies, list):
        raise UsageError(f"{email}'s background session cookies are malformed: log in again")
    async with _http() as http:
        try:
            return await list_classes(
                http, box_url, box.box_id or "", timeparse.format_day(day), cookies, family_id
            )
        except SessionExpired:
            raise SessionExpired(
                f"{email}'s background session is dead (AimHarder answered logout): run "
                f"`prebookd login --email {email}`"
            ) from None


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
    listed = await _list_for(settings, conn, box, email, day, family_id)
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
    message = await admin_store.last_window_message(conn, box.id)
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
