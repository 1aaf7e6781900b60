"""`prebookd config` and how bad settings are refused, as an operator sees them."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from prebookd.settings import Settings, mask_dsn
from tests.support import clean_env, run_prebookd

SECRET = "s3cret"
DSN = f"postgresql://u:{SECRET}@host:5432/db"


def cli_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    """This process's environment without any PREBOOKD_* of the developer's, plus these."""
    return clean_env(PREBOOKD_STATE_DIR=str(tmp_path), **settings)


async def test_config_prints_every_setting_with_the_password_masked(tmp_path: Path) -> None:
    code, out, err = await run_prebookd(
        "config", env=cli_env(tmp_path, PREBOOKD_DATABASE_URL=DSN, PREBOOKD_ARM_LEAD="90")
    )

    assert code == 0, err
    assert SECRET not in out + err
    lines = {line.split()[0]: line.split(maxsplit=1)[1] for line in out.splitlines()}
    assert set(lines) == {f"PREBOOKD_{name.upper()}" for name in Settings.model_fields}
    assert lines["PREBOOKD_DATABASE_URL"] == "postgresql://u:****@host:5432/db"
    assert lines["PREBOOKD_ARM_LEAD"] == "90.0"
    assert lines["PREBOOKD_STATE_DIR"] == str(tmp_path)


async def test_config_json(tmp_path: Path) -> None:
    code, out, err = await run_prebookd(
        "config", "--json", env=cli_env(tmp_path, PREBOOKD_DATABASE_URL=DSN)
    )

    assert code == 0, err
    assert SECRET not in out + err
    shown = json.loads(out)
    assert set(shown) == set(Settings.model_fields)
    assert shown["database_url"] == "postgresql://u:****@host:5432/db"
    assert shown["db_pool_max"] == Settings.model_fields["db_pool_max"].default
    assert shown["log_format"] == "console"


async def test_config_without_database_url_says_embedded(tmp_path: Path) -> None:
    code, out, err = await run_prebookd("config", "--json", env=cli_env(tmp_path))

    assert code == 0, err
    assert json.loads(out)["database_url"] == "(embedded)"


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"PREBOOKD_DB_POOL_MAX": "0"}, ["PREBOOKD_DB_POOL_MAX"]),
        ({"PREBOOKD_DATABASE_URL": f"mysql://u:{SECRET}@host/db"}, ["PREBOOKD_DATABASE_URL"]),
        (
            {"PREBOOKD_DATABASE_URL": f"postgresql://u:{SECRET}@host:port/db"},
            ["PREBOOKD_DATABASE_URL"],
        ),
        ({"PREBOOKD_ARM_LEAD": "abc"}, ["PREBOOKD_ARM_LEAD"]),
        ({"PREBOOKD_LOG_LEVEL": "verbose"}, ["PREBOOKD_LOG_LEVEL"]),
        (
            {"PREBOOKD_DB_POOL_MIN": "5", "PREBOOKD_DB_POOL_MAX": "3"},
            ["PREBOOKD_DB_POOL_MIN", "PREBOOKD_DB_POOL_MAX"],
        ),
    ],
)
async def test_bad_setting_is_refused_in_one_line_naming_it(
    tmp_path: Path, settings: dict[str, str], named: list[str]
) -> None:
    env = cli_env(tmp_path, **settings)
    runs = await asyncio.gather(run_prebookd("config", env=env), run_prebookd("migrate", env=env))
    for code, out, err in runs:
        assert code == 2
        assert out == ""
        assert len(err.splitlines()) == 1, err
        assert "Traceback" not in err
        for name in named:
            assert name in err
        assert SECRET not in err


def test_mask_dsn() -> None:
    assert mask_dsn(DSN) == "postgresql://u:****@host:5432/db"
    assert mask_dsn("postgresql://u@host/db") == "postgresql://u@host/db"
    assert mask_dsn("postgresql:///db?host=/run/postgresql") == (
        "postgresql:///db?host=/run/postgresql"
    )
    assert mask_dsn(f"postgresql://u@host/db?sslmode=require&password={SECRET}") == (
        "postgresql://u@host/db?sslmode=require&password=****"
    )
    assert mask_dsn(f"postgresql://u:{SECRET}@host/db?password={SECRET}") == (
        "postgresql://u:****@host/db?password=****"
    )
