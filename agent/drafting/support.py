"""Which sentences of a model's reply the passages it cites support, and the reply without the others.

A sentence states a fact unless it is a greeting, a sign-off, a question back to the customer, courtesy or a
handover ("a colleague will follow up"), or an echo of the customer's own message (only their words, and no
claim word such as "yes", "can" or "available"). A sentence that states a fact is *supported* when

1. it cites a passage the model was given: the labels it ends with ([KB-1a2b3c4d], [K1]), or, for a sentence
   that carries no label, the passages the verdict lists in `cited_ids` (small models cite once per paragraph or
   per reply: measured with Qwen2.5-Coder 1.5B, which labelled the first sentence and none of the next);
2. every specific in it appears in a cited passage: each number or amount (the same figure), each duration (the
   same figure and unit: "30 days" is not "30 minutes") and each menu path (every step between the arrows of
   "Settings › Billing › Export", and the words either side of each arrow);
3. what it says comes from those passages: of its content words the customer did not write, at least
   `SUPPORT_SHARE` appear in the cited passages (compared by a crude stem: plural "s" dropped, first six
   letters), and at least one word or specific from the passages is new to the customer's message.

Everything else that states a fact is removed. Labels are taken out of the text the customer reads.
Pure functions: no model, no I/O.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from agent.drafting.guardrails import find_emails, find_urls
from agent.scoring.risk import fold

# Share of a sentence's new content words (those not in the ticket) the cited passages must contain.
SUPPORT_SHARE = 0.6
STEM_CHARS = 6

_LABEL_TOKEN = r"(?:KB|R)-[0-9A-Za-z]{4,12}|[RK]\d{1,3}"
# A citation: one or more labels in square brackets or parentheses, "[K1]", "[K1, K2]", "(KB-1a2b3c4d)".
_CITATION = re.compile(
    rf"\s*[\[(]\s*((?:{_LABEL_TOKEN})(?:\s*(?:,|;|and|&)\s*(?:{_LABEL_TOKEN}))*)\s*[\])]", re.IGNORECASE
)
_LABEL = re.compile(_LABEL_TOKEN, re.IGNORECASE)
# "… 30 minutes. [K1]": a citation after the full stop belongs to the sentence before it.
_CITATION_AFTER_STOP = re.compile(rf"([.!?])((?:{_CITATION.pattern})+)(?=\s|$)", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")

_GREETING = re.compile(
    r"^(?:dear|hi|hello|hey|greetings|good (?:morning|afternoon|evening)|hallo|guten tag|liebe[rs]?|"
    r"sehr geehrte[rs]?|hola|estimad[oa]s?|bonjour|cher|chere|ola|prezad[oa]s?|caro|cara)\b[^.!?\n]{0,50}?"
    r"(?:[,!:]\s*|$)"
)
_SIGNOFF = re.compile(
    r"^(?:(?:best|kind|warm|many)\s+)?(?:regards|wishes|best|cheers|thanks|thank you|sincerely|"
    r"mit freundlichen grussen|viele grusse|beste grusse|saludos(?: cordiales)?|atentamente|un saludo|"
    r"cordialement|bien cordialement|atenciosamente|cumprimentos)\b[^.!?\n]{0,40}[,.!]?$"
)
# A handover in the languages replies are phrased in: someone will follow up, the question was passed on.
_HANDOVER = re.compile(
    r"\b(?:passed|forwarded|handed|escalated|referred|weitergegeben|weitergeleitet|pasado|pasada|transmis|"
    r"transmise|encaminh\w*)\b|\b(?:colleague|teammate|specialist|a person|someone|our team|the team|kolleg\w*|"
    r"companer\w*|equipo|collegue|equipe|colega)\b[^.!?\n]{0,80}\b(?:follow|get back|contact|reach|reply|"
    r"respond|look into|melde|contacto|reviendra|contato)"
)

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")
_NUMBER = re.compile(r"(?<![\w.,])\d+(?:[.,]\d+)*")
_NUMBER_WORDS = {
    "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7", "eight": "8",
    "nine": "9", "ten": "10", "eleven": "11", "twelve": "12", "fourteen": "14", "fifteen": "15", "twenty": "20",
    "thirty": "30", "forty": "40", "fifty": "50", "sixty": "60", "ninety": "90", "a": "1", "an": "1",
}  # fmt: skip
_UNITS = {
    "second": ("second", "seconds", "sec", "secs", "sekunde", "sekunden", "segundo", "segundos", "seconde",
               "secondes"),
    "minute": ("minute", "minutes", "min", "mins", "minuten", "minuto", "minutos"),
    "hour": ("hour", "hours", "hr", "hrs", "stunde", "stunden", "hora", "horas", "heure", "heures"),
    "day": ("day", "days", "tag", "tage", "tagen", "dia", "dias", "jour", "jours"),
    "week": ("week", "weeks", "woche", "wochen", "semana", "semanas", "semaine", "semaines"),
    "month": ("month", "months", "monat", "monate", "monaten", "mes", "meses", "mois"),
    "year": ("year", "years", "jahr", "jahre", "jahren", "ano", "anos", "an", "ans", "annee", "annees"),
}  # fmt: skip
_UNIT_OF = {spelling: unit for unit, spellings in _UNITS.items() for spelling in spellings}
_DURATION = re.compile(
    r"(?<![\w.,])(\d+(?:[.,]\d+)?|" + "|".join(sorted(_NUMBER_WORDS, key=len, reverse=True)) + r")"
    r"(?:\s*-\s*|\s+)(?:business\s+|working\s+|calendar\s+)?("
    + "|".join(sorted(_UNIT_OF, key=len, reverse=True))
    + r")\b"
)
_PATH_ARROW = re.compile(r"\s*(?:›|»|→|->|=>|>)\s*")
# A run of at least two steps joined by arrows; a step is up to four words.
_PATH = re.compile(
    r"[^\s›»→>=.,;:!?()\[\]\"“”]+(?:\s+[^\s›»→>=.,;:!?()\[\]\"“”]+){0,3}"
    r"(?:\s*(?:›|»|→|->|=>|>)\s*[^\s›»→>=.,;:!?()\[\]\"“”]+(?:\s+[^\s›»→>=.,;:!?()\[\]\"“”]+){0,3})+"
)


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_STOP = _words(
    """a about above after again against all also am an and any are aren't as at be because been before being
    below between both but by could couldn't did didn't do does doesn't doing don't down during each either
    else even ever every few for from further get gets got had hadn't has hasn't have haven't having he her here
    hers him his how however i i'd i'll i'm i've if in into is isn't it it's its itself just let let's like
    me more most much my myself no nor of off on once one only or other our ours ourselves out over own per
    please same she should so some such than that that's the their theirs them then there there's these they
    this those through thus to too under until up upon us very was wasn't we we'd we'll we're we've were what
    what's when where which while who whom why with within without would you you'd you'll you're you've your
    yours yourself also via etc e.g i.e
    der die das den dem des ein eine einen einem einer und oder aber ist sind war wird werden wurde ich wir sie
    ihr ihre ihnen ihr es mit fur auf aus bei nach von vor zu zum zur im in an am als auch nur noch schon dann
    dass wenn wie was wo hier dort sich sein seine unser unsere bitte
    el la los las un una unos unas y o pero es son era sera yo nosotros usted ustedes su sus con para por en de
    del al que como cuando donde aqui ya tambien solo mas muy se lo le les mi mis nuestro nuestra
    le la les un une des et ou mais est sont etait sera je nous vous votre vos leur leurs avec pour par dans de
    du au aux que qui comme quand ou ici deja aussi seulement plus tres se ce cette ces mon ma mes notre
    o a os as um uma uns umas e ou mas sao era sera eu nos voce voces seu sua seus suas com para por em de do da
    dos das no na nos nas que como quando onde aqui ja tambem so mais muito se meu minha nosso nossa"""
)
# Words of courtesy and handover: a sentence made of these (and stop words) states no fact.
_COURTESY = _words(
    """thank thanks thanked reaching reach contacting contact writing wrote write hope hoping helps helped
    helpful help glad happy pleased sorry apologise apologize apologies inconvenience patience understand
    understanding know questions question further anything something assist assistance welcome regards kind
    best wishes cheers sincerely team support colleague colleagues teammate person someone specialist human
    follow following back shortly soon possible touch forward forwarded passed handed customer dear hello
    hi hey great good day note feel free look looking detail details matter issue concern message ticket
    reply asap quickly promptly meantime update updates sure certainly course definitely absolutely trouble
    troubles problem problems hear hearing frustrating frustration caused experience experiencing
    danke vielen dank gerne hilfe kollege kollegen kollegin team melden bald entschuldigung
    gracias ayuda companero equipo pronto disculpa disculpe lamentamos
    merci aide collegue equipe bientot desole desolee excuse
    obrigado obrigada ajuda colega equipe breve desculpe lamentamos"""
)
# Words that make an echo of the ticket a claim: "Yes, you can restore deleted timesheets" states a fact.
_CLAIM = _words(
    """yes no can cannot can't could couldn't will won't would possible impossible able unable allowed available
    unavailable included supported automatically must only always ja nein kann konnen moglich si puede puedes
    posible oui peut pouvez possible sim pode podem possivel"""
)


@dataclass
class SentenceCheck:
    """One sentence of the reply and the verdict on it."""

    text: str  # as the customer reads it: labels taken out
    labels: list[str] = field(default_factory=list)  # the valid labels it cites (or the reply-wide ones)
    invalid_labels: list[str] = field(default_factory=list)
    factual: bool = False
    supported: bool = True
    reason: str = ""

    def to_json(self) -> dict[str, object]:
        data: dict[str, object] = {"text": self.text, "labels": self.labels, "factual": self.factual}
        if self.invalid_labels:
            data["invalid_labels"] = self.invalid_labels
        if not self.supported:
            data["removed"] = self.reason
        return data


@dataclass
class SupportCheck:
    """The reply with unsupported sentences and labels removed, and what was decided about each sentence."""

    text: str
    sentences: list[SentenceCheck]
    inline_citations: bool  # the reply cites per sentence (else the verdict's cited_ids stood in)
    passages: Mapping[str, str] = field(default_factory=dict)
    ticket: str = ""

    @property
    def factual(self) -> list[SentenceCheck]:
        return [s for s in self.sentences if s.factual]

    @property
    def removed(self) -> list[SentenceCheck]:
        return [s for s in self.sentences if not s.supported]

    @property
    def removed_share(self) -> float:
        factual = len(self.factual)
        return len(self.removed) / factual if factual else 0.0

    @property
    def invalid_labels(self) -> list[str]:
        return list(dict.fromkeys(label for s in self.sentences for label in s.invalid_labels))

    def answers(self, label: str) -> bool:
        """Whether a kept factual sentence answers from passage `label`: cites it and takes something from it."""
        passage = _profile(self.passages.get(label, ""))
        ticket = _profile(self.ticket)
        for sentence in self.sentences:
            if not (sentence.factual and sentence.supported and label in sentence.labels):
                continue
            said = _profile(sentence.text)
            if (said.stems - ticket.stems) & passage.stems or (said.numbers & passage.numbers):
                return True
        return False

    def has_handover(self) -> bool:
        return any(_HANDOVER.search(fold(s.text)) for s in self.sentences if s.supported)

    def to_json(self) -> dict[str, object]:
        return {
            "sentences": [s.to_json() for s in self.sentences],
            "factual": len(self.factual),
            "removed": [s.text for s in self.removed],
            "removed_share": round(self.removed_share, 3),
            "inline_citations": self.inline_citations,
        }


@dataclass(frozen=True)
class _Profile:
    """What a text says, as the check compares it: content stems, numbers, durations, its folded words."""

    stems: frozenset[str]
    numbers: frozenset[str]
    durations: frozenset[tuple[str, str]]
    words: str  # folded, punctuation as spaces: for menu steps

    def has_phrase(self, phrase: str) -> bool:
        words = " ".join(_WORD.findall(fold(phrase)))
        return bool(words) and f" {words} " in f" {self.words} "


def stem(word: str) -> str:
    """A crude stem that serves overlap, not linguistics: "links" ~ "link", "restored" ~ "restoring"."""
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        word = word[:-1]
    return word[:STEM_CHARS]


def _number(text: str) -> str:
    """12,000 and 12.000 and 12000 as one figure; 1.5 and 1,5 as another."""
    if re.fullmatch(r"\d{1,3}(?:[.,]\d{3})+", text):
        return re.sub(r"[.,]", "", text)
    return text.replace(",", ".")


def _strip_addresses(text: str) -> str:
    for found in [*find_urls(text), *find_emails(text)]:
        text = text.replace(found, " ")
    return text


@lru_cache(maxsize=4096)
def _profile(text: str) -> _Profile:
    folded = fold(_strip_addresses(text))
    words = _WORD.findall(folded)
    stems = frozenset(stem(w) for w in words if len(w) > 2 and not w.isdigit() and w not in _STOP)
    durations = frozenset(
        (_NUMBER_WORDS.get(m.group(1), _number(m.group(1))), _UNIT_OF[m.group(2)]) for m in _DURATION.finditer(folded)
    )
    numbers = frozenset(_number(m.group(0)) for m in _NUMBER.finditer(folded))
    return _Profile(stems, numbers, durations, " ".join(words))


def _content(text: str, ignore: frozenset[str]) -> set[str]:
    """The sentence's content stems: no stop words, courtesy, claim words or the customer's name."""
    folded = fold(_strip_addresses(text))
    return {
        stem(w)
        for w in _WORD.findall(folded)
        if len(w) > 2
        and not w.isdigit()
        and w not in _STOP
        and w not in _COURTESY
        and w not in _CLAIM
        and w not in ignore
    }


def _menu_steps(text: str) -> list[str]:
    """The steps of each menu path in the sentence: the inner steps whole, the outer ones by their word next to
    the arrow ("Open Settings › Billing › Export the file": "Settings", "Billing", "Export")."""
    steps: list[str] = []
    for match in _PATH.finditer(text):
        parts = [p.strip() for p in _PATH_ARROW.split(match.group(0)) if p.strip()]
        if len(parts) < 2:
            continue
        steps.append(parts[0].split()[-1])
        steps.extend(parts[1:-1])
        steps.append(parts[-1].split()[0])
    return steps


# A numbered list item's marker ("1. ", "2) "): part of its first sentence, not a sentence or a figure of its own
# (models answer steps as numbered lists; measured with Qwen2.5-Coder 1.5B).
_LIST_MARKER = re.compile(r"^\s*\d{1,2}[.)]\s+")


def _split(reply: str) -> list[list[str]]:
    """The reply's lines, each as its sentences; a citation after a full stop moved before it."""
    text = _CITATION_AFTER_STOP.sub(lambda m: f"{m.group(2)}{m.group(1)}", reply.replace("\r\n", "\n"))
    lines = []
    for line in text.split("\n"):
        marker = _LIST_MARKER.match(line)
        head = marker.group(0) if marker else ""
        sentences = [s for s in _SENTENCE_END.split(line[len(head) :]) if s.strip()]
        if head and sentences:
            sentences[0] = head + sentences[0]
        lines.append(sentences)
    return lines


def _take_labels(sentence: str) -> tuple[str, list[str]]:
    labels = [label.upper() for m in _CITATION.finditer(sentence) for label in _LABEL.findall(m.group(1))]
    text = _CITATION.sub("", sentence)
    return re.sub(r"\s+([.,;:!?])", r"\1", text).strip(), labels


def _is_conversational(sentence: str) -> bool:
    folded = fold(sentence).strip()
    return bool(
        not folded
        or folded.endswith("?")
        or _SIGNOFF.match(folded)
        or (_GREETING.match(folded) and not _GREETING.sub("", folded, count=1).strip())
    )


def check_support(
    reply: str,
    *,
    passages: Mapping[str, str],
    cited: Sequence[str],
    ticket: str,
    customer_name: str | None = None,
) -> SupportCheck:
    """Check every sentence of `reply` against the passages it cites (label -> passage text, as given to the
    model); `cited` are the verdict's valid labels, which stand in for a reply that cites nothing inline."""
    given = {label.upper(): label for label in passages}
    lines = _split(reply)
    inline = any(_CITATION.search(s) for line in lines for s in line)
    fallback = [given[c.upper()] for c in cited if c.upper() in given]
    name = frozenset(_WORD.findall(fold(customer_name or "")))
    asked = _profile(ticket)
    checks: list[list[SentenceCheck]] = []
    for line in lines:
        row = []
        for raw in line:
            text, labels = _take_labels(raw)
            valid = [given[label] for label in labels if label in given]
            check = SentenceCheck(
                text=text,
                labels=list(dict.fromkeys(valid if labels else fallback)),
                invalid_labels=[label for label in labels if label not in given],
            )
            _judge(check, passages, asked, name)
            row.append(check)
        checks.append(row)
    flat = [c for row in checks for c in row]
    changed = inline or any(not c.supported for c in flat)
    text = _join(checks) if changed else reply.strip()
    return SupportCheck(text=text, sentences=flat, inline_citations=inline, passages=passages, ticket=ticket)


def _judge(check: SentenceCheck, passages: Mapping[str, str], asked: _Profile, name: frozenset[str]) -> None:
    if _is_conversational(check.text):
        return
    body = _GREETING.sub("", fold(_LIST_MARKER.sub("", check.text, count=1)), count=1)
    said = _profile(body)
    content = _content(body, name)
    specifics = said.numbers | {f"{n} {u}" for n, u in said.durations}
    steps = _menu_steps(check.text)
    if not content and not specifics and not steps:
        return  # courtesy, a handover, a greeting: no fact
    claims = bool(set(_WORD.findall(body)) & _CLAIM)
    if content <= asked.stems and said.numbers <= asked.numbers and not steps and not claims:
        return  # an echo of the customer's own message
    check.factual = True
    if not check.labels:
        check.supported, check.reason = False, "cites no passage it was given"
        return
    source = _merge(_profile(passages[label]) for label in check.labels)
    durations = said.durations - source.durations
    if durations:
        n, unit = sorted(durations)[0]
        check.supported, check.reason = False, f"the duration {n} {unit}(s) is not in the cited passage"
        return
    in_durations = {n for n, _ in said.durations}
    numbers = sorted(said.numbers - source.numbers - in_durations)
    if numbers:
        check.supported, check.reason = False, f"the figure {numbers[0]} is not in the cited passage"
        return
    missing = [step for step in steps if not source.has_phrase(step)]
    if missing:
        check.supported, check.reason = False, f"the menu step \u201c{missing[0]}\u201d is not in the cited passage"
        return
    new = content - asked.stems
    found = new & source.stems
    from_passage = found or (said.numbers - asked.numbers) & source.numbers or steps
    if len(found) < math.ceil(SUPPORT_SHARE * len(new)) or not from_passage:
        share = len(found) / len(new) if new else 0.0
        check.supported = False
        check.reason = f"{share:.0%} of its content is in the cited passage (at least {SUPPORT_SHARE:.0%} needed)"


def _merge(profiles: Iterable[_Profile]) -> _Profile:
    items = list(profiles)
    return _Profile(
        frozenset().union(*(p.stems for p in items)),
        frozenset().union(*(p.numbers for p in items)),
        frozenset().union(*(p.durations for p in items)),
        " | ".join(p.words for p in items),
    )


def _join(checks: list[list[SentenceCheck]]) -> str:
    lines: list[str] = []
    for row in checks:
        if not row:
            if lines and lines[-1]:
                lines.append("")
            continue
        kept = [c.text for c in row if c.supported and c.text]
        if kept:
            lines.append(" ".join(kept))
    return "\n".join(lines).strip()


def strip_citations(reply: str) -> str:
    """The reply as the model wrote it, less its citation labels: what the output guard reads."""
    rows = [[SentenceCheck(_take_labels(sentence)[0]) for sentence in line] for line in _split(reply)]
    return _join(rows)


def first_sentence(text: str) -> str:
    """The text's first sentence, on one line: what a one-sentence field keeps of a longer answer."""
    parts = [p for p in _SENTENCE_END.split(" ".join(text.split())) if p.strip()]
    return parts[0].strip() if parts else ""


def insert_before_signoff(reply: str, paragraph: str) -> str:
    """`paragraph` as the reply's last paragraph before its sign-off ("Kind regards, …"), else at its end."""
    lines = reply.rstrip().split("\n")
    for i in range(len(lines) - 1, max(-1, len(lines) - 4), -1):
        if _SIGNOFF.match(fold(lines[i]).strip()):
            head = "\n".join(lines[:i]).rstrip()
            return f"{head}\n\n{paragraph}\n\n" + "\n".join(lines[i:])
    return f"{reply.rstrip()}\n\n{paragraph}"
