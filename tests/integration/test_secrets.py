"""Secrets never leak (RELIABILITY.md, "Security"): with every secret configured to a recognisable value, no API
response (bodies and headers, errors included), page, trace, metric, schema or log line carries any of them.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any
from uuid import uuid4

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from agent.runner import TicketProcessor
from agent.triage.classifier import RoutingModelCache
from core.metrics import Metrics
from ingest.signatures import sign_webhook
from tests.support.fake_openai import FakeOpenAI, reply_json, reset, status
from tests.support.knowledge import load_example_resolutions, memo_embedder
from tests.support.trace_fixtures import seed_traces
from tickets import reads as tickets
from tickets.queue import claim_next_ticket

INGEST = "/api/webhooks/support/ingest"
# Each value carries a unique marker, so a partial echo ("sk-…5c1d" style masking aside) is caught as well.
SECRETS = {
    "DESKPILOT_ADMIN_TOKEN": "adm-7b2e9c41-token-value",
    "DESKPILOT_WEBHOOK_SECRET": "whk-0d5f3a88-signing-secret",
    "OPENAI_API_KEY": "sk-proj-a41c6e27-openai-key",
    "DESKPILOT_SMTP_URL": "smtp://mailer:smtp-9e13b5d0-password@127.0.0.1:2525",
    "DESKPILOT_CALLBACK_SECRET": "cb-4e6f1a92-callback-secret",
}
MARKERS = ("7b2e9c41", "0d5f3a88", "a41c6e27", "9e13b5d0", "4e6f1a92")
ADMIN = {"Authorization": f"Bearer {SECRETS['DESKPILOT_ADMIN_TOKEN']}"}


def leaked_in(text: str) -> list[str]:
    secret_values = [*SECRETS.values(), "smtp-9e13b5d0-password"]
    return [value for value in (*secret_values, *MARKERS) if value in text]


class Surface:
    """Everything a test saw: bodies and headers of each response, by what was asked."""

    def __init__(self) -> None:
        self.seen: dict[str, str] = {}

    def add(self, label: str, response: Any) -> Any:
        headers = "\n".join(f"{k}: {v}" for k, v in response.headers.multi_items())
        self.seen[f"{label} -> {response.status_code}"] = headers + "\n\n" + response.text
        return response

    def leaks(self) -> dict[str, list[str]]:
        return {label: found for label, text in self.seen.items() if (found := leaked_in(text))}


def signed(payload: dict[str, Any] | bytes, *, secret: str = SECRETS["DESKPILOT_WEBHOOK_SECRET"]) -> dict[str, Any]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    msg_id, now = f"msg-{uuid4().hex[:12]}", int(time.time())
    return {
        "content": body,
        "headers": {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(now),
            "webhook-signature": sign_webhook(secret, msg_id, now, body),
        },
    }


def ticket(external_id: str, **overrides: Any) -> dict[str, Any]:
    payload = {
        "external_id": external_id,
        "channel": "email",
        "customer_email": "ann@example.com",
        "subject": "Export fails",
        "body": "The CSV export stops at 50%. Can you help?",
    }
    payload.update(overrides)
    return payload


@pytest.fixture
def secret_client(make_client: Callable[..., AsyncTestClient[Litestar]]) -> AsyncTestClient[Litestar]:
    return make_client(**SECRETS)


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every logger at DEBUG, from before the app starts (start-up warnings included)."""
    with caplog.at_level(logging.DEBUG):
        yield caplog


async def test_no_secret_in_responses_pages_traces_or_logs(
    secret_client: AsyncTestClient[Litestar], clean_db: Any, debug_logs: pytest.LogCaptureFixture
) -> None:
    seen = Surface()
    async with secret_client as client:
        for path in ("/health", "/metrics", "/schema/openapi.json", "/schema/openapi.yaml"):
            seen.add(path, await client.get(path))
            seen.add(f"{path} as the admin", await client.get(path, headers=ADMIN))

        # Ingest: accepted, replayed, conflicting, and every way of being refused.
        created = seen.add("ingest new", await client.post(INGEST, **signed(ticket("sec-1"))))
        assert created.status_code == 201, created.text
        ticket_id = created.json()["ticket_id"]
        seen.add("ingest replay", await client.post(INGEST, **signed(ticket("sec-1"))))
        seen.add("ingest conflict", await client.post(INGEST, **signed(ticket("sec-1", body="Something else"))))
        seen.add("ingest unsigned", await client.post(INGEST, json=ticket("sec-2")))
        seen.add("ingest wrong secret", await client.post(INGEST, **signed(ticket("sec-3"), secret="guess")))
        seen.add(
            "ingest admin token as signature key",
            await client.post(INGEST, **signed(ticket("sec-4"), secret=SECRETS["DESKPILOT_ADMIN_TOKEN"])),
        )
        seen.add("ingest malformed", await client.post(INGEST, **signed(b'{"external_id": ')))
        seen.add("ingest invalid", await client.post(INGEST, **signed(ticket("sec-5", customer_email="nope"))))
        seen.add("ingest oversize", await client.post(INGEST, **signed(ticket("sec-6", body="x" * 300_000))))
        wrong_type = signed(ticket("sec-7"))
        wrong_type["headers"]["content-type"] = "text/plain"
        seen.add("ingest wrong content type", await client.post(INGEST, **wrong_type))

        # The admin API and pages, authorised and not; traces with every node's output.
        traces = await seed_traces(clean_db)
        for label, headers in (("admin", ADMIN), ("wrong token", {"Authorization": "Bearer guess"}), ("none", {})):
            for path in (
                "/api/tickets",
                f"/api/tickets/{ticket_id}",
                f"/api/tickets/{ticket_id}/trace",
                f"/api/tickets/{traces.resolved}",
                f"/api/tickets/{traces.resolved}/trace",
                f"/api/tickets/{traces.escalated}/trace",
                f"/api/tickets/{uuid4()}",
                "/api/review-queue",
                "/api/kb/search?q=",
                "/api/tickets?status=nonsense",
                f"/traces/{traces.resolved}",
                f"/traces/{traces.escalated}",
                f"/traces/{uuid4()}",
                "/console",
                "/console/tickets",
                "/login",
            ):
                seen.add(f"{label} GET {path}", await client.get(path, headers=headers, follow_redirects=False))
        seen.add("bad review", await client.post(f"/api/tickets/{ticket_id}/review", json={"x": 1}, headers=ADMIN))
        seen.add("bad customer", await client.post("/api/customers", json={"email": "x"}, headers=ADMIN))
        login_page = seen.add("login page", await client.get("/login"))
        seen.add(
            "login with a wrong token",
            await client.post("/login", data={"token": "guess", "csrf_token": "x"}, follow_redirects=False),
        )
        assert login_page.status_code == 200

    assert seen.leaks() == {}
    assert debug_logs.records, "nothing was captured: the log check below would prove nothing"
    assert leaked_in(debug_logs.text) == [], [r.getMessage() for r in debug_logs.records if leaked_in(r.getMessage())]


async def test_an_unexpected_error_answers_500_without_detail(
    secret_client: AsyncTestClient[Litestar],
    clean_db: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The 500 body says nothing about the failure: not its message, not the configuration behind it."""

    async def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError(
            f"simulated failure while using {SECRETS['OPENAI_API_KEY']} and {SECRETS['DESKPILOT_SMTP_URL']}"
        )

    monkeypatch.setattr(tickets, "get_ticket_detail", broken)
    async with secret_client as client:
        response = await client.get(f"/api/tickets/{uuid4()}", headers=ADMIN)
    assert response.status_code == 500
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["detail"] == "an unexpected error occurred"
    assert "simulated failure" not in response.text
    assert leaked_in(response.text + str(response.headers)) == []


# Credentials in OPENAI_BASE_URL, as a proxy in front of the model may want them: a user and password, or a token
# alone as the user name.
URL_CREDENTIALS = {"user and password": "proxy-user:pw-b7d04c19", "token as user name": "urltok-5e2a9f31"}
URL_MARKERS = ("b7d04c19", "5e2a9f31")


@pytest.fixture(params=list(URL_CREDENTIALS.values()), ids=list(URL_CREDENTIALS))
def llm_behind_credentials(request: pytest.FixtureRequest) -> Iterator[tuple[FakeOpenAI, dict[str, str]]]:
    """The fake model, and the settings that reach it through a base URL carrying credentials."""
    with FakeOpenAI() as llm:
        url = llm.base_url.replace("http://", f"http://{request.param}@")
        yield (
            llm,
            {"OPENAI_BASE_URL": url, "OPENAI_API_KEY": SECRETS["OPENAI_API_KEY"], "DESKPILOT_LLM_MAX_RETRIES": "1"},
        )


@pytest.fixture
def llm_client(
    make_client: Callable[..., AsyncTestClient[Litestar]], llm_behind_credentials: tuple[FakeOpenAI, dict[str, str]]
) -> AsyncTestClient[Litestar]:
    # Built before the test runs: the app configures logging when it is built, and pytest's log capture attaches
    # itself at the start of the test.
    return make_client(**llm_behind_credentials[1])


async def test_credentials_in_the_llm_base_url_are_not_shown(
    llm_behind_credentials: tuple[FakeOpenAI, dict[str, str]],
    llm_client: AsyncTestClient[Litestar],
    make_settings: Callable[..., Any],
    clean_db: Any,
    embedder: Any,
    debug_logs: pytest.LogCaptureFixture,
) -> None:
    """Not in /health, the settings' public view, the API, the traces (errors quoting the URL included) or the logs
    of the agent calling the model; and the model still receives the credentials."""
    llm, env = llm_behind_credentials
    url = env["OPENAI_BASE_URL"]
    userinfo = url.split("//", 1)[1].split("@", 1)[0]
    encoded = base64.b64encode((userinfo if ":" in userinfo else f"{userinfo}:").encode()).decode()

    def leaks(text: str) -> list[str]:
        return [marker for marker in (*URL_MARKERS, encoded) if marker in text]

    settings = make_settings(**env)
    assert leaks(json.dumps(settings.public_view())) == []
    answer = {"reply": "Hello, open Settings, then Data.", "cited_ids": [], "confidence": 0.5, "reasons": []}
    # An answer; a refusal whose message quotes the URL it was sent to; a connection that drops twice.
    llm.script(reply_json({**answer, "needs_human": False}), status(401, message=f"proxy refused {url}"))
    llm.script(reset(), reset())
    async with clean_db.acquire() as conn:  # something to cite: with nothing, the model is not asked
        await load_example_resolutions(conn, memo_embedder(embedder))
    processor = TicketProcessor(clean_db, settings, Metrics(), embedder=embedder, models=RoutingModelCache())
    seen = Surface()
    async with llm_client as client:
        health = seen.add("/health", await client.get("/health"))
        assert health.json()["llm"]["base_url"] == llm.base_url.replace("http://", "http://***@")
        ticket_ids = []
        for n in range(3):
            created = await client.post(INGEST, json=ticket(f"url-cred-{n}"))
            assert created.status_code == 201, created.text
            ticket_ids.append(created.json()["ticket_id"])
        for _ in ticket_ids:
            async with clean_db.acquire() as conn:
                claim = await claim_next_ticket(conn, "secret-test", 60.0)
            assert claim is not None
            await processor(claim)
        for ticket_id in ticket_ids:
            for path in (f"/api/tickets/{ticket_id}", f"/api/tickets/{ticket_id}/trace", f"/traces/{ticket_id}"):
                seen.add(path, await client.get(path))
    await processor.drafter.aclose()  # type: ignore[attr-defined]

    assert len(llm.requests) == 4
    assert {request.headers.get("authorization") for request in llm.requests} == {f"Basic {encoded}"}
    traces = "\n".join(text for label, text in seen.seen.items() if "/trace" in label)
    assert "proxy refused" in traces and "OpenAIConnectionError" in traces  # the errors are there, redacted
    assert {label: found for label, text in seen.seen.items() if (found := leaks(text))} == {}
    assert "HTTP Request: POST" in debug_logs.text  # the HTTP client's own line for each call was captured
    assert leaks(debug_logs.text) == [], [r.getMessage() for r in debug_logs.records if leaks(r.getMessage())]
