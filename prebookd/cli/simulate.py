"""`prebookd simulate`: run the AimHarder simulator as a process of its own.

For the demo, for benchmarks, and for trying the daemon without touching AimHarder.
Setup comes from flags and/or a config file; a running simulator can be changed and
read through its `/_sim/...` endpoints (see prebookd/simulator.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import signal
import time
import tomllib
from pathlib import Path
from typing import Any

import structlog
from pydantic import ValidationError

from prebookd.errors import UsageError
from prebookd.settings import Settings
from prebookd.sim.config import (
    SETTING_KEYWORDS,
    ConfigFile,
    SettingsSection,
    parse_box_clock,
    parse_opens_at,
    with_times,
)
from prebookd.sim.server import (
    BalancerSpec,
    BoxClock,
    BoxSpec,
    ClassSpec,
    FaultsSpec,
    MemberSpec,
    Simulator,
    apply_balancer,
    apply_box,
    apply_class,
    apply_faults,
    apply_member,
    one_line_error,
)

log = structlog.get_logger(__name__)

DESCRIPTION = """\
Serve a simulated AimHarder on one port. The account site is at the root, so
PREBOOKD_AIMHARDER_URL is http://HOST:PORT (POST /api/login, GET /setrefresh,
POST /api/tokenUpdate, GET /api/whoami, and the old HTML login at /login). Each box is
under its own path prefix, so a box's base URL (what goes in boxes.base_url) is
http://HOST:PORT/SUBDOMAIN (GET /api/bookings, POST /api/book, POST /api/cancelBook).
Booking a class id that was not configured is refused, as AimHarder does; with
--ad-hoc-classes it is created instead, with --capacity places and --waitlist waiting
places, opening at --opens-at.

A box's base URL itself answers GET and HEAD, with a Date header by the box's clock
(--box-clock) as every answer of the box has.

Control endpoints: GET /_sim/requests (every request, with the instant its first byte
arrived, by real time and by the box's clock, and any fault injected), GET
/_sim/bookings, GET /_sim/waitlists, POST /_sim/reset, and POST /_sim/boxes,
/_sim/classes, /_sim/members, /_sim/faults, /_sim/balancer (JSON bodies with the
fields of the config file's entries below, times and days in the same forms), and
/_sim/box_clock ({"box": SUBDOMAIN, "clock_offset_ms", "delay_ms", "jitter_ms"}: only
the box's clock, its other settings kept); GET
/_sim/balancer says what the load balancer is set to and how many idle connections it
closed (idle_closed), answered 408 (idle_408) or reset (idle_reset).
Flags override the config file's [settings]. Stops on SIGINT or SIGTERM.
"""

CONFIG_HELP_EPILOG = """\
config file (TOML when FILE ends in .toml, else JSON with the same keys):
  [settings]                 # each optional, same meaning as the flag of that name
  capacity = 20
  waitlist = 0
  session_max_age = 1800     # seconds
  token_max_age = 1800
  max_login_failures = 5
  login_lock_time = 900
  seed = 0
  opens_at = "+5s"
  ad_hoc_classes = false     # true: an unknown class id booked is created, not refused
  [[boxes]]
  subdomain = "crossfitx"
  box_id = "1234"            # optional, like name
  daily_limit = 2            # optional: bookings per member per day (bookState -8)
  late_cancel_window = 7200  # optional: seconds before starts_at when cancelling is late
  limit_shows_waitlist = false  # optional: the listing's limit as "16 (4)"
  day_as_text = false        # optional: the listing's day as "martes, 1 de diciembre"
  clock_offset_ms = -300     # optional: the box's clock minus real time (its Date
                             # header, when booking opens by it); default 0
  delay_ms = 20              # optional: one-way delay of requests and answers, each
  jitter_ms = 5              # plus up to this, drawn uniformly from the seed
  [[classes]]
  box = "crossfitx"
  session_id = "106015104"
  day = "20261201"           # or 2026-12-01, today, tomorrow, +5d (days in Europe/Madrid)
  time = "07:00 - 08:00"     # as the listing shows it (default 07:00 - 08:00)
  name = "WOD"               # the class's name in the listing (default WOD)
  capacity = 16              # default: --capacity
  waitlist_capacity = 4      # default: --waitlist
  opens_at = "+5s"           # or ISO time with offset, or epoch seconds; default: --opens-at
  starts_at = "+2h"          # optional, same formats
  limit_shows_waitlist = true  # optional: default the box's
  [[members]]
  email = "ana@example.com"
  auth_cookie = "COOKIE-VALUE"   # optional (default: random)
  token = "REFRESH-TOKEN"        # optional (default: refresh-COOKIE-VALUE)
  password = "secret"            # optional: lets the member log in
  issued_at = "-20m"             # optional: when cookie and token were issued (default: now)
  no_credits = false             # true: booking answers bookState -2
  user_id = 700001               # optional: userData.id (default: a counter)
  family_ids = ["5501"]          # optional: the familyId values this member may book with
  boxes = ["crossfitx"]          # optional: the boxes in login's roles (default: all)
  [[faults]]
  box = "crossfitx"
  latency = 0.05             # seconds; also jitter, and the fractions error_rate,
  error_rate = 0.1           # html_rate, reset_rate, truncated_rate, slow_body;
  forbidden = false          # slow_body_seconds; forbidden answers 403 to everything
  refusal_rate = 0.1         # {"errorMssg": refusal_message}, no bookState (book only)
  unlisted_rate = 0.1        # bookState -12 ERROR_RESERVA_NO_DISPONIBLE (book only)
  unauthorized_rate = 0.1    # also login_redirect_rate (302 to /login), throttled_rate
                             # (429); all the rates together at most 1
  clock_behind_ms = 300      # booking opens this long after opens_at
  not_open_code = "ERROR_ANTELACION_CLIENTE"  # or ERROR_ANTELACION_CLIENTE_HORAS,
                             # ERROR_RESERVA_NO_DISPONIBLE: the "not open yet" answer
  [balancer]                 # in front of every box and the account site
  idle_timeout = 60          # seconds a connection may sit idle, before its first
                             # request or between two (default: forever)
  idle_action = "408"        # then: "close" (FIN, the default), "408" (a 408 answer,
                             # then FIN) or "reset" (RST)
  connect_delay = 0.5        # seconds a new connection is left unread (the client's
                             # connect returns at once; its request waits); default 0

examples:
  prebookd simulate --port 8099 --box crossfitnorte:1234 --password jane@example.com=secret
  curl -s http://127.0.0.1:8099/_sim/classes -d '{"box": "crossfitnorte",
      "session_id": "106015104", "day": "+5d", "time": "07:00 - 08:00", "name": "WOD"}'
  prebookd simulate --config sim.toml --faults crossfitnorte:error_rate=0.1
  prebookd simulate --box crossfitnorte:1234 --box-clock crossfitnorte:-300:20:5
  curl -sI http://127.0.0.1:8099/crossfitnorte   # the box's Date, by its clock
"""


def _opens_at_arg(text: str) -> float:
    try:
        return parse_opens_at(text, time.time())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _pair_arg(what: str) -> Any:
    def parse(text: str) -> tuple[str, str]:
        key, sep, value = text.partition("=")
        if not sep or not key or not value:
            raise argparse.ArgumentTypeError(f"expected {what}")
        return key, value

    return parse


def _pairs(text: str) -> dict[str, str] | None:
    """`KEY=VALUE,KEY=VALUE` as a dict, None if it is not that."""
    pairs = [item.partition("=") for item in text.split(",")]
    if not all(k and s and v for k, s, v in pairs):
        return None
    return {k.strip(): v.strip() for k, _, v in pairs}


def _faults_arg(text: str) -> dict[str, str]:
    box, sep, rest = text.partition(":")
    pairs = _pairs(rest)
    if not sep or not box or pairs is None:
        raise argparse.ArgumentTypeError("expected SUBDOMAIN:KEY=VALUE[,KEY=VALUE...]")
    return {"box": box, **pairs}


def _balancer_arg(text: str) -> dict[str, str]:
    pairs = _pairs(text)
    if pairs is None:
        raise argparse.ArgumentTypeError("expected KEY=VALUE[,KEY=VALUE...]")
    return pairs


def add_simulate_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "simulate",
        help="serve a simulated AimHarder (tests, demo, benchmarks)",
        description=DESCRIPTION,
        epilog=CONFIG_HELP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to listen on (%(default)s)")
    add("--port", type=int, default=8099, help="port to listen on, 0 for any (%(default)s)")
    add("--config", type=Path, metavar="FILE", help="settings, boxes, classes, members, faults")
    add(
        "--box",
        action="append",
        default=[],
        metavar="SUBDOMAIN[:BOX_ID]",
        help="serve this box, with AimHarder's numeric id for it if given (login lists "
        "it among the member's boxes); repeatable",
    )
    # Setting flags default to None so that the config file's [settings] apply unless a
    # flag is given; the defaults in the help are Simulator's.
    add(
        "--capacity",
        type=int,
        metavar="N",
        help="places of classes created on the fly or configured without capacity (20)",
    )
    add(
        "--waitlist",
        type=int,
        metavar="N",
        help="waiting-list places of classes created on the fly or configured without (0)",
    )
    add(
        "--opens-at",
        type=_opens_at_arg,
        metavar="TIME",
        help="when booking opens for classes created on the fly or configured without "
        "opens_at: ISO time with offset (2026-12-01T07:00:00+01:00) or relative to "
        "start (+5s, +2m, +250ms); default: already open",
    )
    add(
        "--ad-hoc-classes",
        action="store_true",
        default=None,
        help="create a class booked by an unknown id, with the defaults above, instead "
        "of refusing it as AimHarder does",
    )
    add(
        "--session-max-age",
        type=float,
        metavar="SECONDS",
        help='an amhrdrauth cookie older than this gets {"logout": 1} (default: never)',
    )
    add(
        "--token-max-age",
        type=float,
        metavar="SECONDS",
        help="a refresh token older than this cannot be refreshed (default: never)",
    )
    add(
        "--max-login-failures",
        type=int,
        metavar="N",
        help="failed logins in a row that lock an account (5)",
    )
    add(
        "--login-lock-time",
        type=float,
        metavar="SECONDS",
        help="how long a locked account refuses logins (900)",
    )
    add("--seed", type=int, metavar="N", help="seed of the fault draws (0)")
    add(
        "--member",
        action="append",
        default=[],
        type=_pair_arg("EMAIL=COOKIE"),
        metavar="EMAIL=COOKIE",
        help="a member and the value of their amhrdrauth cookie (repeatable)",
    )
    add(
        "--password",
        action="append",
        default=[],
        type=_pair_arg("EMAIL=PASSWORD"),
        metavar="EMAIL=PASSWORD",
        help="let this member log in (a new e-mail is a new member; repeatable)",
    )
    add(
        "--faults",
        action="append",
        default=[],
        type=_faults_arg,
        metavar="SUBDOMAIN:KEY=VALUE,...",
        help="inject faults on a box, e.g. crossfitx:error_rate=0.1,latency=0.05 "
        "(keys as in the config file's [[faults]]; repeatable)",
    )
    add(
        "--box-clock",
        action="append",
        default=[],
        metavar="SUBDOMAIN:OFFSET_MS[:DELAY_MS[:JITTER_MS]]",
        help="the box's clock runs OFFSET_MS ahead of real time (negative: behind), and "
        "requests and answers each take DELAY_MS plus up to JITTER_MS on the way, e.g. "
        "crossfitx:-300:20:5; DELAY_MS and JITTER_MS left out are 0 (as the config file's "
        "[[boxes]] clock_offset_ms, delay_ms, jitter_ms, which this overrides; repeatable)",
    )
    add(
        "--balancer",
        type=_balancer_arg,
        metavar="KEY=VALUE,...",
        help="what the load balancer in front of every box does to idle connections, "
        "e.g. idle_timeout=60,idle_action=408 (keys as in the config file's [balancer], "
        "which these override)",
    )
    parser.set_defaults(handler=simulate)


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
        raise UsageError(
            f"config file {path}: expected an object with "
            "settings/boxes/classes/members/faults/balancer"
        )
    return data


def build_simulator(args: argparse.Namespace, now: float) -> Simulator:
    """A simulator set up from the flags and the config file; UsageError on bad input."""
    data = read_config(args.config) if args.config else {}
    source = f"config file {args.config}" if args.config else "arguments"
    where = source
    try:
        config = ConfigFile.model_validate(data)
        where = f"{source}: settings"
        section = SettingsSection.model_validate(with_times(config.settings, ("opens_at",), now))
        where = "arguments"  # flags win over the config file, within the same bounds
        flags = {name: getattr(args, name) for name in SETTING_KEYWORDS}
        chosen = SettingsSection.model_validate(
            {
                **section.model_dump(exclude_none=True),
                **{k: v for k, v in flags.items() if v is not None},
            }
        )
        sim = Simulator(
            **{SETTING_KEYWORDS[k]: v for k, v in chosen.model_dump(exclude_none=True).items()}
        )
        where = f"{source}: balancer"
        balancer = BalancerSpec.model_validate(config.balancer)
        if args.balancer:
            where = "--balancer"
            balancer = BalancerSpec.model_validate({**config.balancer, **args.balancer})
        apply_balancer(sim, balancer)
        for box in args.box:
            where = f"--box {box}"
            subdomain, _, box_id = box.partition(":")
            if not subdomain or (box_id and not box_id.isdigit()):
                raise ValueError("expected SUBDOMAIN or SUBDOMAIN:BOX_ID (a number)")
            sim.add_box(subdomain, box_id)
        for i, entry in enumerate(config.boxes):
            where = f"{source}: boxes[{i}]"
            apply_box(sim, BoxSpec.model_validate(entry))
        for text in args.box_clock:
            where = f"--box-clock {text}"
            subdomain, clock = parse_box_clock(text)
            sim.set_box_clock(subdomain, BoxClock(**clock))
        for i, entry in enumerate(config.classes):
            where = f"{source}: classes[{i}]"
            spec = ClassSpec.model_validate(with_times(entry, ("opens_at", "starts_at"), now))
            if spec.box not in sim.boxes:
                raise ValueError(f"unknown box {spec.box!r}: list it in boxes or pass --box")
            apply_class(sim, spec)
        for i, entry in enumerate(config.members):
            where = f"{source}: members[{i}]"
            apply_member(sim, MemberSpec.model_validate(with_times(entry, ("issued_at",), now)))
        where = "--member"
        for email, cookie in args.member:
            sim.add_member(email, cookie)
        where = "--password"
        for email, password in args.password:
            member = sim.member(email)
            if member is None:
                sim.add_member(email, secrets.token_hex(24), password=password)
            else:  # not add_member: that would also hand the member another cookie
                member.password = password
        for i, entry in enumerate(config.faults):
            where = f"{source}: faults[{i}]"
            apply_faults(sim, FaultsSpec.model_validate(entry))
        for entry in args.faults:
            where = f"--faults {entry['box']}"
            apply_faults(sim, FaultsSpec.model_validate(entry))
    except (ValidationError, ValueError, KeyError, TypeError) as exc:
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
