"""Changing the embedding model: the stored vectors are re-embedded into a column of the new dimension while reads
go on using the old one, and the switch (columns, index, identity, knowledge version) is one transaction."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
import numpy as np
import pytest

from core import db
from core.settings import Settings
from knowledge import reembed as reembed_module
from knowledge import store
from knowledge.embedder import EmbeddingDimensionError, check_dimension, get_embedder, vector_column_dimensions
from knowledge.reembed import EmbeddingIdentity, reembed, reembed_needed, stored_identity
from knowledge.retrieval import search


class HashEmbedder:
    """Deterministic unit vectors per text: a query for a stored text finds that text at similarity 1."""

    def __init__(self, name: str, dimension: int, delay_s: float = 0.0) -> None:
        self.name = name
        self.dimension = dimension
        self.delay_s = delay_s
        self.calls = 0

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        import time

        self.calls += 1
        time.sleep(self.delay_s)  # runs in a worker thread (`embed`): the event loop's readers go on meanwhile
        rows = []
        for text in texts:
            seed = int(hashlib.sha256(f"{self.name}:{text}".encode()).hexdigest()[:8], 16)
            vector = np.random.default_rng(seed).standard_normal(self.dimension).astype(np.float32)
            rows.append(vector / np.linalg.norm(vector))
        return np.stack(rows) if rows else np.zeros((0, self.dimension), dtype=np.float32)


OLD = HashEmbedder("all-MiniLM-L6-v2", 384)
TICKETS = [f"ticket {i}: the export fails with error {i * 7}" for i in range(40)]


@pytest.fixture
async def own_pool(pg_admin_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A database of the test's own: a re-embed changes the schema, which the session database must keep."""
    name = f"deskpilot_reembed_{uuid.uuid4().hex[:8]}"
    db._ensure_database(pg_admin_url, name)
    url = pg_admin_url.replace("/postgres?", f"/{name}?")
    await db.migrate(url)
    pool = await db.create_pool(url, Settings(db_pool_min=1, db_pool_max=6))
    yield pool
    await pool.close()


async def fill(pool: asyncpg.Pool, embedder: Any, tickets: Sequence[str] = TICKETS) -> None:
    async with pool.acquire() as conn:
        await store.insert_resolutions(
            conn,
            [
                store.ResolutionRow(ticket_text=t, resolution=f"answer to {t}", embedding=v, category="technical")
                for t, v in zip(tickets, embedder.encode(tickets), strict=True)
            ],
        )
        chunks = [store.ChunkRow(seq=0, title="Exports", content="Exports time out on large files.")]
        await store.upsert_document(
            conn,
            source="kb/exports.md",
            title="Exports",
            content_hash="h1",
            category=None,
            metadata={},
            chunks=chunks,
            embeddings=embedder.encode([f"{c.title}\n\n{c.content}" for c in chunks]),
        )


async def top_ticket(pool: asyncpg.Pool, embedder: Any, text: str) -> tuple[str, float]:
    async with pool.acquire() as conn:
        hits = await search(
            conn, query_embedding=embedder.encode([text])[0], query_text="zzz", kinds=("resolution",), k=3
        )
    assert hits[0].similarity is not None
    return hits[0].text, hits[0].similarity


def exactly(hit: tuple[str, float], text: str) -> bool:
    """The hit is `text` itself at cosine 1: the query and the stored vector came from the same model."""
    return hit[0] == text and abs(hit[1] - 1.0) < 1e-5


async def vector_plan(pool: asyncpg.Pool, table: str, vector: np.ndarray) -> str:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL enable_seqscan = off")
        rows = await conn.fetch(f"EXPLAIN SELECT id FROM {table} ORDER BY embedding <=> $1 LIMIT 5", vector)
    return "\n".join(r[0] for r in rows)


async def test_a_512_d_model_is_stored_and_searched_after_the_re_embed(own_pool: asyncpg.Pool) -> None:
    use = get_embedder("multilingual-use")
    assert use.dimension == 512
    english = ["My printer does not print anything", "I was charged twice for my invoice", "How do I reset a password"]
    await fill(own_pool, OLD, english)
    async with own_pool.acquire() as conn:
        version_before = await store.knowledge_version(conn)
        assert await reembed_needed(conn, use)
        with pytest.raises(EmbeddingDimensionError, match="deskpilot kb reembed"):
            await check_dimension(conn, use)

        report = await reembed(conn, use)

        assert report.switched and report.rows == {"kb_chunks": 1, "past_resolutions": 3}
        assert await stored_identity(conn) == EmbeddingIdentity("multilingual-use", 512)
        assert await vector_column_dimensions(conn) == {"kb_chunks.embedding": 512, "past_resolutions.embedding": 512}
        assert await store.knowledge_version(conn) == version_before + 1 == report.knowledge_version
        await check_dimension(conn, use)
        assert not await reembed_needed(conn, use)
        assert not (await reembed(conn, use)).switched  # a second run has nothing to do
        # A write after the switch takes the new model's vectors.
        await store.upsert_resolution(
            conn,
            ticket_text="The app crashes when I upload a photo",
            resolution="Update to 4.2",
            source="history",
            embedding=use.encode(["The app crashes when I upload a photo"])[0],
        )

    # A German ticket finds its English counterpart: the multilingual model's vectors are the ones searched.
    text, similarity = await top_ticket(own_pool, use, "Mein Drucker druckt überhaupt nichts")
    assert text == "My printer does not print anything"
    assert similarity > 0.5
    query = use.encode(["Die App stürzt beim Hochladen eines Fotos ab"])[0]
    assert (await top_ticket(own_pool, use, "Die App stürzt beim Hochladen eines Fotos ab"))[0].startswith("The app")
    # Retrieval still goes through the HNSW indexes, which kept their names.
    assert "past_resolutions_embedding_idx" in await vector_plan(own_pool, "past_resolutions", query)
    assert "kb_chunks_embedding_idx" in await vector_plan(own_pool, "kb_chunks", query)


async def test_reads_use_the_old_vectors_until_the_switch_and_rows_written_meanwhile_are_re_embedded(
    own_pool: asyncpg.Pool,
) -> None:
    await fill(own_pool, OLD)
    new = HashEmbedder("multilingual-use", 512, delay_s=0.1)
    reads: list[tuple[str, float]] = []
    filling = asyncio.Event()
    stop = asyncio.Event()

    async def reader() -> None:
        while not stop.is_set():
            reads.append(await top_ticket(own_pool, OLD, TICKETS[7]))
            filling.set()
            await asyncio.sleep(0)

    async def before_switch() -> None:
        stop.set()
        await reading
        async with own_pool.acquire() as conn:
            # Filled and indexed, not switched: the old identity, the old column, the old version.
            assert await stored_identity(conn) == EmbeddingIdentity("all-MiniLM-L6-v2", 384)
            assert (await vector_column_dimensions(conn))["past_resolutions.embedding"] == 384
            # A writer still on the old model adds a resolution now; the switch must embed it too.
            await store.upsert_resolution(
                conn,
                ticket_text="late ticket about refunds",
                resolution="refunded",
                source="history",
                embedding=OLD.encode(["late ticket about refunds"])[0],
            )
        assert exactly(await top_ticket(own_pool, OLD, TICKETS[3]), TICKETS[3])

    reading = asyncio.create_task(reader())
    await asyncio.wait_for(filling.wait(), 30)
    async with own_pool.acquire() as conn:
        report = await reembed(conn, new, batch_rows=8, before_switch=before_switch)

    assert new.calls >= 5  # several batches, with reads between them
    assert len(reads) >= 5
    assert all(exactly(read, TICKETS[7]) for read in reads)
    assert report.rows["past_resolutions"] == len(TICKETS) + 1
    late = "late ticket about refunds"
    assert exactly(await top_ticket(own_pool, new, late), late)
    assert exactly(await top_ticket(own_pool, new, TICKETS[7]), TICKETS[7])
    with pytest.raises(asyncpg.DataError, match="different vector dimensions"):
        await top_ticket(own_pool, OLD, TICKETS[7])


async def test_a_failed_switch_changes_nothing_and_the_next_run_resumes(
    own_pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    await fill(own_pool, OLD)
    new = HashEmbedder("multilingual-e5-small", 384)

    async def fail(conn: Any) -> int:
        raise RuntimeError("the switch fails at its last statement")

    monkeypatch.setattr(reembed_module, "bump_knowledge_version", fail)
    async with own_pool.acquire() as conn:
        version = await store.knowledge_version(conn)
        with pytest.raises(RuntimeError, match="last statement"):
            await reembed(conn, new)
        # The whole switch rolled back: old identity, old column and index serving reads, version unchanged.
        assert await stored_identity(conn) == EmbeddingIdentity("all-MiniLM-L6-v2", 384)
        assert await store.knowledge_version(conn) == version
    assert exactly(await top_ticket(own_pool, OLD, TICKETS[5]), TICKETS[5])
    assert "past_resolutions_embedding_idx" in await vector_plan(own_pool, "past_resolutions", OLD.encode(["x"])[0])

    monkeypatch.undo()
    new.calls = 0
    async with own_pool.acquire() as conn:
        report = await reembed(conn, new)
        assert await store.knowledge_version(conn) == version + 1
    assert report.switched
    assert new.calls == 0  # every row was filled by the failed run: only the switch was left
    assert exactly(await top_ticket(own_pool, new, TICKETS[5]), TICKETS[5])
    # Same dimension, other model: the old model's query no longer finds the row exactly.
    assert (await top_ticket(own_pool, OLD, TICKETS[5]))[1] < 0.5


@pytest.fixture
async def own_url(pg_admin_url: str) -> str:
    name = f"deskpilot_reembed_{uuid.uuid4().hex[:8]}"
    db._ensure_database(pg_admin_url, name)
    url = pg_admin_url.replace("/postgres?", f"/{name}?")
    await db.migrate(url)
    pool = await db.create_pool(url, Settings())
    try:
        await fill(pool, OLD)
    finally:
        await pool.close()
    return url


async def identity_at(url: str) -> EmbeddingIdentity:
    async with db.pool_for(url, Settings()) as pool, pool.acquire() as conn:
        return await stored_identity(conn)


async def test_startup_re_embeds_first_when_the_dimension_changes(
    own_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from app.cli.kb import reembed_on_start

    thread = await asyncio.to_thread(reembed_on_start, own_url, Settings(embedding_model="multilingual-use"))

    assert thread is None  # done before serving: 384-d vectors cannot answer 512-d queries
    assert await identity_at(own_url) == EmbeddingIdentity("multilingual-use", 512)
    err = capsys.readouterr().err
    assert "re-embedding the knowledge base before starting" in err
    assert "deskpilot kb reembed" in err
    assert "re-embedded 1 kb_chunks, 40 past_resolutions" in err


async def test_startup_re_embeds_in_the_background_when_the_dimension_is_the_same(
    own_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from app.cli.kb import reembed_on_start

    settings = Settings(embedding_model="multilingual-e5-small")
    thread = await asyncio.to_thread(reembed_on_start, own_url, settings)

    assert thread is not None
    assert "searches use the old vectors until it switches" in capsys.readouterr().err
    await asyncio.to_thread(thread.join, 300)
    assert await identity_at(own_url) == EmbeddingIdentity("multilingual-e5-small", 384)
    assert await asyncio.to_thread(reembed_on_start, own_url, settings) is None  # nothing left to do


async def test_the_routing_models_refit_on_the_re_embedded_vectors(own_pool: asyncpg.Pool) -> None:
    from agent.triage.classifier import RoutingModelCache

    await fill(own_pool, OLD)
    cache = RoutingModelCache()
    assert (await cache.get(own_pool, block=True)).example_embeddings.shape[1] == 384
    async with own_pool.acquire() as conn:
        await reembed(conn, HashEmbedder("multilingual-use", 512))

    # Same rows, same counts: only the identity's change tells the cache that every vector is new.
    models = await cache.get(own_pool, block=True)
    assert models.example_embeddings.shape == (len(TICKETS), 512)


async def test_an_empty_store_records_a_model_of_the_same_dimension_without_touching_the_columns(
    own_pool: asyncpg.Pool,
) -> None:
    column = "SELECT attnum FROM pg_attribute WHERE attrelid = 'past_resolutions'::regclass AND attname = 'embedding'"
    async with own_pool.acquire() as conn:
        attnum, version = await conn.fetchval(column), await store.knowledge_version(conn)
        report = await reembed(conn, HashEmbedder("all-MiniLM-L6-v2+onnx-int8", 384))

        assert report.switched and report.knowledge_version is None
        assert report.summary() == "nothing stored yet: vectors will be all-MiniLM-L6-v2+onnx-int8 (384-d)"
        assert await stored_identity(conn) == EmbeddingIdentity("all-MiniLM-L6-v2+onnx-int8", 384)
        assert (await conn.fetchval(column), await store.knowledge_version(conn)) == (attnum, version)


def test_the_reembed_command_switches_once_and_then_has_nothing_to_do(own_url: str, tmp_path: Any) -> None:
    from click.testing import CliRunner

    from app.cli import main

    env = {
        "DESKPILOT_DATABASE_URL": own_url,
        "DESKPILOT_DATA_DIR": str(tmp_path),
        "DESKPILOT_EMBEDDING_MODEL": "multilingual-use",
    }
    first = CliRunner().invoke(main, ["kb", "reembed"], env=env, catch_exceptions=False)
    again = CliRunner().invoke(main, ["kb", "reembed"], env=env, catch_exceptions=False)

    assert first.exit_code == 0, first.output
    assert "re-embedded 1 kb_chunks, 40 past_resolutions from all-MiniLM-L6-v2 (384-d) to multilingual-use (512-d)" in (
        first.output
    )
    assert again.exit_code == 0, again.output
    assert "already multilingual-use (512-d): nothing to re-embed" in again.output
