"""Draft requests for drafter tests: retrieved items and reader evidence built in memory, no database."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agent.drafting.questions import Question
from agent.drafting.reader import Evidence
from agent.drafting.request import DraftRequest
from agent.triage.specialists import SPECIALISTS
from knowledge.retrieval import RetrievedItem


def item(
    item_id: str,
    *,
    kind: str = "kb_chunk",
    title: str = "",
    text: str = "",
    resolution: str | None = None,
    similarity: float | None = 0.8,
    document: str | None = None,
) -> RetrievedItem:
    """A retrieved item named `item_id`; `document` names the article a help-centre passage belongs to."""
    return RetrievedItem(
        kind=kind,  # type: ignore[arg-type]
        id=item_id,  # type: ignore[arg-type]  # tests name their items; the store's are UUIDs
        title=title,
        text=text,
        resolution=resolution,
        category=None,
        intent=None,
        source="test",
        similarity=similarity,
        text_rank=None,
        vector_rank=None,
        score=similarity or 0.0,
        metadata={"document_id": document} if document else {},
    )


def evidence(question: str, passage: RetrievedItem | None, units: Sequence[str] = (), score: float = 0.8) -> Evidence:
    """The reader's choice for one question: `passage` quoted by `units` (the whole text when none are given)."""
    quoted = list(units) or ([passage.text] if passage is not None else [])
    return Evidence(Question(question), passage, units=quoted, score=score, best_unit=score)


def request(
    subject: str,
    body: str,
    *,
    items: Sequence[RetrievedItem] = (),
    evidence: Sequence[Evidence] = (),
    customer_name: str | None = None,
    tier: str | None = None,
    context: dict[str, Any] | None = None,
    category: str = "technical",
    channel: str = "email",
    support_email: str | None = None,
    language: str = "en",
) -> DraftRequest:
    """A request as the `draft` node builds it; `items` are split into past resolutions and KB passages in order."""
    context = dict(context or {})
    if tier is not None:
        context.setdefault("customer", {"tier": tier, "name": customer_name})
    return DraftRequest(
        ticket={"subject": subject, "body": body, "channel": channel},
        category=category,
        priority="normal",
        specialist=SPECIALISTS.get(category, SPECIALISTS["technical"]),
        customer_name=customer_name,
        grounding=None,
        resolutions=[i for i in items if i.kind == "resolution"],
        passages=[i for i in items if i.kind != "resolution"],
        context=context,
        risks=[],
        support_email=support_email,
        evidence=list(evidence),
        language=language,
    )
