"""The `rule` and `away` commands: recurring bookings ("Mon/Wed/Fri, 07:00 WOD") and
the days a member is away. The daemon's planner (`prebookd.daemon.planner`) turns
rules into prebookings; these commands only store them, and withdraw at once the
pending rows a pause, a removal or a new day away makes pointless (the planner would
too, on its next round). The SQL lives in `prebookd.db.rules_store`.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any

from prebookd import timeparse
from prebookd.cli.common import (
    box_zone,
    database,
    known_box,
    parse_email,
    parse_subdomain,
    parse_token,
    print_json,
    print_table,
    whole_number,
)
from prebookd.daemon.plan import format_weekdays, parse_weekdays
from prebookd.db import admin_store, rules_store
from prebookd.errors import UsageError
from prebookd.settings import Settings

MAX_ID = 2**63 - 1

PLANNER_TEXT = """\
The planner inside `prebookd run` makes each rule's prebookings: for every matching day
whose booking window opens within PREBOOKD_PLAN_HORIZON (8 days), it finds the class in
the day's listing (names compared without case, accents or extra spaces) and stores the
row, once. Days away (`prebookd away add`) are skipped.
"""
AWAY_TEXT = """\
Days are class days, both included. Pending prebookings rules made inside them are
cancelled at once; prebookings added by hand are left alone.
"""
ID_ACTIONS = (
    (
        "pause",
        "pause a rule: its pending prebookings are cancelled",
        "prebookd list --rule 3 --all",
    ),
    ("resume", "resume a rule: the planner plans its days again", "prebookd rule list"),
    ("remove", "remove a rule: its pending prebookings are cancelled", "prebookd rule list"),
)


def _examples(*lines: str, text: str = "") -> str:
    body = "".join(f"  {line}\n" for line in lines)
    return f"{text}\nexamples:\n{body}" if text else f"examples:\n{body}"


def add_rules_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rule = commands.add_parser(
        "rule",
        help="book a class every week, by rule",
        description="Recurring prebookings: on these weekdays, this class.",
        epilog=_examples(
            "prebookd rule add --email jane@example.com --box crossfitnorte --days mon,wed,fri \\",
            "    --class '07:00 WOD'",
            "prebookd rule list",
            "prebookd list --rule 3",
            text=PLANNER_TEXT,
        ),
    )
    actions = rule.add_subparsers(dest="rule_command", metavar="ACTION", required=True)
    add = actions.add_parser(
        "add",
        help="add a rule",
        description="Add a rule: on these weekdays, book this class for this member.",
        epilog=_examples(
            "prebookd rule add --email jane@example.com --box crossfitnorte --days mon,wed,fri \\",
            "    --class '07:00 WOD'",
            "prebookd rule add --email jane@example.com --box crossfitnorte --days tue \\",
            "    --class '19:00 Open' --waitlist --alt '20:00 Open'",
            text=PLANNER_TEXT,
        ),
    )
    add.add_argument("--email", required=True, help="the member's AimHarder e-mail")
    add.add_argument("--box", required=True, metavar="SUBDOMAIN", help="the box")
    add.add_argument("--days", required=True, help="weekdays, e.g. mon,wed,fri")
    add.add_argument(
        "--class", dest="class_name", required=True, metavar="'HH:MM NAME'", help="e.g. '07:00 WOD'"
    )
    add.add_argument("--family-id", default="", help="family member id (default: none)")
    add.add_argument(
        "--waitlist", action="store_true", help="join the waiting list when the class is full"
    )
    add.add_argument(
        "--watch",
        action="store_true",
        help="when the class is full at the instant, watch it and book a place that frees",
    )
    add.add_argument(
        "--alt",
        action="append",
        default=[],
        metavar="'HH:MM NAME'",
        help="a backup class the same day, tried at the instant if the class is full; repeatable",
    )
    add.set_defaults(handler=_rule_add)
    listing = actions.add_parser(
        "list",
        help="list rules",
        description="List rules, with their pending prebookings and the next day planned.",
        epilog=_examples(
            "prebookd rule list", "prebookd rule list --email jane@example.com --json"
        ),
    )
    listing.add_argument("--email", help="only this member's rules")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=_rule_list)
    handlers = {"pause": _rule_pause, "resume": _rule_resume, "remove": _rule_remove}
    for name, text, other in ID_ACTIONS:
        action = actions.add_parser(
            name,
            help=text,
            description=text[0].upper() + text[1:] + ".",
            epilog=_examples(f"prebookd rule {name} 3", other),
        )
        action.add_argument("id", type=whole_number(1, MAX_ID), metavar="ID")
        action.set_defaults(handler=handlers[name])

    away = commands.add_parser(
        "away",
        help="days away: no rule books inside them",
        description="Days a member is away: no rule books a class inside them.",
        epilog=_examples(
            "prebookd away add --email jane@example.com --from 2026-12-20 --to 2027-01-06",
            "prebookd away list",
            text=AWAY_TEXT,
        ),
    )
    away_actions = away.add_subparsers(dest="away_command", metavar="ACTION", required=True)
    away_add = away_actions.add_parser(
        "add",
        help="add days away",
        description="Add days away for a member, at one box or all.",
        epilog=_examples(
            "prebookd away add --email jane@example.com --from 2026-12-20 --to 2027-01-06",
            "prebookd away add --email jane@example.com --from 20261224 --to 20261224 \\",
            "    --box crossfitnorte",
            text=AWAY_TEXT,
        ),
    )
    away_add.add_argument("--email", required=True, help="the member's AimHarder e-mail")
    away_add.add_argument(
        "--from", dest="first", required=True, help="first day: YYYY-MM-DD, YYYYMMDD"
    )
    away_add.add_argument("--to", dest="last", required=True, help="last day (included)")
    away_add.add_argument("--box", metavar="SUBDOMAIN", help="only this box (default: all)")
    away_add.set_defaults(handler=_away_add)
    away_list = away_actions.add_parser(
        "list",
        help="list days away",
        description="List days away.",
        epilog=_examples("prebookd away list", "prebookd away list --json"),
    )
    away_list.add_argument("--json", action="store_true", help="print JSON")
    away_list.set_defaults(handler=_away_list)
    away_remove = away_actions.add_parser(
        "remove",
        help="remove days away",
        description="Remove days away: the planner plans those days again.",
        epilog=_examples("prebookd away remove 2", "prebookd away list"),
    )
    away_remove.add_argument("id", type=whole_number(1, MAX_ID), metavar="ID")
    away_remove.set_defaults(handler=_away_remove)


def _parse_class(text: str, option: str = "--class") -> tuple[Any, str]:
    words = text.split()
    if len(words) < 2:
        raise UsageError(f"malformed {option} {text!r}: expected 'HH:MM NAME', e.g. '07:00 WOD'")
    return timeparse.parse_clock(words[0]), " ".join(words[1:])


async def _rule_add(args: argparse.Namespace, settings: Settings) -> int:
    email = parse_email(args.email)
    subdomain = parse_subdomain(args.box)
    weekdays = parse_weekdays(args.days)
    start, name = _parse_class(args.class_name)
    alternatives = []
    for alt in args.alt:
        alt_start, alt_name = _parse_class(alt, "--alt")
        alternatives.append(f"{alt_start:%H:%M} {alt_name}")
    family_id = parse_token("family id", args.family_id) if args.family_id.strip() else ""
    async with database(settings) as conn:
        box = await known_box(conn, subdomain)
        box_zone(box)  # a box whose zone is unusable is refused now, not at planning
        window = timeparse.window_from_columns(box.booking_window_kind, box.booking_window_length)
        new_id = await rules_store.insert_rule(
            conn,
            user_email=email,
            box=box.id,
            weekdays=sorted(weekdays),
            class_time=start,
            class_name=name,
            family_id=family_id,
            insist=1 if args.waitlist else 0,
            alternatives=alternatives,
            watch=args.watch,
        )
        has_session = await admin_store.has_background_session(conn, email)
    print(new_id)
    print(
        f"rule {new_id}: {email} at {subdomain}, {format_weekdays(weekdays)} {start:%H:%M} "
        f"{name}{' (waiting list)' if args.waitlist else ''}; the daemon plans each day "
        f"whose booking opens within {settings.plan_horizon / 86400:g} days",
        file=sys.stderr,
    )
    if not has_session:
        print(
            f"warning: {email} has no background session yet: the daemon cannot read the "
            f"day's classes, nor book, until one is stored (`prebookd login --email {email}`)",
            file=sys.stderr,
        )
    if window is None:
        print(
            f"warning: box {subdomain} has no booking window: nothing is planned until one is "
            f"set (`prebookd box set-window {subdomain} 4d`)",
            file=sys.stderr,
        )
    return 0


async def _rule_list(args: argparse.Namespace, settings: Settings) -> int:
    async with database(settings) as conn:
        email = parse_email(args.email) if args.email else None
        rules = await rules_store.list_rules(conn, user_email=email)
    if args.json:
        print_json([_rule_json(r) for r in rules])
    elif not rules:
        print("no rules")
    else:
        print_table(
            ("ID", "EMAIL", "BOX", "DAYS", "CLASS", "WAITLIST", "ACTIVE", "PENDING", "NEXT DAY"),
            [
                (
                    r.id,
                    r.user_email,
                    r.subdomain,
                    format_weekdays(r.weekdays),
                    f"{r.class_time:%H:%M} {r.class_name}",
                    "yes" if r.insist else "",
                    "yes" if r.active else "paused",
                    r.pending,
                    r.next_day.isoformat() if r.next_day else "",
                )
                for r in rules
            ],
        )
    return 0


def _rule_json(rule: rules_store.RuleView) -> dict[str, Any]:
    return {
        "id": rule.id,
        "email": rule.user_email,
        "box": rule.subdomain,
        "days": format_weekdays(rule.weekdays),
        "class_time": f"{rule.class_time:%H:%M}",
        "class_name": rule.class_name,
        "family_id": rule.family_id,
        "waitlist": bool(rule.insist),
        "alternatives": rule.alternatives,
        "active": rule.active,
        "pending": rule.pending,
        "next_day": rule.next_day.isoformat() if rule.next_day else None,
    }


async def _rule_pause(args: argparse.Namespace, settings: Settings) -> int:
    async with database(settings) as conn, conn.transaction():
        if not await rules_store.set_rule_active(conn, args.id, False):
            raise UsageError(f"unknown rule {args.id}: see `prebookd rule list`")
        cancelled = await rules_store.withdraw_rule_rows(conn, args.id, f"rule {args.id} paused")
    print(f"paused rule {args.id}; cancelled {cancelled} pending prebooking(s)")
    return 0


async def _rule_resume(args: argparse.Namespace, settings: Settings) -> int:
    async with database(settings) as conn:
        if not await rules_store.set_rule_active(conn, args.id, True):
            raise UsageError(f"unknown rule {args.id}: see `prebookd rule list`")
    print(f"resumed rule {args.id}; the daemon plans its days on its next round")
    return 0


async def _rule_remove(args: argparse.Namespace, settings: Settings) -> int:
    async with database(settings) as conn, conn.transaction():
        cancelled = await rules_store.withdraw_rule_rows(conn, args.id, f"rule {args.id} removed")
        if not await rules_store.delete_rule(conn, args.id):
            raise UsageError(f"unknown rule {args.id}: see `prebookd rule list`")
    print(f"removed rule {args.id}; cancelled {cancelled} pending prebooking(s)")
    return 0


async def _away_add(args: argparse.Namespace, settings: Settings) -> int:
    email = parse_email(args.email)
    subdomain = parse_subdomain(args.box) if args.box is not None else None
    today = datetime.now(UTC).date()
    first = timeparse.parse_day(args.first, today=today)
    last = timeparse.parse_day(args.last, today=today)
    if last < first:
        raise UsageError(f"--to {args.last!r} is before --from {args.first!r}")
    async with database(settings) as conn, conn.transaction():
        box = (await known_box(conn, subdomain)).id if subdomain is not None else None
        new_id = await rules_store.insert_away(
            conn, user_email=email, box=box, first_day=first, last_day=last
        )
        cancelled = await rules_store.withdraw_away_rows(
            conn, user_email=email, box=box, first_day=first, last_day=last
        )
    print(new_id)
    print(
        f"away {new_id}: {email}, {first.isoformat()} to {last.isoformat()} at "
        f"{subdomain or 'every box'}; cancelled {cancelled} pending prebooking(s) made by rules",
        file=sys.stderr,
    )
    return 0


async def _away_list(args: argparse.Namespace, settings: Settings) -> int:
    async with database(settings) as conn:
        aways = await rules_store.list_away(conn)
    if args.json:
        print_json(
            [
                {
                    "id": a.id,
                    "email": a.user_email,
                    "box": a.subdomain,
                    "from": a.first_day.isoformat(),
                    "to": a.last_day.isoformat(),
                }
                for a in aways
            ]
        )
    elif not aways:
        print("no days away")
    else:
        print_table(
            ("ID", "EMAIL", "BOX", "FROM", "TO"),
            [(a.id, a.user_email, a.subdomain or "(all)", a.first_day, a.last_day) for a in aways],
        )
    return 0


async def _away_remove(args: argparse.Namespace, settings: Settings) -> int:
    async with database(settings) as conn:
        if not await rules_store.delete_away(conn, args.id):
            raise UsageError(f"unknown days away {args.id}: see `prebookd away list`")
    print(f"removed days away {args.id}; the daemon plans those days again on its next round")
    return 0


def planner_lines(planner: Any, now: datetime) -> list[str]:
    """`prebookd status`'s lines on the planner: rules, next planned day, last round."""
    if not isinstance(planner, dict):
        return []
    last = timeparse.read_iso(planner.get("last_round_at"))
    ago = f"{int((now - last).total_seconds())} s ago" if last else "not yet"
    lines = [
        f"  rules      {planner.get('rules_active', 0)} active, next planned day "
        f"{planner.get('next_planned_day') or 'none'}, last planning round {ago}"
    ]
    errors = planner.get("last_errors") or []
    lines += [f"  {'':<10} ! {error}" for error in errors if isinstance(error, str)]
    return lines
