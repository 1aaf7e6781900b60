"""Where settings come from (the environment and the file `PREBOOKD_ENV_FILE` names),
which of them a reload applies, where each value came from, and the `PREBOOKD_*`
variables no setting knows.

pydantic-settings ignores a variable it has no field for, so a typo such as
`PREBOOKD_ARMLEAD=5` would leave the default in force without a word: every command
warns about such variables at start (and `prebookd config` lists them), with the
setting the name is closest to.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass

import structlog
from dotenv import dotenv_values

from prebookd.errors import ConfigError
from prebookd.settings import Settings, load_settings

# Settings a SIGHUP applies to the running daemon. The others (connections, pools,
# where things live, the instance's name) are read once at start: a reload that
# changes one of them says so in the log and a restart applies it.
LIVE_SETTINGS = frozenset(
    {
        "arm_lead",
        "stage_lead",
        "stage_requests",
        "spin_window",
        "fire_offset",
        "retry_window",
        "retry_interval",
        "retry_unexpected",
        "late_grace",
        "horizon",
        "max_lead_days",
        "reconcile_interval",
        "lease_seconds",
        "result_flush_interval",
        "shutdown_timeout",
        "token_refresh_age",
        "session_keep_horizon",
        "plan_horizon",
        "plan_interval",
        "listing_check_interval",
        "listing_check_max",
        "history_days",
        "log_format",
        "log_level",
        # issue 18: aiming at the box's clock
        "aim",
        "max_advance",
        "aim_margin",
        "clock_bound_max",
        "clock_probes",
        "clock_probe_every",
        "fast_retry_interval",
        "fast_retry_window",
        "max_requests",
    }
)
ENV_FILE_VARIABLE = "PREBOOKD_ENV_FILE"


def read_settings() -> Settings:
    """Settings from the environment, overridden by the file `PREBOOKD_ENV_FILE` names.

    systemd reads `EnvironmentFile=` only when it starts the service, so a reload
    (SIGHUP) must read the file itself, and what it says wins over the environment
    the process was started with."""
    overrides = {
        key.removeprefix("PREBOOKD_").lower(): value
        for key, value in env_file_variables().items()
        if key != ENV_FILE_VARIABLE
    }
    return load_settings(**overrides)


def env_file_variables(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The `PREBOOKD_*` variables of the file `PREBOOKD_ENV_FILE` names (none if unset),
    names upper-cased as the settings read them (case does not matter to them)."""
    path = environ.get(ENV_FILE_VARIABLE)
    if not path:
        return {}
    if not os.path.exists(path):
        raise ConfigError(f"{ENV_FILE_VARIABLE}: no such file: {path}")
    return {
        key.upper(): value
        for key, value in dotenv_values(path).items()
        if key.upper().startswith("PREBOOKD_") and value is not None
    }


def changed_settings(old: Settings, new: Settings) -> set[str]:
    return {name for name in type(old).model_fields if getattr(old, name) != getattr(new, name)}


PREFIX = "PREBOOKD_"

# Variables that are no setting but mean something to prebookd or its tests.
OTHER_VARIABLES = frozenset({ENV_FILE_VARIABLE, "PREBOOKD_TEST_DATABASE_URL"})

DEFAULT = "default"
ENVIRONMENT = "environment"


def setting_variables() -> dict[str, str]:
    """Each setting's variable name: {"PREBOOKD_ARM_LEAD": "arm_lead", ...}."""
    return {f"{PREFIX}{name.upper()}": name for name in Settings.model_fields}


def sources(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """For each setting, where its value came from: `env file PATH` (which wins, as
    `read_settings` reads it last), `environment`, or `default`."""
    from_file = env_file_variables(environ)
    in_environment = {key.upper() for key in environ}
    file_source = f"env file {environ.get(ENV_FILE_VARIABLE)}"
    found: dict[str, str] = {}
    for variable, name in setting_variables().items():
        if variable in from_file:
            found[name] = file_source
        elif variable in in_environment:
            found[name] = ENVIRONMENT
        else:
            found[name] = DEFAULT
    return found


@dataclass(frozen=True)
class UnknownVariable:
    name: str
    source: str  # "environment" or "env file PATH"
    suggestion: str | None  # the setting's variable it is closest to, if any

    def describe(self) -> str:
        hint = f"; did you mean {self.suggestion}?" if self.suggestion else ""
        return f"{self.name} (in the {self.source}) is not a setting: ignored{hint}"


def unknown_variables(environ: Mapping[str, str] = os.environ) -> list[UnknownVariable]:
    """`PREBOOKD_*` variables of the environment and the env file that no setting
    reads, each with the closest setting's name when one is close."""
    known = setting_variables()
    file_source = f"env file {environ.get(ENV_FILE_VARIABLE)}"
    seen: dict[str, str] = {key.upper(): ENVIRONMENT for key in environ}
    seen.update(dict.fromkeys(env_file_variables(environ), file_source))
    unknown = []
    for name, source in sorted(seen.items()):
        if not name.startswith(PREFIX) or name in known or name in OTHER_VARIABLES:
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
        if not close:
            # PREBOOKD_ARMLEAD and PREBOOKD_ARM_LEAD differ by an underscore only.
            squeezed = {variable.replace("_", ""): variable for variable in known}
            close = [squeezed[key] for key in (name.replace("_", ""),) if key in squeezed]
        unknown.append(UnknownVariable(name, source, close[0] if close else None))
    return unknown


def log_unknown_variables() -> None:
    """One warning per unknown variable: at every command's start and on a reload."""
    for variable in unknown_variables():
        structlog.get_logger(__name__).warning(
            "unknown_setting",
            variable=variable.name,
            source=variable.source,
            suggestion=variable.suggestion,
        )
