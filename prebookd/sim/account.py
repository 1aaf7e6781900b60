"""The account site's endpoints (shared/AIMHARDER.md "Session"): login, setrefresh,
tokenUpdate, whoami. Served at the root of the simulator's port, so the account base
URL (`PREBOOKD_AIMHARDER_URL`) is the simulator's base URL."""

from __future__ import annotations

import json
import math
import secrets
from typing import Any

from prebookd.sim.box import form_of
from prebookd.sim.model import AUTH_COOKIE, LOGOUT, Answer, Call
from prebookd.sim.state import LoginOutcome, Route, SimState


def _login_error(code: int, message: str, email: str | None = None) -> Answer:
    return Answer({"error": {"code": code, "message": message}}, status=code, email=email)


def _session_cookies(auth_cookie: str) -> dict[str, str]:
    # The load-balancer and PHP cookies come along, so a client is seen storing and
    # sending back every cookie it was given, not just amhrdrauth.
    return {
        AUTH_COOKIE: auth_cookie,
        "AWSALB": secrets.token_urlsafe(24),
        "PHPSESSID": secrets.token_hex(13),
    }


async def login(state: SimState, call: Call) -> Answer:
    # The body is JSON whatever the Content-Type says; anything else (a form, above
    # all) is the malformed-body refusal the current login flow gives.
    try:
        body: Any = json.loads(call.body)
    except ValueError:
        body = None
    if not (
        isinstance(body, dict)
        and isinstance(body.get("username"), str)
        and isinstance(body.get("password"), str)
    ):
        return _login_error(400, "LOGIN_ERROR_MALFORMED_BODY")
    fingerprint = body.get("fingerprint")
    outcome, member = state.login(body["username"], body["password"], call.now)
    email = member.email if member else None
    if outcome is LoginOutcome.LOCKED:
        assert member is not None
        minutes = max(1, math.ceil((member.locked_until - call.now) / 60))
        # Invented wording around the phrase users report; the status is a guess too.
        message = f"Has intentado entrar demasiadas veces. Prueba de nuevo en {minutes} minutos"
        return _login_error(401, message, email)
    if outcome is LoginOutcome.WRONG or member is None:
        return _login_error(401, "LOGIN_ERROR_LOGIN", email)
    cookie, token = state.open_session(
        member.email, call.now, fingerprint if isinstance(fingerprint, str) else None
    )
    payload = {
        "data": {
            "auth": {"authOK": True, "refreshToken": token},
            "userData": {"email": member.email, "name": member.name},
        }
    }
    return Answer(payload, cookies=_session_cookies(cookie), email=member.email)


async def set_refresh(state: SimState, call: Call) -> Answer:
    # Accepted and recorded; the box does not require it (only some clients call it).
    member = state.member_for_token(call.request.query.get("token", ""))
    return Answer({}, email=member.email if member else None)


async def token_update(state: SimState, call: Call) -> Answer:
    form = form_of(call)
    token = form.get("token", "")
    member = state.member_for_token(token)
    email = member.email if member else None
    fresh = state.refresh(token, call.now, form.get("fingerprint") or None)
    if fresh is None:
        return Answer(LOGOUT, email=email)
    cookie, new_token = fresh
    return Answer({"newToken": new_token}, cookies=_session_cookies(cookie), email=email)


async def whoami(state: SimState, call: Call) -> Answer:
    member = state.member_for_cookie(call.request.cookies.get(AUTH_COOKIE), call.now)
    if member is None:
        return Answer({"data": []})  # logged out is still HTTP 200
    return Answer({"data": {"email": member.email}}, email=member.email)


ACCOUNT_ROUTES: dict[tuple[str, str], Route] = {
    ("POST", "/api/login"): login,
    ("GET", "/setrefresh"): set_refresh,
    ("POST", "/api/tokenUpdate"): token_update,
    ("GET", "/api/whoami"): whoami,
}
