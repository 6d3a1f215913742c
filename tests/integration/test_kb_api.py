"""`GET /api/kb/search` through the real app: hits with scores, filters, the admin token and the 422s."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncpg
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from tests.support.knowledge import SEARCH_HIT_KEYS


async def test_search_returns_scored_hits_of_both_kinds(demo_kb: asyncpg.Pool, client: Any) -> None:
    response = await client.get("/api/kb/search", params={"q": "I forgot my password and cannot log in", "k": 6})

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["query"] == "I forgot my password and cannot log in"
    items = body["items"]
    assert len(items) == 6
    assert {item["kind"] for item in items} == {"kb_chunk", "resolution"}
    first_article = next(item for item in items if item["kind"] == "kb_chunk")
    assert first_article["source"] == "kb/technical/reset-password.md"
    for item in items:
        assert set(item) >= SEARCH_HIT_KEYS
        assert 0 < item["similarity"] <= 1
    assert [item["score"] for item in items] == sorted((item["score"] for item in items), reverse=True)


async def test_kind_and_category_filters(demo_kb: asyncpg.Pool, client: Any) -> None:
    resolutions = await client.get(
        "/api/kb/search",
        params={"q": "charged twice this month", "kind": "resolution", "category": "billing"},
    )
    articles = await client.get("/api/kb/search", params={"q": "charged twice this month", "kind": "article"})

    assert resolutions.status_code == 200
    assert articles.status_code == 200
    resolution_items = resolutions.json()["items"]
    assert resolution_items
    assert {item["kind"] for item in resolution_items} == {"resolution"}
    assert {item["category"] for item in resolution_items} == {"billing"}
    assert len(articles.json()["items"]) == 8  # DESKPILOT_RETRIEVE_K
    assert {item["kind"] for item in articles.json()["items"]} == {"kb_chunk"}


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({}, "q"),
        ({"q": ""}, "q"),
        ({"q": "   \t "}, "q"),
        ({"q": "x" * 2001}, "q"),
        ({"q": "refund", "k": "0"}, "k"),
        ({"q": "refund", "kind": "faq"}, "kind"),
        ({"q": "refund", "category": "sales"}, "category"),
    ],
)
async def test_bad_queries_are_422_naming_the_parameter(client: Any, params: dict[str, str], field: str) -> None:
    response = await client.get("/api/kb/search", params=params)

    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["field"] == field


async def test_admin_token_is_required_when_configured(
    demo_kb: asyncpg.Pool, make_client: Callable[..., AsyncTestClient[Litestar]]
) -> None:
    async with make_client(DESKPILOT_ADMIN_TOKEN="kb-secret-admin-token-0123456789") as client:
        anonymous = await client.get("/api/kb/search", params={"q": "refund"})
        wrong = await client.get("/api/kb/search", params={"q": "refund"}, headers={"Authorization": "Bearer nope"})
        allowed = await client.get(
            "/api/kb/search",
            params={"q": "refund"},
            headers={"Authorization": "Bearer kb-secret-admin-token-0123456789"},
        )

    assert anonymous.status_code == 401
    assert wrong.status_code == 401
    assert allowed.status_code == 200
    assert allowed.json()["items"]
