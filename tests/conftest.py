"""Shared fixtures: a real Postgres, and one fresh migrated database per test.

`PREBOOKD_TEST_DATABASE_URL` names a server to use (CI sets it to the machine's
Postgres); without it an embedded Postgres is started once for the whole session.
Each test gets its own database cloned from a migrated template: isolated, and
cheap (a clone is a file copy, no migrations rerun).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import pytest

from prebookd.db.connection import connect
from prebookd.db.embedded import EmbeddedPostgres, start_embedded
from prebookd.db.migrate import migrate
from prebookd.sim.server import Simulator
from tests.support import start_postgres


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `no_test_server` the tests that never reach the Postgres server under test
    (they need no `pg_server_dsn`, directly or through another fixture): the same with
    any server, so CI's second run, on the machine's Postgres, leaves them out."""
    for item in items:
        if "pg_server_dsn" not in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.no_test_server)


def dsn_with_database(dsn: str, database: str) -> str:
    """The same server, another database."""
    return urlsplit(dsn)._replace(path=f"/{database}").geturl()


@pytest.fixture(scope="session")
def pg_server_dsn() -> Iterator[str]:
    configured = os.environ.get("PREBOOKD_TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    # A directory of our own, not pytest's tmp_path: pytest prunes old basetemp
    # directories, which would pull the data from under a server still in use by a
    # concurrent test session.
    state_dir = Path(tempfile.mkdtemp(prefix="prebookd-test-pg-"))
    server = start_embedded(state_dir)
    try:
        yield server.dsn
    finally:
        server.stop()
        shutil.rmtree(state_dir, ignore_errors=True)


async def _admin(dsn: str) -> asyncpg.Connection:
    return await asyncpg.connect(dsn_with_database(dsn, "postgres"))


@pytest.fixture(scope="session")
async def template_database(pg_server_dsn: str) -> AsyncIterator[str]:
    """A database migrated once, cloned for each test."""
    name = f"prebookd_template_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = await _admin(pg_server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        conn = await asyncpg.connect(dsn_with_database(pg_server_dsn, name))
        try:
            await migrate(conn)
        finally:
            await conn.close()
        yield name
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def _fresh_database(server_dsn: str, template: str) -> tuple[str, str]:
    name = f"prebookd_test_{uuid.uuid4().hex[:12]}"
    admin = await _admin(server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    finally:
        await admin.close()
    return name, dsn_with_database(server_dsn, name)


async def _drop_database(server_dsn: str, name: str) -> None:
    admin = await _admin(server_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def db_dsn(pg_server_dsn: str, template_database: str) -> AsyncIterator[str]:
    """DSN of a fresh, migrated database of this test's own."""
    name, dsn = await _fresh_database(pg_server_dsn, template_database)
    try:
        yield dsn
    finally:
        await _drop_database(pg_server_dsn, name)


@pytest.fixture
async def empty_db_dsn(pg_server_dsn: str) -> AsyncIterator[str]:
    """DSN of a fresh database with nothing in it (for migration tests)."""
    name, dsn = await _fresh_database(pg_server_dsn, "template0")
    try:
        yield dsn
    finally:
        await _drop_database(pg_server_dsn, name)


@pytest.fixture
async def conn(db_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection to this test's database (jsonb as Python objects)."""
    from prebookd.db.connection import connect

    connection = await connect(db_dsn)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
async def make_sim() -> AsyncIterator[Callable[..., Awaitable[Simulator]]]:
    """Start simulators (keyword arguments as for Simulator); all stop after the test."""
    started: list[Simulator] = []

    async def make(**options: Any) -> Simulator:
        simulator = Simulator(**options)
        await simulator.start()
        started.append(simulator)
        return simulator

    try:
        yield make
    finally:
        for simulator in started:
            await simulator.stop()


@pytest.fixture
async def sim(make_sim: Callable[..., Awaitable[Simulator]]) -> Simulator:
    """The AimHarder simulator on loopback, with room for everyone by default."""
    return await make_sim(default_capacity=1000)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain HTTP client. No cookie jar: each request carries its member's cookies
    explicitly (read from Set-Cookie where it matters), as prebookd does."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


@pytest.fixture
async def own_postgres() -> AsyncIterator[EmbeddedPostgres]:
    """A migrated Postgres of this test's own, to stop and start at will."""
    folder = Path(tempfile.mkdtemp(prefix="prebookd-own-pg-"))
    server = await asyncio.to_thread(start_embedded, folder)
    conn = await connect(server.dsn)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    try:
        yield server
    finally:
        await start_postgres(server)  # stopped by the test, perhaps
        await asyncio.to_thread(server.stop)
        shutil.rmtree(folder, ignore_errors=True)
