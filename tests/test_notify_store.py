"""The outbox's SQL against a real Postgres: a message exists exactly when its result
does, once per (row, event, channel); claims are leases; failures retry, then die."""

from __future__ import annotations

import time
import uuid

import asyncpg
import pytest

from prebookd.db import notify_store, store
from prebookd.models import ResultUpdate
from prebookd.notify.messages import render


async def seed(conn: asyncpg.Connection) -> tuple[uuid.UUID, uuid.UUID]:
    box = await conn.fetchval(
        "INSERT INTO boxes (box_id, subdomain, name, timezone) "
        "VALUES ('1', 'norte', 'CrossFit Norte', 'Europe/Madrid') RETURNING id"
    )
    rows = []
    for email in ("jane@x.es", "nobody@x.es"):
        rows.append(
            await conn.fetchval(
                """INSERT INTO prebookings (user_email, box_id, booking_data, available_at,
                                           class_label)
                   VALUES ($1, $2, $3, now() + interval '1 hour', '07:00 WOD') RETURNING id""",
                email,
                box,
                {"day": "20301201", "familyId": "", "id": "77", "insist": 0},
            )
        )
    for url, events in (
        ("json://127.0.0.1/a", ["outcome", "warning"]),
        ("json://127.0.0.1/b", ["outcome"]),
        ("json://127.0.0.1/c", ["warning"]),
    ):
        await notify_store.add_channel(conn, "JANE@x.es", url, events, "en")
    return rows[0], rows[1]


async def test_a_final_result_writes_its_messages_in_the_same_statement_once(
    conn: asyncpg.Connection,
) -> None:
    jane, nobody = await seed(conn)
    await store.write_results(conn, [ResultUpdate(jane, "executing", written_at=time.time())])
    assert await conn.fetchval("SELECT count(*) FROM prebookd_outbox") == 0
    final = ResultUpdate(jane, "completed", outcome="booked", lateness_ms=0.4, attempts=1)
    await store.write_results(conn, [final, ResultUpdate(nobody, "failed", outcome="full")])
    await store.write_results(conn, [final])  # a batch retried, a spool replayed
    messages = await conn.fetch("SELECT * FROM prebookd_outbox ORDER BY id")
    assert len(messages) == 2  # jane's two outcome channels; nobody has none
    assert {m["event"] for m in messages} == {"outcome"}
    payload = messages[0]["payload"]
    assert payload["outcome"] == "booked" and payload["box"] == "CrossFit Norte"
    assert payload["class_id"] == "77" and payload["lateness_ms"] == 0.4
    # The class as the member knows it, where `add` or a rule recorded it from the listing.
    assert payload["class_name"] == "07:00 WOD"
    assert "07:00 WOD" in render("outcome", payload, "en").body
    assert "token" not in str(payload).lower() and "cookie" not in str(payload).lower()


async def test_claims_are_leases_failures_retry_then_die(conn: asyncpg.Connection) -> None:
    jane, _ = await seed(conn)
    await store.write_results(conn, [ResultUpdate(jane, "failed", outcome="full")])
    first = await notify_store.claim_due(conn, 10, lease_seconds=60)
    assert len(first) == 2 and first[0]["url"] == "json://127.0.0.1/a"
    assert await notify_store.claim_due(conn, 10, lease_seconds=60) == []  # leased
    await notify_store.mark_sent(conn, first[0]["id"])
    await notify_store.mark_failed(conn, first[1]["id"], "HTTP 500", time.time() - 1)
    (again,) = await notify_store.claim_due(conn, 10, lease_seconds=60)
    assert again["id"] == first[1]["id"] and again["attempts"] == 2
    await notify_store.mark_failed(conn, again["id"], "HTTP 500 again", None)
    counts = await notify_store.outbox_counts(conn)
    assert (counts["sent"], counts["dead"], counts["pending"]) == (1, 1, 0)
    dead = await conn.fetchrow("SELECT * FROM prebookd_outbox WHERE status = 'dead'")
    assert dead["last_error"] == "HTTP 500 again"


async def test_a_warning_is_queued_once_per_row_and_cause(conn: asyncpg.Connection) -> None:
    await seed(conn)
    horizon = time.time() + 7200
    assert (
        await notify_store.enqueue_member_warning(conn, "jane@X.es", "session_dead", horizon) == 2
    )
    assert (
        await notify_store.enqueue_member_warning(conn, "jane@x.es", "session_dead", horizon) == 0
    )
    assert await notify_store.enqueue_member_warning(conn, "jane@x.es", "class_gone", horizon) == 2
    # Beyond the horizon: nothing to warn of.
    assert await notify_store.enqueue_member_warning(conn, "jane@x.es", "x", time.time()) == 0


async def test_a_role_without_the_outbox_grants_still_writes_results(
    conn: asyncpg.Connection,
) -> None:
    """An upgrade whose role SQL was not run again: the daemon sees it at start
    (may_notify) and writes results without their messages, rather than not at all."""
    jane, _ = await seed(conn)
    role = f"prebookd_test_{uuid.uuid4().hex[:8]}"
    await conn.execute(f'CREATE ROLE "{role}"')
    try:
        await conn.execute(f'GRANT SELECT, UPDATE ON prebookings TO "{role}"')
        await conn.execute(f'GRANT SELECT ON boxes TO "{role}"')
        await conn.execute(f'SET ROLE "{role}"')
        assert not await notify_store.may_notify(conn)
        final = ResultUpdate(jane, "completed", outcome="booked")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await store.write_results(conn, [final])
        await store.write_results(conn, [final], with_messages=False)
        await conn.execute("RESET ROLE")
        assert await notify_store.may_notify(conn)
        assert await conn.fetchval("SELECT status FROM prebookings WHERE id = $1", jane) == (
            "completed"
        )
    finally:
        await conn.execute("RESET ROLE")
        await conn.execute(f'REVOKE ALL ON prebookings, boxes FROM "{role}"')
        await conn.execute(f'DROP ROLE "{role}"')
