"""Control routes (/_sim/...) for tests and benchmarks that run the simulator in another
process. The same models validate `prebookd simulate --config`, so both accept the
same fields."""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from prebookd.sim.config import parse_day, parse_opens_at
from prebookd.sim.model import Answer, Balancer, Call, Faults, IdleAction, Reservation, SimClass
from prebookd.sim.network import BoxClock
from prebookd.sim.state import Route, SimState

CONTROL_PREFIX = "/_sim"


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)


_S = TypeVar("_S", bound=_Spec)


class BoxSpec(_Spec):
    subdomain: str = Field(min_length=1)
    box_id: str = ""
    name: str = ""
    daily_limit: int | None = Field(default=None, ge=0)
    late_cancel_window: float = Field(default=0.0, ge=0)
    limit_shows_waitlist: bool = False
    day_as_text: bool = False
    # The box's clock and distance (BoxClock, prebookd/sim/network.py), in ms.
    clock_offset_ms: float = Field(default=0.0, allow_inf_nan=False)
    delay_ms: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    jitter_ms: float = Field(default=0.0, ge=0, allow_inf_nan=False)


class BoxClockSpec(_Spec):
    """A box's clock and distance alone (POST /_sim/box_clock), its other settings kept;
    a field left out is 0."""

    box: str = Field(min_length=1)
    clock_offset_ms: float = Field(default=0.0, allow_inf_nan=False)
    delay_ms: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    jitter_ms: float = Field(default=0.0, ge=0, allow_inf_nan=False)


def _moment(value: Any) -> Any:
    """A time field as epoch seconds: `+5s`, `-20m`, ISO with an offset, or epoch."""
    return None if value is None else parse_opens_at(value, time.time())


class ClassSpec(_Spec):
    box: str = Field(min_length=1)
    session_id: str = Field(min_length=1)
    day: str  # 20261201, 2026-12-01, today, tomorrow or +5d (in Europe/Madrid)
    capacity: int | None = Field(default=None, ge=0)  # None: the simulator's default
    opens_at: float | None = None  # a time (see _moment); None: the simulator's default
    name: str = "WOD"
    time: str = "07:00 - 08:00"
    waitlist_capacity: int | None = Field(default=None, ge=0)  # None: the simulator's default
    starts_at: float | None = None  # a time (see _moment)
    class_id: int = 1
    coach: str = ""
    limit_shows_waitlist: bool | None = None  # None: as the box says

    _times = field_validator("opens_at", "starts_at", mode="before")(_moment)

    @field_validator("day", mode="before")
    @classmethod
    def _day(cls, value: Any) -> str:
        return parse_day(value, time.time())


class MemberSpec(_Spec):
    email: str = Field(min_length=1)
    auth_cookie: str | None = Field(default=None, min_length=1)  # None: a random one
    token: str | None = Field(default=None, min_length=1)
    password: str | None = None
    issued_at: float | None = None  # a time (see _moment); None: now
    name: str | None = None
    no_credits: bool = False
    user_id: int | None = None  # None: the next of a counter
    family_ids: list[str] | None = None
    boxes: list[str] | None = None  # subdomains; None: every box

    _times = field_validator("issued_at", mode="before")(_moment)


class FaultsSpec(_Spec):
    box: str = Field(min_length=1)
    latency: float = Field(default=0.0, ge=0)
    jitter: float = Field(default=0.0, ge=0)
    error_rate: float = Field(default=0.0, ge=0, le=1)
    html_rate: float = Field(default=0.0, ge=0, le=1)
    forbidden: bool = False
    reset_rate: float = Field(default=0.0, ge=0, le=1)
    truncated_rate: float = Field(default=0.0, ge=0, le=1)
    slow_body: float = Field(default=0.0, ge=0, le=1)
    slow_body_seconds: float = Field(default=30.0, ge=0)
    refusal_rate: float = Field(default=0.0, ge=0, le=1)
    refusal_message: str = Faults.refusal_message
    unlisted_rate: float = Field(default=0.0, ge=0, le=1)
    unauthorized_rate: float = Field(default=0.0, ge=0, le=1)
    login_redirect_rate: float = Field(default=0.0, ge=0, le=1)
    throttled_rate: float = Field(default=0.0, ge=0, le=1)
    clock_behind_ms: float = Field(default=0.0, ge=0)
    not_open_code: str = Faults.not_open_code  # Faults checks it
    dead_session_status: int = Faults.dead_session_status  # Faults checks it


class BalancerSpec(_Spec):
    """The whole Balancer: a field left out is set to its default."""

    idle_timeout: float | None = Field(default=None, ge=0)
    idle_action: IdleAction = "close"
    connect_delay: float = Field(default=0.0, ge=0)

    @field_validator("idle_action", mode="before")
    @classmethod
    def _number_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) else value  # idle_action = 408


def apply_box(sim: SimState, spec: BoxSpec) -> None:
    sim.add_box(**spec.model_dump())


def apply_box_clock(sim: SimState, spec: BoxClockSpec) -> None:
    sim.set_box_clock(spec.box, BoxClock(**spec.model_dump(exclude={"box"})))


def apply_class(sim: SimState, spec: ClassSpec) -> SimClass:
    cls = SimClass(
        **spec.model_dump(exclude={"box", "capacity", "opens_at", "waitlist_capacity"}),
        capacity=sim.default_capacity if spec.capacity is None else spec.capacity,
        opens_at=sim.default_opens_at if spec.opens_at is None else spec.opens_at,
        waitlist_capacity=(
            sim.default_waitlist_capacity
            if spec.waitlist_capacity is None
            else spec.waitlist_capacity
        ),
    )
    sim.add_class(spec.box, cls)
    return cls


def apply_member(sim: SimState, spec: MemberSpec) -> None:
    fields = spec.model_dump(exclude={"email", "auth_cookie"})
    sim.add_member(spec.email, spec.auth_cookie or secrets.token_hex(24), **fields)


def apply_faults(sim: SimState, spec: FaultsSpec) -> None:
    sim.set_faults(spec.box, Faults(**spec.model_dump(exclude={"box"})))


def apply_balancer(sim: SimState, spec: BalancerSpec) -> None:
    sim.set_balancer(Balancer(**spec.model_dump()))


async def _get_balancer(sim: SimState, call: Call) -> Answer:
    """What the balancer is set to, and what it did (see BalancerStats)."""
    done = dataclasses.asdict(sim.balancer_stats)
    return Answer({**dataclasses.asdict(sim.balancer), **done})


async def _get_requests(sim: SimState, call: Call) -> Answer:
    return Answer([dataclasses.asdict(r) for r in sim.requests])


async def _get_bookings(sim: SimState, call: Call) -> Answer:
    return Answer({name: _emails(sim.box(name).booked) for name in sim.boxes})


async def _get_waitlists(sim: SimState, call: Call) -> Answer:
    return Answer({name: _emails(sim.box(name).waiting) for name in sim.boxes})


def _emails(held: dict[str, list[Reservation]]) -> dict[str, list[str]]:
    return {session_id: [r.email for r in queue] for session_id, queue in held.items()}


async def _reset(sim: SimState, call: Call) -> Answer:
    sim.reset()
    return Answer({"ok": True})


def _setup_route(spec_type: type[_S], apply: Callable[[SimState, _S], object]) -> Route:
    """A control route that validates a JSON body as `spec_type` and applies it."""

    async def route(sim: SimState, call: Call) -> Answer:
        apply(sim, spec_type.model_validate_json(call.body))
        return Answer({"ok": True})

    return route


CONTROL_ROUTES: dict[tuple[str, str], Route] = {
    ("GET", f"{CONTROL_PREFIX}/requests"): _get_requests,
    ("GET", f"{CONTROL_PREFIX}/bookings"): _get_bookings,
    ("GET", f"{CONTROL_PREFIX}/waitlists"): _get_waitlists,
    ("POST", f"{CONTROL_PREFIX}/reset"): _reset,
    ("POST", f"{CONTROL_PREFIX}/boxes"): _setup_route(BoxSpec, apply_box),
    ("POST", f"{CONTROL_PREFIX}/box_clock"): _setup_route(BoxClockSpec, apply_box_clock),
    ("POST", f"{CONTROL_PREFIX}/classes"): _setup_route(ClassSpec, apply_class),
    ("POST", f"{CONTROL_PREFIX}/members"): _setup_route(MemberSpec, apply_member),
    ("POST", f"{CONTROL_PREFIX}/faults"): _setup_route(FaultsSpec, apply_faults),
    ("GET", f"{CONTROL_PREFIX}/balancer"): _get_balancer,
    ("POST", f"{CONTROL_PREFIX}/balancer"): _setup_route(BalancerSpec, apply_balancer),
}
