import asyncpg


async def test_template_has_tables(conn: asyncpg.Connection) -> None:
    tables = {r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")}
    assert {"boxes", "auth_sessions", "prebookings", "prebookd_migrations"} <= tables
