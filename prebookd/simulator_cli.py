"""`prebookd simulate`: run the AimHarder simulator as a process of its own.

For the demo, for benchmarks, and for trying the daemon without touching AimHarder.
Setup comes from flags and/or a config file; a running simulator can be changed and
read through its `/_sim/...` endpoints (see prebookd/simulator.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import time
import tomllib
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict, ValidationError

from prebookd.errors import UsageError
from prebookd.settings import Settings
from prebookd.simulator import (
    BoxSpec,
    ClassSpec,
    MemberSpec,
    Simulator,
    apply_box,
    apply_class,
    apply_member,
    one_line_error,
)

log = structlog.get_logger(__name__)

DESCRIPTION = """\
Serve a simulated AimHarder on one port: each box under its own path prefix, so a
box's base URL (what goes in boxes.base_url) is http://HOST:PORT/SUBDOMAIN and it
books at POST http://HOST:PORT/SUBDOMAIN/api/book. Any class id booked that was not
configured is created with --capacity places, opening at --opens-at.

Control endpoints: GET /_sim/requests (every request, with the instant its first byte
arrived), GET /_sim/bookings, POST /_sim/reset, and POST /_sim/boxes, /_sim/classes,
/_sim/members (JSON bodies with the fields of the config file's entries).
Stops on SIGINT or SIGTERM.
"""

CONFIG_HELP_EPILOG = """\
config file (TOML when FILE ends in .toml, else JSON with the same keys):
  [[boxes]]
  subdomain = "crossfitx"
  box_id = "1234"            # optional, like name
  [[classes]]
  box = "crossfitx"
  session_id = "106015104"
  day = "20261201"
  capacity = 16              # default: --capacity
  opens_at = "+5s"           # or ISO time with offset, or epoch seconds; default: --opens-at
  [[members]]
  email = "ana@example.com"
  auth_cookie = "COOKIE-VALUE"
"""

_RELATIVE = re.compile(r"^\+(\d+(?:\.\d+)?)(ms|s|m|h)?$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_opens_at(value: object, now: float) -> float:
    """Epoch seconds from `+5s`/`+1.5m`/`+250ms` (relative to `now`), an ISO time with
    offset, an aware datetime (TOML), or epoch seconds. ValueError says what is wrong."""
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
            return now + float(relative.group(1)) * _UNIT_SECONDS[relative.group(2) or "s"]
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


def _opens_at_arg(text: str) -> float:
    try:
        return parse_opens_at(text, time.time())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _member_arg(text: str) -> tuple[str, str]:
    email, sep, cookie = text.partition("=")
    if not sep or not email or not cookie:
        raise argparse.ArgumentTypeError("expected EMAIL=COOKIE")
    return email, cookie


def add_simulate_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "simulate",
        help="serve a simulated AimHarder (tests, demo, benchmarks)",
        description=DESCRIPTION,
        epilog=CONFIG_HELP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (%(default)s)")
    parser.add_argument(
        "--port", type=int, default=8099, help="port to listen on, 0 for any (%(default)s)"
    )
    parser.add_argument(
        "--config", type=Path, metavar="FILE", help="boxes, classes and members (JSON or TOML)"
    )
    parser.add_argument(
        "--box",
        action="append",
        default=[],
        metavar="SUBDOMAIN",
        help="serve this box (repeatable)",
    )
    parser.add_argument(
        "--capacity",
        type=int,
        default=20,
        metavar="N",
        help="places of classes created on the fly or configured without capacity (%(default)s)",
    )
    parser.add_argument(
        "--opens-at",
        type=_opens_at_arg,
        default=0.0,
        metavar="TIME",
        help="when booking opens for classes created on the fly or configured without "
        "opens_at: ISO time with offset (2026-12-01T07:00:00+01:00) or relative to "
        "start (+5s, +2m, +250ms); default: already open",
    )
    parser.add_argument(
        "--member",
        action="append",
        default=[],
        type=_member_arg,
        metavar="EMAIL=COOKIE",
        help="a member and the value of their amhrdrauth cookie (repeatable)",
    )
    parser.set_defaults(handler=simulate)


class _ConfigFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    boxes: list[dict[str, Any]] = []
    classes: list[dict[str, Any]] = []
    members: list[dict[str, Any]] = []


def read_config(path: Path) -> dict[str, Any]:
    """The config file as a dict; any problem is a one-line UsageError."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        if path.suffix.lower() == ".toml":
            data: Any = tomllib.loads(raw.decode("utf-8"))
        else:
            data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:  # JSON and TOML errors are ValueErrors
        raise UsageError(f"config file {path} is not valid: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"config file {path}: expected an object with boxes/classes/members")
    return data


def build_simulator(args: argparse.Namespace, now: float) -> Simulator:
    """A simulator set up from the flags and the config file; UsageError on bad input."""
    sim = Simulator(default_capacity=args.capacity, default_opens_at=args.opens_at)
    data = read_config(args.config) if args.config else {}
    source = f"config file {args.config}" if args.config else "arguments"
    where = source
    try:
        for subdomain in args.box:
            where = f"--box {subdomain}"
            sim.add_box(subdomain)
        where = source
        config = _ConfigFile.model_validate(data)
        for i, entry in enumerate(config.boxes):
            where = f"{source}: boxes[{i}]"
            apply_box(sim, BoxSpec.model_validate(entry))
        for i, entry in enumerate(config.classes):
            where = f"{source}: classes[{i}]"
            if entry.get("opens_at") is not None:
                entry = {**entry, "opens_at": parse_opens_at(entry["opens_at"], now)}
            spec = ClassSpec.model_validate(entry)
            if spec.box not in sim.boxes:
                raise ValueError(f"unknown box {spec.box!r}: list it in boxes or pass --box")
            apply_class(sim, spec)
        for i, entry in enumerate(config.members):
            where = f"{source}: members[{i}]"
            apply_member(sim, MemberSpec.model_validate(entry))
        for email, cookie in args.member:
            sim.add_member(email, cookie)
    except (ValidationError, ValueError, KeyError) as exc:
        raise UsageError(f"{where}: {one_line_error(exc)}") from None
    return sim


async def simulate(args: argparse.Namespace, settings: Settings) -> int:
    del settings  # the simulator needs none of the daemon's settings
    sim = build_simulator(args, time.time())
    try:
        base = await sim.start(args.host, args.port)
    except OSError as exc:
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {exc}") from None

    # Signal handlers only set the event; the code below does the stopping.
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, _on_signal, signum, stop)
    try:
        log.info(
            "simulator_listening",
            url=base,
            boxes={subdomain: sim.box_url(subdomain) for subdomain in sim.boxes},
            members=len(sim.members),
        )
        await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await sim.stop()
    log.info("simulator_stopped", requests=len(sim.requests))
    return 0


def _on_signal(signum: signal.Signals, stop: asyncio.Event) -> None:
    log.info("simulator_stopping", signal=signum.name)
    stop.set()
