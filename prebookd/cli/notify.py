"""The `notify` commands: a member's notification channels (apprise URLs).

`notify add` refuses a URL apprise cannot parse, in one line that does not repeat it
(it holds a token); `notify list` shows URLs masked; `notify test` sends one message to
each of a member's channels now and prints what each answered.
"""

from __future__ import annotations

import argparse
import asyncio

from prebookd.cli.common import database, parse_email, print_json, print_table
from prebookd.db import notify_store
from prebookd.errors import UsageError
from prebookd.notify import channels
from prebookd.notify.messages import render
from prebookd.notify.workers import Workers
from prebookd.settings import Settings


def add_notify_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    notify = commands.add_parser(
        "notify",
        help="members' notification channels (apprise URLs)",
        description="Members' notification channels: one apprise URL each (tgram://, "
        "ntfy://, mailto://, json://, discord://, ...), told of each booking's outcome "
        "and of early warnings.",
    )
    actions = notify.add_subparsers(dest="notify_command", metavar="ACTION", required=True)
    add = actions.add_parser(
        "add",
        help="add a channel",
        description="Add a channel for a member. The URL is checked by apprise first.",
    )
    add.add_argument("--email", required=True, help="the member's e-mail")
    add.add_argument("--url", required=True, help="an apprise URL, e.g. ntfy://host/topic")
    add.add_argument(
        "--events",
        default="outcome,warning",
        help="what to send there: outcome, warning or both (default: outcome,warning)",
    )
    add.add_argument("--lang", choices=channels.LANGS, default="es", help="default: es")
    add.set_defaults(handler=_add)
    listing = actions.add_parser(
        "list", help="list channels (URLs masked)", description="List channels, URLs masked."
    )
    listing.add_argument("--email", help="only this member's")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=_list)
    remove = actions.add_parser("remove", help="remove a channel", description="Remove one.")
    remove.add_argument("id", metavar="ID", type=int, help="as `notify list` shows it")
    remove.set_defaults(handler=_remove)
    test = actions.add_parser(
        "test",
        help="send a test message to a member's channels",
        description="Send one test message to each of a member's channels now and say "
        "what each answered.",
    )
    test.add_argument("--email", required=True, help="the member's e-mail")
    test.set_defaults(handler=_test)


async def _add(args: argparse.Namespace, settings: Settings) -> int:
    email = parse_email(args.email)
    url = args.url.strip()
    channels.register_url(url)
    channels.check_url(url)
    events = channels.check_events([e.strip() for e in args.events.split(",") if e.strip()])
    async with database(settings) as conn:
        record = await notify_store.add_channel(conn, email, url, events, args.lang)
    print(record["id"])
    return 0


async def _list(args: argparse.Namespace, settings: Settings) -> int:
    email = parse_email(args.email) if args.email else None
    async with database(settings) as conn:
        records = await notify_store.list_channels(conn, email)
    rows = [
        {
            "id": r["id"],
            "email": r["user_email"],
            "url": channels.mask_url(r["url"]),
            "events": ",".join(r["events"]),
            "lang": r["lang"],
        }
        for r in records
    ]
    if args.json:
        print_json(rows)
    else:
        print_table(["ID", "EMAIL", "URL", "EVENTS", "LANG"], [list(r.values()) for r in rows])
    return 0


async def _remove(args: argparse.Namespace, settings: Settings) -> int:
    async with database(settings) as conn:
        if not await notify_store.remove_channel(conn, args.id):
            raise UsageError(f"no channel {args.id}: see `prebookd notify list`")
    print(f"removed channel {args.id}")
    return 0


async def _test(args: argparse.Namespace, settings: Settings) -> int:
    email = parse_email(args.email)
    async with database(settings) as conn:
        records = await notify_store.list_channels(conn, email)
    if not records:
        raise UsageError(f"{email} has no channel: add one with `prebookd notify add`")
    failed = 0
    workers = Workers(len(records))  # daemon threads: a hung channel cannot hold the exit
    for record in records:
        channels.register_url(record["url"])
        text = render("test", {}, record["lang"])
        timeout = settings.notify_timeout
        try:
            error = await asyncio.wait_for(
                asyncio.wrap_future(
                    workers.submit(channels.send, [record["url"]], text.title, text.body, timeout)
                ),
                timeout + 1.0,
            )
        except TimeoutError:
            error = f"no answer within {timeout + 1.0:g} s"
        failed += error is not None
        answer = "sent" if error is None else f"failed: {error}"
        print(f"{record['id']}  {channels.mask_url(record['url'])}  {answer}")
    workers.shutdown()
    return 1 if failed else 0
