"""The embedded Postgres: what `prebookd migrate` does with no PREBOOKD_DATABASE_URL."""

from __future__ import annotations

from pathlib import Path

from tests.support import clean_env, run_prebookd


def postgres_running_in(data_dir: Path) -> bool:
    """A server holds `postmaster.pid` while it runs, and names its data dir in its
    command line."""
    if (data_dir / "postmaster.pid").exists():
        return True
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:  # the process ended meanwhile
            continue
        if str(data_dir).encode() in args and any(b"postgres" in arg for arg in args):
            return True
    return False


async def test_migrate_runs_on_an_embedded_postgres_and_stops_it(tmp_path: Path) -> None:
    env = clean_env(PREBOOKD_STATE_DIR=str(tmp_path))
    data_dir = tmp_path / "pgdata"

    code, out, err = await run_prebookd("migrate", env=env)

    assert code == 0, err
    assert "applied 0001_" in out
    # Logs go to stderr; stdout holds only what the command says.
    started = [line for line in err.splitlines() if "embedded_postgres_started" in line]
    assert len(started) == 1
    assert str(data_dir) in started[0]
    assert (data_dir / "PG_VERSION").exists()
    assert not postgres_running_in(data_dir)

    code, out, err = await run_prebookd("migrate", env=env)

    assert code == 0, err
    assert "nothing to apply" in out
    assert "applied" not in out
    assert "embedded_postgres" not in out
    assert not postgres_running_in(data_dir)
