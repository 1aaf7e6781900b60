"""What an operator reads of a daemon at work, in the journal format systemd gets: a
line per step of a row's life, a booking that did not book as one warning saying who,
which class, when and why, and a start-up line saying what this daemon holds. Daemon
subprocess, simulator over loopback, Postgres; and the row log's own queue."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
from structlog.testing import capture_logs
from yarl import URL

from prebookd import __version__
from prebookd.daemon import rowlog
from prebookd.daemon.clock import HotWindows
from prebookd.daemon.firing_report import iso_instant
from prebookd.daemon.rowlog import RESYNC_LISTED, RowLog, class_of, tell_outcome
from prebookd.models import Booking, ResultUpdate
from prebookd.sim.server import Simulator
from tests.support import (
    DaemonProcess,
    add_box,
    add_member,
    add_prebooking,
    open_class,
    running_daemon,
    utc,
    wait_rows_final,
)

HALF_HOUR = 1800.0
LIFE = [
    "prebooking_received",
    "prebooking_armed",
    "prebooking_staged",
    "prebooking_fired",
    "booking_sent",
    "result_written",
]


@pytest.fixture
async def sim(make_sim: Callable[..., Awaitable[Simulator]]) -> Simulator:
    return await make_sim(default_capacity=100, session_max_age=60, token_max_age=3600)


def lines_about(daemon: DaemonProcess, row_id: uuid.UUID) -> list[str]:
    return [line for line in daemon.lines if f"prebooking_id={row_id}" in line.split()]


def event_of(line: str) -> str:
    return line.split()[1]  # "<6>[info] event key=value ..."


async def test_a_row_tells_its_life_one_line_a_step_in_order(
    conn: asyncpg.Connection, db_dsn: str, sim: Simulator, tmp_path: Path
) -> None:
    box = await add_box(conn, sim, "life")
    await add_member(conn, sim, "ana.garcia@life.test")
    async with running_daemon(db_dsn, tmp_path, log_format="journal") as daemon:
        t = time.time() + 1.5
        open_class(sim, "life", "1", t, 10)
        row_id = await add_prebooking(conn, box, "ana.garcia@life.test", "1", t)
        (row,) = await wait_rows_final(conn, [row_id])
        await asyncio.sleep(0.3)  # the result's confirmation is told after the write
        assert await daemon.stop() == 0

    assert row["outcome"] == "booked"
    about = lines_about(daemon, row_id)
    assert [event_of(line) for line in about if event_of(line) in LIFE] == LIFE, about
    assert all(line.startswith("<6>[info] ") for line in about), about
    received, armed = about[0], next(line for line in about if "prebooking_armed" in line)
    assert "via=notify" in received and f"instant={iso_instant(t)}" in received
    for field in ("member=an***@life.test", "box=life", "class 1 on 2030-12-01"):
        assert field in armed, armed
    assert "ana.garcia" not in "\n".join(daemon.lines)


async def test_a_booking_that_did_not_book_is_one_warning_saying_who_what_when_and_why(
    conn: asyncpg.Connection, db_dsn: str, sim: Simulator, tmp_path: Path
) -> None:
    box = await add_box(conn, sim, "gym")
    for email in ("booked@gym.test", "full@gym.test", "early@gym.test"):
        await add_member(conn, sim, email)
    # A token AimHarder no longer knows, old enough to be refreshed at arming.
    await add_member(conn, sim, "expired@gym.test", refreshed_ago=HALF_HOUR, token="revoked")
    settings = {"aimharder_url": sim.base_url, "retry_window": 0.3, "log_format": "journal"}
    async with running_daemon(db_dsn, tmp_path, **settings) as daemon:
        t = time.time() + 1.5
        open_class(sim, "gym", "1", t, 1)  # one place: the first prebooked takes it
        open_class(sim, "gym", "2", t + 600, 10)  # opens long after the retry window
        ids = {
            email: await add_prebooking(conn, box, f"{email}@gym.test", session, t)
            for email, session in (("booked", "1"), ("full", "1"), ("early", "2"), ("expired", "1"))
        }
        rows = {r["id"]: r for r in await wait_rows_final(conn, list(ids.values()))}
        assert await daemon.stop() == 0

    outcomes = {email: rows[row_id]["outcome"] for email, row_id in ids.items()}
    assert outcomes == {
        "booked": "booked", "full": "full", "early": "not_open", "expired": "session_expired"
    }  # fmt: skip
    for email, row_id in ids.items():
        about = lines_about(daemon, row_id)
        warnings = [line for line in about if line.startswith("<4>")]
        if email == "booked":
            assert warnings == [], about
            (told,) = [line for line in about if event_of(line) == "booking_sent"]
            assert told.startswith("<6>[info] booking_sent ") and "outcome=booked" in told
            continue
        # Exactly one line a person must act on, and all they need is in it.
        assert len(warnings) == 1, about
        (warning,) = warnings
        session = "2" if email == "early" else "1"
        for field in (
            f"member={email[:2]}***@gym.test",
            "box=gym",
            f"class {session} on 2030-12-01",
            f"instant={iso_instant(t)}",
            f"outcome={outcomes[email]}",
            rows[row_id]["error_message"],  # the reason, in the row's words
        ):
            assert field in warning, (field, warning)
    assert not [line for line in daemon.lines if line.startswith(("<3>", "<2>"))]


def with_password(dsn: str, password: str) -> str:
    """The same DSN with a password (the test servers trust their clients: unused)."""
    parts = urlsplit(dsn)
    user = parts.username or "postgres"
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{user}:{password}@{host}").geturl()


async def test_startup_says_version_database_rows_held_and_next_instant_without_spam(
    conn: asyncpg.Connection, db_dsn: str, sim: Simulator, tmp_path: Path
) -> None:
    box = await add_box(conn, sim, "many")
    first = time.time() + 3600
    rows = RESYNC_LISTED + 10  # more than a resync lists one by one
    await conn.executemany(
        """INSERT INTO prebookings (user_email, box_id, booking_data, available_at)
           VALUES ($1, $2, $3, $4)""",
        [
            (f"m{n}@x.es", box, {"day": "20301201", "familyId": "", "id": "1", "insist": 0},
             utc(first + n))
            for n in range(rows)
        ],
    )  # fmt: skip
    dsn = with_password(db_dsn, "dsnS3cret")
    async with running_daemon(dsn, tmp_path, log_format="journal") as daemon:
        ready = await daemon.wait_for("daemon_ready")
        assert await daemon.stop() == 0

    assert ready.startswith("<6>[info] daemon_ready ")
    for field in (
        f"version={__version__}",
        f"armed={rows}",
        f"next_instant={iso_instant(first)}",
        "postgresql://postgres:****@",  # the database, its password masked
    ):
        assert field in ready, (field, ready)
    assert not any("dsnS3cret" in line for line in daemon.lines)
    # What the first resync found: the rows opening soonest one by one, then how many
    # in all; not a line per row (a table of a million). Settings are not listed.
    listed = daemon.events("prebooking_received")
    assert len(listed) == RESYNC_LISTED and all("via=resync" in line for line in listed)
    assert f"instant={iso_instant(first)}" in listed[0]
    (found,) = daemon.events("prebookings_received")
    assert f"rows={rows}" in found and "via=resync" in found
    assert not any("arm_lead" in line for line in daemon.lines)


# ---- the row log --------------------------------------------------------------------


class Written:
    """Stands in for the row log's logger: what was written, and when."""

    def __init__(self) -> None:
        self.lines: list[tuple[float, str, str]] = []

    def log(self, level: int, event: str, **fields: object) -> None:
        self.lines.append((time.time(), logging.getLevelName(level).lower(), event))


@pytest.fixture
def written(monkeypatch: pytest.MonkeyPatch) -> Written:
    recorder = Written()
    monkeypatch.setattr(rowlog, "log", recorder)
    return recorder


async def test_lines_queued_just_before_an_instant_wait_until_its_burst_is_out(
    written: Written,
) -> None:
    hot = HotWindows()
    instant = time.time() + 0.008  # inside the guard before it: the loop is kept free
    hot.add(instant)
    rows = RowLog(hot.wait_clear)
    rows.info("prebooking_fired", prebooking_id="a")
    rows.log("warning", "booking_sent", prebooking_id="a", outcome="full")
    await asyncio.sleep(instant + rowlog.QUIET_AFTER + 0.05 - time.time())

    assert [(level, event) for _, level, event in written.lines] == [
        ("info", "prebooking_fired"),
        ("warning", "booking_sent"),
    ]
    assert all(at >= instant + rowlog.QUIET_AFTER for at, _, _ in written.lines)


async def test_instants_one_after_another_do_not_hold_lines_back_for_ever(
    written: Written,
) -> None:
    hot = HotWindows()
    start = time.time()
    instants = [start + 0.02 * n for n in range(1, 75)]  # every 20 ms for 1.5 s
    for instant in instants:
        hot.add(instant)
    rows = RowLog(hot.wait_clear)
    rows.info("result_written", prebooking_id="a")
    await asyncio.sleep(rowlog.MAX_HOLD + 0.3)

    ((at, _, _),) = written.lines
    assert at < start + rowlog.MAX_HOLD + 0.1
    assert not any(t - 0.010 <= at <= t + 0.003 for t in instants), "never at an instant"


async def test_flush_writes_what_is_queued_at_once() -> None:
    hot = HotWindows()
    hot.add(time.time() + 0.005)
    rows = RowLog(hot.wait_clear)
    with capture_logs() as logs:
        for n in range(3):
            rows.info("result_written", prebooking_id=str(n))
        rows.flush()
        assert [e["prebooking_id"] for e in logs] == ["0", "1", "2"]
        assert len(rows) == 0


def test_a_row_booked_on_its_backup_class_names_that_class_and_says_so() -> None:
    def choice(session: str, number: int, *alternatives: Booking) -> Booking:
        body = f"id={session}&day=20301201&insist=0&familyId=".encode()
        return Booking(uuid.UUID(int=1), "ana@gym.test", "gym", 1.0e9, 0.0, URL("http://x/"),
                       body, {}, alternatives=alternatives, choice=number)  # fmt: skip

    first = choice("7000", 0, choice("8000", 1), choice("9000", 2))
    label = "WOD 07:00 - 08:00 on 2030-12-01 (class 7000)"
    rows = RowLog()
    with capture_logs() as logs:
        for booked, status, outcome in ((2, "completed", "booked"), (0, "completed", "booked"),
                                        (2, "failed", "full")):  # fmt: skip
            update = ResultUpdate(first.id, status, outcome, written_at=1.0e9, booked_choice=booked)
            tell_outcome(rows, first, label, update)
    backup, plain, failed = logs
    assert backup["event"] == "booking_sent" and backup["log_level"] == "info"
    assert backup["class"] == "class 9000 on 2030-12-01"  # the class booked
    assert (backup["choice"], backup["backup_for"]) == (2, label)  # the backup, for what
    assert plain["class"] == label and "backup_for" not in plain
    assert failed["class"] == label and "backup_for" not in failed  # booked nothing


@pytest.mark.parametrize(
    ("booking_data", "shown"),
    [
        ({"day": "20301201", "id": "106015104", "familyId": ""}, "class 106015104 on 2030-12-01"),
        (
            {"day": "20301201", "id": 7, "className": "WOD", "time": "07:00 - 08:00"},
            "WOD 07:00 - 08:00 on 2030-12-01 (class 7)",
        ),
        ('{"day": "20301201", "id": "9"}', "class 9 on 2030-12-01"),
        ({"id": {"nested": 1}, "day": "\n\x1b[31m"}, "class ? on \ufffd[31m"),
        (None, "?"),
        ("not json", "?"),
    ],
)
def test_a_class_is_shown_as_a_person_reads_it(booking_data: object, shown: str) -> None:
    assert class_of(booking_data) == shown
