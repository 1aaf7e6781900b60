"""What prebookd's log lines show: events and fields, never a secret."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from multidict import CIMultiDict

from prebookd import log as prebookd_log
from prebookd.errors import describe
from prebookd.log import (
    LibraryLogHandler,
    configure_logging,
    forget_secrets,
    mask_email,
    register_secret,
)
from prebookd.models import MemberSession, cookie_header
from prebookd.settings import load_settings

SECRETS = ("s3cretTok", "c00kieVal", "pa55word", "dsnPa55", "nestedTok", "jarVal", "bodyTok")


@pytest.fixture(params=["console", "json"])
def log_format(request: pytest.FixtureRequest) -> Iterator[str]:
    fmt: str = request.param
    yield fmt
    structlog.reset_defaults()


def emit(fmt: str, event: str, **fields: Any) -> None:
    configure_logging("info", fmt)
    structlog.get_logger("test").info(event, **fields)


def test_secret_keys_are_masked(log_format: str, capsys: pytest.CaptureFixture[str]) -> None:
    emit(
        log_format,
        "session_loaded",
        token="s3cretTok",
        cookie="amhrdrauth=c00kieVal",
        password="pa55word",
        aimharder_cookies=[{"name": "amhrdrauth", "value": "c00kieVal"}],
        box="crossfitnorte",
    )

    out = capsys.readouterr().err
    assert "session_loaded" in out
    assert "crossfitnorte" in out
    for secret in SECRETS:
        assert secret not in out


def test_secrets_inside_text_are_masked(
    log_format: str, capsys: pytest.CaptureFixture[str]
) -> None:
    emit(
        log_format,
        "login answered Set-Cookie: amhrdrauth=c00kieVal; path=/; PHPSESSID=c00kieVal",
        error="cannot connect to postgresql://prebookd:dsnPa55@db.internal:5432/prebookd",
        body='{"token": "bodyTok", "bookState": 1}',
        form="login=ana%40example.com&password=pa55word&token=s3cretTok",
    )

    out = capsys.readouterr().err
    assert "db.internal:5432" in out
    assert "bookState" in out
    for secret in SECRETS:
        assert secret not in out


def test_nested_secrets_are_masked(log_format: str, capsys: pytest.CaptureFixture[str]) -> None:
    emit(
        log_format,
        "token_refreshed",
        session={
            "user": "ana@example.com",
            "auth": {"aimharder_token": "nestedTok", "fingerprint": "bg-ana"},
        },
        jar=[{"name": "amhrdrauth", "value": "jarVal"}],
        headers=CIMultiDict({"Cookie": "amhrdrauth=c00kieVal", "Accept": "application/json"}),
        error=RuntimeError("connect postgresql://u:dsnPa55@host/db failed"),
    )

    out = capsys.readouterr().err
    assert "bg-ana" in out
    assert "application/json" in out
    for secret in SECRETS:
        assert secret not in out


def test_exception_tracebacks_are_masked(
    log_format: str, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("info", log_format)
    try:
        raise RuntimeError("token refresh failed for token=s3cretTok")
    except RuntimeError:
        structlog.get_logger("test").exception("token_refresh_failed")

    out = capsys.readouterr().err
    assert "token_refresh_failed" in out
    assert "RuntimeError" in out
    assert "s3cretTok" not in out


def test_json_lines_keep_ordinary_fields(capsys: pytest.CaptureFixture[str]) -> None:
    try:
        emit("json", "prebooking_fired", prebooking_id="abc", lateness_ms=0.4, attempts=1)
    finally:
        structlog.reset_defaults()

    line = json.loads(capsys.readouterr().err)
    assert line["event"] == "prebooking_fired"
    assert line["level"] == "info"
    assert (line["prebooking_id"], line["lateness_ms"], line["attempts"]) == ("abc", 0.4, 1)


def test_level_filters(capsys: pytest.CaptureFixture[str]) -> None:
    try:
        configure_logging("warning", "console")
        log = structlog.get_logger("test")
        log.info("quiet_event")
        log.warning("loud_event")
    finally:
        structlog.reset_defaults()

    out = capsys.readouterr().err
    assert "quiet_event" not in out
    assert "loud_event" in out


def test_mask_email() -> None:
    assert mask_email("jane.doe@example.com") == "ja***@example.com"
    assert mask_email(None) == "?"


def test_ordinary_fields_that_merely_mention_a_secret_are_shown(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("info", "json")
    structlog.get_logger("t").info("session_refreshed", token_update_count=3, passes=2)
    line = json.loads(capsys.readouterr().err)
    assert line["token_update_count"] == 3
    assert line["passes"] == 2


@pytest.fixture
def library_logs() -> Iterator[None]:
    yield
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, LibraryLogHandler)]:
        root.removeHandler(handler)


@pytest.mark.usefixtures("library_logs")
def test_a_library_error_is_one_redacted_line_without_traceback(
    log_format: str, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("info", log_format)
    try:
        raise ConnectionResetError(104, "Connection reset by peer")
    except ConnectionResetError:
        logging.getLogger("asyncpg.pool").warning(
            "Failed to connect to postgresql://prebookd:dsnPa55@db/prebookd", exc_info=True
        )

    out = capsys.readouterr().err
    assert len(out.strip().splitlines()) == 1, out
    assert "library_log" in out
    assert "asyncpg.pool" in out
    assert "ConnectionResetError: [Errno 104] Connection reset by peer" in out
    assert "Traceback" not in out
    assert "dsnPa55" not in out


@pytest.mark.usefixtures("library_logs")
def test_library_info_lines_are_not_shown(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "console")
    logging.getLogger("aiohttp.access").info("127.0.0.1 GET /api/book 200")
    logging.getLogger("asyncio").error("Task exception was never retrieved")

    out = capsys.readouterr().err
    assert "GET /api/book" not in out
    assert "Task exception was never retrieved" in out


def test_an_exception_without_a_message_is_named_by_its_type() -> None:
    assert describe(TimeoutError()) == "TimeoutError"
    assert (
        describe(OSError(104, "Connection reset by peer")) == "[Errno 104] Connection reset by peer"
    )


# --- camelCase and quoted keys ----------------------------------------------------------

CAMEL = ("newTok3n", "refreshTok3n", "authTok3n", "hdrCookie", "reprTok3n", "escTok3n")


def test_camel_case_keys_are_masked(log_format: str, capsys: pytest.CaptureFixture[str]) -> None:
    emit(
        log_format,
        "token_refreshed",
        newToken="newTok3n",
        answer={"data": {"auth": {"authOK": True, "refreshToken": "refreshTok3n"}}},
        headers={"Set-Cookie": "x=hdrCookie", "X-Auth-Token": "authTok3n"},
        tokenUpdateCount=4,
        token_update_count=3,
        cookie_names=["amhrdrauth", "PHPSESSID"],
    )

    out = capsys.readouterr().err
    for secret in CAMEL[:4]:
        assert secret not in out
    assert "tokenUpdateCount" in out and "4" in out
    assert "amhrdrauth" in out and "PHPSESSID" in out  # names, not values


class Session:
    def __init__(self, token: str) -> None:
        self.token = token

    def __repr__(self) -> str:
        cookies = [{"name": "PHPSESSID", "value": "c00kieVal"}]
        return f"Session(token={self.token!r}, cookies={cookies!r})"


def test_quoted_keys_in_text_are_masked(
    log_format: str, capsys: pytest.CaptureFixture[str]
) -> None:
    emit(
        log_format,
        "answer_unexpected",
        repr_text=str({"newToken": "newTok3n", "authToken": "authTok3n", "ok": 1}),
        quote_in_value=str({"refreshToken": "refresh'Tok3n", "token": b"bodyTok"}),
        json_text='{"refreshToken": "ref\\"reshTok3n", "bookState": 1}',
        double_encoded=json.dumps({"result": json.dumps({"token": "escTok3n"})}),
        session=Session("reprTok3n"),
        error=ValueError("answer {'amhrdrauth': 'c00kieVal'} unreadable"),
    )

    out = capsys.readouterr().err
    for secret in (*CAMEL, "bodyTok", "c00kieVal", "Tok3n"):
        assert secret not in out, secret
    assert "bookState" in out and "answer_unexpected" in out


# --- secrets known by value -----------------------------------------------------------


@pytest.fixture
def known() -> Iterator[None]:
    yield
    forget_secrets()
    structlog.reset_defaults()


@pytest.mark.usefixtures("known")
def test_a_registered_secret_is_masked_wherever_it_appears(
    log_format: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cookie, token = "Zq9cookieValueOfAna", "tok-2f9c81d0e7"
    register_secret(cookie)
    register_secret(token)
    register_secret("php1")  # too short to mask (it would mask ordinary words): ignored
    register_secret(None)
    configure_logging("info", log_format)
    log = structlog.get_logger("test")
    log.warning(
        f"odd {cookie}",
        url=f"https://alpha.aimharder.com/api/bookings?x={token}&day=20301201",
        body=f"<html>{cookie}</html>",
        by_member={cookie: "ana", "nested": [(1, f"[{token}]")]},
        error=RuntimeError(f"cannot decode {cookie[:-1]}{cookie}"),
        box="php1",
    )
    try:
        raise ValueError(f"session {token} refused")
    except ValueError:
        log.exception("session_refused")

    out = capsys.readouterr().err
    assert cookie not in out and token not in out
    assert "alpha.aimharder.com/api/bookings" in out and "day=20301201" in out
    assert "php1" in out and "session_refused" in out
    assert out.count("****") >= 6


@pytest.mark.usefixtures("known")
def test_the_oldest_registered_secrets_are_forgotten_first(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(prebookd_log, "MAX_SECRETS", 3)
    for n in range(5):
        register_secret(f"secret-number-{n}")
    register_secret("secret-number-2")  # seen again: now the newest
    register_secret("secret-number-5")  # 3 is the oldest kept: forgotten
    emit("console", "many", values=[f"secret-number-{n}" for n in range(6)])

    shown = capsys.readouterr().err
    assert [f"secret-number-{n}" in shown for n in range(6)] == [
        True, True, False, True, False, False,
    ]  # fmt: skip


def test_a_session_read_from_the_table_has_its_secrets_masked(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The daemon loads members' cookies and tokens from Postgres, not through the
    account client: once a row is turned into a booking, they are masked in any line."""
    cookie, token = "CookieFromTheTable42", "token-from-the-table-77"
    record = {
        "session_id": 1,
        "aimharder_token": token,
        "aimharder_cookies": [{"name": "amhrdrauth", "value": cookie}],
        "fingerprint": "f" * 50,
        "last_token_update_date": None,
        "user_email": "ana@x.es",
    }
    session = MemberSession.from_record(record)
    assert session is not None
    cookie_header(record["aimharder_cookies"])
    configure_logging("info", "console")
    structlog.get_logger("test").warning("odd_answer", body=f"{cookie} and {token}")
    out = capsys.readouterr().err
    assert cookie not in out and token not in out


# --- journald ---------------------------------------------------------------------------


def test_journal_lines_carry_their_priority_and_no_timestamp(
    capsys: pytest.CaptureFixture[str],
) -> None:
    try:
        configure_logging("debug", "journal")
        log = structlog.get_logger("test")
        log.debug("quiet", n=1)
        log.info("booking_sent", outcome="booked")
        log.warning("booking_sent", outcome="full", reason="class full")
        log.error("prebooking_rejected", outcome="bad_row", token="s3cretTok")
        log.critical("on_fire")
    finally:
        structlog.reset_defaults()

    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "<7>[debug] quiet n=1",
        "<6>[info] booking_sent outcome=booked",
        "<4>[warning] booking_sent outcome=full reason='class full'",
        "<3>[error] prebooking_rejected outcome=bad_row token=****",
        "<2>[critical] on_fire",
    ]


def test_every_line_of_a_journal_traceback_carries_the_priority(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """journald files each line of a message as an entry of its own: a traceback's
    lines without the prefix would be filed as info, out of `journalctl -p err`."""
    try:
        configure_logging("info", "journal")
        try:
            raise RuntimeError("token=s3cretTok refused")
        except RuntimeError:
            structlog.get_logger("test").exception("refresh_crashed")
    finally:
        structlog.reset_defaults()

    lines = capsys.readouterr().err.splitlines()
    assert len(lines) > 3 and lines[0] == "<3>[error] refresh_crashed"
    assert all(line.startswith("<3>") for line in lines), lines
    assert any("RuntimeError" in line for line in lines)
    assert not any("s3cretTok" in line for line in lines)


def test_console_lines_are_unchanged_timestamp_first(capsys: pytest.CaptureFixture[str]) -> None:
    try:
        emit("console", "booking_sent", outcome="booked")
    finally:
        structlog.reset_defaults()

    line = capsys.readouterr().err
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z \[info\] booking_sent outcome=booked\n", line
    ), line


def test_json_is_prefixed_only_when_stderr_is_the_journal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """journald strips the prefix: the message it stores is the JSON object."""
    try:
        emit("json", "booking_sent", outcome="full")
        monkeypatch.setattr(prebookd_log, "stderr_is_journal", lambda: True)
        configure_logging("info", "json")
        structlog.get_logger("test").warning("booking_sent", outcome="full")
    finally:
        structlog.reset_defaults()

    plain, prefixed = capsys.readouterr().err.splitlines()
    assert json.loads(plain)["outcome"] == "full"
    assert prefixed.startswith("<4>{")
    assert json.loads(prefixed.removeprefix("<4>"))["level"] == "warning"


def test_the_default_format_is_journal_only_when_stderr_is_the_journal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """systemd sets JOURNAL_STREAM to the device:inode of the stream it gave the
    service; a command whose stderr goes elsewhere inherits the variable, not the
    stream."""
    monkeypatch.delenv("PREBOOKD_LOG_FORMAT", raising=False)
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    assert load_settings().log_format == "console"
    stderr = os.fstat(2)
    monkeypatch.setenv("JOURNAL_STREAM", f"{stderr.st_dev}:{stderr.st_ino}")
    assert load_settings().log_format == "journal"
    monkeypatch.setenv("JOURNAL_STREAM", f"{stderr.st_dev}:{stderr.st_ino + 1}")
    assert load_settings().log_format == "console"
    monkeypatch.setenv("JOURNAL_STREAM", "garbage")
    assert load_settings().log_format == "console"
    monkeypatch.setenv("PREBOOKD_LOG_FORMAT", "json")
    assert load_settings().log_format == "json"
