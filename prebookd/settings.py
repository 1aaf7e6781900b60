"""Every setting of prebookd, read from `PREBOOKD_*` environment variables: one
pydantic-settings class, fed alike by systemd's `EnvironmentFile=` and a shell `export`.
Every number has bounds, so a typo is refused at start-up with the setting's name
instead of surfacing at the opening instant."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from yarl import URL

from prebookd.errors import ConfigError
from prebookd.hosts import DEFAULT_BOX_HOSTS, parse_host_patterns, url_not_allowed
from prebookd.log import default_log_format
from prebookd.proxies import mask_proxy_url, parse_proxy_url


def default_state_dir() -> Path:
    """systemd's `StateDirectory=` when run as a unit, else the XDG state home."""
    systemd_dir = os.environ.get("STATE_DIRECTORY")
    if systemd_dir:
        # StateDirectory= may list several paths separated by ':'; ours is the first.
        return Path(systemd_dir.split(":")[0])
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "prebookd"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="PREBOOKD_", extra="ignore", validate_default=True, frozen=True
    )

    database_url: SecretStr | None = Field(
        default=None,
        description="Postgres DSN (direct or session-mode; LISTEN does not work through a "
        "transaction pooler). Unset: an embedded Postgres in the state directory.",
    )
    aimharder_url: str = Field(
        default="https://aimharder.com",
        description="AimHarder account site (login, token refresh); its host must be "
        "one PREBOOKD_BOX_HOSTS allows.",
    )
    box_hosts: Annotated[tuple[str, ...], NoDecode] = Field(
        default=DEFAULT_BOX_HOSTS,
        description="Comma-separated hosts a box's base URL and the account URL may "
        "point at (they are sent members' cookies and passwords): a host, or *.domain for "
        "any host under it; https only, plain http only to a loopback host named here. "
        "A box without base_url (https://SUBDOMAIN.aimharder.com) is always allowed.",
    )
    state_dir: Path = Field(
        default_factory=default_state_dir,
        description="Where the embedded Postgres keeps its data, results wait for Postgres, "
        "and a lock keeps a second `prebookd run` out.",
    )
    instance_name: str = Field(
        default_factory=socket.gethostname,
        min_length=1,
        max_length=100,
        description="A display name: recorded as fired_by, shown in status and logs. "
        "Leases belong to the process, whatever this says.",
    )

    # min = max: the daemon holds the same connections whatever the load.
    db_pool_min: int = Field(default=3, ge=1, le=50, description="asyncpg pool min_size.")
    db_pool_max: int = Field(default=3, ge=1, le=100, description="asyncpg pool max_size.")
    http_pool_limit: int = Field(
        default=200, ge=1, le=10_000, description="aiohttp TCPConnector(limit=...)."
    )
    http_pool_per_host: int = Field(
        default=100, ge=1, le=10_000, description="aiohttp TCPConnector(limit_per_host=...)."
    )

    arm_lead: float = Field(
        default=60.0,
        ge=1.0,
        le=3600.0,
        description="Seconds before the instant a row is claimed and its session loaded.",
    )
    stage_lead: float = Field(
        default=3.0,
        ge=0.05,
        le=30.0,
        description="Seconds before the instant requests are built and connections opened.",
    )
    stage_requests: bool = Field(
        default=True,
        description="Build requests and open their connections stage_lead ahead; turn "
        "off only to measure what that buys.",
    )
    spin_window: float = Field(
        default=0.003,
        ge=0.0,
        le=0.05,
        description="The timer wakes this early, then waits out the rest on the wall clock.",
    )
    fire_offset: float = Field(
        default=0.0,
        ge=0.0,
        le=5.0,
        description="Send this many seconds after available_at (never before it).",
    )
    retry_window: float = Field(
        default=3.0,
        ge=0.0,
        le=60.0,
        description="Seconds after the instant during which 'not open yet' is retried.",
    )
    retry_interval: float = Field(
        default=0.05, ge=0.005, le=5.0, description="Seconds between retries."
    )
    retry_unexpected: int = Field(
        default=2,
        ge=0,
        le=100,
        description="Other answers worth another try (5xx, unreadable, a reset after the "
        "write) are retried at most this many times per booking; 'not open yet' is "
        "retried for the whole retry_window.",
    )
    request_timeout: float = Field(
        default=10.0, ge=0.1, le=120.0, description="Seconds to wait for an answer."
    )
    late_grace: float = Field(
        default=300.0,
        ge=0.0,
        le=86_400.0,
        description="A row whose instant passed less than this ago is sent at once; "
        "older ones fail.",
    )
    horizon: float = Field(
        default=86_400.0,
        ge=60.0,
        le=30 * 86_400.0,
        description="Only rows opening within this many seconds are held in memory.",
    )
    max_lead_days: int = Field(
        default=400,
        ge=1,
        le=3650,
        description="A row opening further ahead than this is refused as absurd.",
    )
    reconcile_interval: float = Field(
        default=60.0,
        ge=1.0,
        le=3600.0,
        description="Seconds between full resyncs with the table (safety net for NOTIFY).",
    )
    lease_seconds: float = Field(
        default=10.0,
        ge=3.0,
        le=3600.0,
        description="A claimed row stays this instance's for this long, renewed while held; "
        "another instance takes it over this long after this one dies.",
    )
    result_flush_interval: float = Field(
        default=0.2,
        ge=0.01,
        le=10.0,
        description="Seconds a result waits at most before its batch is written "
        "(a burst's results go 50 ms after they are reported).",
    )
    shutdown_timeout: float = Field(
        default=20.0,
        ge=0.0,
        le=600.0,
        description="On SIGTERM, wait this long for requests in flight and their results.",
    )
    embedded_pg_timeout: float = Field(
        default=60.0, ge=1.0, le=600.0, description="Seconds to wait for the embedded Postgres."
    )

    token_refresh_age: float = Field(
        default=1200.0,
        ge=60.0,
        le=3600.0,
        description="A session token older than this is refreshed (tokenUpdate) before use.",
    )
    session_keep_horizon: float = Field(
        default=6 * 3600.0,
        ge=60.0,
        le=7 * 86_400.0,
        description="Sessions of members with a prebooking opening within this are kept alive.",
    )
    status_host: str = Field(
        default="127.0.0.1", description="Address of the status/metrics HTTP endpoint."
    )
    status_port: int = Field(
        default=8791, ge=0, le=65_535, description="Port of the status endpoint; 0 turns it off."
    )
    plan_horizon: float = Field(
        default=8 * 86_400.0,
        ge=3600.0,
        le=60 * 86_400.0,
        description="Rules plan the days whose booking opens within this many seconds.",
    )
    plan_interval: float = Field(
        default=300.0,
        ge=0.2,
        le=86_400.0,
        description="Seconds between planning rounds (rules into prebookings).",
    )
    listing_check_interval: float = Field(
        default=900.0,
        ge=0.2,
        le=86_400.0,
        description="Seconds between checks of hand-made rows opening within "
        "session_keep_horizon against their (box, day) listing (early warnings).",
    )
    listing_check_max: int = Field(
        default=20, ge=1, le=500, description="Listing requests at most per check round."
    )
    watch_interval: float = Field(
        default=60.0, ge=0.2, le=3600.0, description="Seconds between reads of a watched class."
    )
    watch_interval_last_hour: float = Field(
        default=15.0, ge=0.2, le=3600.0, description="The same, within the class's last hour."
    )
    watch_requests_per_minute: int = Field(
        default=20, ge=1, le=600, description="Requests per box per minute from watchers, at most."
    )
    watch_cutoff: float = Field(
        default=3600.0, ge=0.0, le=7 * 86_400.0, description="Watching ends this long before class."
    )
    operator_notify_urls: SecretStr | None = Field(
        default=None,
        description="Comma-separated apprise URLs (tgram://, ntfy://, mailto://, ...) the "
        "operator is told on: an unclean stop, Postgres away longer than alarm_after, a "
        "slow instant, a box pushing back, the result spool growing.",
    )
    heartbeat_url: SecretStr | None = Field(
        default=None,
        description="Dead-man's switch (healthchecks.io, Uptime Kuma push): fetched every "
        "heartbeat_interval while healthy, URL/fail once when not.",
    )
    heartbeat_interval: float = Field(
        default=60.0, ge=1.0, le=3600.0, description="Seconds between heartbeat pings."
    )
    alarm_after: float = Field(
        default=60.0,
        ge=1.0,
        le=3600.0,
        description="Postgres unreachable this long: the heartbeat fails and the operator is told.",
    )
    notify_workers: int = Field(
        default=4,
        ge=1,
        le=32,
        description="Threads that send notifications (apprise is synchronous): at most "
        "this many hung channels at once.",
    )
    notify_timeout: float = Field(
        default=10.0,
        ge=0.5,
        le=300.0,
        description="A notification not sent after this long is given up and retried later.",
    )
    history_days: int = Field(
        default=30,
        ge=1,
        le=3650,
        description="Days prebookd keeps its own records: messages delivered or given up, "
        "rule misses. Prebookings are the web app's and never deleted.",
    )

    log_format: Literal["console", "journal", "json"] = Field(
        default_factory=default_log_format,  # the detection lives with the formats
        description="console: timestamped key=value lines; journal: the same with each "
        "line's syslog priority (<4>) and no timestamp, for journald; json: one object a "
        "line. Default: journal when stderr is the journal (JOURNAL_STREAM), else console.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Lowest level logged."
    )

    # Issue 18: aim at each box's opening by its clock (README "Aiming at the box's clock").
    aim: Literal["arrive", "send"] = Field(
        default="arrive", description="arrive: reach each box as it opens by its clock."
    )
    max_advance: float = Field(
        default=0.5, ge=0.0, le=2.0, description="aim=arrive: at most this early, or late (s)."
    )
    aim_margin: float = Field(
        default=0.0015, ge=0.0, le=0.1, description="aim=arrive: this long after opening."
    )
    clock_bound_max: float = Field(
        default=0.005, ge=0.0005, le=0.1, description="Aimed only when known this closely."
    )
    clock_probes: int = Field(
        default=10, ge=0, le=20, description="HEAD requests per box clock measurement."
    )
    clock_probe_every: float = Field(
        default=300.0, ge=60.0, le=86_400.0, description="Box clocks measured this seldom."
    )
    fast_retry_interval: float = Field(
        default=0.005, ge=0.001, le=1.0, description="'Not open yet' retried this often..."
    )
    fast_retry_window: float = Field(
        default=0.2, ge=0.0, le=5.0, description="...this long after the planned time."
    )
    max_requests: int = Field(
        default=100, ge=1, le=500, description="Booking requests per prebooking, at most."
    )

    @field_validator("database_url")
    @classmethod
    def _check_dsn(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        parts = urlsplit(value.get_secret_value())
        if parts.scheme not in ("postgres", "postgresql"):
            # Say what is wrong without echoing the DSN: it may hold a password.
            raise ValueError("must be a postgresql:// URL")
        try:
            parts.port  # noqa: B018 - raises on a non-numeric port
        except ValueError:
            raise ValueError("has a port that is not a number") from None
        return value

    @field_validator("aimharder_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("box_hosts", mode="before")
    @classmethod
    def _check_hosts(cls, value: Any) -> tuple[str, ...]:
        if not isinstance(value, str | list | tuple):
            raise ValueError("must be comma-separated host names")
        return parse_host_patterns(value)

    @model_validator(mode="after")
    def _check_pools(self) -> Settings:
        # Named as the operator sets them: this message is all they get.
        if self.db_pool_min > self.db_pool_max:
            raise ValueError("PREBOOKD_DB_POOL_MIN must not exceed PREBOOKD_DB_POOL_MAX")
        if self.http_pool_per_host > self.http_pool_limit:
            raise ValueError("PREBOOKD_HTTP_POOL_PER_HOST must not exceed PREBOOKD_HTTP_POOL_LIMIT")
        if self.stage_lead >= self.arm_lead:
            raise ValueError("PREBOOKD_STAGE_LEAD must be shorter than PREBOOKD_ARM_LEAD")
        try:
            problem = url_not_allowed(URL(self.aimharder_url), self.box_hosts)
        except ValueError:
            problem = "it is not a valid URL"
        if problem is not None:
            # Passwords go there: no other host, whatever the URL says.
            raise ValueError(
                f"PREBOOKD_AIMHARDER_URL {mask_dsn(self.aimharder_url)[:100]} is refused: "
                f"{problem} (PREBOOKD_BOX_HOSTS={','.join(self.box_hosts)})"
            )
        return self

    def describe(self) -> dict[str, Any]:
        """Every setting with secrets masked: for `prebookd config` and the start-up log."""
        shown: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name == "database_url":
                value = mask_dsn(value.get_secret_value()) if value else "(embedded)"
            elif name == "proxy_url":
                value = mask_proxy_url(value.get_secret_value()) if value else "(direct)"
            elif isinstance(value, SecretStr):
                value = "**********"
            elif isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = ",".join(value)  # as PREBOOKD_BOX_HOSTS is written
            shown[name] = value
        return shown

    # --- the proxy AimHarder is reached through (issue 18) ---------------------------
    proxy_url: SecretStr | None = Field(
        default=None,
        description="Proxy for every request to AimHarder (it answers 403 to some cloud "
        "address ranges): http://, https:// or socks5://[user:password@]host:port. A "
        "box's own (`prebookd box set --proxy`) wins. Unset: direct.",
    )

    @field_validator("proxy_url")
    @classmethod
    def _check_proxy(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        return SecretStr(parse_proxy_url(value.get_secret_value()))  # never echoes it

    @property
    def proxy(self) -> str | None:
        """PREBOOKD_PROXY_URL as the HTTP clients take it; None: direct."""
        return self.proxy_url.get_secret_value() if self.proxy_url else None


_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)


def mask_dsn(dsn: str) -> str:
    """The DSN with its password replaced, safe to print."""
    masked = dsn
    parts = urlsplit(dsn)
    if parts.password is not None:
        netloc = parts.netloc.replace(f":{parts.password}@", ":****@", 1)
        masked = parts._replace(netloc=netloc).geturl()
    # libpq also takes the password as a query parameter: ...?password=...
    return _QUERY_PASSWORD.sub(r"\1****", masked)


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment, turning validation errors into one line."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_input=False, include_url=False):
        field = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        # A check across settings has no field; its message names the settings itself.
        problems.append(f"PREBOOKD_{field.upper()}: {message}" if field else message)
    return "invalid setting: " + "; ".join(problems)
