"""What a user sees when a command is given the wrong thing, and what `--help` tells
them: every usage error is one line on stderr and exit code 2 (argparse's own too),
numbers are bounded and `nan`/`inf` refused as such before anything reaches Postgres,
and every command's help ends with examples.

Run in this process (tests/cli_support.py); two cases run as a real process too, as a
user's shell runs them.
"""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

from tests.cli_support import NOT_USED_DSN, cli

# (arguments, the start of the one line on stderr, a fragment of it)
ARGPARSE_ERRORS = [
    (
        ["box", "add", "--subdomain", "x", "--box-id", "1", "--name", "X", "--window", "-1d"],
        "prebookd box add: error: argument --window: expected one argument",
        "given as --window=VALUE",
    ),
    (
        ["list", "--status", "bogus"],
        "prebookd list: error: argument --status: invalid choice: 'bogus'",
        "see `prebookd list --help`",
    ),
    (
        ["list", "--limit", "99999999999999999999"],
        "prebookd list: error: argument --limit: '99999999999999999999' is out of range",
        "from 1 to 100000",
    ),
    (["list", "--limit", "nan"], "prebookd list: error: argument --limit: 'nan'", "not a number"),
    (["list", "--limit=-inf"], "prebookd list: error: argument --limit: '-inf'", "not a number"),
    (["list", "--limit", "-5"], "prebookd list: error: argument --limit: '-5'", "out of range"),
    (["list", "--limit", "2.5"], "prebookd list: error: argument --limit:", "not a whole number"),
    (["list", "--limit", "0"], "prebookd list: error: argument --limit: '0'", "out of range"),
    (
        ["add", "--email", "jane@example.com", "--box", "x"],
        "prebookd add: error: the following arguments are required:",
        "--day",
    ),
    (
        ["list", "--bogus"],
        "prebookd list: error: unrecognized arguments: --bogus",
        "see `prebookd list --help`",
    ),
    (
        ["box", "set", "x", "--frobnicate", "1"],
        "prebookd box set: error: unrecognized arguments: --frobnicate 1",
        "see `prebookd box set --help`",
    ),
    (["box"], "prebookd box: error: the following arguments are required: ACTION", "ACTION"),
    ([], "prebookd: error: the following arguments are required: COMMAND", "prebookd --help"),
    (["lst"], "prebookd: error: argument COMMAND: invalid choice: 'lst'", "'list'"),
    (["list", "--all", "--since", "7d"], "prebookd list: error: argument --since:", "--all"),
]


@pytest.mark.parametrize(("args", "start", "fragment"), ARGPARSE_ERRORS)
async def test_argparse_errors_are_one_line_and_exit_code_2(
    args: list[str], start: str, fragment: str
) -> None:
    run = await cli(NOT_USED_DSN, *args)
    assert run.code == 2, run
    line = run.error_line
    assert line.startswith(start), line
    assert fragment in line
    assert "usage:" not in run.err


BOX_ADD = ["box", "add", "--subdomain", "newbox", "--name", "N"]

# Refused by the command before it opens a connection (the DSN leads nowhere).
INPUT_ERRORS = [
    ([*BOX_ADD, "--box-id", "nan"], "box id 'nan' is not a number"),
    ([*BOX_ADD, "--box-id", "inf"], "box id 'inf' is not a number"),
    ([*BOX_ADD, "--box-id", "99999999999"], "box id '99999999999' is out of range"),
    ([*BOX_ADD, "--box-id", "-3"], "box id '-3' is out of range"),
    ([*BOX_ADD, "--box-id", "12a"], "box id '12a' is not a whole number"),
    ([*BOX_ADD, "--box-id", "1", "--window=-1d"], "booking window '-1d' is out of range"),
    ([*BOX_ADD, "--box-id", "1", "--window", "99999d"], "'99999d' is out of range: 1 to 31 days"),
    ([*BOX_ADD, "--box-id", "1", "--window", "800h"], "'800h' is out of range: 1 to 744 hours"),
    ([*BOX_ADD, "--box-id", "1", "--window", "nan"], "booking window 'nan' is not a number"),
    (["box", "set", "x", "--box-id", "infinity"], "box id 'infinity' is not a number"),
    (["box", "set", "x", "--window", "0h"], "booking window '0h' is out of range"),
    (["box", "set", "x"], "nothing to change"),
    (["list", "--since", "99999d"], "--since '99999d' is out of range"),
    (["list", "--since", "nan"], "--since 'nan' is not a number"),
    (["list", "--since", "last tuesday"], "malformed --since 'last tuesday'"),
    (["cancel", "3f0"], "prebooking id prefix '3f0' is too short"),
    (["cancel", "3f0g"], "malformed prebooking id '3f0g'"),
]


@pytest.mark.parametrize(("args", "fragment"), INPUT_ERRORS)
async def test_bad_numbers_are_refused_before_postgres(args: list[str], fragment: str) -> None:
    run = await cli(NOT_USED_DSN, *args)
    assert run.code == 2, run
    line = run.error_line
    assert line.startswith("prebookd: error: ") and fragment in line, line
    assert "database" not in line and "connect" not in line


async def test_usage_errors_from_a_real_process() -> None:
    """As a shell sees them: the exit code, and stderr alone."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREBOOKD_")}
    env.update(PREBOOKD_DATABASE_URL=NOT_USED_DSN)

    async def prebookd(*args: str) -> tuple[int | None, bytes, bytes]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "prebookd", *args, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
        return proc.returncode, out, err

    limit, window = await asyncio.gather(
        prebookd("list", "--limit", "99999999999999999999"),
        prebookd("box", "add", "--window", "-1d"),
    )
    for code, out, err in (limit, window):
        assert code == 2 and out == b"", (code, out, err)
        assert len(err.decode().splitlines()) == 1, err
    assert b"is out of range" in limit[2]
    assert window[2].startswith(b"prebookd box add: error: argument --window")


HELPED = [
    ["run"], ["migrate"], ["box"], ["box", "add"], ["box", "set"], ["box", "set-window"],
    ["box", "remove"], ["box", "list"], ["add"], ["list"], ["cancel"], ["login"],
    ["classes"], ["demo"], ["status"],
]  # fmt: skip


@pytest.mark.parametrize("command", HELPED, ids=" ".join)
async def test_every_commands_help_ends_with_examples(command: list[str]) -> None:
    run = await cli(NOT_USED_DSN, *command, "--help")
    assert run.code == 0 and run.err == "", run
    assert run.out.startswith(f"usage: prebookd {' '.join(command)}")
    # The last paragraph: two or three commands (one may go on over a "\" line).
    tail = run.out[run.out.rindex("\nexamples:\n") :].splitlines()[2:]
    examples = [line for line in tail if line.startswith("  ") and line[2] != " "]
    assert 2 <= len(examples) <= 3, run.out
    assert all("prebookd" in line for line in examples)
    assert all(line.startswith("      ") for line in tail if line not in examples)


async def test_help_explains_exit_codes_windows_and_class_times() -> None:
    top = await cli(NOT_USED_DSN, "--help")
    codes = top.out[top.out.index("exit codes") :]
    for code, meaning in (("0", "done"), ("1", "failed"), ("2", "usage"), ("3", "database")):
        assert f"\n  {code} " in codes and meaning in codes
    box_add = await cli(NOT_USED_DSN, "box", "add", "--help")
    flat = " ".join(box_add.out.split())
    assert "Not given: the box has no window, and `prebookd add` needs --at" in flat
    add = await cli(NOT_USED_DSN, "add", "--help")
    flat = " ".join(add.out.split())
    assert "the start comes from --class-time when given" in flat
    assert "--class names it as `prebookd classes` lists it" in flat
    remove = await cli(NOT_USED_DSN, "box", "remove", "--help")
    assert "--with-history" in remove.out and "sessions stay" in remove.out
