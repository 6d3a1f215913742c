"""pgvector storage of KB documents, their chunks and past resolutions; changes bump `knowledge_version`."""

from __future__ import annotations

import hashlib
import json
import logging
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from uuid import UUID, uuid5

import asyncpg
import numpy as np

log = logging.getLogger(__name__)

ResolutionSource = Literal["history", "resolved_ticket", "reviewer_approved"]
RESOLUTION_SOURCES: tuple[str, ...] = ("history", "resolved_ticket", "reviewer_approved")
CATEGORIES: tuple[str, ...] = ("billing", "technical", "onboarding", "general")
PRIORITIES: tuple[str, ...] = ("low", "normal", "high", "urgent")


def content_hash(*parts: str | None) -> str:
    """A stable digest of text parts, NFC and whitespace-collapsed: cosmetic re-exports are not changes."""
    digest = hashlib.sha256()
    for part in parts:
        normalized = " ".join(unicodedata.normalize("NFC", part or "").split())
        digest.update(normalized.encode("utf-8"))
        digest.update(b"\x1f")
    return digest.hexdigest()


def resolution_hash(ticket_text: str, resolution: str) -> str:
    return content_hash("resolution", ticket_text, resolution)


# Chunks and past resolutions are identified by what they hold (a UUID derived from their content), not by a
# random one: searches break ties in score by id, so the same help centre and history loaded into two databases
# (two runs of `deskpilot eval`, a replica) rank, read and answer alike.
_CONTENT_IDS = UUID("6f1c2d0e-5b7a-4f43-9a55-3d8e1c2b7a10")


def chunk_id(document_hash: str, source: str, seq: int) -> UUID:
    return uuid5(_CONTENT_IDS, f"chunk\x1f{source}\x1f{seq}\x1f{document_hash}")


def resolution_id(digest: str) -> UUID:
    return uuid5(_CONTENT_IDS, f"resolution\x1f{digest}")


# --- knowledge version --------------------------------------------------------------------------------------


async def bump_knowledge_version(conn: Any) -> int:
    """Record that the KB or the resolution history changed; call it in the transaction that changed it."""
    version: int = await conn.fetchval(
        "UPDATE knowledge_version SET version = version + 1, changed_at = now() RETURNING version"
    )
    return version


async def knowledge_version(conn: Any) -> int:
    version: int | None = await conn.fetchval("SELECT version FROM knowledge_version")
    return int(version or 0)


# --- documents and chunks -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChunkRow:
    """A chunk as stored: `title` is the document title with the section path, `content` the passage."""

    seq: int
    title: str
    content: str


async def document_hashes(conn: Any, sources: Sequence[str]) -> dict[str, str]:
    """source -> content_hash of the documents already stored under those sources."""
    if not sources:
        return {}
    rows = await conn.fetch(
        "SELECT source, content_hash FROM kb_documents WHERE source = ANY($1::text[])", list(sources)
    )
    return {row["source"]: row["content_hash"] for row in rows}


async def upsert_document(
    conn: Any,
    *,
    source: str,
    title: str,
    content_hash: str,
    category: str | None,
    metadata: Mapping[str, Any],
    chunks: Sequence[ChunkRow],
    embeddings: np.ndarray,
) -> UUID:
    """Create or replace the document stored under `source` together with all of its chunks."""
    if len(chunks) != len(embeddings):
        raise ValueError(f"{len(chunks)} chunks but {len(embeddings)} embeddings")
    async with conn.transaction():
        document_id: UUID = await conn.fetchval(
            """
            INSERT INTO kb_documents (source, title, content_hash, category, metadata)
            VALUES ($1, $2, $3, $4, $5)
            ON CONFLICT (source) DO UPDATE
               SET title = EXCLUDED.title, content_hash = EXCLUDED.content_hash,
                   category = EXCLUDED.category, metadata = EXCLUDED.metadata, updated_at = now()
            RETURNING id
            """,
            source,
            title,
            content_hash,
            category,
            dict(metadata),
        )
        await conn.execute("DELETE FROM kb_chunks WHERE document_id = $1", document_id)
        if chunks:
            # COPY: one-row INSERTs into an HNSW-indexed table are an order of magnitude slower.
            await conn.copy_records_to_table(
                "kb_chunks",
                columns=("id", "document_id", "seq", "title", "content", "embedding"),
                records=[
                    (
                        chunk_id(content_hash, source, chunk.seq),
                        document_id,
                        chunk.seq,
                        chunk.title,
                        chunk.content,
                        _vector(vector),
                    )
                    for chunk, vector in zip(chunks, embeddings, strict=True)
                ],
            )
        await bump_knowledge_version(conn)
    return document_id


async def document_sources_under(conn: Any, prefix: str) -> list[str]:
    """Stored sources equal to `prefix` or starting with it (compared literally, no LIKE wildcards)."""
    rows = await conn.fetch(
        "SELECT source FROM kb_documents WHERE left(source, length($1)) = $1 ORDER BY source", prefix
    )
    return [row["source"] for row in rows]


async def delete_documents(conn: Any, sources: Iterable[str]) -> int:
    """Delete documents (their chunks go with them); returns how many existed."""
    source_list = list(sources)
    if not source_list:
        return 0
    async with conn.transaction():
        deleted = await conn.fetch("DELETE FROM kb_documents WHERE source = ANY($1::text[]) RETURNING id", source_list)
        if deleted:
            await bump_knowledge_version(conn)
    return len(deleted)


# --- past resolutions ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResolutionRow:
    """One past resolution ready to store; `content_hash` is `resolution_hash(ticket_text, resolution)`."""

    ticket_text: str
    resolution: str
    embedding: np.ndarray
    source: ResolutionSource = "history"
    source_ref: str | None = None
    category: str | None = None
    priority: str | None = None
    intent: str | None = None
    tags: Sequence[str] = ()
    language: str | None = None
    ticket_id: UUID | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def content_hash(self) -> str:
        return resolution_hash(self.ticket_text, self.resolution)


async def existing_resolution_hashes(conn: Any, hashes: Sequence[str]) -> set[str]:
    """Which of `hashes` are stored already: checked before encoding, so unchanged input embeds nothing."""
    if not hashes:
        return set()
    rows = await conn.fetch(
        "SELECT content_hash FROM past_resolutions WHERE content_hash = ANY($1::text[])", list(hashes)
    )
    return {row["content_hash"] for row in rows}


async def upsert_resolution(
    conn: Any,
    *,
    ticket_text: str,
    resolution: str,
    category: str | None = None,
    priority: str | None = None,
    intent: str | None = None,
    tags: Sequence[str] = (),
    language: str | None = None,
    source: ResolutionSource,
    source_ref: str | None = None,
    ticket_id: UUID | None = None,
    metadata: Mapping[str, Any] | None = None,
    embedding: np.ndarray,
) -> UUID:
    """Store a past resolution; the same ticket text and resolution again returns the stored row's id."""
    if source not in RESOLUTION_SOURCES:
        raise ValueError(f"source must be one of {', '.join(RESOLUTION_SOURCES)}, got {source!r}")
    digest = resolution_hash(ticket_text, resolution)
    async with conn.transaction():
        inserted: UUID | None = await conn.fetchval(
            """
            INSERT INTO past_resolutions (source, source_ref, content_hash, ticket_text, resolution, category,
                                          priority, intent, tags, language, ticket_id, metadata, embedding, id)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
            ON CONFLICT (content_hash) DO NOTHING
            RETURNING id
            """,
            source,
            source_ref,
            digest,
            ticket_text,
            resolution,
            category,
            priority,
            intent,
            list(tags),
            language,
            ticket_id,
            dict(metadata or {}),
            _vector(embedding),
            resolution_id(digest),
        )
        if inserted is not None:
            await bump_knowledge_version(conn)
            return inserted
        existing: UUID = await conn.fetchval("SELECT id FROM past_resolutions WHERE content_hash = $1", digest)
        return existing


async def insert_resolutions(conn: Any, rows: Sequence[ResolutionRow]) -> int:
    """Bulk insert for loaders: COPY to a staging table, skip hashes already stored; returns rows added."""
    if not rows:
        return 0
    async with conn.transaction():
        await conn.execute(
            """
            CREATE TEMP TABLE resolution_stage (
                source text, source_ref text, content_hash text, ticket_text text, resolution text,
                category text, priority text, intent text, tags text[], language text, ticket_id uuid,
                metadata text, embedding vector, id uuid
            ) ON COMMIT DROP
            """
        )
        await conn.copy_records_to_table(
            "resolution_stage",
            records=[
                (
                    row.source,
                    row.source_ref,
                    row.content_hash,
                    row.ticket_text,
                    row.resolution,
                    row.category,
                    row.priority,
                    row.intent,
                    list(row.tags),
                    row.language,
                    row.ticket_id,
                    # As text: the pool's jsonb codec has no binary encoder, and COPY here is binary.
                    json.dumps(dict(row.metadata), default=str, ensure_ascii=False),
                    _vector(row.embedding),
                    resolution_id(row.content_hash),
                )
                for row in rows
            ],
        )
        # DISTINCT ON: the same pair twice in one batch must not trip the unique constraint.
        added = await conn.fetch(
            """
            INSERT INTO past_resolutions (source, source_ref, content_hash, ticket_text, resolution, category,
                                          priority, intent, tags, language, ticket_id, metadata, embedding, id)
            SELECT DISTINCT ON (content_hash)
                   source, source_ref, content_hash, ticket_text, resolution, category, priority, intent,
                   tags, language, ticket_id, metadata::jsonb, embedding, id
            FROM resolution_stage
            ORDER BY content_hash
            ON CONFLICT (content_hash) DO NOTHING
            RETURNING id
            """
        )
        # Dropped here as well as on commit: a caller's outer transaction may call this twice.
        await conn.execute("DROP TABLE resolution_stage")
        if added:
            await bump_knowledge_version(conn)
        if len(added) >= BULK_ROWS:
            await refresh_statistics(conn)
    return len(added)


# A load of at least this many rows refreshes the planner statistics at once.
BULK_ROWS = 100


async def refresh_statistics(conn: Any) -> None:
    """ANALYZE the searchable tables after a bulk load, copy their lexeme statistics, and merge their full-text
    indexes' pending entries. The text arm of `knowledge.retrieval.search` picks its terms by those statistics;
    until they are gathered, every term of a query is searched and ranked, several times slower on a large
    table. And every search reads a GIN index's pending list in full (migration 0009)."""
    await conn.execute("ANALYZE kb_chunks, past_resolutions")
    await refresh_term_stats(conn, force=True)
    await _as_owner(
        conn,
        "SELECT gin_clean_pending_list('past_resolutions_tsv_idx'::regclass),"
        " gin_clean_pending_list('kb_chunks_tsv_idx'::regclass)",
    )


# A searchable table whose lexeme statistics are newer than their copy (tables without any are never copied).
_TERM_STATS_BEHIND = """
    SELECT EXISTS (
        SELECT 1 FROM pg_stats s JOIN pg_stat_user_tables u ON u.schemaname = s.schemaname AND u.relname = s.tablename
        WHERE u.relid IN ('kb_chunks'::regclass, 'past_resolutions'::regclass) AND s.attname = 'tsv'
          AND NOT s.inherited AND s.most_common_elems IS NOT NULL
          AND greatest(u.last_analyze, u.last_autoanalyze) > coalesce(
                (SELECT max(c.analyzed_at) FROM search_term_stats c WHERE c.table_name = s.tablename), '-infinity')
    )
"""


async def refresh_term_stats(conn: Any, *, force: bool = False) -> int:
    """Copy the planner's lexeme statistics of the searchable tables to `search_term_stats` (migration 0010) when
    ANALYZE ran since the last copy (or `force`). Returns the number of lexemes copied, 0 when nothing was due.
    Readers are not blocked; the worker's maintenance calls it, as do bulk loads."""
    if not force and not await conn.fetchval(_TERM_STATS_BEHIND):
        return 0
    if not await _as_owner(conn, "REFRESH MATERIALIZED VIEW CONCURRENTLY search_term_stats"):
        return 0
    return int(await conn.fetchval("SELECT count(*) FROM search_term_stats"))


async def _as_owner(conn: Any, sql: str) -> bool:
    """Run upkeep only the tables' owner may run; a role that is not the owner leaves it to autovacuum and the
    defaults (a savepoint keeps the caller's transaction usable). Returns whether it ran."""
    try:
        async with conn.transaction():
            await conn.execute(sql)
    except asyncpg.InsufficientPrivilegeError:
        log.info("not the owner of the knowledge tables, skipped: %s", sql)
        return False
    return True


def _vector(vector: np.ndarray) -> np.ndarray:
    return np.asarray(vector, dtype=np.float32)
