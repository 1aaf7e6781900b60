"""`prebookd config` and how bad settings are refused, as an operator sees them."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from yarl import URL

from prebookd.hosts import DEFAULT_BOX_HOSTS, parse_host_patterns, url_not_allowed
from prebookd.settings import Settings, load_settings, mask_dsn
from tests.cli_support import cli_with_env
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
    lines = {line.split()[0]: line.split()[1:] for line in out.splitlines()}
    assert set(lines) == {f"PREBOOKD_{name.upper()}" for name in Settings.model_fields}
    assert lines["PREBOOKD_DATABASE_URL"] == ["postgresql://u:****@host:5432/db", "(environment)"]
    assert lines["PREBOOKD_ARM_LEAD"] == ["90.0", "(environment)"]
    assert lines["PREBOOKD_STAGE_LEAD"] == ["3.0", "(default)"]
    assert lines["PREBOOKD_STATE_DIR"] == [str(tmp_path), "(environment)"]


async def test_config_json(tmp_path: Path) -> None:
    code, out, err = await run_prebookd(
        "config", "--json", env=cli_env(tmp_path, PREBOOKD_DATABASE_URL=DSN)
    )

    assert code == 0, err
    assert SECRET not in out + err
    shown = json.loads(out)
    assert set(shown["settings"]) == set(shown["sources"]) == set(Settings.model_fields)
    assert shown["settings"]["database_url"] == "postgresql://u:****@host:5432/db"
    assert shown["sources"]["database_url"] == "environment"
    assert shown["settings"]["db_pool_max"] == Settings.model_fields["db_pool_max"].default
    assert shown["sources"]["db_pool_max"] == "default"
    assert shown["settings"]["log_format"] == "console"
    assert shown["unknown_variables"] == []


async def test_config_without_database_url_says_embedded(tmp_path: Path) -> None:
    code, out, err = await run_prebookd("config", "--json", env=cli_env(tmp_path))

    assert code == 0, err
    assert json.loads(out)["settings"]["database_url"] == "(embedded)"


async def test_config_says_which_values_the_env_file_set(tmp_path: Path) -> None:
    env_file = tmp_path / "prebookd.env"
    env_file.write_text("PREBOOKD_ARM_LEAD=120\nPREBOOKD_RETRY_WINDOW=5\n")
    env = cli_env(
        tmp_path,
        PREBOOKD_ENV_FILE=str(env_file),
        PREBOOKD_ARM_LEAD="90",  # the file wins, as on a reload
        PREBOOKD_STAGE_LEAD="2",
    )
    code, out, err = await run_prebookd("config", "--json", env=env)

    assert code == 0, err
    shown = json.loads(out)
    assert shown["settings"]["arm_lead"] == 120.0
    assert shown["sources"]["arm_lead"] == f"env file {env_file}"
    assert shown["sources"]["retry_window"] == f"env file {env_file}"
    assert shown["sources"]["stage_lead"] == "environment"
    assert shown["sources"]["retry_interval"] == "default"


async def test_a_misspelt_variable_is_a_warning_naming_the_setting_it_resembles(
    tmp_path: Path,
) -> None:
    env_file = tmp_path / "prebookd.env"
    env_file.write_text("PREBOOKD_RETRYWINDOW=5\n")
    env = cli_env(
        tmp_path,
        PREBOOKD_ARMLEAD="5",
        PREBOOKD_COLOUR="blue",
        PREBOOKD_ENV_FILE=str(env_file),
        PREBOOKD_DATABASE_URL="postgresql://postgres@127.0.0.1:1/none",
    )
    (code, out, err), (_, _, list_err) = await asyncio.gather(
        run_prebookd("config", env=env), run_prebookd("list", env=env)
    )

    assert code == 0, err
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: PREBOOKD_ARMLEAD (in the environment) is not a setting: ignored; "
        "did you mean PREBOOKD_ARM_LEAD?",
        "warning: PREBOOKD_COLOUR (in the environment) is not a setting: ignored",
        f"warning: PREBOOKD_RETRYWINDOW (in the env file {env_file}) is not a setting: "
        "ignored; did you mean PREBOOKD_RETRY_WINDOW?",
    ]
    # Every other command warns at start, in the log, before it does its work.
    logged = [line for line in list_err.splitlines() if "unknown_setting" in line]
    assert len(logged) == 3, list_err
    assert "[warning]" in logged[0]
    assert "variable=PREBOOKD_ARMLEAD" in logged[0]
    assert "suggestion=PREBOOKD_ARM_LEAD" in logged[0]


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
        # Members' passwords go to the account URL: only to a host PREBOOKD_BOX_HOSTS allows.
        (
            {"PREBOOKD_AIMHARDER_URL": "https://evil.example"},
            ["PREBOOKD_AIMHARDER_URL", "host evil.example is not in", "PREBOOKD_BOX_HOSTS"],
        ),
        (
            {"PREBOOKD_AIMHARDER_URL": "http://169.254.169.254/"},
            ["PREBOOKD_AIMHARDER_URL", "host 169.254.169.254 is not in PREBOOKD_BOX_HOSTS"],
        ),
        (
            {"PREBOOKD_AIMHARDER_URL": "http://login.aimharder.com"},
            ["PREBOOKD_AIMHARDER_URL", "plain http is only for a loopback host", "https"],
        ),
        (
            {"PREBOOKD_AIMHARDER_URL": "http://127.0.0.1:8080"},
            ["PREBOOKD_AIMHARDER_URL", "host 127.0.0.1 is not in PREBOOKD_BOX_HOSTS"],
        ),
        (
            {"PREBOOKD_AIMHARDER_URL": f"https://u:{SECRET}@aimharder.com"},
            ["PREBOOKD_AIMHARDER_URL", "user name or password"],
        ),
        (
            {"PREBOOKD_BOX_HOSTS": "127.0.0.1", "PREBOOKD_AIMHARDER_URL": "https://aimharder.com"},
            ["PREBOOKD_AIMHARDER_URL", "host aimharder.com is not in PREBOOKD_BOX_HOSTS"],
        ),
        ({"PREBOOKD_BOX_HOSTS": "aimharder.com,*"}, ["PREBOOKD_BOX_HOSTS", "'*'"]),
        ({"PREBOOKD_BOX_HOSTS": "*.com"}, ["PREBOOKD_BOX_HOSTS", "'*.com'"]),
        ({"PREBOOKD_BOX_HOSTS": "http://x.aimharder.com"}, ["PREBOOKD_BOX_HOSTS"]),
    ],
)
async def test_bad_setting_is_refused_in_one_line_naming_it(
    tmp_path: Path, settings: dict[str, str], named: list[str]
) -> None:
    # In this process (prebookd's main, as the console script calls it): the refusal
    # comes before anything else is done; one real process below shows it to a shell.
    env = {"PREBOOKD_STATE_DIR": str(tmp_path), **settings}
    for command in ("config", "migrate", "run"):
        run = await cli_with_env(env, command)
        assert run.code == 2, run
        assert "Traceback" not in run.err
        line = run.error_line  # one line on stderr, nothing on stdout
        for name in named:
            assert name in line
        assert SECRET not in line


async def test_a_bad_setting_stops_the_real_process_in_one_line(tmp_path: Path) -> None:
    env = cli_env(tmp_path, PREBOOKD_DATABASE_URL=f"mysql://u:{SECRET}@host/db")
    code, out, err = await run_prebookd("run", env=env)

    assert (code, out) == (2, "")
    assert err.splitlines() == [
        "prebookd: error: invalid setting: PREBOOKD_DATABASE_URL: must be a postgresql:// URL"
    ]


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


async def test_a_loopback_account_site_named_in_box_hosts(tmp_path: Path) -> None:
    env = cli_env(
        tmp_path,
        PREBOOKD_AIMHARDER_URL="http://127.0.0.1:8080/",
        PREBOOKD_BOX_HOSTS=" 127.0.0.1, AimHarder.com ,*.aimharder.com,",
    )
    code, out, err = await run_prebookd("config", "--json", env=env)

    assert code == 0, err
    shown = json.loads(out)["settings"]
    assert shown["aimharder_url"] == "http://127.0.0.1:8080"
    assert shown["box_hosts"] == "127.0.0.1,aimharder.com,*.aimharder.com"
    default = json.loads((await run_prebookd("config", "--json", env=cli_env(tmp_path)))[1])[
        "settings"
    ]
    assert default["box_hosts"] == "aimharder.com,*.aimharder.com,aimharder.es,*.aimharder.es"


@pytest.mark.parametrize(
    ("url", "hosts", "refused"),
    [
        ("https://aimharder.com", DEFAULT_BOX_HOSTS, None),
        ("https://login.aimharder.es/", DEFAULT_BOX_HOSTS, None),
        ("https://a.b.aimharder.com", DEFAULT_BOX_HOSTS, None),
        ("https://AimHarder.com.:443", DEFAULT_BOX_HOSTS, None),
        ("https://evilaimharder.com", DEFAULT_BOX_HOSTS, "host evilaimharder.com is not in"),
        ("https://aimharder.com.evil.example", DEFAULT_BOX_HOSTS, "is not in"),
        ("https://aimharder.io", DEFAULT_BOX_HOSTS, "host aimharder.io is not in"),
        ("http://aimharder.com", DEFAULT_BOX_HOSTS, "plain http is only for a loopback"),
        ("https://x@aimharder.com", DEFAULT_BOX_HOSTS, "user name or password"),
        ("ws://aimharder.com", DEFAULT_BOX_HOSTS, "not an http(s) URL"),
        ("http://127.0.0.1:8080", ("127.0.0.1",), None),
        ("http://[::1]:8080", ("[::1]",), None),
        ("http://localhost:8080", ("localhost",), None),
        ("http://127.0.0.1:8080", DEFAULT_BOX_HOSTS, "host 127.0.0.1 is not in"),
        ("http://127.0.0.2:8080", ("127.0.0.1",), "host 127.0.0.2 is not in"),
        ("http://box.example", ("box.example",), "plain http is only for a loopback"),
        ("https://box.example", ("box.example",), None),
        ("https://sub.box.example", ("box.example",), "is not in"),
        ("https://box.example", ("*.box.example",), "is not in"),  # the domain itself: no
        ("http://10.0.0.1", ("10.0.0.1",), "plain http is only for a loopback"),
        ("https://anything.example", (), "is not in PREBOOKD_BOX_HOSTS"),
    ],
)
def test_which_urls_may_be_sent_cookies(
    url: str, hosts: tuple[str, ...], refused: str | None
) -> None:
    problem = url_not_allowed(URL(url), parse_host_patterns(hosts))
    if refused is None:
        assert problem is None
    else:
        assert problem is not None and refused in problem


def test_host_patterns() -> None:
    assert parse_host_patterns(" A.example. ,, *.B.example,[::1],10.1.2.3,a.example") == (
        "a.example",
        "*.b.example",
        "::1",
        "10.1.2.3",
    )
    assert parse_host_patterns("") == ()
    for bad in ("*", "*.com", "*.10.1.2.3", "a b", "https://a.example", "a_b.example", "-a.com"):
        with pytest.raises(ValueError, match="is not a host name"):
            parse_host_patterns(bad)
    assert load_settings(box_hosts="127.0.0.1", aimharder_url="http://127.0.0.1:9").box_hosts == (
        "127.0.0.1",
    )
