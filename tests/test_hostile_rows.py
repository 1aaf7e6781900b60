"""Hostile rows and notifications: whatever the web app (or anyone with a database
connection) writes, each row ends failed with a reason a member can read, and the
daemon goes on firing the others on time.

Two levels. Pure: `build_booking`, `BookingData`, `parse_notice` and the row readers
on generated input of every shape (hypothesis). A row that cannot be sent must raise
`BadRow` and nothing else: the engine fails a row on `BadRow`, and any other
exception out of `build_booking` ends the task arming it, which stops the daemon.
Daemon: a real `prebookd run` fed one batch of generated hostile rows and garbage
notifications, then a good row that must still fire on time.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import asyncpg
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from prebookd.db.connection import connect
from prebookd.errors import BadRow
from prebookd.models import BookingData, MemberSession, RowState, build_booking, parse_notice
from prebookd.sim.server import Simulator
from tests.support import (
    DaemonProcess,
    add_box,
    add_member,
    add_prebooking,
    open_class,
    running_daemon,
    utc,
)

# Every cookie value generated carries this: no reason may ever show it.
SECRET = "Zq9SECRETcookie"
REASON_LIMIT = 300

PURE = settings(max_examples=300, deadline=None, database=None)

# --- strategies --------------------------------------------------------------------
#
# Storable in Postgres as they are (the daemon-level test inserts them): no NUL (text
# and jsonb refuse it), no lone surrogates (jsonb refuses their escapes; hypothesis
# draws them once a character filter is given), and nesting and numbers within what
# json.loads reads back (deeper or longer ones have tests of their own at the end).

text = st.text(
    st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=24
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | text
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12,
)
huge_text = st.sampled_from(["9" * 100_000, "é" * 100_000, "20301201" + " " * 100_000])
deep_json_text = st.integers(2_000, 100_000).map(lambda n: "[" * n + "]" * n)


def nested(depth: int) -> Any:
    value: Any = "20301201"
    for _ in range(depth):
        value = [value]
    return value


days = st.dates(dt.date(1970, 1, 1), dt.date(9999, 12, 31)).map(lambda d: d.strftime("%Y%m%d"))
day_values = st.one_of(
    days, days.map(int), st.from_regex(r"[0-9]{8}", fullmatch=True), text, huge_text, json_values
)
session_ids = st.from_regex(r"[0-9]{1,12}", fullmatch=True)
id_values = st.one_of(session_ids, st.integers(), text, huge_text, json_values)
family_values = st.one_of(
    st.just(""), st.none(), session_ids, st.integers(), huge_text, json_values
)
insist_values = st.one_of(st.just(0), st.just(1), json_values)

booking_dicts = st.builds(
    lambda fields, extra: {**extra, **fields},
    st.fixed_dictionaries(
        {},
        optional={
            "day": day_values,
            "id": id_values,
            "familyId": family_values,
            "insist": insist_values,
        },
    ),
    st.dictionaries(text, json_values, max_size=3),
)
good_booking_data = st.builds(
    lambda day, sid: {"day": day, "familyId": "", "id": sid, "insist": 0}, days, session_ids
)
# What `prebookings.booking_data` reads back as: any JSON, a double-encoded object (a
# JSON string holding the JSON text), a string that is no JSON at all.
booking_data_values = st.one_of(
    good_booking_data,
    booking_dicts,
    booking_dicts.map(json.dumps),
    json_values,
    text,
)

secrets = st.one_of(
    text.map(lambda t: SECRET + t),
    text.map(lambda t: t + SECRET + ";\r\nX-Evil: 1"),
)
cookie_names = st.one_of(st.sampled_from(["amhrdrauth", "PHPSESSID", "AWSALB", ""]), text)
cookie_objects = st.fixed_dictionaries(
    {},
    optional={
        "name": cookie_names | scalars,
        "value": secrets | st.lists(secrets, max_size=2) | st.dictionaries(text, secrets),
    },
)
good_cookies = st.builds(
    lambda value: [
        {"name": "amhrdrauth", "value": SECRET + value},
        {"name": "PHPSESSID", "value": "php1"},
    ],
    st.from_regex(r"[A-Za-z0-9_-]{0,20}", fullmatch=True),
)
cookie_lists = st.lists(cookie_objects | json_values, max_size=4)
cookies_values = st.one_of(
    good_cookies,
    cookie_lists,
    st.dictionaries(cookie_names, secrets, max_size=3),  # {"name": "value"} is accepted
    cookie_lists.map(json.dumps),
    good_cookies.map(json.dumps),
    json_values,
    text,
)

offsets = st.integers(-14 * 60 + 1, 14 * 60 - 1).map(
    lambda minutes: dt.timezone(dt.timedelta(minutes=minutes))
)
# timestamptz as asyncpg returns it: aware, or naive datetime.max/.min for
# 'infinity'/'-infinity'.
instants = st.one_of(
    st.datetimes(dt.datetime(1970, 1, 1), dt.datetime(9999, 12, 31, 23, 59), timezones=offsets),
    st.sampled_from([dt.datetime.max, dt.datetime.min, None]),
)
# Only text could come from the boxes table; what goes out must never leave loopback.
GOOD_BASE_URL = "http://127.0.0.1:9/box-a"
HOSTS = ("127.0.0.1",)  # PREBOOKD_BOX_HOSTS as the tests' daemons have it
base_urls = st.one_of(
    st.just(GOOD_BASE_URL),
    st.none(),
    text,
    st.sampled_from(
        [
            "http://[::1",
            "http://127.0.0.1:99999/x",
            "http://127.0.0.1:port/x",
            "http://127.0.0.1/\r\nX-Evil: 1",
            "http://127.0.0.1/a b",
            "javascript:alert(1)",
            "ftp://127.0.0.1/",
            "http://",
            "//127.0.0.1/x",
        ]
    ),
)
booleans = st.booleans()
subdomains = st.one_of(st.none(), st.just("box-a"), st.just("evil.example#"), text)


def records(
    booking_data: st.SearchStrategy[Any] = booking_data_values,
    cookies: st.SearchStrategy[Any] = cookies_values,
    base_url: st.SearchStrategy[Any] = base_urls,
    available_at: st.SearchStrategy[Any] = instants,
    box_found: st.SearchStrategy[bool] = booleans,
    session_found: st.SearchStrategy[bool] = booleans,
) -> st.SearchStrategy[dict[str, Any]]:
    """A row as `store.claim` returns it (joined with its box and session)."""
    return st.fixed_dictionaries(
        {
            "id": st.uuids(),
            "user_email": st.one_of(st.none(), st.emails(), text),
            "box_id": st.none() | st.uuids(),
            "booking_data": booking_data,
            "available_at": available_at,
            "created_at": instants,
            "box_found": box_found,
            "subdomain": subdomains,
            "base_url": base_url,
            "session_found": session_found,
            "aimharder_cookies": cookies,
            "aimharder_token": st.none() | text,
            "fingerprint": st.none() | text,
            "last_token_update_date": instants,
            "session_id": st.none() | st.uuids(),
        },
        optional={
            "attempts": st.integers(0, 2**31 - 1),
            "lease_owner": st.none() | text,
            "lease_expires_at": instants,
            "status": st.sampled_from(["pending", "loaded", "executing"]),
        },
    )


# --- pure level --------------------------------------------------------------------


def assert_readable(reason: str) -> None:
    """What a member reads in error_message: one printable line, short, no secret."""
    assert isinstance(reason, str) and reason
    assert len(reason) < REASON_LIMIT, reason
    assert reason.isprintable(), repr(reason)
    assert SECRET not in reason, reason


def assert_ready_to_send(booking: Any, record: dict[str, Any]) -> None:
    """A Booking prebookd may put on the wire as it is."""
    assert booking.id == record["id"]
    assert math.isfinite(booking.available_at) and math.isfinite(booking.created_at)
    assert booking.url.scheme in ("http", "https") and booking.url.host
    assert booking.url.path.endswith("/api/book")
    # The member's cookies go to a host PREBOOKD_BOX_HOSTS names, or to AimHarder.
    host = booking.url.raw_host
    assert host == "127.0.0.1" or (
        booking.url.scheme == "https" and host.endswith(".aimharder.com")
    ), booking.url
    form = parse_qsl(booking.body.decode("ascii"), keep_blank_values=True, strict_parsing=True)
    fields = dict(form)
    assert [name for name, _ in form] == ["id", "day", "insist", "familyId"]
    assert len(fields["day"]) == 8 and fields["day"].isascii() and fields["day"].isdigit()
    dt.datetime.strptime(fields["day"], "%Y%m%d")
    assert 0 < len(fields["id"]) <= 64
    assert len(fields["familyId"]) <= 64
    int(fields["insist"])
    for name, value in booking.headers.items():
        assert isinstance(value, str) and value.isprintable(), (name, value)
    cookies = dict(pair.split("=", 1) for pair in booking.headers["Cookie"].split("; "))
    assert cookies.get("amhrdrauth"), "the auth cookie goes out"


def check_build(record: dict[str, Any]) -> bool:
    """build_booking's contract; True when the row is ready to send."""
    try:
        booking = build_booking(record, HOSTS)
    except BadRow as exc:
        assert_readable(exc.reason)
        return False
    assert_ready_to_send(booking, record)
    return True


@PURE
@given(records())
def test_any_row_is_sent_as_a_valid_request_or_refused_with_a_reason(
    record: dict[str, Any],
) -> None:
    check_build(record)
    # The readers of the scheduling columns and of the session never raise: the
    # resync and the session keeper read every row with them, unguarded.
    state = RowState.from_record(
        {"lease_owner": None, "lease_expires_at": None, "status": None, **record}
    )
    assert state.available_at is None or math.isfinite(state.available_at)
    assert math.isfinite(state.created_at)
    MemberSession.from_record(record)


@PURE
@given(
    records(
        box_found=st.just(True),
        base_url=st.just(GOOD_BASE_URL),
        session_found=st.just(True),
        cookies=good_cookies,
    )
)
def test_booking_data_of_any_shape(record: dict[str, Any]) -> None:
    if check_build(record):
        data = record["booking_data"]
        data = json.loads(data) if isinstance(data, str) else data
        assert isinstance(data, dict) and {"day", "id"} <= data.keys()


@PURE
@given(
    records(
        box_found=st.just(True),
        base_url=st.just(GOOD_BASE_URL),
        booking_data=good_booking_data,
        session_found=st.just(True),
    )
)
def test_cookies_of_any_shape(record: dict[str, Any]) -> None:
    check_build(record)


@PURE
@given(
    records(
        box_found=st.just(True),
        booking_data=good_booking_data,
        session_found=st.just(True),
        cookies=good_cookies,
    )
)
def test_box_urls_of_any_shape(record: dict[str, Any]) -> None:
    if check_build(record):
        base = record["base_url"] or f"https://{record['subdomain']}.aimharder.com"
        assert build_booking(record, HOSTS).headers["Origin"] == base.rstrip("/")


@PURE
@given(
    records(
        box_found=st.just(True),
        booking_data=good_booking_data,
        base_url=st.just(GOOD_BASE_URL),
        session_found=st.just(True),
        cookies=good_cookies,
    )
)
def test_instants_from_1970_to_9999_and_infinity(record: dict[str, Any]) -> None:
    if record["available_at"] is None:
        with pytest.raises(BadRow, match="available_at is null"):
            build_booking(record, HOSTS)
        return
    booking = build_booking(record, HOSTS)
    assert_ready_to_send(booking, record)


def good_record(**changes: Any) -> dict[str, Any]:
    """A claimed row that is sent as it is, with `changes`."""
    record = {
        "id": uuid.uuid4(),
        "user_email": "member@x.es",
        "box_id": uuid.uuid4(),
        "booking_data": {"day": "20301201", "familyId": "", "id": "1", "insist": 0},
        "available_at": dt.datetime(2030, 11, 27, 6, tzinfo=dt.UTC),
        "created_at": dt.datetime(2030, 11, 1, tzinfo=dt.UTC),
        "box_found": True,
        "subdomain": "box-a",
        "base_url": GOOD_BASE_URL,
        "session_found": True,
        "aimharder_cookies": [{"name": "amhrdrauth", "value": SECRET}],
        "aimharder_token": "token",
        "fingerprint": "f" * 50,
        "last_token_update_date": None,
        "session_id": uuid.uuid4(),
        "attempts": 0,
    }
    record.update(changes)
    return record


def test_a_good_record_is_sent() -> None:
    assert check_build(good_record())


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ("[" * 100_000 + "]" * 100_000, "booking_data is not valid JSON"),  # RecursionError
        ({"day": "20301201", "id": "1", "familyId": {"a": [1]}}, "familyId"),
        ({"day": "٢٠٣٠١٢٠١", "id": "1"}, "day"),  # digits, but not ASCII ones
        ({"day": "20301301", "id": "1"}, "real date"),
        ({"day": 10**5000, "id": 10**5000, "familyId": 10**5000}, "day"),
        ({"day": "20301201", "id": nested(3_000)}, "id"),
    ],
)
def test_booking_data_that_crashed_or_slipped_through(raw: Any, words: str) -> None:
    """Cases found by the properties above (RecursionError escaped, a dict was sent
    as its Python repr), kept as plain examples."""
    record = good_record(booking_data=raw)
    with pytest.raises(BadRow) as caught:
        build_booking(record, HOSTS)
    assert words in caught.value.reason
    assert_readable(caught.value.reason)


@pytest.mark.parametrize(
    ("base_url", "subdomain"),
    [
        ("http://[::1", None),  # ValueError escaped: the daemon stopped
        ("http://127.0.0.1:99999/x", None),  # ValueError escaped
        ("http://127.0.0.1/\r\nX-Evil: 1", None),  # went into the Origin header
        (None, "evil.example#"),  # would send the member's cookies to evil.example
        (7, None),  # AttributeError escaped
    ],
)
def test_box_urls_that_crashed_or_slipped_through(base_url: Any, subdomain: Any) -> None:
    record = good_record(base_url=base_url, subdomain=subdomain)
    with pytest.raises(BadRow, match=r"box (base_url|subdomain)") as caught:
        build_booking(record, HOSTS)
    assert_readable(caught.value.reason)


AIMHARDER = ("aimharder.com", "*.aimharder.com", "aimharder.es", "*.aimharder.es")


@pytest.mark.parametrize(
    ("base_url", "hosts", "words"),
    [
        # The web app writes boxes.base_url; the member's amhrdrauth cookie goes there.
        ("http://169.254.169.254/", AIMHARDER, "host 169.254.169.254 is not in"),
        ("https://169.254.169.254/latest", HOSTS, "host 169.254.169.254 is not in"),
        ("https://evil.example", AIMHARDER, "host evil.example is not in"),
        ("https://aimharder.com.evil.example/", AIMHARDER, "is not in PREBOOKD_BOX_HOSTS"),
        ("https://evilaimharder.com", AIMHARDER, "host evilaimharder.com is not in"),
        ("https://box-a.aimharder.com@evil.example/", AIMHARDER, "user name or password"),
        ("https://u:pw@box-b.aimharder.com/", AIMHARDER, "user name or password"),
        ("http://box-b.aimharder.com", AIMHARDER, "plain http is only for a loopback host"),
        ("http://box-a.aimharder.com", AIMHARDER, "plain http is only for a loopback host"),
        ("http://127.0.0.1:9/box-a", AIMHARDER, "host 127.0.0.1 is not in"),
        ("http://localhost:9/box-a", HOSTS, "host localhost is not in"),
        ("http://127.0.0.2:9/box-a", HOSTS, "host 127.0.0.2 is not in"),
        ("http://127.0.0.1:9/box-a", ("*.0.0.1",), "plain http is only for a loopback host"),
        ("https://box-a.aimharder.com/?x=", AIMHARDER, "not an http(s) URL"),
        ("https://ｅｖｉｌ.example/", AIMHARDER, "not an http(s) URL"),  # goes to evil.example
    ],
)
def test_a_box_url_members_cookies_must_not_go_to_fails_the_row(
    base_url: str, hosts: tuple[str, ...], words: str
) -> None:
    record = good_record(base_url=base_url)
    with pytest.raises(BadRow, match="box base_url") as caught:
        build_booking(record, hosts)
    assert words in caught.value.reason
    assert_readable(caught.value.reason)


@pytest.mark.parametrize(
    ("base_url", "subdomain", "hosts", "origin"),
    [
        ("https://box-a.aimharder.com", "box-a", AIMHARDER, "https://box-a.aimharder.com"),
        ("https://login.aimharder.es/", "box-a", AIMHARDER, "https://login.aimharder.es"),
        ("https://AimHarder.COM.", "box-a", AIMHARDER, "https://AimHarder.COM."),
        ("http://127.0.0.1:9/box-a", "box-a", HOSTS, "http://127.0.0.1:9/box-a"),
        ("https://127.0.0.1:9", "box-a", HOSTS, "https://127.0.0.1:9"),
        ("http://[::1]:9/box-a", "box-a", ("::1",), "http://[::1]:9/box-a"),
        # The URL the subdomain makes is AimHarder's, whatever PREBOOKD_BOX_HOSTS says.
        (None, "box-a", (), "https://box-a.aimharder.com"),
        ("", "box-a", HOSTS, "https://box-a.aimharder.com"),
        ("https://Box-A.aimharder.com/", "box-a", HOSTS, "https://Box-A.aimharder.com"),
    ],
)
def test_a_box_url_on_an_allowed_host_is_sent(
    base_url: str | None, subdomain: str, hosts: tuple[str, ...], origin: str
) -> None:
    booking = build_booking(good_record(base_url=base_url, subdomain=subdomain), hosts)
    assert booking.headers["Origin"] == origin
    assert str(booking.url) == origin.rstrip("/").lower() + "/api/book"


def test_the_default_hosts_are_aimharders() -> None:
    with pytest.raises(BadRow, match=r"host 127\.0\.0\.1 is not in PREBOOKD_BOX_HOSTS"):
        build_booking(good_record())
    booking = build_booking(good_record(base_url="https://box-a.aimharder.com"))
    assert booking.url.host == "box-a.aimharder.com"


@PURE
@given(booking_dicts | json_values)
def test_booking_data_model_validates_or_says_why(raw: Any) -> None:
    try:
        data = BookingData.model_validate(raw)
    except ValueError as exc:  # pydantic's ValidationError is one
        for error in exc.errors():  # type: ignore[attr-defined]
            assert len(error["msg"]) < REASON_LIMIT
        return
    assert data.day.isascii() and len(data.day) == 8
    assert 0 < len(data.id) <= 64 and len(data.familyId) <= 64


# Notification payloads: what pg_notify can carry (text under 8000 bytes).
iso_instants = st.one_of(
    st.datetimes(dt.datetime(1970, 1, 1), dt.datetime(9999, 12, 31), timezones=offsets).map(
        dt.datetime.isoformat
    ),
    st.datetimes(dt.datetime(1970, 1, 1), dt.datetime(9999, 12, 31)).map(dt.datetime.isoformat),
    st.sampled_from(["infinity", "-infinity", "2030-02-30T00:00:00Z", "0"]),
    scalars,
)
notice_dicts = st.builds(
    lambda fields, extra: {**extra, **fields},
    st.fixed_dictionaries(
        {},
        optional={
            "op": st.sampled_from(["insert", "update", "delete", "INSERT", "drop"]) | scalars,
            "id": st.uuids().map(str) | st.uuids().map(lambda u: u.hex.upper()) | scalars,
            "available_at": iso_instants,
            "created_at": iso_instants,
            "status": st.sampled_from(["pending", "loaded", "executing", "cancelled"]) | scalars,
        },
    ),
    st.dictionaries(text, json_values, max_size=2),
)
payloads = st.one_of(
    notice_dicts.map(json.dumps),
    json_values.map(json.dumps),
    st.text(max_size=200),
    st.binary(max_size=200).map(lambda raw: raw.decode("latin-1")),
    st.sampled_from(["x" * 7_999, "[" * 7_999, json.dumps({"op": "insert", "id": "0" * 7_900})]),
)


@PURE
@given(payloads)
def test_any_notification_payload_is_understood_or_refused_with_a_reason(payload: str) -> None:
    try:
        notice = parse_notice(payload)
    except ValueError as exc:
        assert_readable(str(exc))
        return
    assert notice.op in ("insert", "update", "delete")
    assert isinstance(notice.id, uuid.UUID)
    for instant in (notice.available_at, notice.created_at):
        assert instant is None or instant.tzinfo is not None
    state = notice.row_state()
    assert state.id == notice.id
    assert state.available_at is None or math.isfinite(state.available_at)


# --- daemon level ------------------------------------------------------------------
#
# One `prebookd run`, one batch of ~30 generated rows inserted in one transaction,
# garbage notifications, then a good row that must still fire on time. Hypothesis
# draws the batch (a seed of its own each run, in every failure message); each
# daemon run costs seconds, so the batch is drawn once rather than shrunk.

ROWS_PER_BATCH = 30
BOX = "box-h"
GOOD_MEMBER = "good@x.es"

# When a row opens, relative to the test's instant T and to now.
instant_kinds = st.one_of(
    st.just(("at_instant", 0.0)),
    st.tuples(st.just("recent_past"), st.floats(1.0, 250.0)),  # within late_grace: sent now
    st.tuples(st.just("far_past"), st.floats(0.0, 1.0)),  # 1970 up to a day ago
    st.tuples(st.just("absurd_future"), st.floats(0.0, 1.0)),  # 401 days ahead up to 9999
    st.sampled_from([("null", 0.0), ("infinity", 0.0), ("-infinity", 0.0)]),
)
created_kinds = st.sampled_from(["now", "1970", "9999", "-infinity"])
# Whose row it is: the good member, a member with hostile session cookies, nobody.
member_kinds = st.one_of(
    st.just(("good", None)),
    st.tuples(st.just("hostile"), cookies_values),
    st.sampled_from([("no_session", None), ("null", None)]),
)
# Which box: the simulator's, none, a closed loopback port, or one that is no URL.
# Nothing here may resolve to a host outside loopback: a hostile subdomain always
# carries a character no host name has.
box_kinds = st.one_of(
    st.sampled_from([("good", None, None), ("null", None, None)]),
    st.just(("closed", "http://127.0.0.1:9/closed", None)),
    st.tuples(
        st.just("hostile"),
        st.sampled_from(
            [
                "http://[::1",
                "http://127.0.0.1:99999/x",
                "http://127.0.0.1/\r\nX-Evil: 1",
                "javascript:alert(1)",
                "http://",
                None,
            ]
        )
        | text.map(lambda t: "not a url " + t),
        text.map(lambda t: t + "#") | st.none(),
    ),
)


@dataclass(frozen=True)
class HostileRow:
    instant: tuple[str, float]
    created: str
    member: tuple[str, Any]
    box: tuple[str, Any, Any]
    booking_data: Any


hostile_rows = st.builds(
    HostileRow,
    instant_kinds,
    created_kinds,
    member_kinds,
    box_kinds,
    # Mostly sendable data, so that the rows get as far as their box, session, instant.
    st.one_of(good_booking_data, good_booking_data, booking_data_values),
)

GARBAGE_NOTIFICATIONS = [
    "not json at all",
    "{",
    "",
    "[]",
    "null",
    '"insert"',
    "42",
    json.dumps({"op": "explode", "id": str(uuid.uuid4())}),
    json.dumps({"op": "insert", "id": "not-a-uuid", "status": "pending"}),
    json.dumps({"op": "insert"}),
    json.dumps({"op": None, "id": None, "available_at": None}),
    json.dumps(
        {
            "op": "insert",
            "id": str(uuid.uuid4()),
            "available_at": "2030-12-01T06:00:00",  # naive
            "created_at": "2030-11-01T06:00:00",
            "status": "pending",
        }
    ),
    json.dumps({"op": "update", "id": str(uuid.uuid4()), "available_at": "yesterday"}),
    json.dumps({"op": "delete", "id": str(uuid.uuid4()), "created_at": 1e300}),
    "x" * 7_999,  # pg_notify's limit is 8000 bytes
    "[" * 7_999,
    "ñ€😀\t\n",
    json.dumps({"op": "insert", "id": str(uuid.uuid4()), "status": "pending"})[:-1],
]


def draw(strategy: st.SearchStrategy[Any], count: int, seed: int) -> list[Any]:
    """`count` values from `strategy`, the same for the same seed."""
    drawn: list[Any] = []

    @hypothesis_seed(seed)
    @settings(
        max_examples=count,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(value: Any) -> None:
        drawn.append(value)

    collect()
    return drawn[:count]


def instant_of(kind: tuple[str, float], t: float, now: float) -> str | None:
    """The row's available_at as Postgres text (None: NULL)."""
    name, fraction = kind
    if name in ("infinity", "-infinity"):
        return name
    epoch = {
        "at_instant": t,
        "recent_past": now - fraction,
        "far_past": fraction * (now - 86_400),
        "absurd_future": now + 401 * 86_400 + fraction * (250_000_000_000 - now),
        "null": math.nan,
    }[name]
    return None if math.isnan(epoch) else utc(epoch).isoformat()


CREATED_AT = {
    "now": "now",
    "1970": "1970-01-01T00:00:00Z",
    "9999": "9999-12-31T00:00:00Z",
    "-infinity": "-infinity",
}


async def insert_batch(
    conn: asyncpg.Connection, good_box: uuid.UUID, rows: list[HostileRow], t: float
) -> list[uuid.UUID]:
    """The rows, their members and boxes, in one transaction (one burst of NOTIFYs)."""
    now = time.time()
    ids = []
    async with conn.transaction():
        for n, row in enumerate(rows):
            kind, base_url, subdomain = row.box
            box: uuid.UUID | None = good_box if kind == "good" else None
            if kind in ("closed", "hostile"):
                box = await conn.fetchval(
                    """INSERT INTO boxes (box_id, subdomain, name, base_url)
                       VALUES ($1, $2, 'hostile', $3) RETURNING id""",
                    f"hostile-{n}",
                    None if subdomain is None else f"{subdomain}{n}",
                    base_url,
                )
            member, cookies = row.member
            email = {"good": GOOD_MEMBER, "no_session": f"nobody{n}@x.es", "null": None}.get(
                member, f"hostile{n}@x.es"
            )
            if member == "hostile":
                await conn.execute(
                    """INSERT INTO auth_sessions (user_email, aimharder_cookies, fingerprint,
                                                  session_type, last_token_update_date)
                       VALUES ($1, $2, $3, 'background', now())""",
                    email,
                    cookies,
                    f"fp{n}",
                )
            ids.append(
                await conn.fetchval(
                    """INSERT INTO prebookings (user_email, box_id, booking_data, available_at,
                                                created_at)
                       VALUES ($1, $2, $3, $4::text::timestamptz,
                               CASE WHEN $5 = 'now' THEN now() ELSE $5::timestamptz END)
                       RETURNING id""",
                    email,
                    box,
                    row.booking_data,
                    instant_of(row.instant, t, now),
                    CREATED_AT[row.created],
                )
            )
    return ids


async def wait_final_or_exit(
    conn: asyncpg.Connection, daemon: DaemonProcess, ids: list[uuid.UUID], timeout: float
) -> list[asyncpg.Record]:
    """Every row completed or failed; fails at once if the daemon exits meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        rows = await conn.fetch(
            # Not booking_data: what this test connection cannot read back either.
            """SELECT id, status, outcome, error_message, attempts, lateness_ms
                 FROM prebookings WHERE id = ANY($1)""",
            ids,
        )
        if len(rows) == len(ids) and all(r["status"] in ("completed", "failed") for r in rows):
            return list(rows)
        exited = daemon.process.returncode is not None
        if exited or time.monotonic() > deadline:
            waiting = {
                str(r["id"]): r["status"]
                for r in rows
                if r["status"] not in ("completed", "failed")
            }
            tail = "\n".join(daemon.lines[-30:])
            what = "the daemon exited" if exited else f"not final after {timeout} s"
            raise AssertionError(f"{what}: {waiting}\n{tail}")
        await asyncio.sleep(0.1)


def lines_about(daemon: DaemonProcess, row_id: uuid.UUID) -> list[str]:
    return [line for line in daemon.lines if f"prebooking_id={row_id}" in line]


def crash_lines(daemon: DaemonProcess) -> list[str]:
    crashes = ("task_crashed", "engine_task_crashed", "notification_handling_failed")
    return [
        line
        for line in daemon.lines
        if "Traceback" in line or any(name in line.split() for name in crashes)
    ]


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    simulator = Simulator(default_capacity=100, seed=11)
    await simulator.start()
    try:
        yield simulator
    finally:
        await simulator.stop()


async def listen_all(db_dsn: str, heard: list[str]) -> asyncpg.Connection:
    """A connection hearing every payload the daemon hears."""
    listener = await connect(db_dsn)
    await listener.add_listener("prebookings", lambda *args: heard.append(args[-1]))
    return listener


def refused(payload: str) -> bool:
    try:
        parse_notice(payload)
    except ValueError:
        return True
    return False


async def test_a_batch_of_hostile_rows_fails_row_by_row_and_the_daemon_fires_on(
    conn: asyncpg.Connection, db_dsn: str, sim: Simulator, tmp_path: Path
) -> None:
    seed = int.from_bytes(uuid.uuid4().bytes[:4], "big")
    context = f"(hostile batch seed {seed})"
    batch = draw(hostile_rows, ROWS_PER_BATCH, seed)
    extra_garbage = [p for p in draw(text | json_values.map(json.dumps), 10, seed) if refused(p)]
    box = await add_box(conn, sim, BOX)
    await add_member(conn, sim, GOOD_MEMBER)
    heard: list[str] = []
    listener = await listen_all(db_dsn, heard)
    try:
        async with running_daemon(
            db_dsn,
            tmp_path,
            aimharder_url=sim.base_url,
            retry_window=1.0,
            retry_interval=0.1,
            request_timeout=1.0,
            reconcile_interval=2.0,  # rows whose notification is refused come from resync
        ) as daemon:
            t = time.time() + 3.0
            open_class(sim, BOX, "1", t, 100)
            hostile = await insert_batch(conn, box, batch, t)
            good = await add_prebooking(conn, box, GOOD_MEMBER, "1", t)
            for payload in GARBAGE_NOTIFICATIONS + extra_garbage:
                await conn.execute("SELECT pg_notify('prebookings', $1)", payload)
            rows = await wait_final_or_exit(conn, daemon, [*hostile, good], timeout=20)
            # Still firing, on time: a row added after all that.
            later = time.time() + 2.0
            open_class(sim, BOX, "2", later, 100)
            after = await add_prebooking(conn, box, GOOD_MEMBER, "2", later)
            (last,) = await wait_final_or_exit(conn, daemon, [after], timeout=10)
            await asyncio.sleep(0.3)  # the last notifications reach both listeners
            assert await daemon.stop() == 0, context
    finally:
        await listener.close()

    assert crash_lines(daemon) == [], context
    assert not any(SECRET in line for line in daemon.lines), "a cookie value was logged"
    by_id = {r["id"]: r for r in rows}
    for row_id in [*hostile, good]:
        row = by_id[row_id]
        spec = batch[hostile.index(row_id)] if row_id in hostile else "good row"
        where = f"{context} row {row_id} {spec!r:.300}"
        if row["status"] == "failed":
            assert_readable_row(row["error_message"], where)
        else:
            assert row["outcome"] in ("booked", "already_booked", "waitlisted"), where
        # Its story is told once: refused at arming, or sent (or not) at the instant.
        about = lines_about(daemon, row_id)
        told = [
            e
            for e in ("prebooking_rejected", "booking_sent", "booking_not_sent")
            for line in about
            if e in line.split()
        ]
        assert len(told) == 1, (where, about)
        if told == ["prebooking_rejected"]:
            assert (row["status"], row["attempts"]) == ("failed", 0), where
            assert [line for line in about if "[error]" in line] != [], where

    for row in (by_id[good], last):
        assert (row["status"], row["outcome"]) == ("completed", "booked"), context
        assert 0 <= row["lateness_ms"] < 100, context
    for request in sim.requests:
        if request.path == "/api/book" and request.session_id == "2":
            assert request.arrived_at >= later, "never early"

    # One error line per notification the daemon could not read, no more, no fewer:
    # the garbage sent, and the trigger's own payloads for rows opening at +-infinity.
    malformed = daemon.events("notification_malformed")
    assert len(malformed) == sum(refused(p) for p in heard), context
    assert len(malformed) >= len(GARBAGE_NOTIFICATIONS) + len(extra_garbage), context
    assert all("[error]" in line for line in malformed)


def assert_readable_row(message: str | None, where: str) -> None:
    assert message, where
    assert message.isprintable(), (where, message)
    assert SECRET not in message, where
    assert len(message) < 2 * REASON_LIMIT, (where, message)


# --- bugs found outside models/outcomes, fixed in the daemon ------------------------


async def test_booking_data_json_cannot_read_back_does_not_stop_the_daemon(
    conn: asyncpg.Connection, db_dsn: str, sim: Simulator, tmp_path: Path
) -> None:
    box = await add_box(conn, sim, BOX)
    await add_member(conn, sim, GOOD_MEMBER)
    async with running_daemon(db_dsn, tmp_path) as daemon:
        t = time.time() + 2.0
        open_class(sim, BOX, "1", t, 10)
        good = await add_prebooking(conn, box, GOOD_MEMBER, "1", t)
        bad = []
        for raw in ("[" * 2_000 + "]" * 2_000, '{"day": "20301201", "id": ' + "9" * 5_000 + "}"):
            bad.append(
                await conn.fetchval(
                    """INSERT INTO prebookings (user_email, box_id, booking_data, available_at)
                       VALUES ($1, $2, $3::text::jsonb, $4) RETURNING id""",
                    GOOD_MEMBER,
                    box,
                    raw,
                    utc(t),
                )
            )
        rows = {r["id"]: r for r in await wait_final_or_exit(conn, daemon, [good, *bad], 15)}
        assert await daemon.stop() == 0
    assert rows[good]["outcome"] == "booked"
    assert [rows[i]["status"] for i in bad] == ["failed", "failed"]
    assert crash_lines(daemon) == []


async def test_a_row_opening_after_9999_in_utc_does_not_stop_the_daemon(
    conn: asyncpg.Connection, db_dsn: str, sim: Simulator, tmp_path: Path
) -> None:
    box = await add_box(conn, sim, BOX)
    await add_member(conn, sim, GOOD_MEMBER)
    bad = await conn.fetchval(
        """INSERT INTO prebookings (user_email, box_id, booking_data, available_at)
           VALUES ($1, $2, '{"day": "20301201", "id": "1"}',
                   '9999-12-31 23:59:00-12'::timestamptz) RETURNING id""",
        GOOD_MEMBER,
        box,
    )
    async with running_daemon(db_dsn, tmp_path) as daemon:
        (row,) = await wait_final_or_exit(conn, daemon, [bad], 10)
        assert await daemon.stop() == 0
    assert row["status"] == "failed"
    assert "days ahead" in row["error_message"]


async def test_a_row_with_null_created_at_fires_on_time(
    conn: asyncpg.Connection, db_dsn: str, sim: Simulator, tmp_path: Path
) -> None:
    box = await add_box(conn, sim, BOX)
    await add_member(conn, sim, GOOD_MEMBER)
    async with running_daemon(db_dsn, tmp_path, reconcile_interval=60) as daemon:
        t = time.time() + 2.0
        open_class(sim, BOX, "1", t, 10)
        row_id = await conn.fetchval(
            """INSERT INTO prebookings (user_email, box_id, booking_data, available_at,
                                        created_at)
               VALUES ($1, $2, '{"day": "20301201", "id": "1"}', $3, NULL) RETURNING id""",
            GOOD_MEMBER,
            box,
            utc(t),
        )
        await asyncio.sleep(t + 1.0 - time.time())
        row = await conn.fetchrow("SELECT * FROM prebookings WHERE id = $1", row_id)
        assert await daemon.stop() == 0
    assert (row["status"], row["outcome"]) == ("completed", "booked")
    assert 0 <= row["lateness_ms"] < 100


async def test_a_notification_cannot_fail_a_good_row(
    conn: asyncpg.Connection, db_dsn: str, sim: Simulator, tmp_path: Path
) -> None:
    box = await add_box(conn, sim, BOX)
    await add_member(conn, sim, GOOD_MEMBER)
    async with running_daemon(db_dsn, tmp_path) as daemon:
        t = time.time() + 2.0
        open_class(sim, BOX, "1", t, 10)
        row_id = await add_prebooking(conn, box, GOOD_MEMBER, "1", t)
        forged = {
            "op": "update",
            "id": str(row_id),
            "status": "pending",
            "created_at": "2030-01-01T00:00:00+00:00",
            "available_at": None,
        }
        await conn.execute("SELECT pg_notify('prebookings', $1)", json.dumps(forged))
        (row,) = await wait_final_or_exit(conn, daemon, [row_id], 10)
        assert await daemon.stop() == 0
    assert (row["status"], row["outcome"]) == ("completed", "booked"), row["error_message"]


async def test_a_box_whose_url_is_not_allowed_fails_at_arming_and_nothing_is_sent(
    conn: asyncpg.Connection, db_dsn: str, sim: Simulator, tmp_path: Path
) -> None:
    """The web app wrote a base_url on a host PREBOOKD_BOX_HOSTS does not name (here
    `localhost`, the simulator under another name: a trap that sees any request)."""
    box = await add_box(conn, sim, BOX)
    await add_member(conn, sim, GOOD_MEMBER)
    sim.add_box("box-trap", box_id="666")
    trap = sim.box_url("box-trap").replace("127.0.0.1", "localhost")
    trap_box = await conn.fetchval(
        """INSERT INTO boxes (box_id, subdomain, name, base_url)
           VALUES ('666', 'box-trap', 'Trap', $1) RETURNING id""",
        trap,
    )
    async with running_daemon(db_dsn, tmp_path) as daemon:  # PREBOOKD_BOX_HOSTS=127.0.0.1
        t = time.time() + 2.0
        open_class(sim, BOX, "1", t, 10)
        open_class(sim, "box-trap", "1", t, 10)
        good = await add_prebooking(conn, box, GOOD_MEMBER, "1", t)
        bad = await add_prebooking(conn, trap_box, GOOD_MEMBER, "1", t)
        rows = {r["id"]: r for r in await wait_final_or_exit(conn, daemon, [good, bad], 15)}
        await asyncio.sleep(0.5)  # anything sent late would have arrived by now
        assert await daemon.stop() == 0
    assert (rows[good]["status"], rows[good]["outcome"]) == ("completed", "booked")
    refused = rows[bad]
    assert (refused["status"], refused["outcome"], refused["attempts"]) == (
        "failed",
        "bad_row",
        0,
    )
    assert f"box base_url {trap} is not allowed" in refused["error_message"]
    assert "host localhost is not in PREBOOKD_BOX_HOSTS" in refused["error_message"]
    assert [line for line in lines_about(daemon, bad) if "prebooking_rejected" in line]
    assert [r for r in sim.requests if r.box == "box-trap"] == []
    assert crash_lines(daemon) == []
