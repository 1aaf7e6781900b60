"""What the producer-side command modules share: the database connection they work in,
the checks their arguments go through, and how they print.

Each check returns the value cleaned up (trimmed; lowercased where case means nothing)
or raises a `UsageError` that names the bad argument and what was expected.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import asyncpg

from prebookd import timeparse
from prebookd.db import admin_store
from prebookd.db.connection import connect, database_dsn
from prebookd.db.migrate import pending_migrations
from prebookd.errors import BadRow, DatabaseError, UsageError
from prebookd.models import box_base_url
from prebookd.settings import Settings

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_SUBDOMAIN = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")  # one DNS label
_TOKEN = re.compile(r"^\S{1,64}$")


# --- the database --------------------------------------------------------------------


@contextlib.asynccontextmanager
async def database(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
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


def parse_base_url(text: str, subdomain: str, allowed_hosts: Sequence[str]) -> str:
    """A box's base URL, if the daemon would send members' cookies there (as
    `models.box_base_url` decides at arming): a UsageError otherwise."""
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
    return timeparse.iso_utc(instant) if instant is not None else None


def print_json(value: object) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False, default=str))


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(headers)]
    for line in (list(headers), *cells):
        print("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())
