"""The AimHarder account site (login, token refresh), and the requests and answers a
box's class listing (prebookd.aimharder.classes) shares with it.

A client with no SQL and no policy: `prebookd login`, `prebookd classes` and the daemon
call these functions and decide what to store and when. The wire contract is
shared/AIMHARDER.md. Answers are parsed by pure functions (`parse_*`, `merge_cookies`)
that tests drive with plain values; the `async` functions only move bytes.

The caller's `aiohttp.ClientSession` must use `aiohttp.DummyCookieJar()`: cookies are
per member, so each request carries its member's cookies in one `Cookie` header and
`Set-Cookie` answers are read here and handed back, never kept by aiohttp for the next
request (which may be another member's).

Passwords and tokens never appear in a log line or an exception message: errors name
the HTTP status and AimHarder's error code, nothing the member typed; and each password,
token and cookie value that passes through here is registered with the log's redaction
(`register_secret`), which masks it wherever it would show up later.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from http.cookies import Morsel, SimpleCookie
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import structlog

from prebookd.errors import PrebookdError
from prebookd.log import mask_email, redact_text, register_secret
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
class Role:
    """A box the member belongs to: an entry of the login answer's `data.userData.roles`."""

    box_id: str  # boid: AimHarder's box id, as boxes.box_id holds it
    centre_url: str  # the box's site, "https://SUB.aimharder.com" ("" when not given)


@dataclass(frozen=True)
class LoginResult:
    token: str  # data.auth.refreshToken: what tokenUpdate takes
    cookies: Cookies
    user: dict[str, Any]  # data.userData, as AimHarder sent it
    roles: tuple[Role, ...] | None = None  # None: the answer did not say (no `roles`)


@dataclass(frozen=True)
class Refreshed:
    token: str
    cookies: Cookies  # the old cookies merged with those the answer set


@dataclass(frozen=True)
class SessionDead:
    reason: str


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
        _register(None, cookies)
        try:
            headers["Cookie"] = cookie_header(cookies)
        except ValueError as exc:
            raise AccountError(f"the stored session cookies are malformed: {exc}") from None
    return headers


def _register(token: str | None, cookies: Iterable[Mapping[str, Any]]) -> None:
    """A session's secrets, masked in every log line from now on."""
    register_secret(token)
    for cookie in cookies:
        register_secret(cookie.get("value"))


async def exchange(
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
            return response.status, await _read_body(response, what, url), response.cookies
    except TimeoutError:
        raise AccountError(f"{what}: {_origin(url)} did not answer in time") from None
    except (aiohttp.ClientError, OSError) as exc:
        # redact_text: some aiohttp errors quote the URL, and setrefresh's holds the token.
        detail = redact_text(str(exc)) or type(exc).__name__
        raise AccountError(f"{what}: cannot reach {_origin(url)}: {detail}") from None


async def _read_body(response: aiohttp.ClientResponse, what: str, url: str) -> bytes:
    """The whole body, however many reads it arrives in (a listing is tens of kB)."""
    chunks, size = [], 0
    async for chunk in response.content.iter_any():
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise AccountError(
                f"{what}: {_origin(url)} answered more than {MAX_ANSWER_BYTES // 2**20} MiB"
            )
        chunks.append(chunk)
    return b"".join(chunks)


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
    register_secret(password)
    body = {"username": email, "password": password, "fingerprint": fingerprint, "iniframe": 0}
    headers = {**browser_headers(account_url), "Content-Type": "application/json"}
    status, raw, set_cookies = await exchange(
        http, "POST", f"{account_url}/api/login", what="login", headers=headers, json=body
    )
    token, user = parse_login_answer(status, raw)
    cookies = merge_cookies([], cookie_updates(set_cookies))
    _register(token, cookies)
    roles = parse_roles(user)
    if not any(c["name"] == AUTH_COOKIE and c["value"] for c in cookies):
        raise AccountError(f"login: AimHarder accepted it but set no {AUTH_COOKIE} cookie")
    log.info(
        "account_login_ok",
        member=mask_email(email),
        cookie_names=[c["name"] for c in cookies],
        boxes=None if roles is None else [role.box_id for role in roles],
    )
    return LoginResult(token=token, cookies=cookies, user=user, roles=roles)


async def set_refresh(
    http: aiohttp.ClientSession, account_url: str, token: str, fingerprint: str, cookies: Cookies
) -> Cookies:
    """`GET {account}/setrefresh?token=..&fingerprint=..` of the older HTML login, which
    no JSON client calls (`login` does not need it); returns the cookies merged with any
    it set. Best effort: when it fails, the cookies as they were (and a warning), since
    a failure here must never undo a login that succeeded."""
    account_url = account_url.rstrip("/")
    register_secret(token)
    try:
        status, _, set_cookies = await exchange(
            http,
            "GET",
            f"{account_url}/setrefresh",
            what="setrefresh",
            headers=browser_headers(account_url, cookies),
            params={"token": token, "fingerprint": fingerprint},
        )
    except AccountError as exc:
        log.warning("account_setrefresh_failed", error=str(exc))
        return cookies
    # A redirect is how a web page answers; only an error status means it failed.
    if status >= 400:
        log.warning("account_setrefresh_failed", error=f"HTTP {status}")
        return cookies
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
    _register(token, cookies)
    headers = {**browser_headers(account_url, cookies), "Content-Type": _FORM}
    status, raw, set_cookies = await exchange(
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
    renewed = merge_cookies(cookies, cookie_updates(set_cookies))
    _register(answer, renewed)
    return Refreshed(token=answer, cookies=renewed)


# --- answers (pure) ------------------------------------------------------------------


def json_answer(status: int, raw: bytes, what: str) -> Any:
    """An answer's JSON; AccountError for a 5xx, a 403, or a body that is no JSON."""
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
    except RecursionError:  # brackets nested deeper than the parser goes: not an answer
        raise AccountError(
            f"{what}: AimHarder answered HTTP {status} with JSON nested too deeply to read"
        ) from None


def parse_login_answer(status: int, raw: bytes) -> tuple[str, dict[str, Any]]:
    """(refresh token, userData) from a login answer; LoginFailed or AccountError."""
    answer = json_answer(status, raw, "login")
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


def parse_roles(user: Mapping[str, Any]) -> tuple[Role, ...] | None:
    """The boxes a login answer's `userData.roles` says the member belongs to; None when
    it says nothing readable. An empty `roles` is a member of no box, which AimHarder's
    own clients refuse ("El usuario no tiene ningún box asociado"): LoginFailed."""
    raw = user.get("roles")
    if isinstance(raw, dict):  # PHP writes an array with gaps in its keys as an object
        raw = list(raw.values())
    if not isinstance(raw, list):
        return None
    if not raw:
        raise LoginFailed(
            "login refused: the member belongs to no box (AimHarder lists no role for "
            "them); nothing was stored"
        )
    roles = []
    for entry in raw:
        boid = entry.get("boid") if isinstance(entry, dict) else None
        if isinstance(boid, bool) or not isinstance(boid, int | str) or not str(boid).strip():
            continue
        url = entry.get("centre_url")
        roles.append(
            Role(one_line(str(boid), 64), one_line(url, 200) if isinstance(url, str) else "")
        )
    return tuple(dict.fromkeys(roles)) or None


def _error_code(error: Any) -> str:
    """AimHarder's error code as one short, printable line."""
    if isinstance(error, dict):
        error = error.get("message") or error.get("code") or "unknown error"
    return one_line(str(error), 120) or "unknown error"


def parse_refresh_answer(status: int, raw: bytes) -> str | SessionDead:
    """The new token of a tokenUpdate answer, or SessionDead; AccountError on garbage."""
    if status == 401:
        return SessionDead("AimHarder refused the token refresh (HTTP 401)")
    answer = json_answer(status, raw, "token refresh")
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
