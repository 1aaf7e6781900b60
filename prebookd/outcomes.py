"""What an AimHarder answer means: completed, failed, or retry. Pure, no I/O.

The table is ../shared/AIMHARDER.md's. AimHarder answers HTTP 200 for almost
everything, so the JSON decides: `bookState`, then `errorMssgLang` for -12 (never
`errorMssg`, which is localised), and `{"logout": 1}` is a dead session, never a
success.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any


class Verdict(enum.Enum):
    COMPLETED = "completed"
    FAILED = "failed"
    RETRY = "retry"  # not open yet, or a transient fault: try again inside the window


@dataclass(frozen=True)
class Outcome:
    verdict: Verdict
    code: str  # short and stable: goes to prebookings.outcome
    reason: str  # readable: goes to prebookings.error_message on failure

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


def classify_answer(answer: Any) -> Outcome:
    """Classify the JSON body of a `POST /api/book` answered with HTTP 200."""
    if not isinstance(answer, dict):
        return _failed("bad_answer", f"unexpected answer: {_excerpt(answer)}")
    if answer.get("logout") in (1, "1", True):
        return SESSION_EXPIRED
    raw_state: Any = answer.get("bookState")
    try:
        state = int(raw_state)
    except (TypeError, ValueError):
        return _failed("bad_answer", f"answer without a bookState: {_excerpt(answer)}")
    if state == -8:
        return _failed(
            "daily_limit", f"per-day limit for this class reached (max {answer.get('max')})"
        )
    if state == -12:
        lang = str(answer.get("errorMssgLang") or "")
        known = ERROR_LANGS.get(lang)
        if known is not None:
            return known
        return _failed("refused", f"refused by AimHarder ({lang or 'no errorMssgLang'})")
    known = BOOK_STATES.get(state)
    if known is not None:
        return known
    return _failed("unknown_state", f"unknown bookState {state}")


def classify_http(status: int, body: bytes) -> tuple[Outcome, Any]:
    """Classify a whole HTTP answer; returns the outcome and what to keep in `result`."""
    if status == 403:
        return _failed("blocked", "HTTP 403: AimHarder refused the request (blocked?)"), None
    if status >= 500:
        return _retry("server_error", f"HTTP {status} from AimHarder"), None
    if status != 200:
        return _failed("http_error", f"HTTP {status} from AimHarder"), None
    try:
        answer = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        # A maintenance page, or an answer cut short after the booking was made: worth
        # another try (a repeat of a booking made answers "already booked").
        return _retry("bad_answer", f"unreadable answer: {_excerpt(body)}"), None
    return classify_answer(answer), answer


def transport_failure(error: BaseException) -> Outcome:
    """Timeouts, resets, refused connections: transient, retried inside the window."""
    name = type(error).__name__
    detail = str(error).strip()
    return _retry("transport_error", f"{name}: {detail}" if detail else name)


def _excerpt(value: Any, limit: int = 120) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else repr(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."
