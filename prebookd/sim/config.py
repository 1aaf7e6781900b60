"""The setup of `prebookd simulate` as data: its config file's shape (TOML or JSON, the
same keys as the /_sim control bodies) and the times written in it (`+5s`, ISO with an
offset, epoch seconds). Pure: reading the file and the flags is the command's
(prebookd/cli/simulate.py)."""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field

_RELATIVE = re.compile(r"^([+-])(\d+(?:\.\d+)?)(ms|s|m|h)?$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DAY = re.compile(r"^(\d{4})-?(\d{2})-?(\d{2})$")
_RELATIVE_DAY = re.compile(r"^\+(\d{1,4})d?$")
_NAMED_DAYS = {"today": 0, "tomorrow": 1}
# A relative day ("+5d") is counted in the zone of AimHarder's boxes, as prebookd's
# commands count it for a box in that zone: both name the same day at any hour.
BOX_ZONE = ZoneInfo("Europe/Madrid")


def parse_day(value: object, now: float) -> str:
    """A class's day as AimHarder writes it (YYYYMMDD) from `20261201`, `2026-12-01`,
    `today`, `tomorrow` or `+5d` (days after today in Europe/Madrid)."""
    text = str(value).strip().lower()
    today = datetime.fromtimestamp(now, BOX_ZONE).date()
    relative = _RELATIVE_DAY.match(text)
    if text in _NAMED_DAYS or relative:
        offset = _NAMED_DAYS[text] if text in _NAMED_DAYS else int(relative[1])  # type: ignore[index]
        return (today + timedelta(days=offset)).strftime("%Y%m%d")
    match = _DAY.match(text)
    if match:
        try:
            return date(int(match[1]), int(match[2]), int(match[3])).strftime("%Y%m%d")
        except ValueError:
            pass
    raise ValueError(f"not a day: {text[:40]!r} (use 20261201, 2026-12-01, today, tomorrow or +5d)")


def parse_opens_at(value: object, now: float) -> float:
    """Epoch seconds from `+5s`/`+1.5m`/`+250ms`/`-20m` (relative to `now`), an ISO
    time with offset, an aware datetime (TOML), or epoch seconds. ValueError says what
    is wrong."""
    if isinstance(value, bool):
        raise ValueError(f"not a time: {value!r}")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        text = value.strip()
        relative = _RELATIVE.match(text)
        if relative:
            sign = -1.0 if relative.group(1) == "-" else 1.0
            return now + sign * float(relative.group(2)) * _UNIT_SECONDS[relative.group(3) or "s"]
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(
                f"not a time: {text!r} (use +5s, or ISO like 2026-12-01T07:00:00+01:00)"
            ) from None
    else:
        raise ValueError(f"not a time: {value!r}")
    if moment.tzinfo is None:
        # A naive time is ambiguous between the box's zone and this machine's: refuse it.
        raise ValueError(f"time has no UTC offset: {value!s} (add one, e.g. +01:00)")
    return moment.timestamp()


def parse_box_clock(text: str) -> tuple[str, dict[str, float]]:
    """`SUBDOMAIN:OFFSET_MS[:DELAY_MS[:JITTER_MS]]` (e.g. `crossfitx:-300:20:5`) as the
    subdomain and BoxClock's fields; ValueError says what is wrong."""
    subdomain, *numbers = text.split(":")
    names = ("clock_offset_ms", "delay_ms", "jitter_ms")
    if not subdomain or not 1 <= len(numbers) <= len(names):
        raise ValueError("expected SUBDOMAIN:OFFSET_MS[:DELAY_MS[:JITTER_MS]]")
    try:
        values = [float(n) for n in numbers]
    except ValueError:
        raise ValueError(f"not numbers of ms: {':'.join(numbers)[:40]!r}") from None
    return subdomain, dict(zip(names, values, strict=False))


def with_times(entry: dict[str, Any], keys: tuple[str, ...], now: float) -> dict[str, Any]:
    """`entry` with its time fields (relative, ISO or epoch) as epoch seconds."""
    times = {k: parse_opens_at(entry[k], now) for k in keys if entry.get(k) is not None}
    return {**entry, **times}


class SettingsSection(BaseModel):
    """The [settings] of the file, and the flags of the same names."""

    model_config = ConfigDict(extra="forbid")

    capacity: int | None = Field(default=None, ge=0)
    waitlist: int | None = Field(default=None, ge=0)
    opens_at: float | None = None
    ad_hoc_classes: bool | None = None
    session_max_age: float | None = Field(default=None, gt=0)
    token_max_age: float | None = Field(default=None, gt=0)
    max_login_failures: int | None = Field(default=None, ge=1)
    login_lock_time: float | None = Field(default=None, ge=0)
    seed: int | None = None


# Flag / [settings] name -> Simulator keyword.
SETTING_KEYWORDS = {
    "capacity": "default_capacity",
    "waitlist": "default_waitlist_capacity",
    "opens_at": "default_opens_at",
    "ad_hoc_classes": "ad_hoc_classes",
    "session_max_age": "session_max_age",
    "token_max_age": "token_max_age",
    "max_login_failures": "max_login_failures",
    "login_lock_time": "login_lock_time",
    "seed": "seed",
}


class ConfigFile(BaseModel):
    """The file's top level; each entry is validated by its own model (control.py)."""

    model_config = ConfigDict(extra="forbid")

    settings: dict[str, Any] = {}
    boxes: list[dict[str, Any]] = []
    classes: list[dict[str, Any]] = []
    members: list[dict[str, Any]] = []
    faults: list[dict[str, Any]] = []
    balancer: dict[str, Any] = {}
