"""The simulator's data: classes, members, credentials, reservations, boxes, faults, and
the answers of shared/AIMHARDER.md. No I/O here; see prebookd/sim/server.py."""

from __future__ import annotations

import functools
import json
import math
import random
from collections import Counter
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from aiohttp import web
from pydantic import ValidationError

from prebookd.sim.network import BoxClock

AUTH_COOKIE = "amhrdrauth"
# `clasesContratadas` names the classes of the member's plan, not the class booked;
# every simulated member has the same plan.
CONTRACTED = "WOD"

dumps = functools.partial(json.dumps, ensure_ascii=False)


@dataclass
class SimClass:
    """One class session of a box."""

    session_id: str
    day: str  # YYYYMMDD
    capacity: int
    opens_at: float  # epoch seconds: booking opens at this instant
    name: str = "WOD"
    time: str = "07:00 - 08:00"
    waitlist_capacity: int = 0  # places on the waiting list once the class is full
    starts_at: float | None = None  # epoch seconds; None: no late-cancel window applies
    class_id: int = 1  # the class *type* (bookings[].classId), shared by its sessions
    coach: str = ""
    # The listing's `limit` as "16 (3)" (places, waiting-list places) rather than "16";
    # None: as the box says (Box.limit_shows_waitlist).
    limit_shows_waitlist: bool | None = None


@dataclass(frozen=True)
class RecordedRequest:
    seq: int  # 0, 1, 2... in the order requests were answered (= arrival order, see _handle)
    # time.time() when the request's first byte arrived at the box: when it reached the
    # simulator, plus the box's one-way delay (BoxClock; none by default)
    arrived_at: float
    handled_at: float  # time.time() at handler entry (after that delay)
    box: str  # subdomain; "" for the account site (login, tokenUpdate, whoami)
    method: str
    path: str  # e.g. "/api/book", without the box prefix
    email: str | None  # member resolved from the cookie, token or login; None if unknown
    session_id: str | None
    day: str | None
    answer: dict[str, Any]  # the JSON body answered; {} when it was not JSON (a fault, HTML)
    fault: str | None = None  # the fault injected (see Faults), None for a normal answer
    status: int = 200  # HTTP status answered; 0 when the connection was reset
    connection_opened_at: float | None = None  # when the request's connection was accepted
    connection_served: int = 0  # requests that connection carried before this one
    # arrived_at by the box's clock (BoxClock.clock_offset_ms, less Faults.clock_behind_ms):
    # what the box judges opening by; arrival minus opens_at is how early or late it was
    box_arrived_at: float | None = None
    # time.time() when the first byte reached the simulator's socket, before the box's
    # one-way delay (equal to arrived_at without one): when the client sent it, on loopback
    received_at: float | None = None


@dataclass(frozen=True)
class Faults:
    """What goes wrong on one box's endpoints. Rates are fractions of requests, drawn
    from the simulator's seeded random generator; at most one fault per request.

    forbidden, error, html, reset, unauthorized, login_redirect and throttled answer in
    front of the application (a load balancer, a WAF, the PHP session layer): the
    request is not processed, nothing is booked. refusal and unlisted are the box's own
    refusals of a booking (`/api/book` only; drawn on another endpoint they are no
    fault): nothing is booked either. truncated, slow_body, garbage, wrong_type and
    endless mangle the answer on its way back: the request *was* processed, so a client
    that gives up on them may have booked without knowing it.
    """

    latency: float = 0.0  # seconds added before every answer (the decision is not delayed)
    jitter: float = 0.0  # plus up to this many seconds, drawn uniformly
    error_rate: float = 0.0  # HTTP 5xx with an HTML body
    html_rate: float = 0.0  # HTTP 200 with an HTML page instead of JSON
    forbidden: bool = False  # HTTP 403 with an HTML body for everything (foreign IPs)
    reset_rate: float = 0.0  # the connection is closed without an answer
    truncated_rate: float = 0.0  # HTTP 200, JSON cut short (Content-Length matches the cut)
    slow_body: float = 0.0  # the answer's body trickles out over slow_body_seconds
    slow_body_seconds: float = 30.0
    garbage_rate: float = 0.0  # HTTP 200 "application/json", random bytes (never UTF-8)
    # HTTP 200 "text/plain", valid JSON of the wrong shape: the answer in a list, its
    # bookState alone, the answer encoded twice (a JSON string), null, true, or a list
    # nested thousands deep
    wrong_type_rate: float = 0.0
    # HTTP 200, a chunked JSON body that never ends: a chunk every
    # endless_chunk_interval (0: as fast as the client reads) until the client gives
    # up, or endless_seconds have passed
    endless_rate: float = 0.0
    endless_chunk_interval: float = 0.01
    endless_seconds: float = 60.0
    # HTTP 200 {"errorMssg": refusal_message} with no bookState: a box rule refuses
    # (a penalty after a no-show, a monthly maximum; the default wording is invented)
    refusal_rate: float = 0.0
    refusal_message: str = "No puedes reservar: tienes una penalización por no asistir a una clase"
    # HTTP 200, bookState -12 with an errorMssgLang no client lists
    unlisted_rate: float = 0.0
    unauthorized_rate: float = 0.0  # HTTP 401 (a dead session, as some boxes say it)
    login_redirect_rate: float = 0.0  # HTTP 302 to the account site's login page
    throttled_rate: float = 0.0  # HTTP 429 with an HTML body
    # AimHarder's clock runs this many ms behind ours: booking opens this long after a
    # class's opens_at, and "not open yet" is answered until then. Added to the box's
    # own clock (BoxClock.clock_offset_ms, subtracted), its Date header included.
    clock_behind_ms: float = 0.0
    # The -12 code of this box's "not open yet" answer (see NOT_OPEN_ANSWERS).
    not_open_code: str = "ERROR_ANTELACION_CLIENTE"
    # How this box's booking says a session is dead: 200 `{"logout": 1}` (most boxes),
    # or HTTP 401 (some do), the member's own dead session, not a fault drawn at random.
    dead_session_status: int = 200

    RATES = (
        "error_rate",
        "html_rate",
        "reset_rate",
        "truncated_rate",
        "slow_body",
        "garbage_rate",
        "wrong_type_rate",
        "endless_rate",
        "refusal_rate",
        "unlisted_rate",
        "unauthorized_rate",
        "login_redirect_rate",
        "throttled_rate",
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool | str):
                continue
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{f.name} must be a finite number >= 0, not {value!r}")
        if sum(getattr(self, name) for name in self.RATES) > 1.0 + 1e-9:
            raise ValueError(f"the fault rates ({', '.join(self.RATES)}) add up to more than 1")
        if self.dead_session_status not in (200, 401):
            raise ValueError("dead_session_status must be 200 or 401")
        if self.not_open_code not in NOT_OPEN_ANSWERS:
            raise ValueError(f"not_open_code must be one of {', '.join(NOT_OPEN_ANSWERS)}")


# What the balancer does to a connection idle for too long: an orderly close (FIN), an
# answer nobody asked for then a close, or an abortive close (RST).
IdleAction = Literal["close", "408", "reset"]
IDLE_ACTIONS: tuple[IdleAction, ...] = ("close", "408", "reset")


@dataclass(frozen=True)
class Balancer:
    """The load balancer in front of the whole simulator (AWS's, in front of AimHarder):
    it acts on connections, and before a request's first byte arrives a connection
    belongs to no box. The default does nothing.

    idle_timeout: seconds a connection may stay idle, no byte moving either way, whether
    it is fresh (no request yet) or kept alive between requests; then idle_action is done
    to it. Never while a request is being received or answered. None or 0: never.

    idle_action: "close" closes the connection in order (FIN); "408" writes the
    `408 Request Timeout` an AWS load balancer sends, then closes; "reset" aborts the
    connection (RST).

    connect_delay: seconds the simulator leaves a new connection unread. Not a slow TCP
    handshake (that needs root and netem): the kernel accepts at once, so the client's
    connect returns at once, and whatever it sends waits in the socket until the delay is
    over; a request is stamped as arriving when it is read, after the delay. The idle
    clock starts after the delay too.
    """

    idle_timeout: float | None = None
    idle_action: IdleAction = "close"
    connect_delay: float = 0.0

    def __post_init__(self) -> None:
        for name in ("idle_timeout", "connect_delay"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, not {value!r}")
        if self.idle_action not in IDLE_ACTIONS:
            raise ValueError(f"idle_action must be one of {', '.join(IDLE_ACTIONS)}")


@dataclass
class BalancerStats:
    """What the balancer did, since the simulator started or was last reset."""

    idle_closed: int = 0  # idle connections closed (idle_action "close")
    idle_408: int = 0  # idle connections answered 408 and closed
    idle_reset: int = 0  # idle connections reset

    def count(self, action: IdleAction) -> None:
        name = {"close": "idle_closed", "408": "idle_408", "reset": "idle_reset"}[action]
        setattr(self, name, getattr(self, name) + 1)


@dataclass(frozen=True)
class Credential:
    """An auth cookie or a refresh token: whose, and since when."""

    email: str
    issued_at: float
    fingerprint: str | None = None  # recorded, not checked: what AimHarder checks is unknown


@dataclass
class Member:
    email: str
    name: str
    user_id: int  # userData.id, whoami's id
    password: str | None = None  # None: this member cannot log in
    no_credits: bool = False
    # The family members this account may book for (the booking's familyId)
    family_ids: tuple[str, ...] = ()
    # Subdomains of the boxes the member belongs to (login's roles); None: every box
    boxes: tuple[str, ...] | None = None
    failed_logins: int = 0  # consecutive, reset by a successful login or when a lock ends
    locked_until: float = 0.0


@dataclass(frozen=True)
class Reservation:
    idres: str
    session_id: str
    day: str
    email: str  # the account that booked (and may cancel)
    family_id: str = ""  # whose place it is: "" the account holder, else a family member

    @property
    def holder(self) -> tuple[str, str]:
        """Who holds the place: (account e-mail, family id)."""
        return self.email, self.family_id


@dataclass
class Box:
    subdomain: str
    box_id: str
    name: str
    daily_limit: int | None = None  # bookings (and waits) per member per day; None: no limit
    late_cancel_window: float = 0.0  # seconds before starts_at when cancelling costs the credit
    limit_shows_waitlist: bool = False  # the listing's limit as "16 (3)" (see SimClass)
    day_as_text: bool = False  # the listing's day as "martes, 1 de diciembre"
    classes: dict[str, SimClass] = field(default_factory=dict)
    # session id -> reservations, in the order places were given / the queue formed
    booked: dict[str, list[Reservation]] = field(default_factory=dict)
    waiting: dict[str, list[Reservation]] = field(default_factory=dict)
    # Indexes over booked + waiting, so a burst of N bookings stays O(N).
    by_idres: dict[str, Reservation] = field(default_factory=dict)
    # (session id, *holder) -> reservation; (*holder, day) -> places and waits held
    by_member: dict[tuple[str, str, str], Reservation] = field(default_factory=dict)
    per_day: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    faults: Faults = field(default_factory=Faults)
    rng: random.Random = field(default_factory=random.Random)
    clock: BoxClock = field(default_factory=BoxClock)  # its clock and distance (issue 18)
    net_rng: random.Random = field(default_factory=random.Random)  # the delays' jitter

    @property
    def clock_offset(self) -> float:
        """Seconds the box's clock is ahead of real time (negative: behind)."""
        return (self.clock.clock_offset_ms - self.faults.clock_behind_ms) / 1000

    def hold(self, res: Reservation, *, waiting: bool) -> None:
        (self.waiting if waiting else self.booked).setdefault(res.session_id, []).append(res)
        self.by_idres[res.idres] = res
        self.by_member[(res.session_id, *res.holder)] = res
        self.per_day[(*res.holder, res.day)] += 1

    def release(self, res: Reservation) -> None:
        for queue in (self.booked, self.waiting):
            held = queue.get(res.session_id, [])
            if res in held:
                held.remove(res)
        del self.by_idres[res.idres]
        del self.by_member[(res.session_id, *res.holder)]
        self.per_day[(*res.holder, res.day)] -= 1

    def is_waiting(self, res: Reservation) -> bool:
        return res in self.waiting.get(res.session_id, [])

    def clear_reservations(self) -> None:
        for index in (self.booked, self.waiting, self.by_idres, self.by_member, self.per_day):
            index.clear()


@dataclass(frozen=True)
class Call:
    """What a route gets: the request as read, plus where the simulator stands.
    arrived_at and now are real time; a box decides by its own clock (box_arrived_at,
    box_now)."""

    request: web.BaseRequest
    arrived_at: float
    now: float  # the handler's clock: ages and locks are judged by it
    body: bytes
    box: Box | None  # None for routes outside any box (account site, control)
    # The fault the box drew for this request, for the faults the route itself answers
    # (refusal, unlisted: see Faults); None otherwise.
    fault: str | None = None

    @property
    def box_arrived_at(self) -> float:
        return self.arrived_at + (self.box.clock_offset if self.box else 0.0)

    @property
    def box_now(self) -> float:
        return self.now + (self.box.clock_offset if self.box else 0.0)


@dataclass(frozen=True)
class Answer:
    payload: Any  # the JSON body; with `html`, what is recorded ({} for a page)
    status: int = 200
    cookies: dict[str, str] = field(default_factory=dict)  # Set-Cookie name -> value
    html: str | None = None  # an HTML page answered instead of JSON (the old login site)
    # What to record besides the answer; control endpoints are not recorded at all.
    email: str | None = None
    session_id: str | None = None
    day: str | None = None
    fault: str | None = None  # the fault the route answered (see Call.fault, clock_behind_ms)


def one_line_error(exc: Exception) -> str:
    """A validation or lookup error as one line, for a 400 answer or a UsageError."""
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
        )
    return str(exc.args[0]) if exc.args else type(exc).__name__


# --- answers (shared/AIMHARDER.md) --------------------------------------------------


def refused(book_state: int, lang: str, message: str) -> dict[str, Any]:
    return {"clasesContratadas": CONTRACTED, "bookState": book_state, "errorMssg": message,
            "errorMssgLang": lang}  # fmt: skip


NOT_OPEN = refused(
    -12, "ERROR_ANTELACION_CLIENTE", "No puedes reservar clases con más de 4 días de antelación"
)
ALREADY_BOOKED = refused(
    -12, "NOPUEDESRESERVAMISMAHORA", "No puedes reservar dos clases a la misma hora"
)
# Invented, like the -1 and -2 texts: what AimHarder answers to a booking without `id`
# or `day` is not known, and only bookState matters for -1 and -2.
BAD_PARAMETERS = refused(-12, "ERROR_PARAMETROS", "Faltan parámetros de la reserva")
FULL = refused(-1, "ERROR_CLASE_LLENA", "No quedan plazas libres en esta clase")
NO_CREDITS = refused(-2, "ERROR_SIN_CREDITOS", "No te quedan créditos para esta clase")
BOOKED = {"clasesContratadas": CONTRACTED, "hasPublicMemberships": 1, "bookState": 1}
LOGOUT = {"logout": 1}
# Invented codes and texts, in AimHarder's style (Spanish, upper case), for requests it
# must refuse but whose answers no capture shows: a session id the box does not have,
# a `day` that is not the session's, a familyId that is not one of the member's. Each
# is a -12 (AimHarder's catch-all) with an errorMssgLang no client lists, so a client
# reads it as a refusal, never as a booking.
UNKNOWN_CLASS = refused(-12, "ERROR_CLASE_NO_EXISTE", "La clase que intentas reservar no existe")
WRONG_DAY = refused(-12, "ERROR_FECHA_CLASE", "La fecha no corresponde a la clase")
NOT_YOUR_FAMILY = refused(
    -12, "ERROR_FAMILIAR_NO_VALIDO", "El familiar indicado no pertenece a tu cuenta"
)
# A -12 whose code no client lists (Faults.unlisted_rate), in the shape reported for
# it: no clasesContratadas.
NOT_AVAILABLE = {
    "bookState": -12,
    "errorMssgLang": "ERROR_RESERVA_NO_DISPONIBLE",
    "errorMssg": "Esta reserva no está disponible en este momento",
}
# A box's "not open yet", by its Faults.not_open_code.
NOT_OPEN_ANSWERS: dict[str, dict[str, Any]] = {
    "ERROR_ANTELACION_CLIENTE": NOT_OPEN,
    "ERROR_ANTELACION_CLIENTE_HORAS": refused(
        -12,
        "ERROR_ANTELACION_CLIENTE_HORAS",
        "No puedes reservar clases con más de 96 horas de antelación",
    ),
    "ERROR_RESERVA_NO_DISPONIBLE": NOT_AVAILABLE,
}


def refusal(message: str) -> dict[str, Any]:
    """A box rule's refusal: errorMssg alone, no bookState."""
    return {"errorMssg": message}
