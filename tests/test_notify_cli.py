"""`prebookd notify add|list|remove|test` against real receivers on loopback: an HTTP
server for json:// and ntfy://, an SMTP server (aiosmtpd) for mailto://."""

from __future__ import annotations

import asyncpg

from tests.cli_support import cli_with_env
from tests.receivers import http_receiver, smtp_receiver


def env(db_dsn: str) -> dict[str, str]:
    return {"PREBOOKD_DATABASE_URL": db_dsn, "PREBOOKD_NOTIFY_TIMEOUT": "3"}


async def run_prebookd(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    run = await cli_with_env(env, *args)
    return run.code, run.out, run.err


async def test_channels_are_added_listed_masked_tested_and_removed(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    async with http_receiver() as web, smtp_receiver() as (smtp_port, mail):
        secret_json = web.url("json", "hook-s3cr3t-t0ken")
        ntfy = web.url("ntfy", "private-topic-123")
        mailto = (
            f"mailto://user:hunter2pass@127.0.0.1:{smtp_port}?to=jane@example.com"
            "&from=prebookd@example.com&mode=insecure"
        )
        ids = []
        for url, extra in ((secret_json, []), (ntfy, ["--lang", "en"]), (mailto, [])):
            code, out, err = await run_prebookd(
                "notify", "add", "--email", "Jane@Example.com", "--url", url, *extra,
                env=env(db_dsn),
            )  # fmt: skip
            assert code == 0, err
            ids.append(out.strip())

        code, out, err = await run_prebookd("notify", "list", env=env(db_dsn))
        assert code == 0, err
        assert "jane@example.com" in out and len(out.splitlines()) == 4
        for secret in ("s3cr3t", "t0ken", "private-topic", "hunter2pass"):
            assert secret not in out + err

        code, out, err = await run_prebookd("notify", "test", "--email", "jane@example.com",
                                            env=env(db_dsn))  # fmt: skip
        assert code == 0, out + err
        assert out.count(" sent") == 3
        for secret in ("s3cr3t", "private-topic", "hunter2pass"):
            assert secret not in out + err
        assert web.at("hook-s3cr3t-t0ken")[0].body["title"] == "prebookd: prueba"
        assert web.received[-1].body  # ntfy's post
        assert len(mail) == 1 and mail[0]["to"] == "jane@example.com"
        assert "prueba" in mail[0]["subject"]

        code, out, err = await run_prebookd("notify", "remove", ids[0], env=env(db_dsn))
        assert code == 0, err
        assert await conn.fetchval("SELECT count(*) FROM prebookd_notify_channels") == 2

    # The receivers are gone: a test now says which channel failed, and exits 1.
    code, out, err = await run_prebookd("notify", "test", "--email", "jane@example.com",
                                        env=env(db_dsn))  # fmt: skip
    assert code == 1
    assert out.count("failed") == 2 and "hunter2pass" not in out + err


async def test_a_url_apprise_cannot_parse_is_refused_in_one_line_without_it(db_dsn: str) -> None:
    for url in ("nonsense://tok3n-abcdef/x", "not a url", "mailto://"):
        code, _, err = await run_prebookd(
            "notify", "add", "--email", "a@b.es", "--url", url, env=env(db_dsn)
        )
        assert code == 2, err
        assert len(err.strip().splitlines()) == 1 and "apprise cannot use" in err
        assert "tok3n" not in err
    code, _, err = await run_prebookd(
        "notify", "add", "--email", "a@b.es", "--url", "json://127.0.0.1/x", "--events", "spam",
        env=env(db_dsn),
    )  # fmt: skip
    assert code == 2 and "--events" in err
