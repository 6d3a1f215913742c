"""Shadow mode through the real agent: every decision is drafted and scored, nothing reaches a real SMTP server,
a real webhook receiver or the in-app inbox, every decision waits in the review queue with the action it would
have taken, and a reviewer's approve / edit / reject then sends (or not) exactly as in live mode. The mode is
read inside the fenced decision transaction: a switch while a ticket is in flight decides that ticket.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from agent.drafting.drafter import OfflineDrafter
from agent.drafting.request import Draft, DraftRequest
from agent.runner import TicketProcessor
from agent.triage.classifier import RoutingModelCache
from core.metrics import Metrics
from core.settings import Settings
from delivery import outbox
from review import modes
from review.queue import review_queue
from review.submit import ReviewRequest, submit_review
from tests.support.agent_graph import claim, fixed_calibration, new_ticket
from tests.support.http_receiver import HttpReceiver
from tests.support.smtp import SmtpServer, running_smtp_server


@pytest.fixture
async def fresh(pool: asyncpg.Pool, history: int) -> asyncpg.Pool:
    """No tickets, no mode set, the history kept (reviewer-learned resolutions removed)."""
    await pool.execute("DELETE FROM past_resolutions WHERE source = 'reviewer_approved'")
    await pool.execute("DELETE FROM tickets")
    await pool.execute("DELETE FROM customers")
    await pool.execute("TRUNCATE agent_modes, audit_log")
    return pool


@pytest.fixture(scope="module")
def models() -> RoutingModelCache:
    return RoutingModelCache()


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    with running_smtp_server() as server:
        yield server


@pytest.fixture
def sink_settings(
    make_settings: Callable[..., Settings], smtp_server: SmtpServer, receiver: HttpReceiver
) -> Callable[..., Settings]:
    def build(**env: str) -> Settings:
        return make_settings(
            DESKPILOT_SMTP_URL=smtp_server.url,
            DESKPILOT_SMTP_FROM="Support <support@deskpilot.test>",
            DESKPILOT_CALLBACK_URL=receiver.url(),
            DESKPILOT_ALLOW_PRIVATE_CALLBACKS="true",
            **env,
        )

    return build


def processor(pool: asyncpg.Pool, settings: Settings, embedder: Any, models: RoutingModelCache, **kw: Any) -> Any:
    confidence = kw.pop("confidence")
    return TicketProcessor(
        pool,
        settings,
        Metrics(),
        embedder=embedder,
        drafter=kw.pop("drafter", None) or OfflineDrafter(),
        models=models,
        calibration=fixed_calibration(confidence),
    )


CARD = (
    "Change the card we pay with",
    "We have a new company Visa. Where do I replace the card you charge every month?",
)
INVITE = ("Invite a teammate", "How do I invite my colleague to our workspace?")


async def drain(pool: asyncpg.Pool, settings: Settings) -> int:
    sent = 0
    while True:
        n = await outbox.drain_outbox(pool, settings, Metrics(), "w-test")
        if not n:
            return sent
        sent += n


async def test_shadow_mode_sends_nothing_and_queues_every_decision(
    fresh: asyncpg.Pool,
    embedder: Any,
    models: RoutingModelCache,
    sink_settings: Callable[..., Settings],
    smtp_server: SmtpServer,
    receiver: HttpReceiver,
) -> None:
    pool = fresh
    settings = sink_settings(DESKPILOT_MODE="shadow")
    cases = [  # channel, ticket, confidence, the decision live mode would take
        ("email", CARD, 0.95, "deliver"),
        ("webhook", INVITE, 0.7, "flag_for_review"),
        ("in_app", CARD, 0.95, "deliver"),
        ("email", INVITE, 0.3, "escalate"),
    ]
    tickets: list[UUID] = []
    for n, (channel, (subject, body), confidence, expected) in enumerate(cases):
        ticket_id = await new_ticket(pool, subject=subject, body=body, email=f"c{n}@example.com", channel=channel)
        decision = await processor(pool, settings, embedder, models, confidence=confidence)(
            await claim(pool, ticket_id)
        )
        assert decision == expected
        tickets.append(ticket_id)

    # Nothing queued, nothing sent on any channel.
    assert await pool.fetchval("SELECT count(*) FROM deliveries") == 0
    assert await pool.fetchval("SELECT count(*) FROM ticket_messages WHERE direction = 'outbound'") == 0
    assert await drain(pool, settings) == 0
    assert smtp_server.messages == []
    assert receiver.requests == []

    rows = await pool.fetch(
        """SELECT t.id, t.status, t.needs_review, t.flagged, t.next_attempt_at, a.mode, a.decision, a.draft,
                  a.decision_reasons
           FROM tickets t JOIN resolution_attempts a ON a.ticket_id = t.id WHERE t.id = ANY($1::uuid[])""",
        tickets,
    )
    by_id = {r["id"]: r for r in rows}
    for ticket_id, (_, _, _, expected) in zip(tickets, cases, strict=True):
        row = by_id[ticket_id]
        assert (row["mode"], row["decision"]) == ("shadow", expected)
        assert row["status"] == "pending_customer" and row["needs_review"] is True
        assert row["draft"]
        if expected != "escalate":
            assert row["decision_reasons"][0].startswith("shadow mode: nothing sent")
            assert row["next_attempt_at"] is None and row["flagged"] is False
    steps = await pool.fetch(
        """SELECT s.output FROM attempt_steps s JOIN resolution_attempts a ON a.id = s.attempt_id
           WHERE a.ticket_id = $1 AND s.node = 'deliver'""",
        tickets[0],
    )
    assert steps[0]["output"]["status"] == "pending_customer" and steps[0]["output"]["delivery_id"] is None

    async with pool.acquire() as conn:
        queue, _ = await review_queue(conn)
    queued = {item["id"]: item for item in queue}
    assert set(queued) == set(tickets)
    for ticket_id, (_, _, _, expected) in zip(tickets, cases, strict=True):
        assert queued[ticket_id]["reason"] == "shadow"
        assert queued[ticket_id]["would_have"] == expected

    # A reviewer's decisions send exactly as in live mode: one message per approve / edit, none for a reject.
    email_ticket, webhook_ticket, in_app_ticket, escalated_ticket = tickets
    approved = await submit_review(pool, settings, email_ticket, ReviewRequest(action="approve"))
    edited_text = "You can invite a colleague from Settings → Members → Invite."
    edited = await submit_review(
        pool, settings, webhook_ticket, ReviewRequest(action="edit", text=edited_text, reason="incomplete")
    )
    await submit_review(pool, settings, in_app_ticket, ReviewRequest(action="approve"))
    await submit_review(pool, settings, escalated_ticket, ReviewRequest(action="reject", reason="should_escalate"))
    assert (approved["sent"], approved["verdict"]) == (True, "right")
    assert (edited["sent"], edited["verdict"], edited["reason"]) == (True, "wrong", "incomplete")

    assert await drain(pool, settings) == 3
    assert await drain(pool, settings) == 0  # and never again
    assert len(smtp_server.messages) == 1
    assert smtp_server.recipients[0] == ["c0@example.com"]
    assert len(receiver.requests) == 1
    assert json.loads(receiver.requests[0].body)["body"] == edited_text
    in_app = await pool.fetch(
        "SELECT status FROM deliveries WHERE ticket_id = $1 AND channel = 'in_app'", in_app_ticket
    )
    assert [r["status"] for r in in_app] == ["sent"]
    assert await pool.fetchval("SELECT count(*) FROM deliveries WHERE ticket_id = $1", escalated_ticket) == 0
    labels = await pool.fetch("SELECT ticket_id, verdict, reason, mode, decision FROM review_labels")
    assert {(r["ticket_id"], r["verdict"], r["reason"], r["mode"]) for r in labels} == {
        (email_ticket, "right", None, "shadow"),
        (webhook_ticket, "wrong", "incomplete", "shadow"),
        (in_app_ticket, "right", None, "shadow"),
        (escalated_ticket, "wrong", "should_escalate", "shadow"),
    }


async def test_a_category_turned_live_sends_while_the_rest_stays_in_shadow(
    fresh: asyncpg.Pool, embedder: Any, models: RoutingModelCache, sink_settings: Callable[..., Settings]
) -> None:
    pool = fresh
    settings = sink_settings()  # DESKPILOT_MODE unset: live, until the database says otherwise
    async with pool.acquire() as conn:
        await modes.set_mode(conn, mode="shadow", category=None, actor="test", default=settings.mode)
        await modes.set_mode(conn, mode="live", category="billing", actor="test", default=settings.mode)
    billing = await new_ticket(pool, subject=CARD[0], body=CARD[1], email="b@example.com", channel="email")
    onboarding = await new_ticket(pool, subject=INVITE[0], body=INVITE[1], email="o@example.com", channel="email")
    for ticket_id in (billing, onboarding):
        await processor(pool, settings, embedder, models, confidence=0.95)(await claim(pool, ticket_id))
    categories = dict(await pool.fetch("SELECT ticket_id, category FROM resolution_attempts"))
    assert categories == {billing: "billing", onboarding: "onboarding"}
    assert await pool.fetchval("SELECT count(*) FROM deliveries WHERE ticket_id = $1", billing) == 1
    assert await pool.fetchval("SELECT count(*) FROM deliveries WHERE ticket_id = $1", onboarding) == 0
    assert await pool.fetchval("SELECT mode FROM resolution_attempts WHERE ticket_id = $1", billing) == "live"
    assert await pool.fetchval("SELECT mode FROM resolution_attempts WHERE ticket_id = $1", onboarding) == "shadow"
    audit = await pool.fetch("SELECT scope, from_value, to_value, actor FROM audit_log ORDER BY id")
    assert [tuple(r) for r in audit] == [("*", "live", "shadow", "test"), ("billing", "inherit", "live", "test")]


class GatedDrafter:
    """The offline drafter, holding each draft until `release` is set: a ticket in flight."""

    def __init__(self) -> None:
        self.inner = OfflineDrafter()
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def draft(self, request: DraftRequest) -> Draft:
        self.entered.set()
        await self.release.wait()
        return await self.inner.draft(request)


@pytest.mark.parametrize(("start", "switch_to", "sent"), [("live", "shadow", 0), ("shadow", "live", 1)])
async def test_a_switch_while_a_ticket_is_in_flight_decides_that_ticket(
    fresh: asyncpg.Pool,
    embedder: Any,
    models: RoutingModelCache,
    sink_settings: Callable[..., Settings],
    smtp_server: SmtpServer,
    start: str,
    switch_to: str,
    sent: int,
) -> None:
    """Claimed and routed in one mode, decided after the switch: the decision transaction reads the mode, so
    the ticket is either sent once or held, never both, never lost."""
    pool = fresh
    settings = sink_settings(DESKPILOT_MODE=start)
    drafter = GatedDrafter()
    ticket_id = await new_ticket(pool, subject=CARD[0], body=CARD[1], email="f@example.com", channel="email")
    run = asyncio.create_task(
        processor(pool, settings, embedder, models, confidence=0.95, drafter=drafter)(await claim(pool, ticket_id))
    )
    await asyncio.wait_for(drafter.entered.wait(), 60)
    async with pool.acquire() as conn:
        change = await modes.set_mode(conn, mode=switch_to, category=None, actor="ops", default=settings.mode)
    assert (change["from"], change["to"]) == (start, switch_to)
    drafter.release.set()
    assert await asyncio.wait_for(run, 60) == "deliver"

    assert await pool.fetchval("SELECT mode FROM resolution_attempts WHERE ticket_id = $1", ticket_id) == switch_to
    assert await pool.fetchval("SELECT count(*) FROM deliveries WHERE ticket_id = $1", ticket_id) == sent
    assert await drain(pool, settings) == sent
    assert len(smtp_server.messages) == sent
    ticket = await pool.fetchrow("SELECT status, needs_review FROM tickets WHERE id = $1", ticket_id)
    assert (ticket["status"], ticket["needs_review"]) == (("resolved", False) if sent else ("pending_customer", True))
