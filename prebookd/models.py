"""Rows as the daemon sees them, parsed at the edge (pydantic) into frozen dataclasses.

A row that cannot be sent as it is raises `BadRow` with a reason for the row's
`error_message`; the daemon fails that row and goes on with the others.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode
from uuid import UUID

import asyncpg
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator
from yarl import URL

from prebookd.errors import BadRow
from prebookd.hosts import DEFAULT_BOX_HOSTS, box_base_url
from prebookd.log import register_secret
from prebookd.proxies import box_proxy_url
from prebookd.text import clip, one_line

# What a browser sends; AimHarder's front end posts forms through XMLHttpRequest.
USER_AGENT = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36"
)
AUTH_COOKIE = "amhrdrauth"
RecordLike = Mapping[str, Any] | asyncpg.Record
_COOKIE_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_COOKIE_VALUE = re.compile(r"^[\x21\x23-\x2B\x2D-\x3A\x3C-\x5B\x5D-\x7E]*$")


@dataclass(frozen=True)
class UnreadableJson:
    """A jsonb value Postgres holds but Python cannot read back (see db._decode_json)."""

    length: int


@dataclass(frozen=True)
class RowState:
    """The scheduling-relevant columns of a prebooking."""

    id: UUID
    available_at: float | None  # epoch seconds
    created_at: float
    status: str
    lease_owner: str | None
    lease_expires_at: float | None

    @classmethod
    def from_record(cls, record: RecordLike) -> RowState:
        return cls(
            id=record["id"],
            available_at=_epoch(record["available_at"]),
            created_at=_epoch(record["created_at"]) or 0.0,
            status=record["status"] or "pending",
            lease_owner=record["lease_owner"],
            lease_expires_at=_epoch(record["lease_expires_at"]),
        )


@dataclass(frozen=True)
class MemberSession:
    """A member's background session (`auth_sessions`) as the daemon uses it."""

    id: UUID
    email: str
    token: str | None
    fingerprint: str | None
    cookies: list[dict[str, str]]
    refreshed_at: float | None  # epoch seconds of the last token refresh

    @classmethod
    def from_record(cls, record: RecordLike) -> MemberSession | None:
        if record["session_id"] is None:
            return None
        cookies = record["aimharder_cookies"]
        return cls(
            id=record["session_id"],
            email=record["user_email"] or "",
            token=_secret(record["aimharder_token"]),
            fingerprint=record["fingerprint"],
            cookies=list(cookies) if isinstance(cookies, list) else [],
            refreshed_at=_epoch(record["last_token_update_date"]),
        )


@dataclass(frozen=True)
class Booking:
    """A claimed row with everything needed to send it: no DB access left to do."""

    id: UUID
    member: str
    box: str
    available_at: float
    created_at: float
    url: URL
    body: bytes
    headers: Mapping[str, str]
    session: MemberSession | None = None
    prior_attempts: int = 0  # requests written for this row by an earlier run
    insist: bool = False  # asks for the waiting list when the class is full
    # Backup classes (`prebookings.alternatives`), in order: the same row and member,
    # another form body. Each has `choice` 1, 2, ... and no alternatives of its own.
    alternatives: tuple[Booking, ...] = ()
    choice: int = 0  # 0: booking_data; n: the nth alternative
    proxy_url: str | None = None  # the box's own proxy (boxes.proxy_url); None: the global

    def with_session(self, session: MemberSession) -> Booking:
        """The same request, sent with a renewed session's cookies (its alternatives too)."""
        headers = {**self.headers, "Cookie": cookie_header(session.cookies)}
        alternatives = tuple(a.with_session(session) for a in self.alternatives)
        return dataclasses.replace(
            self, headers=headers, session=session, alternatives=alternatives
        )

    @property
    def order(self) -> tuple[float, float, UUID]:
        return (self.available_at, self.created_at, self.id)


class BookingData(BaseModel):
    """`prebookings.booking_data`: exactly the form fields of `POST /api/book`."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    day: str
    id: str
    familyId: str = ""
    insist: int = 0

    @field_validator("day", mode="before")
    @classmethod
    def _day(cls, value: Any) -> str:
        text = _short_text(value, "must be YYYYMMDD")
        if not re.fullmatch(r"[0-9]{8}", text):
            raise ValueError("must be YYYYMMDD")
        try:
            dt.datetime.strptime(text, "%Y%m%d")
        except ValueError:
            raise ValueError("must be a real date (YYYYMMDD)") from None
        return text

    @field_validator("id", mode="before")
    @classmethod
    def _session_id(cls, value: Any) -> str:
        text = _short_text(value, "must be the class session id")
        if not text:
            raise ValueError("must be the class session id")
        return text

    @field_validator("familyId", mode="before")
    @classmethod
    def _family(cls, value: Any) -> str:
        if value is None:
            return ""
        return _short_text(value, "must be empty or the family member's id")


def _short_text(value: Any, problem: str, limit: int = 64) -> str:
    """A form field given as a string or an integer, at most `limit` characters;
    anything else (an object, a list, a float, a boolean) is `problem`."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(problem)
    if isinstance(value, int) and not -(10**limit) < value < 10**limit:
        raise ValueError(problem)  # and str() of a huge one raises on its own
    text = str(value).strip()
    if len(text) > limit:
        raise ValueError(problem)
    return text


def build_booking(record: RecordLike, allowed_hosts: Sequence[str] = DEFAULT_BOX_HOSTS) -> Booking:
    """A claimed row (joined with its box and session) as a ready-to-send Booking;
    its box's base URL must be on `allowed_hosts` (PREBOOKD_BOX_HOSTS)."""
    if not record["box_found"]:
        raise BadRow("unknown box: the row's box_id matches no box")
    data = _parse_booking_data(record["booking_data"])
    base_url = box_base_url(record["base_url"], record["subdomain"], allowed_hosts)
    cookies = _cookie_header(record["aimharder_cookies"], record["session_found"])
    available_at = _epoch(record["available_at"])
    if available_at is None:
        raise BadRow("available_at is null")
    headers = {
        "Accept": "*/*",
        "X-Requested-With": "XMLHttpRequest",
        "Content-Type": "application/x-www-form-urlencoded; charset=UTF-8",
        "User-Agent": USER_AGENT,
        "Origin": base_url,
        "Referer": base_url + "/",
        "Cookie": cookies,
    }
    first = Booking(
        id=record["id"],
        member=record["user_email"] or "",
        box=record["subdomain"] or "",
        available_at=available_at,
        created_at=_epoch(record["created_at"]) or 0.0,
        url=URL(base_url + "/api/book"),
        body=_form(data),
        headers=headers,
        session=MemberSession.from_record(record) if "session_id" in record else None,
        prior_attempts=int(record["attempts"] or 0) if "attempts" in record else 0,
        insist=data.insist != 0,
        proxy_url=box_proxy_url(record.get("proxy_url")),
    )
    alternatives = enumerate(parse_alternatives(record.get("alternatives")), start=1)
    return dataclasses.replace(
        first,
        alternatives=tuple(
            dataclasses.replace(first, body=_form(a), insist=a.insist != 0, choice=n)
            for n, a in alternatives
        ),
    )


def _form(data: BookingData) -> bytes:
    form = {"id": data.id, "day": data.day, "insist": str(data.insist), "familyId": data.familyId}
    return urlencode(form).encode()


MAX_ALTERNATIVES = 5


def parse_alternatives(raw: Any) -> list[BookingData]:
    """`prebookings.alternatives`: null or a list of booking_data objects; BadRow
    saying which one is wrong otherwise (nothing of the row is sent)."""
    if isinstance(raw, str):
        raw = _json_text(raw, "alternatives is not valid JSON")
    if raw is None or raw == []:
        return []
    if not isinstance(raw, list) or len(raw) > MAX_ALTERNATIVES:
        raise BadRow(
            f"alternatives must be a list of at most {MAX_ALTERNATIVES} objects "
            "with day, id, familyId, insist"
        )
    try:
        return [_parse_booking_data(item) for item in raw]
    except BadRow as exc:
        raise BadRow(clip(f"alternatives: {exc}", 250)) from None


def _parse_booking_data(raw: Any) -> BookingData:
    if isinstance(raw, UnreadableJson):
        raise BadRow(
            f"booking_data cannot be read back ({raw.length} characters of JSON "
            "nested too deep or with too large a number)"
        )
    if isinstance(raw, str):  # a JSON string holding the JSON text: decoded twice
        raw = _json_text(raw, "booking_data is not valid JSON")
    if not isinstance(raw, dict):
        raise BadRow("booking_data must be a JSON object with day, id, familyId, insist")
    try:
        return BookingData.model_validate(raw)
    except ValidationError as exc:
        problems = ", ".join(
            f"{'.'.join(map(str, e['loc']))} {e['msg'].lower()}"
            for e in exc.errors(include_input=False, include_url=False)
        )
        raise BadRow(clip(f"booking_data is invalid: {problems}", 250)) from None


def _json_text(raw: str, problem: str) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than it reads
        raise BadRow(problem) from None


def _cookie_header(raw: Any, session_found: bool) -> str:
    """`Cookie:` value from `auth_sessions.aimharder_cookies` ([{"name", "value"}])."""
    if not session_found:
        raise BadRow("no background session for this member: log in again")
    if isinstance(raw, str):
        raw = _json_text(raw, "background session cookies are not valid JSON")
    if isinstance(raw, dict):  # {"name": "value"} is accepted too
        raw = [{"name": k, "value": v} for k, v in raw.items()]
    if not isinstance(raw, list):
        raise BadRow("background session has no cookies: log in again")
    try:
        header = cookie_header(raw)
    except ValueError:
        raise BadRow("background session cookies are malformed") from None
    pairs = header.split("; ")
    if not any(p.startswith(AUTH_COOKIE + "=") and len(p) > len(AUTH_COOKIE) + 1 for p in pairs):
        raise BadRow(f"background session has no {AUTH_COOKIE} cookie: log in again")
    return header


def cookie_header(cookies: Iterable[Any]) -> str:
    """The `Cookie:` value for cookies as `auth_sessions.aimharder_cookies` holds them
    ([{"name", "value"}]); ValueError if one cannot go in a header as it is."""
    pairs = []
    for cookie in cookies:
        if not isinstance(cookie, Mapping):
            raise ValueError("a cookie must be an object with name and value")
        name, value = str(cookie.get("name", "")), str(cookie.get("value", ""))
        # A value with ';' or a newline would smuggle headers: refuse it outright.
        if not _COOKIE_TOKEN.match(name) or not _COOKIE_VALUE.match(value):
            raise ValueError(f"cookie {name[:40]!r} has a name or value unfit for a header")
        pairs.append(f"{name}={value}")
        register_secret(value)  # a member's cookie: masked in any log line from now on
    return "; ".join(pairs)


def _secret(value: Any) -> Any:
    """A member's token, registered to be masked in any log line, as it is."""
    register_secret(value)
    return value


def _epoch(value: dt.datetime | None) -> float | None:
    if value is None:
        return None
    if value.tzinfo is None:
        # Only timestamptz 'infinity' and '-infinity' come naive (asyncpg: datetime.max
        # and .min); read as UTC they are instants no row can fire at, not an error.
        value = value.replace(tzinfo=dt.UTC)
    return value.timestamp()


class Notice(BaseModel):
    """A `pg_notify('prebookings', ...)` payload, as the trigger writes it."""

    model_config = ConfigDict(extra="ignore")

    op: str
    id: UUID
    available_at: dt.datetime | None = None
    created_at: dt.datetime | None = None
    status: str | None = None

    @field_validator("op")
    @classmethod
    def _op(cls, value: str) -> str:
        if value not in ("insert", "update", "delete"):
            raise ValueError("must be insert, update or delete")
        return value

    @field_validator("available_at", "created_at")
    @classmethod
    def _aware(cls, value: dt.datetime | None) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("must carry a time zone")
        return value

    def row_state(self) -> RowState:
        return RowState(
            id=self.id,
            available_at=_epoch(self.available_at),
            created_at=_epoch(self.created_at) or 0.0,
            status=self.status or "pending",
            lease_owner=None,
            lease_expires_at=None,
        )


def parse_notice(payload: str) -> Notice:
    """Parse a payload; raises ValueError with a readable reason."""
    try:
        return Notice.model_validate_json(payload)
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        where = ".".join(map(str, first["loc"])) or "payload"
        # pydantic quotes the offending character: it may be a control character.
        raise ValueError(one_line(f"{where}: {first['msg']}", 250)) from None


FINAL_STATUSES = frozenset({"completed", "failed"})


@dataclass(frozen=True)
class ResultUpdate:
    id: UUID
    status: str  # executing | completed | failed
    outcome: str | None = None
    error_message: str | None = None
    result: Any = None
    written_at: float | None = None
    lateness_ms: float | None = None
    attempts: int | None = None
    executed_at: float | None = None
    fired_by: str | None = None
    send_note: str | None = None  # how the request went out, when not from its gate
    booked_choice: int | None = None  # the choice the final answer was for (0: first)

    def merged_with(self, newer: ResultUpdate) -> ResultUpdate:
        """`newer` wins field by field, except that a final status is never undone."""
        if self.status in FINAL_STATUSES and newer.status not in FINAL_STATUSES:
            newer, older = self, newer
        else:
            older = self
        changes = {
            f.name: getattr(newer, f.name)
            for f in dataclasses.fields(self)
            if getattr(newer, f.name) is not None
        }
        return dataclasses.replace(older, **changes)
