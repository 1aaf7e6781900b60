"""`prebookd list` and `prebookd cancel`: the prebookings as they stand, and taking
one back before it is sent.

`list` shows what is coming by default (rows not final, and rows whose opening instant
is still ahead), with the history on demand (`--all`, `--since`). `cancel` takes a
row's id or, as git takes a commit's, a unique prefix of it.
"""

from __future__ import annotations

import argparse
import re
import sys
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg

from prebookd import timeparse
from prebookd.cli.common import (
    SINCE_FORMS,
    database,
    iso_or_none,
    known_box,
    parse_since,
    parse_subdomain,
    print_json,
    print_table,
    whole_number,
)
from prebookd.db import admin_prebookings
from prebookd.db.admin_prebookings import PrebookingView
from prebookd.db.admin_store import FINAL_STATUSES
from prebookd.errors import UsageError
from prebookd.settings import Settings
from prebookd.text import clip

STATUSES = ("pending", "loaded", "executing", "completed", "failed", "cancelled")
DEFAULT_LIMIT = 100
MAX_LIMIT = 100_000
MIN_PREFIX = 4  # hex digits of an id `cancel` takes as a prefix
CANDIDATES_SHOWN = 5
_LIST_HEADERS = ("ID", "CLASS", "DAY", "MEMBER", "BOX", "OPENS (BOX TIME)", "OPENS (UTC)",
                 "STATUS", "OUTCOME / ERROR")  # fmt: skip
_HEX = re.compile(r"^[0-9a-f]+$")

LIST_EPILOG = f"""\
Rows are in firing order: by opening instant, then in the order they were made. By
default only what is coming: rows not final (pending, loaded, executing) and rows whose
instant is still ahead. --all adds the history (completed, failed, cancelled), --since
the history from WHEN on; a final --status looks in the history too. When more rows
match than --limit, the upcoming ones are kept first, then the latest history.

--since WHEN: {SINCE_FORMS}.

examples:
  prebookd list
  prebookd list --since 7d --box crossfitnorte
  prebookd list --all --json | jq '.[] | select(.status == "failed") | .error_message'
"""
CANCEL_EPILOG = f"""\
The id may be shortened to a prefix of at least {MIN_PREFIX} hex digits that only one row's id
starts with, as git takes a commit's. A row a daemon has begun to send (executing) or
that is final cannot be cancelled any more.

examples:
  prebookd cancel 3f0c1a2b-5d6e-4f70-8a9b-0c1d2e3f4a5b
  prebookd cancel 3f0c1a2b
"""


def add_list_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    listing = commands.add_parser(
        "list",
        help="list prebookings (upcoming; --all for the history)",
        description="List prebookings with their class, member, box and opening instant "
        "(in the box's time zone and in UTC), status and outcome.",
        epilog=LIST_EPILOG,
    )
    listing.add_argument("--status", choices=STATUSES, help="only rows with this status")
    listing.add_argument("--box", metavar="SUBDOMAIN", help="only this box's rows")
    listing.add_argument("--email", help="only this member's rows")
    listing.add_argument(
        "--rule", type=whole_number(1, 2**63 - 1), metavar="ID", help="only this rule's rows"
    )
    history = listing.add_mutually_exclusive_group()
    history.add_argument("--all", action="store_true", help="the history too: every row")
    history.add_argument(
        "--since", metavar="WHEN", help="the history too, from WHEN on (see below)"
    )
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.add_argument(
        "--limit",
        type=whole_number(1, MAX_LIMIT),
        default=DEFAULT_LIMIT,
        metavar="N",
        help=f"at most N rows (default {DEFAULT_LIMIT}, at most {MAX_LIMIT})",
    )
    listing.set_defaults(handler=_list)


def add_cancel_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cancel = commands.add_parser(
        "cancel",
        help="cancel a prebooking not yet sent",
        description="Set a pending or loaded prebooking to cancelled: no daemon sends it. "
        "Says which row it cancelled.",
        epilog=CANCEL_EPILOG,
    )
    cancel.add_argument("id", metavar="ID", help="the prebooking's id, or a unique prefix of it")
    cancel.set_defaults(handler=_cancel)


# --- list ----------------------------------------------------------------------------


async def _list(args: argparse.Namespace, settings: Settings) -> int:
    email = args.email.strip().lower() if args.email else None
    since = parse_since(args.since, datetime.now(UTC)) if args.since is not None else None
    everything = args.all or (args.status in FINAL_STATUSES and since is None)
    async with database(settings) as conn:
        box = await known_box(conn, parse_subdomain(args.box)) if args.box else None
        # One row more than asked tells whether the list was cut.
        rows = await admin_prebookings.list_prebookings(
            conn,
            status=args.status,
            box=box.id if box else None,
            user_email=email,
            since=since,
            everything=everything,
            limit=args.limit + 1,
            rule_id=args.rule,
        )
    shown = _without_the_cut(rows, args.limit)
    if args.json:
        print_json([_prebooking_json(row) for row in shown])
    elif not shown:
        print("no prebookings match" + ("" if everything else " (--all for the history)"))
    else:
        print_table(_LIST_HEADERS, [_prebooking_row(row) for row in shown])
    if len(rows) > args.limit:
        print(f"(more rows match than the {args.limit} shown: raise --limit)", file=sys.stderr)
    return 0


def _without_the_cut(rows: list[PrebookingView], limit: int) -> list[PrebookingView]:
    """The `limit` rows to show of `limit + 1`: the one left out is the row the query
    would have cut first (the oldest history, else the last upcoming row)."""
    if len(rows) <= limit:
        return rows
    history = [row for row in rows if not row.upcoming]
    dropped = history[0] if history else rows[-1]
    return [row for row in rows if row is not dropped]


def _prebooking_json(row: PrebookingView) -> dict[str, Any]:
    return {
        "id": str(row.id),
        "user_email": row.user_email,
        "box": row.box,
        "booking_data": row.booking_data,
        "class_label": row.class_label,
        "available_at": iso_or_none(row.available_at),
        "status": row.status,
        "outcome": row.outcome,
        "result": row.result,
        "error_message": row.error_message,
        "created_at": iso_or_none(row.created_at),
        "executed_at": iso_or_none(row.executed_at),
        "written_at": iso_or_none(row.written_at),
        "lateness_ms": row.lateness_ms,
        "attempts": row.attempts,
        "fired_by": row.fired_by,
        "send_note": row.send_note,
    }


def _prebooking_row(row: PrebookingView) -> tuple[object, ...]:
    local, utc = _opens(row)
    problem = " ".join(part for part in (row.outcome, row.error_message) if part)
    return (
        row.id,
        _class_of(row),
        _booking_field(row, "day"),
        row.user_email,
        row.box,
        local,
        utc,
        row.status,
        clip(problem, 60),
    )


def _booking_field(row: PrebookingView, name: str) -> str | None:
    data = row.booking_data if isinstance(row.booking_data, dict) else {}
    value = data.get(name)
    return None if value is None else clip(str(value), 24)


def _class_of(row: PrebookingView) -> str:
    """`07:00 WOD (106015104)`: the class as `add` knew it, and AimHarder's id for it."""
    session_id = _booking_field(row, "id") or "?"
    return f"{clip(row.class_label, 40)} ({session_id})" if row.class_label else session_id


def _opens(row: PrebookingView) -> tuple[str, str]:
    """When booking opens for the row: in its box's time zone, and in UTC."""
    instant = row.available_at
    if instant is None:
        return "", ""
    if instant.tzinfo is None:  # timestamptz 'infinity' or '-infinity'
        shown = iso_or_none(instant) or ""
        return shown, shown
    utc = timeparse.format_utc(instant)
    try:
        return timeparse.format_local(instant, timeparse.parse_zone(row.box_timezone)), utc
    except (UsageError, OverflowError):
        # A zone the web app stored but zoneinfo cannot read: UTC alone is still right.
        return f"? (zone {row.box_timezone!r})", utc


# --- cancel --------------------------------------------------------------------------


async def _cancel(args: argparse.Namespace, settings: Settings) -> int:
    prefix = _id_prefix(args.id)
    async with database(settings) as conn:
        row = await _find_one(conn, prefix, args.id)
        if not await admin_prebookings.cancel_prebooking(conn, row.id):
            exists, status = await admin_prebookings.prebooking_status(conn, row.id)
            if not exists:
                raise UsageError(f"prebooking {row.id} was deleted meanwhile: nothing to cancel")
            raise UsageError(
                f"prebooking {row.id} is {status or 'without status'}, not pending or "
                "loaded: it cannot be cancelled any more"
            )
    local, utc = _opens(row)
    print(
        f"cancelled {row.id}: {row.user_email}, class {_class_of(row)} on "
        f"{_booking_field(row, 'day')} at {row.box}; booking would have opened {local} "
        f"({row.box_timezone}) = {utc}"
    )
    return 0


def _id_prefix(text: str) -> str:
    """The hex digits of a whole id or of the start of one, dashes left out."""
    cleaned = text.strip().lower()
    digits = cleaned.replace("-", "")
    if not _HEX.match(digits) or len(digits) > 32:
        raise UsageError(
            f"malformed prebooking id {text!r}: expected a UUID, or the first {MIN_PREFIX} or "
            "more hex digits of one"
        )
    if len(digits) < MIN_PREFIX:
        raise UsageError(
            f"prebooking id prefix {text!r} is too short: give at least {MIN_PREFIX} hex digits"
        )
    return digits


async def _find_one(conn: asyncpg.Connection, prefix: str, typed: str) -> PrebookingView:
    count, found = await admin_prebookings.find_by_prefix(conn, prefix, CANDIDATES_SHOWN)
    if count == 0 and len(prefix) == 32:
        raise UsageError(f"unknown prebooking {uuid.UUID(prefix)}: see `prebookd list --all`")
    if count == 0:
        raise UsageError(
            f"no prebooking id starts with {typed.strip()!r}: see `prebookd list --all`"
        )
    if count > 1:
        shown = ", ".join(str(row.id) for row in found)
        more = ", ..." if count > len(found) else ""
        raise UsageError(
            f"prebooking id prefix {typed.strip()!r} is ambiguous: {count} prebookings "
            f"match ({shown}{more}); give more of the id"
        )
    return found[0]
