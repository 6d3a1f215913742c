"""Tickets with audit trails in the documented format (docs/architecture.md), seeded by SQL for trace tests.

One resolved ticket with a full attempt (every node, a delivery), one escalated ticket waiting for review,
one queued ticket with no attempt yet, one attempt still running, and a hostile ticket whose text tries to run
script and load a remote image. The API test and the browser test seed the same data through these functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg

HOSTILE_BODY = (
    "Hi, my export fails. <script>window.__pwned=1</script>"
    " <img src=http://127.0.0.1:9/x.png> see http://127.0.0.1:9/docs and "
    '<a href="javascript:window.__pwned=2">click</a>'
)
HOSTILE_SUBJECT = "Export broken <b>urgent</b> <img src=http://127.0.0.1:9/subject.png>"


@dataclass(frozen=True)
class SeededTraces:
    resolved: UUID
    escalated: UUID
    queued: UUID
    running: UUID
    hostile: UUID


async def seed_traces(conn: asyncpg.Connection | asyncpg.Pool) -> SeededTraces:
    customer = await _customer(conn, "ada@example.com", "Ada Lovelace", "enterprise")
    return SeededTraces(
        resolved=await seed_resolved_ticket(conn, customer),
        escalated=await seed_escalated_ticket(conn, customer),
        queued=await seed_queued_ticket(conn, customer),
        running=await seed_running_ticket(conn, customer),
        hostile=await seed_hostile_ticket(conn, customer),
    )


# --- the tickets ---

RESOLVED_ITEMS = [
    {
        "kind": "resolution",
        "id": "res-101",
        "title": "Invoice shows the wrong VAT number",
        "preview": "Update the VAT id under Billing → Company details; the next invoice picks it up.",
        "category": "billing",
        "intent": "invoice_details",
        "source": "history.csv",
        "similarity": 0.912,
        "text_rank": 0.41,
        "score": 0.873,
    },
    {
        "kind": "kb_chunk",
        "id": "kb-7#2",
        "title": "Editing company details on invoices",
        "preview": "Company name, address and VAT id on invoices come from Billing → Company details.",
        "category": "billing",
        "intent": None,
        "source": "kb/billing/invoices.md",
        "similarity": 0.884,
        "text_rank": 0.37,
        "score": 0.842,
    },
    {
        "kind": "kb_chunk",
        "id": "kb-9#1",
        "title": "Downloading past invoices",
        "preview": "Every invoice can be downloaded again as a PDF from Billing → History.",
        "category": "billing",
        "intent": None,
        "source": "kb/billing/history.md",
        "similarity": 0.731,
        "text_rank": 0.12,
        "score": 0.655,
    },
]
RESOLVED_DRAFT = (
    "Hi Ada,\n\nYou can correct the VAT number under Billing → Company details [res-101]; the change "
    "applies to the next invoice, and past invoices can be downloaded again from Billing → History "
    "[kb-9#1].\n\nDeskPilot"
)


async def seed_resolved_ticket(conn: Any, customer_id: UUID) -> UUID:
    ticket_id = await _ticket(
        conn,
        customer_id,
        external_id="trace-resolved",
        subject="Wrong VAT number on my invoice",
        body="Our last invoice shows an old VAT number. How do I change it?",
        status="resolved",
        category="billing",
        priority="normal",
        assigned_agent="billing-agent",
        confidence=0.91,
        minutes_ago=30,
    )
    await _history(
        conn,
        ticket_id,
        [
            (None, "open", "ingested"),
            ("open", "in_progress", "dispatched to billing-agent"),
            ("in_progress", "resolved", "auto-resolved at confidence 0.91"),
        ],
    )
    steps = [
        (
            "classify",
            11.8,
            {
                "category": "billing",
                "certainty": 0.94,
                "scores": {"billing": 0.94, "technical": 0.03, "onboarding": 0.02, "general": 0.01},
                "reasons": ["keyword rule: invoice, VAT", "3 of 4 nearest neighbours are billing"],
                "keywords": ["invoice", "VAT"],
                "neighbours": [
                    {"id": "res-101", "category": "billing", "similarity": 0.912},
                    {"id": "res-88", "category": "billing", "similarity": 0.803},
                    {"id": "res-54", "category": "technical", "similarity": 0.611},
                ],
            },
        ),
        (
            "prioritize",
            2.9,
            {
                "priority": "normal",
                "reasons": ["degraded experience with a workaround"],
                "signals": {"tier": "enterprise", "repeat_contact": False, "outage_terms": 0},
            },
        ),
        ("dispatch", 4.1, {"assigned_agent": "billing-agent", "status": "in_progress"}),
        (
            "load_context",
            17.5,
            {
                "customer": {"tier": "enterprise", "name": "Ada Lovelace"},
                "events": [{"kind": "plan_changed", "occurred_at": "2025-10-01"}],
                "prior_tickets": [],
                "signals": ["enterprise account"],
            },
        ),
        ("retrieve", 46.2, {"items": RESOLVED_ITEMS}),
        (
            "draft",
            31.0,
            {
                "draft": RESOLVED_DRAFT,
                "citations": ["res-101", "kb-9#1"],
                "drafter": "offline",
                "template": "offline-v1",
            },
        ),
        (
            "score",
            6.3,
            {
                "confidence": 0.91,
                "raw_score": 0.887,
                "breakdown": {
                    "retrieval_similarity": {
                        "value": 0.912,
                        "weight": 0.35,
                        "contribution": 0.319,
                        "note": "best neighbour similarity",
                    },
                    "neighbour_agreement": {
                        "value": 1.0,
                        "weight": 0.2,
                        "contribution": 0.2,
                        "note": "top neighbours share the category",
                    },
                    "coverage": {
                        "value": 0.8,
                        "weight": 0.2,
                        "contribution": 0.16,
                        "note": "question terms covered",
                    },
                    "classifier_certainty": {
                        "value": 0.94,
                        "weight": 0.25,
                        "contribution": 0.235,
                        "note": None,
                    },
                    "risk": {"value": 0.0, "weight": -0.5, "contribution": 0.0, "note": "no risk signals"},
                },
                "risks": [],
                "thresholds": {"auto_resolve": 0.85, "review": 0.6},
            },
        ),
        (
            "deliver",
            8.7,
            {
                "decision": "deliver",
                "reasons": ["confidence 0.91 ≥ auto-resolve threshold 0.85"],
                "delivery_id": None,
            },
        ),
    ]
    attempt_id = await _attempt(conn, ticket_id, steps, state="completed", minutes_ago=29)
    delivery_id = await conn.fetchval(
        """INSERT INTO deliveries (ticket_id, attempt_id, channel, idempotency_key, recipient, subject, body,
                                   status, tries, sent_at)
           VALUES ($1, $2, 'email', $3, 'ada@example.com', 'Re: Wrong VAT number on my invoice', $4, 'sent',
                   1,
                   now() - interval '28 minutes')
           RETURNING id""",
        ticket_id,
        attempt_id,
        f"<{attempt_id}@deskpilot.local>",
        RESOLVED_DRAFT,
    )
    await conn.execute(
        """UPDATE attempt_steps SET output = jsonb_set(output, '{delivery_id}', to_jsonb($2::text))
           WHERE attempt_id = $1 AND node = 'deliver'""",
        attempt_id,
        str(delivery_id),
    )
    return ticket_id


ESCALATED_DRAFT = "Hi Ada,\n\nI have passed your refund request to our billing team.\n\nDeskPilot"
ESCALATED_QUESTIONS = ["How long does a refund take?", "Will you pay our lawyer's fees?"]
# The reader's view (the retrieve step's `questions`): the first question answered from the refund section and the
# article's opening paragraph (read from the article, not retrieved), the second by nothing.
ESCALATED_READING = [
    {
        "question": ESCALATED_QUESTIONS[0],
        "passage": "kb-3#1",
        "title": "Refund policy",
        "units": ["Refunds are issued by the billing team within 5 business days."],
        "more": [
            {"passage": "kb-3#0", "title": "Refunds at a glance", "units": ["Every refund goes to the card charged."]}
        ],
        "score": 0.712,
        "best_unit": 0.74,
        "runner_up": 0.52,
    },
    {
        "question": ESCALATED_QUESTIONS[1],
        "passage": None,
        "title": None,
        "units": [],
        "more": [],
        "score": 0.21,
        "best_unit": 0.2,
        "runner_up": 0.0,
    },
]


async def seed_escalated_ticket(conn: Any, customer_id: UUID) -> UUID:
    ticket_id = await _ticket(
        conn,
        customer_id,
        external_id="trace-escalated",
        subject="Refund me now or I call my lawyer",
        body="You charged us twice. Refund both charges today or we take legal action.",
        status="pending_customer",
        category="billing",
        priority="high",
        assigned_agent="billing-agent",
        confidence=0.34,
        needs_review=True,
        next_attempt_in_minutes=60,
        minutes_ago=20,
    )
    await _history(
        conn,
        ticket_id,
        [
            (None, "open", "ingested"),
            ("open", "in_progress", "dispatched"),
            ("in_progress", "pending_customer", "escalated at confidence 0.34"),
        ],
    )
    items = [
        {
            "kind": "kb_chunk",
            "id": "kb-3#1",
            "title": "Refund policy",
            "preview": "Refunds are issued by the billing team within 5 business days.",
            "category": "billing",
            "intent": None,
            "source": "kb/billing/refunds.md",
            "similarity": 0.702,
            "text_rank": 0.3,
            "score": 0.66,
        }
    ]
    steps = [
        (
            "classify",
            9.0,
            {
                "category": "billing",
                "certainty": 0.88,
                "scores": {"billing": 0.88, "general": 0.12},
                "reasons": ["keyword rule: refund, charged"],
                "keywords": ["refund", "charged twice"],
                "neighbours": [],
            },
        ),
        (
            "prioritize",
            2.0,
            {
                "priority": "high",
                "reasons": ["legal threat", "enterprise customer blocked"],
                "signals": {"legal_threat": True, "tier": "enterprise"},
            },
        ),
        ("dispatch", 3.0, {"assigned_agent": "billing-agent", "status": "in_progress"}),
        (
            "load_context",
            12.0,
            {
                "customer": {"tier": "enterprise", "name": "Ada Lovelace"},
                "events": [{"kind": "payment_failed"}],
                "prior_tickets": [],
                "signals": ["recent failed payment"],
            },
        ),
        (
            "retrieve",
            38.0,
            {
                "items": items,
                "read_across": {
                    "ticket_language": "de",
                    "help_centre_language": "en",
                    "model": "all-MiniLM-L6-v2+multilingual-use",
                },
                "questions": ESCALATED_READING,
            },
        ),
        (
            "draft",
            22.0,
            {
                "draft": ESCALATED_DRAFT,
                "citations": ["kb-3#1", "kb-3#0"],
                "drafter": "offline",
                "template": "offline-v1",
                "llm": {"answered": [ESCALATED_QUESTIONS[0]], "handed_over": [ESCALATED_QUESTIONS[1]]},
            },
        ),
        (
            "score",
            5.0,
            {
                "confidence": 0.34,
                "raw_score": 0.52,
                "breakdown": {
                    "retrieval_similarity": {
                        "value": 0.702,
                        "weight": 0.35,
                        "contribution": 0.246,
                        "note": None,
                    },
                    "risk": {
                        "value": 1.0,
                        "weight": -0.5,
                        "contribution": -0.5,
                        "note": "refund demand and legal threat",
                    },
                },
                "risks": ["refund demand", "legal threat"],
                "thresholds": {"auto_resolve": 0.85, "review": 0.6},
            },
        ),
        (
            "escalate",
            4.0,
            {
                "decision": "escalate",
                "reasons": [
                    "demands a refund: the agent never promises money",
                    "confidence 0.34 < review threshold 0.60",
                ],
            },
        ),
    ]
    await _attempt(conn, ticket_id, steps, state="completed", minutes_ago=19)
    return ticket_id


async def seed_queued_ticket(conn: Any, customer_id: UUID) -> UUID:
    ticket_id = await _ticket(
        conn,
        customer_id,
        external_id="trace-queued",
        subject="How do I add a teammate?",
        body="We just signed up; where do I invite a colleague?",
        status="open",
        next_attempt_in_minutes=0,
        minutes_ago=2,
    )
    await _history(conn, ticket_id, [(None, "open", "ingested")])
    return ticket_id


async def seed_running_ticket(conn: Any, customer_id: UUID) -> UUID:
    ticket_id = await _ticket(
        conn,
        customer_id,
        external_id="trace-running",
        subject="API returns 500 on /v1/export",
        body="Since this morning every export call fails with a 500.",
        status="in_progress",
        category="technical",
        priority="high",
        assigned_agent="technical-agent",
        minutes_ago=1,
    )
    steps = [
        (
            "classify",
            10.0,
            {
                "category": "technical",
                "certainty": 0.9,
                "scores": {"technical": 0.9},
                "reasons": ["keyword rule: API, 500"],
                "keywords": ["API", "500"],
                "neighbours": [],
            },
        ),
        ("prioritize", 2.0, {"priority": "high", "reasons": ["core feature broken"], "signals": {}}),
        ("dispatch", 3.0, {"assigned_agent": "technical-agent", "status": "in_progress"}),
    ]
    await _attempt(conn, ticket_id, steps, state="running", minutes_ago=1)
    return ticket_id


async def seed_hostile_ticket(conn: Any, customer_id: UUID) -> UUID:
    """Ticket and model text that would run script or fetch a remote image if the page did not escape it."""
    ticket_id = await _ticket(
        conn,
        customer_id,
        external_id="trace-hostile",
        subject=HOSTILE_SUBJECT,
        body=HOSTILE_BODY,
        status="resolved",
        category="technical",
        priority="normal",
        assigned_agent="technical-agent",
        confidence=0.7,
        needs_review=True,
        minutes_ago=10,
    )
    items = [
        {
            "kind": "resolution",
            "id": "<img src=http://127.0.0.1:9/id.png>",
            "title": "<script>window.__pwned=3</script>Export fix",
            "preview": "<img src=http://127.0.0.1:9/preview.png onerror=window.__pwned=4>",
            "category": "technical",
            "intent": None,
            "source": "javascript:window.__pwned=5",
            "similarity": 0.8,
            "text_rank": 0.2,
            "score": 0.7,
        }
    ]
    steps = [
        ("retrieve", 20.0, {"items": items}),
        (
            "draft",
            10.0,
            {
                "draft": "Try again. <script>window.__pwned=6</script> <img src=http://127.0.0.1:9/d.png>",
                "citations": ["<img src=http://127.0.0.1:9/id.png>"],
                "drafter": "offline",
            },
        ),
        (
            "score",
            3.0,
            {
                "confidence": 0.7,
                "raw_score": 0.7,
                "breakdown": {
                    "<b>odd</b>": {
                        "value": 0.7,
                        "weight": 1.0,
                        "contribution": 0.7,
                        "note": "<img src=http://127.0.0.1:9/n.png>",
                    }
                },
                "risks": ["prompt-injection pattern"],
                "thresholds": {"auto_resolve": 0.85, "review": 0.6},
            },
        ),
        (
            "flag_for_review",
            2.0,
            {"decision": "flag_for_review", "reasons": ["<i>0.70</i> between thresholds"]},
        ),
    ]
    await _attempt(conn, ticket_id, steps, state="completed", minutes_ago=9)
    return ticket_id


# --- SQL ---


async def _customer(conn: Any, email: str, name: str, tier: str) -> UUID:
    customer_id: UUID = await conn.fetchval(
        """INSERT INTO customers (email, name, tier) VALUES ($1, $2, $3)
           ON CONFLICT (email) DO UPDATE SET name = EXCLUDED.name RETURNING id""",
        email,
        name,
        tier,
    )
    return customer_id


async def _ticket(
    conn: Any,
    customer_id: UUID,
    *,
    external_id: str,
    subject: str,
    body: str,
    status: str,
    minutes_ago: float,
    category: str | None = None,
    priority: str | None = None,
    assigned_agent: str | None = None,
    confidence: float | None = None,
    needs_review: bool = False,
    next_attempt_in_minutes: float | None = None,
) -> UUID:
    created = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    next_attempt = None
    if next_attempt_in_minutes is not None:
        next_attempt = datetime.now(UTC) + timedelta(minutes=next_attempt_in_minutes)
    ticket_id: UUID = await conn.fetchval(
        """INSERT INTO tickets (external_id, customer_id, channel, subject, body, raw_payload, status,
                                category, priority, assigned_agent, confidence_score, flagged, needs_review,
                                next_attempt_at,
                                attempt_count, created_at, updated_at)
           VALUES ($1, $2, 'email', $3, $4, $5::jsonb, $6, $7, $8, $9, $10, $11, $11, $12, $13, $14, $14)
           RETURNING id""",
        external_id,
        customer_id,
        subject,
        body,
        {"external_id": external_id},
        status,
        category,
        priority,
        assigned_agent,
        confidence,
        needs_review,
        next_attempt,
        0 if status == "open" else 1,
        created,
    )
    await conn.execute(
        """INSERT INTO ticket_messages (ticket_id, direction, channel, author, subject, body, created_at)
           VALUES ($1, 'inbound', 'email', 'customer', $2, $3, $4)""",
        ticket_id,
        subject,
        body,
        created,
    )
    return ticket_id


async def _history(conn: Any, ticket_id: UUID, transitions: list[tuple[str | None, str, str]]) -> None:
    """Transitions a second apart from the ticket's creation on."""
    for n, (from_status, to_status, reason) in enumerate(transitions):
        await conn.execute(
            """INSERT INTO ticket_status_history (ticket_id, from_status, to_status, reason, at)
               SELECT $1, $2, $3, $4, created_at + make_interval(secs => $5) FROM tickets WHERE id = $1""",
            ticket_id,
            from_status,
            to_status,
            reason,
            float(n),
        )


async def _attempt(
    conn: Any,
    ticket_id: UUID,
    steps: list[tuple[str, float, dict[str, Any]]],
    *,
    state: str,
    minutes_ago: float,
) -> UUID:
    """The attempt row and one `attempt_steps` row per node; the row's final values are the nodes' outputs."""
    started = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    clock = started + timedelta(milliseconds=1.5)
    placed = []
    for node, duration_ms, output in steps:
        placed.append((node, clock, duration_ms, output))
        clock += timedelta(milliseconds=duration_ms + 0.4)  # the graph's own overhead between nodes
    out = {node: output for node, _, output in steps}
    decision = next((node for node in ("deliver", "flag_for_review", "escalate") if node in out), None)
    attempt_id: UUID = await conn.fetchval(
        """INSERT INTO resolution_attempts (ticket_id, attempt_no, worker_id, state, category, priority,
                                            assigned_agent, retrieved, draft, citations, confidence,
                                            confidence_breakdown, decision, decision_reasons, model,
                                            started_at, finished_at)
           VALUES ($1, 1, 'worker-test-1', $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
           RETURNING id""",
        ticket_id,
        state,
        out.get("classify", {}).get("category"),
        out.get("prioritize", {}).get("priority"),
        out.get("dispatch", {}).get("assigned_agent"),
        out.get("retrieve", {}).get("items", []),
        out.get("draft", {}).get("draft"),
        out.get("draft", {}).get("citations", []),
        out.get("score", {}).get("confidence"),
        out.get("score", {}).get("breakdown", {}),
        decision,
        out.get(decision or "", {}).get("reasons", []),
        {"drafter": out.get("draft", {}).get("drafter", "offline")},
        started,
        None if state == "running" else clock,
    )
    for seq, (node, at, duration_ms, output) in enumerate(placed, start=1):
        await conn.execute(
            """INSERT INTO attempt_steps (attempt_id, seq, node, started_at, duration_ms, output)
               VALUES ($1, $2, $3, $4, $5, $6)""",
            attempt_id,
            seq,
            node,
            at,
            duration_ms,
            output,
        )
    return attempt_id
