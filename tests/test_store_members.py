"""A member's rows and sessions meet whatever case each side wrote the e-mail in."""

from __future__ import annotations

import time

import asyncpg

from prebookd.db import store
from tests.support import utc


async def test_a_claim_finds_the_session_whatever_the_case_of_the_email(
    conn: asyncpg.Connection,
) -> None:
    box = await conn.fetchval(
        "INSERT INTO boxes (box_id, subdomain) VALUES ('b', 'b') RETURNING id"
    )
    await conn.execute(
        """INSERT INTO auth_sessions (user_email, aimharder_token, aimharder_cookies,
                                      fingerprint, session_type)
           VALUES ('Jane.Doe@Example.ES', 't', '[]', 'f', 'background')"""
    )
    instant = time.time() + 1800
    row = await conn.fetchval(
        "INSERT INTO prebookings (user_email, box_id, booking_data, available_at) "
        "VALUES ('jane.doe@example.es', $1, '{}', $2) RETURNING id",
        box,
        utc(instant),
    )
    (claimed,) = await store.claim(conn, [row], "a/1/x", 10.0)
    assert claimed["session_found"]
    kept = await store.sessions_to_keep(conn, horizon_end=instant + 60, stale_before=time.time())
    assert [r["user_email"] for r in kept] == ["Jane.Doe@Example.ES"]
