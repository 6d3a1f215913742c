"""Reply drafting: the built-in offline drafter, which composes a reply only from the best past resolution and
knowledge-base passages, personalised and citing its sources; and `default_drafter`, which picks the LLM drafter
instead when a model is configured (the contract both implement is in `agent.drafting.request`).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from agent.drafting.composer import compose_answers, knowledge_reply, safe_sentences
from agent.drafting.guardrails import check_reply
from agent.drafting.llm import make_llm_drafter
from agent.drafting.phrasing import KNOWLEDGE_TEMPLATE, OFFLINE_TEMPLATE, localized
from agent.drafting.questions import GREETING, SIGNOFF
from agent.drafting.request import Draft, Drafter, DrafterName, DraftRequest, allowed_addresses
from agent.scoring.risk import fold
from knowledge.retrieval import RetrievedItem

if TYPE_CHECKING:
    from core.metrics import Metrics
    from core.settings import Settings

PASSAGES_QUOTED = 2
PASSAGE_CHARS = 420


_PLACEHOLDER_NAME = re.compile(r"<name>|\{\{\s*(?:customer|client)?\s*name\s*\}\}", re.IGNORECASE)


def _strip_frame(text: str) -> str:
    """Drop a resolution's own greeting and sign-off lines: the reply gets one greeting, addressed correctly."""
    lines = [line.rstrip() for line in text.replace("\\n", "\n").replace("\r\n", "\n").split("\n")]
    while lines and (not lines[0].strip() or GREETING.match(lines[0].strip())):
        lines.pop(0)
    cut = len(lines)
    for i in range(len(lines) - 1, max(-1, len(lines) - 5), -1):
        if SIGNOFF.match(lines[i].strip()):
            cut = i
            break
    lines = lines[:cut]
    while lines and not lines[-1].strip():
        lines.pop()
    # A name line left after the sign-off was cut (e.g. "<name>" or "Support Team").
    return "\n".join(lines).strip()


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
        if request.evidence:
            return self.compose_from_knowledge(request)
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
            # A function, not a template: a name is literal text (`\` or `\g<0>` in it is no escape).
            greeting = name or words["customer"]
            base = _PLACEHOLDER_NAME.sub(lambda _: greeting, base)
            answer, dropped = safe_sentences(base, allowed_urls=allowed_urls, allowed_emails=allowed_emails)
            removed.extend(dropped)
            if answer:
                citations.append(str(request.grounding.id))
        passages: list[str] = []
        for item in request.passages[:PASSAGES_QUOTED]:
            excerpt = item.text.strip()
            if len(excerpt) > PASSAGE_CHARS:
                excerpt = excerpt[:PASSAGE_CHARS].rsplit(" ", 1)[0] + "…"
            safe, dropped = safe_sentences(excerpt, allowed_urls=allowed_urls, allowed_emails=allowed_emails)
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

    def compose_from_knowledge(self, request: DraftRequest) -> Draft:
        """One answer per question from the passage the reader chose; unanswered questions handed over."""
        composition = compose_answers(
            request.evidence, language=request.language, tier=request.tier, on_trial=request.on_trial
        )
        reply = knowledge_reply(request, composition)
        return Draft(
            text=reply.text,
            citations=composition.citations,
            drafter="offline",
            grounded=bool(composition.answered),
            template=KNOWLEDGE_TEMPLATE,
            model={"drafter": "offline", "language": request.language, "mode": "knowledge"},
            removed=reply.removed,
            violations=reply.violations,
            detail={
                "answered": [e.question.text for e in composition.answered],
                "handed_over": [e.question.text for e in composition.handed_over],
                "account_facts": composition.account_facts,
            },
        )


def default_drafter(settings: Settings | None = None, metrics: Metrics | None = None) -> Drafter:
    """The drafter these settings call for: the LLM one when a model is configured, else the offline one."""
    llm = make_llm_drafter(settings, metrics) if settings is not None else None
    return llm if llm is not None else OfflineDrafter()
