"""Producer-side commands, for users without the web app: `add`, `list`, `cancel`, and
the `box` commands from `prebookd.cli.box`.

Each command validates everything it was given before it writes anything, so a bad
argument is one line on stderr, exit code 2 and an untouched table. The SQL lives in
`prebookd.db.admin_prebookings`, the time arithmetic in `prebookd.timeparse`, the
argument checks and table printing in `prebookd.cli.common`.
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import UTC, datetime, timedelta

from prebookd import timeparse
from prebookd.cli import classes as classes_cli
from prebookd.cli.box import add_box_parsers
from prebookd.cli.common import (
    box_zone,
    database,
    known_box,
    parse_email,
    parse_subdomain,
    parse_token,
)
from prebookd.cli.listing import add_cancel_parser, add_list_parser
from prebookd.db import admin_prebookings, admin_store
from prebookd.errors import UsageError
from prebookd.settings import Settings

_SESSION_ID = re.compile(r"^\d{1,20}$")  # AimHarder's bookings[].id

ADD_EPILOG = """\
Which class: --class names it as `prebookd classes` lists it ('07:00 WOD', '07:00' or
'WOD' when that is unique), looked up in the day's listing with the member's background
session; --class-id gives AimHarder's session id instead.

When booking opens: --at gives the instant. Without it, the instant is worked out from
the box's booking window (`prebookd box set --window`) and the class's start: the start
comes from --class-time when given (then nothing is asked of AimHarder with --class-id),
else from the day's listing.

Prints the new row's id on stdout, and what was understood on stderr.

examples:
  prebookd add --email jane@example.com --box crossfitnorte --day +5d --class "07:00 WOD"
  prebookd add --email jane@example.com --box crossfitnorte --day 20301201 \\
      --class-id 106015104 --class-time 07:00
  prebookd add --email jane@example.com --box crossfitnorte --day 20301201 \\
      --class-id 106015104 --at "2030-11-27 07:00"
"""


def add_admin_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    add_box_parsers(commands)
    _add_add_parser(commands)
    add_list_parser(commands)
    add_cancel_parser(commands)


def _add_add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    add = commands.add_parser(
        "add",
        help="prebook a class for a member",
        description="Store a pending prebooking, as the web app would. --at is "
        f"{timeparse.INSTANT_FORMS}, or +30s, +5m, +2h from now. A local time that does "
        "not exist or happens twice on a daylight-saving change is refused: give an "
        "offset then.",
        epilog=ADD_EPILOG,
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
    add.add_argument(
        "--day", required=True, help="day of the class: YYYYMMDD, today, tomorrow or +N"
    )
    add.add_argument(
        "--at",
        metavar="INSTANT",
        help="when booking opens; default: worked out from the box's booking window and "
        "the class's start time",
    )
    add.add_argument(
        "--class-time",
        metavar="HH:MM",
        help="the class's start, in the box's time zone: with the box's window it gives the "
        "opening instant, without a lookup of the day's classes",
    )
    add.add_argument("--family-id", default="", help="family member id (default: none)")
    add.add_argument(
        "--watch",
        action="store_true",
        help="if the class is full at the instant, watch it and book a place that frees "
        "(until the class start minus PREBOOKD_WATCH_CUTOFF)",
    )
    add.set_defaults(handler=_add)


async def _add(args: argparse.Namespace, settings: Settings) -> int:
    email = parse_email(args.email)
    subdomain = parse_subdomain(args.box)
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
    now = datetime.now(UTC)
    async with database(settings) as conn:
        box = await known_box(conn, subdomain)
        zone = box_zone(box)
        day = classes_cli.box_day(args.day, zone)
        window = timeparse.window_from_columns(box.booking_window_kind, box.booking_window_length)
        if args.at is None and window is None:
            raise await classes_cli.missing_window_error(conn, box)
        label = f"{start:%H:%M}" if start else None
        if session_id is None or (args.at is None and start is None):
            # The class's id or start time comes from AimHarder's listing of the day.
            found = await classes_cli.resolve_class(
                settings, conn, box, email, day, args.class_name, session_id, family_id
            )
            session_id, start = found.session_id, start or timeparse.parse_clock(found.start)
            label = found.label
        derived = ""
        if args.at is not None:
            instant = timeparse.parse_instant(args.at, zone, now=now)
        else:
            assert window is not None and start is not None
            instant = timeparse.opening_instant(day, start, zone, window)
            derived = f" ({window.describe()}, class at {start:%H:%M})"
        timeparse.check_opening(
            instant, day=day, zone=zone, now=now, max_lead=timedelta(days=settings.max_lead_days)
        )
        # Exactly the four fields of the web app's booking_data (shared/AIMHARDER.md).
        booking_data = {
            "day": timeparse.format_day(day),
            "familyId": family_id,
            "id": session_id,
            "insist": 0,
        }
        new_id = await admin_prebookings.insert_prebooking(
            conn,
            user_email=email,
            box=box.id,
            booking_data=booking_data,
            available_at=instant,
            class_label=label,
            watch=args.watch,
        )
        has_session = await admin_store.has_background_session(conn, email)
    print(new_id)
    # What was understood goes to stderr: stdout stays just the id, for scripts.
    named = f"{label} ({session_id})" if label else session_id
    print(
        f"prebooked class {named} on {booking_data['day']} at {subdomain} for {email}; "
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
