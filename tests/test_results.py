"""The batched result writer against a real Postgres: merging, and one refused row
never holding back the others."""

from __future__ import annotations

import uuid

import asyncpg

from prebookd.daemon.results import ResultWriter
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
