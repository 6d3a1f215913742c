"""Reading a claimed ticket and its customer's account context: tier, recent events, earlier tickets and how
similar they are to this one (repeated contact).
"""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

import numpy as np

from agent.state import TicketInput
from core.db import Connection

# Earlier tickets at least this similar (cosine of the query embeddings) are "the same problem again".
REPEAT_SIMILARITY = 0.8
REPEAT_WINDOW_DAYS = 30
# How far back the account's events and earlier tickets are read.
ACCOUNT_WINDOW_DAYS = 90
# A ticket's latest follow-ups that are read for the agent: however many a customer sends, the work per
# attempt (and the model's context) stays bounded (`agent.state.ticket_text` uses the last two).
FOLLOW_UPS_READ = 3


async def load_ticket(conn: Connection, ticket_id: UUID) -> TicketInput | None:
    # The first inbound message is the ticket itself; later ones are the customer's follow-ups.
    row = await conn.fetchrow(
        """SELECT t.id, t.customer_id, t.channel, t.subject, t.body, COALESCE(t.customer_name, c.name) AS name,
                  c.email, t.status, t.cycle_count, t.reopen_count, t.metadata, t.raw_payload,
                  ARRAY(SELECT recent.body FROM (
                            SELECT m.body, m.created_at, m.id FROM ticket_messages m
                            WHERE m.ticket_id = t.id AND m.direction = 'inbound'
                            ORDER BY m.created_at DESC, m.id DESC LIMIT $2) AS recent
                        ORDER BY recent.created_at, recent.id) AS latest
           FROM tickets t JOIN customers c ON c.id = t.customer_id WHERE t.id = $1""",
        ticket_id,
        FOLLOW_UPS_READ + 1,
    )
    if row is None:
        return None
    return TicketInput(
        ticket_id=str(row["id"]),
        customer_id=str(row["customer_id"]),
        channel=row["channel"],
        subject=row["subject"] or "",
        body=row["body"],
        customer_name=row["name"],
        customer_email=row["email"],
        status=row["status"],
        cycle_count=row["cycle_count"],
        reopen_count=row["reopen_count"],
        # The newest FOLLOW_UPS_READ + 1 inbound messages, oldest first: dropping the first leaves the latest
        # follow-ups, never the ticket's own first message.
        follow_ups=list(row["latest"])[1:],
        metadata=dict(row["metadata"] or {}),
        raw_text=_raw_text(row["raw_payload"]),
    )


def _raw_text(payload: Any) -> str:
    if not isinstance(payload, dict):
        return ""
    return "\n\n".join(str(payload.get(key) or "") for key in ("subject", "body") if payload.get(key))


async def load_account(conn: Connection, ticket: TicketInput, embedding: np.ndarray) -> dict[str, Any]:
    """The account snapshot routing and the specialists read: {tier, name, customer_since, events,
    prior_tickets [{id, subject, category, priority, status, created_at, resolution, similarity}],
    earlier_replies, repeated_contact}. One statement (a row even if the customer is gone)."""
    customer_id = UUID(str(ticket["customer_id"]))
    ticket_id = UUID(str(ticket["ticket_id"]))
    row = await conn.fetchrow(
        """
        SELECT c.name, c.tier, c.created_at, c.metadata, now() AS now,
               (SELECT count(*) FROM ticket_messages WHERE ticket_id = $2 AND direction = 'outbound')
                   AS earlier_replies,
               ARRAY(SELECT ROW(e.kind, e.occurred_at, e.data::text)
                       FROM customer_events e
                      WHERE e.customer_id = $1 AND e.occurred_at > now() - make_interval(days => $4)
                      ORDER BY e.occurred_at DESC LIMIT 50) AS events,
               ARRAY(SELECT ROW(t.id, t.subject, t.category, t.priority, t.status, t.created_at, t.resolution,
                                (SELECT 1 - (a.query_embedding <=> $3)
                                   FROM resolution_attempts a
                                  WHERE a.ticket_id = t.id AND a.query_embedding IS NOT NULL
                                  ORDER BY a.attempt_no DESC LIMIT 1))
                       FROM tickets t
                      WHERE t.customer_id = $1 AND t.id <> $2 AND t.created_at > now() - make_interval(days => $4)
                      ORDER BY t.created_at DESC LIMIT 10) AS priors
        FROM (VALUES (1)) AS one (n) LEFT JOIN customers c ON c.id = $1
        """,
        customer_id,
        ticket_id,
        np.asarray(embedding, dtype=np.float32),
        ACCOUNT_WINDOW_DAYS,
    )
    assert row is not None  # the outer join always gives one
    now = row["now"]
    prior_tickets = [
        {
            "id": str(prior_id),
            "subject": subject,
            "category": category,
            "priority": priority,
            "status": status,
            "created_at": created_at.isoformat(),
            "resolution": (resolution or "")[:400] or None,
            "similarity": round(float(similarity), 4) if similarity is not None else None,
            "age_days": round((now - created_at).total_seconds() / 86400, 1),
        }
        for prior_id, subject, category, priority, status, created_at, resolution, similarity in row["priors"]
    ]
    repeated_from = [
        p["id"]
        for p in prior_tickets
        if p["similarity"] is not None and p["similarity"] >= REPEAT_SIMILARITY and p["age_days"] <= REPEAT_WINDOW_DAYS
    ]
    earlier_replies = int(row["earlier_replies"] or 0)
    # The customer wrote again after our reply on this very ticket: the reply did not solve it.
    follow_up_after_reply = bool(earlier_replies) and bool(ticket.get("follow_ups"))
    return {
        "tier": row["tier"],
        "name": row["name"],
        # customers.created_at is NOT NULL: None means the customer row is gone.
        "customer_since": row["created_at"].isoformat() if row["created_at"] is not None else None,
        "metadata": dict(row["metadata"] or {}),
        # Nested rows arrive as tuples, decoded without the pool's jsonb codec: the data comes as text.
        "events": [
            {"kind": kind, "occurred_at": occurred_at.isoformat(), "data": json.loads(data) if data else None}
            for kind, occurred_at, data in row["events"]
        ],
        "prior_tickets": prior_tickets,
        "earlier_replies": earlier_replies,
        "repeated_contact": bool(repeated_from) or follow_up_after_reply,
        "repeated_from": repeated_from,
    }


def offline_account(ticket: TicketInput) -> dict[str, Any]:
    """The account an offline run supplies with the ticket (none at all in evaluation)."""
    account = dict(ticket.get("account") or {})
    account.setdefault("events", [])
    account.setdefault("prior_tickets", [])
    account.setdefault("repeated_contact", False)
    return account
