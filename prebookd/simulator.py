"""An AimHarder simulator: the server that tests, the demo and the benchmarks book against.

It speaks the box side of shared/AIMHARDER.md (today: `POST /api/book`) and records every
request with the instant its first byte arrived. One port serves many boxes: a box's
base URL is `{base}/{subdomain}`, so `POST {base}/{subdomain}/api/book` books there.
`/_sim/...` endpoints let a test in another process set it up and read what it saw.

Built on aiohttp's low-level server (no `web.Application`) with a route table keyed by
(method, path): adding login, tokenUpdate or cancelBook later is one function and one
table entry.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qsl

from aiohttp import web, web_protocol
from pydantic import BaseModel, ConfigDict, Field, ValidationError

CONTROL_PREFIX = "/_sim"
AUTH_COOKIE = "amhrdrauth"
# `clasesContratadas` names the classes of the member's plan, not the class booked;
# every simulated member has the same plan.
CONTRACTED = "WOD"

_dumps = functools.partial(json.dumps, ensure_ascii=False)


@dataclass
class SimClass:
    """One class session of a box."""

    session_id: str
    day: str  # YYYYMMDD
    capacity: int
    opens_at: float  # epoch seconds: booking opens at this instant
    name: str = "WOD"
    time: str = "07:00 - 08:00"
    waitlist_capacity: int = 0  # not simulated yet: a full class answers -1


@dataclass(frozen=True)
class RecordedRequest:
    seq: int  # 0, 1, 2... in the order requests were answered (= arrival order, see _handle)
    arrived_at: float  # time.time() when the request's first byte arrived
    handled_at: float  # time.time() at handler entry
    box: str  # subdomain
    method: str
    path: str  # e.g. "/api/book", without the box prefix
    email: str | None  # member resolved from the amhrdrauth cookie, None if unknown
    session_id: str | None
    day: str | None
    answer: dict[str, Any]  # the JSON body answered


@dataclass
class _Box:
    subdomain: str
    box_id: str
    name: str
    classes: dict[str, SimClass] = field(default_factory=dict)
    bookings: dict[str, list[str]] = field(default_factory=dict)  # session id -> emails


@dataclass(frozen=True)
class _Call:
    """What a route handler gets: the parsed request plus the simulator's view of it."""

    request: web.BaseRequest
    arrived_at: float
    body: bytes
    box: _Box | None  # None for routes outside any box (control endpoints)


@dataclass(frozen=True)
class _Answer:
    payload: Any
    status: int = 200
    # What to record besides the answer; control endpoints are not recorded at all.
    email: str | None = None
    session_id: str | None = None
    day: str | None = None


Route = Callable[["Simulator", _Call], Awaitable[_Answer]]


# --- arrival stamping ---------------------------------------------------------------
#
# The simulator handles a burst one request at a time, so the time a handler starts
# includes its queueing behind every request before it (a burst written within 1 ms
# read as 26 ms late at the handler). The honest arrival time is when the bytes reach
# the protocol, before any parsing or scheduling, so the protocol stamps it there.


class _StampingRequestHandler(web_protocol.RequestHandler):
    __slots__ = ("first_byte_at",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.first_byte_at: float | None = None

    def data_received(self, data: bytes) -> None:
        # Clients do not pipeline: once the handler has read a request's body and
        # cleared the stamp, the next bytes on this connection start the next request.
        if self.first_byte_at is None:
            self.first_byte_at = time.time()
        super().data_received(data)


class _StampingServer(web.Server):
    def __call__(self) -> web_protocol.RequestHandler:
        return _StampingRequestHandler(self, loop=self._loop, **self._kwargs)


# --- answers (shared/AIMHARDER.md) --------------------------------------------------


def _refused(book_state: int, lang: str, message: str) -> dict[str, Any]:
    return {"clasesContratadas": CONTRACTED, "bookState": book_state, "errorMssg": message,
            "errorMssgLang": lang}  # fmt: skip


NOT_OPEN = _refused(
    -12, "ERROR_ANTELACION_CLIENTE", "No puedes reservar clases con más de 4 días de antelación"
)
ALREADY_BOOKED = _refused(
    -12, "NOPUEDESRESERVAMISMAHORA", "No puedes reservar dos clases a la misma hora"
)
# Invented: what AimHarder answers to a booking without `id` or `day` is not known.
BAD_PARAMETERS = _refused(-12, "ERROR_PARAMETROS", "Faltan parámetros de la reserva")
FULL = _refused(-1, "ERROR_CLASE_LLENA", "No quedan plazas libres en esta clase")
BOOKED = {"clasesContratadas": CONTRACTED, "hasPublicMemberships": 1, "bookState": 1}
LOGOUT = {"logout": 1}


class Simulator:
    """Boxes, their classes and members, served over HTTP; see the module docstring."""

    def __init__(self, *, default_capacity: int = 20, default_opens_at: float = 0.0) -> None:
        self.default_capacity = default_capacity
        self.default_opens_at = default_opens_at
        self.requests: list[RecordedRequest] = []
        self._boxes: dict[str, _Box] = {}
        self._members: dict[str, str] = {}  # auth cookie -> email
        self._reservation_ids = itertools.count(90_000_001)
        self._runner: web.ServerRunner | None = None
        self._base = ""

    # --- setup --------------------------------------------------------------------

    def add_box(self, subdomain: str, box_id: str = "", name: str = "") -> None:
        """Serve a box under `{base}/{subdomain}`; adding it again changes nothing."""
        if not subdomain or "/" in subdomain or f"/{subdomain}" == CONTROL_PREFIX:
            raise ValueError(f"invalid box subdomain: {subdomain!r}")
        if subdomain not in self._boxes:
            self._boxes[subdomain] = _Box(subdomain, box_id, name or subdomain)

    def add_class(self, subdomain: str, cls: SimClass) -> None:
        """Add or replace a class of a known box; bookings made so far are kept."""
        self._box(subdomain).classes[cls.session_id] = cls

    def add_member(self, email: str, auth_cookie: str) -> None:
        """`auth_cookie` is the value of the `amhrdrauth` cookie that identifies the member."""
        self._members[auth_cookie] = email

    @property
    def boxes(self) -> list[str]:
        return list(self._boxes)

    @property
    def members(self) -> list[str]:
        return sorted(set(self._members.values()))

    def bookings(self, subdomain: str, session_id: str) -> list[str]:
        """Emails booked in a class, in the order places were given."""
        return list(self._box(subdomain).bookings.get(session_id, []))

    def reset(self) -> None:
        """Forget recorded requests and bookings; boxes, classes and members stay."""
        self.requests.clear()
        for box in self._boxes.values():
            box.bookings.clear()

    def _box(self, subdomain: str) -> _Box:
        try:
            return self._boxes[subdomain]
        except KeyError:
            raise KeyError(f"unknown box {subdomain!r}") from None

    # --- serving ------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen and return the base URL, e.g. "http://127.0.0.1:PORT"."""
        if self._runner is not None:
            raise RuntimeError("simulator already started")
        server = _StampingServer(self._handle, access_log=None)
        # A short shutdown timeout: stop() must not wait on clients' idle keep-alives.
        runner = web.ServerRunner(server, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound_host, bound_port = runner.addresses[0][:2]
        self._base = f"http://{bound_host}:{bound_port}"
        return self._base

    @property
    def base_url(self) -> str:
        if not self._base:
            raise RuntimeError("simulator not started")
        return self._base

    def box_url(self, subdomain: str) -> str:
        """What goes in `boxes.base_url` for this box."""
        return f"{self.base_url}/{subdomain}"

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        # Both instants are kept: arrived_at is what the client is judged by, and
        # handled_at - arrived_at is this server's own queueing, so a benchmark can tell
        # a late client from a busy simulator.
        handled_at = time.time()
        protocol = request.protocol
        stamped = getattr(protocol, "first_byte_at", None)
        arrived_at = stamped if stamped is not None else handled_at
        body = await request.read()
        if isinstance(protocol, _StampingRequestHandler):
            protocol.first_byte_at = None  # read in full: the next bytes are the next request

        # Dispatch on (method, path): control endpoints by full path, box endpoints by
        # the path after the box prefix. Account-site endpoints (login, tokenUpdate)
        # will want a third table, looked up by full path like the control one.
        path = request.path
        control = path == CONTROL_PREFIX or path.startswith(CONTROL_PREFIX + "/")
        box: _Box | None = None
        if control:
            subdomain, route_path = "", path
            route = CONTROL_ROUTES.get((request.method, path))
        else:
            subdomain, _, rest = path.lstrip("/").partition("/")
            route_path = "/" + rest
            box = self._boxes.get(subdomain)
            route = BOX_ROUTES.get((request.method, route_path)) if box else None

        if route is None:
            what = "box" if box is None and not control else "endpoint"
            answer = _Answer({"error": f"unknown {what}: {request.method} {path}"}, status=404)
        else:
            try:
                answer = await route(self, _Call(request, arrived_at, body, box))
            except (ValidationError, ValueError, KeyError) as exc:
                answer = _Answer({"error": one_line_error(exc)}, status=400)

        # Handlers start in the order requests arrived (one process, FIFO scheduling)
        # and nothing from reading the body to here yields when the body came with the
        # headers, so seq and the places given follow arrival order.
        if not control:
            self.requests.append(
                RecordedRequest(
                    seq=len(self.requests),
                    arrived_at=arrived_at,
                    handled_at=handled_at,
                    box=subdomain,
                    method=request.method,
                    path=route_path,
                    email=answer.email,
                    session_id=answer.session_id,
                    day=answer.day,
                    answer=dict(answer.payload),  # not the shared constants
                )
            )
        return web.json_response(answer.payload, status=answer.status, dumps=_dumps)


def one_line_error(exc: Exception) -> str:
    """A validation or lookup error as one line, for a 400 answer or a UsageError."""
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
        )
    return str(exc.args[0]) if exc.args else type(exc).__name__


# --- box routes ---------------------------------------------------------------------


async def _book(sim: Simulator, call: _Call) -> _Answer:
    assert call.box is not None
    box = call.box
    form = dict(parse_qsl(call.body.decode("utf-8", "replace"), keep_blank_values=True))
    session_id, day = form.get("id") or None, form.get("day") or None
    email = sim._members.get(call.request.cookies.get(AUTH_COOKIE, ""))
    if email is None:  # a dead session is not an HTTP error on AimHarder
        return _Answer(LOGOUT, session_id=session_id, day=day)

    def answer(payload: dict[str, Any]) -> _Answer:
        return _Answer(payload, email=email, session_id=session_id, day=day)

    if session_id is None or day is None:
        return answer(BAD_PARAMETERS)
    cls = box.classes.get(session_id)
    if cls is None:  # ad-hoc use: any session id is a class with the defaults
        cls = SimClass(session_id, day, sim.default_capacity, sim.default_opens_at)
        box.classes[session_id] = cls
    # Compare the first-byte time, never the handler time: a request that reached the
    # server before the instant was early, however long it then queued here.
    if call.arrived_at < cls.opens_at:
        return answer(NOT_OPEN)
    booked = box.bookings.setdefault(session_id, [])
    if email in booked:
        return answer(ALREADY_BOOKED)
    if len(booked) >= cls.capacity:
        return answer(FULL)
    booked.append(email)
    return answer({**BOOKED, "id": str(next(sim._reservation_ids))})


BOX_ROUTES: dict[tuple[str, str], Route] = {
    ("POST", "/api/book"): _book,
}


# --- control routes (/_sim/...) -----------------------------------------------------
#
# For tests and benchmarks that run the simulator in another process. The same
# models validate `prebookd simulate --config`, so both accept the same fields.


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)


_S = TypeVar("_S", bound=_Spec)


class BoxSpec(_Spec):
    subdomain: str = Field(min_length=1)
    box_id: str = ""
    name: str = ""


class ClassSpec(_Spec):
    box: str = Field(min_length=1)
    session_id: str = Field(min_length=1)
    day: str = Field(pattern=r"^\d{8}$")
    capacity: int | None = Field(default=None, ge=0)  # None: the simulator's default
    opens_at: float | None = None  # epoch seconds; None: the simulator's default
    name: str = "WOD"
    time: str = "07:00 - 08:00"
    waitlist_capacity: int = Field(default=0, ge=0)


class MemberSpec(_Spec):
    email: str = Field(min_length=1)
    auth_cookie: str = Field(min_length=1)


def apply_box(sim: Simulator, spec: BoxSpec) -> None:
    sim.add_box(spec.subdomain, spec.box_id, spec.name)


def apply_class(sim: Simulator, spec: ClassSpec) -> SimClass:
    cls = SimClass(
        **spec.model_dump(exclude={"box", "capacity", "opens_at"}),
        capacity=sim.default_capacity if spec.capacity is None else spec.capacity,
        opens_at=sim.default_opens_at if spec.opens_at is None else spec.opens_at,
    )
    sim.add_class(spec.box, cls)
    return cls


def apply_member(sim: Simulator, spec: MemberSpec) -> None:
    sim.add_member(spec.email, spec.auth_cookie)


async def _get_requests(sim: Simulator, call: _Call) -> _Answer:
    return _Answer([dataclasses.asdict(r) for r in sim.requests])


async def _get_bookings(sim: Simulator, call: _Call) -> _Answer:
    return _Answer({name: dict(box.bookings) for name, box in sim._boxes.items()})


async def _reset(sim: Simulator, call: _Call) -> _Answer:
    sim.reset()
    return _Answer({"ok": True})


def _setup_route(spec_type: type[_S], apply: Callable[[Simulator, _S], object]) -> Route:
    """A control route that validates a JSON body as `spec_type` and applies it."""

    async def route(sim: Simulator, call: _Call) -> _Answer:
        apply(sim, spec_type.model_validate_json(call.body))
        return _Answer({"ok": True})

    return route


CONTROL_ROUTES: dict[tuple[str, str], Route] = {
    ("GET", f"{CONTROL_PREFIX}/requests"): _get_requests,
    ("GET", f"{CONTROL_PREFIX}/bookings"): _get_bookings,
    ("POST", f"{CONTROL_PREFIX}/reset"): _reset,
    ("POST", f"{CONTROL_PREFIX}/boxes"): _setup_route(BoxSpec, apply_box),
    ("POST", f"{CONTROL_PREFIX}/classes"): _setup_route(ClassSpec, apply_class),
    ("POST", f"{CONTROL_PREFIX}/members"): _setup_route(MemberSpec, apply_member),
}
