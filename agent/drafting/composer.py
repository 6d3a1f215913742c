"""The reply from the knowledge base: one answer per question, quoted from the passage the reader chose (or the
sentences a model chose among the reader's candidates), cited, fitted to the customer's account where the passage
speaks of it; a question nothing answers is handed to a person by name, never guessed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from agent.drafting.guardrails import check_reply
from agent.drafting.phrasing import localized
from agent.drafting.reader import ANSWER_FLOOR, Evidence, Quote, read_units
from agent.drafting.request import DraftRequest, allowed_addresses
from agent.scoring.risk import injection_in
from knowledge.retrieval import RetrievedItem

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
    on_trial: bool = False,
    floor: float = ANSWER_FLOOR,
    chosen: Sequence[Sequence[Quote]] | None = None,
) -> Composition:
    """Paragraphs answering each question in order. With several questions each answer is introduced by the
    question it answers; the passage's title is cited after it.

    `chosen`, one entry per question, replaces the reader's quotes: the sentences a model chose, each passage's
    in passage order (an empty entry hands the question over)."""
    words = localized(language)
    out = Composition()
    several = len(evidence) > 1
    # Questions answered from the same passages (or one from those and more) share one answer: its introduction
    # names each ("You asked “…” and “…”:") and it quotes what any of them was answered with, each sentence once,
    # in the passage's order.
    answers: list[_Answer] = []
    for n, ev in enumerate(evidence):
        if chosen is not None:
            quotes = [q for q in chosen[n] if q.units]
        else:
            quotes = ev.quotes if ev.item is not None and ev.units and ev.score >= floor else []
        if not quotes:
            out.handed_over.append(ev)
            continue
        out.answered.append(ev)
        passages = {str(q.item.id) for q in quotes}
        same = next((a for a in answers if a.passages() <= passages or passages <= a.passages()), None)
        if same is None:
            answers.append(_Answer([ev], list(quotes)))
        else:
            same.join(ev, quotes)
    told_tier = False
    quoted: set[str] = set()  # the sentences the reply quotes so far
    for answer in answers:
        # Quotes of one article read as one passage, cited once with each section's reference; an article's
        # sections in the article's order.
        articles: dict[str, list[Quote]] = {}
        for quote in answer.quotes:
            articles.setdefault(_title(quote.item.title), []).append(quote)
        articles = {t: sorted(qs, key=lambda q: q.item.metadata.get("seq", 0)) for t, qs in articles.items()}
        # A sentence the reply has quoted already (an earlier answer's, or the overlap two neighbouring sections
        # share) is not quoted again, nor a passage left with nothing new; an answer left with nothing keeps its
        # quotes.
        fresh: dict[str, list[Quote]] = {}
        for title, quotes in articles.items():
            for quote in quotes:
                units = tuple(u for u in quote.units if u not in quoted)
                if units:
                    fresh.setdefault(title, []).append(Quote(quote.item, units))
                    quoted.update(units)
        articles = fresh or articles
        body = " ".join(_join_units(q.units) for qs in articles.values() for q in qs)
        lines: list[str] = []
        if several:
            lines.append(_introduction(answer.asked, words))
        written = _mentioned(body, tier) if tier and not told_tier else None
        if tier and written:
            # The plan as the help centre spells it ("Starter"), whatever the casing on the account; a trial (the
            # operator's trial tiers) is said as one: "on trial" would read as something else.
            lines.append(words["your_trial"] if on_trial else words["your_tier"].format(tier=written))
            out.account_facts.append(f"tier {tier}")
            told_tier = True
        for title, quotes in articles.items():
            out.citations.extend(str(q.item.id) for q in quotes if str(q.item.id) not in out.citations)
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


@dataclass
class _Answer:
    """One answer of a reply: the questions it answers and what it quotes, one `Quote` per passage."""

    asked: list[Evidence]
    quotes: list[Quote]

    def passages(self) -> set[str]:
        return {str(q.item.id) for q in self.quotes}

    def join(self, ev: Evidence, quotes: Sequence[Quote]) -> None:
        """`ev`, answered from these passages (or from them and more), joins this answer with what it quotes that
        this one does not, each passage's sentences kept in the passage's order."""
        self.asked.append(ev)
        more = {str(q.item.id): q.units for q in quotes}
        joined: list[Quote] = []
        for quote in self.quotes:
            extra = [u for u in more.pop(str(quote.item.id), ()) if u not in quote.units]
            joined.append(Quote(quote.item, _in_passage_order(quote.item, (*quote.units, *extra))))
        self.quotes = joined + [q for q in quotes if str(q.item.id) in more]


def _in_passage_order(item: RetrievedItem, units: Sequence[str]) -> tuple[str, ...]:
    """`units` in the order the passage has them (one it does not have as written keeps its place after them)."""
    order = {u: n for n, u in enumerate(read_units(item))}
    return tuple(sorted(units, key=lambda u: order.get(u, len(order))))


def _introduction(asked: Sequence[Evidence], words: dict[str, str]) -> str:
    """The line introducing an answer: "You asked “…” and “…”:", or "You wrote" when none was asked outright (an
    answer to a question and to something only said names the question)."""
    explicit = [ev for ev in asked if ev.question.explicit]
    said = "you_asked" if explicit else "you_wrote"
    questions = f" {words['and']} ".join(_quote(ev.question.text) for ev in explicit or asked)
    return words[said].format(question=questions)


# A unit ending like a sentence (its closing quote or bracket aside) reads on in prose after it.
_SENTENCE_END = re.compile(r"[.!?…][\"'”’»)\]]*$")


def _join_units(units: Sequence[str]) -> str:
    """Units read as prose; what a line ending in a colon introduces, and whatever follows a list item that is
    not a sentence ("By email: support@…", "Solo: every 60 minutes"), starts on a line of its own."""
    text = ""
    for unit in units:
        text = f"{text} {unit}" if not text or _SENTENCE_END.search(text) else f"{text}\n{unit}"
    return text.strip()


def _quote(question: str) -> str:
    text = " ".join(question.split())
    if len(text) > QUESTION_QUOTE_CHARS:
        text = text[:QUESTION_QUOTE_CHARS].rsplit(" ", 1)[0] + "…"
    return f"\u201c{text}\u201d"


def _title(title: str) -> str:
    return title.split(" › ")[0] if title else ""


def _mentioned(text: str, word: str) -> str | None:
    """`word` as `text` writes it, when it does (whole word, any case)."""
    found = re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text, re.IGNORECASE)
    return found.group(0) if found else None


_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[{¿¡ÄÖÜÉÀÂÇ])")


def safe_sentences(text: str, *, allowed_urls: set[str], allowed_emails: set[str]) -> tuple[str, list[str]]:
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


@dataclass
class KnowledgeReply:
    """A knowledge-base reply as the customer reads it, the quoted sentences the guard left out, and what the
    guard still finds in the whole."""

    text: str
    removed: list[str]
    violations: list[str]


def knowledge_reply(request: DraftRequest, composition: Composition, *, opening: str | None = None) -> KnowledgeReply:
    """Greeting, an opening line (`opening`, else thanks naming the subject), the answers with every quoted
    sentence through the guard, the sign-off and the team."""
    allowed_urls, allowed_emails = allowed_addresses(request)
    words = localized(request.language)
    name = (request.customer_name or "").strip()
    subject = (request.ticket.get("subject") or "").strip()
    removed: list[str] = []
    paragraphs: list[str] = []
    for paragraph in composition.paragraphs:
        safe, dropped = safe_sentences(paragraph, allowed_urls=allowed_urls, allowed_emails=allowed_emails)
        removed.extend(dropped)
        if safe:
            paragraphs.append(safe)
    greeting = f"{words['hello']} {name}," if name else f"{words['hello']},"
    if not opening:
        opening = words["thanks_subject"].format(subject=subject) if subject else words["thanks"]
    answers = "\n\n".join(paragraphs)
    text = "\n".join([greeting, "", opening, "", answers, "", words["signoff"], request.specialist.team])
    return KnowledgeReply(
        text=text.strip(),
        removed=removed,
        violations=check_reply(text, allowed_urls=allowed_urls, allowed_emails=allowed_emails),
    )
