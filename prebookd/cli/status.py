"""`prebookd status`: ask the running daemon what it holds, over its status endpoint.

It reads the same settings as the daemon (PREBOOKD_STATUS_HOST/PORT from the
environment or the EnvironmentFile an operator sources), so on the VPS
`prebookd status` needs no flags.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from typing import Any

import aiohttp

from prebookd.cli.rules import planner_lines
from prebookd.errors import PrebookdError
from prebookd.notify.report import status_line as notify_status_line
from prebookd.settings import Settings
from prebookd.text import one_line
from prebookd.timeparse import read_iso

TIMEOUT = 5.0

DESCRIPTION = """\
Print what the running daemon holds: rows armed, the next opening instants, the last
firings (lateness, outcomes), sessions kept, and pool use. Asks the daemon's status
endpoint at PREBOOKD_STATUS_HOST:PREBOOKD_STATUS_PORT (default 127.0.0.1:8791).
Exit code 1 when no daemon answers there.
"""

EPILOG = """\
examples:
  prebookd status
  prebookd status --json | jq '.last_firings[0]'
  PREBOOKD_STATUS_PORT=8792 prebookd status      # a daemon listening on another port
"""


def add_status_parser(commands: Any) -> None:
    status = commands.add_parser(
        "status",
        help="show what the running daemon holds",
        description=DESCRIPTION,
        epilog=EPILOG,
    )
    status.add_argument("--json", action="store_true", help="print the daemon's JSON as it is")
    status.set_defaults(handler=_status)


async def _status(args: argparse.Namespace, settings: Settings) -> int:
    snapshot = await fetch_status(settings.status_host, settings.status_port)
    if args.json:
        print(json.dumps(snapshot, indent=2))
    else:
        print(format_status(snapshot, now=dt.datetime.now(dt.UTC)))
    return 0


async def fetch_status(host: str, port: int) -> dict[str, Any]:
    if port == 0:
        raise PrebookdError(
            "the status endpoint is off (PREBOOKD_STATUS_PORT=0): set a port and restart "
            "prebookd to use `prebookd status`"
        )
    address = f"{_connect_host(host)}:{port}"
    url = f"http://{address}/status"
    try:
        timeout = aiohttp.ClientTimeout(total=TIMEOUT)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(url) as response,
        ):
            if response.status != 200:
                text = one_line(await response.text(), 200)
                raise PrebookdError(
                    f"prebookd on {address} answered HTTP {response.status}: {text}"
                )
            payload = await response.json(content_type=None)
    except (aiohttp.ClientConnectionError, TimeoutError) as exc:
        raise PrebookdError(
            f"no prebookd answering on {address}: is it running? (PREBOOKD_STATUS_PORT)"
        ) from exc
    except (aiohttp.ContentTypeError, ValueError) as exc:
        raise PrebookdError(f"{address} answered something that is not prebookd's status") from exc
    if not isinstance(payload, dict):
        raise PrebookdError(f"{address} answered something that is not prebookd's status")
    return payload


def _connect_host(host: str) -> str:
    # A daemon bound to every address is reached on loopback; IPv6 needs brackets.
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def format_status(snapshot: dict[str, Any], *, now: dt.datetime) -> str:
    """The snapshot as a few aligned lines, for a person at a terminal."""
    lines = []
    started = read_iso(snapshot.get("started_at"))
    up = f", up {_duration((now - started).total_seconds())}" if started else ""
    lines.append(f"prebookd {snapshot.get('instance', '?')}{up}")
    connected = "connected" if snapshot.get("listener_connected") else "NOT CONNECTED"
    reconnects = snapshot.get("listener_reconnects", 0)
    lines.append(f"  listener   {connected} (reconnects: {reconnects})")
    lines.append(f"  armed      {snapshot.get('armed', 0)} rows")

    upcoming = snapshot.get("next_instants") or []
    if not upcoming:
        lines.append("  next       none")
    for index, item in enumerate(upcoming):
        label = "next" if index == 0 else ""
        moment = read_iso(item.get("instant"))
        when = _when(moment, now) if moment else str(item.get("instant"))
        lines.append(f"  {label:<10} {when}  {item.get('rows', '?')} rows")

    firings = snapshot.get("last_firings") or []
    if not firings:
        lines.append("  fired      nothing yet")
    for index, firing in enumerate(firings):
        label = "fired" if index == 0 else ""
        moment = read_iso(firing.get("instant"))
        when = _when(moment, now) if moment else str(firing.get("instant"))
        order = "FIFO" if firing.get("fifo") else "NOT FIFO"
        lateness = (
            f"lateness p50 {_ms(firing.get('lateness_p50_ms'))}, "
            f"max {_ms(firing.get('lateness_max_ms'))}"
        )
        outcomes = firing.get("outcomes") or {}
        counted = ", ".join(f"{code} {n}" for code, n in sorted(outcomes.items())) or "-"
        lines.append(
            f"  {label:<10} {when}  {firing.get('count', '?')} requests, {order}, "
            f"{lateness}; {counted}"
        )

    lines.extend(box_clock_lines(snapshot.get("box_clocks")))
    lines.append(f"  sessions   {snapshot.get('sessions_kept', 0)} kept alive")
    lines.extend(planner_lines(snapshot.get("planner"), now))
    db_pool = snapshot.get("db_pool") or {}
    lines.append(
        f"  db pool    {db_pool.get('size', '?')} open of {db_pool.get('max', '?')}, "
        f"{db_pool.get('idle', '?')} idle (plus the LISTEN connection)"
    )
    http_pool = snapshot.get("http_pool") or {}
    lines.append(
        f"  http pool  {http_pool.get('in_use', '?')} in use of {http_pool.get('limit', '?')}"
    )
    lines.append(
        f"  results    {snapshot.get('results_backlog', 0)} waiting to be written, "
        f"{snapshot.get('spooled', 0)} spooled"
    )
    if (notify_line := notify_status_line(snapshot)) is not None:  # issue 15
        lines.append(notify_line)
    return "\n".join(lines)


def box_clock_lines(clocks: Any) -> list[str]:
    """Each box's clock as measured from its Date header (issue 18), and the aim."""
    if not isinstance(clocks, dict):
        return []
    boxes = clocks.get("boxes") or {}
    lines = [f"  aim        {clocks.get('aim', '?')}" + ("" if boxes else ", no box measured yet")]
    for box, shown in sorted(boxes.items()):
        if "reason" in shown:
            lines.append(f"  {'':<10} {box}: aimed at our clock: {shown['reason']}")
            continue
        lines.append(
            f"  {'':<10} {box}: clock {shown.get('offset_ms', 0):+.1f} ms "
            f"(±{shown.get('bound_ms', 0):.1f}), trip {shown.get('trip_ms', 0):.1f} ms, "
            f"measured {shown.get('age_s', '?')} s ago"
        )
    return lines


def _when(moment: dt.datetime, now: dt.datetime) -> str:
    # Shown in UTC like the rows' available_at in the logs; the offset says when.
    stamp = moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"
    delta = (moment - now).total_seconds()
    relative = f"in {_duration(delta)}" if delta >= 0 else f"{_duration(-delta)} ago"
    return f"{stamp} ({relative})"


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def _ms(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:.2f} ms"
    return "-"
