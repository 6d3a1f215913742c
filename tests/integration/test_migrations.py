"""The migration runner: fresh database, re-run, concurrent runners, and the checks that protect history."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from pathlib import Path

import asyncpg
import pytest

from core import db


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
        versions = [r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations ORDER BY 1")]
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


OUT_OF_LINE = """
    SELECT count(pg_column_toast_chunk_id(embedding)) AS embedding, count(pg_column_toast_chunk_id(tsv)) AS tsv
    FROM {table}
"""


async def test_search_columns_live_in_the_row_for_new_and_migrated_rows(pg_admin_url: str, tmp_path: Path) -> None:
    """Every search reads `embedding` and `tsv`: out of line in TOAST they cost a fetch per row scanned."""
    url = fresh_database(pg_admin_url)
    inline = next(m for m in db.discover_migrations() if m.name == "0008_inline_search_columns.sql")
    for migration in db.discover_migrations():
        if migration.version < inline.version:
            (tmp_path / migration.name).write_text(migration.sql, encoding="utf-8")
    # A ticket-length text of distinct words (what compresses well stays inline anyway): with a 384-d vector the
    # row crosses the 2 kB TOAST threshold.
    words = " ".join(hashlib.sha1(str(i).encode()).hexdigest()[:10] for i in range(90))
    vector = "[" + ",".join(["0.05"] * 384) + "]"

    async def add_rows(conn: asyncpg.Connection, tag: str) -> None:
        await conn.execute(
            """INSERT INTO past_resolutions (source, content_hash, ticket_text, resolution, embedding)
               VALUES ('history', $1, $2, $3, $4::vector)""",
            tag,
            f"{tag} {words}",
            words,
            vector,
        )
        document = await conn.fetchval(
            "INSERT INTO kb_documents (source, content_hash) VALUES ($1, $1) RETURNING id", tag
        )
        await conn.execute(
            "INSERT INTO kb_chunks (document_id, seq, content, embedding) VALUES ($1, 0, $2, $3::vector)",
            document,
            f"{tag} {words}",
            vector,
        )

    conn = await asyncpg.connect(url)
    try:
        await db.apply_migrations(conn, tmp_path)
        await add_rows(conn, "before")
        # Without the migration both columns of the row written above went out of line.
        for table in ("past_resolutions", "kb_chunks"):
            assert dict(await conn.fetchrow(OUT_OF_LINE.format(table=table))) == {"embedding": 1, "tsv": 1}
        assert (await db.apply_migrations(conn))[0] == inline.name
        await add_rows(conn, "after")
        for table in ("past_resolutions", "kb_chunks"):
            assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 2
            assert dict(await conn.fetchrow(OUT_OF_LINE.format(table=table))) == {"embedding": 0, "tsv": 0}
    finally:
        await conn.close()


PENDING = "SELECT n_pending_pages, n_pending_tuples FROM gin_metapage_info(get_raw_page($1, 0))"


async def test_full_text_indexes_keep_a_small_pending_list_and_bulk_loads_merge_it(pg_admin_url: str) -> None:
    """Every search reads a GIN index's whole pending list: it stays within 64 kB, and a bulk load leaves none."""
    from knowledge.store import refresh_statistics

    url = fresh_database(pg_admin_url)
    await db.migrate(url)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pageinspect")
        for index in ("past_resolutions_tsv_idx", "kb_chunks_tsv_idx"):
            options = await conn.fetchval("SELECT reloptions FROM pg_class WHERE relname = $1", index)
            assert options == ["gin_pending_list_limit=64"], index
        vector = "[" + ",".join(["0.05"] * 384) + "]"
        pending_pages = []
        for i in range(200):
            # Ticket-length rows of distinct words, one statement each: what a trickle of resolved tickets adds.
            words = " ".join(hashlib.sha1(f"{i}-{j}".encode()).hexdigest()[:9] for j in range(80))
            await conn.execute(
                """INSERT INTO past_resolutions (source, content_hash, ticket_text, resolution, embedding)
                   VALUES ('history', $1, $2, 'answer', $3::vector)""",
                str(i),
                words,
                vector,
            )
            pending_pages.append((await conn.fetchrow(PENDING, "past_resolutions_tsv_idx"))["n_pending_pages"])
        # The list is used (inserts stay cheap) and merged whenever it passes 64 kB (8 pages), never growing
        # to the 4 MB default: 200 such rows are ~1.5 MB of entries.
        assert max(pending_pages) > 0
        assert max(pending_pages) <= 9
        assert pending_pages.count(0) < len(pending_pages) // 2
        await refresh_statistics(conn)
        assert dict(await conn.fetchrow(PENDING, "past_resolutions_tsv_idx")) == {
            "n_pending_pages": 0,
            "n_pending_tuples": 0,
        }
    finally:
        await conn.close()
