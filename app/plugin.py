"""The one init plugin: routes, dependencies, error rendering, lifespan resources and OpenAPI, wired in one place."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

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

from core import db
from core.errors import EXCEPTION_HANDLERS, Unauthorized, Unavailable
from core.metrics import Metrics, latency_middleware_factory
from core.settings import Settings

log = logging.getLogger(__name__)

ADMIN_COOKIE = "deskpilot_admin"


@dataclass
class Runtime:
    """Process-wide resources, created in the lifespan and reached through `app.state.runtime`."""

    settings: Settings
    database_url: str | None
    run_worker: bool
    metrics: Metrics = field(default_factory=Metrics)
    pool: asyncpg.Pool | None = None
    background: list[asyncio.Task[Any]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def require_pool(self) -> asyncpg.Pool:
        if self.pool is None:
            raise Unavailable("the database pool is not ready")
        return self.pool


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


def admin_token_valid(settings: Settings, presented: str | None) -> bool:
    """`presented` is the admin token itself (a bearer header, the login form), or none is configured."""
    if not settings.admin_token:
        return True
    return presented is not None and hmac.compare_digest(presented.encode(), settings.admin_token.encode())


def session_cookie_value(settings: Settings, *, now: float | None = None) -> str:
    """The console's session cookie: `<expiry>.<HMAC of it keyed by the admin token>`, never the token itself,
    so the cookie (and the Set-Cookie header carrying it) cannot be replayed as a bearer token, expires by itself
    and stops working everywhere when the token is rotated."""
    expires = int((time.time() if now is None else now) + SESSION_MAX_AGE_S)
    return f"{expires}.{_session_signature(settings, expires)}"


def session_cookie_valid(settings: Settings, value: str | None, *, now: float | None = None) -> bool:
    if not settings.admin_token:
        return True
    expires_text, _, signature = (value or "").partition(".")
    if not expires_text.isdigit() or len(expires_text) > 12:
        return False
    expires = int(expires_text)
    if expires <= (time.time() if now is None else now):
        return False
    return hmac.compare_digest(signature.encode(), _session_signature(settings, expires).encode())


def _session_signature(settings: Settings, expires: int) -> str:
    key = (settings.admin_token or "").encode()
    return hmac.new(key, f"deskpilot-session:{expires}".encode(), hashlib.sha256).hexdigest()


def admin_authenticated(connection: ASGIConnection[Any, Any, Any, Any]) -> bool:
    """A bearer header with the admin token, or the console's signed session cookie (or no token configured)."""
    settings = runtime_of_state(connection.app.state).settings
    header = connection.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return admin_token_valid(settings, token.strip())
    return session_cookie_valid(settings, connection.cookies.get(ADMIN_COOKIE))


def admin_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Admin endpoints need the admin bearer token when one is configured."""
    if not admin_authenticated(connection):
        raise Unauthorized(
            "a valid admin token is required (Authorization: Bearer <DESKPILOT_ADMIN_TOKEN>)",
            headers={"WWW-Authenticate": "Bearer"},
        )


# --- the plugin ---------------------------------------------------------------------------------------------


class DeskPilotPlugin(InitPluginProtocol):
    def __init__(self, settings: Settings, *, database_url: str | None, run_worker: bool) -> None:
        self.runtime = Runtime(settings=settings, database_url=database_url, run_worker=run_worker)

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        from app.controllers import ROUTE_HANDLERS
        from app.web import template_config

        settings = self.runtime.settings
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
