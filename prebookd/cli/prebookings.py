"""Producer-side commands, for users without the web app: `add`, `list`, `cancel`, and
the `box` commands from `prebookd.cli.box`.

Each command validates everything it was given before it writes anything, so a bad
argument is one line on stderr, a non-zero exit and an untouched table. The SQL lives
in `prebookd.db.admin_store`, the time arithmetic in `prebookd.timeparse`, the argument
checks and table printing in `prebookd.cli.common`.
"""

from __future__ import annotations

import argparse
import re
import sys
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from prebookd import timeparse
from prebookd.cli import account as account_cli
from prebookd.cli.box import add_box_parsers
from prebookd.cli.common import (
    box_zone,
    database,
    iso_or_none,
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
from prebookd.text import clip

STATUSES = ("pending", "loaded", "executing", "completed", "failed", "cancelled")
DEFAULT_LIMIT = 100
_LIST_HEADERS = ("ID", "MEMBER", "BOX", "CLASS", "DAY", "OPENS (BOX TIME)", "OPENS (UTC)",
                 "STATUS", "OUTCOME / ERROR")  # fmt: skip

_SESSION_ID = re.compile(r"^\d{1,20}$")  # AimHarder's bookings[].id


# --- parsers -------------------------------------------------------------------------


def add_admin_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    add_box_parsers(commands)
    _add_add_parser(commands)
    _add_list_parser(commands)
    _add_cancel_parser(commands)


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


# --- add -----------------------------------------------------------------------------


async def _add(args: argparse.Namespace, settings: Settings) -> int:
    email = parse_email(args.email)
    subdomain = parse_subdomain(args.box)
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
        family_id = parse_token("family id", family_id)
    async with database(settings) as conn:
        box = await known_box(conn, subdomain)
        zone = box_zone(box)
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


# --- list ----------------------------------------------------------------------------


async def _list(args: argparse.Namespace, settings: Settings) -> int:
    if args.limit < 1:
        raise UsageError(f"--limit must be at least 1, not {args.limit}")
    email = args.email.strip().lower() if args.email else None
    async with database(settings) as conn:
        box = await known_box(conn, parse_subdomain(args.box)) if args.box else None
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
        print_json([_prebooking_json(row) for row in shown])
    elif not shown:
        print("no prebookings match")
    else:
        print_table(_LIST_HEADERS, [_prebooking_row(row) for row in shown])
    if len(rows) > args.limit:
        print(f"(more rows match than the {args.limit} shown: raise --limit)", file=sys.stderr)
    return 0


def _prebooking_json(row: admin_store.PrebookingView) -> dict[str, Any]:
    return {
        "id": str(row.id),
        "user_email": row.user_email,
        "box": row.box,
        "booking_data": row.booking_data,
        "available_at": iso_or_none(row.available_at),
        "status": row.status,
        "result": row.result,
        "error_message": row.error_message,
        "created_at": iso_or_none(row.created_at),
        "executed_at": iso_or_none(row.executed_at),
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
        clip(problem, 60),
    )


# --- cancel --------------------------------------------------------------------------


async def _cancel(args: argparse.Namespace, settings: Settings) -> int:
    try:
        prebooking_id = uuid.UUID(args.id.strip())
    except ValueError:
        raise UsageError(f"malformed prebooking id {args.id!r}: expected a UUID") from None
    async with database(settings) as conn:
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
