"""`prebookd demo`: what a newcomer runs first, checked the way they would read it."""

from __future__ import annotations

import asyncio
import os
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from prebookd.demo.view import build_report, build_scenario, render_summary
from prebookd.errors import UsageError
from prebookd.log import mask_email
from prebookd.sim.model import RecordedRequest

# A table row: member, prebooked #, written (ms), arrival #, arrival (ms), outcome.
_ROW = re.compile(r"^  (\S+@\S+)\s+(\d+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)$")


@dataclass(frozen=True)
class Row:
    member: str
    prebooked: int
    written_ms: float
    arrival: int
    arrival_ms: float
    outcome: str


def demo_env(**settings: str) -> dict[str, str]:
    """This environment without the developer's PREBOOKD_* settings, plus these."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREBOOKD_")}
    env.pop("STATE_DIRECTORY", None)
    env.update(settings)
    return env


async def run_demo(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "prebookd", "demo", *args,
        env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    except TimeoutError:
        proc.terminate()  # the demo cleans up on SIGTERM
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def tables(out: str) -> list[list[Row]]:
    """Every table the demo printed, one per instant, rows as shown."""
    found: list[list[Row]] = []
    for line in out.splitlines():
        if line.lstrip().startswith("member ") and "prebooked #" in line:
            found.append([])
        match = _ROW.match(line)
        if match and found:
            member, prebooked, written, arrival, arrival_ms, outcome = match.groups()
            numbers = int(prebooked), float(written), int(arrival), float(arrival_ms)
            found[-1].append(Row(member, *numbers, outcome))
    return found


def left_behind(workdir: Path) -> list[str]:
    """What the demo failed to clean up: its directory, a Postgres serving its data."""
    found = [f"directory {workdir}"] if workdir.exists() else []
    if postgres_running_in(workdir / "pgdata"):
        found.append("a postgres process")
    return found


def postgres_running_in(data_dir: Path) -> bool:
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:  # the process ended meanwhile
            continue
        if str(data_dir).encode() in args:
            return True
    return False


def assert_first_class_fifo(out: str, members: int, places: int) -> None:
    first = tables(out)[0]
    assert len(first) == members, out
    assert [r.prebooked for r in first] == list(range(1, members + 1))
    # Sent, and answered, in the order members prebooked.
    assert [r.arrival for r in first] == [r.prebooked for r in first], out
    assert [r.outcome for r in first] == ["booked"] * places + ["full"] * (members - places)
    assert all(r.written_ms >= 0 and r.arrival_ms >= 0 for r in first), out


async def test_demo_on_a_fresh_machine_books_fifo_and_leaves_nothing_behind() -> None:
    args = ("--members", "8", "--places", "3", "--lead", "4")

    code, out, err = await run_demo(*args, env=demo_env())

    assert code == 0, out + err
    assert_first_class_fifo(out, members=8, places=3)
    assert len(tables(out)) == 3
    summaries = [line for line in out.splitlines() if line.startswith("  => ")]
    assert len(summaries) == 3
    assert all("FIFO held: yes" in s and "early requests: 0" in s for s in summaries), out
    assert "3 booked, 5 full" in summaries[0]
    assert "FIFO held at every instant; 0 early requests" in out
    # Cleanup: the daemon exited cleanly, the embedded Postgres is gone with its files.
    assert "daemon     stopped by SIGTERM, exit code 0" in out
    workdir = Path(re.findall(r"^removed\s+(\S+)$", out, re.MULTILINE)[0])
    assert workdir.name.startswith("prebookd-demo-")
    assert f"data in {workdir / 'pgdata'}" in out
    assert left_behind(workdir) == []


async def test_demo_on_a_configured_server_uses_a_database_of_its_own(pg_server_dsn: str) -> None:
    admin = await asyncpg.connect(pg_server_dsn)
    try:
        before = {r["datname"] for r in await admin.fetch("SELECT datname FROM pg_database")}
        env = demo_env(PREBOOKD_DATABASE_URL=pg_server_dsn)
        code, out, err = await run_demo(
            "--members", "4", "--places", "2", "--lead", "3", env=env
        )  # fmt: skip
        after = {r["datname"] for r in await admin.fetch("SELECT datname FROM pg_database")}
    finally:
        await admin.close()

    assert code == 0, out + err
    assert_first_class_fifo(out, members=4, places=2)
    name = re.findall(r"database (prebookd_demo_[0-9a-f]+) dropped", out)[0]
    assert name not in after
    # Concurrent test sessions create and drop their own databases on the same server:
    # compare only what looks like the demo's.
    demo_dbs = {d for d in after - before if d.startswith("prebookd_demo_")}
    assert demo_dbs == set()
    assert "embedded" not in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lead", "2"], "--lead must be between 3 and 300 seconds"),
        (["--members", "5", "--places", "5"], "--places must be between 1 and 4"),
        (["--members", "1"], "--members must be between 2 and 100"),
        (["--places", "0"], "--places must be between 1 and 29"),
    ],
)
async def test_bad_values_are_one_line_errors(args: list[str], message: str) -> None:
    code, out, err = await run_demo(*args, env=demo_env())

    assert code == 2
    [line] = err.strip().splitlines()
    assert line.startswith("prebookd: error: ")
    assert message in line
    assert out == ""


def test_scenario_is_validated_before_anything_starts() -> None:
    with pytest.raises(UsageError, match="fewer than --members"):
        build_scenario(10, 10, 8.0, random.Random(1))
    scenario = build_scenario(30, 10, 8.0, random.Random(1))
    first = [email for email, sid in scenario.prebookings if sid == "1401"]
    assert sorted(first) == sorted(scenario.members)  # everyone prebooked the first class
    # Members prebooked in shuffled order, not by name; masked e-mails tell them apart.
    assert first != sorted(first)
    assert len({mask_email(email) for email in first}) == 30


def _request(seq: int, email: str, arrived_at: float) -> RecordedRequest:
    return RecordedRequest(
        seq, arrived_at, arrived_at, "demo", "POST", "/api/book", email, "1401", "20301201", {}
    )


def test_a_request_out_of_order_or_early_is_reported() -> None:
    rows = [
        {"user_email": "ana@demo.test", "status": "completed", "outcome": "booked",
         "lateness_ms": 0.2},
        {"user_email": "bruno@demo.test", "status": "failed", "outcome": "full",
         "lateness_ms": 0.3},
    ]  # fmt: skip
    # bruno's request arrived before ana's, and before the instant.
    requests = [_request(0, "bruno@demo.test", 99.9995), _request(1, "ana@demo.test", 100.001)]

    report = build_report("WOD", 100.0, 1, rows, requests)

    assert [line.arrived for line in report.lines] == [2, 1]
    assert not report.fifo_held
    assert report.early == 1
    assert "FIFO held: NO; early requests: 1" in render_summary(report)
