"""Run the benchmark scenarios against the simulator and Postgres; print a table,
write JSON and a lateness histogram.

    .venv/bin/python -m bench.run                      # every scenario, full size
    .venv/bin/python -m bench.run --quick              # every scenario, small (< 2 min)
    .venv/bin/python -m bench.run --scenario precision --scenario burst --out bench/out

Postgres: PREBOOKD_DATABASE_URL when set (a superuser DSN: each scenario creates and
drops a database of its own), else an embedded one started for the run. The
simulator runs in this process on 127.0.0.1; each sender (prebookd, a baseline) runs
as a subprocess. Scenarios run one after another, never side by side: they would
share the CPU and measure each other.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import asyncpg

from bench import aim, burst, compare, intake, precision, scale
from bench.infra import pg_server, raise_fd_limit
from bench.report import Line, render

# In running order: the baselines compare themselves with precision's result.
SCENARIOS: dict[str, ModuleType] = {
    m.NAME: m for m in (precision, compare, burst, intake, scale, aim)
}
# Descriptors on each side of a 2000-request burst, plus headroom.
FD_LIMIT = 8192


async def run_scenarios(
    names: Sequence[str],
    server_dsn: str,
    *,
    quick: bool = False,
    sizes: dict[str, Any] | None = None,
    echo: bool = True,
) -> dict[str, Any]:
    """Run the named scenarios in order; results by name (each with its table)."""
    results: dict[str, Any] = {}
    for name in SCENARIOS:
        if name not in names:
            continue
        module = SCENARIOS[name]
        size = (sizes or {}).get(name) or (module.QUICK if quick else module.FULL)
        if echo:
            print(f"-- {name}: {module.describe(size)}", flush=True)
        started = time.monotonic()
        try:
            result = await module.run(server_dsn, size, results)
            lines = module.table(result)
        except Exception as exc:
            # One scenario failing (a daemon that would not start, say) must not
            # throw away the others of a 12-minute run: record why, go on.
            result = {"error": f"{type(exc).__name__}: {exc}"}
            lines = [Line("FAILED", result["error"].splitlines()[0][:200], "", False)]
        result["seconds"] = round(time.monotonic() - started, 1)
        result["table"] = [line.as_json() for line in lines]
        results[name] = result
        if echo:
            print(render(f"{name} ({result['seconds']} s)", lines), flush=True)
            if "error" in result:
                print(result["error"], flush=True)
            print(flush=True)
    return results


async def machine(server_dsn: str) -> dict[str, Any]:
    conn = await asyncpg.connect(server_dsn)
    try:
        server_version = await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()
    return {
        "cpus": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "postgres": server_version,
        "kernel": platform.release(),
    }


def save_logs(name: str, result: dict[str, Any], folder: Path) -> None:
    """Move each sender's output out of the result into logs/NAME[-APPROACH].log:
    evidence for anything odd in the table, too long for the JSON."""
    folder.mkdir(parents=True, exist_ok=True)
    for part in [result, *result.get("approaches", []), *result.get("runs", [])]:
        lines = part.pop("log", None)
        if lines is None:
            continue
        approach = part.get("variant") or part.get("approach", "")
        suffix = "" if approach in ("", "prebookd") else "-" + "-".join(approach.split())
        (folder / f"{name}{suffix}.log").write_text("\n".join(lines) + "\n")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--scenario",
        action="append",
        choices=list(SCENARIOS),
        help="run only this one (repeatable); default: all",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: the whole run < 2 min")
    parser.add_argument("--out", type=Path, default=Path("bench/out"), help="JSON and PNG here")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    return parser.parse_args(argv)


def write_outputs(
    results: dict[str, Any], meta: dict[str, Any], out: Path, *, quick: bool, plot: bool
) -> tuple[Path, Path | None]:
    """logs/, the JSON and (when matplotlib is there and `plot`) the PNG; their paths."""
    stem = "-quick" if quick else ""
    for name, result in results.items():
        save_logs(name, result, out / "logs")
    json_path = out / f"results{stem}.json"
    json_path.write_text(json.dumps({"meta": meta, "scenarios": results}, indent=1, default=str))
    png = None
    if plot:
        from bench.plot import plot_lateness

        png = plot_lateness(results, out / f"lateness{stem}.png")
    return json_path, png


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    names = list(args.scenario or SCENARIOS)
    if compare.NAME in names and precision.NAME not in names:
        # The baselines' ratios are to prebookd's precision result, measured alongside.
        names.append(precision.NAME)
        print("-- baselines need prebookd's precision result: running precision too")
    raise_fd_limit(FD_LIMIT)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with pg_server() as (server_dsn, server_kind):
        print(f"-- Postgres: {server_kind}; quick={args.quick}", flush=True)
        info = asyncio.run(machine(server_dsn))
        results = asyncio.run(run_scenarios(names, server_dsn, quick=args.quick))
    info["loadavg_after"] = os.getloadavg()
    meta = {
        "started": dt.datetime.fromtimestamp(started, dt.UTC).isoformat(),
        "seconds": round(time.time() - started, 1),
        "quick": args.quick,
        "postgres_server": server_kind,
        "command": " ".join(["python -m bench.run", *(sys.argv[1:] if argv is None else argv)]),
        "machine": info,
    }
    json_path, png = write_outputs(results, meta, args.out, quick=args.quick, plot=not args.no_plot)
    print(f"-- JSON: {json_path}")
    if not args.no_plot:
        print(
            f"-- PNG: {png}"
            if png
            else "-- PNG: skipped (no matplotlib: pip install -e '.[bench]')"
        )
    print(f"-- done in {meta['seconds']} s")


if __name__ == "__main__":
    main()
