"""What follows each answer while the retry window is open (pure: no clock, no I/O)."""

from __future__ import annotations

import pytest

from prebookd.aimharder.client import Exchange
from prebookd.aimharder.outcomes import Outcome, Verdict, classify_answer, transport_failure
from prebookd.daemon.retries import Tries, next_try


def exchange(outcome: Outcome, *, written: bool = True) -> Exchange:
    return Exchange(outcome, None, 1.0 if written else None, 2.0, 200)


NOT_OPEN = classify_answer({"bookState": -12, "errorMssgLang": "ERROR_ANTELACION_CLIENTE"})
UNREADABLE = Outcome(Verdict.RETRY, "bad_answer", "unreadable answer")
RESET = transport_failure(ConnectionResetError())


def steps(outcome: Outcome, count: int, *, written: bool = True, budget: int = 2) -> list[str]:
    tries = Tries()
    return [next_try(exchange(outcome, written=written), tries, retry_unexpected=budget)
            for _ in range(count)]  # fmt: skip


def test_not_open_is_retried_for_the_whole_window() -> None:
    assert steps(NOT_OPEN, 50) == ["wait"] * 50


@pytest.mark.parametrize("outcome", [UNREADABLE, RESET])
def test_other_retryable_answers_are_retried_at_most_the_budget(outcome: Outcome) -> None:
    assert steps(outcome, 4) == ["wait", "wait", "stop", "stop"]
    assert steps(outcome, 2, budget=0) == ["stop", "stop"]


def test_a_request_never_written_goes_again_at_once_then_at_the_interval() -> None:
    assert steps(RESET, 3, written=False) == ["now", "wait", "wait"]


def test_a_dead_session_is_renewed_once() -> None:
    assert steps(classify_answer({"logout": 1}), 2) == ["renew", "stop"]


@pytest.mark.parametrize(
    "answer", [{"bookState": 1}, {"bookState": -1}, {"errorMssg": "Penalizado"}]
)
def test_final_answers_stop(answer: object) -> None:
    assert steps(classify_answer(answer), 1) == ["stop"]
