"""`prebookd ARGS` run in this process, as `prebookd.cli.main.main` runs it: exit code,
stdout and stderr, for the command-line tests that need no real process (a
subprocess costs about a second to start; this, a few milliseconds).

The command runs in a worker thread with its own event loop (`main` calls
`asyncio.run`), so the test's loop stays free to serve a simulator it talks to. Its
settings come from the environment, set for the call and restored after; so are the
logging configuration it installs and the standard streams (stdin given as text, stdout
and stderr read back). One command at a time: the environment is the process's.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any

import structlog

from prebookd.cli.main import main

NOT_USED_DSN = "postgresql://prebookd@127.0.0.1:9/never"
# Commands gathered side by side run one after the other: each sets the process's
# environment and streams for its time.
_ONE_AT_A_TIME = asyncio.Lock()


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    @property
    def error_line(self) -> str:
        """The one line a refusal is: asserted to be alone on stderr, stdout empty."""
        lines = self.err.splitlines()
        assert self.out == "" and len(lines) == 1, self
        return lines[0]


def _main(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse: --help, usage errors
        return exc.code if isinstance(exc.code, int) else 1


async def cli(dsn: str, *args: str, stdin: str = "", **settings: str) -> Run:
    """`prebookd ARGS` against `dsn`, with boxes allowed on loopback (the simulator);
    `settings` are more PREBOOKD_* variables (`box_hosts="..."`)."""
    async with _ONE_AT_A_TIME:
        return await _cli(dsn, list(args), stdin, settings)


async def cli_with_env(env: dict[str, str], *args: str) -> Run:
    """`prebookd ARGS` with exactly these PREBOOKD_* variables (none of the defaults
    `cli` adds): for the tests of settings themselves."""
    async with _ONE_AT_A_TIME:
        return await _run_in_env(env, list(args), "")


async def _cli(dsn: str, args: list[str], stdin: str, settings: dict[str, str]) -> Run:
    env = {
        "PREBOOKD_DATABASE_URL": dsn,
        "PREBOOKD_MAX_LEAD_DAYS": "3650",
        "PREBOOKD_BOX_HOSTS": "127.0.0.1",
        "PREBOOKD_AIMHARDER_URL": "http://127.0.0.1:9",
        **{f"PREBOOKD_{name.upper()}": value for name, value in settings.items()},
    }
    return await _run_in_env(env, args, stdin)


async def _run_in_env(env: dict[str, str], args: list[str], stdin: str) -> Run:
    saved_env = {k: v for k, v in os.environ.items() if k.startswith("PREBOOKD_")}
    saved_logging: dict[str, Any] = structlog.get_config()
    root = logging.getLogger()
    saved_root = (root.level, list(root.handlers))
    saved_streams = (sys.stdin, sys.stdout, sys.stderr)
    out, err = io.StringIO(), io.StringIO()
    for name in saved_env:
        del os.environ[name]
    os.environ.update(env)
    sys.stdin, sys.stdout, sys.stderr = io.StringIO(stdin), out, err
    try:
        code = await asyncio.to_thread(_main, args)
    finally:
        sys.stdin, sys.stdout, sys.stderr = saved_streams
        for name in env:
            os.environ.pop(name, None)
        os.environ.update(saved_env)
        structlog.configure(**saved_logging)
        root.setLevel(saved_root[0])
        root.handlers[:] = saved_root[1]
    return Run(code, out.getvalue(), err.getvalue())
