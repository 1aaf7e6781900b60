"""One client connection as the simulator sees it: when each request's first byte
arrived, how many requests the connection carried, and the load balancer's watch over
it while it is idle (see Balancer in prebookd/sim/model.py).

This is aiohttp's protocol for the connection, subclassed: the only place that sees
bytes arrive before any parsing or scheduling, and the only one that sees a connection
that has carried no request yet.
"""

from __future__ import annotations

import asyncio
import time
from email.utils import formatdate
from typing import Any, cast

from aiohttp import web, web_protocol
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader

from prebookd.sim.faults import reset_transport
from prebookd.sim.network import DatedRequest
from prebookd.sim.state import SimState


def timeout_answer() -> bytes:
    """What an AWS load balancer writes on a connection idle too long: a 408 with no
    body (its own reason phrase, its Server header), and the connection closes."""
    return (
        "HTTP/1.1 408 REQUEST_TIMEOUT\r\n"
        "Server: awselb/2.0\r\n"
        f"Date: {formatdate(usegmt=True)}\r\n"
        "Content-Length: 0\r\n"
        "Connection: close\r\n\r\n"
    ).encode()


class Connection(web_protocol.RequestHandler):
    __slots__ = (
        "answering",
        "connected_at",
        "first_byte_at",
        "idle_timer",
        "served",
        "sim",
    )

    def __init__(self, *args: Any, sim: SimState, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sim = sim
        # Arrival stamping: the simulator handles a burst one request at a time, so the
        # time a handler starts includes its queueing behind every request before it (a
        # burst written within 1 ms read as 26 ms late at the handler). The honest
        # arrival time is when the bytes reach the protocol, so it is stamped here.
        self.first_byte_at: float | None = None
        # The connection log: when this connection was accepted, and how many requests
        # it carried before the current one (a warm connection has carried some, or was
        # opened well before its first request).
        self.connected_at: float | None = None
        self.served = 0
        # The balancer's watch: from a request's first byte until its answer is written
        # the connection is busy, and no idle timer runs.
        self.answering = False
        self.idle_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.connected_at = time.time()
        super().connection_made(transport)
        delay = self.sim.balancer.connect_delay
        if delay > 0:
            # The kernel has accepted already: all the simulator can hold back is reading.
            cast(asyncio.Transport, transport).pause_reading()
            asyncio.get_running_loop().call_later(delay, self._end_connect_delay)
        elif self.sim.balancer.idle_timeout:
            self.watch_idle()

    def data_received(self, data: bytes) -> None:
        # Clients do not pipeline: once the handler has read a request's body and
        # cleared the stamp, the next bytes on this connection start the next request.
        if self.first_byte_at is None:
            self.first_byte_at = time.time()
            self.answering = True
        super().data_received(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        super().connection_lost(exc)

    def answered(self) -> None:
        """The handler is done with the request: the connection is idle from now (its
        answer, written next, is checked for when the idle timer fires)."""
        self.answering = False
        if self.sim.balancer.idle_timeout:
            self.watch_idle()

    def watch_idle(self) -> None:
        """(Re)start the idle clock from now, by the balancer the simulator has now."""
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        timeout = self.sim.balancer.idle_timeout
        if timeout and not self.answering and self.transport is not None:
            self.idle_timer = asyncio.get_running_loop().call_later(timeout, self._on_idle)

    def _end_connect_delay(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()
            self.watch_idle()

    def _on_idle(self) -> None:
        self.idle_timer = None
        transport = self.transport
        if self.answering or transport is None or transport.is_closing():
            return  # a request came in: answered() restarts the clock
        if transport.get_write_buffer_size():
            self.watch_idle()  # the last answer is still going out: not idle yet
            return
        action = self.sim.balancer.idle_action
        if action == "reset":
            reset_transport(transport)
        else:
            if action == "408":
                transport.write(timeout_answer())
            self.force_close()  # aiohttp's own way out of an idle keep-alive: a FIN
        self.sim.balancer_stats.count(action)


class ConnectionServer(web.Server):
    """aiohttp's low-level server, with a Connection for each client connection and
    a DatedRequest for each request."""

    def __init__(self, handler: Any, *, sim: SimState, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.sim = sim

    def __call__(self) -> web_protocol.RequestHandler:
        return Connection(self, loop=self._loop, sim=self.sim, **self._kwargs)

    def _make_request(
        self,
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: web_protocol.RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        # web.Server's own request factory, making requests that can carry their Date.
        return DatedRequest(message, payload, protocol, writer, task, self._loop)
