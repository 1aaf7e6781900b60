"""Every answer of ../shared/AIMHARDER.md's table, classified."""

from __future__ import annotations

import json

import pytest

from prebookd.aimharder.outcomes import Verdict, classify_answer, classify_http, transport_failure

CASES = [
    ({"bookState": 1, "id": "106015104"}, Verdict.COMPLETED, "booked"),
    ({"bookState": 0}, Verdict.COMPLETED, "waitlisted"),
    ({"bookState": -1}, Verdict.FAILED, "full"),
    ({"bookState": -2}, Verdict.FAILED, "no_credits"),
    ({"bookState": -4}, Verdict.RETRY, "not_open"),
    ({"bookState": -5}, Verdict.FAILED, "payment_pending"),
    ({"bookState": -7}, Verdict.FAILED, "too_late"),
    ({"bookState": -8, "max": 2}, Verdict.FAILED, "daily_limit"),
    ({"bookState": -12, "errorMssgLang": "ERROR_ANTELACION_CLIENTE"}, Verdict.RETRY, "not_open"),
    (
        {"bookState": -12, "errorMssgLang": "ERROR_ANTELACION_CLIENTE_HORAS"},
        Verdict.RETRY,
        "not_open",
    ),
    (
        {"bookState": -12, "errorMssgLang": "NOPUEDESRESERVAMISMAHORA"},
        Verdict.COMPLETED,
        "already_booked",
    ),
    ({"bookState": -12, "errorMssgLang": "HASSUPERADOLIMITCONTR"}, Verdict.FAILED, "plan_limit"),
    ({"bookState": -12, "errorMssgLang": "SOMETHING_NEW"}, Verdict.FAILED, "refused"),
    ({"bookState": "1"}, Verdict.COMPLETED, "booked"),
    ({"bookState": -99}, Verdict.FAILED, "unknown_state"),
    ({"logout": 1}, Verdict.FAILED, "session_expired"),
    ({"bookState": 1, "logout": 1}, Verdict.FAILED, "session_expired"),
    ({}, Verdict.RETRY, "bad_answer"),
    ([1, 2], Verdict.RETRY, "bad_answer"),
]


@pytest.mark.parametrize(("answer", "verdict", "code"), CASES)
def test_answer_table(answer: object, verdict: Verdict, code: str) -> None:
    outcome = classify_answer(answer)
    assert (outcome.verdict, outcome.code) == (verdict, code)
    assert outcome.reason


def test_the_localised_message_is_never_what_decides() -> None:
    answer = {
        "bookState": -12,
        "errorMssg": "No puedes reservar clases con más de 4 días de antelación",
        "errorMssgLang": "NOPUEDESRESERVAMISMAHORA",
    }
    assert classify_answer(answer).code == "already_booked"


def test_daily_limit_says_the_maximum() -> None:
    assert "max 2" in classify_answer({"bookState": -8, "max": 2}).reason


@pytest.mark.parametrize(
    ("status", "body", "verdict", "code"),
    [
        (200, json.dumps({"bookState": 1}).encode(), Verdict.COMPLETED, "booked"),
        (403, b"<html>Forbidden</html>", Verdict.FAILED, "blocked"),
        (502, b"bad gateway", Verdict.RETRY, "server_error"),
        (404, b"", Verdict.FAILED, "http_error"),
        (200, b"<html>maintenance</html>", Verdict.RETRY, "bad_answer"),
        (200, b'{"bookState": 1', Verdict.RETRY, "bad_answer"),
        (200, b"\xff\xfe", Verdict.RETRY, "bad_answer"),
    ],
)
def test_http_answers(status: int, body: bytes, verdict: Verdict, code: str) -> None:
    outcome, _ = classify_http(status, body)
    assert (outcome.verdict, outcome.code) == (verdict, code)


def test_raw_answer_is_kept_for_the_row() -> None:
    _, answer = classify_http(200, b'{"bookState": -1, "extra": "kept"}')
    assert answer == {"bookState": -1, "extra": "kept"}


def test_transport_errors_are_transient() -> None:
    outcome = transport_failure(ConnectionResetError("reset by peer"))
    assert outcome.verdict is Verdict.RETRY
    assert "ConnectionResetError" in outcome.reason
