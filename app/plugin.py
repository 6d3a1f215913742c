"""The one init plugin: routes, dependencies, error rendering, lifespan resources and OpenAPI, wired in one place."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import asyncpg
from litestar import Litestar
from litestar.config.app import AppConfig
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.di import Provide
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.plugins import InitPluginProtocol

from app.observability import install_log_redaction
from app.runtime import Runtime
from core import db
from core.db import Connection
from core.errors import EXCEPTION_HANDLERS, Forbidden, Unauthorized
from core.metrics import latency_middleware_factory
from core.settings import Settings
from ingest.store import NewTicketBatcher
from tickets.wakeup import WorkerWaker

log = logging.getLogger(__name__)

ADMIN_COOKIE = "deskpilot_admin"


@asynccontextmanager
async def lifespan(app: Litestar) -> AsyncIterator[None]:
    runtime = runtime_of_state(app.state)
    url = runtime.database_url or db.resolve_database_url(runtime.settings)
    # Migrate before the pool exists: registering the vector codec needs the extension.
    await db.migrate(url)
    settings = runtime.settings
    if runtime.run_worker:
        settings = settings.sized_for_worker(settings.worker_concurrency)
    runtime.pool = await db.create_pool(url, settings)
    runtime.waker = WorkerWaker(runtime.pool)
    runtime.ticket_batcher = NewTicketBatcher(runtime.pool, runtime.settings)
    if runtime.run_worker:
        from app.worker import start_background_work

        runtime.background.extend(await start_background_work(runtime))
    try:
        yield
    finally:
        runtime.stop.set()
        if runtime.background:
            from app.worker import stop_background_work

            await stop_background_work(runtime)
        if runtime.ticket_batcher is not None:
            await runtime.ticket_batcher.close()  # before the pool, as the waker
            runtime.ticket_batcher = None
        if runtime.waker is not None:
            await runtime.waker.close()  # before the pool: a wake-up in flight holds one of its connections
            runtime.waker = None
        await runtime.pool.close()
        runtime.pool = None


# --- dependencies -------------------------------------------------------------------------------------------


async def provide_runtime(state: State) -> Runtime:
    return runtime_of_state(state)


async def provide_settings(state: State) -> Settings:
    return runtime_of_state(state).settings


async def provide_pool(state: State) -> asyncpg.Pool:
    return runtime_of_state(state).require_pool()


def runtime_of_state(state: State) -> Runtime:
    runtime: Runtime = state.runtime
    return runtime


# --- guards -------------------------------------------------------------------------------------------------


# How long a console sign-in lasts: the cookie carries its expiry, signed.
SESSION_MAX_AGE_S = 12 * 3600
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def admin_token_valid(settings: Settings, presented: str | None) -> bool:
    """`presented` is the admin token itself (a bearer header, the login form), or none is configured."""
    if not settings.admin_token:
        return True
    return presented is not None and hmac.compare_digest(presented.encode(), settings.admin_token.encode())


def session_cookie_value(settings: Settings, *, now: float | None = None) -> str:
    """The console's session cookie: `<expiry>.<nonce>.<HMAC of both keyed by the admin token>`, never the token
    itself, so the cookie (and the Set-Cookie header carrying it) cannot be replayed as a bearer token, expires by
    itself and stops working everywhere when the token is rotated. Signing out revokes it server-side
    (`revoke_session`); the nonce tells apart two sign-ins of the same second."""
    expires = int((time.time() if now is None else now) + SESSION_MAX_AGE_S)
    nonce = secrets.token_urlsafe(12)
    return f"{expires}.{nonce}.{_session_signature(settings, expires, nonce)}"


def session_cookie_valid(settings: Settings, value: str | None, *, now: float | None = None) -> bool:
    """Signed with the current admin token and not expired (revocation is `session_revoked`, in the database)."""
    if not settings.admin_token:
        return True
    expires_at = session_expiry(settings, value)
    return expires_at is not None and expires_at > (time.time() if now is None else now)


def session_expiry(settings: Settings, value: str | None) -> int | None:
    """The expiry a correctly signed session cookie carries, else None."""
    expires_text, _, rest = (value or "").partition(".")
    nonce, _, signature = rest.partition(".")
    if not expires_text.isdigit() or len(expires_text) > 12 or not nonce or len(nonce) > 64:
        return None
    expires = int(expires_text)
    if not hmac.compare_digest(signature.encode(), _session_signature(settings, expires, nonce).encode()):
        return None
    return expires


def _session_signature(settings: Settings, expires: int, nonce: str) -> str:
    key = (settings.admin_token or "").encode()
    return hmac.new(key, f"deskpilot-session:{expires}:{nonce}".encode(), hashlib.sha256).hexdigest()


def _session_key(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


async def revoke_session(conn: Connection, settings: Settings, value: str | None) -> bool:
    """Sign a session out everywhere: remembered (by its hash) until it would have expired anyway. Returns
    whether there was a valid session to revoke."""
    expires = session_expiry(settings, value) if settings.admin_token else None
    if value is None or expires is None or expires <= time.time():
        return False
    await conn.execute(
        """WITH gone AS (DELETE FROM revoked_sessions WHERE expires_at < now())
           INSERT INTO revoked_sessions (session_hash, expires_at) VALUES ($1, to_timestamp($2))
           ON CONFLICT (session_hash) DO NOTHING""",
        _session_key(value),
        float(expires),
    )
    return True


async def session_revoked(conn: Connection, value: str) -> bool:
    found = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM revoked_sessions WHERE session_hash = $1)", _session_key(value)
    )
    return bool(found)


def _bearer(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    scheme, _, token = connection.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def admin_authenticated(connection: ASGIConnection[Any, Any, Any, Any]) -> bool:
    """A bearer header with the admin token, or a correctly signed, unexpired session cookie (or no token
    configured). Does not look at revocation: guards use `admin_authorized`."""
    settings = runtime_of_state(connection.app.state).settings
    bearer = _bearer(connection)
    if bearer is not None:
        return admin_token_valid(settings, bearer)
    return session_cookie_valid(settings, connection.cookies.get(ADMIN_COOKIE))


async def admin_authorized(connection: ASGIConnection[Any, Any, Any, Any]) -> bool:
    """`admin_authenticated`, and a session cookie that was not signed out."""
    runtime = runtime_of_state(connection.app.state)
    if not runtime.settings.admin_token:
        return True
    if not admin_authenticated(connection):
        return False
    if _bearer(connection) is not None:
        return True
    async with runtime.require_pool().acquire() as conn:
        return not await session_revoked(conn, connection.cookies.get(ADMIN_COOKIE) or "")


def client_address(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    return connection.client.host if connection.client else "unknown"


async def admin_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Admin endpoints need the admin bearer token (or the console's session cookie) when one is configured.

    Failed attempts are counted per client address (`app.ratelimit`): slowed down, then refused with 429. A write
    authenticated by the cookie alone must come from this site as JSON (CSRF): a browser sends the cookie with
    any cross-site form, but no other site can send JSON here without a CORS preflight this app never grants.
    """
    runtime = runtime_of_state(connection.app.state)
    if not runtime.settings.admin_token:
        return
    address = client_address(connection)
    runtime.auth_limiter.check(address)
    if not await admin_authorized(connection):
        await runtime.auth_limiter.failed(address)
        raise Unauthorized(
            "a valid admin token is required (Authorization: Bearer <DESKPILOT_ADMIN_TOKEN>)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    runtime.auth_limiter.succeeded(address)
    if _bearer(connection) is None and connection.scope.get("method", "GET") not in SAFE_METHODS:
        require_same_site_json(connection)


def require_same_site_json(connection: ASGIConnection[Any, Any, Any, Any]) -> None:
    """A cookie-authenticated write: JSON, and an Origin (when the browser sends one) of this very site."""
    media_type = connection.headers.get("content-type", "").partition(";")[0].strip().lower()
    is_json = media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )
    if not is_json:
        raise Forbidden(
            "a write authenticated by the console cookie must be sent as application/json; "
            "API clients send Authorization: Bearer <DESKPILOT_ADMIN_TOKEN>",
            field="content-type",
        )
    origin = connection.headers.get("origin")
    if origin is not None and not _same_origin(origin, connection):
        raise Forbidden("a write authenticated by the console cookie must come from this site", field="origin")


def _same_origin(origin: str, connection: ASGIConnection[Any, Any, Any, Any]) -> bool:
    try:
        parts = urlsplit(origin.strip())
        origin_port = parts.port
    except ValueError:
        return False
    if not parts.hostname or parts.scheme not in ("http", "https"):
        return False
    default = 443 if parts.scheme == "https" else 80
    host = connection.headers.get("host", "")
    try:
        own = urlsplit(f"{parts.scheme}://{host}")
        own_port = own.port
    except ValueError:
        return False
    return (parts.hostname, origin_port or default) == (own.hostname, own_port or default)


# --- the plugin ---------------------------------------------------------------------------------------------


class DeskPilotPlugin(InitPluginProtocol):
    def __init__(self, settings: Settings, *, database_url: str | None, run_worker: bool) -> None:
        self.runtime = Runtime(settings=settings, database_url=database_url, run_worker=run_worker)

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        from app.controllers import ROUTE_HANDLERS
        from app.web import template_config

        settings = self.runtime.settings
        # Before any request is made: HTTP clients log whole URLs, query tokens included.
        install_log_redaction()
        app_config.state["runtime"] = self.runtime
        app_config.route_handlers.extend(ROUTE_HANDLERS)
        app_config.dependencies.update(
            {
                "runtime": Provide(provide_runtime),
                "settings": Provide(provide_settings),
                "pool": Provide(provide_pool),
            }
        )
        app_config.exception_handlers.update(EXCEPTION_HANDLERS)
        app_config.lifespan.append(lifespan)
        app_config.middleware.append(latency_middleware_factory(self.runtime.metrics))
        app_config.request_max_body_size = settings.max_body_bytes
        app_config.template_config = template_config()
        app_config.openapi_config = OpenAPIConfig(
            title="DeskPilot",
            version="0.1.0",
            description="Self-hosted support automation: ingest, route and resolve tickets.",
            path="/schema",
            components=Components(
                security_schemes={
                    "AdminToken": SecurityScheme(type="http", scheme="bearer", description="DESKPILOT_ADMIN_TOKEN"),
                }
            ),
        )
        return app_config
