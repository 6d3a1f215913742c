"""The offline reply from the knowledge base: one answer per question, quoted from the passage the reader chose,
cited, fitted to the customer's account where the passage speaks of it; a question nothing answers is handed to a
person by name, never guessed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from agent.drafting.phrasing import localized
from agent.drafting.reader import Evidence, Quote

# A question is answered when its passage scores at least this (the reader's cosine-like scale). Below it the
# reply hands the question over. Chosen on the demo deployment set together with the calibration: the
# confidence, not this floor, decides whether a reply goes out.
ANSWER_FLOOR = 0.40
QUESTION_QUOTE_CHARS = 140


@dataclass
class Composition:
    """The answer part of a reply and what it rests on."""

    paragraphs: list[str] = field(default_factory=list)
    citations: list[str] = field(default_factory=list)
    answered: list[Evidence] = field(default_factory=list)
    handed_over: list[Evidence] = field(default_factory=list)
    account_facts: list[str] = field(default_factory=list)


def short_ref(item_id: str, kind: str) -> str:
    return f"{'KB' if kind == 'kb_chunk' else 'R'}-{item_id[:8]}"


def compose_answers(
    evidence: Sequence[Evidence],
    *,
    language: str,
    tier: str | None = None,
    floor: float = ANSWER_FLOOR,
) -> Composition:
    """Paragraphs answering each question in order. With several questions each answer is introduced by the
    question it answers; the passage's title is cited after it."""
    words = localized(language)
    out = Composition()
    several = len(evidence) > 1
    told_tier = False
    for ev in evidence:
        if ev.item is None or not ev.units or ev.score < floor:
            out.handed_over.append(ev)
            continue
        out.answered.append(ev)
        body = " ".join(_join_units(q.units) for q in ev.quotes)
        lines: list[str] = []
        if several:
            lines.append(words["you_asked"].format(question=_quote(ev.question.text)))
        if tier and not told_tier and _mentions(body, tier):
            lines.append(words["your_tier"].format(tier=tier))
            out.account_facts.append(f"tier {tier}")
            told_tier = True
        # Quotes of one article read as one passage, cited once with each section's reference.
        by_article: dict[str, list[Quote]] = {}
        for quote in ev.quotes:
            by_article.setdefault(_title(quote.item.title), []).append(quote)
            if str(quote.item.id) not in out.citations:
                out.citations.append(str(quote.item.id))
        for title, quotes in by_article.items():
            refs = ", ".join(short_ref(str(q.item.id), q.item.kind) for q in quotes)
            lines.append("\n".join(_join_units(q.units) for q in quotes))
            lines.append(f"({words['source']}: {title}, {refs})")
        out.paragraphs.append("\n".join(lines))
    if out.handed_over:
        if out.answered:
            questions = "; ".join(_quote(ev.question.text) for ev in out.handed_over)
            out.paragraphs.append(words["passed_on"].format(questions=questions))
        else:
            out.paragraphs.append(words["handover"])
    return out


def _join_units(units: Sequence[str]) -> str:
    """Units read as prose; what a line ending in a colon introduces starts on a line of its own."""
    text = ""
    for unit in units:
        text = f"{text}\n{unit}" if text.endswith(":") else f"{text} {unit}"
    return text.strip()


def _quote(question: str) -> str:
    text = " ".join(question.split())
    if len(text) > QUESTION_QUOTE_CHARS:
        text = text[:QUESTION_QUOTE_CHARS].rsplit(" ", 1)[0] + "…"
    return f"\u201c{text}\u201d"


def _title(title: str) -> str:
    return title.split(" › ")[0] if title else ""


def _mentions(text: str, word: str) -> bool:
    return bool(re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text, re.IGNORECASE))
