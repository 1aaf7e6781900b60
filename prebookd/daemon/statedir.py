"""The state directory belongs to one `prebookd run` at a time, and tells a restarted
process whose leases it inherits.

`run.lock` is held with `flock` for the life of the process. The kernel drops it when
the process dies, however it dies (SIGKILL included), so a second `prebookd run` on the
directory is refused before it touches anything (spool, embedded Postgres, database),
and a process that gets the lock knows that the one before it on this directory is dead.

The file records its holder: the pid (for the refusal message), the lease owner, and
the boot id. A new process takes back, at once, the rows leased to its predecessor
instead of waiting out their leases: they are nobody's live leases. It trusts the
record only if it was written since this boot. A record written under another boot id
comes from a disk cloned or shared with another machine, and its process may be alive
there: the lock proves nothing across machines. After a reboot the leases have run out
anyway.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prebookd.errors import ConfigError, StateDirInUse

LOCK_FILE = "run.lock"
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
# The holder writes its record right after taking the lock: a refused process reading it
# in between waits this long at most for the pid to show.
HOLDER_RECORD_WAIT = 0.2


@dataclass(frozen=True)
class StateDirLock:
    lease_owner: str  # this process's, unique: instance name, pid, random token
    predecessor: str | None  # the lease owner of the dead process before it, if known
    fd: int

    def __enter__(self) -> StateDirLock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        os.close(self.fd)  # closing the file drops the lock


def lock_state_dir(state_dir: Path, instance_name: str) -> StateDirLock:
    """Take the state directory for this process; StateDirInUse if another has it."""
    path = state_dir / LOCK_FILE
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        # No O_TRUNC: a refused process must leave the holder's record as it is. The
        # descriptor is not inherited (O_CLOEXEC): a child that outlives us (the
        # embedded Postgres) must not keep the lock.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise ConfigError(f"PREBOOKD_STATE_DIR: cannot use {state_dir}: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _holder_pid(fd)
        os.close(fd)
        raise StateDirInUse(str(state_dir), pid) from None
    except OSError as exc:  # a file system without locks
        os.close(fd)
        raise ConfigError(f"PREBOOKD_STATE_DIR: cannot lock {path}: {exc}") from exc

    boot_id = _boot_id()
    previous = _read_record(fd)
    predecessor = previous.get("lease_owner")
    if not (boot_id and previous.get("boot_id") == boot_id and isinstance(predecessor, str)):
        predecessor = None
    lease_owner = f"{instance_name}/{os.getpid()}/{secrets.token_hex(6)}"
    record = {"pid": os.getpid(), "lease_owner": lease_owner, "boot_id": boot_id}
    data = (json.dumps(record) + "\n").encode()
    try:
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
    except OSError as exc:  # a full disk, say
        os.close(fd)
        raise ConfigError(f"PREBOOKD_STATE_DIR: cannot write {path}: {exc}") from exc
    return StateDirLock(lease_owner, predecessor, fd)


def _read_record(fd: int) -> dict[str, Any]:
    """The record in the lock file; empty if there is none or it is torn."""
    try:
        record = json.loads(os.pread(fd, 4096, 0))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _holder_pid(fd: int) -> int | None:
    deadline = time.monotonic() + HOLDER_RECORD_WAIT
    while True:
        pid = _read_record(fd).get("pid")
        if isinstance(pid, int) or time.monotonic() > deadline:
            return pid if isinstance(pid, int) else None
        time.sleep(0.01)


def _boot_id() -> str:
    """This boot's random id (Linux); empty if unknown: then no record is trusted."""
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return ""
