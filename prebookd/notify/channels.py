"""Channels are apprise URLs: `tgram://`, `ntfy://`, `mailto://`, `json://`, ...

A URL holds the channel's secret (a bot token, a password, a private topic), so it is
shown masked everywhere, registered with the log's redaction before any use, and never
part of an error message. apprise is synchronous: `send` blocks (call it from a thread)
and is bounded by the timeout given to each plugin's sockets.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Sequence
from urllib.parse import unquote

import apprise

from prebookd.errors import UsageError
from prebookd.log import redact_text, register_secret
from prebookd.text import one_line

EVENTS = ("outcome", "warning")
LANGS = ("es", "en")


class ChannelError(UsageError):
    """A URL apprise cannot use."""


def check_url(url: str) -> None:
    """Raise ChannelError, in one line without the URL itself, unless apprise parses it."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    _captured.quiet = True  # our one line says it: not apprise's own as well
    try:
        plugin = _instantiate(url) if scheme else None
    finally:
        _captured.quiet = False
    if plugin is None:
        what = f"a {scheme}:// URL" if scheme else "not a URL (scheme://...)"
        raise ChannelError(f"apprise cannot use this channel URL ({what}); see apprise's wiki")


def check_events(events: Sequence[str]) -> list[str]:
    unknown = sorted(set(events) - set(EVENTS))
    if unknown or not events:
        raise ChannelError(f"--events: one or more of {','.join(EVENTS)} (got {','.join(events)})")
    return sorted(set(events), key=EVENTS.index)


def mask_url(url: str) -> str:
    """`scheme://` and the host, the rest reduced to its first two characters a part:
    enough to tell two channels apart, not to use one. Parsed by hand: apprise's URLs
    need not be valid URLs (tgram://BOT:TOKEN/CHAT has a token where a port goes)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "****"
    rest, query, _ = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    user = "****@" if "@" in netloc else ""
    host = netloc.rsplit("@", 1)[-1]
    if len(host) > 24 or not _PLAIN_HOST.fullmatch(host):  # a token in the host's place
        host = host[:2] + "…"
    path = "/".join(_hint(segment) for segment in path.split("/")) if slash else ""
    return f"{scheme}://{user}{host}" + (f"/{path}" if slash else "") + ("?…" if query else "")


_PLAIN_HOST = re.compile(r"[A-Za-z0-9.-]+(:\d{1,5})?")


def _hint(segment: str) -> str:
    return segment if len(segment) <= 2 else segment[:2] + "…"


def register_url(url: str) -> None:
    """Mask this URL, and its secret-looking parts, in every log line from now on: the
    password, a token in the host's place, path segments (bot tokens, private topics,
    webhook ids) and secret-named query values. Plain host names stay readable."""
    register_secret(url)
    rest, _, query = url.partition("://")[2].partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, host = netloc.rpartition("@")
    pieces = [*userinfo.split(":", 1), *path.split("/")] if at else path.split("/")
    if not _PLAIN_HOST.fullmatch(host):
        pieces += [host, *host.split(":")]
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        if _SECRET_KEY.search(key):
            pieces.append(value)
    for piece in pieces:
        if piece:
            register_secret(unquote(piece))  # shorter than 8 characters: ignored


_SECRET_KEY = re.compile(r"pass|token|key|secret|auth|webhook", re.IGNORECASE)


def send(urls: Sequence[str], title: str, body: str, timeout: float) -> str | None:
    """Deliver to every URL (blocking); None when all took it, else what went wrong (one
    line, URLs and their secrets masked)."""
    errors = []
    for url in urls:
        plugin = _instantiate(url)
        if plugin is None:
            errors.append(f"{mask_url(url)}: apprise cannot use this URL")
            continue
        plugin.socket_connect_timeout = timeout
        plugin.socket_read_timeout = timeout
        if hasattr(plugin, "timeout"):  # the e-mail plugin's SMTP timeout
            plugin.timeout = timeout
        _captured.records = []
        try:
            ok = plugin.notify(body=body, title=title)
        except Exception as exc:  # a plugin's bug must not kill the sender's worker
            ok = False
            _captured.records.append(f"{type(exc).__name__}: {exc}")
        if not ok:
            said = "; ".join(_captured.records[-2:]) or "not delivered"
            errors.append(f"{mask_url(url)}: {_masked(said, url)}")
    return "; ".join(errors) or None


def _masked(text: str, url: str) -> str:
    return one_line(redact_text(text.replace(url, mask_url(url))), 300)


def _instantiate(url: str) -> apprise.plugins.NotifyBase | None:
    try:
        return apprise.Apprise.instantiate(url, suppress_exceptions=True)
    except Exception:
        return None


class _Captured(threading.local):
    records: list[str]
    quiet: bool

    def __init__(self) -> None:
        self.records = []
        self.quiet = False


_captured = _Captured()


class _PerThreadCapture(logging.Handler):
    """apprise says why a send failed only in its log: keep each worker thread's own
    warnings, for that send's error."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            _captured.records.append(record.getMessage())


def _not_quiet(_: logging.LogRecord) -> bool:
    return not _captured.quiet


logging.getLogger("apprise").addHandler(_PerThreadCapture())
logging.getLogger("apprise").addFilter(_not_quiet)
