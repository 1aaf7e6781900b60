"""A forward proxy for tests, on loopback: HTTP (CONNECT tunnels and absolute-form
requests) and SOCKS5, each with an optional user and password. It forwards bytes
unchanged and notes, with the wall-clock time, every connection accepted, every tunnel
opened and every chunk a client sent through it, so a test can tell what reached the
proxy before an instant and what after."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from yarl import URL


@dataclass(frozen=True)
class Event:
    connection: int  # the order its client connection was accepted in, from 0
    kind: str  # "accept", "tunnel" (CONNECT or SOCKS5 connect granted), "bytes"
    at: float  # time.time()
    data: bytes = b""  # "bytes": what the client sent; "tunnel": where to


@dataclass
class ForwardProxy:
    user: str | None = None
    password: str | None = None
    port: int = 0
    events: list[Event] = field(default_factory=list)
    refused: int = 0  # clients that gave wrong or no credentials
    _accepted: int = 0

    def url(self, scheme: str) -> str:
        auth = f"{self.user}:{self.password}@" if self.user else ""
        return f"{scheme}://{auth}127.0.0.1:{self.port}"

    def of_kind(self, kind: str) -> list[Event]:
        return [e for e in self.events if e.kind == kind]

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = self._accepted
        self._accepted += 1
        self._note(connection, "accept")
        upstream: asyncio.StreamWriter | None = None
        try:
            first = await reader.readexactly(1)
            if first == b"\x05":
                opened = await self._socks5(connection, reader, writer)
            else:
                opened = await self._http(connection, first, reader, writer)
            if opened is None:
                return
            up_reader, upstream = opened
            back = asyncio.create_task(_copy(up_reader, writer))
            try:
                while data := await reader.read(65_536):
                    self._note(connection, "bytes", data)
                    upstream.write(data)
                    await upstream.drain()
            finally:
                back.cancel()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            for end in (writer, upstream):
                if end is not None:
                    end.close()

    def _note(self, connection: int, kind: str, data: bytes = b"") -> None:
        self.events.append(Event(connection, kind, time.time(), data))

    def _allowed(self, user: str, password: str) -> bool:
        ok = self.user is None or (user, password) == (self.user, self.password)
        self.refused += not ok
        return ok

    async def _http(
        self,
        connection: int,
        first: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        head = first + await reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        method, target, _ = lines[0].split(b" ", 2)
        user, password = "", ""
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"proxy-authorization":
                decoded = base64.b64decode(value.strip().split(b" ", 1)[1]).decode()
                user, _, password = decoded.partition(":")
        if not self._allowed(user, password):
            writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
            return None
        if method == b"CONNECT":
            host, _, port = target.decode().rpartition(":")
            opened = await asyncio.open_connection(host, int(port))
            self._note(connection, "tunnel", target)
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            return opened
        url = URL(target.decode())  # absolute form: the request goes on as it came
        assert url.host is not None and url.port is not None
        opened = await asyncio.open_connection(url.host, url.port)
        self._note(connection, "bytes", head)
        opened[1].write(head)
        return opened

    async def _socks5(
        self, connection: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        methods = await reader.readexactly((await reader.readexactly(1))[0])
        wanted = 2 if self.user else 0
        if wanted not in methods:
            writer.write(b"\x05\xff")
            self.refused += 1
            return None
        writer.write(bytes([5, wanted]))
        if wanted == 2:
            await reader.readexactly(1)  # sub-negotiation version 1
            user = (await reader.readexactly((await reader.readexactly(1))[0])).decode()
            password = (await reader.readexactly((await reader.readexactly(1))[0])).decode()
            ok = self._allowed(user, password)
            writer.write(b"\x01\x00" if ok else b"\x01\x01")
            if not ok:
                return None
        _, command, _, kind = await reader.readexactly(4)
        assert command == 1, "CONNECT only"
        if kind == 1:
            host = ".".join(str(b) for b in await reader.readexactly(4))
        elif kind == 3:
            host = (await reader.readexactly((await reader.readexactly(1))[0])).decode()
        else:
            raise AssertionError("IPv6 not served here")
        (port,) = struct.unpack("!H", await reader.readexactly(2))
        opened = await asyncio.open_connection(host, port)
        self._note(connection, "tunnel", f"{host}:{port}".encode())
        writer.write(b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00")
        return opened


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65_536):
            writer.write(data)
            await writer.drain()
    writer.close()


@contextlib.asynccontextmanager
async def running_proxy(
    user: str | None = None, password: str | None = None
) -> AsyncIterator[ForwardProxy]:
    proxy = ForwardProxy(user, password)
    server = await asyncio.start_server(proxy.serve, "127.0.0.1", 0)
    proxy.port = server.sockets[0].getsockname()[1]
    async with server:
        yield proxy
