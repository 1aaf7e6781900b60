"""Every answer of ../shared/AIMHARDER.md's table, classified."""

from __future__ import annotations

import json

import pytest

from prebookd.aimharder.outcomes import Verdict, classify_answer, classify_http, transport_failure

CASES = [
    ({"bookState": 1, "id": "106015104"}, Verdict.COMPLETED, "booked"),
    # Without insist a booking cannot join the waiting list: 0 then reads as booked.
    ({"bookState": 0}, Verdict.COMPLETED, "booked"),
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
    # Any other -12 reads as "too early" (the web app's reading): retried in the window.
    ({"bookState": -12, "errorMssgLang": "SOMETHING_NEW"}, Verdict.RETRY, "not_open"),
    ({"bookState": -12, "errorMssg": "No disponible"}, Verdict.RETRY, "not_open"),
    # A box rule refusing, with no bookState: final, in AimHarder's words.
    ({"errorMssg": "Penalizado por no asistir"}, Verdict.FAILED, "refused"),
    ({"id": 106015104, "spot": 3}, Verdict.COMPLETED, "booked"),
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


@pytest.mark.parametrize(
    ("state", "insist", "code"),
    [(0, True, "waitlisted"), (0, False, "booked"), (-1, True, "full"), (-1, False, "full")],
)
def test_insist_decides_what_book_state_0_means(state: int, insist: bool, code: str) -> None:
    outcome = classify_answer({"bookState": state}, insist=insist)
    assert outcome.code == code


def test_a_refusal_without_book_state_keeps_aimharders_words() -> None:
    outcome = classify_answer({"errorMssg": "Has superado el máximo mensual"})
    assert outcome.reason == "refused by the box: Has superado el máximo mensual"


def test_an_unlisted_code_says_which_while_it_is_retried() -> None:
    outcome = classify_answer(
        {"bookState": -12, "errorMssgLang": "ERROR_RESERVA_NO_DISPONIBLE", "errorMssg": "No"}
    )
    assert "ERROR_RESERVA_NO_DISPONIBLE" in outcome.reason


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
        (403, b'{"error": "forbidden"}', Verdict.FAILED, "blocked"),
        (429, b"Too Many Requests", Verdict.FAILED, "rate_limited"),
        (401, b"", Verdict.FAILED, "session_expired"),
        (302, b"", Verdict.FAILED, "session_expired"),
        (408, b"", Verdict.RETRY, "idle_timeout"),
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


@pytest.mark.parametrize(
    ("status", "body", "pauses"),
    [
        (429, b"", True),
        (403, b"<!DOCTYPE html><html>blocked</html>", True),
        (403, b'{"error": 1}', False),
        (500, b"", False),
    ],
)
def test_blocks_and_rate_limits_pause_the_box(status: int, body: bytes, pauses: bool) -> None:
    outcome, _ = classify_http(status, body)
    assert outcome.pauses_box is pauses


def test_raw_answer_is_kept_for_the_row() -> None:
    _, answer = classify_http(200, b'{"bookState": -1, "extra": "kept"}')
    assert answer == {"bookState": -1, "extra": "kept"}


def test_transport_errors_are_transient() -> None:
    outcome = transport_failure(ConnectionResetError("reset by peer"))
    assert outcome.verdict is Verdict.RETRY
    assert "ConnectionResetError" in outcome.reason
