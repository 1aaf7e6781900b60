"""The deployment files: the unit, the env example, install.sh and the role SQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from prebookd.db import history_store, store, watch_store
from prebookd.db.connection import connect
from prebookd.db.migrate import pending_migrations
from prebookd.models import ResultUpdate
from prebookd.setting_sources import LIVE_SETTINGS
from prebookd.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "prebookd.service"
DEPLOY = ROOT / "deploy"
ROLE = "prebookd_app"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """systemd's INI dialect: sections, keys that may repeat, `\\` continuations."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"a key outside any section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_unit_has_what_the_daemon_relies_on() -> None:
    unit = parse_unit(UNIT.read_text())
    assert set(unit) == {"Unit", "Service", "Install"}
    service = {key: values[-1] for key, values in unit["Service"].items()}
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "ExecStart": "/opt/prebookd/venv/bin/prebookd run",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "WatchdogSec": "30",
        "Restart": "on-failure",
        "RestartSec": "2",
        "TimeoutStopSec": "30",
        "EnvironmentFile": "/etc/prebookd/prebookd.env",
        "Environment": "PREBOOKD_ENV_FILE=/etc/prebookd/prebookd.env",
        "StateDirectory": "prebookd",
        "User": "prebookd",
        "KillMode": "mixed",
        "UMask": "0077",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "CapabilityBoundingSet": "",
        "MemoryDenyWriteExecute": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "SystemCallArchitectures": "native",
    }
    assert {key: service.get(key) for key in expected} == expected
    assert unit["Service"]["SystemCallFilter"] == ["@system-service", "~@privileged @resources"]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    # The drain must end before systemd's SIGKILL.
    assert float(service["TimeoutStopSec"]) > Settings.model_fields["shutdown_timeout"].default


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze not installed (Debian package `systemd`): unit not verified",
)
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify checks that ExecStart= exists: point it at this checkout's entry point.
    entry_point = Path(sys.executable).parent / "prebookd"
    assert entry_point.exists()
    unit = tmp_path / "prebookd.service"
    unit.write_text(UNIT.read_text().replace("/opt/prebookd/venv/bin/prebookd", str(entry_point)))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""

    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", security.stdout)
    assert match, security.stdout + security.stderr
    assert float(match[1]) <= 2.0, security.stdout


# ---- the env example ---------------------------------------------------------------

SETTING_LINE = re.compile(r"^#?(PREBOOKD_[A-Z0-9_]+)=(.*)$")


def env_example() -> list[tuple[str, str, str]]:
    """(setting, value, the comment block just above it)."""
    found = []
    comment: list[str] = []
    for line in (DEPLOY / "prebookd.env.example").read_text().splitlines():
        match = SETTING_LINE.match(line)
        if match:
            found.append((match[1], match[2], "\n".join(comment)))
            comment = []
        elif line.startswith("#"):
            comment.append(line)
        else:
            comment = []
    return found


def test_env_example_lists_every_setting_and_nothing_else() -> None:
    listed = [name for name, _, _ in env_example()]
    assert len(listed) == len(set(listed)), "a setting listed twice"
    known = {f"PREBOOKD_{name.upper()}" for name in Settings.model_fields}
    assert set(listed) == known


def test_env_example_values_are_valid_and_tagged() -> None:
    values = {}
    for name, value, comment in env_example():
        field = name.removeprefix("PREBOOKD_").lower()
        # systemd keeps an inline '# ...' as part of the value: none may have one.
        assert "#" not in value, name
        assert comment.strip(), f"{name} has no explanation"
        tag = "[live]" if field in LIVE_SETTINGS else "[restart]"
        assert tag in comment, f"{name} should say {tag}"
        values[field] = value
    load_settings(**values)  # every example value passes the settings' own checks


def test_install_script_parses_and_has_help() -> None:
    script = DEPLOY / "install.sh"
    assert script.stat().st_mode & 0o111, "install.sh is not executable"
    assert script.read_text().startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in script.read_text()
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)
    # --help works without root and touches nothing.
    result = subprocess.run(
        ["bash", str(script), "--help"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0
    assert "Usage:" in result.stdout
    assert "--migrate-env" in result.stdout


# ---- the least-privilege role --------------------------------------------------------


@pytest.fixture
async def role(conn: asyncpg.Connection) -> AsyncIterator[str]:
    """deploy/prebookd-role.sql applied to this test's database, under a name of its
    own: roles belong to the whole server, and test sessions share one."""
    name = f"{ROLE}_{uuid.uuid4().hex[:8]}"
    sql = (DEPLOY / "prebookd-role.sql").read_text().replace(ROLE, name)
    await conn.execute(sql)
    await conn.execute(sql)  # idempotent: a second run (after an upgrade) is fine
    try:
        yield name
    finally:
        await conn.execute("RESET ROLE")
        await conn.execute(f'DROP OWNED BY "{name}"')
        await conn.execute(f'DROP ROLE "{name}"')


async def test_role_can_do_what_the_daemon_does(
    conn: asyncpg.Connection, role: str, db_dsn: str
) -> None:
    now = time.time()
    # Rows as the web app writes them (as the owner: the role may not INSERT).
    box = await conn.fetchval(
        "INSERT INTO boxes (box_id, subdomain, name, base_url) "
        "VALUES ('1234', 'norte', 'Norte', 'http://127.0.0.1:9/norte') RETURNING id"
    )
    await conn.execute(
        "INSERT INTO auth_sessions (user_email, aimharder_token, aimharder_cookies, "
        "fingerprint, session_type) VALUES ($1, 't', $2, 'fp', 'background')",
        "ana@example.com",
        [{"name": "amhrdrauth", "value": "c1"}],
    )
    row = await conn.fetchval(
        "INSERT INTO prebookings (user_email, box_id, booking_data, available_at) "
        "VALUES ($1, $2, $3, $4) RETURNING id",
        "ana@example.com",
        box,
        {"day": "20301201", "familyId": "", "id": "106015104", "insist": 0},
        dt.datetime.fromtimestamp(now + 3600, dt.UTC),
    )

    # The daemon's own statements, run as the role (SET ROLE: the superuser of the
    # test server may take it whatever pg_hba.conf says about logging in as it).
    listener = await connect(db_dsn, role="listener")
    notices: asyncio.Queue[str] = asyncio.Queue()
    try:
        await listener.execute(f'SET ROLE "{role}"')
        await listener.add_listener("prebookings", lambda *args: notices.put_nowait(args[3]))

        await conn.execute(f'SET ROLE "{role}"')
        assert await conn.fetchval("SELECT current_user") == role
        assert await pending_migrations(conn) == []
        scheduled = await store.rows_to_schedule(
            conn, horizon_end=now + 86_400, absurd_after=now + 400 * 86_400
        )
        assert [r["id"] for r in scheduled] == [row]
        assert [r["id"] for r in await store.rows_by_id(conn, [row])] == [row]
        claimed = await store.claim(conn, [row], "vps1", 30.0)
        assert [r["id"] for r in claimed] == [row]
        assert claimed[0]["session_found"] and claimed[0]["box_found"]
        assert await store.renew_leases(conn, [row], "vps1", 30.0) == {row}
        assert await store.release_claims(conn, [row], "vps1") == 1
        await store.claim(conn, [row], "vps1", 30.0)
        await store.write_results(
            conn,
            [
                ResultUpdate(
                    row,
                    "completed",
                    outcome="booked",
                    result={"bookState": 1},
                    written_at=now,
                    lateness_ms=0.4,
                    attempts=1,
                    executed_at=now,
                    fired_by="vps1",
                )
            ],
        )
        sessions = await store.sessions_to_keep(conn, now + 86_400, now + 60)
        assert [s["user_email"] for s in sessions] == []  # its row is final now
        session_id = await conn.fetchval(
            "SELECT id FROM auth_sessions WHERE user_email = 'ana@example.com'"
        )
        await store.save_session_refresh(
            conn, session_id, "token-2", [{"name": "amhrdrauth", "value": "c2"}]
        )
        await store.record_session_error(conn, session_id, "refresh refused")

        # The trigger's pg_notify runs with the role's rights: LISTEN hears the claims.
        statuses = [json.loads(await asyncio.wait_for(notices.get(), 5))["status"]]
        while len(statuses) < 4:
            statuses.append(json.loads(await asyncio.wait_for(notices.get(), 5))["status"])
        assert statuses == ["loaded", "pending", "loaded", "completed"]
    finally:
        await listener.close()

    final = await conn.fetchrow("SELECT status, outcome FROM prebookings WHERE id = $1", row)
    assert (final["status"], final["outcome"]) == ("completed", "booked")

    # The watcher claims a row that ended full before it asks for a freed place.
    await conn.execute("RESET ROLE")
    watched = await conn.fetchval(
        "INSERT INTO prebookings (user_email, box_id, booking_data, available_at, status, "
        "outcome, watch) VALUES ($1, $2, $3, now(), 'failed', 'full', true) RETURNING id",
        "ana@example.com",
        box,
        {"day": "20301201", "familyId": "", "id": "106015105", "insist": 0},
    )
    await conn.execute(f'SET ROLE "{role}"')
    as_role = await asyncpg.create_pool(
        db_dsn, min_size=1, max_size=1, init=lambda c: c.execute(f'SET ROLE "{role}"')
    )
    try:
        assert await watch_store.claim_turn(as_role, watched, "vps1", 30.0)
        await watch_store.release_turn(as_role, watched, "vps1")
    finally:
        await as_role.close()
    # And deletes its own history once old: delivered messages, rule misses.
    assert await history_store.purge(conn, 30) == {"messages": 0, "rule_misses": 0}

    # What it must not do.
    refused = [
        "DELETE FROM boxes",
        "DELETE FROM prebookings",
        "DROP TABLE boxes",
        "ALTER TABLE boxes ADD COLUMN x int",
        "TRUNCATE prebookings",
        "UPDATE boxes SET name = 'x'",
        "UPDATE prebookings SET available_at = now(), user_email = 'x'",
        "UPDATE auth_sessions SET user_email = 'x'",
        "INSERT INTO boxes (subdomain) VALUES ('sur')",
        "CREATE TABLE sneaky (id int)",
        "DROP TRIGGER prebookings_notify_update ON prebookings",
    ]
    for statement in refused:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            async with conn.transaction():
                await conn.execute(statement)
