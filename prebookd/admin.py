"""Producer-side commands, for users without the web app: `box add|list`, `add`, `list`,
`cancel`.

Each command validates everything it was given before it writes anything, so a bad
argument is one line on stderr, a non-zero exit and an untouched table. The SQL lives
in `prebookd.admin_store`, the time arithmetic in `prebookd.timeparse`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import asyncpg

from prebookd import admin_store, timeparse
from prebookd.db import connect, database_dsn
from prebookd.errors import DatabaseError, UsageError
from prebookd.migrate import pending_migrations
from prebookd.settings import Settings

STATUSES = ("pending", "loaded", "executing", "completed", "failed", "cancelled")
DEFAULT_LIMIT = 100
DEFAULT_TIMEZONE = "Europe/Madrid"
_LIST_HEADERS = ("ID", "MEMBER", "BOX", "CLASS", "DAY", "OPENS (BOX TIME)", "OPENS (UTC)",
                 "STATUS", "OUTCOME / ERROR")  # fmt: skip

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_SUBDOMAIN = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")  # one DNS label
_TOKEN = re.compile(r"^\S{1,64}$")
_SESSION_ID = re.compile(r"^\d{1,20}$")  # AimHarder's bookings[].id


# --- parsers -------------------------------------------------------------------------


def add_admin_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    _add_box_parsers(commands)
    _add_add_parser(commands)
    _add_list_parser(commands)
    _add_cancel_parser(commands)


def _add_box_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    box = commands.add_parser(
        "box", help="add or list boxes (gyms)", description="Add or list boxes (gyms)."
    )
    actions = box.add_subparsers(dest="box_command", metavar="ACTION", required=True)
    add = actions.add_parser(
        "add",
        help="add a box",
        description="Add a box: its AimHarder subdomain and box id, and the IANA time zone "
        "its local opening times are given in.",
    )
    add.add_argument("--subdomain", required=True, help="as in https://SUBDOMAIN.aimharder.com")
    add.add_argument("--box-id", required=True, help="AimHarder's box id (the `box=` parameter)")
    add.add_argument("--name", required=True, help="display name")
    add.add_argument("--base-url", help="default: https://SUBDOMAIN.aimharder.com")
    add.add_argument(
        "--timezone", default=DEFAULT_TIMEZONE, help=f"IANA zone (default: {DEFAULT_TIMEZONE})"
    )
    add.add_argument("--window", help=f"when booking opens: {timeparse.WINDOW_FORMS}")
    add.set_defaults(handler=_box_add)
    window = actions.add_parser(
        "set-window",
        help="set when a box opens booking",
        description="Set when a box opens booking for a class, so `prebookd add` can work "
        f"out the opening instant: {timeparse.WINDOW_FORMS}; `none` clears it.",
    )
    window.add_argument("subdomain", metavar="SUBDOMAIN")
    window.add_argument("window", metavar="WINDOW", help="4d, 72h, same-day or none")
    window.set_defaults(handler=_box_set_window)
    listing = actions.add_parser("list", help="list boxes", description="List the boxes.")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=_box_list)


def _add_add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    add = commands.add_parser(
        "add",
        help="prebook a class for a member",
        description="Store a pending prebooking, as the web app would; prints its id. "
        f"--at is {timeparse.INSTANT_FORMS}. A local time that does not exist or happens "
        "twice on a daylight-saving change is refused: give an offset then.",
    )
    add.add_argument("--email", required=True, help="the member's AimHarder e-mail")
    add.add_argument("--box", required=True, metavar="SUBDOMAIN", help="the box's subdomain")
    which = add.add_mutually_exclusive_group(required=True)
    which.add_argument("--class-id", help="AimHarder session id (bookings[].id)")
    which.add_argument(
        "--class",
        dest="class_name",
        metavar="'HH:MM NAME'",
        help="the class as `prebookd classes` lists it, e.g. '07:00 WOD' (looked up with "
        "the member's background session)",
    )
    add.add_argument("--day", required=True, help="day of the class, YYYYMMDD")
    add.add_argument(
        "--at",
        metavar="INSTANT",
        help="when booking opens; default: worked out from the box's booking window and "
        "the class's start time",
    )
    add.add_argument("--class-time", metavar="HH:MM", help="the class's start (box time)")
    add.add_argument("--family-id", default="", help="family member id (default: none)")
    add.set_defaults(handler=_add)


def _add_list_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    listing = commands.add_parser(
        "list",
        help="list prebookings",
        description="List prebookings in firing order, opening instants in the box's "
        "time zone and in UTC.",
    )
    listing.add_argument("--status", choices=STATUSES, help="only rows with this status")
    listing.add_argument("--box", metavar="SUBDOMAIN", help="only this box's rows")
    listing.add_argument("--email", help="only this member's rows")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.add_argument(
        "--limit", type=int, default=DEFAULT_LIMIT, help=f"at most N rows (default {DEFAULT_LIMIT})"
    )
    listing.set_defaults(handler=_list)


def _add_cancel_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cancel = commands.add_parser(
        "cancel",
        help="cancel a prebooking not yet sent",
        description="Set a pending or loaded prebooking to cancelled: no daemon sends it.",
    )
    cancel.add_argument("id", metavar="ID", help="the prebooking's id (a UUID)")
    cancel.set_defaults(handler=_cancel)


# --- the database --------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _database(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    """A connection to a database whose schema is up to date, or a clear refusal."""
    async with database_dsn(settings) as dsn:
        conn = await connect(dsn)
        try:
            pending = await pending_migrations(conn)
            if pending:
                names = ", ".join(f"{m.version:04d}_{m.name}" for m in pending)
                raise UsageError(
                    f"the database schema is not up to date ({names} not applied): "
                    "run `prebookd migrate` first"
                )
            yield conn
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise DatabaseError(f"database error: {exc}") from exc
        finally:
            await conn.close()


# --- box add / box list --------------------------------------------------------------


async def _box_add(args: argparse.Namespace, settings: Settings) -> int:
    subdomain = _subdomain(args.subdomain)
    box_id = _token("box id", args.box_id)
    name = args.name.strip()
    if not name:
        raise UsageError("the box name must not be empty")
    base_url = _base_url(args.base_url or f"https://{subdomain}.aimharder.com")
    zone = timeparse.parse_zone(args.timezone)
    window = timeparse.parse_window(args.window) if args.window else None
    async with _database(settings) as conn:
        taken = await admin_store.find_boxes_like(conn, subdomain, box_id)
        if taken:
            raise UsageError(_describe_conflict(taken[0], subdomain, box_id))
        try:
            box = await admin_store.insert_box(
                conn,
                box_id=box_id,
                subdomain=subdomain,
                name=name,
                base_url=base_url,
                timezone=zone.key,
                window_kind=window.kind if window else None,
                window_length=window.length if window else None,
            )
        except asyncpg.UniqueViolationError:
            # Someone added the same box between the check and the insert.
            raise UsageError(
                f"a box with subdomain {subdomain!r} or box id {box_id!r} exists already"
            ) from None
    opens = f", booking opens {window.describe()}" if window else ""
    print(
        f"added box {box.subdomain} ({box.id}): {box.name}, {box.base_url}, {box.timezone}{opens}"
    )
    return 0


async def _box_set_window(args: argparse.Namespace, settings: Settings) -> int:
    subdomain = _subdomain(args.subdomain)
    cleared = args.window.strip().lower() == "none"
    window = None if cleared else timeparse.parse_window(args.window)
    async with _database(settings) as conn:
        box = await admin_store.set_box_window(
            conn, subdomain, window.kind if window else None, window.length if window else None
        )
    if box is None:
        raise UsageError(f"unknown box {subdomain!r}: see `prebookd box list`")
    if window is None:
        print(f"box {subdomain}: booking window cleared (`prebookd add` needs --at)")
    else:
        print(f"box {subdomain}: booking opens {window.describe()}")
    return 0


def _describe_conflict(taken: admin_store.Box, subdomain: str, box_id: str) -> str:
    what = f"subdomain {subdomain!r}" if taken.subdomain == subdomain else f"box id {box_id!r}"
    return f"a box with {what} exists already: {taken.subdomain} ({taken.name})"


async def _box_list(args: argparse.Namespace, settings: Settings) -> int:
    async with _database(settings) as conn:
        boxes = await admin_store.list_boxes(conn)
    if args.json:
        _print_json([_box_json(box) for box in boxes])
    elif not boxes:
        print("no boxes: add one with `prebookd box add`")
    else:
        _print_table(
            ("SUBDOMAIN", "BOX ID", "NAME", "TIME ZONE", "BASE URL", "ID", "WINDOW"),
            [
                (b.subdomain, b.box_id, b.name, b.timezone, b.base_url, b.id, _window_code(b))
                for b in boxes
            ],
        )
    return 0


def _box_json(box: admin_store.Box) -> dict[str, Any]:
    return {
        "id": str(box.id),
        "box_id": box.box_id,
        "subdomain": box.subdomain,
        "name": box.name,
        "base_url": box.base_url,
        "timezone": box.timezone,
        "booking_window": _window_code(box) or None,
        "created_at": _iso(box.created_at),
    }


def _window_code(box: admin_store.Box) -> str:
    window = timeparse.window_from_columns(box.booking_window_kind, box.booking_window_length)
    return window.code if window else ""


# --- add -----------------------------------------------------------------------------


async def _add(args: argparse.Namespace, settings: Settings) -> int:
    email = _email(args.email)
    subdomain = _subdomain(args.box)
    day = timeparse.parse_day(args.day)
    session_id = args.class_id.strip() if args.class_id is not None else None
    if session_id is not None and not _SESSION_ID.match(session_id):
        raise UsageError(
            f"malformed class id {args.class_id!r}: expected AimHarder's numeric "
            "session id (bookings[].id), e.g. 106015104"
        )
    start = timeparse.parse_clock(args.class_time) if args.class_time else None
    family_id = args.family_id.strip()
    if family_id:
        family_id = _token("family id", family_id)
    # Imported here: account_cli builds on this module's helpers.
    from prebookd import account_cli

    async with _database(settings) as conn:
        box = await _known_box(conn, subdomain)
        zone = _box_zone(box)
        window = timeparse.window_from_columns(box.booking_window_kind, box.booking_window_length)
        if args.at is None and window is None:
            raise await account_cli.missing_window_error(conn, box)
        if session_id is None or (args.at is None and start is None):
            # The class's id or start time comes from AimHarder's listing of the day.
            found = await account_cli.resolve_class(
                settings, conn, box, email, day, args.class_name, session_id, family_id
            )
            session_id, start = found.session_id, start or timeparse.parse_clock(found.start)
        derived = ""
        if args.at is not None:
            instant = timeparse.parse_instant(args.at, zone)
        else:
            assert window is not None and start is not None
            instant = timeparse.opening_instant(day, start, zone, window)
            derived = f" ({window.describe()}, class at {start:%H:%M})"
        timeparse.check_opening(
            instant,
            day=day,
            zone=zone,
            now=datetime.now(UTC),
            max_lead=timedelta(days=settings.max_lead_days),
        )
        # Exactly the four fields of the web app's booking_data (shared/AIMHARDER.md).
        booking_data = {
            "day": timeparse.format_day(day),
            "familyId": family_id,
            "id": session_id,
            "insist": 0,
        }
        new_id = await admin_store.insert_prebooking(
            conn, user_email=email, box=box.id, booking_data=booking_data, available_at=instant
        )
        has_session = await admin_store.has_background_session(conn, email)
    print(new_id)
    # What was understood goes to stderr: stdout stays just the id, for scripts.
    print(
        f"prebooked class {session_id} on {booking_data['day']} at {subdomain} for {email}; "
        f"booking opens {timeparse.format_local(instant, zone)} ({zone.key}) = "
        f"{timeparse.format_utc(instant)}{derived}",
        file=sys.stderr,
    )
    if not has_session:
        print(
            f"warning: {email} has no background session in auth_sessions yet; "
            "the booking fails unless one is stored before it opens",
            file=sys.stderr,
        )
    return 0


async def _known_box(conn: asyncpg.Connection, subdomain: str) -> admin_store.Box:
    box = await admin_store.find_box(conn, subdomain)
    if box is None:
        raise UsageError(f"unknown box {subdomain!r}: see `prebookd box list`")
    return box


def _box_zone(box: admin_store.Box) -> ZoneInfo:
    try:
        return timeparse.parse_zone(box.timezone)
    except UsageError as exc:
        raise UsageError(f"box {box.subdomain!r}: {exc}; fix the boxes row") from None


# --- list ----------------------------------------------------------------------------


async def _list(args: argparse.Namespace, settings: Settings) -> int:
    if args.limit < 1:
        raise UsageError(f"--limit must be at least 1, not {args.limit}")
    email = args.email.strip().lower() if args.email else None
    async with _database(settings) as conn:
        box = await _known_box(conn, _subdomain(args.box)) if args.box else None
        # One row more than asked tells whether the list was cut.
        rows = await admin_store.list_prebookings(
            conn,
            status=args.status,
            box=box.id if box else None,
            user_email=email,
            limit=args.limit + 1,
        )
    shown = rows[: args.limit]
    if args.json:
        _print_json([_prebooking_json(row) for row in shown])
    elif not shown:
        print("no prebookings match")
    else:
        _print_table(_LIST_HEADERS, [_prebooking_row(row) for row in shown])
    if len(rows) > args.limit:
        print(f"(more rows match than the {args.limit} shown: raise --limit)", file=sys.stderr)
    return 0


def _prebooking_json(row: admin_store.PrebookingView) -> dict[str, Any]:
    return {
        "id": str(row.id),
        "user_email": row.user_email,
        "box": row.box,
        "booking_data": row.booking_data,
        "available_at": _iso(row.available_at),
        "status": row.status,
        "result": row.result,
        "error_message": row.error_message,
        "created_at": _iso(row.created_at),
        "executed_at": _iso(row.executed_at),
        "lateness_ms": row.lateness_ms,
        "outcome": row.outcome,
    }


def _prebooking_row(row: admin_store.PrebookingView) -> tuple[object, ...]:
    data = row.booking_data if isinstance(row.booking_data, dict) else {}
    local = utc = ""
    if row.available_at is not None:
        utc = timeparse.format_utc(row.available_at)
        try:
            local = timeparse.format_local(row.available_at, timeparse.parse_zone(row.box_timezone))
        except UsageError:
            # A zone the web app stored but zoneinfo cannot read: UTC alone is still right.
            local = f"? (zone {row.box_timezone!r})"
    problem = " ".join(part for part in (row.outcome, row.error_message) if part)
    return (
        row.id,
        row.user_email,
        row.box,
        data.get("id"),
        data.get("day"),
        local,
        utc,
        row.status,
        _shorten(problem, 60),
    )


# --- cancel --------------------------------------------------------------------------


async def _cancel(args: argparse.Namespace, settings: Settings) -> int:
    try:
        prebooking_id = uuid.UUID(args.id.strip())
    except ValueError:
        raise UsageError(f"malformed prebooking id {args.id!r}: expected a UUID") from None
    async with _database(settings) as conn:
        if not await admin_store.cancel_prebooking(conn, prebooking_id):
            exists, status = await admin_store.prebooking_status(conn, prebooking_id)
            if not exists:
                raise UsageError(f"unknown prebooking {prebooking_id}: see `prebookd list`")
            raise UsageError(
                f"prebooking {prebooking_id} is {status or 'without status'}, not pending or "
                "loaded: it cannot be cancelled any more"
            )
    print(f"cancelled {prebooking_id}")
    return 0


# --- input checks and output ---------------------------------------------------------


def _email(text: str) -> str:
    email = text.strip().lower()
    if not _EMAIL.match(email):
        raise UsageError(f"malformed e-mail {text!r}")
    return email


def _subdomain(text: str) -> str:
    subdomain = text.strip().lower()
    if not _SUBDOMAIN.match(subdomain):
        raise UsageError(
            f"malformed subdomain {text!r}: expected one DNS label (letters, digits, '-')"
        )
    return subdomain


def _token(what: str, text: str) -> str:
    token = text.strip()
    if not _TOKEN.match(token):
        raise UsageError(f"malformed {what} {text!r}: expected 1 to 64 characters, no spaces")
    return token


def _base_url(text: str) -> str:
    parts = urlsplit(text.strip())
    try:
        parts.port  # noqa: B018 - raises on a non-numeric port
    except ValueError:
        raise UsageError(f"malformed base URL {text!r}: the port is not a number") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"malformed base URL {text!r}: expected http(s)://host[:port]")
    return text.strip().rstrip("/")


def _iso(instant: datetime | None) -> str | None:
    return timeparse.iso_utc(instant) if instant is not None else None


def _print_json(value: object) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False, default=str))


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(headers)]
    for line in (list(headers), *cells):
        print("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())
