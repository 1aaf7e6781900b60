"""The account site's endpoints (shared/AIMHARDER.md "Session"): the JSON login,
setrefresh, tokenUpdate, whoami, and the older HTML login form (prebookd/sim/pages.py).
Served at the root of the simulator's port, so the account base URL
(`PREBOOKD_AIMHARDER_URL`) is the simulator's base URL."""

from __future__ import annotations

import json
import math
import secrets
from typing import Any

from prebookd.sim.box import form_of
from prebookd.sim.model import AUTH_COOKIE, LOGOUT, Answer, Call, Member
from prebookd.sim.pages import logged_in_page, login_form_page
from prebookd.sim.state import LoginOutcome, Route, SimState

# Invented wording around the phrase users report ("demasiadas veces").
LOCKED_MESSAGE = "Has intentado entrar demasiadas veces. Prueba de nuevo en {minutes} minutos"


def _login_error(code: int, message: str, email: str | None = None) -> Answer:
    return Answer({"error": {"code": code, "message": message}}, status=code, email=email)


def _session_cookies(auth_cookie: str) -> dict[str, str]:
    # The load-balancer and PHP cookies come along, so a client is seen storing and
    # sending back every cookie it was given, not just amhrdrauth. AWSALBCORS is the
    # same stickiness value as AWSALB (AWS sets both; the CORS one for cross-site use).
    stickiness = secrets.token_urlsafe(24)
    return {
        AUTH_COOKIE: auth_cookie,
        "AWSALB": stickiness,
        "AWSALBCORS": stickiness,
        "PHPSESSID": secrets.token_hex(13),
    }


def _user_data(state: SimState, call: Call, member: Member) -> dict[str, Any]:
    """The member as login's data.userData and whoami's rows show them: `roles` lists
    the boxes they belong to, each with the URL clients then call, the simulator's
    own (AimHarder's is https://SUB.aimharder.com)."""
    origin = call.request.url.origin()
    roles = [
        {
            "boid": int(box.box_id) if box.box_id.isdigit() else box.box_id,
            "centre_url": f"{origin}/{box.subdomain}",
            "name": box.name,
            "role": "client",
        }
        for box in state.boxes_of(member)
    ]
    return {"id": member.user_id, "email": member.email, "name": member.name, "roles": roles}


def _minutes_locked(member: Member, now: float) -> int:
    return max(1, math.ceil((member.locked_until - now) / 60))


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
        # The status is a guess, like the wording.
        message = LOCKED_MESSAGE.format(minutes=_minutes_locked(member, call.now))
        return _login_error(401, message, email)
    if outcome is LoginOutcome.WRONG or member is None:
        return _login_error(401, "LOGIN_ERROR_LOGIN", email)
    cookie, token = state.open_session(
        member.email, call.now, fingerprint if isinstance(fingerprint, str) else None
    )
    payload = {
        "data": {
            "auth": {"authOK": True, "refreshToken": token},
            "userData": _user_data(state, call, member),
        }
    }
    return Answer(payload, cookies=_session_cookies(cookie), email=member.email)


async def html_login(state: SimState, call: Call) -> Answer:
    """The older login form (`POST /login`, fields mail, pw, login). Success: the
    amhrdrauth cookie, and the page the old site answers, which hands the refresh token
    to setrefresh in an iframe and redirects in script; a failure: the form again,
    with the error in #loginErrors. HTTP 200 either way."""
    form = form_of(call)
    if "login" not in form:  # the submit button's field: without it, no attempt
        return Answer({}, html=login_form_page())
    outcome, member = state.login(form.get("mail", ""), form.get("pw", ""), call.now)
    email = member.email if member else None
    if outcome is LoginOutcome.LOCKED:
        assert member is not None
        message = LOCKED_MESSAGE.format(minutes=_minutes_locked(member, call.now))
        return Answer({}, html=login_form_page(message), email=email)
    if outcome is LoginOutcome.WRONG or member is None:
        # Invented wording: the old site's text is not captured.
        page = login_form_page("El correo electrónico o la contraseña no son correctos")
        return Answer({}, html=page, email=email)
    fingerprint = form.get("loginfingerprint") or None
    cookie, token = state.open_session(member.email, call.now, fingerprint)
    page = logged_in_page(str(call.request.url.origin()), token, fingerprint or "")
    return Answer({}, html=page, cookies=_session_cookies(cookie), email=member.email)


async def login_form(state: SimState, call: Call) -> Answer:
    # Where the login_redirect fault sends a client (`GET /login`).
    return Answer({}, html=login_form_page())


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
    return Answer({"data": [_user_data(state, call, member)]}, email=member.email)


ACCOUNT_ROUTES: dict[tuple[str, str], Route] = {
    ("POST", "/api/login"): login,
    ("POST", "/login"): html_login,
    ("GET", "/login"): login_form,
    ("GET", "/setrefresh"): set_refresh,
    ("POST", "/api/tokenUpdate"): token_update,
    ("GET", "/api/whoami"): whoami,
}
