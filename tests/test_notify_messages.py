"""The pure parts of notifications: message text, backoff, the heartbeat's decisions,
URL masking, and what status and metrics show."""

from __future__ import annotations

import datetime as dt
import random

import pytest

from prebookd.notify.channels import ChannelError, check_events, check_url, mask_url
from prebookd.notify.heartbeat import HeartbeatState
from prebookd.notify.messages import render
from prebookd.notify.report import gauges, status_line
from prebookd.notify.sender import retry_delay

# Thursday 2030-12-05 07:00 in Madrid (06:00 UTC).
INSTANT = dt.datetime(2030, 12, 5, 6, 0, tzinfo=dt.UTC).timestamp()
BASE = {
    "available_at": INSTANT,
    "written_at": INSTANT + 0.000412,
    "lateness_ms": 0.412,
    "attempts": 1,
    "day": "20301209",
    "class_id": "106015104",
    "box": "CrossFit Norte",
    "timezone": "Europe/Madrid",
}


@pytest.mark.parametrize(
    ("status", "outcome", "lang", "title"),
    [
        ("completed", "booked", "en", "✅ Booked"),
        ("completed", "booked", "es", "✅ Reservada"),
        ("completed", "waitlisted", "en", "✅ On the waiting list"),
        ("completed", "already_booked", "es", "✅ Ya tenías plaza"),
        ("failed", "full", "en", "❌ Class full"),
        ("failed", "not_open", "en", "❌ Booking was not open yet"),
        ("failed", "blocked", "es", "❌ AimHarder bloqueó la petición"),
        ("failed", "session_expired", "en", "❌ Session expired: log in again"),
        ("failed", "missed", "es", "❌ No se pudo enviar a tiempo"),
        ("failed", "bad_row", "en", "❌ The prebooking is not valid"),
        ("failed", "no_credits", "en", "❌ Not booked (no_credits)"),
    ],
)
def test_an_outcome_reads_in_the_members_language(
    status: str, outcome: str, lang: str, title: str
) -> None:
    message = render("outcome", {**BASE, "status": status, "outcome": outcome}, lang)
    assert message.title == title
    assert "CrossFit Norte" in message.body and "106015104" in message.body
    assert "2030-12-09" in message.body  # the class's day
    assert "07:00:00.000" in message.body and "+0.4 ms" in message.body  # box time, late


def test_a_warning_says_before_when_in_box_time() -> None:
    en = render("warning", {**BASE, "cause": "session_dead"}, "en")
    assert en.body.startswith("Your AimHarder session has ended: log in again before Thursday")
    assert "07:00 CET" in en.body
    es = render("warning", {**BASE, "cause": "session_dead"}, "es")
    assert "antes de jueves 2030-12-05 07:00" in es.body


def test_a_payload_with_holes_still_renders() -> None:
    message = render("outcome", {"status": "failed", "available_at": 1e20}, None)
    assert message.title.startswith("❌") and "?" in message.body


def test_backoff_doubles_to_an_hour_with_jitter() -> None:
    rng = random.Random(1)
    delays = [retry_delay(n, rng) for n in range(1, 12)]
    assert 5 <= delays[0] <= 15 and 10 <= delays[1] <= 30
    assert all(d <= 5400 for d in delays) and delays[-1] >= 1800


def test_heartbeat_pings_every_interval_and_fails_once() -> None:
    state = HeartbeatState(interval=60)
    assert state.due(0, True) == "ping"
    assert state.due(30, True) is None
    assert state.due(60, True) == "ping"
    assert state.due(61, False) == "fail"
    assert state.due(62, False) is None
    assert state.due(200, False) is None
    assert state.due(201, True) == "ping"  # healthy again: at once


def test_urls_masked_and_checked() -> None:
    assert mask_url("tgram://123456789:AAbbCCddEEff/12315544") == "tgram://12…/12…"
    assert mask_url("json://user:pw@hooks.example.com:8080/abcdef?x=1") == (
        "json://****@hooks.example.com:8080/ab…?…"
    )
    check_url("ntfy://ntfy.sh/my-topic")
    with pytest.raises(ChannelError, match="apprise cannot use"):
        check_url("nope://secret-token")
    assert check_events(["warning", "outcome"]) == ["outcome", "warning"]
    with pytest.raises(ChannelError):
        check_events(["sms"])


def test_status_and_metrics_show_notifications_and_heartbeat() -> None:
    snapshot = {
        "notifications": {"sent": 3, "retried": 1, "dead": 0, "hung": 2},
        "heartbeat": {"healthy": False, "pings": 7, "fails": 1, "errors": 0},
    }
    line = status_line(snapshot)
    assert line is not None and "3 sent, 1 retried, 0 dead, 2 hung" in line
    assert "heartbeat FAILING" in line
    assert gauges(snapshot)["prebookd_notifications_hung"] == 2.0
    assert gauges(snapshot)["prebookd_heartbeat_healthy"] == 0.0
    assert status_line({}) is None


def test_a_channels_secrets_are_masked_in_logs_and_its_host_is_not() -> None:
    from prebookd.log import forget_secrets, redact_text
    from prebookd.notify.channels import register_url

    register_url("tgram://123456789:AAbbCCddEEff1234/12315544")
    register_url("mailto://user:hunter2pass@smtp.example.com?to=a@b.es&pass=0therSecret")
    register_url("ntfy://ntfy.example.com/private-topic-1")
    try:
        text = redact_text("AAbbCCddEEff1234 hunter2pass 0therSecret private-topic-1 at ")
        text += redact_text("smtp.example.com")
    finally:
        forget_secrets()  # other tests log ordinary numbers like these
    assert "AAbb" not in text and "hunter2" not in text and "0ther" not in text
    assert "private-topic" not in text
    assert "smtp.example.com" in text  # the host, a plain name, stays readable


def test_operator_alerts_from_an_instants_summary_and_an_unclean_start() -> None:
    from prebookd.notify.operator import firing_alerts, unclean_start_alert

    calm = {"instant": "T", "count": 5, "spread_ms": 2.1, "outcomes": {"booked": 5}}
    assert firing_alerts(calm) == []
    bad = {
        "instant": "T",
        "count": 9,
        "spread_ms": 1500.0,
        "outcomes": {"booked": 3, "rate_limited": 4, "blocked": 2},
        "requests": {"norte": 9},
    }
    keys = [a.key for a in firing_alerts(bad)]
    assert keys == ["slow:T", "rate_limited:T", "blocked:T"]
    assert unclean_start_alert("p1", {"loaded": 0, "executing": 0}, 0) is None
    alert = unclean_start_alert("p1", {"loaded": 1, "executing": 2}, 10)
    assert alert is not None and alert.key == "unclean:p1"
    assert "2 row(s) were on the wire and are sent again" in alert.body
