"""Reply drafting: the `Drafter` protocol and the built-in offline drafter, which composes a reply only from the
best past resolution and knowledge-base passages, personalised and citing its sources.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from agent.drafting.guardrails import check_reply, find_emails, find_urls
from agent.drafting.phrasing import OFFLINE_TEMPLATE, localized
from agent.scoring.risk import Risk, fold, injection_in
from agent.state import TicketInput
from agent.triage.specialists import Specialist
from knowledge.retrieval import RetrievedItem

DrafterName = Literal["offline", "llm"]
PASSAGES_QUOTED = 2
PASSAGE_CHARS = 420


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


@dataclass
class Draft:
    text: str
    citations: list[str]
    drafter: DrafterName
    grounded: bool
    template: str | None = None
    prompt: str | None = None
    model: dict[str, Any] = field(default_factory=dict)
    # Sentences of the sources left out because the guard refused them (promises, injected text, stray links).
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
    """URLs and email addresses a reply may contain: those in its sources, plus the support address."""
    urls: set[str] = set()
    emails: set[str] = set()
    sources = [request.grounding, *request.resolutions, *request.passages]
    for item in sources:
        if item is None:
            continue
        found_urls, found_emails = _addresses(
            item.resolution if item.kind == "resolution" and item.resolution else item.text
        )
        urls.update(found_urls)
        emails.update(found_emails)
    if request.support_email:
        emails.add(request.support_email)
    return urls, emails


# The same past resolutions and KB passages come back for ticket after ticket.
@functools.lru_cache(maxsize=4096)
def _addresses(text: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return tuple(find_urls(text)), tuple(find_emails(text))


_GREETING = re.compile(
    r"^\s*(?:dear|hi|hello|hey|greetings|good (?:morning|afternoon|evening)|sehr geehrte[rs]?|liebe[rs]?|hallo|"
    r"guten tag|estimad[oa]s?|hola|querid[oa]|bonjour|cher|chere|madame|monsieur|prezad[oa]s?|ola|caro|cara)"
    r"\b[^\n]{0,60}[,!:]?\s*$",
    re.IGNORECASE,
)
_SIGNOFF = re.compile(
    r"^\s*(?:best|kind|warm)?\s*(?:regards|wishes|best|cheers|thanks|thank you|sincerely|mit freundlichen grussen|"
    r"mit freundlichen grüßen|viele grusse|viele grüße|beste grusse|beste grüße|saludos(?: cordiales)?|atentamente|"
    r"cordialement|bien cordialement|atenciosamente|cumprimentos|un saludo)\b[^\n]{0,40}$",
    re.IGNORECASE,
)
_PLACEHOLDER_NAME = re.compile(r"<name>|\{\{\s*(?:customer|client)?\s*name\s*\}\}", re.IGNORECASE)
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[{¿¡ÄÖÜÉÀÂÇ])")


def _strip_frame(text: str) -> str:
    """Drop a resolution's own greeting and sign-off lines: the reply gets one greeting, addressed correctly."""
    lines = [line.rstrip() for line in text.replace("\\n", "\n").replace("\r\n", "\n").split("\n")]
    while lines and (not lines[0].strip() or _GREETING.match(lines[0])):
        lines.pop(0)
    cut = len(lines)
    for i in range(len(lines) - 1, max(-1, len(lines) - 5), -1):
        if _SIGNOFF.match(lines[i]):
            cut = i
            break
    lines = lines[:cut]
    while lines and not lines[-1].strip():
        lines.pop()
    # A name line left after the sign-off was cut (e.g. "<name>" or "Support Team").
    return "\n".join(lines).strip()


def _safe_sentences(text: str, *, allowed_urls: set[str], allowed_emails: set[str]) -> tuple[str, list[str]]:
    """The text without sentences the guard refuses, and the removed sentences."""
    removed: list[str] = []
    # Most sources are clean: one check of the whole text spares a check per sentence.
    if not (injection_in(text) or check_reply(text, allowed_urls=allowed_urls, allowed_emails=allowed_emails)):
        return text, removed
    kept_paragraphs: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text):
        kept_lines: list[str] = []
        for line in paragraph.split("\n"):
            kept: list[str] = []
            for sentence in _SENTENCE.split(line):
                if not sentence.strip():
                    continue
                bad = injection_in(sentence) or check_reply(
                    sentence, allowed_urls=allowed_urls, allowed_emails=allowed_emails
                )
                if bad:
                    removed.append(sentence.strip())
                else:
                    kept.append(sentence)
            if kept:
                kept_lines.append(" ".join(kept))
        if kept_lines:
            kept_paragraphs.append("\n".join(kept_lines))
    return "\n\n".join(kept_paragraphs), removed


def short_ref(item: RetrievedItem) -> str:
    prefix = "KB" if item.kind == "kb_chunk" else "R"
    return f"{prefix}-{str(item.id)[:8]}"


def _language(request: DraftRequest) -> str:
    if request.grounding is not None:
        language = request.grounding.metadata.get("language")
        if isinstance(language, str) and language:
            return language
    return "en"


class OfflineDrafter:
    """Composes the reply from the retrieved material with a fixed template: no model, nothing invented."""

    name: DrafterName = "offline"

    async def draft(self, request: DraftRequest) -> Draft:
        return self.compose(request)

    def compose(self, request: DraftRequest) -> Draft:
        allowed_urls, allowed_emails = allowed_addresses(request)
        language = _language(request)
        words = localized(language)
        name = (request.customer_name or "").strip()
        subject = (request.ticket.get("subject") or "").strip()
        removed: list[str] = []
        citations: list[str] = []
        answer = ""
        if request.grounding is not None and (request.grounding.resolution or "").strip():
            base = _strip_frame(request.grounding.resolution or "")
            base = _PLACEHOLDER_NAME.sub(name or words["customer"], base)
            answer, dropped = _safe_sentences(base, allowed_urls=allowed_urls, allowed_emails=allowed_emails)
            removed.extend(dropped)
            if answer:
                citations.append(str(request.grounding.id))
        passages: list[str] = []
        for item in request.passages[:PASSAGES_QUOTED]:
            excerpt = item.text.strip()
            if len(excerpt) > PASSAGE_CHARS:
                excerpt = excerpt[:PASSAGE_CHARS].rsplit(" ", 1)[0] + "…"
            safe, dropped = _safe_sentences(excerpt, allowed_urls=allowed_urls, allowed_emails=allowed_emails)
            removed.extend(dropped)
            if safe and fold(safe)[:80] not in fold(answer):
                title = item.title or item.metadata.get("document_title") or words["article"]
                passages.append(f"- {title}: {' '.join(safe.split())}")
                citations.append(str(item.id))
        grounded = bool(citations)
        greeting = f"{words['hello']} {name}," if name else f"{words['hello']},"
        opening = words["thanks_subject"].format(subject=subject) if subject else words["thanks"]
        parts = [greeting, "", opening, ""]
        if answer:
            parts += [answer, ""]
        if passages:
            parts += [words["more"] if answer else words["passages"], *passages, ""]
        if not grounded:
            parts += [words["handover"], ""]
        refs = [
            short_ref(i) for i in [request.grounding, *request.passages] if i is not None and str(i.id) in citations
        ]
        if refs:
            parts += [f"{words['refs']}: {', '.join(refs)}", ""]
        parts += [words["signoff"], request.specialist.team]
        text = "\n".join(parts).strip()
        violations = check_reply(text, allowed_urls=allowed_urls, allowed_emails=allowed_emails)
        return Draft(
            text=text,
            citations=citations,
            drafter="offline",
            grounded=grounded,
            template=OFFLINE_TEMPLATE,
            model={"drafter": "offline", "language": language},
            removed=removed,
            violations=violations,
        )


class LLMDrafterAdapter:
    """The LLM drafter (`agent.drafting.llm`) behind the `Drafter` protocol: maps requests and results both ways."""

    name: DrafterName = "llm"

    def __init__(self, llm: Any, *, fallback: str = "offline") -> None:
        self.llm = llm
        self.fallback = fallback

    async def draft(self, request: DraftRequest) -> Draft:
        from agent.drafting.llm import DraftRequest as LLMRequest
        from agent.drafting.llm import summarize_account

        items = [i for i in [request.grounding, *request.resolutions, *request.passages] if i is not None]
        unique = list({str(i.id): i for i in items}.values())
        urls, emails = allowed_addresses(request)
        customer = request.context.get("customer") or {}
        result = await self.llm.draft(
            LLMRequest(
                subject=request.ticket.get("subject") or "",
                body=request.ticket.get("body") or "",
                customer_name=request.customer_name,
                customer_tier=customer.get("tier"),
                account_summary=summarize_account(request.context) or None,
                items=[i.to_json() for i in unique],
                category=request.category,
                channel=request.ticket.get("channel") or "email",
                allowed_urls=sorted(urls),
                allowed_emails=sorted(emails),
            )
        )
        model = {"drafter": "llm", "model": result.model, "usage": dict(result.usage), "attempts": result.attempts}
        if not result.ok:
            escalate = self.fallback == "escalate"
            return Draft(
                text="",
                citations=[],
                drafter="llm",
                grounded=False,
                prompt=result.prompt or None,
                model=model,
                fell_back=not escalate,
                escalate=escalate,
                escalate_reasons=[f"the LLM failed: {result.error}"] if escalate else [],
                error=result.error,
                detail=result.to_trace(),
            )
        return Draft(
            text=result.reply,
            citations=list(result.cited_ids),
            drafter="llm",
            grounded=bool(result.cited_ids),
            prompt=result.prompt or None,
            model=model,
            violations=list(result.violations),
            self_assessment=result.confidence_factor,
            escalate=bool(result.escalate),
            escalate_reasons=list(result.escalate_reasons),
            notes=list(result.flags),
            detail=result.to_trace(),
        )


def default_drafter(settings: Any = None, metrics: Any = None) -> Drafter:
    """The drafter these settings call for: the LLM one when a model is configured, else the offline one."""
    if settings is not None and getattr(settings, "llm_enabled", False):
        from agent.drafting.llm import make_llm_drafter

        llm = make_llm_drafter(settings, metrics)
        if llm is not None:
            return LLMDrafterAdapter(llm, fallback=settings.llm_fallback)
    return OfflineDrafter()
