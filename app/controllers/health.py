"""Liveness with a database check, and Prometheus metrics."""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import Controller, Response, get

from agent.drafting.llm import describe_llm
from app.plugin import Runtime
from core.errors import problem_responses
from core.metrics import CONTENT_TYPE


class HealthController(Controller):
    tags = ["operations"]

    @get("/health", operation_id="health", responses=problem_responses(503), summary="Liveness and database check")
    async def health(self, runtime: Runtime) -> Response[dict[str, Any]]:
        database: dict[str, Any] = {"ok": False}
        try:
            pool = runtime.require_pool()
            async with asyncio.timeout(2):
                database["ok"] = await pool.fetchval("SELECT true")
        except Exception as exc:  # health must answer, whatever broke
            database["error"] = type(exc).__name__
        settings = runtime.settings
        body = {
            "status": "ok" if database["ok"] else "degraded",
            "database": database,
            "llm": describe_llm(settings),
            "webhook_signatures": bool(settings.webhook_secret),
            "admin_auth": bool(settings.admin_token),
        }
        return Response(
            body,
            status_code=200 if database["ok"] else 503,
            headers={} if database["ok"] else {"Retry-After": "5"},
        )

    @get("/metrics", operation_id="metrics", summary="Prometheus metrics", media_type=CONTENT_TYPE)
    async def metrics(self, runtime: Runtime) -> Response[bytes]:
        from app.observability import refresh_database_gauges

        await refresh_database_gauges(runtime)
        return Response(runtime.metrics.render(), media_type=CONTENT_TYPE)
