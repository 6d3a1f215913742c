"""Customer accounts and events (admin): the account context routing and the agent use."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg
from litestar import Controller, Response, post
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from app.plugin import admin_guard
from core.errors import problem_responses
from tickets import customers
from tickets.schemas import CustomerEventIn, CustomerIn


class CustomerController(Controller):
    path = "/api/customers"
    tags = ["customers"]
    guards = [admin_guard]
    security = [{"AdminToken": []}]

    @post(
        "/",
        operation_id="upsertCustomer",
        responses=problem_responses(400, 401, 422, 503),
        summary="Create a customer account, or update it by email",
    )
    async def upsert(self, pool: asyncpg.Pool, data: CustomerIn) -> Response[dict[str, Any]]:
        async with pool.acquire() as conn:
            customer, created = await customers.upsert_customer(
                conn,
                email=customers.normalized_email(data.email),
                name=data.name,
                tier=data.tier,
                metadata=data.metadata,
            )
        return Response(customer, status_code=HTTP_201_CREATED if created else HTTP_200_OK)

    @post(
        "/{customer_id:uuid}/events",
        operation_id="addCustomerEvent",
        responses=problem_responses(400, 401, 404, 422, 503),
        summary="Record an account event",
    )
    async def add_event(self, pool: asyncpg.Pool, customer_id: UUID, data: CustomerEventIn) -> dict[str, Any]:
        async with pool.acquire() as conn:
            return await customers.add_event(conn, customer_id, data.kind, data.occurred_at, data.data)
