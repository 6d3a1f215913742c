"""Liveness with a database check, and Prometheus metrics (behind the admin token when one is set)."""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import Controller, Request, Response, get

from agent.drafting.llm import describe_llm
from app.observability import refresh_database_gauges
from app.plugin import admin_authorized, admin_guard
from app.runtime import Runtime
from core.errors import problem_responses
from core.metrics import CONTENT_TYPE


class HealthController(Controller):
    tags = ["operations"]

    @get("/health", operation_id="health", responses=problem_responses(503), summary="Liveness and database check")
    async def health(self, request: Request[Any, Any, Any], runtime: Runtime) -> Response[dict[str, Any]]:
        """Status and the database check for anyone (probes); the configuration summary (LLM endpoint, whether
        signatures and the admin token are on) only with the admin token, when one is set."""
        database: dict[str, Any] = {"ok": False}
        error: str | None = None
        try:
            pool = runtime.require_pool()
            async with asyncio.timeout(2):
                database["ok"] = await pool.fetchval("SELECT true")
        except Exception as exc:  # health must answer, whatever broke
            error = type(exc).__name__
        settings = runtime.settings
        body: dict[str, Any] = {"status": "ok" if database["ok"] else "degraded", "database": database}
        if not settings.admin_token or (database["ok"] and await admin_authorized(request)):
            if error is not None:
                database["error"] = error
            body |= {
                "llm": describe_llm(settings),
                "webhook_signatures": bool(settings.webhook_secret),
                "admin_auth": bool(settings.admin_token),
            }
        return Response(
            body,
            status_code=200 if database["ok"] else 503,
            headers={} if database["ok"] else {"Retry-After": "5"},
        )

    @get(
        "/metrics",
        operation_id="metrics",
        summary="Prometheus metrics (the admin token, when one is set)",
        media_type=CONTENT_TYPE,
        guards=[admin_guard],
        responses=problem_responses(401, 429),
    )
    async def metrics(self, runtime: Runtime) -> Response[bytes]:
        await refresh_database_gauges(runtime)
        return Response(runtime.metrics.render(), media_type=CONTENT_TYPE)
