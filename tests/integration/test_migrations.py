"""The migration runner: fresh database, re-run, concurrent runners, and the checks that protect history."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import asyncpg
import pytest

from app import db


def fresh_database(pg_admin_url: str) -> str:
    name = f"deskpilot_mig_{uuid.uuid4().hex[:8]}"
    db._ensure_database(pg_admin_url, name)
    return pg_admin_url.replace("/postgres?", f"/{name}?")


async def test_fresh_then_rerun(pg_admin_url: str) -> None:
    url = fresh_database(pg_admin_url)
    applied = await db.migrate(url)
    assert applied == [m.name for m in db.discover_migrations()]
    assert applied[0] == "0001_extensions.sql"
    assert await db.migrate(url) == []
    conn = await asyncpg.connect(url)
    try:
        versions = [
            r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations ORDER BY 1")
        ]
        assert versions == [m.version for m in db.discover_migrations()]
        assert await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
    finally:
        await conn.close()


async def test_two_concurrent_runners_apply_each_migration_once(pg_admin_url: str) -> None:
    url = fresh_database(pg_admin_url)
    first, second = await asyncio.gather(db.migrate(url), db.migrate(url))
    everything = [m.name for m in db.discover_migrations()]
    assert sorted(first + second) == sorted(everything)  # one did all the work, the other found nothing to do
    assert [] in (first, second)


async def test_failed_migration_rolls_back_and_stops(pg_admin_url: str, tmp_path: Path) -> None:
    url = fresh_database(pg_admin_url)
    (tmp_path / "0001_ok.sql").write_text("CREATE TABLE ok_table (id int);")
    (tmp_path / "0002_broken.sql").write_text("CREATE TABLE half_done (id int); SELECT no_such_function();")
    conn = await asyncpg.connect(url)
    try:
        with pytest.raises(asyncpg.UndefinedFunctionError):
            await db.apply_migrations(conn, tmp_path)
        assert await conn.fetchval("SELECT to_regclass('ok_table') IS NOT NULL")
        assert await conn.fetchval("SELECT to_regclass('half_done') IS NULL")  # its transaction rolled back
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == 1
        # an applied migration edited afterwards is refused
        (tmp_path / "0002_broken.sql").unlink()
        (tmp_path / "0001_ok.sql").write_text("CREATE TABLE ok_table (id bigint);")
        with pytest.raises(db.MigrationError, match="changed after it was applied"):
            await db.apply_migrations(conn, tmp_path)
    finally:
        await conn.close()


def test_badly_named_migration_is_refused(tmp_path: Path) -> None:
    (tmp_path / "1_short.sql").write_text("SELECT 1;")
    with pytest.raises(db.MigrationError, match=r"0001_name\.sql"):
        db.discover_migrations(tmp_path)
