"""HTML pages: the agent trace viewer (`/traces/{id}`), the operator console, the login form, the stylesheet.

Every page is rendered from the same plain async functions the JSON API uses (`tickets.trace.get_trace`,
`tickets.reads.list_tickets`), behind the admin token when one is configured, with a strict CSP and no script.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, cast
from urllib.parse import urlencode
from uuid import UUID

import asyncpg
from litestar import Controller, Request, Response, Router, get, post
from litestar.enums import RequestEncodingType
from litestar.exceptions import ValidationException
from litestar.params import Body, Parameter
from litestar.response import Redirect, Template

from app.controllers.golive import request_actor
from app.plugin import (
    ADMIN_COOKIE,
    admin_authenticated,
    admin_authorized,
    admin_token_valid,
    client_address,
    revoke_session,
    runtime_of_state,
)
from app.web import STATIC_DIR, console
from app.web.security import (
    CSRF_COOKIE,
    CSRF_FIELD,
    LoginRequired,
    admin_cookie,
    csrf_form_token,
    csrf_valid,
    login_url,
    new_csrf_cookie,
    page_guard,
    safe_next,
    security_headers_middleware,
    settings_of,
)
from app.web.trace_view import present_trace
from core.errors import DeskPilotError, InvalidInput, NotFound
from review import golive, modes
from review import submit as review
from tickets import reads as tickets
from tickets import trace

FILTERS = {"status": console.STATUSES, "category": console.CATEGORIES, "priority": console.PRIORITIES}
PAGE_SIZE = 50
REVIEW_ACTIONS = ("approve", "edit", "reject")

Cursor = Annotated[str | None, Parameter(max_length=512)]


class CsrfRejected(DeskPilotError):
    status = 403
    title = "Forbidden"


def render(
    request: Request[Any, Any, Any],
    template: str,
    context: dict[str, Any],
    *,
    status_code: int = 200,
    section: str | None = None,
    headers: dict[str, str] | None = None,
) -> Template:
    """A page with what every page needs: the auth state for the banner and a CSRF token for its forms."""
    settings = settings_of(request)
    cookies = []
    csrf_cookie = request.cookies.get(CSRF_COOKIE)
    if not csrf_cookie:
        fresh = new_csrf_cookie(secure=request.url.scheme == "https")
        csrf_cookie = str(fresh.value)
        cookies.append(fresh)
    base = {
        "admin_auth": bool(settings.admin_token),
        "signed_in": bool(settings.admin_token) and admin_authenticated(request),
        "csrf_field": CSRF_FIELD,
        "csrf_token": csrf_form_token(settings, csrf_cookie),
        "section": section,
    }
    return Template(
        template_name=template,
        context={**base, **context},
        status_code=status_code,
        cookies=cookies,
        headers=headers,
    )


def require_csrf(request: Request[Any, Any, Any], form_token: str) -> None:
    if not csrf_valid(settings_of(request), request.cookies.get(CSRF_COOKIE), form_token):
        raise CsrfRejected("the form has expired or did not come from this site: reload the page and try again")


def one_of(name: str, value: str | None, allowed: tuple[str, ...]) -> str | None:
    if not value:
        return None
    if value not in allowed:
        raise InvalidInput(f"{name} must be one of {', '.join(allowed)}", field=name)
    return value


@dataclass
class ReviewForm:
    action: str = ""
    text: str = ""
    note: str = ""
    close: str = ""
    reason: str = ""
    csrf_token: str = ""


@dataclass
class ModeForm:
    mode: str = ""
    category: str = ""
    csrf_token: str = ""


@dataclass
class LoginForm:
    token: str = ""
    next: str = "/"
    csrf_token: str = ""


@dataclass
class LogoutForm:
    csrf_token: str = ""


class ConsoleController(Controller):
    """The pages behind the admin token."""

    guards = (page_guard,)

    @get(["/", "/console"], name="console")
    async def overview(self, request: Request[Any, Any, Any], pool: asyncpg.Pool) -> Template:
        async with pool.acquire() as conn:
            counts = await console.ticket_counts(conn)
            recent, _ = await tickets.list_tickets(conn, limit=10)
        return render(
            request,
            "console.html",
            {"counts": counts, "recent": recent, "filters": FILTERS},
            section="overview",
        )

    @get("/console/tickets", name="console-tickets")
    async def ticket_list(
        self,
        request: Request[Any, Any, Any],
        pool: asyncpg.Pool,
        status: str | None = None,
        category: str | None = None,
        priority: str | None = None,
        cursor: Cursor = None,
    ) -> Template:
        selected = {
            "status": one_of("status", status, console.STATUSES),
            "category": one_of("category", category, console.CATEGORIES),
            "priority": one_of("priority", priority, console.PRIORITIES),
        }
        async with pool.acquire() as conn:
            rows, next_cursor = await tickets.list_tickets(
                conn,
                status=selected["status"],
                category=selected["category"],
                priority=selected["priority"],
                cursor=cursor or None,
                limit=PAGE_SIZE,
            )
        chosen = {k: v for k, v in selected.items() if v}
        return render(
            request,
            "tickets.html",
            {
                "rows": rows,
                "filters": FILTERS,
                "selected": selected,
                "cursor": cursor,
                "first_page_url": "/console/tickets" + (f"?{urlencode(chosen)}" if chosen else ""),
                "next_page_url": f"/console/tickets?{urlencode({**chosen, 'cursor': next_cursor})}"
                if next_cursor
                else None,
            },
            section="tickets",
        )

    @get("/console/review", name="console-review")
    async def review_queue(
        self, request: Request[Any, Any, Any], pool: asyncpg.Pool, cursor: Cursor = None
    ) -> Template:
        async with pool.acquire() as conn:
            rows, next_cursor = await review.review_queue(conn, cursor=cursor or None, limit=PAGE_SIZE)
        return render(
            request,
            "review_queue.html",
            {
                "rows": rows,
                "cursor": cursor,
                "next_page_url": f"/console/review?{urlencode({'cursor': next_cursor})}" if next_cursor else None,
            },
            section="review",
        )

    @get("/console/go-live", name="console-go-live")
    async def go_live(
        self, request: Request[Any, Any, Any], pool: asyncpg.Pool, switched: str | None = None
    ) -> Template:
        settings = settings_of(request)
        async with pool.acquire() as conn:
            report = await golive.build_go_live_report(conn, settings)
            mode_view = await modes.mode_view(conn, settings.mode)
            audit = await modes.audit_log(conn, limit=20)
        notice = f"Mode set: {switched}." if switched and len(switched) <= 60 and switched.isprintable() else None
        return render(
            request,
            "go_live.html",
            {"report": golive.report_as_dict(report), "modes": mode_view, "audit": audit, "notice": notice},
            section="go-live",
        )

    @post("/console/mode", name="console-mode", status_code=303)
    async def mode_action(
        self,
        request: Request[Any, Any, Any],
        pool: asyncpg.Pool,
        data: Annotated[ModeForm, Body(media_type=RequestEncodingType.URL_ENCODED)],
    ) -> Redirect:
        require_csrf(request, data.csrf_token)
        settings = settings_of(request)
        async with pool.acquire() as conn:
            change = await modes.set_mode(
                conn,
                mode=data.mode,
                category=data.category or None,
                actor=request_actor(request, settings, None),
                default=settings.mode,
            )
        scope = "deployment" if change["scope"] == modes.DEPLOYMENT else change["scope"]
        switched = f"{scope} {change['to']}"
        return Redirect(f"/console/go-live?{urlencode({'switched': switched})}", status_code=303)

    @get("/traces/{ticket_id:uuid}", name="trace")
    async def trace_page(
        self,
        request: Request[Any, Any, Any],
        pool: asyncpg.Pool,
        ticket_id: UUID,
        reviewed: str | None = None,
    ) -> Template:
        async with pool.acquire() as conn:
            data = await trace.get_trace(conn, ticket_id)
        notice = f"Review recorded: {reviewed}." if reviewed in REVIEW_ACTIONS else None
        return render(
            request,
            "trace.html",
            {
                "trace": data,
                "ticket": data["ticket"],
                "view": present_trace(data, settings_of(request)),
                "notice": notice,
            },
            section="tickets",
        )

    @post("/console/tickets/{ticket_id:uuid}/review", name="console-review-action", status_code=303)
    async def review_action(
        self,
        request: Request[Any, Any, Any],
        pool: asyncpg.Pool,
        ticket_id: UUID,
        data: Annotated[ReviewForm, Body(media_type=RequestEncodingType.URL_ENCODED)],
    ) -> Redirect:
        require_csrf(request, data.csrf_token)
        action = one_of("action", data.action, REVIEW_ACTIONS)
        if action is None:
            raise InvalidInput("choose approve, edit or reject", field="action")
        decision = review.ReviewRequest(
            action=cast(review.ReviewAction, action),
            # The form always posts its textarea; the reviewer's text only counts for an edit.
            text=data.text if action == "edit" else None,
            note=data.note.strip() or None,
            close=data.close == "on",
            reviewer="console",
            # The form always posts its select; an approve ignores it.
            reason=cast(
                review.ReviewReason | None,
                one_of("reason", data.reason, review.REVIEW_REASONS) if action != "approve" else None,
            ),
        )
        await review.submit_review(pool, settings_of(request), ticket_id, decision)
        return Redirect(f"/traces/{ticket_id}?{urlencode({'reviewed': action})}", status_code=303)


class SessionController(Controller):
    """Sign in with the admin token (kept in an HttpOnly, SameSite=Strict cookie), sign out."""

    @get("/login", name="login")
    async def login_form(self, request: Request[Any, Any, Any], next: str | None = None) -> Template | Redirect:
        settings = settings_of(request)
        target = safe_next(next)
        if not settings.admin_token or await admin_authorized(request):
            return Redirect(target, status_code=303)  # nothing to sign in to, or signed in already
        return render(request, "login.html", {"next_path": target, "error": None})

    @post("/login", name="login-submit", status_code=303)
    async def login(
        self,
        request: Request[Any, Any, Any],
        data: Annotated[LoginForm, Body(media_type=RequestEncodingType.URL_ENCODED)],
    ) -> Template | Redirect:
        settings = settings_of(request)
        require_csrf(request, data.csrf_token)
        target = safe_next(data.next)
        if not settings.admin_token:
            return Redirect(target, status_code=303)
        # Failed sign-ins per client address: slowed down, then refused with 429 (`app.ratelimit`).
        limiter = runtime_of_state(request.app.state).auth_limiter
        address = client_address(request)
        limiter.check(address)
        if not admin_token_valid(settings, data.token.strip() or None):
            await limiter.failed(address)
            return render(
                request,
                "login.html",
                {"next_path": target, "error": "That token is not valid."},
                status_code=401,
            )
        limiter.succeeded(address)
        return Redirect(
            target,
            status_code=303,
            cookies=[admin_cookie(settings, secure=request.url.scheme == "https")],
        )

    @get("/logout", name="logout-link")
    async def logout_link(self, request: Request[Any, Any, Any], pool: asyncpg.Pool) -> Redirect:
        return await signed_out(request, pool)

    @post("/logout", name="logout", status_code=303)
    async def logout(
        self,
        request: Request[Any, Any, Any],
        pool: asyncpg.Pool,
        data: Annotated[LogoutForm, Body(media_type=RequestEncodingType.URL_ENCODED)],
    ) -> Redirect:
        require_csrf(request, data.csrf_token)
        return await signed_out(request, pool)


async def signed_out(request: Request[Any, Any, Any], pool: asyncpg.Pool) -> Redirect:
    # Signing out is harmless to trigger, so GET works too. The session is revoked server-side (a copy of the
    # cookie stops working too), and the browser's cookie is dropped.
    async with pool.acquire() as conn:
        await revoke_session(conn, settings_of(request), request.cookies.get(ADMIN_COOKIE))
    response = Redirect("/login", status_code=303)
    response.delete_cookie(ADMIN_COOKIE, path="/")
    return response


STATIC_FILES = {
    "console.css": ((STATIC_DIR / "console.css").read_bytes(), "text/css; charset=utf-8"),
    "favicon.svg": ((STATIC_DIR / "favicon.svg").read_bytes(), "image/svg+xml"),
}


@get("/static/{name:str}", name="static")
async def static_file(name: str) -> Response[bytes]:
    """The console's own assets: a fixed list, never a path from the request."""
    if name not in STATIC_FILES:
        raise NotFound(f"no static file {name!r}")
    content, media_type = STATIC_FILES[name]
    return Response(content, media_type=media_type, headers={"Cache-Control": "public, max-age=300"})


# --- error pages ---


def redirect_to_login(_: Request[Any, Any, Any], exc: LoginRequired) -> Response[Any]:
    return Redirect(login_url(exc.next_path), status_code=303)


def error_page(request: Request[Any, Any, Any], exc: DeskPilotError) -> Response[Any]:
    return render(
        request,
        "error.html",
        {"status_code": exc.status, "title": exc.title, "detail": exc.detail},
        status_code=exc.status,
        headers=exc.headers,
    )


def invalid_form_page(request: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    return render(
        request,
        "error.html",
        {"status_code": 400, "title": "Bad request", "detail": str(exc.detail)},
        status_code=400,
    )


web_router = Router(
    path="/",
    route_handlers=[ConsoleController, SessionController, static_file],
    middleware=[security_headers_middleware],
    exception_handlers={
        LoginRequired: redirect_to_login,
        DeskPilotError: error_page,
        ValidationException: invalid_form_page,
    },
    include_in_schema=False,
)
