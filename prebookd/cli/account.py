"""`prebookd login`: the command that talks to AimHarder's account site as a member
(`prebookd classes`, which lists a box's classes as one, is in `prebookd.cli.classes`).

`login` is the one place a password passes through prebookd: it is read without echo
(or from stdin), sent once in the login request and dropped; it is never stored,
logged, or put in a message. What is stored is the session AimHarder hands back, as
the member's `background` row in `auth_sessions`, which the daemon books with.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Sequence
from datetime import UTC, datetime

import aiohttp

from prebookd import timeparse
from prebookd.aimharder import account
from prebookd.aimharder.account import Role, SessionExpired
from prebookd.aimharder.classes import list_classes
from prebookd.cli.classes import add_classes_parser
from prebookd.cli.common import (
    box_zone,
    checked_box_url,
    database,
    known_box,
    member_http,
    parse_email,
    parse_subdomain,
)
from prebookd.db import admin_store
from prebookd.errors import UsageError
from prebookd.settings import Settings
from prebookd.text import one_line

EPILOG = """\
The session is stored as the member's `background` row in auth_sessions (updated if
there is one): the daemon books with it and keeps it fresh; `prebookd classes` and
`prebookd add --class` list classes with it.

examples:
  prebookd login --email jane@example.com --box crossfitnorte     # asks the password
  printf '%s\\n' "$PASSWORD" | prebookd login --email jane@example.com --password-stdin
"""


def add_account_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    login = commands.add_parser(
        "login",
        help="log a member in and store their background session",
        description="Log in to AimHarder as a member and store the session as their "
        "`background` session in auth_sessions (what the daemon books with). The password "
        "is asked without echo, or read from stdin when stdin is not a terminal; it is "
        "sent once, never retried (repeated failures lock the account) and never stored.",
        epilog=EPILOG,
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

    add_classes_parser(commands)


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
        async with member_http(settings.proxy) as http:
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
