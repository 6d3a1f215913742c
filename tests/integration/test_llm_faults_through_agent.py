"""Every LLM failure through the whole agent and the outbox (RELIABILITY.md, "Faults": LLM errors): never a reply
marked sent that was not sent.

Each fault the provider can throw (429, 5xx until the retries run out, a reset connection, a hang past our timeout,
400 and 401, malformed and out-of-range structured output, a refusal) hits a ticket the agent would otherwise answer
at once, under both fallback policies; the outbox is then drained to a real webhook receiver that first refuses the
reply. Asserted for every case: a delivery is `sent` only once the receiver accepted it, with the same webhook-id on
every try; nothing the failed model wrote reaches a reply; the model was tried a bounded number of times; and the
ticket either escalates with the model's error as its recorded reason (`escalate`) or is answered by the offline
drafter with the failure noted in its trace (`offline`).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest

from agent.drafting.llm import LLMDrafter
from agent.runner import TicketProcessor
from agent.triage.classifier import RoutingModelCache
from core.metrics import Metrics
from core.settings import Settings
from delivery import outbox
from tests.support.agent_graph import claim, fixed_calibration, new_ticket
from tests.support.fake_openai import FakeOpenAI, Step, hang, invalid_json, refusal, reply_json, reset, status
from tests.support.http_receiver import HttpReceiver, Reply

# What a working model would have answered: every fault below carries this text or nothing, so it must never
# reach a reply whatever happens.
MODEL_REPLY = "Hello, the model says: open Settings, then Billing, then Payment method, and replace the card there."
ANSWER = {
    "reply": MODEL_REPLY,
    "cited_ids": ["R1"],
    "confidence": 0.9,
    "reasons": ["R1 answers it"],
    "needs_human": False,
}
LLM_TIMEOUT_S = 1.0

FAULTS: dict[str, tuple[Callable[[], list[Step]], str, int]] = {
    # name: (the model's answers, the error kind recorded, how many calls the bounded retries allow)
    "429 until the retries run out": (
        lambda: [status(429, headers={"Retry-After": "0"})] * 2 + [reply_json(ANSWER)],
        "rate_limited",
        2,
    ),
    "5xx until the retries run out": (lambda: [status(500), status(503), reply_json(ANSWER)], "server_error", 2),
    "connection reset": (lambda: [reset(), reset(), reply_json(ANSWER)], "connection", 2),
    "hang past the timeout": (lambda: [hang(5), hang(5), reply_json(ANSWER)], "timeout", 2),
    "400": (lambda: [status(400, message="context too long"), reply_json(ANSWER)], "client_error", 1),
    "401": (lambda: [status(401, message="Incorrect API key provided"), reply_json(ANSWER)], "client_error", 1),
    "malformed output": (lambda: [invalid_json(), invalid_json(), reply_json(ANSWER)], "invalid_output", 2),
    "out-of-range confidence": (
        lambda: [reply_json({**ANSWER, "confidence": 1.7}), reply_json({**ANSWER, "confidence": -0.2})],
        "invalid_output",
        2,
    ),
    "refusal": (lambda: [refusal(), refusal(), reply_json(ANSWER)], "refusal", 2),
}


@pytest.fixture(scope="module")
def models() -> RoutingModelCache:
    return RoutingModelCache()


@pytest.fixture
def llm() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


@pytest.fixture
async def agent_for(
    pool: asyncpg.Pool,
    embedder: Any,
    models: RoutingModelCache,
    history: int,
    llm: FakeOpenAI,
    receiver: HttpReceiver,
    make_settings: Callable[..., Settings],
) -> AsyncIterator[Callable[[str], tuple[TicketProcessor, Settings]]]:
    made: list[LLMDrafter] = []

    def build(fallback: str) -> tuple[TicketProcessor, Settings]:
        settings = make_settings(
            OPENAI_BASE_URL=llm.base_url,
            OPENAI_API_KEY="sk-fault-test",
            DESKPILOT_LLM_MAX_RETRIES="1",
            DESKPILOT_LLM_TIMEOUT=str(LLM_TIMEOUT_S),
            DESKPILOT_LLM_FALLBACK=fallback,
            DESKPILOT_CALLBACK_URL=receiver.url(),
            DESKPILOT_CALLBACK_SECRET="whsec-fault-test",
            DESKPILOT_ALLOW_PRIVATE_CALLBACKS="true",
        )
        drafter = LLMDrafter(settings, metrics=Metrics(), backoff_base_s=0.01)
        made.append(drafter)
        processor = TicketProcessor(
            pool,
            settings,
            Metrics(),
            embedder=embedder,
            drafter=drafter,
            models=models,
            # Any grounded reply is confident enough to go out: only the model's failure can stop it.
            calibration=fixed_calibration(0.95),
        )
        return processor, settings

    yield build
    for drafter in made:
        await drafter.aclose()


async def drain(pool: asyncpg.Pool, settings: Settings, at: datetime) -> int:
    return await outbox.drain_outbox(pool, settings, Metrics(), "fault-test", now=at)


async def step_output(pool: asyncpg.Pool, ticket_id: UUID, node: str) -> dict[str, Any]:
    output = await pool.fetchval(
        """SELECT s.output FROM attempt_steps s JOIN resolution_attempts a ON a.id = s.attempt_id
           WHERE a.ticket_id = $1 AND s.node = $2""",
        ticket_id,
        node,
    )
    assert output is not None, f"no {node} step"
    return dict(output)


def accepted_ids(receiver: HttpReceiver, refused_first: int) -> list[str]:
    """The webhook-ids of the requests the receiver answered 2xx (it refuses the first `refused_first`)."""
    return [request.headers["webhook-id"] for request in receiver.requests[refused_first:]]


async def assert_sent_only_what_the_receiver_accepted(
    pool: asyncpg.Pool, ticket_id: UUID, receiver: HttpReceiver, *, refused_first: int
) -> list[asyncpg.Record]:
    deliveries = await pool.fetch(
        "SELECT id, status, sent_at, idempotency_key, body, message_id FROM deliveries WHERE ticket_id = $1",
        ticket_id,
    )
    accepted = accepted_ids(receiver, refused_first)
    for delivery in deliveries:
        marked_sent = delivery["status"] == "sent" or delivery["sent_at"] is not None
        assert marked_sent == (delivery["idempotency_key"] in accepted), dict(delivery)
    # Every outbound message is a queued delivery: no reply recorded on the ticket outside the outbox.
    outbound = await pool.fetch(
        "SELECT id, body FROM ticket_messages WHERE ticket_id = $1 AND direction = 'outbound'", ticket_id
    )
    assert {m["id"] for m in outbound} == {d["message_id"] for d in deliveries}
    # Nothing the failed model wrote reached a reply, a delivery or the receiver.
    for text in [*(m["body"] for m in outbound), *(d["body"] for d in deliveries)]:
        assert MODEL_REPLY not in text
    assert all(MODEL_REPLY.encode() not in request.body for request in receiver.requests)
    return list(deliveries)


async def process_with_failing_model(
    pool: asyncpg.Pool, processor: TicketProcessor, llm: FakeOpenAI, fault: str, *, decision: str
) -> UUID:
    """A new webhook ticket through the graph while the model fails as `fault` says; returns the ticket id."""
    steps, _kind, calls = FAULTS[fault]
    ticket_id = await new_ticket(
        pool,
        subject="Change the card",
        body="Where do I replace the card you charge every month?",
        channel="webhook",
        email=f"{uuid4().hex[:8]}@example.com",
    )
    llm.script(*steps())
    started = time.monotonic()
    assert await processor(await claim(pool, ticket_id)) == decision
    assert time.monotonic() - started < 30  # bounded: our timeout and retries, never the client's 600 s
    assert len(llm.requests) == calls
    return ticket_id


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_a_failed_model_with_fallback_escalate_escalates_with_its_reason_and_sends_nothing(
    pool: asyncpg.Pool,
    agent_for: Callable[[str], tuple[TicketProcessor, Settings]],
    llm: FakeOpenAI,
    receiver: HttpReceiver,
    fault: str,
) -> None:
    _steps, kind, calls = FAULTS[fault]
    processor, settings = agent_for("escalate")
    ticket_id = await process_with_failing_model(pool, processor, llm, fault, decision="escalate")

    now = datetime.now(UTC)
    assert await drain(pool, settings, now) == 0
    assert await drain(pool, settings, now + timedelta(hours=2)) == 0
    assert receiver.requests == []
    assert await assert_sent_only_what_the_receiver_accepted(pool, ticket_id, receiver, refused_first=0) == []

    ticket = await pool.fetchrow("SELECT status, needs_review, resolution FROM tickets WHERE id = $1", ticket_id)
    assert ticket is not None
    assert (ticket["status"], ticket["needs_review"], ticket["resolution"]) == ("pending_customer", True, None)
    attempt = await pool.fetchrow(
        "SELECT state, decision, decision_reasons, escalation_retryable FROM resolution_attempts WHERE ticket_id = $1",
        ticket_id,
    )
    assert attempt is not None
    assert (attempt["state"], attempt["decision"]) == ("completed", "escalate")
    assert any(reason.startswith(f"the LLM failed: {kind}") for reason in attempt["decision_reasons"]), attempt
    drafted = await step_output(pool, ticket_id, "draft")
    assert drafted["drafter"] == "llm" and drafted["draft"] == ""
    assert drafted["llm"]["error_kind"] == kind and drafted["llm"]["fell_back"] is True
    assert drafted["llm"]["attempts"] == calls


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_a_failed_model_with_fallback_offline_is_answered_offline_and_sent_only_when_accepted(
    pool: asyncpg.Pool,
    agent_for: Callable[[str], tuple[TicketProcessor, Settings]],
    llm: FakeOpenAI,
    receiver: HttpReceiver,
    fault: str,
) -> None:
    _steps, kind, _calls = FAULTS[fault]
    processor, settings = agent_for("offline")
    ticket_id = await process_with_failing_model(pool, processor, llm, fault, decision="deliver")
    drafted = await step_output(pool, ticket_id, "draft")
    assert drafted["drafter"] == "offline"
    assert any(note.startswith(f"LLM failed ({kind}:") for note in drafted["notes"]), drafted["notes"]

    # The receiver refuses the first try: queued and answered, but not sent.
    receiver.script = [Reply(503)]
    now = datetime.now(UTC)
    assert await drain(pool, settings, now) == 1
    [delivery] = await assert_sent_only_what_the_receiver_accepted(pool, ticket_id, receiver, refused_first=1)
    assert delivery["status"] == "pending" and delivery["sent_at"] is None
    assert len(receiver.requests) == 1

    # The retry is accepted: now, and only now, it is sent, with the same webhook-id as the refused try.
    assert await drain(pool, settings, now + timedelta(hours=2)) == 1
    [delivery] = await assert_sent_only_what_the_receiver_accepted(pool, ticket_id, receiver, refused_first=1)
    assert delivery["status"] == "sent"
    assert [r.headers["webhook-id"] for r in receiver.requests] == [delivery["idempotency_key"]] * 2
    sent = json.loads(receiver.requests[-1].body)
    assert sent["ticket_id"] == str(ticket_id)
    assert sent["body"] == delivery["body"] == drafted["draft"]
    ticket = await pool.fetchrow("SELECT status, resolution FROM tickets WHERE id = $1", ticket_id)
    assert ticket is not None
    assert (ticket["status"], ticket["resolution"]) == ("resolved", drafted["draft"])
