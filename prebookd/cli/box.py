"""The `box` commands: `box add`, `box list` and `box set-window`, the boxes (gyms)
prebookings are made at, with the time zone and booking window `prebookd add` works
out opening instants from.

Like the other producer-side commands, each validates everything before it writes
anything; the SQL lives in `prebookd.db.admin_store`.
"""

from __future__ import annotations

import argparse
from typing import Any

import asyncpg

from prebookd import timeparse
from prebookd.cli.common import (
    database,
    iso_or_none,
    parse_base_url,
    parse_subdomain,
    parse_token,
    print_json,
    print_table,
)
from prebookd.db import admin_store
from prebookd.errors import UsageError
from prebookd.settings import Settings

DEFAULT_TIMEZONE = "Europe/Madrid"


def add_box_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    add.add_argument(
        "--base-url",
        help="default: https://SUBDOMAIN.aimharder.com; another must be https on a host "
        "PREBOOKD_BOX_HOSTS allows",
    )
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


# --- box add / box set-window --------------------------------------------------------


async def _box_add(args: argparse.Namespace, settings: Settings) -> int:
    subdomain = parse_subdomain(args.subdomain)
    box_id = parse_token("box id", args.box_id)
    name = args.name.strip()
    if not name:
        raise UsageError("the box name must not be empty")
    base_url = parse_base_url(
        args.base_url or f"https://{subdomain}.aimharder.com", subdomain, settings.box_hosts
    )
    zone = timeparse.parse_zone(args.timezone)
    window = timeparse.parse_window(args.window) if args.window else None
    async with database(settings) as conn:
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
    subdomain = parse_subdomain(args.subdomain)
    cleared = args.window.strip().lower() == "none"
    window = None if cleared else timeparse.parse_window(args.window)
    async with database(settings) as conn:
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


# --- box list ------------------------------------------------------------------------


async def _box_list(args: argparse.Namespace, settings: Settings) -> int:
    async with database(settings) as conn:
        boxes = await admin_store.list_boxes(conn)
    if args.json:
        print_json([_box_json(box) for box in boxes])
    elif not boxes:
        print("no boxes: add one with `prebookd box add`")
    else:
        print_table(
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
        "created_at": iso_or_none(box.created_at),
    }


def _window_code(box: admin_store.Box) -> str:
    window = timeparse.window_from_columns(box.booking_window_kind, box.booking_window_length)
    return window.code if window else ""
