"""The one exception tree of prebookd.

The CLI catches `PrebookdError`, prints its message on one line and exits with
`exit_code`; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class PrebookdError(Exception):
    """Root of every error prebookd raises on purpose."""

    exit_code = 1


class ConfigError(PrebookdError):
    """A setting is missing or out of bounds."""

    exit_code = 2


class UsageError(PrebookdError):
    """A command was given input it cannot act on (unknown box, malformed day...)."""

    exit_code = 2


class StateDirInUse(UsageError):
    """Another process runs prebookd on this state directory (its spool, its embedded
    Postgres): a second one would share them."""

    def __init__(self, state_dir: str, pid: int | None) -> None:
        holder = f"pid {pid}" if pid is not None else "another process"
        super().__init__(
            f"state directory {state_dir} is in use by {holder} (another prebookd run); "
            "stop it or set PREBOOKD_STATE_DIR"
        )
        self.state_dir = state_dir
        self.pid = pid


class DatabaseError(PrebookdError):
    """Postgres could not be reached or answered something unexpected."""

    exit_code = 3


class EmbeddedPostgresError(DatabaseError):
    """The embedded Postgres could not be started."""


class MigrationError(DatabaseError):
    """A migration failed; nothing of it was applied."""


class BadRow(PrebookdError):
    """A prebooking row cannot be sent as it is; `reason` goes to `error_message`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def describe(exc: BaseException) -> str:
    """An exception as one line for the log. Some carry no message at all (a
    TimeoutError from asyncio.wait_for): then their type says what happened."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
