"""The drafting contract: what a drafter is given (`DraftRequest`), what it returns (`Draft`), and the `Drafter`
protocol the offline drafter and the LLM drafter both implement.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from agent.drafting.guardrails import find_emails, find_urls
from agent.drafting.reader import Evidence
from agent.scoring.risk import Risk
from agent.state import TicketInput
from agent.triage.specialists import Specialist
from knowledge.retrieval import RetrievedItem

DrafterName = Literal["offline", "llm"]
# A model drafter's `error_kind` when it did not ask the model: nothing retrieved holds anything a reply could say.
NOT_ASKED: Literal["nothing_to_cite"] = "nothing_to_cite"


@dataclass
class DraftRequest:
    """Everything a drafter may use. A drafter must not use anything else (no invented facts)."""

    ticket: TicketInput
    category: str
    priority: str
    specialist: Specialist
    customer_name: str | None
    grounding: RetrievedItem | None
    resolutions: list[RetrievedItem]
    passages: list[RetrievedItem]
    context: dict[str, Any]
    risks: list[Risk]
    support_email: str | None = None
    # Knowledge-base replies: per question, the passage the reader chose (empty: reply from a past resolution).
    evidence: list[Evidence] = field(default_factory=list)
    language: str = "en"

    @property
    def tier(self) -> str | None:
        """The customer's plan as the account stores it (the operator's word), when known."""
        tier = (self.context.get("customer") or {}).get("tier")
        return str(tier) if tier else None

    @property
    def on_trial(self) -> bool:
        """The plan is one of the operator's trial tiers (`load_context` reads the tier settings)."""
        return bool((self.context.get("customer") or {}).get("trial"))


@dataclass
class Draft:
    text: str
    citations: list[str]
    drafter: DrafterName
    grounded: bool
    template: str | None = None
    prompt: str | None = None
    model: dict[str, Any] = field(default_factory=dict)
    # Sentences left out: of the sources, because the guard refused them (promises, injected text, stray links);
    # of an LLM reply, because no passage it cites supports them.
    removed: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    # What the model's structured verdict does to the confidence (a multiplier in [0, 1]), LLM drafts only.
    self_assessment: float | None = None
    # The drafter itself says the reply must not go out (the model asked for a person, or the fallback
    # policy for a failed model is to escalate).
    escalate: bool = False
    escalate_reasons: list[str] = field(default_factory=list)
    # The drafter failed and another should be used (the LLM drafter with fallback "offline").
    fell_back: bool = False
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Drafter(Protocol):
    """Writes a reply from a `DraftRequest`. The offline drafter is the default; an LLM drafter may replace it."""

    name: DrafterName

    async def draft(self, request: DraftRequest) -> Draft: ...


def allowed_addresses(request: DraftRequest) -> tuple[set[str], set[str]]:
    """URLs and email addresses a reply may contain: those in the knowledge-base passages (retrieved, or chosen by
    the reader), plus the configured support address. Never those of past resolutions (another customer's reply
    carries their addresses) nor of the ticket (a customer, or an attacker, could otherwise have a reply point
    wherever they like)."""
    urls: set[str] = set()
    emails: set[str] = set()
    chosen = [e.item for e in request.evidence if e.item is not None]
    for item in [*request.passages, *chosen]:
        if item.kind != "kb_chunk":
            continue
        found_urls, found_emails = _addresses(item.text)
        urls.update(found_urls)
        emails.update(found_emails)
    if request.support_email:
        emails.add(request.support_email)
    return urls, emails


# The same past resolutions and KB passages come back for ticket after ticket.
@functools.lru_cache(maxsize=4096)
def _addresses(text: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return tuple(find_urls(text)), tuple(find_emails(text))
