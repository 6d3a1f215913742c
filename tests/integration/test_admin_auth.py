"""Admin authentication over every route of the app (RELIABILITY.md, "Security"): with an admin token configured,
no token, a wrong token, or the webhook secret presented as a token opens nothing; the right token opens
everything. Routes are enumerated from the app itself, so a new route is covered the day it is added — and the
test fails until it is classified public or protected.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from app.asgi import create_app
from app.plugin import ADMIN_COOKIE, admin_guard, session_cookie_value
from app.web.security import page_guard
from core.errors import PROBLEM_JSON
from core.settings import Settings
from ingest.signatures import sign_webhook

ADMIN_TOKEN = "admin-token-for-auth-tests-3f9a"
WEBHOOK_SECRET = "webhook-secret-for-auth-tests-b71c"
ADMIN_SETTINGS = Settings(admin_token=ADMIN_TOKEN)
SESSION = session_cookie_value(ADMIN_SETTINGS)
INGEST = "/api/webhooks/support/ingest"

# Public on purpose: liveness for probes (reduced to status and database without the token), the schema, the
# webhook (it has its own signature check), the mail providers' inbound webhooks (each with the provider's own
# authentication, tested in test_inbound_email.py), the contact-form widget and its endpoints (origin allow-list and
# an HMAC of the customer's email, tested in test_widget.py), the sign-in form and sign-out, and static assets.
PUBLIC_PATHS = {"/health", INGEST, "/login", "/logout", "/widget.js"}
PUBLIC_PREFIXES = ("/schema", "/static/", "/api/webhooks/support/inbound/", "/api/widget/")
# Protected: the JSON admin API (and the metrics scrape) answers 401; the console pages redirect to sign-in.
API_PREFIX = "/api/"
API_PATHS = {"/metrics"}
PAGE_PATHS = {"/", "/console"}
PAGE_PREFIXES = ("/console/", "/traces/")


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # the route's own path, with its parameter placeholders
    kind: str  # "public" | "api" | "page" | "unclassified"
    guards: tuple[str, ...]

    @property
    def id(self) -> str:
        return f"{self.method} {self.path}"

    def url(self) -> str:
        """The path with each placeholder filled with a value of its type."""

        def fill(match: re.Match[str]) -> str:
            name, kind = match.group(1), match.group(2)
            if kind == "uuid":
                return str(uuid.uuid4())
            return "console.css" if name == "name" else "openapi.json"

        return re.sub(r"\{(\w+):(\w+)\}", fill, self.path)


def classify(path: str) -> str:
    if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
        return "public"
    if path.startswith(API_PREFIX) or path in API_PATHS:
        return "api"
    if path in PAGE_PATHS or path.startswith(PAGE_PREFIXES):
        return "page"
    return "unclassified"


def _guard_name(guard: Any) -> str:
    target = getattr(guard, "func", guard)  # Litestar wraps guards in an AsyncCallable
    return {admin_guard: "admin_guard", page_guard: "page_guard"}.get(target, getattr(target, "__name__", "?"))


def all_endpoints() -> list[Endpoint]:
    """Every (method, route) the app serves, except the OPTIONS answers Litestar generates itself."""
    app = create_app(Settings.from_mapping({"DESKPILOT_DATABASE_URL": "postgresql://unused/unused"}))
    found = set()
    for route in app.routes:
        for handler in getattr(route, "route_handlers", []):
            guards = tuple(sorted(_guard_name(g) for g in handler.resolve_guards()))
            for method in handler.http_methods:
                if method != "OPTIONS":
                    found.add(Endpoint(method, route.path, classify(route.path), guards))
    return sorted(found, key=lambda e: (e.path, e.method))


ENDPOINTS = all_endpoints()
PROTECTED = [e for e in ENDPOINTS if e.kind in ("api", "page")]


def test_every_route_is_classified_and_guarded_accordingly() -> None:
    assert [e.id for e in ENDPOINTS if e.kind == "unclassified"] == [], "classify the new route(s) in this file"
    wrongly_guarded = [
        e.id for e in ENDPOINTS if {"api": ("admin_guard",), "page": ("page_guard",), "public": ()}[e.kind] != e.guards
    ]
    assert wrongly_guarded == []
    # The enumeration itself must see the app: a handful of routes would mean it broke, not that they vanished.
    assert {e.kind for e in ENDPOINTS} == {"public", "api", "page"} and len(PROTECTED) >= 15


@pytest.fixture
async def guarded_client(database_url: str, make_settings: Callable[..., Settings]) -> Any:
    """The app with an admin token and a webhook secret. No table is emptied first: nothing here reads data."""
    settings = make_settings(
        DESKPILOT_ADMIN_TOKEN=ADMIN_TOKEN,
        DESKPILOT_WEBHOOK_SECRET=WEBHOOK_SECRET,
        # Every wrong credential in turn from one address: the failed-auth limit is tested in test_hardening.py.
        DESKPILOT_AUTH_FAILURE_LIMIT="100000",
    )
    app = create_app(settings, database_url=database_url)
    async with AsyncTestClient(app=app, raise_server_exceptions=False) as client:
        yield client


async def call(client: Any, endpoint: Endpoint, *, headers: dict[str, str], cookies: dict[str, str]) -> Any:
    client.cookies.clear()
    for name, value in cookies.items():
        client.cookies.set(name, value)
    kwargs: dict[str, Any] = {"headers": headers, "follow_redirects": False}
    if endpoint.method in ("POST", "PUT", "PATCH"):
        if endpoint.kind == "page":
            kwargs["data"] = {"action": "approve", "csrf_token": "x"}
        else:
            kwargs["json"] = {}
    return await client.request(endpoint.method, endpoint.url(), **kwargs)


WRONG_CREDENTIALS = {
    "none": ({}, {}),
    "wrong bearer": ({"Authorization": "Bearer not-the-admin-token"}, {}),
    "empty bearer": ({"Authorization": "Bearer "}, {}),
    "token without scheme": ({"Authorization": ADMIN_TOKEN}, {}),
    "basic scheme": ({"Authorization": f"Basic {ADMIN_TOKEN}"}, {}),
    "token prefix": ({"Authorization": f"Bearer {ADMIN_TOKEN[:-1]}"}, {}),
    "token with suffix": ({"Authorization": f"Bearer {ADMIN_TOKEN}x"}, {}),
    "webhook secret as bearer": ({"Authorization": f"Bearer {WEBHOOK_SECRET}"}, {}),
    "webhook secret as cookie": ({}, {ADMIN_COOKIE: WEBHOOK_SECRET}),
    "wrong cookie": ({}, {ADMIN_COOKIE: "not-the-admin-token"}),
    # The session cookie is a signed expiry, never the token: the token itself is no cookie, and a session
    # cookie is no bearer token.
    "admin token as cookie": ({}, {ADMIN_COOKIE: ADMIN_TOKEN}),
    "session cookie as bearer": ({"Authorization": f"Bearer {SESSION}"}, {}),
    "expired session": ({}, {ADMIN_COOKIE: session_cookie_value(ADMIN_SETTINGS, now=time.time() - 13 * 3600)}),
    "session with a forged expiry": ({}, {ADMIN_COOKIE: f"{int(time.time()) + 10**6}.{SESSION.partition('.')[2]}"}),
    "session signed with another token": (
        {},
        {ADMIN_COOKIE: session_cookie_value(Settings(admin_token=WEBHOOK_SECRET))},
    ),
}


@pytest.mark.parametrize("endpoint", PROTECTED, ids=lambda e: e.id)
async def test_protected_route_refuses_every_wrong_credential(guarded_client: Any, endpoint: Endpoint) -> None:
    for label, (headers, cookies) in WRONG_CREDENTIALS.items():
        response = await call(guarded_client, endpoint, headers=headers, cookies=cookies)
        if endpoint.kind == "api":
            assert response.status_code == 401, (label, response.status_code, response.text)
            assert response.headers["content-type"].startswith(PROBLEM_JSON), label
            assert response.headers.get("www-authenticate") == "Bearer", label
        else:
            assert response.status_code == 303, (label, response.status_code, response.text)
            assert response.headers["location"].startswith("/login"), (label, response.headers["location"])


@pytest.mark.parametrize("endpoint", PROTECTED, ids=lambda e: e.id)
async def test_protected_route_opens_with_the_admin_token(guarded_client: Any, endpoint: Endpoint) -> None:
    for label, (headers, cookies) in {
        "bearer": ({"Authorization": f"Bearer {ADMIN_TOKEN}"}, {}),
        "lower-case scheme": ({"Authorization": f"bearer {ADMIN_TOKEN}"}, {}),
        "session cookie": ({}, {ADMIN_COOKIE: SESSION}),
    }.items():
        response = await call(guarded_client, endpoint, headers=headers, cookies=cookies)
        # Past the guard: whatever the handler says about the (empty) input, it is not "who are you?".
        assert response.status_code != 401, (label, response.text)
        assert response.status_code < 500, (label, response.text)
        assert not response.headers.get("location", "").startswith("/login"), label


@pytest.mark.parametrize("endpoint", [e for e in ENDPOINTS if e.kind == "public"], ids=lambda e: e.id)
async def test_public_route_needs_no_admin_token(guarded_client: Any, endpoint: Endpoint) -> None:
    response = await call(guarded_client, endpoint, headers={}, cookies={})
    assert response.status_code < 500, response.text
    if endpoint.path == INGEST:
        assert response.status_code == 401  # refused by its own signature check, not by the admin guard
        assert "signature" in response.json()["detail"]
    else:
        assert response.status_code != 401, response.text


async def test_the_admin_token_does_not_sign_webhooks(guarded_client: Any, clean_db: Any) -> None:
    payload = json.dumps(
        {"external_id": "auth-1", "customer_email": "ann@example.com", "body": "My export fails."}
    ).encode()
    as_bearer = await guarded_client.post(
        INGEST,
        content=payload,
        headers={"content-type": "application/json", "Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert as_bearer.status_code == 401
    now = int(time.time())
    signed_with_admin_token = await guarded_client.post(
        INGEST,
        content=payload,
        headers={
            "content-type": "application/json",
            "webhook-id": "msg-1",
            "webhook-timestamp": str(now),
            "webhook-signature": sign_webhook(ADMIN_TOKEN, "msg-1", now, payload),
        },
    )
    assert signed_with_admin_token.status_code == 401
    assert await clean_db.fetchval("SELECT count(*) FROM tickets") == 0
    signed = await guarded_client.post(
        INGEST,
        content=payload,
        headers={
            "content-type": "application/json",
            "webhook-id": "msg-2",
            "webhook-timestamp": str(now),
            "webhook-signature": sign_webhook(WEBHOOK_SECRET, "msg-2", now, payload),
        },
    )
    assert signed.status_code == 201, signed.text
