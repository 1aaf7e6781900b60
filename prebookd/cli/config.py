"""`prebookd config`: every setting in effect, where it came from, and the `PREBOOKD_*`
variables that no setting reads (a typo leaves the default in force)."""

from __future__ import annotations

import argparse
import json

from prebookd import setting_sources
from prebookd.settings import Settings

EPILOG = """\
where a value comes from:
  environment       a PREBOOKD_* variable (systemd's EnvironmentFile= lands here too)
  env file PATH     the file PREBOOKD_ENV_FILE names, read at start and on SIGHUP; it wins
  default           neither sets it

examples:
  prebookd config
  prebookd config --json | jq '.settings.arm_lead'
  PREBOOKD_ENV_FILE=/etc/prebookd/prebookd.env prebookd config
"""


def add_config_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    config = commands.add_parser(
        "config",
        help="print the effective settings, where each came from (secrets masked)",
        description="Print every setting as prebookd sees it, secrets masked, with where "
        "its value came from; then any PREBOOKD_* variable no setting reads.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    config.add_argument(
        "--json",
        action="store_true",
        help='print JSON: {"settings": {name: value}, "sources": {name: source}, '
        '"unknown_variables": [{"name", "source", "suggestion"}]}',
    )
    config.set_defaults(handler=_config, warns_unknown_variables=False)


async def _config(args: argparse.Namespace, settings: Settings) -> int:
    shown = settings.describe()
    sources = setting_sources.sources()
    unknown = setting_sources.unknown_variables()
    if args.json:
        report = {
            "settings": shown,
            "sources": sources,
            "unknown_variables": [
                {"name": u.name, "source": u.source, "suggestion": u.suggestion} for u in unknown
            ],
        }
        print(json.dumps(report, indent=2, default=str))
        return 0
    names = {name: f"PREBOOKD_{name.upper()}" for name in shown}
    name_width = max(map(len, names.values()))
    value_width = min(40, max(len(str(value)) for value in shown.values()))
    for name, value in shown.items():
        print(f"{names[name]:<{name_width}}  {value!s:<{value_width}}  ({sources[name]})")
    for variable in unknown:
        print(f"warning: {variable.describe()}")
    return 0
