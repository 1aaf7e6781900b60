"""Real receivers on loopback for notification tests: an HTTP server that takes what
apprise's `json://` and `ntfy://` plugins post (and can hang, or check Postgres at the
moment a message arrives), and an SMTP server (aiosmtpd) for `mailto://`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from email import message_from_bytes
from typing import Any

from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult


@dataclass
class Received:
    path: str
    body: dict[str, Any]
    at: float
    checked: Any = None  # what `on_receive` said when it arrived


@dataclass
class HttpReceiver:
    """Records each POST by path; `hang` seconds before answering (a hung webhook)."""

    hang: float = 0.0
    on_receive: Callable[[str, dict[str, Any]], Awaitable[Any]] | None = None
    received: list[Received] = field(default_factory=list)
    port: int = 0
    in_flight: int = 0  # requests being answered (hanging) right now
    _runner: web.AppRunner | None = None

    def url(self, scheme: str, path: str) -> str:
        return f"{scheme}://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def at(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path.rstrip("/") == "/" + path.strip("/")]

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {"raw": raw.decode(errors="replace")}
        self.in_flight += 1
        try:
            if self.hang:
                await asyncio.sleep(self.hang)
        finally:
            self.in_flight -= 1
        checked = None
        if self.on_receive is not None:
            checked = await self.on_receive(request.path, body)
        self.received.append(Received(request.path, body, time.time(), checked))
        return web.json_response({"ok": True})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@contextlib.asynccontextmanager
async def http_receiver(**options: Any) -> AsyncIterator[HttpReceiver]:
    receiver = HttpReceiver(**options)
    await receiver.start()
    try:
        yield receiver
    finally:
        await receiver.stop()


class _Mailbox:
    def __init__(self) -> None:
        self.messages: list[dict[str, str]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        mail = message_from_bytes(envelope.content)
        part = mail.get_payload(0) if mail.is_multipart() else mail
        body = part.get_payload(decode=True).decode(errors="replace")  # type: ignore[union-attr]
        self.messages.append(
            {"to": ",".join(envelope.rcpt_tos), "subject": str(mail["Subject"]), "body": body}
        )
        return "250 OK"


@contextlib.asynccontextmanager
async def smtp_receiver() -> AsyncIterator[tuple[int, list[dict[str, str]]]]:
    """An SMTP server on 127.0.0.1 (its own thread); yields its port and the mail."""
    mailbox = _Mailbox()
    with socket.socket() as probe:  # a free port (the controller checks it with a connect)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(
        mailbox,
        hostname="127.0.0.1",
        port=port,
        auth_require_tls=False,  # loopback: the password may go in the clear
        authenticator=lambda *_: AuthResult(success=True),
    )
    await asyncio.to_thread(controller.start)
    try:
        yield port, mailbox.messages
    finally:
        await asyncio.to_thread(controller.stop)
