"""Content gaps (admin): the topics of the tickets the agent could not answer for lack of evidence, or a
category's most frequent topics (`?category=onboarding`: the setup blockers), as JSON and as a console page.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import asyncpg
from litestar import Controller, Request, Router, get
from litestar.exceptions import ValidationException
from litestar.params import Parameter
from litestar.response import Template

from app.controllers.web import error_page, invalid_form_page, redirect_to_login, render
from app.plugin import admin_guard
from app.web import console
from app.web.security import LoginRequired, page_guard, security_headers_middleware
from core.errors import DeskPilotError, InvalidInput, problem_responses
from core.settings import Settings
from knowledge.embedder import load_embedder
from review import gaps

# Tickets encoded for a report (their attempt stored no vector), remembered across requests of this process.
_TICKET_VECTORS = gaps.TicketVectors()

CategoryFilter = Literal["billing", "technical", "onboarding", "general"]
Weeks = Annotated[int, Parameter(ge=1, le=gaps.MAX_WEEKS, description="ISO weeks back, the current one included")]


def parse_weeks(weeks: str | None) -> int:
    if weeks is None or weeks == "":
        return gaps.DEFAULT_WEEKS
    if not weeks.isascii() or not weeks.isdigit() or not 1 <= int(weeks) <= gaps.MAX_WEEKS:
        raise InvalidInput(f"weeks must be a whole number from 1 to {gaps.MAX_WEEKS}", field="weeks")
    return int(weeks)


def parse_category(category: str | None) -> str | None:
    if category is None or category == "":
        return None
    if category not in console.CATEGORIES:
        raise InvalidInput(f"category must be one of {', '.join(console.CATEGORIES)}", field="category")
    return category


async def topic_report(pool: asyncpg.Pool, settings: Settings, weeks: int, category: str | None) -> dict[str, Any]:
    # The model loads only when some ticket has no stored vector (seconds, the first time, in a worker thread).
    async with pool.acquire() as conn:
        needs_model = await gaps.needs_encoding(
            conn, since=gaps.window_start(datetime.now(UTC), weeks), category=category
        )
        embedder = await load_embedder(settings.embedding_model) if needs_model else None
        return await gaps.build_topic_report(
            conn, now=datetime.now(UTC), weeks=weeks, category=category, embedder=embedder, vectors=_TICKET_VECTORS
        )


class ContentGapsController(Controller):
    path = "/api/reports/content-gaps"
    tags = ("reports",)
    guards = (admin_guard,)
    security = ({"AdminToken": []},)

    @get(
        "/",
        operation_id="getContentGaps",
        responses=problem_responses(400, 401, 422, 503),
        summary="Topics the agent could not answer for lack of evidence, or a category's frequent topics",
        description=(
            "Without `category`: the tickets whose latest attempt escalated for lack of evidence (or whose reply a "
            "reviewer rejected as incomplete), grouped into topics by their embeddings. With `category` (e.g. "
            "`onboarding`: the setup blockers): every ticket of that category, grouped the same way. Each topic "
            "has its count, tickets per ISO week over the last `weeks` weeks and example tickets, newest first."
        ),
    )
    async def content_gaps(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        weeks: Weeks = gaps.DEFAULT_WEEKS,
        category: CategoryFilter | None = None,
    ) -> dict[str, Any]:
        return await topic_report(pool, settings, weeks, category)


class ContentGapsPage(Controller):
    guards = (page_guard,)

    @get("/console/content-gaps", name="console-content-gaps")
    async def content_gaps_page(
        self,
        request: Request[Any, Any, Any],
        pool: asyncpg.Pool,
        settings: Settings,
        weeks: str | None = None,
        category: str | None = None,
    ) -> Template:
        chosen_weeks, chosen_category = parse_weeks(weeks), parse_category(category)
        gap_report = await topic_report(pool, settings, chosen_weeks, None)
        blockers = await topic_report(pool, settings, chosen_weeks, chosen_category or "onboarding")
        return render(
            request,
            "content_gaps.html",
            {"gaps": gap_report, "blockers": blockers, "categories": console.CATEGORIES},
            section="content-gaps",
        )


gaps_pages = Router(
    path="/",
    route_handlers=[ContentGapsPage],
    middleware=[security_headers_middleware],
    exception_handlers={
        LoginRequired: redirect_to_login,
        DeskPilotError: error_page,
        ValidationException: invalid_form_page,
    },
    include_in_schema=False,
)
