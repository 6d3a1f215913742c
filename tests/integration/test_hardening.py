"""Issue #20 hardening through the real app and a real database: who a ticket speaks for and where its reply may go,
quotas on what one customer can make the service do, and the smaller holes (metrics, failed-auth limit, token
length, sign-out, CSRF on the JSON API, logged URLs, /health, 409 bodies). docs/reliability.md lists each test.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from agent.account import FOLLOW_UPS_READ, load_ticket
from app import maintenance
from app.maintenance import run_maintenance
from app.ratelimit import FailedAuthLimiter
from core.errors import PROBLEM_JSON
from core.settings import Settings, SettingsError
from delivery import outbox
from ingest.signatures import standard_webhook_headers
from tests.support.delivery import seed_agent_reply, seed_attempt
from tests.support.http_receiver import HttpReceiver
from tests.support.server import REPO

INGEST = "/api/webhooks/support/ingest"
TOKEN = "hardening-admin-token-0123456789abcdef"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def payload(external_id: str, **overrides: Any) -> dict[str, Any]:
    return {
        "external_id": external_id,
        "channel": "in_app",
        "customer_email": "ada@example.com",
        "subject": "Invoice question",
        "body": "Where can I download last month's invoice?",
        **overrides,
    }


async def post(client: Any, body: dict[str, Any], **headers: str) -> Any:
    return await client.post(INGEST, json=body, headers=headers)


async def count(pool: asyncpg.Pool, table: str) -> int:
    return int(await pool.fetchval(f"SELECT count(*) FROM {table}"))


def assert_problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    body: dict[str, Any] = response.json()
    return body


# --- item 2: identity, callback allow-list, threads --------------------------------------------------------


async def test_an_impersonating_ticket_cannot_send_its_reply_to_its_own_callback_url(
    make_client: Callable[..., Any], clean_db: asyncpg.Pool, make_settings: Callable[..., Settings], receiver: Any
) -> None:
    """The attack of issue #20: post as the victim with `metadata.callback_url` pointing at the attacker. The
    callback host is not on DESKPILOT_CALLBACK_HOSTS, so the reply goes to the configured DESKPILOT_CALLBACK_URL
    and the attacker's server receives nothing; the unsigned ticket is marked as such."""
    attacker = await HttpReceiver().start()
    env = {
        "DESKPILOT_CALLBACK_URL": receiver.url("/replies"),
        "DESKPILOT_CALLBACK_HOSTS": "hooks.partner.example",
        "DESKPILOT_ALLOW_PRIVATE_CALLBACKS": "true",  # both receivers are on loopback
    }
    try:
        async with make_client(**env) as client:
            accepted = await post(
                client,
                payload(
                    "imp-1",
                    channel="webhook",
                    customer_email="victim@customer.example",
                    metadata={"callback_url": attacker.url("/steal?victim=1")},
                ),
            )
        assert accepted.status_code == 201, accepted.text
        ticket_id = UUID(accepted.json()["ticket_id"])
        metadata = await clean_db.fetchval("SELECT metadata FROM tickets WHERE id = $1", ticket_id)
        assert metadata["ingest"]["customer_verified"] is False  # nobody vouched for victim@customer.example
        attempt_id = await seed_attempt(clean_db, ticket_id, decision="deliver", confidence=0.95)
        await seed_agent_reply(clean_db, ticket_id, attempt_id)
        assert await outbox.drain_outbox(clean_db, make_settings(**env), None, "w-1") == 1
    finally:
        await attacker.stop()
    assert attacker.requests == []
    assert [r.path for r in receiver.requests] == ["/replies"]


async def test_a_signed_ticket_is_marked_verified(make_client: Callable[..., Any], clean_db: asyncpg.Pool) -> None:
    async with make_client(DESKPILOT_WEBHOOK_SECRET=SECRET) as client:
        body = json.dumps(payload("signed-1")).encode()
        headers = standard_webhook_headers(SECRET, "msg_signed_1", body, timestamp=int(time.time()))
        accepted = await client.post(INGEST, content=body, headers={"content-type": "application/json", **headers})
    assert accepted.status_code == 201, accepted.text
    metadata = await clean_db.fetchval("SELECT metadata FROM tickets WHERE id = $1::uuid", accepted.json()["ticket_id"])
    assert metadata["ingest"]["customer_verified"] is True


async def test_a_reply_subject_never_joins_another_customers_thread(client: Any, clean_db: asyncpg.Pool) -> None:
    victim = await post(client, payload("v-1", channel="email", customer_email="victim@customer.example"))
    for n, overrides in enumerate(
        [
            {"subject": "Re: Invoice question"},
            {"subject": "Re: anything", "in_reply_to": "<v-1@customer.example>"},
            {"thread_ref": "v-1"},
            {"thread_ref": victim.json()["ticket_id"]},
        ]
    ):
        response = await post(
            client, payload(f"m-{n}", channel="email", customer_email="mallory@evil.example", **overrides)
        )
        assert response.status_code == 201, response.text
        assert response.json()["ticket_id"] != victim.json()["ticket_id"] and "followup" not in response.json()
    assert (
        await clean_db.fetchval(
            "SELECT count(*) FROM ticket_messages WHERE ticket_id = $1::uuid", victim.json()["ticket_id"]
        )
        == 1
    )


# --- item 4: quotas and bounded work ------------------------------------------------------------------------


async def test_tickets_per_customer_quota_answers_429_and_writes_nothing(
    make_client: Callable[..., Any], clean_db: asyncpg.Pool
) -> None:
    async with make_client(DESKPILOT_TICKETS_PER_CUSTOMER_HOUR="3") as client:
        for n in range(3):
            assert (await post(client, payload(f"q-{n}"))).status_code == 201
        before = {t: await count(clean_db, t) for t in ("tickets", "ticket_messages", "ingest_keys", "customers")}
        refused = await post(client, payload("q-3"))
        problem = assert_problem(refused, 429)
        assert problem["field"] == "customer_email"
        assert 1 <= int(refused.headers["retry-after"]) <= 3600
        assert {t: await count(clean_db, t) for t in before} == before  # nothing written
        # A replay of an accepted ticket is still answered, and another customer is not affected.
        assert (await post(client, payload("q-0"))).json()["duplicate"] is True
        assert (await post(client, payload("q-other", customer_email="bob@example.com"))).status_code == 201


async def test_followups_per_ticket_quota_answers_429_and_writes_nothing(
    make_client: Callable[..., Any], clean_db: asyncpg.Pool
) -> None:
    async with make_client(DESKPILOT_FOLLOWUPS_PER_TICKET_HOUR="2") as client:
        first = (await post(client, payload("f-0"))).json()
        for n in (1, 2):
            followup = await post(client, payload(f"f-{n}", thread_ref="f-0", body=f"Any news? ({n})"))
            assert followup.json()["followup"] is True
        before = {t: await count(clean_db, t) for t in ("ticket_messages", "ingest_keys")}
        refused = await post(client, payload("f-3", thread_ref="f-0", body="Hello??"))
        assert assert_problem(refused, 429)["field"] == "thread_ref"
        assert int(refused.headers["retry-after"]) >= 1
        assert {t: await count(clean_db, t) for t in before} == before
        assert (await post(client, payload("f-1", thread_ref="f-0", body="Any news? (1)"))).status_code == 200
    assert first["ticket_id"]


async def test_followups_requeue_only_while_cycles_remain(
    make_client: Callable[..., Any], clean_db: asyncpg.Pool
) -> None:
    """Each follow-up used to reset the cycle count and requeue: a flood was an agent run (and an auto-reply)
    each. Now a follow-up is a cycle of its own; past DESKPILOT_MAX_CYCLES it waits for a person."""
    async with make_client(DESKPILOT_MAX_CYCLES="2") as client:
        ticket_id = (await post(client, payload("c-0"))).json()["ticket_id"]
        queued = []
        for n in range(1, 4):
            # The agent answered it meanwhile: resolved, nothing queued.
            await clean_db.execute(
                "UPDATE tickets SET status = 'resolved', next_attempt_at = NULL WHERE id = $1::uuid", ticket_id
            )
            await post(client, payload(f"c-{n}", thread_ref="c-0", body=f"Still broken ({n})"))
            due = "SELECT next_attempt_at IS NOT NULL FROM tickets WHERE id = $1::uuid"
            queued.append(await clean_db.fetchval(due, ticket_id))
    assert queued == [True, True, False]
    row = await clean_db.fetchrow("SELECT status, needs_review FROM tickets WHERE id = $1::uuid", ticket_id)
    assert (row["status"], row["needs_review"]) == ("pending_customer", True)  # in the review queue


async def test_only_the_latest_follow_ups_are_read_for_the_agent(client: Any, clean_db: asyncpg.Pool) -> None:
    ticket_id = (await post(client, payload("l-0", body="The first message"))).json()["ticket_id"]
    for n in range(1, 9):
        assert (await post(client, payload(f"l-{n}", thread_ref="l-0", body=f"follow-up {n}"))).status_code == 201
    async with clean_db.acquire() as conn:
        ticket = await load_ticket(conn, UUID(ticket_id))
    assert ticket is not None
    assert ticket["body"] == "The first message"
    assert ticket["follow_ups"] == [f"follow-up {n}" for n in range(9 - FOLLOW_UPS_READ, 9)]


async def escalated(pool: asyncpg.Pool, n: int, *, cycle_count: int = 0) -> UUID:
    """A ticket the agent escalated as retryable under knowledge version 0."""
    customer = await pool.fetchval(
        "INSERT INTO customers (email) VALUES ($1) ON CONFLICT (email) DO UPDATE SET email = $1 RETURNING id",
        "esc@example.com",
    )
    ticket_id: UUID = await pool.fetchval(
        """INSERT INTO tickets (external_id, customer_id, channel, body, raw_payload, status, needs_review,
                                cycle_count, updated_at)
           VALUES ($1, $2, 'in_app', 'How are minutes rounded?', '{}', 'pending_customer', true, $3,
                   now() - make_interval(secs => $4)) RETURNING id""",
        f"esc-{n}",
        customer,
        cycle_count,
        1000 - n,
    )
    await pool.execute(
        """INSERT INTO resolution_attempts (ticket_id, attempt_no, state, decision, escalation_retryable,
                                            knowledge_version, finished_at)
           VALUES ($1, 1, 'completed', 'escalate', true, 0, now())""",
        ticket_id,
    )
    return ticket_id


async def test_redrafts_after_a_knowledge_change_are_batched_and_bounded(
    clean_db: asyncpg.Pool, make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(maintenance, "REQUEUE_BATCH", 2)
    settings = make_settings(DESKPILOT_MAX_CYCLES="3")
    fresh = [await escalated(clean_db, n) for n in range(5)]
    spent = await escalated(clean_db, 9, cycle_count=3)  # used its cycles: a person answers it
    # A reviewer's send adds a past resolution: a new knowledge version, just now.
    await clean_db.execute("UPDATE knowledge_version SET version = version + 1, changed_at = now()")

    def requeued(results: dict[str, object] | None) -> object:
        assert results is not None
        return results["requeue_on_knowledge_change"]

    hooks = {"requeue_on_knowledge_change": maintenance.maintenance_hooks()["requeue_on_knowledge_change"]}
    assert requeued(await run_maintenance(clean_db, settings, hooks)) == 0  # not settled: more sends may follow
    await clean_db.execute("UPDATE knowledge_version SET changed_at = now() - interval '2 minutes'")
    rounds = [requeued(await run_maintenance(clean_db, settings, hooks)) for _ in range(4)]
    assert rounds == [2, 2, 1, 0]  # in batches, oldest first, each ticket once
    due = await clean_db.fetch("SELECT id FROM tickets WHERE next_attempt_at IS NOT NULL ORDER BY updated_at")
    assert {r["id"] for r in due} == set(fresh) and spent not in {r["id"] for r in due}


# --- item 6: the smaller ones -------------------------------------------------------------------------------


async def test_metrics_need_the_admin_token_when_one_is_set(
    make_client: Callable[..., Any], clean_db: asyncpg.Pool
) -> None:
    async with make_client(DESKPILOT_ADMIN_TOKEN=TOKEN) as client:
        anonymous = await client.get("/metrics")
        assert_problem(anonymous, 401)
        scraped = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert scraped.status_code == 200 and "deskpilot_queue_depth" in scraped.text


def gauge(text: str, status: str) -> float:
    match = re.search(rf'^deskpilot_tickets\{{status="{status}"\}} (\S+)$', text, re.MULTILINE)
    assert match, text[:500]
    return float(match.group(1))


async def test_metrics_gauges_are_cached_between_scrapes(client: Any, clean_db: asyncpg.Pool) -> None:
    """However often /metrics is scraped, its aggregates run at most once per GAUGE_TTL_S."""
    assert gauge((await client.get("/metrics")).text, "open") == 0
    assert (await post(client, payload("m-1"))).status_code == 201
    assert gauge((await client.get("/metrics")).text, "open") == 0  # answered from the cached gauges
    client.app.state.runtime.gauges_refreshed_at -= 60  # the interval is over
    assert gauge((await client.get("/metrics")).text, "open") == 1


async def test_failed_auth_is_slowed_then_refused_per_client_address(
    make_client: Callable[..., Any], clean_db: asyncpg.Pool
) -> None:
    """One limiter for the admin API's 401s and the console's failed sign-ins: after the limit every attempt from
    the address is 429 with Retry-After, the right token included, until the failures age out."""
    async with make_client(DESKPILOT_ADMIN_TOKEN=TOKEN, DESKPILOT_AUTH_FAILURE_LIMIT="4") as client:
        limiter: FailedAuthLimiter = client.app.state.runtime.auth_limiter
        wrong = {"Authorization": "Bearer not-the-token-not-the-token"}
        for _ in range(3):
            assert (await client.get("/api/tickets", headers=wrong)).status_code == 401
        form = await client.get("/login")
        csrf = re.search(r'name="csrf_token" value="([0-9a-f]+)"', form.text)
        assert csrf is not None
        failed_login = await client.post("/login", data={"token": "guess", "csrf_token": csrf.group(1)})
        assert failed_login.status_code == 401
        assert limiter.failures("testclient") == 4
        for headers in (wrong, {"Authorization": f"Bearer {TOKEN}"}):
            refused = await client.get("/api/tickets", headers=headers)
            assert_problem(refused, 429)
            assert int(refused.headers["retry-after"]) >= 1
        login = await client.post("/login", data={"token": TOKEN, "csrf_token": csrf.group(1)})
        assert login.status_code == 429 and "deskpilot_admin" not in login.headers.get("set-cookie", "")


def test_the_limiter_slows_down_from_half_the_limit_and_forgets_after_the_window() -> None:
    now = [1000.0]
    limiter = FailedAuthLimiter(6, window_s=60, clock=lambda: now[0])
    delays = [limiter.record_failure("198.51.100.7") for _ in range(6)]
    assert delays[:3] == [0, 0, 0] and delays[3:] == sorted(delays[3:]) and delays[3] > 0
    assert limiter.record_failure("203.0.113.9") == 0  # another address has its own count
    with pytest.raises(Exception, match="too many failed"):
        limiter.check("198.51.100.7")
    now[0] += 61
    limiter.check("198.51.100.7")  # the failures left the window
    assert limiter.failures("198.51.100.7") == 0


def test_a_short_admin_token_is_refused_with_a_clear_message() -> None:
    with pytest.raises(SettingsError, match="DESKPILOT_ADMIN_TOKEN must be at least 24 characters"):
        Settings.from_mapping({"DESKPILOT_ADMIN_TOKEN": "s3cret"})
    assert Settings.from_mapping({"DESKPILOT_ADMIN_TOKEN": "x" * 24}).admin_token == "x" * 24
    result = subprocess.run(
        [sys.executable, "-c", "from app.cli import main; main()", "db-url"],
        cwd=REPO,
        env={"DESKPILOT_ADMIN_TOKEN": "s3cret", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "DESKPILOT_ADMIN_TOKEN must be at least 24 characters" in result.stderr


async def test_logout_revokes_the_session_server_side(make_client: Callable[..., Any], clean_db: asyncpg.Pool) -> None:
    async with make_client(DESKPILOT_ADMIN_TOKEN=TOKEN) as client:
        client.follow_redirects = False
        form = await client.get("/login")
        csrf = re.search(r'name="csrf_token" value="([0-9a-f]+)"', form.text)
        assert csrf is not None
        signed_in = await client.post("/login", data={"token": TOKEN, "csrf_token": csrf.group(1)})
        assert signed_in.status_code == 303
        session = client.cookies.get("deskpilot_admin")
        assert session and (await client.get("/api/tickets")).status_code == 200
        assert (await client.post("/logout", data={"csrf_token": csrf.group(1)})).status_code == 303
        # A copy of the cookie (another tab, a stolen one) no longer works: not after 12 hours, now.
        client.cookies.set("deskpilot_admin", session)
        assert_problem(await client.get("/api/tickets"), 401)
        page = await client.get("/console")
        assert page.status_code == 303 and page.headers["location"].startswith("/login")
        assert await count(clean_db, "revoked_sessions") >= 1


async def test_cookie_authenticated_api_writes_need_json_from_this_site(
    make_client: Callable[..., Any], clean_db: asyncpg.Pool
) -> None:
    async with make_client(DESKPILOT_ADMIN_TOKEN=TOKEN) as client:
        form = await client.get("/login")
        csrf = re.search(r'name="csrf_token" value="([0-9a-f]+)"', form.text)
        assert csrf is not None
        await client.post("/login", data={"token": TOKEN, "csrf_token": csrf.group(1)}, follow_redirects=False)
        customer = {"email": "csrf@example.com"}
        # What a cross-site form can send: urlencoded, the cookie attached by the browser.
        as_form = await client.post("/api/customers", data=customer)
        assert assert_problem(as_form, 403)["field"] == "content-type"
        other_site = await client.post("/api/customers", json=customer, headers={"Origin": "https://evil.example"})
        assert assert_problem(other_site, 403)["field"] == "origin"
        assert await count(clean_db, "customers") == 0
        same_site = await client.post(
            "/api/customers", json=customer, headers={"Origin": f"http://{client.base_url.host}"}
        )
        assert same_site.status_code == 201, same_site.text
        # A bearer token is no ambient credential: no such check.
        client.cookies.clear()
        bearer = await client.post(
            "/api/customers",
            json={"email": "bearer@example.com"},
            headers={"Authorization": f"Bearer {TOKEN}", "Origin": "https://elsewhere.example"},
        )
        assert bearer.status_code == 201, bearer.text


async def test_callback_url_query_strings_are_not_logged(
    make_client: Callable[..., Any],
    clean_db: asyncpg.Pool,
    make_settings: Callable[..., Settings],
    receiver: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    env = {
        "DESKPILOT_CALLBACK_URL": receiver.url("/replies?token=cb-query-token-5d1e"),
        "DESKPILOT_ALLOW_PRIVATE_CALLBACKS": "true",
    }
    caplog.set_level(logging.INFO, logger="httpx")
    httpx_log = logging.getLogger("httpx")
    async with make_client(**env) as client:  # the app wires the log filter
        # On the logger itself: Litestar's logging setup replaces the root handlers pytest captures with.
        httpx_log.addHandler(caplog.handler)
        try:
            accepted = await post(client, payload("log-1", channel="webhook"))
            ticket_id = UUID(accepted.json()["ticket_id"])
            attempt_id = await seed_attempt(clean_db, ticket_id, decision="deliver", confidence=0.95)
            await seed_agent_reply(clean_db, ticket_id, attempt_id)
            assert await outbox.drain_outbox(clean_db, make_settings(**env), None, "w-1") == 1
        finally:
            httpx_log.removeHandler(caplog.handler)
    assert [r.path for r in receiver.requests] == ["/replies?token=cb-query-token-5d1e"]
    assert "HTTP Request: POST" in caplog.text and "?<redacted>" in caplog.text  # the line is there
    assert "cb-query-token-5d1e" not in caplog.text


async def test_unauthenticated_health_is_reduced_when_a_token_is_set(
    make_client: Callable[..., Any], clean_db: asyncpg.Pool
) -> None:
    env = {"DESKPILOT_ADMIN_TOKEN": TOKEN, "OPENAI_BASE_URL": "http://llm.internal.example:8080/v1"}
    async with make_client(**env) as client:
        anonymous = await client.get("/health")
        assert anonymous.status_code == 200
        assert anonymous.json() == {"status": "ok", "database": {"ok": True}}
        full = await client.get("/health", headers={"Authorization": f"Bearer {TOKEN}"})
        assert {"llm", "webhook_signatures", "admin_auth"} <= set(full.json())


async def test_a_conflict_does_not_reveal_the_other_tickets_id(client: Any, clean_db: asyncpg.Pool) -> None:
    first = await post(client, payload("k-1", customer_email="victim@customer.example"))
    conflict = assert_problem(await post(client, payload("k-1", body="Someone else's words")), 409)
    assert conflict["field"] == "external_id"
    assert first.json()["ticket_id"] not in json.dumps(conflict) and "ticket_id" not in conflict
