"""With the database down the API answers 503 with Retry-After, never 500, and recovers by itself."""

from __future__ import annotations

import json
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from app.asgi import create_app
from core.settings import Settings
from tests.support.pg import ThrowawayPostgres


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_ingest_answers_503_while_down_and_recovers(
    throwaway_pg: ThrowawayPostgres, tmp_path: Any, mode: str
) -> None:
    settings = Settings.from_mapping({"DESKPILOT_DATA_DIR": str(tmp_path)})
    app = create_app(settings, database_url=throwaway_pg.url)

    def payload(n: int) -> bytes:
        return json.dumps(
            {"external_id": f"outage-{n}", "customer_email": "o@example.com", "body": f"ticket {n}"}
        ).encode()

    headers = {"content-type": "application/json"}
    async with AsyncTestClient(app=app, raise_server_exceptions=False) as client:
        before = await client.post("/api/webhooks/support/ingest", content=payload(1), headers=headers)
        assert before.status_code == 201
        throwaway_pg.stop(mode)  # type: ignore[arg-type]
        during = await client.post("/api/webhooks/support/ingest", content=payload(2), headers=headers)
        assert during.status_code == 503, during.text
        assert during.headers["retry-after"].isdigit()
        assert during.headers["content-type"].startswith("application/problem+json")
        health = await client.get("/health")
        assert health.status_code == 503
        reads = await client.get("/api/tickets")
        assert reads.status_code == 503
        throwaway_pg.start()
        after = None
        for _ in range(20):  # the pool replaces its dead connections on the next acquire
            after = await client.post("/api/webhooks/support/ingest", content=payload(2), headers=headers)
            if after.status_code != 503:
                break
        assert after is not None and after.status_code == 201, after.text if after else None
        listed = (await client.get("/api/tickets")).json()["items"]
        assert {t["external_id"] for t in listed} == {"outage-1", "outage-2"}
