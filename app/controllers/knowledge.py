"""Knowledge-base search (admin): what the retriever returns for a query, with its scores."""

from __future__ import annotations

from typing import Any, Literal

import asyncpg
from litestar import Controller, get

from app.plugin import admin_guard
from core.errors import InvalidInput, problem_responses
from core.settings import Settings
from knowledge.embedder import load_embedder
from knowledge.retrieval import search_query

MAX_QUERY_CHARS = 2000
CategoryFilter = Literal["billing", "technical", "onboarding", "general"]
KindFilter = Literal["article", "resolution"]


class KnowledgeController(Controller):
    path = "/api/kb"
    # Tuples: Litestar takes any sequence, and class-level lists would be shared mutable state.
    tags = ("knowledge",)
    guards = (admin_guard,)
    security = ({"AdminToken": []},)

    @get(
        "/search",
        operation_id="searchKnowledge",
        responses=problem_responses(400, 401, 422, 503),
        summary="Hybrid search over KB articles and resolutions",
    )
    async def search(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        q: str | None = None,
        category: CategoryFilter | None = None,
        k: int | None = None,
        kind: KindFilter | None = None,
    ) -> dict[str, Any]:
        query = (q or "").strip()
        if not query:
            raise InvalidInput("q must be a non-empty search query", field="q")
        if len(query) > MAX_QUERY_CHARS:
            raise InvalidInput(f"q must be at most {MAX_QUERY_CHARS} characters, got {len(query)}", field="q")
        if k is not None and not 1 <= k <= 100:
            raise InvalidInput(f"k must be between 1 and 100, got {k}", field="k")
        # The first call loads the model (seconds): in a worker thread, like every encode after it.
        embedder = await load_embedder(settings.embedding_model)
        async with pool.acquire() as conn:
            items = await search_query(
                conn,
                embedder,
                query,
                kind=kind,
                category=category,
                k=k or settings.retrieve_k,
                ef_search=settings.hnsw_ef_search,
            )
        return {"query": query, "items": [item.to_json() for item in items]}
