"""The reader: for each question of a ticket, which retrieved passage answers it, and with which sentences.

Retrieval ranks passages by how close they are to the whole ticket (reciprocal-rank fusion of vector and full-text
search); the reader judges each passage against each question. A passage is split into units (sentences, list
items), each unit embedded with its section title ("Plans › What each plan includes: Free – … No invoicing.")
so a short sentence keeps its context. A passage's score for a question is its best unit's cosine to the question,
plus half the passage's cosine to the whole ticket (the question alone often lacks the situation it is about);
measured on the demo deployment set (examples/deployment), the passage holding a required fact is the reader's
first choice for 70 % of facts, against 57 % for the retrieval order alone.

A sentence vector says what a sentence is about, not whether it holds the detail asked for, so a unit is also read
token by token (`TokenQuery`, "late interaction" on the same model's token vectors): each word of the question
finds its closest token in the unit, rare words among the units being read weighing most; a question in another
language than the help centre's counts only the words it shares with the units. A unit's score (which the
passage's above takes as its best unit's) is the mean of the two readings. Measured on the two demo deployment
sets: a confidence curve fitted on one set and applied to the other separates right drafts from wrong ones with
an AUC of 0.90 instead of 0.66.

Three refinements the embedding alone misses. A unit giving the kind of answer the question asks for (a place in the
product for "where", a duration for "how long", a quantity, steps for "how do I": `questions.asked_for`) scores a
little higher. A question asking several things in one sentence ("how do I request a refund, and how long
does it take?") has each further part looked for in every section of the chosen article, so the reply quotes the
section that answers it even when no search returned it. And an article's opening paragraph (what the feature does,
which plans have it) is quoted before the chosen section when it is about the question too (`LEAD_MARGIN`): a
section quoted alone leaves out what the article says first.

Units and their vectors are computed once per passage text and cached: a help center is small and its passages
come back ticket after ticket, so after warm-up a ticket costs one encode per question and a few dot products.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from agent.drafting.questions import BULLET, Question, asked_for, gives, language_of, sentences
from knowledge.embedder import Embedder, TokenRows, embed, embed_tokens, embed_with_tokens
from knowledge.retrieval import RetrievedItem

# Weight of the passage's similarity to the whole ticket next to its best unit's similarity to the question.
TICKET_WEIGHT = 0.5
# Units within this much of the best unit's score are quoted with it (a passage's answer is rarely one sentence).
UNIT_MARGIN = 0.2
MAX_UNITS = 6
# A passage this short is quoted whole: cutting it loses more than it saves.
WHOLE_PASSAGE_UNITS = 5
# A second passage within this much of the first is quoted too: the reader cannot tell them apart, and the
# answer is often split across two sections (measured on the demo deployment set: 43 -> 48 of 67 tickets with
# every required fact in the quoted passages).
SECOND_MARGIN = 0.05
# A question asking several things in one sentence ("how do I ask for a refund, and how long does it take?"): each
# further part's best unit in the chosen article is quoted too, when it scores at least this against the part.
PART_FLOOR = 0.35
# Added to a unit's score when it gives the kind of answer the question asks for (`questions.asked_for`: a place,
# a duration, a quantity, steps): the embedding ranks every sentence on the question's topic alike.
ANSWER_KIND_BONUS = 0.05
# What a model choosing the sentences is shown per question (`Evidence.candidates`): the best passages, each with
# the units the offline reply would quote from it, when within this much of the best passage's score.
CANDIDATE_PASSAGES = 3
CANDIDATE_MARGIN = 0.15
# Passages whose units are kept read (LRU): with token vectors (float16) about 0.1 MB each.
CACHE_SIZE = 2_000
# Passages read at a time when a worker reads the help centre before its first ticket (`Reader.warm`): a ticket
# needing the reader meanwhile waits for one such batch at most.
WARM_BATCH = 8
# Question texts whose token vectors are kept: a ticket's questions are read once or twice, moments apart.
QUESTION_CACHE_SIZE = 256
# An article's opening paragraph says in a sentence or three what the article is about — what a feature does and
# which plans have it, what cancelling does and does not do — and a section quoted alone leaves that out. The lead
# is quoted (whole, when short: `quoted_indices`) before the chosen section when its best sentence scores within
# this much of the section's best. Measured on the four deployment-shaped sets and on four paraphrases of two
# held-out questions (docs/quality.md): 0.15 adds both held-out facts only a lead holds ("Approvals are included on
# Pro and Enterprise", "it does not delete your workspace or your data") and all four paraphrases, to a third of
# replies; the lead's close sentences alone (0.1, 0.15) or its best one (0.15 to 0.25) found one to three of four.
LEAD_MARGIN = 0.15
# A sentence that speaks of the help-centre article itself, not of the product: "This article explains …", "Cet
# article …". It reads oddly in a reply, which is not that article. ("This page" is left alone: it is as often a
# page of the product.)
SIGNPOST = re.compile(
    r"(this|the following) (article|guide|section)\b|(dieser|folgender) (artikel|leitfaden|abschnitt)\b"
    r"|(cet|ce|le présent) (article|guide)\b|cette section\b"
    r"|(este|el presente) (artículo|artigo|guía|guia)\b|esta (sección|secção|seção)\b",
    re.IGNORECASE,
)
# A question is answered when its passage scores at least this (the reader's cosine-like scale). Below it the
# reply hands the question over. Chosen on the demo deployment set together with the calibration: the
# confidence, not this floor, decides whether a reply goes out.
ANSWER_FLOOR = 0.40
# The longest list item read as one unit.
LIST_ITEM_CHARS = 300
# Token-by-token reading (`TokenQuery`) is put on the scale of the sentence vectors' cosine, which the margins and
# floors above are in: LATE_SCALE × token score + LATE_SHIFT has the cosine's mean and spread over the 17,000
# question-sentence pairs the reader scored on the two demo deployment sets (correlation 0.87).
LATE_SCALE = 1.73
LATE_SHIFT = -0.216
# A unit's score: this share of it read token by token, the rest its sentence vector's cosine.
LATE_WEIGHT = 0.5
# A question in another language than the help centre's is read token by token only on at least this many words
# it shares with the units: on one, that word alone would decide every score.
MIN_SHARED_WORDS = 2

_EMPHASIS = re.compile(r"\*\*|__|(?<!\w)[*_](?=\S)|(?<=\S)[*_](?!\w)")
# Inline code (`401 invalid_token`) loses its backticks; a fenced block (```) keeps its fences.
_INLINE_CODE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
_TABLE_RULE = re.compile(r"^[\s|:-]+$")
_CELL_BREAK = " | "


def plain(text: str) -> str:
    """Markdown emphasis, inline code marks and table rules removed, and a table's rows written as lines a reply
    can quote ("| Starter | Within 1 business day |" -> "Starter: Within 1 business day."): replies are plain
    text."""
    lines = text.split("\n")
    out: list[str] = []
    header: list[str] | None = None
    for n, line in enumerate(lines):
        if line.strip() and _TABLE_RULE.match(line):
            continue
        cells = _table_cells(lines, n)
        if cells is None:
            out.append(line)
            header = None
            continue
        following = lines[n + 1] if n + 1 < len(lines) else ""
        if "|" in following and _TABLE_RULE.match(following):
            header = cells  # a Markdown table's header row: what its columns are, not something to quote
            continue
        out.append(_table_row(cells, header))
    return _INLINE_CODE.sub(r"\1", _EMPHASIS.sub("", "\n".join(out)))


def _table_cells(lines: Sequence[str], n: int) -> list[str] | None:
    """The cells of line `n` when it is a table row: a Markdown row ("| a | b |", or "a | b |" when a chunk's
    overlap with the one before began after the row's opening bar), or a row of an HTML table as the chunker writes
    it ("a | b") next to another such row."""
    line = lines[n].strip()
    if line.startswith("|") and line.endswith("|") and line.count("|") >= 3:
        return [cell.strip() for cell in line[1:-1].split("|")]
    if line.endswith(" |") and _CELL_BREAK in line:
        return [cell.strip() for cell in line[:-1].split("|")]
    neighbours = [lines[m].strip() for m in (n - 1, n + 1) if 0 <= m < len(lines)]
    if _CELL_BREAK in line and any(_CELL_BREAK in other for other in neighbours):
        return [cell.strip() for cell in line.split("|")]
    return None


def _table_row(cells: Sequence[str], header: Sequence[str] | None) -> str:
    """A row as a line: its first cell, a colon, the others. A number in the first column reads with the column's
    name ("Day" and "14": "Day 14: …")."""
    cells = [cell for cell in cells if cell]
    if not cells:
        return ""
    first = cells[0]
    if header and header[0] and first[:1].isdigit() and len(header[0].split()) <= 2:
        first = f"{header[0]} {first}"
    if len(cells) == 1:
        return first
    row = f"{first}: {'; '.join(cells[1:])}"
    return row if row[-1] in ".!?:" else f"{row}."


def passage_units(text: str) -> list[str]:
    """A passage's sentences and list items, in order; a line ending in ':' stays with what it introduces. A list
    item of up to `LIST_ITEM_CHARS` is one unit whatever its sentences: its second sentence ("Retrying with the
    same key never creates a duplicate") reads only with its first."""
    units: list[str] = []
    for line in plain(text).split("\n"):
        said = [u for u in sentences(line) if len(u) > 2]
        if BULLET.match(line) and len(said) > 1 and sum(len(u) + 1 for u in said) <= LIST_ITEM_CHARS:
            said = [" ".join(said)]
        units.extend(said)
    merged: list[str] = []
    for unit in units:
        if merged and merged[-1].endswith(":") and len(merged[-1]) < 60:
            merged[-1] = f"{merged[-1]} {unit}"
        else:
            merged.append(unit)
    return merged


@dataclass(frozen=True)
class CosineScale:
    """An affine map putting another model's cosines on the scale of the reader's own (all-MiniLM-L6-v2), which
    the margins and floors above and the knowledge calibration are in: `factor` × cosine + `shift`."""

    factor: float = 1.0
    shift: float = 0.0

    def __call__(self, cosines: np.ndarray) -> np.ndarray:
        return np.asarray(self.factor * cosines + self.shift)


IDENTITY = CosineScale()


@dataclass(frozen=True)
class ReadPassage:
    """A passage as the reader sees it: its units, their vectors (title-prefixed), and its own vector."""

    units: tuple[str, ...]
    unit_vectors: np.ndarray
    vector: np.ndarray
    # The kinds of answer each unit gives (`questions.gives`); empty for a passage read without them.
    unit_kinds: tuple[frozenset[str], ...] = ()
    # Each unit's token vectors (L2-normalized, float16) and token ids; empty when the model gives none.
    unit_tokens: tuple[np.ndarray, ...] = ()
    unit_token_ids: tuple[np.ndarray, ...] = ()
    # How this passage's cosines are put on the reader's scale (`CosineScale`): identity for the reader's own model.
    scale: CosineScale = field(default_factory=lambda: IDENTITY)

    def unit_scores(self, vector: np.ndarray, asked: frozenset[str], tokens: TokenQuery | None = None) -> np.ndarray:
        """Each unit's closeness to the question: its cosine to `vector`, averaged (`LATE_WEIGHT`) with its
        reading token by token when `tokens` is given and the units have token vectors; plus the bonus where the
        unit gives a kind of answer `asked` for."""
        scores = self.unit_vectors @ vector
        if tokens is not None and self.unit_tokens:
            late = LATE_SCALE * np.array([tokens.score(u) for u in self.unit_tokens]) + LATE_SHIFT
            scores = (1 - LATE_WEIGHT) * scores + LATE_WEIGHT * late
        scores = self.scale(scores)
        if asked and self.unit_kinds:
            scores = scores + ANSWER_KIND_BONUS * np.array([bool(asked & k) for k in self.unit_kinds])
        return np.asarray(scores)


@dataclass(frozen=True)
class TokenQuery:
    """A question (or a part of one) read token by token ("late interaction"): a sentence's score is, over the
    question's words, the weighted mean of each word's best cosine with the sentence's tokens. A word weighs its
    inverse document frequency among the sentences being read: "invoice" in a question about invoices, found in
    every candidate sentence, tells them apart by nothing; "receipts", "UTF-8" or "expire" does. Measured on the
    two demo deployment sets (English tickets, a required fact's sentence ranked first among the 753 sentences of
    the help centre): 72 of 160 facts against 58 for the sentence vectors' cosine."""

    vectors: np.ndarray
    weights: np.ndarray

    @classmethod
    def of(
        cls, rows: TokenRows, document_frequency: Counter[int], documents: int, *, shared_only: bool = False
    ) -> TokenQuery | None:
        """The question's tokens weighted by rarity among `documents` units; with `shared_only`, only the words
        some unit has count (None when there are none)."""
        if not len(rows.ids):
            return None
        idf = np.array(
            [math.log((documents + 1) / (document_frequency[int(i)] + 1)) for i in rows.ids], dtype=np.float32
        )
        weights = np.where(rows.words, idf, 0.0)
        if shared_only:
            shared = np.array([document_frequency[int(i)] > 0 for i in rows.ids], dtype=bool)
            weights = np.where(shared, weights, 0.0)
            # Words, not pieces: "Testphase" (test ##pha ##se) shares one word-start token with English.
            starts = ~rows.continues if rows.continues is not None else np.ones(len(rows.ids), dtype=bool)
            if int(((weights > 0) & starts).sum()) < MIN_SHARED_WORDS:
                return None
        if weights.sum() <= 0:
            weights = np.ones(len(rows.ids), dtype=np.float32)
        return cls(_normalized(rows.vectors), (weights / weights.sum()).astype(np.float32))

    def score(self, unit_tokens: np.ndarray) -> float:
        return float((self.vectors @ unit_tokens.T.astype(np.float32)).max(axis=1) @ self.weights)


def _normalized(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    out: np.ndarray = (vectors / np.clip(norms, 1e-12, None)).astype(np.float32)
    return out


@dataclass(frozen=True)
class Quote:
    """Sentences quoted from one passage."""

    item: RetrievedItem
    units: tuple[str, ...]


@dataclass(frozen=True)
class Candidate:
    """A passage the reader ranked for a question, with its best units: (index in the passage, text), in order."""

    item: RetrievedItem
    score: float
    units: tuple[tuple[int, str], ...]


@dataclass
class Evidence:
    """What answers one question: the chosen passage and the sentences quoted from it, with the reader's view."""

    question: Question
    item: RetrievedItem | None
    units: list[str] = field(default_factory=list)
    # The chosen passage's score (best unit + ticket weight, divided by 1 + ticket weight: a cosine-like scale).
    score: float = 0.0
    best_unit: float = 0.0
    # The best score among passages of other documents: a small lead means the reader was not sure where to look.
    runner_up: float = 0.0
    # Passages scored for this question, best first: (item id, score), for the trace.
    ranking: list[tuple[str, float]] = field(default_factory=list)
    # More quoted passages: a second passage as close as the first, and the sections of the chosen article that
    # answer a further part of the question (`Question.parts`).
    more: list[Quote] = field(default_factory=list)
    # Of a question asking several things, the weakest part's best unit score (`weakest_part`).
    part_min: float | None = None
    # The best passages for this question (the chosen one first), for a model to choose sentences from.
    candidates: list[Candidate] = field(default_factory=list)

    @property
    def quotes(self) -> list[Quote]:
        first = [Quote(self.item, tuple(self.units))] if self.item is not None and self.units else []
        return first + self.more

    @property
    def weakest_part(self) -> float:
        """How well the least well answered part of the question is answered: its best unit's score."""
        return self.best_unit if self.part_min is None else self.part_min

    @property
    def margin(self) -> float:
        return self.score - self.runner_up

    def to_json(self) -> dict[str, object]:
        return {
            "question": self.question.text,
            "passage": str(self.item.id) if self.item is not None else None,
            "title": self.item.title if self.item is not None else None,
            "units": self.units,
            "more": [{"passage": str(q.item.id), "title": q.item.title, "units": list(q.units)} for q in self.more],
            "weakest_part": round(self.weakest_part, 4),
            "score": round(self.score, 4),
            "best_unit": round(self.best_unit, 4),
            "runner_up": round(self.runner_up, 4),
            "ranking": [[i, round(s, 4)] for i, s in self.ranking[:5]],
            "candidates": [[str(c.item.id), round(c.score, 4), [n for n, _ in c.units]] for c in self.candidates],
        }


class Reader:
    """Scores passages against questions with the embedding model; passages' units are cached by text."""

    def __init__(self, embedder: Embedder, cache_size: int = CACHE_SIZE, scale: CosineScale = IDENTITY) -> None:
        self.embedder = embedder
        self.cache_size = cache_size
        # For a reader on another model than the one the reader's constants were chosen on (`crosslingual`).
        self.scale = scale
        self._cache: OrderedDict[str, ReadPassage] = OrderedDict()
        # Questions' token rows by text, the most recent kept.
        self._question_tokens: OrderedDict[str, TokenRows] = OrderedDict()
        self._lock = asyncio.Lock()

    async def passages(self, items: Sequence[RetrievedItem]) -> list[ReadPassage]:
        keys = [passage_key(item) for item in items]
        async with self._lock:
            missing = {k: item for k, item in zip(keys, items, strict=True) if k not in self._cache}
            if missing:
                await self._load(missing)
            for k in keys:
                self._cache.move_to_end(k)
            return [self._cache[k] for k in keys]

    async def warm(self, items: Sequence[RetrievedItem], stop: asyncio.Event | None = None) -> int:
        """Reads those of `items` it has not read yet into the cache's free room, `WARM_BATCH` at a time, until
        `stop` is set; returns how many it read. Never more than the room: a help centre larger than the cache
        would otherwise be read again, passage after passage, every time it is warmed, each pushing out another."""
        room = self.cache_size - len(self._cache)
        unread = [i for i in items if _passage_text(i).strip() and passage_key(i) not in self._cache][: max(0, room)]
        done = 0
        for start in range(0, len(unread), WARM_BATCH):
            if stop is not None and stop.is_set():
                break
            batch = unread[start : start + WARM_BATCH]
            await self.passages(batch)
            done += len(batch)
        return done

    async def _load(self, missing: dict[str, RetrievedItem]) -> None:
        self._cache.update(zip(missing, await self.read_passages(list(missing.values())), strict=True))
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    async def read_passages(self, items: Sequence[RetrievedItem]) -> list[ReadPassage]:
        """`items` read afresh: units, their vectors and token vectors, the passage's vector."""
        whole: list[str] = []
        unit_texts: list[str] = []
        read_as: list[tuple[str, ...]] = []
        for item in items:
            units = read_units(item)
            first, *each = reading_texts(item, units)
            whole.append(first)
            unit_texts.extend(each)
            read_as.append(units)
        vectors = await embed(self.embedder, whole)
        unit_vectors, tokens = await embed_with_tokens(self.embedder, unit_texts)
        out: list[ReadPassage] = []
        at = 0
        for n, units in enumerate(read_as):
            rows = tokens[at : at + len(units)] if tokens is not None else []
            out.append(
                ReadPassage(
                    units,
                    unit_vectors[at : at + len(units)],
                    vectors[n],
                    tuple(gives(u) for u in units),
                    tuple(_normalized(r.vectors).astype(np.float16) for r in rows),
                    tuple(r.ids for r in rows),
                    self.scale,
                )
            )
            at += len(units)
        return out

    async def encode_questions(self, texts: Sequence[str]) -> np.ndarray:
        """The vectors of a ticket's questions (and their parts); their token rows are kept for `token_queries`,
        from the same pass of the model where the embedder gives both at once."""
        vectors, rows = await embed_with_tokens(self.embedder, texts)
        if rows is not None:
            self._remember_questions(texts, rows)
        return vectors

    def _remember_questions(self, texts: Sequence[str], rows: Sequence[TokenRows]) -> None:
        self._question_tokens.update(zip(texts, rows, strict=True))
        while len(self._question_tokens) > QUESTION_CACHE_SIZE:
            self._question_tokens.popitem(last=False)

    async def read(
        self,
        questions: Sequence[Question],
        question_vectors: np.ndarray,
        ticket_vector: np.ndarray,
        items: Sequence[RetrievedItem],
        part_vectors: Sequence[np.ndarray | None] | None = None,
        sections: Sequence[RetrievedItem] = (),
    ) -> list[Evidence]:
        """The best passage for each question among `items`, with the units to quote from it. `part_vectors`, one
        entry per question, holds its parts' vectors when it asks several things (`Question.parts`); each part
        is looked for in the chosen article's passages among `items` and `sections` (more of the articles: their
        leads, or whole articles), and the chosen article's lead, when it answers too, is quoted before it."""
        items = [i for i in items if _passage_text(i).strip()]
        if not items:
            return [Evidence(q, None) for q in questions]
        known = {i.id for i in items}
        extra = [i for i in sections if i.id not in known and _passage_text(i).strip()]
        read = await self.passages([*items, *extra])
        part_vectors = part_vectors or [None] * len(questions)
        return choose_each(
            questions,
            question_vectors,
            ticket_vector,
            items,
            read[: len(items)],
            part_vectors,
            sections=list(zip(extra, read[len(items) :], strict=True)),
            # Words weigh by their rarity among the passages found for the ticket: the sections read besides them
            # (a lead, an article's other sections) do not re-weigh them.
            tokens=await self.token_queries(questions, part_vectors, read[: len(items)]),
        )

    async def token_queries(
        self, questions: Sequence[Question], part_vectors: Sequence[np.ndarray | None], read: Sequence[ReadPassage]
    ) -> list[QuestionTokens] | None:
        """Each question, and each part of a question asking several things, read token by token, its words
        weighted by their rarity among the units of `read`; None when the model gives no token vectors."""
        if not all(p.unit_tokens for p in read if p.units):
            return None
        parts = [list(q.parts) if v is not None else [] for q, v in zip(questions, part_vectors, strict=True)]
        texts = [q.query for q in questions] + [p for ps in parts for p in ps]
        # A ticket whose question asks several things is read twice (`agent.nodes`): its texts are encoded once.
        # Taken now: other tickets read while this one waits for the model, and may push them out of the cache.
        known = {t: self._question_tokens[t] for t in dict.fromkeys(texts) if t in self._question_tokens}
        missing = [t for t in dict.fromkeys(texts) if t not in known]
        encoded = await embed_tokens(self.embedder, missing) if missing else []
        if encoded is None:
            return None
        self._remember_questions(missing, encoded)
        known.update(zip(missing, encoded, strict=True))
        rows = [known[t] for t in texts]
        frequency: Counter[int] = Counter()
        documents = 0
        for passage in read:
            for ids in passage.unit_token_ids:
                frequency.update(set(ids.tolist()))
                documents += 1
        # A question in another language than the help centre's is read token by token on the words it shares
        # with the units (product names, menu labels, codes: "Token", "Settings", "2FA"): its own words are in
        # no English sentence, and their token vectors would only add noise.
        language = language_of(" ".join(p.units[0] for p in read if p.units))
        queries = [
            TokenQuery.of(r, frequency, documents, shared_only=language_of(t) != language)
            for r, t in zip(rows, texts, strict=True)
        ]
        out: list[QuestionTokens] = []
        at = len(questions)
        for n, ps in enumerate(parts):
            out.append(QuestionTokens(queries[n], tuple(queries[at : at + len(ps)])))
            at += len(ps)
        return out


@dataclass(frozen=True)
class QuestionTokens:
    """A question read token by token, and its parts when it asks several things (`Question.parts`)."""

    question: TokenQuery | None
    parts: tuple[TokenQuery | None, ...] = ()


def choose_each(
    questions: Sequence[Question],
    question_vectors: np.ndarray,
    ticket_vector: np.ndarray,
    items: Sequence[RetrievedItem],
    read: Sequence[ReadPassage],
    part_vectors: Sequence[np.ndarray | None],
    sections: Sequence[tuple[RetrievedItem, ReadPassage]] = (),
    tokens: Sequence[QuestionTokens] | None = None,
) -> list[Evidence]:
    """Pure: `choose` for each question in turn. A later question whose answer would quote word for word what an
    earlier one's quotes asks something else about the same article ("Can I correct a sent invoice? … how do I
    show it as paid?"): it takes the article's next-best section instead, when that section answers at all
    (`ANSWER_FLOOR`); otherwise it keeps the quote."""
    out: list[Evidence] = []
    for n, question in enumerate(questions):
        read_as = tokens[n] if tokens is not None else None
        ev = choose(
            question,
            question_vectors[n],
            ticket_vector,
            items,
            read,
            part_vectors[n],
            sections=sections,
            tokens=read_as,
        )
        chosen = ev.item
        if chosen is not None and any(
            o.item is not None and o.item.id == chosen.id and o.units == ev.units for o in out
        ):
            others = [k for k, i in enumerate(items) if i.id != chosen.id and document_of(i) == document_of(chosen)]
            if others:
                instead = choose(
                    question,
                    question_vectors[n],
                    ticket_vector,
                    [items[k] for k in others],
                    [read[k] for k in others],
                    part_vectors[n],
                    sections=sections,
                    tokens=read_as,
                )
                ev = instead if instead.score >= ANSWER_FLOOR else ev
        out.append(ev)
    return out


def choose(
    question: Question,
    question_vector: np.ndarray,
    ticket_vector: np.ndarray,
    items: Sequence[RetrievedItem],
    read: Sequence[ReadPassage],
    part_vectors: np.ndarray | None = None,
    sections: Sequence[tuple[RetrievedItem, ReadPassage]] = (),
    tokens: QuestionTokens | None = None,
) -> Evidence:
    """Pure: the passage whose best unit (plus its closeness to the ticket) answers `question` best, and what to
    quote: its best units, a second passage as close, and for each further part of the question (`part_vectors`)
    the section of the same article that answers it."""
    scored: list[tuple[float, float, np.ndarray, int]] = []
    asked = asked_for(question.text)
    for n, passage in enumerate(read):
        unit_scores = passage.unit_scores(question_vector, asked, tokens.question if tokens else None)
        best_unit = float(unit_scores.max()) if len(unit_scores) else 0.0
        to_ticket = float(passage.scale(passage.vector @ ticket_vector))
        score = (best_unit + TICKET_WEIGHT * to_ticket) / (1 + TICKET_WEIGHT)
        scored.append((score, best_unit, unit_scores, n))
    scored.sort(key=lambda s: -s[0])
    score, best_unit, unit_scores, n = scored[0]
    item, passage = items[n], read[n]
    document = document_of(item)
    runner_up = next((s for s, _, _, m in scored[1:] if document_of(items[m]) != document), 0.0)
    second = next(((s, u, m) for s, _, u, m in scored[1:2] if s >= score - SECOND_MARGIN), None)
    quoted: dict[int, list[int]] = {n: quoted_indices(passage, unit_scores)}
    if second is not None:
        quoted[second[2]] = quoted_indices(read[second[2]], second[1])
    part_min = None
    # The chosen article's other sections join the passages its lead and the question's parts are looked for in.
    article = [(i, r) for i, r in sections if document_of(i) == document]
    more_items = [*items, *(i for i, _ in article)]
    read = [*read, *(r for _, r in article)]
    lead = next((m for m, i in enumerate(more_items) if document_of(i) == document and is_lead(i)), None)
    if lead is not None and lead not in quoted and read[lead].units:
        lead_scores = read[lead].unit_scores(question_vector, asked, tokens.question if tokens else None)
        if float(lead_scores.max()) >= best_unit - LEAD_MARGIN:
            indices = quoted_indices(read[lead], lead_scores)
            # A lead that only says what the article covers ("This article explains …") adds nothing beside a
            # section.
            if not all(SIGNPOST.match(read[lead].units[i]) for i in indices):
                quoted[lead] = indices
    if part_vectors is not None and len(part_vectors) > 1:
        part_tokens = tokens.parts if tokens is not None else ()
        part_min = _quote_parts(
            [
                (text, vector, part_tokens[k] if k < len(part_tokens) else None)
                for k, (text, vector) in enumerate(zip(question.parts, part_vectors, strict=True))
            ],
            [m for m in range(len(more_items)) if document_of(more_items[m]) == document],
            read,
            quoted,
        )
    # A model choosing the sentences is offered what the offline reply quotes first (the chosen passage, a second
    # one as close, the sections answering further parts), then the other close passages.
    passage_score = {m: s for s, _, _, m in scored}
    candidates = [
        Candidate(more_items[m], passage_score.get(m, 0.0), tuple((i, read[m].units[i]) for i in indices))
        for m, indices in quoted.items()
    ] + [
        Candidate(items[m], s, tuple((i, read[m].units[i]) for i in quoted_indices(read[m], u)))
        for s, _, u, m in scored[:CANDIDATE_PASSAGES]
        if s >= score - CANDIDATE_MARGIN and m not in quoted
    ]
    return Evidence(
        question=question,
        item=item,
        units=[passage.units[i] for i in quoted.pop(n)],
        score=score,
        best_unit=best_unit,
        runner_up=runner_up,
        ranking=[(str(items[m].id), s) for s, _, _, m in scored],
        more=[Quote(more_items[m], tuple(read[m].units[i] for i in indices)) for m, indices in quoted.items()],
        candidates=candidates,
        part_min=part_min,
    )


def _quote_parts(
    parts: Sequence[tuple[str, np.ndarray, TokenQuery | None]],
    article: Sequence[int],
    read: Sequence[ReadPassage],
    quoted: dict[int, list[int]],
) -> float:
    """Adds to `quoted` (passage index -> unit indices) each part's best unit among the article's passages, or
    the section around it when its passage is not quoted yet; returns the weakest part's best score."""
    weakest = 1.0
    for text, vector, tokens in parts:
        asked = asked_for(text)
        scores = {m: read[m].unit_scores(vector, asked, tokens) for m in article if len(read[m].units)}
        m, best = max(((m, float(u.max())) for m, u in scores.items()), key=lambda x: x[1], default=(-1, 0.0))
        weakest = min(weakest, best)
        if m < 0 or best < PART_FLOOR:
            continue
        i = int(scores[m].argmax())
        if m in quoted:
            if i not in quoted[m]:
                quoted[m] = sorted([*quoted[m], i])
        else:
            quoted[m] = quoted_indices(read[m], scores[m])
    return weakest


def quoted_indices(passage: ReadPassage, unit_scores: np.ndarray) -> list[int]:
    """Which units of a passage to quote, in passage order: a short passage whole; of a longer one, the units
    closest to the question. A sentence about the article itself ("This article explains …") is left out unless
    it is all there is."""
    if len(passage.units) <= WHOLE_PASSAGE_UNITS:
        kept = list(range(len(passage.units)))
    else:
        best = float(unit_scores.max())
        ranked = sorted(range(len(passage.units)), key=lambda i: -unit_scores[i])
        kept = sorted(i for i in ranked[:MAX_UNITS] if unit_scores[i] >= best - UNIT_MARGIN)
    return [i for i in kept if not SIGNPOST.match(passage.units[i])] or kept


def read_units(item: RetrievedItem) -> tuple[str, ...]:
    """The units a passage is read as (`passage_units`; the whole passage when it has none)."""
    return tuple(passage_units(_passage_text(item))) or (plain(_passage_text(item)).strip(),)


def reading_texts(item: RetrievedItem, units: Sequence[str]) -> list[str]:
    """What is embedded to read a passage: its title and text, then each unit with the title."""
    return [f"{item.title}\n\n{plain(_passage_text(item))}", *(f"{item.title}: {u}" for u in units)]


def _passage_text(item: RetrievedItem) -> str:
    return item.resolution if item.kind == "resolution" and item.resolution else item.text


def is_lead(item: RetrievedItem) -> bool:
    """Whether a passage is its article's opening paragraph, before the first heading: the article's title alone
    heads it."""
    return item.metadata.get("seq") == 0 and item.title == item.metadata.get("document_title")


def document_of(item: RetrievedItem) -> str:
    """The article a passage belongs to (the passage itself when it has none)."""
    return str(item.metadata.get("document_id") or item.id)


def passage_key(item: RetrievedItem) -> str:
    """A passage's identity and content: what its cached reading is kept under."""
    digest = hashlib.blake2b(f"{item.title}\x00{_passage_text(item)}".encode(), digest_size=12).hexdigest()
    return f"{item.id}:{digest}"
