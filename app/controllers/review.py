"""The review loop (admin): the queue of flagged and escalated tickets, a reviewer's decision, closing a
ticket.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

import asyncpg
import msgspec
from litestar import Controller, get, post
from litestar.params import Parameter
from litestar.status_codes import HTTP_200_OK

from app.plugin import admin_guard
from core.errors import problem_responses
from core.settings import Settings
from review import submit as review
from tickets import reads as tickets


class ReviewIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """approve: send the latest draft; edit: send `text` instead; reject: send nothing (`close` closes it
    too). `reason` (why the draft was wrong) is required with reject, optional with edit.
    """

    action: Literal["approve", "edit", "reject"]
    text: Annotated[str, msgspec.Meta(min_length=1, max_length=review.MAX_TEXT_CHARS)] | None = None
    note: Annotated[str, msgspec.Meta(max_length=4000)] | None = None
    close: bool = False
    reviewer: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None
    reason: review.ReviewReason | None = None


class ReviewController(Controller):
    path = "/api"
    tags = ("review",)
    guards = (admin_guard,)
    security = ({"AdminToken": []},)

    @get(
        "/review-queue",
        operation_id="getReviewQueue",
        responses=problem_responses(400, 401, 422, 503),
        summary="Flagged and escalated tickets, oldest first",
    )
    async def review_queue(
        self,
        pool: asyncpg.Pool,
        cursor: Annotated[str | None, Parameter(max_length=512)] = None,
        limit: Annotated[int, Parameter(ge=1, le=200)] = 50,
    ) -> dict[str, Any]:
        async with pool.acquire() as conn:
            items, next_cursor = await review.review_queue(conn, cursor=cursor, limit=limit)
        return {"items": items, "next_cursor": next_cursor}

    @post(
        "/tickets/{ticket_id:uuid}/review",
        operation_id="reviewTicket",
        responses=problem_responses(400, 401, 404, 409, 422, 503),
        summary="Approve, edit or reject the agent's reply",
        status_code=HTTP_200_OK,
    )
    async def review_ticket(
        self, pool: asyncpg.Pool, settings: Settings, ticket_id: UUID, data: ReviewIn
    ) -> dict[str, Any]:
        request = review.ReviewRequest(
            action=data.action,
            text=data.text,
            note=data.note,
            close=data.close,
            reviewer=data.reviewer,
            reason=data.reason,
        )
        return await review.submit_review(pool, settings, ticket_id, request)

    @post(
        "/tickets/{ticket_id:uuid}/close",
        operation_id="closeTicket",
        responses=problem_responses(400, 401, 404, 409, 503),
        summary="Close a ticket",
        status_code=HTTP_200_OK,
    )
    async def close_ticket(self, pool: asyncpg.Pool, ticket_id: UUID) -> dict[str, Any]:
        async with pool.acquire() as conn:
            previous = await review.close_ticket(conn, ticket_id)
            ticket = await tickets.get_ticket(conn, ticket_id)
        return {"ticket_id": ticket_id, "previous_status": previous, "status": ticket["status"]}
