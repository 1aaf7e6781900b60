"""The `prebookd` command: argument parsing and wiring, nothing else.

Each subcommand's work lives in its own module; this one parses, loads settings,
configures logging, and turns a `PrebookdError` into one line on stderr and its exit
code (no traceback: the message says what to fix).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import structlog

from prebookd import __version__, setting_sources
from prebookd.errors import PrebookdError
from prebookd.log import configure_logging
from prebookd.settings import Settings, read_settings

Handler = Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int]]

DESCRIPTION = """\
prebookd fires AimHarder prebookings at the instant booking opens.

It reads the `prebookings` table the web app writes (or `prebookd add`), arms each
row in memory, and sends the booking within a millisecond of `available_at`, never
before it, in the order members prebooked. Settings come from PREBOOKD_* environment
variables (see `prebookd config`); with no PREBOOKD_DATABASE_URL an embedded Postgres
is started under PREBOOKD_STATE_DIR.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prebookd",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"prebookd {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = commands.add_parser(
        "run",
        help="run the daemon (what systemd starts)",
        description="Run the daemon: migrate-check, arm pending rows, LISTEN, fire. "
        "SIGHUP reloads settings, SIGTERM drains and exits.",
    )
    run.set_defaults(handler=_run)

    migrate = commands.add_parser(
        "migrate",
        help="create or update the schema",
        description="Apply the migrations not yet applied (safe to run from several "
        "processes at once; only adds to the web app's tables).",
    )
    migrate.set_defaults(handler=_migrate)

    from prebookd.cli.config import add_config_parser

    add_config_parser(commands)

    # --- producer-side commands (box, add, list, cancel) ---
    from prebookd.cli.account import add_account_parsers
    from prebookd.cli.prebookings import add_admin_parsers

    add_admin_parsers(commands)
    add_account_parsers(commands)
    from prebookd.cli.notify import add_notify_parsers

    add_notify_parsers(commands)

    # --- the demo: prebookd against a simulated AimHarder, nothing to configure ---
    from prebookd.demo.run import add_demo_parser

    add_demo_parser(commands)

    # --- asking the running daemon ---
    from prebookd.cli.status import add_status_parser

    add_status_parser(commands)

    # --- the AimHarder simulator ---
    from prebookd.cli.simulate import add_simulate_parser

    add_simulate_parser(commands)
    return parser


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    from prebookd.daemon.main import run_daemon

    return await run_daemon(settings)


async def _migrate(args: argparse.Namespace, settings: Settings) -> int:
    from prebookd.db.connection import connect, database_dsn
    from prebookd.db.migrate import migrate

    async with database_dsn(settings) as dsn:
        conn = await connect(dsn)
        try:
            applied = await migrate(conn)
        finally:
            await conn.close()
    if applied:
        for migration in applied:
            print(f"applied {migration.version:04d}_{migration.name}")
    else:
        print("schema is up to date: nothing to apply")
    return 0


def _warn_unknown_variables() -> None:
    for variable in setting_sources.unknown_variables():
        structlog.get_logger().warning(
            "unknown_setting",
            variable=variable.name,
            source=variable.source,
            suggestion=variable.suggestion,
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = read_settings()
        configure_logging(settings.log_level, settings.log_format)
        if getattr(args, "warns_unknown_variables", True):  # `config` lists them itself
            _warn_unknown_variables()
        handler: Handler = args.handler
        return asyncio.run(handler(args, settings))
    except PrebookdError as exc:
        print(f"prebookd: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
