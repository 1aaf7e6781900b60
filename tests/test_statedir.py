"""The state directory's lock: one process at a time, and a restarted process told whose
leases it inherits, but only from a record written since this boot."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from prebookd.daemon.statedir import LOCK_FILE, lock_state_dir
from prebookd.errors import StateDirInUse


def test_a_second_lock_is_refused_naming_the_holder(tmp_path: Path) -> None:
    with lock_state_dir(tmp_path / "state", "vps") as held:
        record = (tmp_path / "state" / LOCK_FILE).read_text()
        with pytest.raises(StateDirInUse) as refused:
            lock_state_dir(tmp_path / "state", "vps")
        assert refused.value.pid == os.getpid() and refused.value.exit_code == 2
        assert (tmp_path / "state" / LOCK_FILE).read_text() == record, "left as it was"
        assert held.lease_owner.startswith(f"vps/{os.getpid()}/")


def test_the_next_holder_inherits_the_leases_of_the_last(tmp_path: Path) -> None:
    with lock_state_dir(tmp_path, "vps") as first:
        assert first.predecessor is None
    with lock_state_dir(tmp_path, "vps") as second:
        assert second.predecessor == first.lease_owner
        assert second.lease_owner != first.lease_owner, "one lease owner per process"
    with lock_state_dir(tmp_path, "vps") as third:
        assert third.predecessor == second.lease_owner


@pytest.mark.parametrize(
    "record",
    [
        # Written under another boot: a disk cloned from (or shared with) another
        # machine, whose process may be alive there.
        json.dumps({"pid": 1, "lease_owner": "vps/1/abc", "boot_id": "another-boot"}),
        "",
        '{"pid": 1, "lease_owner": "vps/1/ab',  # torn
        "[1, 2]",
    ],
    ids=["other-boot", "empty", "torn", "not-a-record"],
)
def test_a_record_not_from_this_boot_is_not_trusted(tmp_path: Path, record: str) -> None:
    (tmp_path / LOCK_FILE).write_text(record)
    with lock_state_dir(tmp_path, "vps") as held:
        assert held.predecessor is None
