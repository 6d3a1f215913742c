"""The in-app inbox (admin): replies on the in-app channel for the product to show, and marking them read."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

import asyncpg
import msgspec
from litestar import Controller, get, post
from litestar.params import Parameter
from litestar.status_codes import HTTP_200_OK

from app.plugin import admin_guard
from core.errors import InvalidInput, problem_responses
from delivery import in_app


class MarkReadIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Either the ids to mark read, or `"all": true` for every unread message of the customer."""

    message_ids: Annotated[list[UUID], msgspec.Meta(min_length=1, max_length=1000)] | None = None
    all: bool = False


class CustomerMessagesController(Controller):
    path = "/api/customers/{customer_id:uuid}/messages"
    tags = ("customers",)
    guards = (admin_guard,)
    security = ({"AdminToken": []},)

    @get(
        "/",
        operation_id="listCustomerMessages",
        responses=problem_responses(400, 401, 404, 422, 503),
        summary="A customer's in-app replies, newest first",
    )
    async def list_messages(
        self,
        pool: asyncpg.Pool,
        customer_id: UUID,
        unread: bool | None = None,
        cursor: Annotated[str | None, Parameter(max_length=512)] = None,
        limit: Annotated[int, Parameter(ge=1, le=200)] = 50,
    ) -> dict[str, Any]:
        async with pool.acquire() as conn:
            items, next_cursor = await in_app.list_messages(
                conn, customer_id, unread=unread, cursor=cursor, limit=limit
            )
            unread_count = await in_app.unread_count(conn, customer_id)
        return {"items": items, "next_cursor": next_cursor, "unread_count": unread_count}

    @post(
        "/read",
        operation_id="markCustomerMessagesRead",
        responses=problem_responses(400, 401, 404, 422, 503),
        summary="Mark in-app replies read",
        status_code=HTTP_200_OK,
    )
    async def mark_read(self, pool: asyncpg.Pool, customer_id: UUID, data: MarkReadIn) -> dict[str, Any]:
        if data.all == (data.message_ids is not None):
            raise InvalidInput('send either "message_ids" or "all": true', field="message_ids")
        async with pool.acquire() as conn:
            marked = await in_app.mark_read(conn, customer_id, None if data.all else data.message_ids)
            unread_count = await in_app.unread_count(conn, customer_id)
        return {"marked": marked, "unread_count": unread_count}
