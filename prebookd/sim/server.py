"""An AimHarder simulator: the server that tests, the demo and the benchmarks run against.

It speaks shared/AIMHARDER.md on one port and records every request with the instant
its first byte arrived:

- the account site at the root: `POST /api/login`, `GET /setrefresh`,
  `POST /api/tokenUpdate`, `GET /api/whoami` (prebookd/sim/account.py), so the
  account base URL is the simulator's base URL;
- many boxes, each under `{base}/{subdomain}`: `GET .../api/bookings`,
  `POST .../api/book`, `POST .../api/cancelBook`, and `GET`/`HEAD` of the base URL
  itself (prebookd/sim/box.py), with per-box fault injection
  (prebookd/sim/faults.py) and a per-box clock and distance (BoxClock,
  prebookd/sim/network.py): each answer's `Date` is the box's clock;
- a load balancer in front of them all, which may close, answer 408 on, or reset
  idle connections (Balancer; prebookd/sim/connection.py);
- `/_sim/...` for a test in another process to set it up and read what it saw
  (prebookd/sim/control.py).

State and decisions live in `SimState` (prebookd/sim/state.py), which `Simulator`
extends with the HTTP server. Built on aiohttp's low-level server (no
`web.Application`) with route tables keyed by (method, path).
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web
from pydantic import ValidationError

from prebookd.sim.account import ACCOUNT_ROUTES
from prebookd.sim.box import BOX_ROUTES
from prebookd.sim.connection import Connection, ConnectionServer
from prebookd.sim.control import (
    CONTROL_PREFIX,
    CONTROL_ROUTES,
    BalancerSpec,
    BoxSpec,
    ClassSpec,
    FaultsSpec,
    MemberSpec,
    apply_balancer,
    apply_box,
    apply_class,
    apply_faults,
    apply_member,
)
from prebookd.sim.faults import (
    BY_THE_BOX,
    IN_FRONT,
    MANGLED,
    draw_delay,
    draw_fault,
    draw_variant,
    front_answer,
    mangled_answer,
    set_cookies,
)
from prebookd.sim.model import (
    AUTH_COOKIE,
    CONTRACTED,
    Answer,
    Balancer,
    BalancerStats,
    Call,
    Faults,
    RecordedRequest,
    SimClass,
    dumps,
    one_line_error,
)
from prebookd.sim.network import BoxClock, DatedRequest, http_date, wait_until
from prebookd.sim.state import Route, SimState

__all__ = [
    "ACCOUNT_SITE",
    "AUTH_COOKIE",
    "CONTRACTED",
    "CONTROL_PREFIX",
    "Balancer",
    "BalancerSpec",
    "BalancerStats",
    "BoxClock",
    "BoxSpec",
    "ClassSpec",
    "Faults",
    "FaultsSpec",
    "MemberSpec",
    "RecordedRequest",
    "SimClass",
    "Simulator",
    "apply_balancer",
    "apply_box",
    "apply_class",
    "apply_faults",
    "apply_member",
    "one_line_error",
]

ACCOUNT_SITE = ""  # RecordedRequest.box of the account site's requests


class Simulator(SimState):
    """Boxes, their classes and members, served over HTTP; see the module docstring.

    Settings (all keyword arguments, see SimState): default_capacity,
    default_opens_at, default_waitlist_capacity, session_max_age, token_max_age,
    max_login_failures, login_lock_time, seed, balancer (a Balancer: what happens to
    idle connections, see prebookd/sim/model.py).
    """

    _runner: web.ServerRunner | None = None
    _server: ConnectionServer | None = None
    _base: str = ""

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen and return the base URL, e.g. "http://127.0.0.1:PORT"."""
        if self._runner is not None:
            raise RuntimeError("simulator already started")
        server = ConnectionServer(self._handle, sim=self, access_log=None)
        # A short shutdown timeout: stop() must not wait on clients' idle keep-alives
        # (nor on a slow_body answer still trickling out).
        runner = web.ServerRunner(server, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner, self._server = runner, server
        bound_host, bound_port = runner.addresses[0][:2]
        self._base = f"http://{bound_host}:{bound_port}"
        return self._base

    @property
    def base_url(self) -> str:
        """The account site's base URL (PREBOOKD_AIMHARDER_URL) and the boxes' prefix."""
        if not self._base:
            raise RuntimeError("simulator not started")
        return self._base

    def box_url(self, subdomain: str) -> str:
        """What goes in `boxes.base_url` for this box."""
        return f"{self.base_url}/{subdomain}"

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner, self._server = self._runner, None, None
            await runner.cleanup()

    def set_balancer(self, balancer: Balancer) -> None:
        super().set_balancer(balancer)
        for connection in self._server.connections if self._server else []:
            if isinstance(connection, Connection):
                connection.watch_idle()

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            return await self._answer(request)
        finally:
            # The answer is written next: for the balancer, the connection is idle again.
            if isinstance(request.protocol, Connection):
                request.protocol.answered()

    async def _answer(self, request: web.BaseRequest) -> web.StreamResponse:
        # Both instants are kept: arrived_at is what the client is judged by, and
        # handled_at - arrived_at is this server's own queueing, so a benchmark can tell
        # a late client from a busy simulator.
        handled_at = time.time()
        protocol = request.protocol
        stamped = getattr(protocol, "first_byte_at", None)
        arrived_at = stamped if stamped is not None else handled_at
        body = await request.read()
        if isinstance(protocol, Connection):
            protocol.first_byte_at = None  # read in full: the next bytes are the next request

        # Dispatch on (method, path): control and account-site endpoints by full path,
        # box endpoints by the path after the box prefix.
        path = request.path
        if path == CONTROL_PREFIX or path.startswith(CONTROL_PREFIX + "/"):
            route = CONTROL_ROUTES.get((request.method, path))
            call = Call(request, arrived_at, handled_at, body, None)
            return _respond(await self._run(route, call, "endpoint"))  # not recorded
        account_route = ACCOUNT_ROUTES.get((request.method, path))
        if account_route is not None:
            subdomain, route_path, box, route = ACCOUNT_SITE, path, None, account_route
        else:
            subdomain, _, rest = path.lstrip("/").partition("/")
            route_path = "/" + rest
            box = self.find_box(subdomain)
            route = BOX_ROUTES.get((request.method, route_path)) if box else None

        received_at, back = arrived_at, 0.0
        if box is not None:
            # The box's distance: the request reaches it one one-way delay after its bytes
            # reached us, is stamped and handled then, and its answer takes another.
            # Drawn in the order requests reached us, before anything yields.
            if box.clock.distant:
                arrived_at = received_at + box.clock.one_way(box.net_rng)
                back = box.clock.one_way(box.net_rng)
                handled_at = await wait_until(arrived_at)
            if isinstance(request, DatedRequest):  # its Date: the box's clock, now
                request.answer_date = http_date(handled_at + box.clock_offset)

        # Faults are drawn before anything can yield, so draws follow handling order.
        fault = draw_fault(box.faults, box.rng) if box else None
        delay = back + (draw_delay(box.faults, box.rng) if box else 0.0)
        variant = draw_variant(fault, box.rng) if box else 0
        call = Call(
            request, arrived_at, handled_at, body, box, fault if fault in BY_THE_BOX else None
        )
        if box is not None and fault in IN_FRONT:
            response, status = front_answer(request, fault, box.rng)
            answered = Answer({}, status=status)
            self._record(call, subdomain, route_path, answered, fault, received_at)
            await _hold(delay)
            return response
        answer = await self._run(route, call, "endpoint" if box or account_route else "box")
        # Handlers start in the order requests arrived (one process, FIFO scheduling;
        # at a distant box, woken in the order they reach it) and nothing from reading
        # the body (or waking) to here yields when the body came with the headers, so
        # seq and the places given follow arrival order. Latency is added
        # after the decision for the same reason: it delays answers, not arrivals.
        # A mangled answer is the fault the client met; otherwise the route says which
        # of its own answers was one (a refusal drawn for a dead session is not).
        self._record(
            call,
            subdomain,
            route_path,
            answer,
            fault if fault in MANGLED else answer.fault,
            received_at,
        )
        await _hold(delay)
        if box is not None and fault in MANGLED:
            return await mangled_answer(request, fault, answer, box.faults, variant)
        return _respond(answer)

    async def _run(self, route: Route | None, call: Call, unknown: str) -> Answer:
        if route is None:
            request = call.request
            return Answer(
                {"error": f"unknown {unknown}: {request.method} {request.path}"}, status=404
            )
        try:
            return await route(self, call)
        except (ValidationError, ValueError, KeyError) as exc:
            return Answer({"error": one_line_error(exc)}, status=400)

    def _record(
        self,
        call: Call,
        box: str,
        path: str,
        answer: Answer,
        fault: str | None,
        received_at: float,
    ) -> None:
        protocol = call.request.protocol
        connected_at = getattr(protocol, "connected_at", None)
        served = getattr(protocol, "served", 0)
        if isinstance(protocol, Connection):
            protocol.served += 1
        self.requests.append(
            RecordedRequest(
                seq=len(self.requests),
                arrived_at=call.arrived_at,
                handled_at=call.now,
                box=box,
                method=call.request.method,
                path=path,
                email=answer.email,
                session_id=answer.session_id,
                day=answer.day,
                answer=dict(answer.payload),  # a copy: not the shared constants
                fault=fault,
                status=answer.status,
                connection_opened_at=connected_at,
                connection_served=served,
                box_arrived_at=call.box_arrived_at,
                received_at=received_at,
            )
        )


def _respond(answer: Answer) -> web.Response:
    if answer.html is not None:
        response = web.Response(text=answer.html, status=answer.status, content_type="text/html")
    else:
        response = web.json_response(answer.payload, status=answer.status, dumps=dumps)
    set_cookies(response, answer.cookies)
    return response


async def _hold(delay: float) -> None:
    if delay > 0:
        await asyncio.sleep(delay)
