"""Ticket read API (admin): list with filters and cursor pagination, one ticket with its thread."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

import asyncpg
from litestar import Controller, get
from litestar.params import Parameter

from app.plugin import admin_guard
from core.errors import problem_responses
from tickets import reads as tickets
from tickets import trace

StatusFilter = Literal["open", "in_progress", "pending_customer", "resolved", "closed"]
CategoryFilter = Literal["billing", "technical", "onboarding", "general"]
PriorityFilter = Literal["low", "normal", "high", "urgent"]


class TicketController(Controller):
    path = "/api/tickets"
    tags = ["tickets"]
    guards = [admin_guard]
    security = [{"AdminToken": []}]

    @get(
        "/",
        operation_id="listTickets",
        responses=problem_responses(400, 401, 422, 503),
        summary="List tickets, newest first",
    )
    async def list_tickets(
        self,
        pool: asyncpg.Pool,
        status: StatusFilter | None = None,
        category: CategoryFilter | None = None,
        priority: PriorityFilter | None = None,
        customer_id: UUID | None = None,
        flagged: bool | None = None,
        cursor: Annotated[str | None, Parameter(max_length=512)] = None,
        limit: Annotated[int, Parameter(ge=1, le=200)] = 50,
    ) -> dict[str, Any]:
        async with pool.acquire() as conn:
            items, next_cursor = await tickets.list_tickets(
                conn,
                status=status,
                category=category,
                priority=priority,
                customer_id=customer_id,
                flagged=flagged,
                cursor=cursor,
                limit=limit,
            )
        return {"items": items, "next_cursor": next_cursor}

    @get(
        "/{ticket_id:uuid}",
        operation_id="getTicket",
        responses=problem_responses(400, 401, 404, 503),
        summary="A ticket with messages, attempts and deliveries",
    )
    async def get_ticket(self, pool: asyncpg.Pool, ticket_id: UUID) -> dict[str, Any]:
        async with pool.acquire() as conn:
            return await tickets.get_ticket_detail(conn, ticket_id)

    @get(
        "/{ticket_id:uuid}/trace",
        operation_id="getTicketTrace",
        responses=problem_responses(400, 401, 404, 503),
        summary="Every resolution attempt of a ticket, node by node",
    )
    async def get_ticket_trace(self, pool: asyncpg.Pool, ticket_id: UUID) -> dict[str, Any]:
        async with pool.acquire() as conn:
            return await trace.get_trace(conn, ticket_id)
