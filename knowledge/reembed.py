"""Re-embedding the stored vectors when the configured embedding model (or its runtime) changes, without downtime
for reads.

`embedding_identity` (migration 0015) records which model made the vectors in `kb_chunks.embedding` and
`past_resolutions.embedding`. When the configured embedder is another one, `reembed`:

1. adds an `embedding_next vector(<new dimension>)` column to both tables (a catalog change, no rewrite);
2. fills it batch by batch from the rows' texts (what the loader embeds: a chunk's title and passage, a
   resolution's ticket text) while every reader keeps searching `embedding` and its HNSW index;
3. builds an HNSW index on it (`CREATE INDEX CONCURRENTLY`: writers are not blocked either);
4. switches in one transaction: writers wait (SHARE ROW EXCLUSIVE) while rows added meanwhile are embedded, then
   the old column goes, `embedding_next` becomes `embedding`, its index takes the old index's name, the identity is
   recorded and `knowledge_version` is bumped (the classifier refits, escalations get another look). A reader sees
   the old vectors up to that commit and the new ones after it, never a mix; readers wait only for the catalog
   swap and the NOT NULL check (one scan of each table).

The dropped column's bytes stay in the rows until they are rewritten (`VACUUM FULL` reclaims them at once).

Retrieval SQL never names the new column: after the switch the column and index have their old names. A re-embed
interrupted before the switch resumes where it stopped (the filled rows are kept for the same target identity).
One re-embed runs at a time (an advisory lock); a second caller waits and then finds nothing to do.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from knowledge.embedder import Embedder, embed
from knowledge.store import bump_knowledge_version

log = logging.getLogger(__name__)

# Tables whose `embedding` follows the model, and the text each row's vector is made from (as knowledge.loader
# embeds it: `PendingArticle.embed_texts`, a resolution's ticket text).
EMBEDDED_TABLES: tuple[tuple[str, str], ...] = (
    ("kb_chunks", "title || E'\\n\\n' || content"),
    ("past_resolutions", "ticket_text"),
)
BATCH_ROWS = 256
# HNSW build parameters: the same as migration 0003's indexes.
HNSW_OPTIONS = "WITH (m = 16, ef_construction = 64)"
_LOCK_KEY = 0x6465736B_7265656D & 0x7FFFFFFFFFFFFFFF  # "deskreem"

ReembedProgress = Callable[[str, int], None]


@dataclass(frozen=True)
class EmbeddingIdentity:
    """What made a set of vectors: the embedder's name (with its runtime, e.g. `all-MiniLM-L6-v2+onnx-int8`) and
    its dimension. Vectors of two identities are not comparable, even at the same dimension."""

    model: str
    dimension: int

    @classmethod
    def of(cls, embedder: Embedder) -> EmbeddingIdentity:
        return cls(embedder.name, int(embedder.dimension))

    def __str__(self) -> str:
        return f"{self.model} ({self.dimension}-d)"


async def stored_identity(conn: Any) -> EmbeddingIdentity:
    row = await conn.fetchrow("SELECT model, dimension FROM embedding_identity")
    return EmbeddingIdentity(row["model"], int(row["dimension"]))


@dataclass
class ReembedReport:
    previous: EmbeddingIdentity
    current: EmbeddingIdentity
    rows: dict[str, int]
    switched: bool
    knowledge_version: int | None
    seconds: float

    def summary(self) -> str:
        if not self.switched:
            return f"the stored vectors are already {self.current}: nothing to re-embed"
        if self.knowledge_version is None:
            return f"nothing stored yet: vectors will be {self.current}"
        counts = ", ".join(f"{n} {table}" for table, n in self.rows.items())
        return (
            f"re-embedded {counts} from {self.previous} to {self.current} in {self.seconds:.1f}s; "
            f"knowledge version {self.knowledge_version}"
        )


async def reembed_needed(conn: Any, embedder: Embedder) -> bool:
    return await stored_identity(conn) != EmbeddingIdentity.of(embedder)


async def reembed(
    conn: Any,
    embedder: Embedder,
    *,
    batch_rows: int = BATCH_ROWS,
    progress: ReembedProgress | None = None,
    before_switch: Callable[[], Any] | None = None,
) -> ReembedReport:
    """Re-embed every stored chunk and resolution with `embedder` and switch to its vectors atomically, unless the
    stored vectors are already its own. `conn` must not be inside a transaction (the index is built concurrently).
    `before_switch` (tests) is awaited after the new column is filled and indexed, before the switch."""
    started = time.perf_counter()
    target = EmbeddingIdentity.of(embedder)
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        previous = await stored_identity(conn)
        if previous == target:
            return ReembedReport(previous, target, {}, False, None, time.perf_counter() - started)
        if previous.dimension == target.dimension and await _nothing_stored(conn):
            # A new database (or an emptied one): nothing to encode, no column to change; record the model.
            await _record(conn, target)
            return ReembedReport(previous, target, {}, True, None, time.perf_counter() - started)
        log.info("re-embedding the knowledge base: %s -> %s", previous, target)
        await _prepare(conn, target)
        rows: dict[str, int] = {}
        for table, text_sql in EMBEDDED_TABLES:
            rows[table] = await _fill(conn, embedder, table, text_sql, batch_rows, progress)
        for table, _ in EMBEDDED_TABLES:
            await _build_index(conn, table)
            # Rows written while the index was built: embedded now, so the switch finds few or none to do.
            rows[table] += await _fill(conn, embedder, table, dict(EMBEDDED_TABLES)[table], batch_rows, progress)
        if before_switch is not None:
            await before_switch()
        version = await _switch(conn, embedder, target, rows)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    report = ReembedReport(previous, target, rows, True, version, time.perf_counter() - started)
    log.info("%s", report.summary())
    return report


async def _prepare(conn: Any, target: EmbeddingIdentity) -> None:
    """`embedding_next vector(<dimension>)` on both tables, empty unless an interrupted run had the same target."""
    pending = await conn.fetchrow("SELECT pending_model, pending_dimension FROM embedding_identity")
    resume = pending["pending_model"] == target.model and pending["pending_dimension"] == target.dimension
    async with conn.transaction():
        for table, _ in EMBEDDED_TABLES:
            if not resume:
                await conn.execute(f"ALTER TABLE {table} DROP COLUMN IF EXISTS embedding_next")
            await conn.execute(
                f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS embedding_next vector({int(target.dimension)})"
            )
            # Inline like `embedding` (migration 0008): every exact scan and rank reads it.
            await conn.execute(f"ALTER TABLE {table} ALTER COLUMN embedding_next SET STORAGE MAIN")
        await conn.execute(
            "UPDATE embedding_identity SET pending_model = $1, pending_dimension = $2",
            target.model,
            target.dimension,
        )


async def _fill(
    conn: Any,
    embedder: Embedder,
    table: str,
    text_sql: str,
    batch_rows: int,
    progress: ReembedProgress | None,
) -> int:
    """Embed the rows whose `embedding_next` is empty, a batch at a time, until none is left (rows written
    meanwhile included). Each batch commits on its own: readers and writers are never held."""
    done = 0
    while True:
        batch = await conn.fetch(
            f"SELECT id, {text_sql} AS text FROM {table} WHERE embedding_next IS NULL ORDER BY id LIMIT $1",
            batch_rows,
        )
        if not batch:
            return done
        vectors = await embed(embedder, [row["text"] for row in batch])
        await _write(conn, table, [row["id"] for row in batch], vectors)
        done += len(batch)
        if progress is not None:
            progress(table, done)


async def _write(conn: Any, table: str, ids: list[Any], vectors: np.ndarray) -> None:
    async with conn.transaction():
        await conn.execute("CREATE TEMP TABLE reembed_stage (id uuid, embedding vector) ON COMMIT DROP")
        await conn.copy_records_to_table(
            "reembed_stage",
            records=[(i, np.asarray(v, dtype=np.float32)) for i, v in zip(ids, vectors, strict=True)],
        )
        await conn.execute(f"UPDATE {table} t SET embedding_next = s.embedding FROM reembed_stage s WHERE t.id = s.id")


async def _build_index(conn: Any, table: str) -> None:
    index = f"{table}_embedding_next_idx"
    # An interrupted concurrent build leaves an invalid index behind: drop it and build again.
    invalid = await conn.fetchval("SELECT NOT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)", index)
    if invalid:
        await conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {index}")
    await conn.execute(
        f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {index} ON {table} "
        f"USING hnsw (embedding_next vector_cosine_ops) {HNSW_OPTIONS}"
    )


async def _switch(conn: Any, embedder: Embedder, target: EmbeddingIdentity, rows: dict[str, int]) -> int:
    async with conn.transaction():
        # Writers wait from here to the commit; readers go on using the old column until the catalog swap below.
        await conn.execute("LOCK TABLE " + ", ".join(t for t, _ in EMBEDDED_TABLES) + " IN SHARE ROW EXCLUSIVE MODE")
        for table, text_sql in EMBEDDED_TABLES:
            late = await conn.fetch(f"SELECT id, {text_sql} AS text FROM {table} WHERE embedding_next IS NULL")
            if late:
                await _write(conn, table, [r["id"] for r in late], await embed(embedder, [r["text"] for r in late]))
                rows[table] = rows.get(table, 0) + len(late)
        for table, _ in EMBEDDED_TABLES:
            # DROP COLUMN takes the old HNSW index with it; the new one is renamed to the old name.
            await conn.execute(f"ALTER TABLE {table} DROP COLUMN embedding")
            await conn.execute(f"ALTER TABLE {table} RENAME COLUMN embedding_next TO embedding")
            await conn.execute(f"ALTER TABLE {table} ALTER COLUMN embedding SET NOT NULL")
            await conn.execute(f"ALTER INDEX {table}_embedding_next_idx RENAME TO {table}_embedding_idx")
        await _record(conn, target)
        return await bump_knowledge_version(conn)


async def _nothing_stored(conn: Any) -> bool:
    pending = await conn.fetchval("SELECT pending_model FROM embedding_identity")
    empty = " AND ".join(f"NOT EXISTS (SELECT FROM {table})" for table, _ in EMBEDDED_TABLES)
    return pending is None and bool(await conn.fetchval(f"SELECT {empty}"))


async def _record(conn: Any, target: EmbeddingIdentity) -> None:
    await conn.execute(
        """
        UPDATE embedding_identity
           SET model = $1, dimension = $2, pending_model = NULL, pending_dimension = NULL, changed_at = now()
        """,
        target.model,
        target.dimension,
    )
