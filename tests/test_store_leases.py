"""Claims against a real Postgres: a lease belongs to one process, one process holds a
whole (box, instant) group, and a dead predecessor's rows are its successor's."""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg

from prebookd.db import store
from prebookd.db.connection import connect
from tests.support import utc


async def add_rows(conn: asyncpg.Connection, box: uuid.UUID, instant: float, n: int) -> list:
    return [
        await conn.fetchval(
            "INSERT INTO prebookings (user_email, box_id, booking_data, available_at) "
            "VALUES ($1, $2, '{}', $3) RETURNING id",
            f"m{k}@x.es",
            box,
            utc(instant),
        )
        for k in range(n)
    ]


async def new_box(conn: asyncpg.Connection, name: str) -> uuid.UUID:
    box: uuid.UUID = await conn.fetchval(
        "INSERT INTO boxes (box_id, subdomain) VALUES ($1, $1) RETURNING id", name
    )
    return box


def ids_of(records: list) -> set:
    return {r["id"] for r in records}


async def test_one_process_holds_a_whole_group(conn: asyncpg.Connection) -> None:
    instant = time.time() + 30
    box, other_box = await new_box(conn, "g1"), await new_box(conn, "g2")
    first = await add_rows(conn, box, instant, 2)
    elsewhere = await add_rows(conn, other_box, instant, 1)
    assert ids_of(await store.claim(conn, first, "a/1/x", 10.0)) == set(first)

    # A row inserted late joins its group's holder: another process may not claim it,
    # and reads it as held by the holder (to watch), not as free.
    late = await add_rows(conn, box, instant, 1)
    assert await store.claim(conn, late + first, "b/2/y", 10.0) == []
    (read,) = await store.rows_by_id(conn, late)
    assert (read["status"], read["lease_owner"]) == ("pending", "a/1/x")
    assert ids_of(await store.claim(conn, late, "a/1/x", 10.0)) == set(late)
    # Same instant, another box: another group.
    assert ids_of(await store.claim(conn, elsewhere, "b/2/y", 10.0)) == set(elsewhere)

    # Same name, another process: not the holder (the name is not the lease).
    assert await store.claim(conn, first, "a/3/z", 10.0) == []
    # Its successor on the same state directory is.
    taken = await store.claim(conn, first + late, "a/3/z", 10.0, predecessor="a/1/x")
    assert ids_of(taken) == set(first + late)


async def test_a_group_is_free_once_every_lease_on_it_ran_out(conn: asyncpg.Connection) -> None:
    instant = time.time() + 30
    box = await new_box(conn, "g3")
    rows = await add_rows(conn, box, instant, 3)
    await store.claim(conn, rows[:1], "a/1/x", 10.0)
    await store.claim(conn, rows[1:2], "a/1/x", 10.0)
    # One of its leases ran out (its holder died), the other not yet: still held.
    await conn.execute(
        "UPDATE prebookings SET lease_expires_at = now() - interval '1 s' WHERE id = $1", rows[0]
    )
    assert await store.claim(conn, rows, "b/2/y", 10.0) == []
    assert {r["lease_owner"] for r in await store.rows_by_id(conn, rows)} == {"a/1/x"}
    await conn.execute(
        "UPDATE prebookings SET lease_expires_at = now() - interval '1 s' WHERE id = ANY($1)",
        rows,
    )
    assert {r["lease_owner"] for r in await store.rows_by_id(conn, rows)} == {None}
    assert ids_of(await store.claim(conn, rows, "b/2/y", 10.0)) == set(rows)


async def test_a_group_being_claimed_elsewhere_is_passed_by(
    conn: asyncpg.Connection, db_dsn: str
) -> None:
    instant = time.time() + 30
    box = await new_box(conn, "g4")
    rows = await add_rows(conn, box, instant, 2)
    other = await asyncpg.connect(db_dsn)
    try:
        async with other.transaction():  # another instance's claim, not yet committed
            assert ids_of(await store.claim(other, rows[:1], "a/1/x", 10.0)) == set(rows[:1])
            assert await store.claim(conn, rows[1:], "b/2/y", 10.0) == [], "not waited on"
        # Committed: the group is a's, the row left pending included.
        assert await store.claim(conn, rows[1:], "b/2/y", 10.0) == []
    finally:
        await other.close()


async def test_a_renewal_never_waits_on_a_row_the_web_app_holds(
    conn: asyncpg.Connection, db_dsn: str
) -> None:
    """The web app holds a row in a long transaction: the renewal answers at once,
    renews the rest, and still counts the locked row as held (the lease is ours)."""
    box = await new_box(conn, "renew")
    rows = await add_rows(conn, box, time.time() + 30, 2)
    await store.claim(conn, rows, "a/1/x", 5.0)
    locked, free = rows
    web_app = await connect(db_dsn)
    try:
        async with web_app.transaction():
            await web_app.execute("SELECT 1 FROM prebookings WHERE id = $1 FOR UPDATE", locked)
            started = time.monotonic()
            held = await asyncio.wait_for(store.renew_leases(conn, rows, "a/1/x", 60.0), 5)
            assert time.monotonic() - started < 1.0
    finally:
        await web_app.close()
    assert held == set(rows)
    expiry = {
        r["id"]: r["lease_expires_at"].timestamp()
        for r in await conn.fetch("SELECT id, lease_expires_at FROM prebookings")
    }
    assert expiry[free] > time.time() + 50  # renewed
    assert expiry[locked] < time.time() + 10  # skipped this time, renewed next time
