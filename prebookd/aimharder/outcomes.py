"""What an AimHarder answer means: completed, failed, or retry. Pure, no I/O.

The table is ../shared/AIMHARDER.md's. AimHarder answers HTTP 200 for almost
everything, so the JSON decides: `bookState`, then `errorMssgLang` for -12 (never
`errorMssg`, which is localised), and `{"logout": 1}` is a dead session, never a
success.
"""

from __future__ import annotations

import enum
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from prebookd.text import TOO_DEEP, one_line


class Verdict(enum.Enum):
    COMPLETED = "completed"
    FAILED = "failed"
    RETRY = "retry"  # not open yet, or a transient fault: try again inside the window


@dataclass(frozen=True)
class Outcome:
    verdict: Verdict
    code: str  # short and stable: goes to prebookings.outcome
    reason: str  # readable: goes to prebookings.error_message on failure
    # AimHarder blocked or rate-limited us: nothing more goes to that box for a while.
    pauses_box: bool = False

    @property
    def final(self) -> bool:
        return self.verdict is not Verdict.RETRY


def _completed(code: str, reason: str) -> Outcome:
    return Outcome(Verdict.COMPLETED, code, reason)


def _failed(code: str, reason: str) -> Outcome:
    return Outcome(Verdict.FAILED, code, reason)


def _retry(code: str, reason: str) -> Outcome:
    return Outcome(Verdict.RETRY, code, reason)


NOT_OPEN = _retry("not_open", "booking window not open yet")

BOOK_STATES: dict[int, Outcome] = {
    1: _completed("booked", "booked"),
    0: _completed("waitlisted", "put on the waiting list"),
    -1: _failed("full", "class full"),
    -2: _failed("no_credits", "no credits left on the plan"),
    -4: NOT_OPEN,
    -5: _failed("payment_pending", "a payment is pending"),
    -7: _failed("too_late", "too close to the start of the class"),
}

ERROR_LANGS: dict[str, Outcome] = {
    "ERROR_ANTELACION_CLIENTE": NOT_OPEN,
    "ERROR_ANTELACION_CLIENTE_HORAS": NOT_OPEN,
    "NOPUEDESRESERVAMISMAHORA": _completed("already_booked", "already booked at that time"),
    "HASSUPERADOLIMITCONTR": _failed("plan_limit", "plan limit exceeded"),
}

SESSION_EXPIRED = _failed("session_expired", "session expired: log in again")
BOOKED_PLAIN = _completed("booked", "booked (AimHarder answered bookState 0 without insist)")


def classify_answer(answer: Any, *, insist: bool = False) -> Outcome:
    """Classify the JSON body of a `POST /api/book` answered with HTTP 200.

    `insist` is the request's: only a booking that asked for the waiting list can have
    joined it, so `bookState 0` is read as the waiting list with it, as booked without.
    """
    # An answer of the wrong shape may come after the booking was made: like an
    # unreadable one it is tried again, and a repeat then hears "already booked".
    if not isinstance(answer, dict):
        return _retry("bad_answer", f"unexpected answer: {one_line(answer, 120)}")
    if answer.get("logout") in (1, "1", True):
        return SESSION_EXPIRED
    raw_state: Any = answer.get("bookState")
    if raw_state is None:
        return _without_book_state(answer)
    try:
        state = int(raw_state)
    except (TypeError, ValueError, OverflowError):  # OverflowError: JSON's Infinity
        return _retry("bad_answer", f"answer without a bookState: {one_line(answer, 120)}")
    if state == 0 and not insist:
        return BOOKED_PLAIN
    if state == -8:
        return _failed(
            "daily_limit",
            f"per-day limit for this class reached (max {one_line(answer.get('max'), 20)})",
        )
    if state == -12:
        lang = str(answer.get("errorMssgLang") or "")
        known = ERROR_LANGS.get(lang)
        if known is not None:
            return known
        # The web app, and the other clients, read any other -12 as "too early": it is
        # retried as "not open yet" inside the window, and fails with its words after.
        shown = one_line(lang, 60) if lang else "no errorMssgLang"
        words = _words(answer)
        return _retry("not_open", f"not open yet ({shown}{': ' + words if words else ''})")
    known = BOOK_STATES.get(state)
    if known is not None:
        return known
    return _failed("unknown_state", f"unknown bookState {one_line(state, 40)}")


def _without_book_state(answer: dict[str, Any]) -> Outcome:
    words = _words(answer)
    if words:
        # A box rule refusing (plan, monthly maximum, a penalty after a no-show): final,
        # in AimHarder's own words. Not retried: the same request gets the same no.
        return _failed("refused", f"refused by the box: {words}")
    if answer.get("id") is not None and "spot" in answer:
        return _completed("booked", "booked (an answer with a spot and no bookState)")
    return _retry("bad_answer", f"answer without a bookState: {one_line(answer, 120)}")


def _words(answer: dict[str, Any]) -> str:
    """AimHarder's own message (`errorMssg`), one printable line; "" when none."""
    message = answer.get("errorMssg")
    return one_line(message, 200) if isinstance(message, str) and message.strip() else ""


def classify_http(status: int, body: bytes, *, insist: bool = False) -> tuple[Outcome, Any]:
    """Classify a whole HTTP answer; returns the outcome and what to keep in `result`."""
    if status == 429:
        reason = "HTTP 429: AimHarder rate-limited this box"
        return Outcome(Verdict.FAILED, "rate_limited", reason, pauses_box=True), None
    if status == 403:
        if body.lstrip()[:1] == b"<":  # an HTML page: the firewall, not the application
            reason = "HTTP 403: AimHarder blocked requests to this box"
            return Outcome(Verdict.FAILED, "blocked", reason, pauses_box=True), None
        return _failed("blocked", "HTTP 403: AimHarder refused the request (blocked?)"), None
    if status == 401 or status in (301, 302, 303, 307, 308):
        # The login page, by status or by redirect: the session is dead, as {"logout": 1}.
        return _failed("session_expired", f"HTTP {status}: session expired: log in again"), None
    if status == 408:
        # AimHarder's load balancer answers 408 on a connection it closes as idle: no
        # booking was processed, so it is worth another try.
        return _retry("idle_timeout", "HTTP 408: the connection was closed as idle"), None
    if status >= 500:
        return _retry("server_error", f"HTTP {status} from AimHarder"), None
    if status != 200:
        return _failed("http_error", f"HTTP {status} from AimHarder"), None
    try:
        answer = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than it reads
        # A maintenance page, or an answer cut short after the booking was made: worth
        # another try (a repeat of a booking made answers "already booked").
        return _retry("bad_answer", f"unreadable answer: {one_line(body, 120)}"), None
    return classify_answer(answer, insist=insist), storable(answer)


def transport_failure(error: BaseException) -> Outcome:
    """Timeouts, resets, refused connections: transient, retried inside the window."""
    name = type(error).__name__
    detail = one_line(str(error), 200)
    return _retry("transport_error", f"{name}: {detail}" if detail else name)


# What Postgres cannot hold in text or jsonb: NUL, and surrogates (JSON's "\ud800"
# alone decodes to one). One such character makes the whole batch of results fail.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


# Deeper than this, what an answer holds is kept as a note: AimHarder's answers are
# two levels deep, and json.dumps or repr of one nested as deep as json.loads allows
# can exhaust the stack.
MAX_KEPT_DEPTH = 32


def _storable_text(text: str) -> str:
    return _UNSTORABLE.sub("\N{REPLACEMENT CHARACTER}", text)


def storable(answer: Any) -> Any:
    """`answer` as a jsonb column can hold it: NUL and lone surrogates become U+FFFD,
    NaN and infinities (JSON extensions Python reads) their names, and what is nested
    deeper than MAX_KEPT_DEPTH a note. Iterative, so that no answer exhausts the stack."""
    root: list[Any] = [None]
    stack: list[tuple[Any, Any, Any, int]] = [(root, 0, answer, 0)]
    while stack:
        parent, key, item, depth = stack.pop()
        if depth > MAX_KEPT_DEPTH and isinstance(item, list | dict):
            parent[key] = TOO_DEEP
        elif isinstance(item, str):
            parent[key] = _storable_text(item)
        elif isinstance(item, float) and not math.isfinite(item):
            parent[key] = str(item)
        elif isinstance(item, list):
            items: list[Any] = [None] * len(item)
            parent[key] = items
            stack.extend((items, i, v, depth + 1) for i, v in enumerate(item))
        elif isinstance(item, dict):
            fields: dict[str, Any] = {}
            parent[key] = fields
            for k, v in item.items():
                name = _storable_text(str(k))
                fields[name] = None
                stack.append((fields, name, v, depth + 1))
        else:
            parent[key] = item
    return root[0]
