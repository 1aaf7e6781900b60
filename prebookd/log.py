"""Logging: structlog to stderr, one event per line, secrets scrubbed.

stderr, so that a command's own output on stdout (`prebookd list --json`, the id
that `prebookd add` prints) stays clean for pipes; journald takes both streams.

Events are stable snake_case names with key=value fields (or JSON). A redaction step
runs last before rendering, so no code path can log a cookie, token or password by
accident: keys that name a secret are masked, and so are secret-looking substrings
(`amhrdrauth=...`, DSN passwords) inside any string value.

Three formats (PREBOOKD_LOG_FORMAT): `console`, a UTC timestamp then `[level] event
key=value`; `journal`, the same without the timestamp (journald stamps each line) and
with the line's syslog priority in front (`<4>[warning] ...`, sd-daemon(3)), so that
`journalctl -u prebookd -p warning` shows exactly the lines that need a human; `json`,
one object a line, prefixed the same way only when stderr is the journal (journald
strips the prefix: the message stays JSON). The default is `journal` when stderr is
the journal (systemd's JOURNAL_STREAM), else `console`.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from collections.abc import Mapping, MutableMapping
from typing import Any, Literal

import structlog

from prebookd.errors import describe

# Keys whose value is a secret: `password`, `token`, `aimharder_token`, `newToken`,
# `refreshToken`, `Set-Cookie`, `cookies`, the cookies by name... but not
# `token_update_count`, `cookie_names` or `passes`.
_SECRET_WORDS = r"password|passwd|token|cookie|secret|authorization|amhrdrauth|awsalb\w*|phpsessid"
SECRET_KEYS = re.compile(rf"(?:{_SECRET_WORDS})s?$", re.IGNORECASE)
# A quoted key ending in one of those words, as JSON text writes it ("token": "..."),
# as a Python repr does ('token': '...'), or escaped inside a JSON string (\"token\").
_QUOTED_KEY = rf"""\\?["'][\w-]*(?:{_SECRET_WORDS})s?\\?["']"""
# A quoted string value, escapes and all, closed by the quote it opened with.
_QUOTED_VALUE = r"""(?P<esc>\\?)(?P<q>["'])(?:\\.|[^\\])*?(?P=esc)(?P=q)"""
_MASKED_VALUE = r"\g<1>\g<esc>\g<q>****\g<esc>\g<q>"
SECRET_PATTERNS = [
    # a cookie or form value of AimHarder's session
    (
        re.compile(r"(amhrdrauth|AWSALB\w*|PHPSESSID|token|password)=([^;&\s\"']+)", re.I),
        r"\1=****",
    ),
    # quoted key, quoted value: "token": "...", 'newToken': '...', \"token\": \"...\"
    (re.compile(rf"({_QUOTED_KEY}\s*:\s*b?){_QUOTED_VALUE}", re.I), _MASKED_VALUE),
    # a keyword in a repr: LoginResult(token='...', ...)
    (re.compile(rf"(\b\w*(?:{_SECRET_WORDS})s?=b?){_QUOTED_VALUE}", re.I), _MASKED_VALUE),
    # a cookie-jar entry as text, whatever the cookie: {"name": "x", "value": "..."}
    (
        re.compile(
            rf"""(\\?["']name\\?["']\s*:[^,}}]*,\s*\\?["']value\\?["']\s*:\s*){_QUOTED_VALUE}"""
        ),
        _MASKED_VALUE,
    ),
    # an Authorization header value
    (re.compile(r"(Bearer\s+)[^\s\"',;]+", re.I), r"\1****"),
    # the password of a DSN: scheme://user:PASSWORD@host (up to the last '@' of the
    # netloc: an unescaped '@' inside the password must not leave its tail visible)
    (re.compile(r"(\w+://[^:/@\s]*:)([^\s/]+)(@)"), r"\1****\3"),
]
# Every pattern above needs one of these to match: text without any of them (ids,
# emails, instants, outcome codes: most of what is logged) skips the patterns, which
# are most of the cost of a line.
_MAY_MATCH = re.compile(r"""[='"]|://|bearer""", re.IGNORECASE)
# Values logged as they are: they cannot hold a secret and keep their own rendering.
_PLAIN = (int, float, bool, type(None))


# --- secrets known by value ----------------------------------------------------------
#
# A member's cookie or token may show up where no key or pattern says what it is (a URL
# quoted by an error, an answer body): the code registers each one as it loads it, and
# every string logged is searched for them. Indexed by their first characters, so a
# line costs the same however many secrets are known.

MIN_SECRET_LENGTH = 8  # shorter values ("php1", "0") would mask ordinary words
MAX_SECRETS = 100_000  # the oldest are forgotten first: tokens are renewed every 25 min
_PREFIX = MIN_SECRET_LENGTH
_known: dict[str, None] = {}  # insertion-ordered: the oldest first
_by_prefix: dict[str, set[str]] = {}
_known_lock = threading.Lock()


def register_secret(value: object) -> None:
    """Mask `value` wherever it appears in a log line from now on (a member's cookie
    value, a token, a password). Too short a value, or not a string, is ignored."""
    if not isinstance(value, str) or len(value) < MIN_SECRET_LENGTH:
        return
    with _known_lock:
        if value in _known:
            del _known[value]  # renewed: it goes last, the last to be forgotten
        else:
            _by_prefix.setdefault(value[:_PREFIX], set()).add(value)
        _known[value] = None
        while len(_known) > MAX_SECRETS:
            _forget(next(iter(_known)))


def forget_secrets() -> None:
    """Drop every registered secret (tests)."""
    with _known_lock:
        _known.clear()
        _by_prefix.clear()


def _forget(value: str) -> None:
    del _known[value]
    same = _by_prefix.get(value[:_PREFIX])
    if same is not None:
        same.discard(value)
        if not same:
            del _by_prefix[value[:_PREFIX]]


def _mask_known(text: str) -> str:
    count = len(text) - _PREFIX + 1
    if count <= 0 or not _by_prefix:
        return text
    # Every window of the text, compared with the prefixes at C speed: most lines hold
    # no secret, and only those that do are walked character by character.
    windows = map(text.__getitem__, map(slice, range(count), range(_PREFIX, len(text) + 1)))
    if _by_prefix.keys().isdisjoint(windows):
        return text
    parts: list[str] = []
    start = i = 0
    end = len(text) - MIN_SECRET_LENGTH
    while i <= end:
        candidates = _by_prefix.get(text[i : i + _PREFIX])
        found = [s for s in tuple(candidates or ()) if text.startswith(s, i)]
        if found:
            parts += [text[start:i], "****"]
            i = start = i + max(map(len, found))
        else:
            i += 1
    return "".join(parts) + text[start:] if parts else text


def redact_text(text: str) -> str:
    text = _mask_known(text)
    if _MAY_MATCH.search(text) is None:
        return text
    for pattern, replacement in SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, Mapping):  # dict, and also aiohttp's CIMultiDict headers
        if isinstance(value.get("name"), str) and "value" in value:
            # a cookie-jar entry: {"name": "amhrdrauth", "value": "..."}
            return {**value, "value": "****"}
        return {
            redact_text(k) if isinstance(k, str) else k: (
                "****" if SECRET_KEYS.search(str(k)) else _redact_value(v)
            )
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_redact_value(v) for v in value]
    # Any other object (an exception, a model) is rendered by its repr: scrub that,
    # and keep the object itself when there is nothing to hide.
    text = repr(value)
    scrubbed = redact_text(text)
    return value if scrubbed == text else scrubbed


def redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: mask secret keys and secret-looking text."""
    for key, value in list(event_dict.items()):
        if SECRET_KEYS.search(key):
            event_dict[key] = "****"
        else:
            event_dict[key] = _redact_value(value)
    return event_dict


def mask_email(email: str | None) -> str:
    """`jane.doe@example.com` -> `ja***@example.com`: enough to tell members apart."""
    if not email:
        return "?"
    local, _, domain = email.partition("@")
    return f"{local[:2]}***@{domain}" if domain else f"{local[:2]}***"


def _stderr_logger(*_args: Any) -> structlog.PrintLogger:
    # sys.stderr looked up each time, not once: whoever replaced it since (a test's
    # capture, a daemonising wrapper) gets the lines, and a closed one is never kept.
    return structlog.PrintLogger(file=sys.stderr)


class LibraryLogHandler(logging.Handler):
    """What libraries log through `logging` (asyncpg's pool, asyncio, aiohttp) as
    structlog events: one line each, in the daemon's format, redacted like the rest.
    A library's traceback of a condition prebookd already reports (a connection reset
    while Postgres restarts) would be twenty lines of noise in journalctl, so the
    exception is summed up in `error`; at debug level the traceback is kept."""

    def emit(self, record: logging.LogRecord) -> None:
        if not structlog.is_configured():
            return  # configure_logging was undone (tests): not ours to print any more
        try:
            fields: dict[str, Any] = {"logger": record.name, "message": record.getMessage()}
            if record.exc_info and record.exc_info[1] is not None:
                error = record.exc_info[1]
                fields["error"] = f"{type(error).__name__}: {describe(error)}"
                if self.level <= logging.DEBUG:
                    fields["exc_info"] = record.exc_info
            structlog.get_logger(record.name).log(record.levelno, "library_log", **fields)
        except Exception:
            self.handleError(record)


def _route_library_logs(level: int) -> None:
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, LibraryLogHandler)]:
        root.removeHandler(handler)
    # Libraries' info lines (aiohttp's access log of the simulator) are not ours to show.
    handler = LibraryLogHandler(level)
    root.addHandler(handler)
    root.setLevel(max(level, logging.WARNING))


# --- journald ---------------------------------------------------------------------------

# Syslog priorities by level, as journald reads them from the start of a line
# (sd-daemon(3): SD_CRIT "<2>", SD_ERR "<3>", SD_WARNING "<4>", SD_INFO "<6>", SD_DEBUG "<7>").
PRIORITIES = {"critical": 2, "error": 3, "warning": 4, "info": 6, "debug": 7}


def stderr_is_journal() -> bool:
    """stderr is the stream systemd connected to the journal: JOURNAL_STREAM names its
    `device:inode`. The variable alone is not enough: a command run from the service
    with its stderr sent elsewhere (a pipe, a file) inherits it (systemd.exec(5))."""
    device, sep, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    if not sep:
        return False
    try:
        stat = os.fstat(2)
        return (int(device), int(inode)) == (stat.st_dev, stat.st_ino)
    except (OSError, ValueError):
        return False


def default_log_format() -> Literal["console", "journal"]:
    """PREBOOKD_LOG_FORMAT when unset."""
    return "journal" if stderr_is_journal() else "console"


class PriorityPrefix:
    """Wraps a renderer: every line of the event starts with its syslog priority.
    Every line, not just the first: journald stores each line of a traceback as an
    entry of its own, and an unprefixed one would be filed as info."""

    def __init__(self, renderer: Any) -> None:
        self._renderer = renderer

    def __call__(self, logger: Any, name: str, event_dict: MutableMapping[str, Any]) -> str:
        prefix = f"<{PRIORITIES.get(event_dict.get('level', ''), 6)}>"
        text = str(self._renderer(logger, name, event_dict))
        return "\n".join(prefix + line for line in text.split("\n"))


def configure_logging(level: str = "info", fmt: str = "console") -> None:
    """`fmt`: console, journal or json (see the module's docstring)."""
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False, pad_event_to=0, pad_level=False)
    if fmt == "journal" or (fmt == "json" and stderr_is_journal()):
        renderer = PriorityPrefix(renderer)
    # journald stamps every line itself; JSON keeps its own (it may be shipped elsewhere).
    stamp = [] if fmt == "journal" else [structlog.processors.TimeStamper(fmt="iso", utc=True)]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            *stamp,
            structlog.processors.format_exc_info,
            redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )
    _route_library_logs(logging.getLevelNamesMapping()[level.upper()])
