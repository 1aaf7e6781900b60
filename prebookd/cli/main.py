"""The `prebookd` command: argument parsing and wiring, nothing else.

Each subcommand's work lives in its own module; this one parses, loads settings,
configures logging, and turns a `PrebookdError` into one line on stderr and its exit
code (no traceback: the message says what to fix). argparse's own errors (a missing
option, an unknown one, a bad choice) are one line and exit code 2 as well: `Parser`,
which every subcommand's parser inherits.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import textwrap
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, NoReturn

from prebookd import __version__, setting_sources
from prebookd.errors import PrebookdError, describe
from prebookd.log import configure_logging
from prebookd.setting_sources import read_settings
from prebookd.settings import Settings

Handler = Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int]]

DESCRIPTION = """\
prebookd fires AimHarder prebookings at the instant booking opens.

It reads the `prebookings` table the web app writes (or `prebookd add`), arms each row
in memory, and sends the booking within a millisecond of `available_at`, never before
it, in the order members prebooked. Settings come from PREBOOKD_* environment variables
(see `prebookd config`); with no PREBOOKD_DATABASE_URL an embedded Postgres is started
under PREBOOKD_STATE_DIR.
"""

EPILOG = """\
exit codes (every command):
  0    done
  1    failed: AimHarder said no (a wrong password, a dead session), no daemon answered
       `status`, or the daemon stopped on a crash
  2    usage: bad input or settings, said in one line on stderr; nothing was written
  3    database: Postgres could not be reached, or refused a statement
  130  interrupted (Ctrl-C)

examples:
  prebookd box add --subdomain crossfitnorte --box-id 1234 --name "CrossFit Norte" --window 4d
  prebookd add --email jane@example.com --box crossfitnorte --day +5d --class "07:00 WOD"
  prebookd list --all
"""

RUN_EPILOG = """\
examples:
  prebookd run                                   # what the systemd unit starts
  PREBOOKD_LOG_FORMAT=json prebookd run          # one JSON object a line, for journald
  sudo systemctl reload prebookd                 # SIGHUP: read the settings again
"""

MIGRATE_EPILOG = """\
examples:
  prebookd migrate
  PREBOOKD_DATABASE_URL=postgresql://prebookd@db.example.com/app prebookd migrate
"""

_MISSING_VALUE = re.compile(r"^argument (\S+?)(?:/\S+)?: expected one argument$")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs in paragraphs: a paragraph of plain lines is wrapped to
    the terminal, one with an indented line (examples, a table) is kept as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        blocks = []
        for block in text.strip("\n").split("\n\n"):
            lines = block.splitlines()
            if any(line[:1].isspace() for line in lines):
                blocks.append("\n".join(indent + line for line in lines))
            else:
                blocks.append(
                    textwrap.fill(
                        " ".join(block.split()),
                        width,
                        initial_indent=indent,
                        subsequent_indent=indent,
                        break_long_words=False,  # a URL or an option stays whole
                        break_on_hyphens=False,
                    )
                )
        return "\n\n".join(blocks) + "\n"

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(
            " ".join(text.split()), width, break_long_words=False, break_on_hyphens=False
        )


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error said as prebookd says every error: one line on
    stderr, exit code 2. Subcommands' parsers are of this class too (add_parser)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        # The innermost subcommand's defaults win: after parsing, this names the
        # command an unknown option was given to.
        self.set_defaults(usage_prog=self.prog)

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            prog = getattr(parsed, "usage_prog", self.prog)
            self.fail(prog, f"unrecognized arguments: {' '.join(extras)}")
        return parsed

    def error(self, message: str) -> NoReturn:
        self.fail(self.prog, message)

    def fail(self, prog: str, message: str) -> NoReturn:
        text = " ".join(message.split())
        missing = _MISSING_VALUE.match(text)
        if missing:
            # `--window -1d` reads as an option: the value must be glued on.
            text += f" (a value that starts with '-' is given as {missing[1]}=VALUE)"
        self.exit(2, f"{prog}: error: {text}; see `{prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    # Typed as the base class: every command module's add_*_parser takes argparse's.
    parser: argparse.ArgumentParser = Parser(
        prog="prebookd", description=DESCRIPTION, epilog=EPILOG
    )
    parser.add_argument("--version", action="version", version=f"prebookd {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = commands.add_parser(
        "run",
        help="run the daemon (what systemd starts)",
        description="Run the daemon: check the schema (migrating it when needed), arm "
        "the rows still to fire, LISTEN, fire each at its instant. SIGHUP reads the "
        "settings again, SIGTERM drains and exits. Its log goes to stderr.",
        epilog=RUN_EPILOG,
    )
    run.set_defaults(handler=_run)

    migrate = commands.add_parser(
        "migrate",
        help="create or update the schema",
        description="Apply the migrations not yet applied (safe to run from several "
        "processes at once; only adds to the web app's tables). Prints each one applied, "
        "or that the schema is up to date.",
        epilog=MIGRATE_EPILOG,
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

    from prebookd.cli.rules import add_rules_parsers

    add_rules_parsers(commands)

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

    async with database_dsn(settings, quiet=True) as dsn:
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = read_settings()
        configure_logging(settings.log_level, settings.log_format)
        if getattr(args, "warns_unknown_variables", True):  # `config` lists them itself
            setting_sources.log_unknown_variables()
        handler: Handler = args.handler
        return asyncio.run(handler(args, settings))
    except PrebookdError as exc:
        print(f"prebookd: error: {describe(exc)}", file=sys.stderr)  # one line, always
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
