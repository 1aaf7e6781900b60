"""The HTTP side: one keep-alive aiohttp session, and requests staged before the instant.

Building an aiohttp request costs about 0.2 ms of CPU here, and opening a connection
costs a DNS lookup and a TCP (and TLS) handshake. None of that may happen at the
opening instant. So a request is *staged*: `book(..., Attempt(gate))` runs aiohttp's
whole request path (URL, headers, cookies, connection from the pool or a new one,
status line and headers serialised, body task started) and parks at the very last
step, aiohttp's `on_request_chunk_sent` trace, which is awaited right before the
headers and body go to the socket in one write. When the gate opens only that write
is left.

This needs aiohttp >= 3.12: 3.10 and 3.11 write the request line and headers (the
member's cookies included) before that hook, so a staged request's head reached the
server at staging (tests/test_staging_wire.py fails there). pyproject pins the range.

Parking any earlier is not enough on Python 3.11: aiohttp writes the body from a
task of its own, so requests released together would each be prepared before the
first one is written (100 requests: the first written ~10 ms late).

Which gate to wait on travels in a context variable (the body task copies the
context), so no aiohttp internals are touched. A request withdrawn while parked is
cancelled before anything is written; aiohttp then closes its connection.

That hook is also the one place where the rule "no byte before its instant" is kept:
every `Attempt` carries `not_before`, and the hook waits for it after the gate, whatever
the path that led there (first try, retry, re-stage, a row added late). A caller cannot
forget it: there is no Attempt without it. (`not_before` is the booking's planned
time: `available_at`, or aimed at the box's clock, daemon/aim.py. The box-clock probes,
`probe_clock`, are a HEAD with no member's data and no Attempt.)
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog

from prebookd.aimharder.boxclock import Sample, parse_date
from prebookd.aimharder.outcomes import Outcome, classify_http, transport_failure
from prebookd.aimharder.proxy import proxied_session
from prebookd.models import Booking

log = structlog.get_logger(__name__)

MAX_ANSWER_BYTES = 256 * 1024  # an answer is a few hundred bytes; refuse endless bodies
# A box that blocked or rate-limited us (HTTP 429, an HTML 403) is sent nothing for this
# long, or for its Retry-After when longer (at most PAUSE_MAX): hammering it would get
# every member of the box blocked.
PAUSE = 300.0
PAUSE_MAX = 3600.0


@dataclass
class Attempt:
    """One request: its staging gate, the instant before which none of its bytes may be
    written, and when it was really written."""

    gate: asyncio.Future[None] | None
    not_before: float  # wall-clock epoch, read with `clock`
    clock: Callable[[], float] = time.time
    written_at: float | None = None
    parked: bool = False  # reached its gate before it opened: only the write was left
    parked_at: float | None = None  # by `clock`: since then its connection has been idle
    new_connection: bool | None = None  # None until a connection was had
    # Set by `book()`: whether the request's box is paused, asked right before the write.
    paused: Callable[[], Outcome | None] | None = None


class _Paused(Exception):
    """Raised in the write hook: the box paused sending while this request waited."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.reason)
        self.outcome = outcome


_current_attempt: contextvars.ContextVar[Attempt | None] = contextvars.ContextVar(
    "prebookd_attempt", default=None
)


async def _hold_then_stamp(
    session: aiohttp.ClientSession, ctx: Any, params: aiohttp.TraceRequestChunkSentParams
) -> None:
    # Awaited by aiohttp right before it writes headers and body to the socket.
    attempt = _current_attempt.get()
    if attempt is None:
        return
    if attempt.gate is not None and not attempt.gate.done():
        attempt.parked = True
        attempt.parked_at = attempt.clock()
        # Shielded: aiohttp cancels this wait when the connection is lost while parked
        # (an idle timeout), and the gate is the booking's, not this connection's: it
        # must stay open to a request staged again, and to a withdrawal.
        await asyncio.shield(attempt.gate)
    # The gate opens at the instant; a path without one (a retry, a late row) is held
    # here too. The wall clock is read again after each sleep: a sleep may end early.
    while (left := attempt.not_before - attempt.clock()) > 0:  # noqa: ASYNC110 (a clock, no event)
        await asyncio.sleep(left)
    # A box that blocked or rate-limited us while this request waited gets nothing more.
    if attempt.paused is not None and (outcome := attempt.paused()) is not None:
        raise _Paused(outcome)
    if attempt.written_at is None:
        attempt.written_at = attempt.clock()


async def _connection_created(
    session: aiohttp.ClientSession, ctx: Any, params: aiohttp.TraceConnectionCreateEndParams
) -> None:
    if (attempt := _current_attempt.get()) is not None:
        attempt.new_connection = True


async def _connection_reused(
    session: aiohttp.ClientSession, ctx: Any, params: aiohttp.TraceConnectionReuseconnParams
) -> None:
    if (attempt := _current_attempt.get()) is not None:
        attempt.new_connection = False


# A clock probe's write time (probe_clock), stamped when aiohttp has sent its head.
_probe_sent: contextvars.ContextVar[list[float] | None] = contextvars.ContextVar(
    "prebookd_probe_sent", default=None
)


async def _probe_written(
    session: aiohttp.ClientSession, ctx: Any, params: aiohttp.TraceRequestHeadersSentParams
) -> None:
    if (stamps := _probe_sent.get()) is not None:
        stamps.append(time.time())


@dataclass(frozen=True)
class Exchange:
    """One booking request and what came of it."""

    outcome: Outcome
    answer: Any  # the parsed JSON answer, kept raw in prebookings.result
    written_at: float | None  # None: nothing was written (connection failed)
    answered_at: float
    http_status: int | None


class AimHarderClient:
    def __init__(
        self,
        *,
        limit: int,
        limit_per_host: int,
        request_timeout: float,
        proxy_url: str | None = None,
    ) -> None:
        self._limit = limit
        self._limit_per_host = limit_per_host
        # No total timeout: a staged request waits at its gate for seconds by design;
        # connecting and reading each have their own bound.
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=request_timeout, sock_read=request_timeout
        )
        self._request_timeout = request_timeout
        self._session: aiohttp.ClientSession | None = None
        # Through a proxy (prebookd/aimharder/proxy.py): `_session` through
        # PREBOOKD_PROXY_URL (or direct), and one more per box proxy met, made when its
        # first request is staged, so its connections are opened at staging too.
        self._proxy_url = proxy_url
        self._proxied: dict[str, aiohttp.ClientSession] = {}
        self._trace = aiohttp.TraceConfig()
        self._paused: dict[str, tuple[float, Outcome]] = {}  # box -> (until, why)

    async def start(self) -> None:
        trace = self._trace
        trace.on_request_chunk_sent.append(_hold_then_stamp)
        trace.on_connection_create_end.append(_connection_created)
        trace.on_connection_reuseconn.append(_connection_reused)
        trace.on_request_headers_sent.append(_probe_written)
        self._session = self._new_session(self._proxy_url)

    def _new_session(self, proxy_url: str | None) -> aiohttp.ClientSession:
        return proxied_session(
            proxy_url,
            connector={
                "limit": self._limit,
                "limit_per_host": self._limit_per_host,
                "keepalive_timeout": 60,
                "ttl_dns_cache": 300,
            },
            timeout=self._timeout,
            trace_configs=[self._trace],
            # Never mix members: each request carries its own Cookie header, and
            # nothing a box answers with Set-Cookie is kept for anyone else.
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=True,
        )

    @property
    def proxy_url(self) -> str | None:
        """PREBOOKD_PROXY_URL, as the client was given it (None: direct)."""
        return self._proxy_url

    def _session_for(self, booking: Booking) -> aiohttp.ClientSession:
        """The session of the booking's box's own proxy, else the default one."""
        assert self._session is not None, "client not started"
        proxy = booking.proxy_url
        if proxy is None or proxy == self._proxy_url:
            return self._session
        if (session := self._proxied.get(proxy)) is None:
            session = self._proxied[proxy] = self._new_session(proxy)
        return session

    async def close(self) -> None:
        sessions, self._proxied = [self._session, *self._proxied.values()], {}
        self._session = None
        for session in sessions:
            if session is not None:
                await session.close()

    def pool_in_use(self) -> int:
        sessions = [self._session, *self._proxied.values()]
        return sum(len(s.connector._acquired) for s in sessions if s and s.connector)

    def has_room(self, connections: int) -> bool:
        """Whether this many more connections fit in the pool (per host too)."""
        return self.pool_in_use() + connections <= min(self._limit, self._limit_per_host)

    def paused(self, box: str) -> Outcome | None:
        """Why nothing is sent to `box` now, or None when it may be."""
        paused = self._paused.get(box)
        if paused is None or paused[0] <= time.time():
            return None
        until, why = paused
        return dataclasses.replace(
            why,
            reason=f"{why.reason}; not sent: sending to this box is paused until "
            f"{time.strftime('%H:%M:%S', time.gmtime(until))} UTC",
        )

    async def book(self, booking: Booking, attempt: Attempt) -> Exchange:
        """POST /api/book for one booking; staged if `attempt.gate` is set. Nothing is
        sent to a box that blocked or rate-limited us (asked again right before the
        write: a request staged before the block must not go out after it)."""
        assert self._session is not None, "client not started"
        if (why := self.paused(booking.box)) is not None:
            return Exchange(why, None, None, time.time(), None)
        attempt.paused = functools.partial(self.paused, booking.box)
        token = _current_attempt.set(attempt)
        try:
            async with self._session_for(booking).post(
                booking.url,
                data=booking.body,
                headers=booking.headers,
                allow_redirects=False,
            ) as response:
                # sock_read bounds each read, not a body that trickles in forever.
                async with asyncio.timeout(self._request_timeout):
                    body = await _read_answer(response)
                status = response.status
                retry_after = response.headers.get("Retry-After")
        except _Paused as paused:
            return Exchange(paused.outcome, None, None, time.time(), None)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return Exchange(transport_failure(exc), None, attempt.written_at, time.time(), None)
        finally:
            _current_attempt.reset(token)
        outcome, answer = classify_http(status, body, insist=booking.insist)
        if outcome.pauses_box:
            self._pause(booking.box, outcome, retry_after)
        return Exchange(outcome, answer, attempt.written_at, time.time(), status)

    def _pause(self, box: str, outcome: Outcome, retry_after: str | None) -> None:
        try:
            asked = float(retry_after or 0)
        except ValueError:  # an HTTP date: the default is as good
            asked = 0.0
        wait = min(max(asked, PAUSE), PAUSE_MAX) if math.isfinite(asked) else PAUSE
        if box not in self._paused or self._paused[box][0] <= time.time():
            log.warning("box_paused", box=box, reason=outcome.reason, seconds=wait)
        self._paused[box] = (time.time() + wait, outcome)


async def _read_answer(response: aiohttp.ClientResponse) -> bytes:
    """The whole body, but never more than MAX_ANSWER_BYTES (an endless body is cut)."""
    chunks = []
    size = 0
    while size < MAX_ANSWER_BYTES and (chunk := await response.content.read(65_536)):
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)[:MAX_ANSWER_BYTES]


async def probe_clock(
    client: AimHarderClient, base_url: str, *, like: Booking | None = None
) -> Sample:
    """HEAD the box's base URL on a warm connection (through the proxy `like`'s requests
    take, when given): when the request was sent and its answer read (our clock), and
    the box's `Date` (boxclock.py). No cookies: a probe is not a member's request, and
    no `Attempt`: nothing of a member's is written. Its time is stamped when aiohttp
    has sent its head (a body-less request passes no chunk hook). Raises
    aiohttp.ClientError, OSError or TimeoutError."""
    session = client._session if like is None else client._session_for(like)
    assert session is not None, "client not started"
    stamps: list[float] = []
    token = _probe_sent.set(stamps)
    try:
        before = time.time()
        async with session.head(base_url, allow_redirects=False) as response:
            received = time.time()
            date = parse_date(response.headers.get("Date"))
    finally:
        _probe_sent.reset(token)
    return Sample(stamps[0] if stamps else before, received, date)
