"""Support-health signals for health scoring (admin): one customer's, and every customer's as a paged export."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

import asyncpg
from litestar import Controller, get
from litestar.params import Parameter

from app.plugin import admin_guard
from core.errors import problem_responses
from tickets import support_health


class SupportHealthController(Controller):
    path = "/api/customers"
    tags = ("customers",)
    guards = (admin_guard,)
    security = ({"AdminToken": []},)

    @get(
        "/{customer_id:uuid}/support-health",
        operation_id="getCustomerSupportHealth",
        responses=problem_responses(400, 401, 404, 503),
        summary="Open, unresolved and escalated tickets and related signals of a customer",
    )
    async def support_health(self, pool: asyncpg.Pool, customer_id: UUID) -> dict[str, Any]:
        async with pool.acquire() as conn:
            return await support_health.customer_support_health(conn, customer_id)

    @get(
        "/support-health",
        operation_id="exportSupportHealth",
        responses=problem_responses(400, 401, 422, 503),
        summary="Every customer's support-health signals, oldest customer first, with cursor pagination",
        description=(
            "Each item has the fields of `GET /api/customers/{id}/support-health`. Customers are ordered by when "
            "they were created, so following `next_cursor` until it is null visits each customer once, and a "
            "customer created meanwhile appears on the last page."
        ),
    )
    async def export_support_health(
        self,
        pool: asyncpg.Pool,
        cursor: Annotated[str | None, Parameter(max_length=512)] = None,
        limit: Annotated[int, Parameter(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        async with pool.acquire() as conn:
            items, next_cursor = await support_health.list_support_health(conn, cursor=cursor, limit=limit)
        return {"items": items, "next_cursor": next_cursor}
