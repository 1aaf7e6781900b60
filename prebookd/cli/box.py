"""The `box` commands: `box add`, `box set`, `box set-window`, `box remove` and
`box list`, the boxes (gyms) prebookings are made at, with the time zone and booking
window `prebookd add` works out opening instants from, and the cancellation cutoff
the freed-places watch stops at (`box set --cancel-cutoff`).

Like the other producer-side commands, each validates everything before it writes
anything; the SQL lives in `prebookd.db.admin_store`.
"""

from __future__ import annotations

import argparse
import sys

import asyncpg

from prebookd import timeparse
from prebookd.cli.box_view import box_list, cutoff_code, proxy_shown, window_code
from prebookd.cli.common import (
    database,
    parse_base_url,
    parse_box_id,
    parse_subdomain,
    parse_window,
)
from prebookd.db import admin_store
from prebookd.errors import UsageError
from prebookd.proxies import parse_proxy_url
from prebookd.settings import Settings

DEFAULT_TIMEZONE = "Europe/Madrid"
_WINDOW_HELP = (
    f"when the box opens booking for a class: {timeparse.WINDOW_FORMS}. Not given: the "
    "box has no window, and `prebookd add` needs --at for its classes until one is set "
    "with `prebookd box set SUBDOMAIN --window`"
)

ADD_EPILOG = """\
examples:
  prebookd box add --subdomain crossfitnorte --box-id 1234 --name "CrossFit Norte" --window 4d
  prebookd box add --subdomain crossfitsur --box-id 5678 --name "CrossFit Sur" \\
      --timezone Atlantic/Canary --window 72h
  prebookd box add --subdomain test --box-id 1 --name Test --base-url http://127.0.0.1:8099/test
"""
SET_EPILOG = """\
Rows already added keep their opening instant: a new time zone or window counts for the
`prebookd add`s after it (the command says how many rows still to fire keep theirs). A
new base URL or box id counts for every row not yet sent.

examples:
  prebookd box set crossfitnorte --window 72h --cancel-cutoff 2h
  prebookd box set crossfitnorte --timezone Europe/Lisbon --name "CrossFit Norte (Porto)"
  prebookd box set crossfitnorte --window none --proxy socks5://user:password@203.0.113.7:1080
"""
SET_WINDOW_EPILOG = """\
examples:
  prebookd box set-window crossfitnorte 4d
  prebookd box set-window crossfitnorte same-day
"""
REMOVE_EPILOG = """\
A box with prebookings not final yet (pending, loaded or executing) is not removed:
cancel them first (`prebookd list --box SUBDOMAIN`, `prebookd cancel ID`). Its finished
rows (completed, failed, cancelled) are its history: the prebookings table points at the
box, so they go with it, and only when --with-history says so. Members' background
sessions stay: they belong to the member's AimHarder account, not to a box.

examples:
  prebookd box remove crossfitsur
  prebookd box remove crossfitsur --with-history
"""
LIST_EPILOG = """\
examples:
  prebookd box list
  prebookd box list --json | jq -r '.[].subdomain'
"""


_CUTOFF_HELP = (
    "how long before a class members may no longer cancel: a freed place is watched for "
    f"until then ({timeparse.CUTOFF_FORMS}); none: PREBOOKD_WATCH_CUTOFF"
)
_PROXY_HELP = (
    "this box's own proxy for every request to it, http://, https:// or "
    "socks5://[user:password@]host:port; none: PREBOOKD_PROXY_URL (or direct)"
)


def add_box_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    box = commands.add_parser(
        "box",
        help="add, change, remove or list boxes (gyms)",
        description="The boxes (gyms) prebookings are made at.",
        epilog="examples:\n  prebookd box add --help\n  prebookd box list\n",
    )
    actions = box.add_subparsers(dest="box_command", metavar="ACTION", required=True)
    add = actions.add_parser(
        "add",
        help="add a box",
        description="Add a box: its AimHarder subdomain and box id, the IANA time zone "
        "its classes' times are in, and when it opens booking.",
        epilog=ADD_EPILOG,
    )
    add.add_argument("--subdomain", required=True, help="as in https://SUBDOMAIN.aimharder.com")
    add.add_argument(
        "--box-id", required=True, help="AimHarder's box id, a number (the `box=` parameter)"
    )
    add.add_argument("--name", required=True, help="display name")
    add.add_argument(
        "--base-url",
        help="default: https://SUBDOMAIN.aimharder.com; another must be https on a host "
        "PREBOOKD_BOX_HOSTS allows",
    )
    add.add_argument(
        "--timezone", default=DEFAULT_TIMEZONE, help=f"IANA zone (default: {DEFAULT_TIMEZONE})"
    )
    add.add_argument("--window", help=_WINDOW_HELP)
    add.add_argument("--cancel-cutoff", help=_CUTOFF_HELP)
    add.add_argument("--proxy", metavar="URL", help=_PROXY_HELP)
    add.set_defaults(handler=_box_add)

    change = actions.add_parser(
        "set",
        help="change a box",
        description="Change a box's name, base URL, time zone, box id, booking window or "
        "cancellation cutoff or proxy, with the checks of `box add`. What is not given "
        "stays as it is.",
        epilog=SET_EPILOG,
    )
    change.add_argument("subdomain", metavar="SUBDOMAIN")
    change.add_argument("--name", help="display name")
    change.add_argument("--base-url", help="as for `box add`")
    change.add_argument("--timezone", help="IANA zone")
    change.add_argument("--box-id", help="AimHarder's box id, a number")
    change.add_argument(
        "--window", help=f"{timeparse.WINDOW_FORMS}, or none (then `prebookd add` needs --at)"
    )
    change.add_argument("--cancel-cutoff", help=_CUTOFF_HELP)
    change.add_argument("--proxy", metavar="URL", help=_PROXY_HELP)
    change.set_defaults(handler=_box_set)

    window = actions.add_parser(
        "set-window",
        help="set when a box opens booking (as `box set --window`)",
        description="Set when a box opens booking for a class, so `prebookd add` can work "
        f"out the opening instant: {timeparse.WINDOW_FORMS}; `none` clears it.",
        epilog=SET_WINDOW_EPILOG,
    )
    window.add_argument("subdomain", metavar="SUBDOMAIN")
    window.add_argument("window", metavar="WINDOW", help="4d, 72h, same-day or none")
    window.set_defaults(handler=_box_set_window)

    remove = actions.add_parser(
        "remove",
        help="remove a box with nothing left to fire",
        description="Remove a box.",
        epilog=REMOVE_EPILOG,
    )
    remove.add_argument("subdomain", metavar="SUBDOMAIN")
    remove.add_argument(
        "--with-history",
        action="store_true",
        help="also delete the box's finished prebookings (completed, failed, cancelled)",
    )
    remove.set_defaults(handler=_box_remove)

    listing = actions.add_parser(
        "list", help="list boxes", description="List the boxes.", epilog=LIST_EPILOG
    )
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=box_list)


# --- box add -------------------------------------------------------------------------


async def _box_add(args: argparse.Namespace, settings: Settings) -> int:
    subdomain = parse_subdomain(args.subdomain)
    box_id = parse_box_id(args.box_id)
    name = _parse_name(args.name)
    base_url = parse_base_url(
        args.base_url or f"https://{subdomain}.aimharder.com", subdomain, settings.box_hosts
    )
    zone = timeparse.parse_zone(args.timezone)
    window = parse_window(args.window) if args.window else None
    cutoff = _parse_cutoff(args.cancel_cutoff)
    proxy = _parse_proxy(args.proxy) if args.proxy is not None else None
    async with database(settings) as conn, conn.transaction():
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
        if cutoff is not None:
            box = await admin_store.update_box(
                conn, box.id, name=None, base_url=None, timezone=None, box_id=None,
                set_window=False, window_kind=None, window_length=None,
                set_cutoff=True, cutoff=cutoff,
            )  # fmt: skip
        if proxy is not None:
            box = await admin_store.set_box_proxy(conn, box.id, proxy)
    opens = f", booking opens {window.describe()}" if window else ""
    extra = "".join(
        f", {what} {shown}"
        for what, shown, given in (
            ("cancel cutoff", cutoff_code(box), cutoff is not None),
            ("proxy", proxy_shown(box), proxy is not None),
        )
        if given
    )
    print(
        f"added box {box.subdomain} ({box.id}): {box.name}, {box.base_url}, {box.timezone}"
        f"{opens}{extra}"
    )
    return 0


def _parse_cutoff(text: str | None) -> int | None:
    """--cancel-cutoff of `box add`: seconds, or None (none given, or none)."""
    if text is None or text.strip().lower() == "none":
        return None
    return timeparse.parse_cutoff(text)


def _parse_name(text: str) -> str:
    name = " ".join(text.split())
    if not name:
        raise UsageError("the box name must not be empty")
    return name


def _describe_conflict(taken: admin_store.Box, subdomain: str, box_id: str) -> str:
    what = f"subdomain {subdomain!r}" if taken.subdomain == subdomain else f"box id {box_id!r}"
    return f"a box with {what} exists already: {taken.subdomain} ({taken.name})"


# --- box set / box set-window --------------------------------------------------------


async def _box_set(args: argparse.Namespace, settings: Settings) -> int:
    subdomain = parse_subdomain(args.subdomain)
    given = [args.name, args.base_url, args.timezone, args.box_id, args.window]
    if all(value is None for value in [*given, args.cancel_cutoff, args.proxy]):
        raise UsageError(
            "nothing to change: give --name, --base-url, --timezone, --box-id, --window, "
            "--cancel-cutoff or --proxy"
        )
    proxy = _parse_proxy(args.proxy) if args.proxy is not None else None
    name = _parse_name(args.name) if args.name is not None else None
    base_url = (
        parse_base_url(args.base_url, subdomain, settings.box_hosts)
        if args.base_url is not None
        else None
    )
    timezone = timeparse.parse_zone(args.timezone).key if args.timezone is not None else None
    box_id = parse_box_id(args.box_id) if args.box_id is not None else None
    clear_window = args.window is not None and args.window.strip().lower() == "none"
    window = parse_window(args.window) if args.window is not None and not clear_window else None
    cutoff = args.cancel_cutoff
    clear_cutoff = cutoff is not None and cutoff.strip().lower() == "none"
    seconds = timeparse.parse_cutoff(cutoff) if cutoff is not None and not clear_cutoff else None
    async with database(settings) as conn:
        before = await admin_store.find_box(conn, subdomain)
        if before is None:
            raise UsageError(f"unknown box {subdomain!r}: see `prebookd box list`")
        if box_id is not None:
            others = [b for b in await admin_store.find_boxes_like(conn, "", box_id)
                      if b.id != before.id]  # fmt: skip
            if others:
                raise UsageError(_describe_conflict(others[0], subdomain, box_id))
        try:
            after = await admin_store.update_box(
                conn,
                before.id,
                name=name,
                base_url=base_url,
                timezone=timezone,
                box_id=box_id,
                set_window=args.window is not None,
                window_kind=window.kind if window else None,
                window_length=window.length if window else None,
                set_cutoff=cutoff is not None,
                cutoff=seconds,
            )
        except asyncpg.UniqueViolationError:
            raise UsageError(f"a box with box id {box_id!r} exists already") from None
        if args.proxy is not None:
            after = await admin_store.set_box_proxy(conn, before.id, proxy)
        open_rows = sum((await admin_store.count_box_rows(conn, before.id))[0].values())
    changes = _changes(before, after)
    print(f"box {subdomain}: {', '.join(changes) if changes else 'nothing changed'}")
    moved = before.timezone != after.timezone or window_code(before) != window_code(after)
    if open_rows and moved:
        print(
            f"note: {open_rows} prebookings of {subdomain} still to fire keep the opening "
            f"instants they were added with: see `prebookd list --box {subdomain}`",
            file=sys.stderr,
        )
    return 0


def _changes(before: admin_store.Box, after: admin_store.Box) -> list[str]:
    shown = {
        "name": (before.name, after.name),
        "base URL": (before.base_url, after.base_url),
        "time zone": (before.timezone, after.timezone),
        "box id": (before.box_id, after.box_id),
        "window": (window_code(before) or "none", window_code(after) or "none"),
        "cancel cutoff": (cutoff_code(before), cutoff_code(after)),
        "proxy": (proxy_shown(before), proxy_shown(after)),
    }
    return [f"{what} {old} -> {new}" for what, (old, new) in shown.items() if old != new]


def _parse_proxy(text: str) -> str | None:
    """--proxy: a proxy URL, or none (or empty) for the global one."""
    if text.strip().lower() in ("", "none"):
        return None
    try:
        return parse_proxy_url(text)
    except ValueError as exc:
        raise UsageError(f"--proxy {exc}") from None  # never echoed: it may hold a password


async def _box_set_window(args: argparse.Namespace, settings: Settings) -> int:
    subdomain = parse_subdomain(args.subdomain)
    cleared = args.window.strip().lower() == "none"
    window = None if cleared else parse_window(args.window)
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


# --- box remove ----------------------------------------------------------------------


async def _box_remove(args: argparse.Namespace, settings: Settings) -> int:
    subdomain = parse_subdomain(args.subdomain)
    async with database(settings) as conn, conn.transaction():
        # The box's row locked: no prebooking can be added to it until this ends.
        box = await admin_store.lock_box(conn, subdomain)
        if box is None:
            raise UsageError(f"unknown box {subdomain!r}: see `prebookd box list`")
        still_to_fire, history = await admin_store.count_box_rows(conn, box.id)
        if still_to_fire:
            counted = ", ".join(f"{n} {status}" for status, n in sorted(still_to_fire.items()))
            raise UsageError(
                f"box {subdomain} has prebookings not final yet ({counted}): cancel them "
                f"first (`prebookd list --box {subdomain}`, `prebookd cancel ID`); "
                "nothing was removed"
            )
        if history and not args.with_history:
            raise UsageError(
                f"box {subdomain} has {history} finished prebookings (its history): give "
                "--with-history to delete them with the box; nothing was removed"
            )
        try:
            deleted = await admin_store.delete_box(conn, box.id)
        except asyncpg.ForeignKeyViolationError as exc:
            # A table of the web app's that prebookd does not know points at the box.
            raise UsageError(
                f"box {subdomain} is still referenced ({exc.constraint_name or exc}): "
                "nothing was removed"
            ) from None
    with_rows = f" and its {deleted} finished prebookings" if deleted else ""
    print(f"removed box {subdomain} ({box.name}){with_rows}; members' sessions are kept")
    return 0
