"""The resolution graph's state: the ticket going in, and one entry per node holding exactly what the node records
in its `attempt_steps.output` (see docs/architecture.md), plus a few working values that are not recorded.
"""

from __future__ import annotations

from typing import Any, TypedDict

import numpy as np

from knowledge.retrieval import RetrievedItem


class TicketInput(TypedDict, total=False):
    """The ticket as the graph sees it. Offline runs (evaluation) fill `account` instead of a customer row."""

    ticket_id: str | None
    customer_id: str | None
    channel: str
    subject: str
    body: str
    customer_name: str | None
    customer_email: str | None
    status: str
    cycle_count: int
    reopen_count: int
    follow_ups: list[str]
    # Subject and body as the customer sent them, before normalization (hidden HTML, quoted history).
    raw_text: str
    metadata: dict[str, Any]
    # Offline runs only: {tier, name, events: [{kind, occurred_at, data}], prior_tickets: [...]}.
    account: dict[str, Any]


class AgentState(TypedDict, total=False):
    ticket: TicketInput
    # Working values: the query embedding, the raw retrieved items, the learned models' view of the ticket.
    embedding: np.ndarray
    # The ticket's vector from the multilingual model beside an English-only one (the risk detector's; the
    # cross-lingual reader reuses it).
    multilingual_embedding: np.ndarray
    items: list[RetrievedItem]
    account: dict[str, Any]
    prediction: Any
    risks: list[Any]
    grounding: Any
    # The ticket's questions and, per question, the passage the reader chose (knowledge-base replies).
    questions: list[Any]
    evidence: list[Any]
    draft_result: Any
    # Recorded node outputs, keyed as STEP_OUTPUTS says.
    classification: dict[str, Any]
    prioritization: dict[str, Any]
    dispatch: dict[str, Any]
    context: dict[str, Any]
    retrieval: dict[str, Any]
    drafted: dict[str, Any]
    scoring: dict[str, Any]
    outcome: dict[str, Any]


# The state key whose value is a node's `output` in the audit trail.
STEP_OUTPUTS: dict[str, str] = {
    "classify": "classification",
    "prioritize": "prioritization",
    "dispatch": "dispatch",
    "load_context": "context",
    "retrieve": "retrieval",
    "draft": "drafted",
    "score": "scoring",
    "deliver": "outcome",
    "flag_for_review": "outcome",
    "escalate": "outcome",
}


def handed_over_questions(drafted: dict[str, Any]) -> list[str]:
    """The questions a stored draft step (its `output`, the state's `drafted`) passed to a person: the drafter's
    detail, kept under `llm` (`detail` in older traces)."""
    detail = drafted.get("llm") or drafted.get("detail") or {}
    handed_over = detail.get("handed_over") if isinstance(detail, dict) else None
    return [str(q) for q in handed_over] if isinstance(handed_over, list) else []


def ticket_text(ticket: TicketInput) -> str:
    """Subject, body and any follow-up messages: the text every model reads (same shape as the history's)."""
    subject = (ticket.get("subject") or "").strip()
    body = (ticket.get("body") or "").strip()
    text = f"{subject}\n\n{body}" if subject and body else subject or body
    follow_ups = [f.strip() for f in ticket.get("follow_ups") or [] if f and f.strip()]
    if follow_ups:
        text = "\n\n".join([text, *follow_ups[-2:]])
    return text


def latest_message(ticket: TicketInput) -> str:
    """What the customer asks now: the last follow-up, or the ticket's body."""
    follow_ups = [f.strip() for f in ticket.get("follow_ups") or [] if f and f.strip()]
    return follow_ups[-1] if follow_ups else (ticket.get("body") or "").strip()
