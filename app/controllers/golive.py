"""Going live (admin): the agent's mode (live / shadow, for the deployment and per category), its audit log,
and the go-live report over the reviewed decisions.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import asyncpg
import msgspec
from litestar import Controller, Request, get, put
from litestar.params import Parameter
from litestar.status_codes import HTTP_200_OK

from app.plugin import admin_guard
from core.errors import problem_responses
from core.settings import Settings
from review import golive, modes


class ModeIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`mode` for the deployment, or for one `category` (where `inherit` drops the category's own setting)."""

    mode: Literal["live", "shadow", "inherit"]
    category: Literal["billing", "technical", "onboarding", "general"] | None = None
    changed_by: Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$")] | None = None
    note: Annotated[str, msgspec.Meta(max_length=1000, pattern=r"^[^\x00]*$")] | None = None


def request_actor(request: Request[Any, Any, Any], settings: Settings, named: str | None) -> str:
    """Who made an admin change: the name the caller gave, and how it was authenticated."""
    if not settings.admin_token:
        via = "open admin API (no admin token configured)"
    elif request.headers.get("authorization"):
        via = "admin token"
    else:
        via = "console session"
    return f"{named} ({via})" if named else via


class GoLiveController(Controller):
    path = "/api"
    tags = ("go-live",)
    guards = (admin_guard,)
    security = ({"AdminToken": []},)

    @get(
        "/admin/mode",
        operation_id="getAgentMode",
        responses=problem_responses(401, 503),
        summary="The agent's mode: live or shadow, for the deployment and each category",
    )
    async def get_mode(self, pool: asyncpg.Pool, settings: Settings) -> dict[str, Any]:
        async with pool.acquire() as conn:
            return await modes.mode_view(conn, settings.mode)

    @put(
        "/admin/mode",
        operation_id="setAgentMode",
        responses=problem_responses(400, 401, 422, 503),
        summary="Switch the agent between live and shadow (recorded in the audit log)",
        status_code=HTTP_200_OK,
    )
    async def set_mode(
        self, request: Request[Any, Any, Any], pool: asyncpg.Pool, settings: Settings, data: ModeIn
    ) -> dict[str, Any]:
        async with pool.acquire() as conn:
            change = await modes.set_mode(
                conn,
                mode=data.mode,
                category=data.category,
                actor=request_actor(request, settings, data.changed_by),
                default=settings.mode,
                note=data.note,
            )
            view = await modes.mode_view(conn, settings.mode)
        return {"change": change, **view}

    @get(
        "/admin/audit-log",
        operation_id="getAuditLog",
        responses=problem_responses(400, 401, 422, 503),
        summary="Admin changes (mode switches), newest first",
    )
    async def get_audit_log(
        self, pool: asyncpg.Pool, limit: Annotated[int, Parameter(ge=1, le=500)] = 50
    ) -> dict[str, Any]:
        async with pool.acquire() as conn:
            return {"items": await modes.audit_log(conn, limit=limit)}

    @get(
        "/reports/go-live",
        operation_id="getGoLiveReport",
        responses=problem_responses(400, 401, 422, 503),
        summary="Per category: would-be auto-resolved replies, their precision (95% Wilson interval), a verdict",
    )
    async def go_live_report(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        target_precision: Annotated[float, Parameter(gt=0.5, lt=1.0)] = golive.DEFAULT_TARGET_PRECISION,
        min_reviews: Annotated[int, Parameter(ge=1, le=100_000)] = golive.DEFAULT_MIN_REVIEWS,
    ) -> dict[str, Any]:
        async with pool.acquire() as conn:
            report = await golive.build_go_live_report(
                conn, settings, target_precision=target_precision, min_reviews=min_reviews
            )
        return golive.report_as_dict(report)
