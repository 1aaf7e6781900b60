"""The benchmark runner (bench/run.py) at a tiny size: the precision scenario runs
end to end against the simulator and this session's Postgres, its JSON holds the
metrics, and prebookd was never early and kept FIFO order.

Only correctness is asserted. Timings belong to the benchmark, run on a quiet
machine; here other tests share the CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import precision
from bench.run import run_scenarios, write_outputs

TINY = precision.Size(rows=30, seconds=3.0, burst=10, lead=2.0, drain=10.0)


@pytest.mark.timeout(40)
@pytest.mark.first_run_only  # the benchmark harness, not SQL
async def test_precision_scenario_writes_metrics_never_early_and_fifo(
    pg_server_dsn: str, tmp_path: Path
) -> None:
    results = await run_scenarios(
        [precision.NAME], pg_server_dsn, sizes={precision.NAME: TINY}, echo=False
    )
    json_path, _ = write_outputs(results, {"test": True}, tmp_path, quick=True, plot=False)

    result = json.loads(json_path.read_text())["scenarios"][precision.NAME]
    assert "error" not in result, result["error"]
    metrics = result["metrics"]
    assert metrics["rows"] == 30
    assert metrics["unsent"] == 0
    assert metrics["requests"] >= 30
    for view in ("arrival", "sender"):
        lateness = metrics["lateness_ms"][view]
        assert lateness["single"]["n"] == 20  # 30 rows: one burst of 10, 20 singles
        assert lateness["first_of_burst"]["n"] == 1
        for group in ("all", "single", "first_of_burst"):
            assert {"p50", "p99", "p99.9", "max"} <= set(lateness[group])
        assert metrics["burst_spread_ms"][view]["n"] == 1
    assert metrics["early"] == {"arrival": 0, "sender": 0, "not_open_answers": 0}
    assert metrics["fifo_violations"] == {"arrival": 0, "sender": 0}
    assert sum(n for key, n in metrics["outcomes"].items() if key.startswith("completed")) > 0
    assert result["db_connections"]["samples"] > 0
    assert result["exit_code"] == 0
    assert [line["metric"] for line in result["table"]][:2] == [
        "single lateness, arrival",
        "single lateness, sender",
    ]
    assert (tmp_path / "logs" / "precision.log").read_text().count("booking_sent") == 30
