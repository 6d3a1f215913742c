"""Support-health signals of one customer account (admin), for health scoring."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg
from litestar import Controller, get

from app.plugin import admin_guard
from core.errors import problem_responses
from tickets import support_health


class SupportHealthController(Controller):
    path = "/api/customers/{customer_id:uuid}/support-health"
    tags = ("customers",)
    guards = (admin_guard,)
    security = ({"AdminToken": []},)

    @get(
        "/",
        operation_id="getCustomerSupportHealth",
        responses=problem_responses(400, 401, 404, 503),
        summary="Open, unresolved and escalated tickets and related signals of a customer",
    )
    async def support_health(self, pool: asyncpg.Pool, customer_id: UUID) -> dict[str, Any]:
        async with pool.acquire() as conn:
            return await support_health.customer_support_health(conn, customer_id)
