"""What the producer-side command modules share: the database connection they work in,
the checks their arguments go through, and how they print.

Each check returns the value cleaned up (trimmed; lowercased where case means nothing)
or raises a `UsageError` that names the bad argument and what was expected. Numbers
are bounded here, before they reach Postgres: `nan`, `inf`, a fraction or a number
out of range is refused, and said to be so.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, time, timedelta
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import aiohttp
import asyncpg

from prebookd import timeparse
from prebookd.aimharder.proxy import proxied_session
from prebookd.db import admin_store
from prebookd.db.connection import connect, database_dsn
from prebookd.db.migrate import pending_migrations
from prebookd.errors import BadRow, DatabaseError, UsageError
from prebookd.hosts import box_base_url
from prebookd.settings import Settings

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_SUBDOMAIN = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")  # one DNS label
_TOKEN = re.compile(r"^\S{1,64}$")
_WHOLE = re.compile(r"^[+-]?\d+$")
_NOT_A_NUMBER = re.compile(r"^[+-]?(nan|inf|infinity)\b", re.IGNORECASE)
_WINDOW_NUMBER = re.compile(r"^([+-]?\d+)\s*(d|days?|h|hours?)$", re.IGNORECASE)
_AGO = re.compile(r"^([+-]?\d+)\s*(d|days?|h|hours?|m|min|minutes?)$", re.IGNORECASE)

MAX_BOX_ID = 2**31 - 1  # AimHarder's box ids are integers (`boid` in its answers)
MAX_SINCE = timedelta(days=3650)
SINCE_FORMS = (
    "7d, 12h or 30m (that long ago), a day (2030-12-01: 00:00 UTC) or an ISO 8601 "
    "instant (2030-12-01T07:00:00+01:00; without an offset, UTC)"
)


# --- the database --------------------------------------------------------------------


@contextlib.asynccontextmanager
async def database(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    """A connection to a database whose schema is up to date, or a clear refusal."""
    async with database_dsn(settings, quiet=True) as dsn:
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


async def known_box(conn: asyncpg.Connection, subdomain: str) -> admin_store.Box:
    box = await admin_store.find_box(conn, subdomain)
    if box is None:
        raise UsageError(f"unknown box {subdomain!r}: see `prebookd box list`")
    return box


def box_zone(box: admin_store.Box) -> ZoneInfo:
    try:
        return timeparse.parse_zone(box.timezone)
    except UsageError as exc:
        raise UsageError(f"box {box.subdomain!r}: {exc}; fix the boxes row") from None


@contextlib.asynccontextmanager
async def member_http(proxy_url: str | None) -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP session for requests made as a member (login, class listings), through
    `proxy_url` (PREBOOKD_PROXY_URL; None: direct)."""
    # No cookie jar: the member's cookies go in explicitly and come back through
    # prebookd.aimharder.account, never kept by aiohttp (shared/AIMHARDER.md, Session).
    async with proxied_session(proxy_url, cookie_jar=aiohttp.DummyCookieJar()) as http:
        yield http


# --- input checks --------------------------------------------------------------------


def parse_email(text: str) -> str:
    email = text.strip().lower()
    if not _EMAIL.match(email):
        raise UsageError(f"malformed e-mail {text!r}")
    return email


def parse_subdomain(text: str) -> str:
    subdomain = text.strip().lower()
    if not _SUBDOMAIN.match(subdomain):
        raise UsageError(
            f"malformed subdomain {text!r}: expected one DNS label (letters, digits, '-')"
        )
    return subdomain


def parse_token(what: str, text: str) -> str:
    token = text.strip()
    if not _TOKEN.match(token):
        raise UsageError(f"malformed {what} {text!r}: expected 1 to 64 characters, no spaces")
    return token


def parse_whole_number(text: str, low: int, high: int, what: str = "") -> int:
    """A whole number from `low` to `high`; `what` names it in the error."""
    cleaned = text.strip()
    subject = f"{what} {text!r}" if what else repr(text)
    expected = f"expected a whole number from {low} to {high}"
    if _NOT_A_NUMBER.match(cleaned):
        raise UsageError(f"{subject} is not a number: {expected}")
    if not _WHOLE.match(cleaned):
        raise UsageError(f"{subject} is not a whole number: {expected}")
    # Compared as text first: int() of thousands of digits is refused by Python itself.
    if len(cleaned.lstrip("+-").lstrip("0")) > len(str(high)) or not low <= int(cleaned) <= high:
        raise UsageError(f"{subject} is out of range: {expected}")
    return int(cleaned)


def whole_number(low: int, high: int) -> Callable[[str], int]:
    """`parse_whole_number` as an argparse `type=`: a usage error before anything runs."""

    def parse(text: str) -> int:
        try:
            return parse_whole_number(text, low, high)
        except UsageError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def parse_box_id(text: str) -> str:
    """AimHarder's box id (the `box=` of its URLs), as the text stored in boxes.box_id."""
    return str(parse_whole_number(text, 1, MAX_BOX_ID, what="box id"))


def parse_window(text: str) -> timeparse.BookingWindow:
    """A booking window as `timeparse.parse_window` reads it, with a number out of its
    range (`-1d`, `99999d`) said to be out of range and `nan`/`inf` not a number."""
    cleaned = text.strip().lower()
    if _NOT_A_NUMBER.match(cleaned):
        raise UsageError(
            f"booking window {text!r} is not a number: expected {timeparse.WINDOW_FORMS}"
        )
    match = _WINDOW_NUMBER.match(cleaned)
    if match and cleaned != "0d":  # 0d: same-day
        kind = "days" if match[2].startswith("d") else "hours"
        limit = timeparse.MAX_WINDOW_DAYS if kind == "days" else timeparse.MAX_WINDOW_HOURS
        try:
            length = parse_whole_number(match[1], 1, limit)
        except UsageError:
            raise UsageError(
                f"booking window {text!r} is out of range: 1 to {limit} {kind}"
            ) from None
        return timeparse.BookingWindow(kind, length)
    return timeparse.parse_window(text)


def parse_since(text: str, now: datetime) -> datetime:
    """`list --since`: how long ago (7d, 12h, 30m), a day (00:00 UTC) or an instant."""
    cleaned = text.strip().lower()
    if _NOT_A_NUMBER.match(cleaned):
        raise UsageError(f"--since {text!r} is not a number: expected {SINCE_FORMS}")
    ago = _AGO.match(cleaned)
    if ago:
        unit = {"d": timedelta(days=1), "h": timedelta(hours=1), "m": timedelta(minutes=1)}
        most = MAX_SINCE // unit[ago[2][0]]
        try:
            count = parse_whole_number(ago[1], 0, most)
        except UsageError:
            raise UsageError(
                f"--since {text!r} is out of range: 0 to {most}{ago[2][0]} ago"
            ) from None
        return now - count * unit[ago[2][0]]
    with contextlib.suppress(UsageError):
        return datetime.combine(timeparse.parse_day(cleaned), time(0), tzinfo=UTC)
    try:
        return timeparse.parse_instant(text, ZoneInfo("UTC"))
    except UsageError:
        raise UsageError(f"malformed --since {text!r}: expected {SINCE_FORMS}") from None


def parse_base_url(text: str, subdomain: str, allowed_hosts: Sequence[str]) -> str:
    """A box's base URL, if the daemon would send members' cookies there (as
    `hosts.box_base_url` decides at arming): a UsageError otherwise."""
    parts = urlsplit(text.strip())
    try:
        parts.port  # noqa: B018 - raises on a non-numeric port
    except ValueError:
        raise UsageError(f"malformed base URL {text!r}: the port is not a number") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"malformed base URL {text!r}: expected http(s)://host[:port]")
    try:
        return box_base_url(text.strip(), subdomain, allowed_hosts)
    except BadRow as exc:
        raise UsageError(f"{exc.reason} (members' cookies would go there)") from None


def checked_box_url(box: admin_store.Box, allowed_hosts: Sequence[str]) -> str:
    """Where a box's requests go, refused as the daemon refuses it: before any cookie
    of a member is sent to a host PREBOOKD_BOX_HOSTS does not allow."""
    try:
        return box_base_url(box.base_url, box.subdomain, allowed_hosts)
    except BadRow as exc:
        raise UsageError(f"box {box.subdomain}: {exc.reason}; fix the boxes row") from None


# --- output --------------------------------------------------------------------------


def iso_or_none(instant: datetime | None) -> str | None:
    if instant is None:
        return None
    if instant.tzinfo is None:
        # asyncpg reads timestamptz 'infinity' and '-infinity' as naive datetime.max/min.
        return "infinity" if instant.year > 1 else "-infinity"
    return timeparse.iso_utc(instant)


def print_json(value: object) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False, default=str))


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(headers)]
    for line in (list(headers), *cells):
        print("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())
