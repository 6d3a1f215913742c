"""Protections of the HTML pages: security headers, the admin login guard and CSRF tokens for the forms.

Signing out revokes the session server-side (`app.plugin.revoke_session`, table `revoked_sessions`): a copied
cookie stops working at once, not when its 12 hours are up.

The pages are cookie-authenticated (`deskpilot_admin`, HttpOnly, SameSite=Strict), so every state-changing
form also carries a CSRF token: a random per-browser cookie and, in the form, an HMAC of it keyed by the admin
token (plain double-submit when no token is configured and the console is open anyway).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any
from urllib.parse import quote

from litestar.connection import ASGIConnection
from litestar.datastructures import Cookie, MutableScopeHeaders
from litestar.enums import ScopeType
from litestar.handlers.base import BaseRouteHandler
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from app.plugin import ADMIN_COOKIE, SESSION_MAX_AGE_S, admin_authorized, runtime_of_state, session_cookie_value
from core.settings import Settings

CSRF_COOKIE = "deskpilot_csrf"
CSRF_FIELD = "csrf_token"

# No script at all, styles and images only from this origin, forms only back to it, never framed.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
}


def security_headers_middleware(app: ASGIApp) -> ASGIApp:
    """Every response of the web routes, error pages and redirects included, carries the security headers."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableScopeHeaders.from_message(message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
                # Pages show customer data: keep them out of shared and back/forward caches.
                if headers.get("content-type", "").startswith("text/html"):
                    headers["cache-control"] = "no-store"
            await send(message)

        await app(scope, receive, send_with_headers)

    return wrapped


# --- login --------------------------------------------------------------------------------------------------


class LoginRequired(Exception):
    """Raised by the page guard; rendered as a redirect to the login form."""

    def __init__(self, next_path: str) -> None:
        super().__init__("login required")
        self.next_path = next_path


def settings_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Settings:
    return runtime_of_state(connection.app.state).settings


async def page_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Pages need the admin token (a bearer header, or a session cookie from /login that was not signed out) when
    one is configured."""
    if not await admin_authorized(connection):
        target = connection.url.path
        if connection.url.query:
            target += "?" + connection.url.query
        raise LoginRequired(safe_next(target))


def login_url(next_path: str) -> str:
    return "/login" if next_path in ("", "/") else f"/login?next={quote(next_path, safe='/')}"


def safe_next(value: str | None) -> str:
    """Only a path on this site: never `//evil.example`, a scheme, or a backslash browsers read as a slash."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    if any(ord(ch) < 0x20 for ch in value):
        return "/"
    return value


def admin_cookie(settings: Settings, *, secure: bool) -> Cookie:
    """The signed-in console's session (`session_cookie_value`: an expiry and its signature, not the token)."""
    return Cookie(
        key=ADMIN_COOKIE,
        value=session_cookie_value(settings),
        path="/",
        httponly=True,
        samesite="strict",
        secure=secure,
        max_age=SESSION_MAX_AGE_S,
    )


# --- CSRF ---------------------------------------------------------------------------------------------------


def new_csrf_cookie(*, secure: bool) -> Cookie:
    return Cookie(
        key=CSRF_COOKIE,
        value=secrets.token_urlsafe(32),
        path="/",
        httponly=True,
        samesite="strict",
        secure=secure,
    )


def csrf_form_token(settings: Settings, cookie_value: str) -> str:
    key = (settings.admin_token or "deskpilot-open-console").encode()
    return hmac.new(key, cookie_value.encode(), hashlib.sha256).hexdigest()


def csrf_valid(settings: Settings, cookie_value: str | None, form_token: str | None) -> bool:
    if not cookie_value or not form_token:
        return False
    return hmac.compare_digest(csrf_form_token(settings, cookie_value), form_token)
