"""Webhook delivery through the outbox against a local HTTP receiver: signatures, retries, 410, redirects,
SSRF.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from core.metrics import Metrics
from core.settings import Settings
from delivery import outbox, ssrf, webhook
from ingest.signatures import verify_webhook
from tests.support.delivery import delivery_row, seed_agent_reply, seed_attempt, seed_ticket
from tests.support.http_receiver import HttpReceiver, Reply

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture
def hook_settings(make_settings: Callable[..., Settings], receiver: HttpReceiver) -> Callable[..., Settings]:
    def build(**env: str) -> Settings:
        base = {
            "DESKPILOT_CALLBACK_URL": receiver.url(),
            "DESKPILOT_CALLBACK_SECRET": SECRET,
            "DESKPILOT_ALLOW_PRIVATE_CALLBACKS": "true",
        }
        return make_settings(**{**base, **env})

    return build


def frozen_clock(moment: datetime) -> type[datetime]:
    """A stand-in for the `datetime` class whose `now()` is `moment`."""

    class Clock(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> datetime:  # type: ignore[override]
            return moment.astimezone(tz) if tz is not None else moment

    return Clock


async def queued_webhook_reply(
    pool: asyncpg.Pool, *, metadata: dict[str, Any] | None = None, email: str = "dev@integration.example"
) -> tuple[UUID, UUID, UUID]:
    ticket_id = await seed_ticket(pool, channel="webhook", email=email, subject="API returns 500", metadata=metadata)
    attempt_id = await seed_attempt(pool, ticket_id, draft="Rotate your API key and retry.", decision="deliver")
    delivery_id = await seed_agent_reply(pool, ticket_id, attempt_id)
    return ticket_id, attempt_id, delivery_id


async def test_signed_post_verifiable_by_the_receiver(
    clean_db: asyncpg.Pool, hook_settings: Callable[..., Settings], receiver: HttpReceiver
) -> None:
    ticket_id, attempt_id, delivery_id = await queued_webhook_reply(clean_db)
    assert await outbox.drain_outbox(clean_db, hook_settings(), Metrics(), "w-1") == 1

    assert len(receiver.requests) == 1
    request = receiver.requests[0]
    assert request.method == "POST"
    assert request.path == "/hook"
    assert verify_webhook(SECRET, request.headers, request.body) == str(attempt_id)
    assert request.headers["webhook-id"] == str(attempt_id)
    assert request.headers["host"] == f"127.0.0.1:{receiver.port}"
    assert request.headers["content-type"] == "application/json"
    payload = json.loads(request.body)
    external_id = await clean_db.fetchval("SELECT external_id FROM tickets WHERE id = $1", ticket_id)
    assert payload == {
        "type": "ticket.reply",
        "ticket_id": str(ticket_id),
        "external_id": external_id,
        "customer_email": "dev@integration.example",
        "subject": "Re: API returns 500",
        "body": "Rotate your API key and retry.",
        "attempt_id": str(attempt_id),
        "created_at": payload["created_at"],
    }
    row = await delivery_row(clean_db, delivery_id)
    # When the reply was queued (the row's own time), not when this copy went out.
    assert datetime.fromisoformat(payload["created_at"].replace("Z", "+00:00")) == row["created_at"]
    assert row["status"] == "sent"
    assert await outbox.drain_outbox(clean_db, hook_settings(), None, "w-1") == 0
    assert len(receiver.requests) == 1


async def test_500_is_retried_with_the_same_webhook_id(
    clean_db: asyncpg.Pool,
    hook_settings: Callable[..., Settings],
    receiver: HttpReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The retry is the same request: same `webhook-id`, byte-identical body (a receiver following the IETF
    Idempotency-Key draft refuses a reused key with another payload); only the signature timestamp is new."""
    receiver.script = [Reply(500)]
    _ticket_id, attempt_id, delivery_id = await queued_webhook_reply(clean_db)
    start = datetime.now(UTC)
    assert await outbox.drain_outbox(clean_db, hook_settings(), None, "w-1", now=start) == 1
    row = await delivery_row(clean_db, delivery_id)
    assert row["status"] == "pending"
    assert row["last_error"] == "HTTP 500"
    # The retry is sent at a later wall-clock time (whole seconds, as the header carries them).
    monkeypatch.setattr(webhook, "datetime", frozen_clock(datetime.now(UTC) + timedelta(seconds=7)))
    assert await outbox.drain_outbox(clean_db, hook_settings(), None, "w-1", now=start + timedelta(hours=1)) == 1
    first, second = receiver.requests
    assert [first.headers["webhook-id"], second.headers["webhook-id"]] == [str(attempt_id)] * 2
    assert second.body == first.body
    assert int(second.headers["webhook-timestamp"]) >= int(first.headers["webhook-timestamp"]) + 6
    assert second.headers["webhook-signature"] != first.headers["webhook-signature"]
    for request in (first, second):
        sent_at = int(request.headers["webhook-timestamp"])
        assert verify_webhook(SECRET, request.headers, request.body, now=sent_at) == str(attempt_id)
    assert (await delivery_row(clean_db, delivery_id))["status"] == "sent"


async def test_429_retry_after_is_honoured(
    clean_db: asyncpg.Pool, hook_settings: Callable[..., Settings], receiver: HttpReceiver
) -> None:
    receiver.script = [Reply(429, {"Retry-After": "600"})]
    _ticket_id, _attempt_id, delivery_id = await queued_webhook_reply(clean_db)
    start = datetime.now(UTC)
    assert await outbox.drain_outbox(clean_db, hook_settings(), None, "w-1", now=start) == 1
    row = await delivery_row(clean_db, delivery_id)
    assert row["status"] == "pending"
    assert row["last_error"] == "HTTP 429"
    assert (row["next_attempt_at"] - start).total_seconds() >= 600 - 1  # not the 15-30 s backoff
    assert await outbox.drain_outbox(clean_db, hook_settings(), None, "w-1", now=start + timedelta(seconds=300)) == 0
    assert len(receiver.requests) == 1
    assert await outbox.drain_outbox(clean_db, hook_settings(), None, "w-1", now=start + timedelta(seconds=601)) == 1
    assert len(receiver.requests) == 2
    assert (await delivery_row(clean_db, delivery_id))["status"] == "sent"


async def test_410_disables_without_further_tries(
    clean_db: asyncpg.Pool, hook_settings: Callable[..., Settings], receiver: HttpReceiver
) -> None:
    receiver.script = [Reply(410)]
    ticket_id, _attempt_id, delivery_id = await queued_webhook_reply(clean_db)
    metrics = Metrics()
    assert await outbox.drain_outbox(clean_db, hook_settings(), metrics, "w-1") == 1
    row = await delivery_row(clean_db, delivery_id)
    assert row["status"] == "disabled"
    assert "410" in row["last_error"]
    later = datetime.now(UTC) + timedelta(days=2)
    assert await outbox.drain_outbox(clean_db, hook_settings(), metrics, "w-1", now=later) == 0
    assert len(receiver.requests) == 1
    ticket = await clean_db.fetchrow("SELECT needs_review, last_error FROM tickets WHERE id = $1", ticket_id)
    assert ticket["needs_review"] is True
    assert "disabled" in ticket["last_error"]
    assert (
        metrics.registry.get_sample_value("deskpilot_deliveries_total", {"channel": "webhook", "outcome": "disabled"})
        == 1.0
    )


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_redirects_are_not_followed(
    clean_db: asyncpg.Pool, hook_settings: Callable[..., Settings], receiver: HttpReceiver, status: int
) -> None:
    target = await HttpReceiver().start()
    try:
        receiver.script = [Reply(status, {"Location": target.url("/stolen")})]
        ticket_id, _attempt_id, delivery_id = await queued_webhook_reply(clean_db)
        assert await outbox.drain_outbox(clean_db, hook_settings(), None, "w-1") == 1
    finally:
        await target.stop()
    assert target.requests == []  # the redirect target (loopback) never hears from us
    row = await delivery_row(clean_db, delivery_id)
    assert row["status"] == "failed"
    assert "redirects are not followed" in row["last_error"]
    assert await clean_db.fetchval("SELECT needs_review FROM tickets WHERE id = $1", ticket_id) is True


async def test_other_4xx_fails_at_once(
    clean_db: asyncpg.Pool, hook_settings: Callable[..., Settings], receiver: HttpReceiver
) -> None:
    receiver.script = [Reply(400)]
    _ticket_id, _attempt_id, delivery_id = await queued_webhook_reply(clean_db)
    assert await outbox.drain_outbox(clean_db, hook_settings(), None, "w-1") == 1
    row = await delivery_row(clean_db, delivery_id)
    assert row["status"] == "failed"
    assert row["tries"] == 1
    assert "HTTP 400" in row["last_error"]


async def test_timeout_is_retried(
    clean_db: asyncpg.Pool,
    hook_settings: Callable[..., Settings],
    receiver: HttpReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(webhook, "WEBHOOK_TIMEOUT_S", 0.3)
    receiver.script = [Reply(200, delay_s=2.0)]
    _ticket_id, _attempt_id, delivery_id = await queued_webhook_reply(clean_db)
    assert await outbox.drain_outbox(clean_db, hook_settings(), None, "w-1") == 1
    row = await delivery_row(clean_db, delivery_id)
    assert row["status"] == "pending"
    assert "timed out" in row["last_error"]


async def test_ticket_callback_url_wins_over_the_default(
    clean_db: asyncpg.Pool, hook_settings: Callable[..., Settings], receiver: HttpReceiver
) -> None:
    own = await HttpReceiver().start()
    try:
        _t, _a, delivery_id = await queued_webhook_reply(clean_db, metadata={"callback_url": own.url("/mine")})
        _t2, _a2, other_id = await queued_webhook_reply(
            clean_db, metadata={"callback_url": "file:///etc/passwd"}, email="other@integration.example"
        )
        settings = hook_settings(DESKPILOT_CALLBACK_HOSTS="127.0.0.1")  # the ticket's own host is allowed
        assert await outbox.drain_outbox(clean_db, settings, None, "w-1") == 2
    finally:
        await own.stop()
    assert [r.path for r in own.requests] == ["/mine"]
    assert [r.path for r in receiver.requests] == ["/hook"]  # a non-http callback_url falls back to the default
    assert (await delivery_row(clean_db, delivery_id))["status"] == "sent"
    assert (await delivery_row(clean_db, other_id))["status"] == "sent"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/hook",
        "http://[::1]:{port}/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/hook",
        "http://localhost:{port}/hook",
        "http://[::ffff:127.0.0.1]:{port}/hook",
        "http://100.64.0.1/hook",
        "http://0.0.0.0:{port}/hook",
    ],
)
async def test_ssrf_guard_refuses_private_callbacks(
    clean_db: asyncpg.Pool,
    make_settings: Callable[..., Settings],
    receiver: HttpReceiver,
    url: str,
) -> None:
    settings = make_settings(
        DESKPILOT_CALLBACK_URL=url.format(port=receiver.port),
        DESKPILOT_CALLBACK_SECRET=SECRET,
        DESKPILOT_ALLOW_PRIVATE_CALLBACKS="false",
    )
    ticket_id, _attempt_id, delivery_id = await queued_webhook_reply(clean_db)
    assert await outbox.drain_outbox(clean_db, settings, None, "w-1") == 1
    assert receiver.requests == []
    row = await delivery_row(clean_db, delivery_id)
    assert row["status"] == "failed"
    assert row["last_error"].startswith("callback refused")
    assert await clean_db.fetchval("SELECT needs_review FROM tickets WHERE id = $1", ticket_id) is True


async def test_missing_callback_url_fails_visibly(
    clean_db: asyncpg.Pool, make_settings: Callable[..., Settings]
) -> None:
    _ticket_id, _attempt_id, delivery_id = await queued_webhook_reply(clean_db)
    assert await outbox.drain_outbox(clean_db, make_settings(), None, "w-1") == 1
    row = await delivery_row(clean_db, delivery_id)
    assert row["status"] == "failed"
    assert "no callback URL" in row["last_error"]


async def test_redirect_to_loopback_from_an_allowed_host_is_not_followed(
    clean_db: asyncpg.Pool, make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the guard on: a callback host that passes the check answers with a redirect to loopback."""
    partner = await HttpReceiver(host="127.0.0.2").start()
    inside = await HttpReceiver(host="127.0.0.1").start()
    real_reason = ssrf.forbidden_reason

    def treat_partner_as_public(address: Any) -> str | None:
        return None if str(address) == "127.0.0.2" else real_reason(address)

    monkeypatch.setattr(ssrf, "forbidden_reason", treat_partner_as_public)
    try:
        partner.script = [Reply(302, {"Location": inside.url("/admin")})]
        settings = make_settings(DESKPILOT_CALLBACK_URL=partner.url(), DESKPILOT_ALLOW_PRIVATE_CALLBACKS="false")
        _ticket_id, _attempt_id, delivery_id = await queued_webhook_reply(clean_db)
        assert await outbox.drain_outbox(clean_db, settings, None, "w-1") == 1
    finally:
        await partner.stop()
        await inside.stop()
    assert len(partner.requests) == 1
    assert inside.requests == []
    row = await delivery_row(clean_db, delivery_id)
    assert row["status"] == "failed"
    assert "redirects are not followed" in row["last_error"]


async def test_request_goes_to_the_checked_address_with_the_original_host(
    clean_db: asyncpg.Pool,
    hook_settings: Callable[..., Settings],
    receiver: HttpReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The name is resolved once, by the guard; the connection uses that address (no rebinding)."""
    lookups: list[str] = []

    async def fake_dns(host: str, port: int) -> list[Any]:
        lookups.append(host)
        return [ipaddress.ip_address("127.0.0.1")]

    monkeypatch.setattr(ssrf, "resolve_addresses", fake_dns)
    settings = hook_settings(DESKPILOT_CALLBACK_URL=f"http://hooks.partner.invalid:{receiver.port}/hook?x=1")
    _ticket_id, _attempt_id, delivery_id = await queued_webhook_reply(clean_db)
    assert await outbox.drain_outbox(clean_db, settings, None, "w-1") == 1
    assert lookups == ["hooks.partner.invalid"]
    assert len(receiver.requests) == 1
    assert receiver.requests[0].headers["host"] == f"hooks.partner.invalid:{receiver.port}"
    assert receiver.requests[0].path == "/hook?x=1"
    assert (await delivery_row(clean_db, delivery_id))["status"] == "sent"
