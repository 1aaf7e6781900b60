"""The batched result writer against a real Postgres: merging, one refused row never
holding back the others, and a spool that keeps what is not written, once."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

import asyncpg
import pytest

from prebookd.daemon import results as results_module
from prebookd.daemon.results import ResultWriter
from prebookd.daemon.spool import Spool
from prebookd.db import store
from prebookd.models import ResultUpdate


async def insert_loaded(conn: asyncpg.Connection) -> uuid.UUID:
    row_id: uuid.UUID = await conn.fetchval(
        """INSERT INTO prebookings (user_email, booking_data, available_at, status)
           VALUES ('a@x.es', '{"day": "20301201", "id": "1"}', now(), 'loaded')
           RETURNING id"""
    )
    return row_id


async def test_executing_then_completed_in_one_batch_is_one_final_row(
    conn: asyncpg.Connection,
) -> None:
    row_id = await insert_loaded(conn)
    writer = ResultWriter(lambda u: store.write_results(conn, u), flush_interval=0.1)
    writer.report(ResultUpdate(row_id, "executing", written_at=1.0, attempts=1))
    writer.report(ResultUpdate(row_id, "completed", outcome="booked", result={"bookState": 1}))
    writer.report(ResultUpdate(row_id, "executing", attempts=1))  # late: never undoes final
    assert await writer.flush()
    row = await conn.fetchrow("SELECT * FROM prebookings WHERE id = $1", row_id)
    assert (row["status"], row["outcome"], row["attempts"]) == ("completed", "booked", 1)
    assert row["result"] == {"bookState": 1}
    assert row["written_at"] is not None


async def test_a_result_postgres_refuses_does_not_hold_back_the_batch(
    conn: asyncpg.Connection,
) -> None:
    good, bad = await insert_loaded(conn), await insert_loaded(conn)
    writer = ResultWriter(lambda u: store.write_results(conn, u), flush_interval=0.1)
    writer.report(ResultUpdate(good, "completed", outcome="booked", result={"bookState": 1}))
    # A NUL character: jsonb refuses it (invalid text representation).
    writer.report(ResultUpdate(bad, "failed", outcome="bad_answer", result={"x": "a\u0000b"}))
    assert await writer.flush()
    rows = {r["id"]: r for r in await conn.fetch("SELECT * FROM prebookings")}
    assert rows[good]["status"] == "completed"
    assert rows[bad]["status"] == "failed"
    assert rows[bad]["result"] is None
    assert "could not be stored" in rows[bad]["error_message"]
    assert writer.backlog == 0


async def refuse_poison(conn: asyncpg.Connection) -> None:
    """A rule of the site's own (a CHECK constraint) that one result breaks."""
    await conn.execute(
        "ALTER TABLE prebookings ADD CONSTRAINT no_poison"
        " CHECK (error_message IS NULL OR error_message NOT LIKE '%poison%')"
    )


async def test_a_row_postgres_refuses_is_kept_and_the_rest_goes_through(
    conn: asyncpg.Connection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good, poisoned, other = [await insert_loaded(conn) for _ in range(3)]
    await refuse_poison(conn)
    # Tried again, alone, at every flush here (every minute in the daemon).
    monkeypatch.setattr(results_module, "REFUSED_RETRY", 0.0)
    spool = Spool(tmp_path / "results.spool")
    writer = ResultWriter(lambda u: store.write_results(conn, u), flush_interval=0.1, spool=spool)
    writer.report(ResultUpdate(good, "completed", outcome="booked"))
    writer.report(ResultUpdate(poisoned, "failed", outcome="full", error_message="poison"))
    writer.report(ResultUpdate(other, "failed", outcome="full", error_message="class full"))

    assert await writer.flush()  # Postgres is there: refusing one row is not an outage
    status = {r["id"]: r["status"] for r in await conn.fetch("SELECT * FROM prebookings")}
    assert status == {good: "completed", poisoned: "loaded", other: "failed"}
    assert writer.backlog == 1
    assert [u.id for u in spool.load()] == [poisoned]  # kept where a restart finds it

    # Each try is refused again: the spool does not grow with them.
    for _ in range(5):
        assert await writer.flush()
    assert [u.id for u in spool.load()] == [poisoned]

    await conn.execute("ALTER TABLE prebookings DROP CONSTRAINT no_poison")
    assert await writer.flush()
    row = await conn.fetchrow("SELECT status, outcome FROM prebookings WHERE id = $1", poisoned)
    assert (row["status"], row["outcome"]) == ("failed", "full")
    assert writer.backlog == 0 and spool.load() == []


async def test_shutdown_waits_no_longer_for_results_postgres_refuses(
    conn: asyncpg.Connection, tmp_path: Path
) -> None:
    good, poisoned = await insert_loaded(conn), await insert_loaded(conn)
    await refuse_poison(conn)
    spool = Spool(tmp_path / "results.spool")
    writer = ResultWriter(lambda u: store.write_results(conn, u), flush_interval=0.1, spool=spool)
    writer.report(ResultUpdate(good, "completed", outcome="booked"))
    writer.report(ResultUpdate(poisoned, "failed", error_message="poison"))
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert not await writer.drain(started + 20.0)  # not all in Postgres: it says so
    assert loop.time() - started < 5.0
    assert [u.id for u in spool.load()] == [poisoned]


class SlowSpool(Spool):
    """A disk that takes its time to fsync."""

    def append(self, updates: Iterable[ResultUpdate]) -> None:
        time.sleep(0.3)
        super().append(updates)


async def test_a_flush_cancelled_while_spooling_loses_nothing(
    conn: asyncpg.Connection, tmp_path: Path
) -> None:
    row_id = await insert_loaded(conn)
    spool = SlowSpool(tmp_path / "results.spool")
    writer = ResultWriter(lambda u: store.write_results(conn, u), flush_interval=0.1, spool=spool)
    writer.report(ResultUpdate(row_id, "completed", outcome="booked", attempts=1))
    flushing = asyncio.create_task(writer.flush())
    await asyncio.sleep(0.1)  # inside the spool's fsync
    flushing.cancel()  # the daemon stopping
    with pytest.raises(asyncio.CancelledError):
        await flushing
    assert writer.backlog == 1  # still ours

    assert await writer.drain(asyncio.get_running_loop().time() + 10.0)
    row = await conn.fetchrow("SELECT status, outcome FROM prebookings WHERE id = $1", row_id)
    assert (row["status"], row["outcome"]) == ("completed", "booked")
