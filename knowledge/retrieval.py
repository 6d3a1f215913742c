"""Hybrid retrieval over KB chunks and past resolutions: HNSW cosine search plus full-text, fused by rank.

Also the pure vector kNN the routing classifier uses, and an exact (index-free) twin of it for recall checks.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from uuid import UUID

import numpy as np

from knowledge.embedder import Embedder, embed

Kind = Literal["kb_chunk", "resolution"]
KINDS: tuple[Kind, ...] = ("kb_chunk", "resolution")
# Reciprocal rank fusion constant from Cormack et al. (2009); it damps the weight of the very first ranks.
RRF_K = 60
PREVIEW_CHARS = 240
TITLE_CHARS = 100
# A ticket body can be long; past a few dozen distinct words a text query adds cost and no precision.
MAX_QUERY_TERMS = 32
# Rows the full-text arm may be expected to match (and rank) per table; see `_selective_tsquery`.
TEXT_MATCH_BUDGET = 300
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class RetrievedItem:
    """One retrieved passage or past resolution with its scores (`similarity` is cosine, 1 - distance)."""

    kind: Kind
    id: UUID
    title: str
    text: str
    resolution: str | None
    category: str | None
    intent: str | None
    source: str
    similarity: float | None
    text_rank: int | None
    vector_rank: int | None
    score: float
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def preview(self) -> str:
        """What a reader needs to judge the hit: the answer of a resolution, the passage of a chunk."""
        return shorten(self.resolution if self.resolution is not None else self.text, PREVIEW_CHARS)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "id": str(self.id),
            "title": self.title,
            "text": self.text,
            "resolution": self.resolution,
            "preview": self.preview,
            "category": self.category,
            "intent": self.intent,
            "source": self.source,
            "similarity": self.similarity,
            "text_rank": self.text_rank,
            "vector_rank": self.vector_rank,
            "score": self.score,
            "metadata": _json_safe(self.metadata),
        }


def shorten(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    if len(flat) <= limit:
        return flat
    cut = flat[: limit - 1].rsplit(" ", 1)[0] if " " in flat[: limit - 1] else flat[: limit - 1]
    return cut + "…"


def text_search_terms(query_text: str) -> str:
    """The query's distinct words, space-separated, for `to_tsvector`.

    Only word characters survive, so quotes, operators and control characters in the input cannot change the
    query's meaning or make Postgres raise.
    """
    seen: dict[str, None] = {}
    for word in _WORD.findall(query_text.lower()):
        seen.setdefault(word, None)
        if len(seen) >= MAX_QUERY_TERMS:
            break
    return " ".join(seen)


# Lexemes come from to_tsvector of word characters only; the quoting is belt and braces.
_SELECTIVE_TSQUERY = """(
    WITH uncopied AS (
        -- Read only while `search_term_stats` has nothing for the table (no worker has copied the figures yet).
        SELECT e.lexeme, e.freq
        FROM pg_stats s,
             unnest(s.most_common_elems::text::text[], s.most_common_elem_freqs) AS e(lexeme, freq)
        WHERE NOT EXISTS (SELECT FROM search_term_stats WHERE table_name = '{table}')
          AND s.schemaname = current_schema() AND s.tablename = '{table}' AND s.attname = 'tsv'
          AND e.lexeme IS NOT NULL
    ),
    query_terms AS (
        SELECT DISTINCT t.lexeme,
               coalesce(s.freq, u.freq,
                        (SELECT min(freq) FROM search_term_stats WHERE table_name = '{table}'),
                        (SELECT min(freq) FROM uncopied), 0) AS freq
        FROM unnest(tsvector_to_array(to_tsvector('english', {terms}::text))) AS t(lexeme)
        LEFT JOIN search_term_stats s ON s.table_name = '{table}' AND s.lexeme = t.lexeme
        LEFT JOIN uncopied u ON u.lexeme = t.lexeme
    ),
    chosen AS (
        SELECT lexeme,
               sum(freq) OVER (ORDER BY freq, lexeme)
               * greatest((SELECT reltuples FROM pg_class WHERE oid = '{table}'::regclass), 0) AS expected_rows
        FROM query_terms
    )
    SELECT string_agg('''' || replace(lexeme, '''', '''''') || '''', ' | ')::tsquery
    FROM chosen WHERE expected_rows <= {budget}
)"""


def _selective_tsquery(table: str, p: _Params) -> str:
    """SQL for an OR query of the search terms' lexemes, leaving out the commonest ones past a budget.

    websearch-style AND makes a whole ticket body match nothing, and OR over every word lets a common one
    ("account", "order") match a large part of a big table, which costs hundreds of milliseconds to rank. So
    terms are taken rarest first by the planner's lexeme frequencies (pg_stats of the tsv column, as copied to
    `search_term_stats`; from pg_stats itself while there is no copy) while the expected number of matching rows
    stays within the budget; lexemes missing from the statistics are rarer than any listed one. A small or
    never-analysed table keeps every term.
    """
    return _SELECTIVE_TSQUERY.format(table=table, terms=p("terms", None), budget=p("text_budget", None))


class _Params:
    """Numbered query parameters assigned on first use, so a SQL variant only binds what it references."""

    def __init__(self) -> None:
        self.values: list[Any] = []
        self._names: dict[str, str] = {}

    def __call__(self, name: str, value: Any) -> str:
        if name not in self._names:
            self.values.append(value)
            self._names[name] = f"${len(self.values)}"
        return self._names[name]


def as_array(vector: Any) -> np.ndarray:
    """A pgvector value as float32 (the asyncpg codec returns `pgvector.Vector` objects)."""
    if hasattr(vector, "to_numpy"):
        vector = vector.to_numpy()
    return np.asarray(vector, dtype=np.float32)


def _query_vector(query_embedding: np.ndarray) -> np.ndarray:
    vector = np.asarray(query_embedding, dtype=np.float32).reshape(-1)
    if not np.all(np.isfinite(vector)):
        raise ValueError("the query embedding has NaN or infinite values")
    return vector


async def _set_scan_options(conn: Any, *, ef_search: int, filtered: bool) -> None:
    """Per-transaction HNSW settings; iterative scans (pgvector >= 0.8) keep filtered queries complete."""
    await conn.execute(
        """
        SELECT set_config('hnsw.ef_search', $1::text, true),
               CASE WHEN $2::boolean AND (
                        SELECT string_to_array(extversion, '.')::int[] >= '{0,8}'
                        FROM pg_extension WHERE extname = 'vector')
                    THEN set_config('hnsw.iterative_scan', 'relaxed_order', true) END
        """,
        str(ef_search),
        filtered,
    )


def _vector_arm(kind: Kind, p: _Params, category: str | None) -> str:
    emb, cand = p("embedding", None), p("candidates", None)
    if kind == "kb_chunk":
        join, where = "", ""
        if category is not None:
            # A KB article without a category applies to every category.
            join = "JOIN kb_documents d ON d.id = c.document_id"
            where = f"WHERE d.category = {p('category', category)} OR d.category IS NULL"
        return (
            f"(SELECT 'kb_chunk'::text AS kind, c.id, c.embedding <=> {emb} AS distance FROM kb_chunks c "
            f"{join} {where} ORDER BY c.embedding <=> {emb} LIMIT {cand})"
        )
    where = f"WHERE r.category = {p('category', category)}" if category is not None else ""
    return (
        f"(SELECT 'resolution'::text AS kind, r.id, r.embedding <=> {emb} AS distance "
        f"FROM past_resolutions r {where} ORDER BY r.embedding <=> {emb} LIMIT {cand})"
    )


def _text_arm(kind: Kind, p: _Params, category: str | None) -> str:
    cand = p("candidates", None)
    if kind == "kb_chunk":
        join, filter_ = "", ""
        if category is not None:
            join = "JOIN kb_documents d ON d.id = c.document_id"
            filter_ = f"AND (d.category = {p('category', category)} OR d.category IS NULL)"
        return (
            f"(SELECT 'kb_chunk'::text AS kind, c.id, ts_rank(c.tsv, q.query, 1) AS rank "
            f"FROM kb_chunks c {join} CROSS JOIN {_selective_tsquery('kb_chunks', p)} AS q(query) "
            f"WHERE c.tsv @@ q.query {filter_} ORDER BY rank DESC, c.id LIMIT {cand})"
        )
    filter_ = f"AND r.category = {p('category', category)}" if category is not None else ""
    return (
        f"(SELECT 'resolution'::text AS kind, r.id, ts_rank(r.tsv, q.query, 1) AS rank "
        f"FROM past_resolutions r CROSS JOIN {_selective_tsquery('past_resolutions', p)} AS q(query) "
        f"WHERE r.tsv @@ q.query {filter_} ORDER BY rank DESC, r.id LIMIT {cand})"
    )


_DETAIL_COLUMNS = """
    c.title AS chunk_title, c.content AS chunk_content, c.seq AS chunk_seq, c.document_id,
    d.source AS document_source, d.title AS document_title, d.category AS document_category,
    d.metadata AS document_metadata,
    r.ticket_text, r.resolution, r.category AS resolution_category, r.intent, r.source AS resolution_source,
    r.source_ref, r.priority, r.tags, r.language, r.ticket_id, r.metadata AS resolution_metadata
"""


async def search(
    conn: Any,
    *,
    query_embedding: np.ndarray,
    query_text: str,
    kinds: Sequence[Kind] = KINDS,
    category: str | None = None,
    k: int = 8,
    ef_search: int = 40,
    candidates: int = 40,
    text_budget: int = TEXT_MATCH_BUDGET,
) -> list[RetrievedItem]:
    """Top `k` KB chunks and/or past resolutions for a query, vector and full-text ranks fused (RRF).

    Each arm takes `candidates` rows per kind; kinds are ranked together so their scores compare. The text arm
    ORs the query's words, dropping the commonest while more than `text_budget` rows would match.
    """
    wanted = [kind for kind in KINDS if kind in kinds]
    unknown = set(kinds) - set(KINDS)
    if unknown or not wanted:
        raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {tuple(kinds)!r}")
    if k < 1 or candidates < 1:
        raise ValueError("k and candidates must be positive")
    p = _Params()
    p("embedding", _query_vector(query_embedding))
    p("candidates", max(candidates, k))
    terms = text_search_terms(query_text)
    vector_sql = " UNION ALL ".join(_vector_arm(kind, p, category) for kind in wanted)
    if terms:
        p("terms", terms)
        p("text_budget", text_budget)
        text_sql = " UNION ALL ".join(_text_arm(kind, p, category) for kind in wanted)
    else:
        # No words to search for: an empty arm rather than an empty tsquery, which Postgres warns about.
        text_sql = "SELECT NULL::text AS kind, NULL::uuid AS id, NULL::real AS rank WHERE false"
    emb, limit = p("embedding", None), p("k", k)
    sql = f"""
        WITH vec AS MATERIALIZED ({vector_sql}),
        vec_ranked AS (SELECT kind, id, row_number() OVER (ORDER BY distance, id) AS rank FROM vec),
        txt AS MATERIALIZED ({text_sql}),
        txt_ranked AS (SELECT kind, id, row_number() OVER (ORDER BY rank DESC, id) AS rank FROM txt),
        fused AS (
            SELECT coalesce(v.kind, t.kind) AS kind, coalesce(v.id, t.id) AS id,
                   v.rank AS vector_rank, t.rank AS text_rank,
                   coalesce(1.0 / ({RRF_K} + v.rank), 0) + coalesce(1.0 / ({RRF_K} + t.rank), 0) AS score
            FROM vec_ranked v FULL OUTER JOIN txt_ranked t ON t.kind = v.kind AND t.id = v.id
            ORDER BY score DESC, least(v.rank, t.rank), id
            LIMIT {limit}
        )
        SELECT f.kind, f.id, f.vector_rank, f.text_rank, f.score::float8 AS score,
               1 - (coalesce(c.embedding, r.embedding) <=> {emb}) AS similarity, {_DETAIL_COLUMNS}
        FROM fused f
        LEFT JOIN kb_chunks c ON f.kind = 'kb_chunk' AND c.id = f.id
        LEFT JOIN kb_documents d ON d.id = c.document_id
        LEFT JOIN past_resolutions r ON f.kind = 'resolution' AND r.id = f.id
        ORDER BY f.score DESC, least(f.vector_rank, f.text_rank), f.id
    """
    # Without an iterative scan HNSW returns at most ef_search rows, so it must cover the candidate count.
    ef = max(ef_search, candidates, k)
    async with conn.transaction():
        await _set_scan_options(conn, ef_search=ef, filtered=category is not None)
        rows = await conn.fetch(sql, *p.values)
    return [_item(row) for row in rows if row["chunk_content"] is not None or row["ticket_text"] is not None]


async def nearest_resolutions(
    conn: Any,
    query_embedding: np.ndarray,
    k: int = 10,
    ef_search: int = 40,
    exclude_ticket_id: UUID | None = None,
) -> list[RetrievedItem]:
    """The `k` past resolutions closest by cosine distance: HNSW (approximate) once the table is big enough
    for the planner to prefer the index over a full scan."""
    return await _nearest(conn, query_embedding, k, ef_search, exclude_ticket_id, exact=False)


async def article_sections(conn: Any, document_ids: Sequence[UUID]) -> list[RetrievedItem]:
    """Every section of the given help-centre articles, in article order: the reader looks for the answer to each
    part of a question in the whole article it chose, not only in the sections a search happened to return."""
    if not document_ids:
        return []
    return await _sections(conn, list(document_ids))


async def article_leads(conn: Any, document_ids: Sequence[UUID]) -> list[RetrievedItem]:
    """The first passage of each given help-centre article: its opening paragraph when it has one (the reader
    quotes it beside a section when it answers too, `agent.drafting.reader.is_lead`)."""
    if not document_ids:
        return []
    return [_item(row) for row in await _section_rows(conn, list(document_ids), with_vectors=False, first_only=True)]


async def help_centre_sections(conn: Any) -> list[RetrievedItem]:
    """Every section of every help-centre article, in article order: what a worker reads before its first ticket
    (`agent.runner.TicketProcessor.warm_up`)."""
    return await _sections(conn, None)


async def help_centre_passages(conn: Any) -> tuple[list[RetrievedItem], np.ndarray]:
    """Every section of every help-centre article, in article order, with its stored vector (one row each): what
    a reader that also reads with another model searches itself (`agent.drafting.crosslingual`)."""
    rows = await _section_rows(conn, None, with_vectors=True)
    vectors = np.stack([as_array(row["embedding"]) for row in rows]) if rows else np.zeros((0, 0), np.float32)
    return [_item(row) for row in rows], vectors


async def _sections(conn: Any, document_ids: list[UUID] | None) -> list[RetrievedItem]:
    return [_item(row) for row in await _section_rows(conn, document_ids, with_vectors=False)]


async def _section_rows(
    conn: Any, document_ids: list[UUID] | None, *, with_vectors: bool, first_only: bool = False
) -> list[Any]:
    p = _Params()
    where = "" if document_ids is None else f"WHERE c.document_id = ANY({p('documents', document_ids)}::uuid[])"
    if first_only:
        where += " AND c.seq = 0" if where else "WHERE c.seq = 0"
    sql = f"""
        SELECT 'kb_chunk'::text AS kind, c.id, NULL::bigint AS vector_rank, NULL::bigint AS text_rank,
               0.0::float8 AS score, NULL::float8 AS similarity, {_DETAIL_COLUMNS}
               {", c.embedding" if with_vectors else ""}
        FROM kb_chunks c
        JOIN kb_documents d ON d.id = c.document_id
        LEFT JOIN past_resolutions r ON false
        {where}
        ORDER BY c.document_id, c.seq
    """
    return list(await conn.fetch(sql, *p.values))


async def exact_nearest(
    conn: Any,
    query_embedding: np.ndarray,
    k: int = 10,
    exclude_ticket_id: UUID | None = None,
) -> list[RetrievedItem]:
    """`nearest_resolutions` by a full scan, without the index: the ground truth for recall measurements."""
    return await _nearest(conn, query_embedding, k, 0, exclude_ticket_id, exact=True)


async def _nearest(
    conn: Any, query_embedding: np.ndarray, k: int, ef_search: int, exclude: UUID | None, *, exact: bool
) -> list[RetrievedItem]:
    if k < 1:
        raise ValueError("k must be positive")
    p = _Params()
    emb = p("embedding", _query_vector(query_embedding))
    where = f"WHERE r.ticket_id IS DISTINCT FROM {p('exclude', exclude)}" if exclude is not None else ""
    sql = f"""
        SELECT 'resolution'::text AS kind, r.id,
               row_number() OVER (ORDER BY r.embedding <=> {emb}, r.id) AS vector_rank,
               NULL::bigint AS text_rank, 1 - (r.embedding <=> {emb}) AS similarity,
               NULL::text AS chunk_title, NULL::text AS chunk_content, NULL::integer AS chunk_seq,
               NULL::uuid AS document_id, NULL::text AS document_source, NULL::text AS document_title,
               NULL::text AS document_category, NULL::jsonb AS document_metadata,
               r.ticket_text, r.resolution, r.category AS resolution_category, r.intent,
               r.source AS resolution_source, r.source_ref, r.priority, r.tags, r.language, r.ticket_id,
               r.metadata AS resolution_metadata
        FROM (SELECT * FROM past_resolutions r {where} ORDER BY r.embedding <=> {emb} LIMIT {p("k", k)}) r
        ORDER BY vector_rank
    """
    async with conn.transaction():
        if exact:
            await conn.execute("SET LOCAL enable_indexscan = off")
        else:
            await _set_scan_options(conn, ef_search=max(ef_search, k), filtered=exclude is not None)
        rows = await conn.fetch(sql, *p.values)
    return [_item(row, score=float(row["similarity"])) for row in rows]


def _item(row: Any, *, score: float | None = None) -> RetrievedItem:
    similarity = float(row["similarity"]) if row["similarity"] is not None else None
    common: dict[str, Any] = {
        "id": row["id"],
        "similarity": similarity,
        "text_rank": row["text_rank"],
        "vector_rank": row["vector_rank"],
        "score": score if score is not None else float(row["score"]),
    }
    if row["kind"] == "kb_chunk":
        metadata = dict(row["document_metadata"] or {})
        metadata.update(document_id=str(row["document_id"]), document_title=row["document_title"], seq=row["chunk_seq"])
        return RetrievedItem(
            kind="kb_chunk",
            title=row["chunk_title"] or row["document_title"] or "",
            text=row["chunk_content"],
            resolution=None,
            category=row["document_category"],
            intent=None,
            source=row["document_source"],
            metadata=metadata,
            **common,
        )
    metadata = dict(row["resolution_metadata"] or {})
    metadata.update(
        source_ref=row["source_ref"],
        priority=row["priority"],
        tags=list(row["tags"] or []),
        language=row["language"],
        ticket_id=str(row["ticket_id"]) if row["ticket_id"] else None,
    )
    ticket_text: str = row["ticket_text"]
    first_line = next((line for line in ticket_text.splitlines() if line.strip()), ticket_text)
    return RetrievedItem(
        kind="resolution",
        title=shorten(first_line, TITLE_CHARS),
        text=ticket_text,
        resolution=row["resolution"],
        category=row["resolution_category"],
        intent=row["intent"],
        source=row["resolution_source"],
        metadata=metadata,
        **common,
    )


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


KIND_NAMES: dict[str, Kind] = {"article": "kb_chunk", "resolution": "resolution"}


async def search_query(
    conn: Any,
    embedder: Embedder,
    query: str,
    *,
    kind: Literal["article", "resolution"] | None = None,
    category: str | None = None,
    k: int = 8,
    ef_search: int = 40,
) -> list[RetrievedItem]:
    """`search` for a text query, as `deskpilot kb search` and `GET /api/kb/search` run it."""
    vectors = await embed(embedder, [query])
    return await search(
        conn,
        query_embedding=vectors[0],
        query_text=query,
        kinds=(KIND_NAMES[kind],) if kind else KINDS,
        category=category,
        k=k,
        ef_search=ef_search,
    )
