"""The AimHarder account site (login, token refresh) and a box's class listing.

A client with no SQL and no policy: `prebookd login`, `prebookd classes` and the daemon
call these functions and decide what to store and when. The wire contract is
shared/AIMHARDER.md. Answers are parsed by pure functions (`parse_*`, `merge_cookies`)
that tests drive with plain values; the `async` functions only move bytes.

The caller's `aiohttp.ClientSession` must use `aiohttp.DummyCookieJar()`: cookies are
per member, so each request carries its member's cookies in one `Cookie` header and
`Set-Cookie` answers are read here and handed back, never kept by aiohttp for the next
request (which may be another member's).

Passwords and tokens never appear in a log line or an exception message: errors name
the HTTP status and AimHarder's error code, nothing the member typed.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http.cookies import Morsel, SimpleCookie
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from prebookd.errors import PrebookdError
from prebookd.log import mask_email, redact_text
from prebookd.models import AUTH_COOKIE, USER_AGENT, cookie_header
from prebookd.text import one_line

log = structlog.get_logger(__name__)

Cookies = list[dict[str, str]]  # as auth_sessions.aimharder_cookies: [{"name", "value"}]

FINGERPRINT_LENGTH = 50
MAX_ANSWER_BYTES = 2 * 1024 * 1024  # a day's listing is tens of kB; refuse endless bodies
# Every call is bounded: a CLI must not hang, and the daemon refreshes off the hot path.
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=20, sock_connect=10, sock_read=15)
_FORM = "application/x-www-form-urlencoded; charset=UTF-8"
_LOCKED = re.compile(r"demasiad|too many|bloque|block|lock", re.IGNORECASE)


class AccountError(PrebookdError):
    """The account site or a box could not be asked, or answered something unusable."""


class LoginFailed(AccountError):
    """AimHarder refused the credentials (or locked the account); `code` is its error."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class SessionExpired(AccountError):
    """A box answered `{"logout": 1}`: the session is dead, the member must log in again."""


@dataclass(frozen=True)
class LoginResult:
    token: str  # data.auth.refreshToken: what tokenUpdate takes
    cookies: Cookies
    user: dict[str, Any]  # data.userData, as AimHarder sent it


@dataclass(frozen=True)
class Refreshed:
    token: str
    cookies: Cookies  # the old cookies merged with those the answer set


@dataclass(frozen=True)
class SessionDead:
    reason: str


@dataclass(frozen=True)
class ClassInfo:
    """One class session of a day at a box, as `GET /api/bookings` lists it."""

    session_id: str  # bookings[].id: what booking needs
    time: str  # "07:00 - 08:00"
    name: str
    occupancy: int
    limit: int
    waitlist: int  # people on the waiting list
    booked: bool  # this member holds a place
    waitlisted: bool  # this member is on the waiting list
    reservation_id: str | None  # idres: what cancelling needs

    @property
    def start(self) -> str:
        """The start time, "07:00"."""
        return self.time.split("-", 1)[0].strip()

    @property
    def label(self) -> str:
        """ "07:00 WOD": how `prebookd add --class` names a class."""
        return f"{self.start} {self.name}"


def fingerprint_for(email: str) -> str:
    """The fingerprint of a member's `background` session: the first 50 hex characters of
    sha256(e-mail, lower-cased), as the web app derives it."""
    return hashlib.sha256(email.lower().encode()).hexdigest()[:FINGERPRINT_LENGTH]


# --- requests ------------------------------------------------------------------------


def browser_headers(origin: str, cookies: Cookies | None = None) -> dict[str, str]:
    """What AimHarder's own front end sends (shared/AIMHARDER.md, Hosts)."""
    headers = {
        "Accept": "*/*",
        "X-Requested-With": "XMLHttpRequest",
        "User-Agent": USER_AGENT,
        "Origin": origin,
        "Referer": origin + "/",
    }
    if cookies:
        try:
            headers["Cookie"] = cookie_header(cookies)
        except ValueError as exc:
            raise AccountError(f"the stored session cookies are malformed: {exc}") from None
    return headers


async def _exchange(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    what: str,
    headers: dict[str, str],
    **kwargs: Any,
) -> tuple[int, bytes, SimpleCookie]:
    """One request: (status, body, Set-Cookie morsels); transport errors as AccountError."""
    try:
        async with http.request(
            method, url, headers=headers, allow_redirects=False, timeout=REQUEST_TIMEOUT, **kwargs
        ) as response:
            body = await response.content.read(MAX_ANSWER_BYTES)
            return response.status, body, response.cookies
    except TimeoutError:
        raise AccountError(f"{what}: {_origin(url)} did not answer in time") from None
    except (aiohttp.ClientError, OSError) as exc:
        # redact_text: some aiohttp errors quote the URL, and setrefresh's holds the token.
        detail = redact_text(str(exc)) or type(exc).__name__
        raise AccountError(f"{what}: cannot reach {_origin(url)}: {detail}") from None


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


async def login(
    http: aiohttp.ClientSession, account_url: str, email: str, password: str, fingerprint: str
) -> LoginResult:
    """`POST {account}/api/login`, once. Raises LoginFailed if AimHarder refuses the
    credentials and AccountError if it cannot be asked; never retries (repeated
    failures lock the account)."""
    account_url = account_url.rstrip("/")
    body = {"username": email, "password": password, "fingerprint": fingerprint, "iniframe": 0}
    headers = {**browser_headers(account_url), "Content-Type": "application/json"}
    status, raw, set_cookies = await _exchange(
        http, "POST", f"{account_url}/api/login", what="login", headers=headers, json=body
    )
    token, user = parse_login_answer(status, raw)
    cookies = merge_cookies([], cookie_updates(set_cookies))
    if not any(c["name"] == AUTH_COOKIE and c["value"] for c in cookies):
        raise AccountError(f"login: AimHarder accepted it but set no {AUTH_COOKIE} cookie")
    log.info(
        "account_login_ok", member=mask_email(email), cookie_names=[c["name"] for c in cookies]
    )
    return LoginResult(token=token, cookies=cookies, user=user)


async def set_refresh(
    http: aiohttp.ClientSession, account_url: str, token: str, fingerprint: str, cookies: Cookies
) -> Cookies:
    """`GET {account}/setrefresh?token=..&fingerprint=..`, which some clients call after
    login before a box accepts the cookie; returns the cookies merged with any it set."""
    account_url = account_url.rstrip("/")
    status, _, set_cookies = await _exchange(
        http,
        "GET",
        f"{account_url}/setrefresh",
        what="setrefresh",
        headers=browser_headers(account_url, cookies),
        params={"token": token, "fingerprint": fingerprint},
    )
    # A redirect is how a web page answers; only an error status means it failed.
    if status >= 400:
        raise AccountError(f"setrefresh: AimHarder answered HTTP {status}")
    return merge_cookies(cookies, cookie_updates(set_cookies))


async def refresh_token(
    http: aiohttp.ClientSession,
    account_url: str,
    token: str,
    fingerprint: str,
    cookies: Cookies,
) -> Refreshed | SessionDead:
    """`POST {account}/api/tokenUpdate`: a new token, or SessionDead when AimHarder ended
    the session (a new login is needed). AccountError on transport errors, 5xx, garbage."""
    account_url = account_url.rstrip("/")
    headers = {**browser_headers(account_url, cookies), "Content-Type": _FORM}
    status, raw, set_cookies = await _exchange(
        http,
        "POST",
        f"{account_url}/api/tokenUpdate",
        what="token refresh",
        headers=headers,
        data={"token": token, "ciclo": "1", "fingerprint": fingerprint},
    )
    answer = parse_refresh_answer(status, raw)
    if isinstance(answer, SessionDead):
        return answer
    return Refreshed(token=answer, cookies=merge_cookies(cookies, cookie_updates(set_cookies)))


async def list_classes(
    http: aiohttp.ClientSession,
    box_base_url: str,
    aimharder_box_id: str,
    day: str,
    cookies: Cookies,
    family_id: str = "",
) -> list[ClassInfo]:
    """`GET {box}/api/bookings` for `day` (YYYYMMDD), as the member whose cookies these
    are sees it. Raises SessionExpired on `{"logout": 1}`."""
    box_base_url = box_base_url.rstrip("/")
    params = {
        "day": day,
        "familyId": family_id,
        "box": aimharder_box_id,
        "_": str(int(time.time() * 1000)),  # the front end's cache buster
    }
    status, raw, _ = await _exchange(
        http,
        "GET",
        f"{box_base_url}/api/bookings",
        what="class listing",
        headers=browser_headers(box_base_url, cookies),
        params=params,
    )
    return parse_classes(status, raw)


# --- answers (pure) ------------------------------------------------------------------


def _json(status: int, raw: bytes, what: str) -> Any:
    if status >= 500:
        raise AccountError(f"{what}: AimHarder failed (HTTP {status}); try again later")
    if status == 403:
        raise AccountError(
            f"{what}: AimHarder refused the request (HTTP 403); it refuses some networks "
            "(outside Spain, cloud IP ranges)"
        )
    try:
        return json.loads(raw)
    except ValueError:
        raise AccountError(f"{what}: AimHarder answered HTTP {status} without JSON") from None


def parse_login_answer(status: int, raw: bytes) -> tuple[str, dict[str, Any]]:
    """(refresh token, userData) from a login answer; LoginFailed or AccountError."""
    answer = _json(status, raw, "login")
    if not isinstance(answer, dict):
        raise AccountError(f"login: unexpected answer (HTTP {status})")
    error = answer.get("error")
    if error is not None:
        code = _error_code(error)
        if code == "LOGIN_ERROR_LOGIN":
            raise LoginFailed("login refused: wrong e-mail or password (not retried)", code)
        if code == "LOGIN_ERROR_MALFORMED_BODY":
            raise AccountError(
                "login: AimHarder refused the request as malformed (LOGIN_ERROR_MALFORMED_BODY);"
                " its login API may have changed"
            )
        if _LOCKED.search(code):
            raise LoginFailed(
                f"login refused: too many failed attempts, the account is locked for a while "
                f"({code}); wait before trying again",
                code,
            )
        raise LoginFailed(f"login refused (HTTP {status}): {code}", code)
    data = answer.get("data")
    auth = data.get("auth") if isinstance(data, dict) else None
    if status != 200 or not isinstance(auth, dict):
        raise AccountError(f"login: unexpected answer (HTTP {status})")
    token = auth.get("refreshToken")
    if auth.get("authOK") is not True:
        raise LoginFailed("login refused: AimHarder answered authOK false")
    if not isinstance(token, str) or not token:
        raise AccountError("login: AimHarder accepted it but sent no refreshToken")
    user = data.get("userData") if isinstance(data, dict) else None
    return token, user if isinstance(user, dict) else {}


def _error_code(error: Any) -> str:
    """AimHarder's error code as one short, printable line."""
    if isinstance(error, dict):
        error = error.get("message") or error.get("code") or "unknown error"
    return one_line(str(error), 120) or "unknown error"


def parse_refresh_answer(status: int, raw: bytes) -> str | SessionDead:
    """The new token of a tokenUpdate answer, or SessionDead; AccountError on garbage."""
    if status == 401:
        return SessionDead("AimHarder refused the token refresh (HTTP 401)")
    answer = _json(status, raw, "token refresh")
    if not isinstance(answer, dict) or status != 200:
        raise AccountError(f"token refresh: unexpected answer (HTTP {status})")
    if answer.get("logout"):
        return SessionDead("AimHarder ended the session (logout): a new login is needed")
    token = answer.get("newToken")
    if isinstance(token, str) and token:
        return token
    # Name the keys, never the values: they may hold a token.
    keys = ", ".join(sorted(map(str, answer))) or "none"
    raise AccountError(f"token refresh: answer without newToken (keys: {keys})")


class _Listed(BaseModel):
    """One entry of `bookings[]`; numbers may come as strings, extra keys are ignored."""

    model_config = ConfigDict(extra="ignore")

    id: str
    time: str
    className: str = ""
    ocupation: int = 0
    limitc: int | None = None
    limit: int | None = None
    waitlist: int = 0
    bookState: int | None = None
    idres: str | None = None

    @field_validator("id", "idres", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("limitc", "limit", "ocupation", "waitlist", "bookState", mode="before")
    @classmethod
    def _blank(cls, value: Any) -> Any:
        return None if value == "" else value


class _Listing(BaseModel):
    model_config = ConfigDict(extra="ignore")

    bookings: list[_Listed] = Field(default_factory=list)


def parse_classes(status: int, raw: bytes) -> list[ClassInfo]:
    """A `GET /api/bookings` answer as ClassInfo, in the order listed."""
    answer = _json(status, raw, "class listing")
    if isinstance(answer, dict) and answer.get("logout"):
        raise SessionExpired(
            "AimHarder answered logout to the class listing: the session is dead, "
            "log in again (`prebookd login`)"
        )
    if status != 200 or not isinstance(answer, dict) or "bookings" not in answer:
        raise AccountError(f"class listing: unexpected answer (HTTP {status})")
    try:
        listing = _Listing.model_validate(answer)
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        where = ".".join(map(str, first["loc"]))
        raise AccountError(f"class listing: unexpected answer ({where}: {first['msg']})") from None
    return [
        ClassInfo(
            session_id=entry.id,
            time=entry.time,
            name=entry.className,
            occupancy=entry.ocupation,
            limit=entry.limitc if entry.limitc is not None else (entry.limit or 0),
            waitlist=entry.waitlist,
            booked=entry.bookState == 1,
            # bookState 0 is the waiting list once there is a reservation; without one
            # it is only a value some answers use for "not booked".
            waitlisted=entry.bookState == 0 and entry.idres is not None,
            reservation_id=entry.idres,
        )
        for entry in listing.bookings
    ]


# --- cookies (pure) ------------------------------------------------------------------


def cookie_updates(morsels: Mapping[str, Morsel[str]]) -> list[tuple[str, str | None]]:
    """`Set-Cookie` morsels as (name, value), value None for a cookie being deleted."""
    updates: list[tuple[str, str | None]] = []
    for name, morsel in morsels.items():
        value: str | None = morsel.value
        # PHP deletes a cookie by setting it to "deleted" with Max-Age=0 (or in the past).
        if value in ("", "deleted") or morsel["max-age"] in ("0", "-1"):
            value = None
        updates.append((name, value))
    return updates


def merge_cookies(
    old: Sequence[Mapping[str, Any]], updates: Sequence[tuple[str, str | None]]
) -> Cookies:
    """`old` with each update applied: a new value replaces the old one in place, a new
    name goes last, None removes it. Cookies that cannot be sent back in a `Cookie`
    header are dropped (and named in the log)."""
    merged: dict[str, str] = {str(c.get("name", "")): str(c.get("value", "")) for c in old}
    for name, value in updates:
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = value
    kept: Cookies = []
    for name, value in merged.items():
        try:
            cookie_header([{"name": name, "value": value}])
        except ValueError:
            log.warning("account_cookie_dropped", cookie_name=name[:40])
            continue
        kept.append({"name": name, "value": value})
    return kept
