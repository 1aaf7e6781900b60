"""Fault injection on a box's endpoints: which fault a request meets, and how each one
reaches the client. Draws come from the box's seeded generator, in the order requests
are handled, so a test sending requests one by one sees the same faults every run."""

from __future__ import annotations

import asyncio
import random
import socket
import struct
from typing import Any

from aiohttp import web

from prebookd.sim.model import AUTH_COOKIE, Answer, Faults, dumps

FORBIDDEN = "forbidden"
ERROR = "error"
HTML = "html"
RESET = "reset"
TRUNCATED = "truncated"
SLOW_BODY = "slow_body"
GARBAGE = "garbage"
WRONG_TYPE = "wrong_type"
ENDLESS = "endless"
REFUSAL = "refusal"
UNLISTED = "unlisted"
UNAUTHORIZED = "unauthorized"
LOGIN_REDIRECT = "login_redirect"
THROTTLED = "throttled"
# Not drawn: a booking refused only because the box's clock is behind ours (recorded
# by the route, see Faults.clock_behind_ms).
CLOCK_BEHIND = "clock_behind"

# Answered in front of the application: the request is never processed.
IN_FRONT = frozenset({FORBIDDEN, ERROR, HTML, RESET, UNAUTHORIZED, LOGIN_REDIRECT, THROTTLED})
# Answered by the booking route itself (Call.fault), which records them; drawn for any
# other request they are no fault.
BY_THE_BOX = frozenset({REFUSAL, UNLISTED})
# The request is processed, and its answer mangled on the way back.
MANGLED = frozenset({TRUNCATED, SLOW_BODY, GARBAGE, WRONG_TYPE, ENDLESS})

# In this order: a rate added at the end leaves the draws of the others unchanged.
_KIND_OF_RATE = {
    "error_rate": ERROR,
    "html_rate": HTML,
    "reset_rate": RESET,
    "truncated_rate": TRUNCATED,
    "slow_body": SLOW_BODY,
    "garbage_rate": GARBAGE,
    "wrong_type_rate": WRONG_TYPE,
    "endless_rate": ENDLESS,
    "refusal_rate": REFUSAL,
    "unlisted_rate": UNLISTED,
    "unauthorized_rate": UNAUTHORIZED,
    "login_redirect_rate": LOGIN_REDIRECT,
    "throttled_rate": THROTTLED,
}
# Faults whose answer is drawn too (its bytes, its shape).
_DRAWN = frozenset({GARBAGE, WRONG_TYPE})
_ERROR_STATUSES = (500, 502, 503)
_STATUS_PAGES = {
    FORBIDDEN: (403, "403 Forbidden"),
    UNAUTHORIZED: (401, "401 Unauthorized"),
    THROTTLED: (429, "429 Too Many Requests"),
}

_PAGE = "<!DOCTYPE html>\n<html><head><title>{title}</title></head><body><h1>{title}</h1></body></html>\n"  # noqa: E501


def draw_fault(faults: Faults, rng: random.Random) -> str | None:
    """The fault this request meets, None for a normal answer."""
    if faults.forbidden:
        return FORBIDDEN
    rates = [(getattr(faults, name), kind) for name, kind in _KIND_OF_RATE.items()]
    if not any(rate for rate, _ in rates):
        return None  # no draw: a box without faults leaves the sequence untouched
    point, edge = rng.random(), 0.0
    for rate, kind in rates:
        edge += rate
        if point < edge:
            return kind
    return None


def draw_variant(fault: str | None, rng: random.Random) -> int:
    """The seed of what a garbage or wrong_type answer holds, drawn with the fault
    (before anything yields, so draws follow handling order); no draw for the others,
    whose sequences stay as they were."""
    return rng.getrandbits(32) if fault in _DRAWN else 0


def draw_delay(faults: Faults, rng: random.Random) -> float:
    """Seconds to hold the answer back."""
    return faults.latency + (rng.random() * faults.jitter if faults.jitter > 0 else 0.0)


def front_answer(
    request: web.BaseRequest, fault: str, rng: random.Random
) -> tuple[web.Response, int]:
    """The answer of a fault in IN_FRONT, and the HTTP status to record (0: none)."""
    if fault == RESET:
        if request.transport is not None:
            reset_transport(request.transport)
        # Never written: the transport is gone, and aiohttp drops a response it
        # cannot send without complaint.
        return web.Response(status=500), 0
    if fault == LOGIN_REDIRECT:
        # To the account site's login page (the simulator serves it), as a PHP site
        # sends a browser whose session it does not know.
        page, login_page = _PAGE.format(title="302 Found"), f"{request.url.origin()}/login"
        response = web.Response(status=302, text=page, content_type="text/html")
        response.headers["Location"] = login_page
        return response, 302
    if fault in _STATUS_PAGES:
        status, title = _STATUS_PAGES[fault]
    elif fault == ERROR:
        status = rng.choice(_ERROR_STATUSES)
        title = f"{status} Service Unavailable" if status == 503 else f"{status} Server Error"
    else:  # HTML: what a maintenance page or a login redirect looks like to a JSON client
        status, title = 200, "AimHarder - Estamos realizando tareas de mantenimiento"
    page = _PAGE.format(title=title)
    return web.Response(status=status, text=page, content_type="text/html"), status


def reset_transport(transport: asyncio.Transport) -> None:
    """Close a connection with an RST, as a crashed proxy does, not an orderly FIN."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # Linger 0: closing the socket sends an RST and drops what is unsent.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def truncated_answer(payload: Any) -> web.Response:
    text = dumps(payload)
    # Content-Length matches the cut, so the client reads a complete body that is not
    # valid JSON (rather than a short read, which is a transport error).
    return web.Response(text=text[: max(1, len(text) // 2)], content_type="application/json")


async def slow_answer(
    request: web.BaseRequest, payload: Any, seconds: float, cookies: dict[str, str]
) -> web.StreamResponse:
    """Headers at once, then the body one byte at a time, spread over `seconds`."""
    data = dumps(payload).encode()
    response = web.StreamResponse()
    response.content_type = "application/json"
    response.content_length = len(data)
    set_cookies(response, cookies)
    await response.prepare(request)
    step = seconds / len(data)
    try:
        for i in range(len(data)):
            await asyncio.sleep(step)
            await response.write(data[i : i + 1])
        await response.write_eof()
    except ConnectionError:
        pass  # the client gave up waiting, as a client with a timeout should
    return response


async def mangled_answer(
    request: web.BaseRequest, fault: str, answer: Answer, faults: Faults, variant: int
) -> web.StreamResponse:
    """The answer of a fault in MANGLED (the request was processed)."""
    if fault == SLOW_BODY:
        return await slow_answer(request, answer.payload, faults.slow_body_seconds, answer.cookies)
    if fault == ENDLESS:
        return await endless_answer(request, answer.payload, faults, answer.cookies)
    if fault == TRUNCATED:
        response = truncated_answer(answer.payload)
    elif fault == GARBAGE:
        response = garbage_answer(random.Random(variant))
    else:
        response = wrong_type_answer(answer.payload, random.Random(variant))
    set_cookies(response, answer.cookies)
    return response


def garbage_answer(rng: random.Random) -> web.Response:
    """HTTP 200 claiming JSON, with random bytes. The first is never valid UTF-8 (and
    the second not NUL, which would make a JSON reader guess UTF-16), so it is never
    JSON by chance."""
    body = b"\xc0" + bytes([rng.randrange(1, 256)]) + rng.randbytes(rng.randrange(16, 4096))
    return web.Response(body=body, content_type="application/json")


def wrong_type_answer(payload: Any, rng: random.Random) -> web.Response:
    """HTTP 200 "text/plain": valid JSON, but not the object a client expects."""
    book_state = payload.get("bookState", 1) if isinstance(payload, dict) else 1
    shapes: list[Any] = [[payload], book_state, dumps(payload), None, True]
    if rng.random() < 1 / 6:
        text = "[" * 5_000 + "]" * 5_000  # deeper than a recursive reader goes
    else:
        text = dumps(rng.choice(shapes))
    return web.Response(text=text, content_type="text/plain")


async def endless_answer(
    request: web.BaseRequest, payload: Any, faults: Faults, cookies: dict[str, str]
) -> web.StreamResponse:
    """HTTP 200, JSON that starts like the answer and never ends: chunks until the
    client gives up (or faults.endless_seconds, so the simulator stops one day)."""
    response = web.StreamResponse()
    response.content_type = "application/json"
    response.enable_chunked_encoding()
    set_cookies(response, cookies)
    await response.prepare(request)
    head = dumps(payload)
    head = (head[:-1] + ', "more": "') if head.endswith("}") else '{"more": "'
    chunk = b"9" * 16_384
    loop = asyncio.get_running_loop()
    deadline = loop.time() + faults.endless_seconds
    try:
        await response.write(head.encode())
        while loop.time() < deadline:
            await response.write(chunk)  # waits while the client reads no more
            await asyncio.sleep(faults.endless_chunk_interval)
    except ConnectionError:
        pass  # the client gave up, as it should
    return response


def set_cookies(response: web.StreamResponse, cookies: dict[str, str]) -> None:
    for name, value in cookies.items():
        response.set_cookie(name, value, path="/", httponly=name == AUTH_COOKIE or None)
