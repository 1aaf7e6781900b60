"""The result spool: an append-only, fsynced file of results not yet in Postgres.

Every batch is appended here before it is written to Postgres, and the file is
emptied once Postgres has it. So a result survives Postgres being down (it waits
here and in memory) and prebookd being killed (the next start reads it back).
One JSON object per line; a torn last line from a crash is skipped.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable
from pathlib import Path
from uuid import UUID

import structlog

from prebookd.errors import describe
from prebookd.models import ResultUpdate

log = structlog.get_logger(__name__)


class Spool:
    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, updates: Iterable[ResultUpdate]) -> None:
        """Append and fsync (blocking: call it from a thread)."""
        lines = "".join(json.dumps(_encode(u)) + "\n" for u in updates)
        if not lines:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as spool:
            spool.write(lines)
            spool.flush()
            os.fsync(spool.fileno())

    def rewrite(self, updates: Iterable[ResultUpdate]) -> None:
        """Replace the file with these updates, atomically (blocking): a crash leaves
        the old file or the new one, never a part of either."""
        scratch = self.path.with_name(self.path.name + ".new")
        with open(scratch, "w", encoding="utf-8") as spool:
            spool.write("".join(json.dumps(_encode(u)) + "\n" for u in updates))
            spool.flush()
            os.fsync(spool.fileno())
        os.replace(scratch, self.path)
        _fsync_dir(self.path.parent)

    def clear(self) -> None:
        """Everything spooled is in Postgres now (blocking)."""
        if self.path.exists() and self.path.stat().st_size:
            with open(self.path, "w", encoding="utf-8") as spool:
                os.fsync(spool.fileno())

    def load(self) -> list[ResultUpdate]:
        """What an earlier run left unwritten, oldest first."""
        if not self.path.exists():
            return []
        updates = []
        with open(self.path, encoding="utf-8") as spool:
            for number, line in enumerate(spool, 1):
                try:
                    updates.append(_decode(json.loads(line)))
                except (ValueError, KeyError, TypeError) as exc:
                    log.warning(
                        "spool_line_skipped", path=str(self.path), line=number, error=describe(exc)
                    )
        return updates

    def size(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0


def _encode(update: ResultUpdate) -> dict[str, object]:
    fields = dataclasses.asdict(update)
    fields["id"] = str(update.id)
    return fields


def _decode(fields: dict[str, object]) -> ResultUpdate:
    known = {f.name for f in dataclasses.fields(ResultUpdate)}
    values = {k: v for k, v in fields.items() if k in known}
    values["id"] = UUID(str(values["id"]))
    return ResultUpdate(**values)  # type: ignore[arg-type]


def _fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
