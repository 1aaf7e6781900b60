"""A (box, day) class listing read with a member's background session: what the planner
and the listing watch share.

The members are tried in the order given, one request each, until one's session reads
the listing: a session the box rejects (logout, 401, a redirect to the login page) is
noted and the next member tried; a listing that fails otherwise (5xx, 429, a timeout)
is not tried again with another session, since the box, not the member, is the trouble.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import aiohttp
import asyncpg

from prebookd import timeparse
from prebookd.aimharder.account import AccountError, SessionExpired
from prebookd.aimharder.classes import ClassInfo, list_classes
from prebookd.aimharder.proxy import ProxiedSessions
from prebookd.db import rules_store
from prebookd.errors import BadRow, describe
from prebookd.hosts import box_base_url
from prebookd.log import mask_email
from prebookd.proxies import box_proxy_url


@dataclass
class ListingRead:
    """What reading one (box, day) listing found."""

    classes: list[ClassInfo] | None = None  # None: not read
    reader: str | None = None  # the member whose session read it
    rejected: list[str] = field(default_factory=list)  # members whose session was refused
    failed: str | None = None  # the box or the network failed it (not a session): back off
    problems: list[str] = field(default_factory=list)  # each, one line for status
    requests: int = 0  # listing requests sent


async def read_listing(
    sessions: ProxiedSessions,
    pool: asyncpg.Pool,
    box: Mapping[str, Any],
    day: date,
    emails: Sequence[str],
    *,
    allowed_hosts: Sequence[str],
    wait_clear: Callable[[], Awaitable[None]],
) -> ListingRead:
    """`box` holds the boxes row's `subdomain`, `base_url`, `aimharder_box_id` and
    `proxy_url` (its own proxy, else `sessions`' default); `wait_clear` is awaited
    before each request."""
    read = ListingRead()
    where = f"{box['subdomain']} {timeparse.format_day(day)}"
    try:
        url = box_base_url(box["base_url"], box["subdomain"], allowed_hosts)
        http = sessions.get(box_proxy_url(box.get("proxy_url")))
    except BadRow as exc:
        read.failed = exc.reason
        read.problems.append(f"listing {where}: {exc.reason}")
        return read
    for email in emails:
        session = await rules_store.background_session(pool, email)
        cookies = session["aimharder_cookies"] if session else None
        if not isinstance(cookies, list) or not cookies:
            read.problems.append(f"listing {where}: {mask_email(email)} has no background session")
            continue
        await wait_clear()
        read.requests += 1
        try:
            read.classes = await list_classes(
                http, url, box["aimharder_box_id"] or "", timeparse.format_day(day), cookies
            )
        except SessionExpired:
            read.rejected.append(email)
            read.problems.append(f"listing {where}: {mask_email(email)}'s session is dead")
            continue
        except (AccountError, aiohttp.ClientError, TimeoutError) as exc:
            read.failed = describe(exc)
            read.problems.append(f"listing {where}: {read.failed}")
            return read
        read.reader = email
        return read
    return read
