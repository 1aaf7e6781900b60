"""A TCP proxy between prebookd and Postgres that breaks the network on command.

prebookd connects to the proxy (loopback TCP); the proxy connects to Postgres (TCP or
the Unix socket an embedded Postgres listens on). Modes, switched at any time:

- `pass_()`: bytes flow both ways (the default);
- `cut()`: every open connection is reset now (a crashed middlebox, a server
  restart); new connections are passed as before;
- `refuse()`: new connections are closed at once (nothing listens); open ones stay;
- `blackhole()`: open and new connections are kept, but every byte either way is
  dropped silently (a half-open TCP connection, a NAT entry gone, a partition).
  Leaving it (`pass_()` or `refuse()`) resets the connections it swallowed bytes of:
  their streams lost bytes and cannot be resumed, as when the far side gave up on a
  connection during a partition and answers whatever arrives after it with a reset.

Each switch is counted in `faults`, so a run can say how many it injected.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qsl, urlencode, urlsplit

Mode = Literal["pass", "refuse", "blackhole"]
CHUNK = 65_536


@dataclass(eq=False)  # compared and hashed by identity: kept in a set
class _Link:
    """One proxied connection: prebookd's side and Postgres's side."""

    client: asyncio.StreamWriter
    server: asyncio.StreamWriter | None = None
    blackholed: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def reset(self) -> None:
        for writer in (self.client, self.server):
            if writer is not None and not writer.is_closing():
                writer.transport.abort()  # RST, not a polite FIN

    def close(self) -> None:
        for writer in (self.client, self.server):
            if writer is not None and not writer.is_closing():
                writer.close()  # what was written still goes out, then FIN


@dataclass(frozen=True)
class Upstream:
    """Where Postgres listens: a host and port, or a Unix socket path."""

    host: str | None = None
    port: int | None = None
    unix_path: str | None = None

    @classmethod
    def from_dsn(cls, dsn: str) -> Upstream:
        parts = urlsplit(dsn)
        query = dict(parse_qsl(parts.query))
        port = parts.port or int(query.get("port", "5432"))
        host = parts.hostname or query.get("host")
        if host is None or host.startswith("/"):
            folder = host or "/var/run/postgresql"
            return cls(unix_path=f"{folder}/.s.PGSQL.{port}")
        return cls(host=host, port=port)

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.unix_path is not None:
            return await asyncio.open_unix_connection(self.unix_path)
        return await asyncio.open_connection(self.host, self.port)


class PgProxy:
    def __init__(self, upstream_dsn: str) -> None:
        self.upstream = Upstream.from_dsn(upstream_dsn)
        self._upstream_dsn = upstream_dsn
        self.mode: Mode = "pass"
        self.faults: list[tuple[float, str]] = []  # (time.time(), what) per switch
        self.accepted = 0
        self.refused = 0
        self.reset_links = 0
        self._links: set[_Link] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.reset()
        # Let every connection's handler see its reset and end (a handler cancelled
        # instead makes Python 3.11's streams log a CancelledError).
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=2.0)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def dsn(self, dsn: str | None = None) -> str:
        """`dsn` (default: the upstream one) rewritten to go through the proxy."""
        parts = urlsplit(dsn or self._upstream_dsn)
        query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("host", "port")]
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{self.port}" if userinfo else f"127.0.0.1:{self.port}"
        return parts._replace(netloc=netloc, query=urlencode(query)).geturl()

    @property
    def connections(self) -> int:
        return len(self._links)

    # ---- faults ----------------------------------------------------------------

    def pass_(self) -> None:
        self._leave_blackhole()
        self._switch("pass")

    def refuse(self) -> None:
        self._leave_blackhole()
        self._switch("refuse")

    def blackhole(self) -> None:
        self._switch("blackhole")
        for link in self._links:
            link.blackholed = True

    def cut(self) -> int:
        """Reset every open connection now; returns how many."""
        links = list(self._links)
        for link in links:
            link.reset()
        self.reset_links += len(links)
        self.faults.append((time.time(), f"cut {len(links)}"))
        return len(links)

    def _switch(self, mode: Mode) -> None:
        if mode != self.mode:
            self.faults.append((time.time(), mode))
        self.mode = mode

    def _leave_blackhole(self) -> None:
        swallowed = [link for link in self._links if link.blackholed]
        for link in swallowed:
            link.reset()
        self.reset_links += len(swallowed)

    # ---- plumbing --------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        try:
            await self._serve(reader, writer)
        finally:
            self._handlers.discard(handler)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "refuse":
            self.refused += 1
            writer.transport.abort()
            return
        self.accepted += 1
        link = _Link(writer, blackholed=self.mode == "blackhole")
        self._links.add(link)
        try:
            if link.blackholed:
                await self._drain_forever(reader)
                return
            try:
                up_reader, up_writer = await asyncio.wait_for(self.upstream.open(), 10.0)
            except (OSError, TimeoutError):
                return  # Postgres is down: the client sees its connection closed
            link.server = up_writer
            if writer.is_closing():  # cut while we were connecting
                return
            link.tasks = [
                asyncio.create_task(self._pump(reader, up_writer, link)),
                asyncio.create_task(self._pump(up_reader, writer, link)),
            ]
            await asyncio.wait(link.tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            link.close()  # one side hung up (or was reset): so does the other
            for task in link.tasks:
                task.cancel()
            await asyncio.gather(*link.tasks, return_exceptions=True)
            self._links.discard(link)

    @staticmethod
    async def _drain_forever(reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(OSError):
            while await reader.read(CHUNK):
                pass

    @staticmethod
    async def _pump(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: _Link
    ) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(CHUNK):
                if link.blackholed:
                    continue  # swallowed: neither side hears anything
                writer.write(data)
                await writer.drain()


@contextlib.asynccontextmanager
async def pg_proxy(upstream_dsn: str) -> AsyncIterator[PgProxy]:
    proxy = PgProxy(upstream_dsn)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()
