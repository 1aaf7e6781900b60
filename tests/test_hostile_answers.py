"""Hostile answers: whatever AimHarder (or what stands in front of it) answers, each
row ends with a reason a member can read, the result is written, and the daemon
goes on booking.

Three levels: `classify_http` on generated bodies (hypothesis); the simulator's
garbage, wrong_type and endless faults as a raw HTTP client sees them; and a real
`prebookd run` facing each of them.

How prebookd classifies (outcomes.py): an unreadable answer (not JSON, or cut) is
retried inside the retry window, and if it stays unreadable the row fails saying the
booking may have gone through; a JSON answer of the wrong shape fails at once as
`bad_answer`; an answer body is read within `request_timeout` in all and never past
MAX_ANSWER_BYTES.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prebookd.aimharder.client import MAX_ANSWER_BYTES
from prebookd.aimharder.outcomes import Verdict, classify_http
from prebookd.db import store
from prebookd.models import ResultUpdate
from prebookd.sim.faults import draw_fault, draw_variant
from prebookd.sim.server import Faults, SimClass, Simulator
from tests.support import (
    add_box,
    add_member,
    add_prebooking,
    open_class,
    running_daemon,
    wait_rows_final,
)

REASON_LIMIT = 300

# --- classify_http on any body -----------------------------------------------------

keys = st.sampled_from(["bookState", "errorMssgLang", "errorMssg", "logout", "max", "id"]) | (
    st.text(max_size=8)
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and infinities too: Python's json reads them
    | st.text(max_size=20)
    | st.sampled_from(["\x00", "\ud800", "-12", "1", "ERROR_ANTELACION_CLIENTE"])
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5),
    max_leaves=15,
)
answers = st.dictionaries(keys, json_values, max_size=6) | json_values


bodies = st.one_of(
    # As Python's json writes it: NaN/Infinity, \\u0000 and lone \\ud800 escapes.
    answers.map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=300),
    st.text(max_size=100).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.integers(1, 3_000).map(lambda n: b"[" * n + b"]" * n),
    st.sampled_from(
        [
            b'{"bookState": Infinity}',
            b'{"bookState": NaN, "x": -Infinity}',
            b'{"bookState": -12, "errorMssgLang": "\\u0000\\ud800\\n"}',
            b'{"bookState": -8, "max": "' + b"9" * 10_000 + b'"}',
            b'{"bookState": ' + b"9" * 4_000 + b"}",
            b"\xc0\x01\x00\x1b[31m",
        ]
    ),
)
statuses = st.sampled_from([200, 200, 200, 201, 204, 301, 403, 404, 429, 500, 502, 503])


def assert_storable(result: Any) -> None:
    """What Postgres jsonb accepts: no NaN/Infinity, no NUL, no lone surrogate."""
    assert "\\u0000" not in json.dumps(result, allow_nan=False)
    json.dumps(result, ensure_ascii=False).encode("utf-8")  # fails on a lone surrogate


@settings(max_examples=400, deadline=None, database=None)
@given(statuses, bodies)
def test_any_answer_is_classified_with_a_readable_reason(status: int, body: bytes) -> None:
    outcome, result = classify_http(status, body)
    assert outcome.verdict in (Verdict.COMPLETED, Verdict.FAILED, Verdict.RETRY)
    assert outcome.code and outcome.code.isidentifier()
    assert 0 < len(outcome.reason) < REASON_LIMIT, outcome.reason
    assert outcome.reason.isprintable(), repr(outcome.reason)
    assert_storable(result)
    if result is None:
        assert_storable({"http_status": status, "error": outcome.reason})


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 5_000 + b"]" * 5_000,  # RecursionError escaped classify_http
        b'{"bookState": Infinity}',  # OverflowError escaped
        b"\xc0\x01\x00garbage",  # NUL in error_message: the results batch failed
        b'{"bookState": 1, "x": "\\u0000"}',  # NUL in result
        b'{"bookState": -1, "x": "\\ud800"}',  # lone surrogate in result
        b'{"bookState": -1, "x": NaN}',  # NaN in result
    ],
)
async def test_results_of_hostile_answers_are_written(
    conn: asyncpg.Connection, body: bytes
) -> None:
    """Each of these used to crash the sending task, or make every write of the batch
    it was in fail (over and over, with every row reported meanwhile)."""
    good, hostile = [
        await conn.fetchval("INSERT INTO prebookings (user_email) VALUES ($1) RETURNING id", e)
        for e in ("good@x.es", "hostile@x.es")
    ]
    outcome, answer = classify_http(200, body)
    await store.write_results(
        conn,
        [
            ResultUpdate(good, "completed", outcome="booked", result={"bookState": 1}),
            ResultUpdate(
                hostile,
                "failed",
                outcome=outcome.code,
                error_message=outcome.reason,
                result=answer if answer is not None else {"error": outcome.reason},
            ),
        ],
    )
    rows = {r["id"]: r for r in await conn.fetch("SELECT id, status FROM prebookings")}
    assert (rows[good]["status"], rows[hostile]["status"]) == ("completed", "failed")


# --- the simulator's garbage, wrong_type and endless answers ---------------------------

DAY = "20301201"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def simulator(seed: int) -> Simulator:
    sim = Simulator(default_capacity=100, seed=seed)
    await sim.start()
    sim.add_box("alpha")
    sim.add_class("alpha", SimClass("1", DAY, capacity=100, opens_at=0.0))
    return sim


async def raw_book(
    http: aiohttp.ClientSession, sim: Simulator, cookie: str, *, read: int | None = None
) -> tuple[int, str, bytes]:
    """Status, Content-Type and (the first `read` bytes of) the body, however odd."""
    async with http.post(
        f"{sim.box_url('alpha')}/api/book",
        data={"id": "1", "day": DAY, "insist": "0", "familyId": ""},
        headers={"Cookie": f"amhrdrauth={cookie}"},
        timeout=aiohttp.ClientTimeout(total=5),
    ) as response:
        body = await response.content.readexactly(read) if read else await response.read()
        return response.status, response.content_type, body


async def test_garbage_is_random_bytes_after_the_booking_was_made(
    http: aiohttp.ClientSession,
) -> None:
    sim = await simulator(seed=3)
    try:
        sim.set_faults("alpha", Faults(garbage_rate=1.0))
        bodies = []
        for n in range(5):
            sim.add_member(f"m{n}@x.es", f"cookie{n}")
            status, kind, body = await raw_book(http, sim, f"cookie{n}")
            assert (status, kind) == (200, "application/json")
            with pytest.raises(ValueError):
                json.loads(body)
            bodies.append(body)
        assert len(set(bodies)) == 5, "drawn anew for each request"
        assert sim.bookings("alpha", "1") == [f"m{n}@x.es" for n in range(5)]
        assert {(r.fault, r.answer["bookState"]) for r in sim.requests} == {("garbage", 1)}
    finally:
        await sim.stop()


async def test_wrong_type_is_json_of_the_wrong_shape_as_text(
    http: aiohttp.ClientSession,
) -> None:
    sim = await simulator(seed=5)
    try:
        sim.set_faults("alpha", Faults(wrong_type_rate=1.0))
        shapes = set()
        for n in range(40):
            sim.add_member(f"m{n}@x.es", f"cookie{n}")
            status, kind, body = await raw_book(http, sim, f"cookie{n}")
            assert (status, kind) == (200, "text/plain")
            try:
                value = json.loads(body)
            except RecursionError:
                value = "deep"
            assert not isinstance(value, dict), "never the object a client expects"
            shapes.add(type(value).__name__ if value != "deep" else "deep")
        assert shapes == {"list", "int", "str", "NoneType", "bool", "deep"}
        assert len(sim.bookings("alpha", "1")) == 40
    finally:
        await sim.stop()


async def test_an_endless_body_streams_until_the_client_gives_up(
    http: aiohttp.ClientSession,
) -> None:
    sim = await simulator(seed=7)
    try:
        sim.add_member("m@x.es", "cookie")
        sim.set_faults("alpha", Faults(endless_rate=1.0, endless_chunk_interval=0.0))
        started = time.monotonic()
        status, kind, body = await raw_book(http, sim, "cookie", read=4 * MAX_ANSWER_BYTES)
        assert (status, kind) == (200, "application/json")
        assert body.startswith(b'{"clasesContratadas"') and len(body) > MAX_ANSWER_BYTES
        assert time.monotonic() - started < 5
        # The client went away: the simulator stops streaming and answers the next.
        sim.set_faults("alpha", Faults())
        sim.add_member("n@x.es", "cookie-n")
        status, _, body = await raw_book(http, sim, "cookie-n")
        assert (status, json.loads(body)["bookState"]) == (200, 1)
        assert [r.fault for r in sim.requests] == ["endless", None]
    finally:
        stopping = time.monotonic()
        await sim.stop()
        assert time.monotonic() - stopping < 3, "no stream left running"


def test_existing_faults_draw_as_before() -> None:
    """New rates at zero draw nothing: a seed gives the same faults as it always did."""
    faults = Faults(error_rate=0.3, html_rate=0.2, truncated_rate=0.2)
    old, new = random.Random(42), random.Random(42)
    expected = [draw_fault(faults, old) for _ in range(200)]
    got = []
    for _ in range(200):
        fault = draw_fault(faults, new)
        draw_variant(fault, new)
        got.append(fault)
    assert got == expected


# --- the daemon facing them ------------------------------------------------------------

# box -> (faults, rows); request_timeout is 1 s and retry_window 1 s in this test.
FACED = {
    "garbage": (Faults(garbage_rate=1.0), 3),
    "wrong-type": (Faults(wrong_type_rate=1.0), 6),
    "endless-fast": (Faults(endless_rate=1.0, endless_chunk_interval=0.0), 2),
    "endless-slow": (Faults(endless_rate=1.0, endless_chunk_interval=0.2), 2),
    # Now and then: the retry hears "already booked" and the row is completed.
    "garbage-sometimes": (Faults(garbage_rate=0.5), 2),
}
# box -> (status, outcome, words every error_message has; a tuple: one of them)
EXPECTED: dict[str, tuple[str, str, tuple[str | tuple[str, ...], ...]]] = {
    "garbage": ("failed", "bad_answer", ("unreadable answer", "may have gone through")),
    # One wrong type in six is nested deeper than json reads: unreadable, not unexpected.
    "wrong-type": (
        "failed",
        "bad_answer",
        (("unexpected answer", "unreadable answer"), "may have gone through"),
    ),
    "endless-fast": ("failed", "bad_answer", ("unreadable answer", "may have gone through")),
    "endless-slow": ("failed", "transport_error", ("TimeoutError", "may have gone through")),
}


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    simulator = Simulator(default_capacity=100, seed=13)
    await simulator.start()
    try:
        yield simulator
    finally:
        await simulator.stop()


async def test_the_daemon_faces_each_hostile_answer_and_books_on(
    conn: asyncpg.Connection, db_dsn: str, sim: Simulator, tmp_path: Path
) -> None:
    t = time.time() + 4.0
    plan = []
    boxes = {}
    for name, (faults, count) in {**FACED, "healthy": (Faults(), 1)}.items():
        subdomain = f"box-{name}"
        boxes[name] = await add_box(conn, sim, subdomain)
        open_class(sim, subdomain, "1", t, 100)
        sim.set_faults(subdomain, faults)
        for n in range(count):
            email = f"{name}{n}@x.es"
            await add_member(conn, sim, email)
            plan.append((name, email))
    async with running_daemon(
        db_dsn, tmp_path, retry_window=1.0, retry_interval=0.1, request_timeout=1.0
    ) as daemon:
        ids = {
            email: (name, await add_prebooking(conn, boxes[name], email, "1", t))
            for name, email in plan
        }
        started = time.monotonic()
        rows = {
            r["id"]: r
            for r in await wait_rows_final(conn, [i for _, i in ids.values()], timeout=30)
        }
        # Bounded: the retry window, plus one request timeout for the last attempt.
        assert time.time() < t + 1.0 + 1.0 + 3.0, f"final {time.monotonic() - started:.1f} s in"
        # Still serving: a row added after all that is booked, on time.
        later = time.time() + 1.5
        open_class(sim, "box-healthy", "2", later, 10)
        again = await add_prebooking(conn, boxes["healthy"], "healthy0@x.es", "2", later)
        (after,) = await wait_rows_final(conn, [again])
        assert await daemon.stop() == 0

    for email, (name, row_id) in ids.items():
        row = rows[row_id]
        where = (name, email, row["status"], row["outcome"], row["error_message"])
        if name == "healthy":
            assert (row["status"], row["outcome"]) == ("completed", "booked"), where
        elif name == "garbage-sometimes":
            assert row["status"] == "completed", where
            assert row["outcome"] in ("booked", "already_booked"), where
        else:
            status, outcome, words = EXPECTED[name]
            assert (row["status"], row["outcome"]) == (status, outcome), where
            for word in words:
                choices = (word,) if isinstance(word, str) else word
                assert any(c in row["error_message"] for c in choices), where
            assert row["error_message"].isprintable(), where
            assert row["attempts"] >= 1, where
            assert row["result"] is not None, where
    assert (after["status"], after["outcome"]) == ("completed", "booked")
    assert 0 <= after["lateness_ms"] < 100
    crashes = [line for line in daemon.lines if "Traceback" in line or "crashed" in line]
    assert crashes == []
    assert not daemon.events("results_write_failed"), "every result was written at once"
    # The simulator booked what prebookd could not hear about.
    assert len(sim.bookings("box-garbage", "1")) == FACED["garbage"][1]
