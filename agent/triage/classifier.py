"""The routing engine's learned side: category, issue (intent) and priority models fitted on the labelled past
resolutions, cached per knowledge version and refitted in the background when the history changes. The knowledge
base's passages are labelled category examples too (their article's category), so a deployment with a help centre
and a short history routes from day one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from agent.scoring.risk import URGENT, detect_risks
from agent.triage.keywords import CATEGORIES, PRIORITIES, category_keywords, priority_keywords
from agent.triage.stacking import StackedClassifier, TextFeatures
from knowledge.retrieval import as_array

log = logging.getLogger(__name__)

# Fitting cost grows with the history; the most recent rows carry the current product and vocabulary.
MAX_HISTORY_ROWS = 20_000
# An issue model needs issue labels on most of the history, or it would ground replies on a biased subset.
MIN_INTENT_COVERAGE = 0.5
MIN_EXAMPLES_PER_ISSUE = 5
MIN_PRIORITY_LABELS = 30
NEIGHBOURS_KEPT = 10
# A KB passage counts as 1 / (1 + history / KB_HALF_WEIGHT_HISTORY) of a past ticket: nearly a full example
# while the history is a few dozen tickets, a tenth of one at a few thousand, when the tickets themselves say
# how customers word things. Passages are written by the product team, not by customers.
KB_HALF_WEIGHT_HISTORY = 500
MAX_KB_EXAMPLES = 5_000


def kb_example_weight(history_size: int) -> float:
    return 1.0 / (1.0 + history_size / KB_HALF_WEIGHT_HISTORY)


def kb_example_weights(categories: Sequence[str], history_size: int) -> np.ndarray:
    """Each KB passage's weight: `kb_example_weight` on average, with every category's passages together
    weighing the same. How much a help centre writes per category says nothing about what customers ask."""
    if not categories:
        return np.zeros(0)
    counts = Counter(categories)
    share = len(categories) / len(counts)
    return np.array([kb_example_weight(history_size) * share / counts[c] for c in categories])


def category_prior(texts: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """Hand-written keyword evidence per category: log(1 + number of distinct matched terms)."""
    out = np.zeros((len(texts), len(classes)))
    for i, text in enumerate(texts):
        found = category_keywords(text)
        for j, name in enumerate(classes):
            out[i, j] = np.log1p(len(found.get(name, ())))
    return out


def priority_prior(texts: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """Rule evidence per priority level: matched urgency terms, and incident risks for `urgent`."""
    out = np.zeros((len(texts), len(classes)))
    for i, text in enumerate(texts):
        found = priority_keywords(text)
        incident = any(r.kind in URGENT for r in detect_risks(text))
        for j, name in enumerate(classes):
            hits = len(found.get(name, ()))
            if name == "urgent" and incident:
                hits += 2
            if name == "high" and incident:
                hits += 1
            out[i, j] = np.log1p(hits)
    return out


@dataclass(frozen=True)
class Neighbour:
    id: str
    similarity: float
    category: str | None
    intent: str | None
    priority: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "category": self.category,
            "intent": self.intent,
            "similarity": round(self.similarity, 4),
        }


@dataclass
class RoutingPrediction:
    """What the learned models say about one ticket, before account context and rules."""

    category_probs: dict[str, float]
    category_views: dict[str, dict[str, float]]
    intent_probs: dict[str, float]
    priority_probs: dict[str, float]
    neighbours: list[Neighbour]
    model: dict[str, Any]

    @property
    def intent(self) -> str | None:
        return max(self.intent_probs, key=self.intent_probs.__getitem__) if self.intent_probs else None


def _no_vectors() -> np.ndarray:
    """No stored vectors: no rows, and no columns either, since the dimension is the model's (any, since the
    store follows the configured one) and there is no row to tell it."""
    return np.zeros((0, 0), dtype=np.float32)


@dataclass
class KbExamples:
    """Knowledge-base passages (title and text) labelled with their article's category."""

    texts: list[str]
    embeddings: np.ndarray
    categories: list[str]

    @classmethod
    def from_rows(cls, rows: Sequence[Any]) -> KbExamples:
        if not rows:
            return cls([], _no_vectors(), [])
        return cls(
            texts=[f"{r['title']}\n\n{r['content']}".strip() for r in rows],
            embeddings=np.stack([as_array(r["embedding"]) for r in rows]),
            categories=[r["category"] for r in rows],
        )

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class History:
    """Labelled past resolutions as the models see them (most recent first), and the KB's category examples."""

    ids: list[str]
    texts: list[str]
    embeddings: np.ndarray
    categories: list[str | None]
    intents: list[str | None]
    priorities: list[str | None]
    ticket_ids: list[str | None]
    kb: KbExamples = field(default_factory=lambda: KbExamples.from_rows([]))

    @classmethod
    def from_rows(cls, rows: Sequence[Any], kb_rows: Sequence[Any] = ()) -> History:
        kb = KbExamples.from_rows(kb_rows)
        if not rows:
            return cls([], [], _no_vectors(), [], [], [], [], kb)
        return cls(
            ids=[str(r["id"]) for r in rows],
            texts=[r["ticket_text"] for r in rows],
            embeddings=np.stack([as_array(r["embedding"]) for r in rows]),
            categories=[r["category"] for r in rows],
            intents=[r["intent"] for r in rows],
            priorities=[r["priority"] for r in rows],
            ticket_ids=[str(r["ticket_id"]) if r["ticket_id"] else None for r in rows],
            kb=kb,
        )

    def __len__(self) -> int:
        """Past resolutions only: the KB passages are examples, not tickets."""
        return len(self.ids)

    @property
    def example_texts(self) -> list[str]:
        """Past tickets, then KB passages: the rows every head indexes into."""
        return self.texts + self.kb.texts

    @property
    def example_embeddings(self) -> np.ndarray:
        if not len(self.kb):
            return self.embeddings
        return np.vstack([self.embeddings, self.kb.embeddings]) if len(self.embeddings) else self.kb.embeddings


@dataclass
class _Head:
    """One stacked classifier and the history rows it was trained on."""

    classifier: StackedClassifier
    rows: np.ndarray


@dataclass
class RoutingModels:
    """Everything fitted from one snapshot of the history, for one knowledge version."""

    version: int
    history: History
    category: _Head | None
    intent: _Head | None
    priority: _Head | None
    features: TextFeatures | None = None
    fitted_at: float = field(default_factory=time.time)
    fit_seconds: float = 0.0
    # Past tickets then KB passages (`History.example_embeddings`): what a query's similarities are taken to.
    example_embeddings: np.ndarray = field(default_factory=lambda: _no_vectors())

    @classmethod
    def fit(cls, history: History, version: int) -> RoutingModels:
        started = time.perf_counter()
        features: TextFeatures | None = None
        x_word: Any = None
        x_char: Any = None
        texts = history.example_texts
        embeddings = history.example_embeddings
        if texts:
            features, x_word, x_char = TextFeatures.fit(texts)
        weights = np.concatenate([np.ones(len(history)), kb_example_weights(history.kb.categories, len(history))])

        def head(labels: Sequence[str | None], allowed: Sequence[str] | None, prior: Any) -> _Head | None:
            rows = np.array(
                [i for i, v in enumerate(labels) if v and (allowed is None or v in allowed)], dtype=np.int64
            )
            if len(rows) == 0:
                return None
            classifier = StackedClassifier.fit(
                [texts[i] for i in rows],
                embeddings[rows],
                [str(labels[i]) for i in rows],
                prior=prior,
                features=features,
                matrices=(x_word[rows], x_char[rows]),
                sample_weight=weights[rows] if len(history.kb) else None,
            )
            return _Head(classifier, rows) if classifier is not None else None

        # Only the category head learns from the KB: a passage has no issue or priority of its own.
        category = head([*history.categories, *history.kb.categories], CATEGORIES, category_prior)
        intent = None
        labelled = [v for v in history.intents if v]
        per_issue = sorted(Counter(labelled).values())
        # An issue model needs labels on most of the history and several examples of a typical issue: with
        # two or three per issue its probabilities are too flat to mean anything, and similarity does better.
        if (
            history.ids
            and len(labelled) / len(history) >= MIN_INTENT_COVERAGE
            and per_issue[len(per_issue) // 2] >= MIN_EXAMPLES_PER_ISSUE
        ):
            intent = head(history.intents, None, None)
        priority = None
        if sum(1 for v in history.priorities if v) >= MIN_PRIORITY_LABELS:
            priority = head(history.priorities, PRIORITIES, priority_prior)
        models = cls(
            version=version,
            history=history,
            category=category,
            intent=intent,
            priority=priority,
            features=features,
            example_embeddings=embeddings,
        )
        models.fit_seconds = time.perf_counter() - started
        log.info(
            "routing models fitted on %d past resolutions and %d KB passages (knowledge v%d) in %.1fs: "
            "category=%s intent=%s priority=%s",
            len(history),
            len(history.kb),
            version,
            models.fit_seconds,
            category is not None,
            intent is not None,
            priority is not None,
        )
        return models

    @property
    def has_intents(self) -> bool:
        return self.intent is not None

    def describe(self) -> dict[str, Any]:
        return {
            "knowledge_version": self.version,
            "history": len(self.history),
            "kb_examples": len(self.history.kb),
            "kb_example_weight": round(kb_example_weight(len(self.history)), 4),  # the mean; balanced by category
            "category": self.category.classifier.describe() if self.category else None,
            "intent": self.intent.classifier.describe() if self.intent else None,
            "priority": self.priority.classifier.describe() if self.priority else None,
        }

    def predict(self, text: str, embedding: np.ndarray, *, exclude_ticket_id: str | None = None) -> RoutingPrediction:
        query = np.asarray(embedding, dtype=np.float32).reshape(1, -1)
        examples = self.example_embeddings
        sims = (query @ examples.T) if len(examples) else np.zeros((1, 0), dtype=np.float32)
        if exclude_ticket_id is not None and len(self.history):
            # A re-run of a ticket that already became history must not find itself.
            mask = np.array([t == exclude_ticket_id for t in self.history.ticket_ids] + [False] * len(self.history.kb))
            sims = np.where(mask[None, :], -1.0, sims)

        # One TF-IDF transform serves every head.
        matrices = self.features.transform([text]) if self.features is not None else None

        def run(head: _Head | None) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
            if head is None:
                return {}, {}
            probs, views = head.classifier.predict([text], query, sims[:, head.rows], matrices)
            names = [str(c) for c in head.classifier.classes]
            return (
                {n: float(p) for n, p in zip(names, probs[0], strict=True)},
                {m: {n: float(p) for n, p in zip(names, v[0], strict=True)} for m, v in views.items()},
            )

        category_probs, category_views = run(self.category)
        intent_probs, _ = run(self.intent)
        priority_probs, _ = run(self.priority)
        # Neighbours are past tickets (the first columns), never KB passages.
        neighbours: list[Neighbour] = []
        if len(self.history):
            ticket_sims = sims[0][: len(self.history)]
            k = min(NEIGHBOURS_KEPT, len(self.history))
            top = np.argpartition(-ticket_sims, k - 1)[:k]
            top = top[np.argsort(-ticket_sims[top])]
            neighbours = [
                Neighbour(
                    id=self.history.ids[i],
                    similarity=float(ticket_sims[i]),
                    category=self.history.categories[i],
                    intent=self.history.intents[i],
                    priority=self.history.priorities[i],
                )
                for i in top
                if ticket_sims[i] > -1.0
            ]
        return RoutingPrediction(
            category_probs=category_probs,
            category_views=category_views,
            intent_probs=dict(sorted(intent_probs.items(), key=lambda kv: -kv[1])[:5]),
            priority_probs=priority_probs,
            neighbours=neighbours,
            model={
                "knowledge_version": self.version,
                "history": len(self.history),
                "kb_examples": len(self.history.kb),
                "category_weights": self.category.classifier.describe()["weights"] if self.category else None,
            },
        )


# Ties (a history loaded in one transaction shares its created_at) break on content, not on random ids: the same
# rows give the same folds, so the same fit.
_HISTORY_SQL = """
    SELECT id, ticket_text, category, priority, intent, ticket_id, embedding
    FROM past_resolutions ORDER BY created_at DESC, content_hash LIMIT $1
"""
_KB_EXAMPLES_SQL = """
    SELECT c.title, c.content, c.embedding, d.category
    FROM kb_chunks c JOIN kb_documents d ON d.id = c.document_id
    WHERE d.category IS NOT NULL
    ORDER BY d.updated_at DESC, d.source, c.seq LIMIT $1
"""
_FINGERPRINT_SQL = """
    SELECT (SELECT count(*) FROM past_resolutions), (SELECT max(created_at) FROM past_resolutions),
           (SELECT count(*) FROM kb_documents WHERE category IS NOT NULL),
           (SELECT max(updated_at) FROM kb_documents WHERE category IS NOT NULL),
           (SELECT count(*) FROM kb_chunks),
           -- A re-embed (knowledge.reembed) changes every vector and nothing else counted here.
           (SELECT changed_at FROM embedding_identity)
"""


class RoutingModelCache:
    """The fitted models of the current knowledge version, shared by every ticket a process handles.

    The first call fits synchronously; later version changes refit in a background thread while tickets keep
    using the previous models (at most one fit at a time, at most one per `min_refit_interval_s`), unless
    `block=True` asks to wait for the current version, as evaluation and tests do.
    """

    def __init__(self, *, max_rows: int = MAX_HISTORY_ROWS, min_refit_interval_s: float = 30.0) -> None:
        self.max_rows = max_rows
        self.min_refit_interval_s = min_refit_interval_s
        self._models: RoutingModels | None = None
        self._fingerprint: tuple[Any, ...] | None = None
        self._lock = asyncio.Lock()
        self._refit: asyncio.Task[None] | None = None
        self._last_fit = 0.0

    @property
    def current(self) -> RoutingModels | None:
        return self._models

    async def get(self, pool: Any, *, block: bool = False, version: int | None = None) -> RoutingModels:
        """The models for knowledge `version` (read from the database when not given)."""
        if version is None:
            async with pool.acquire() as conn:
                version = int(await conn.fetchval("SELECT version FROM knowledge_version") or 0)
        models = self._models
        if models is not None and models.version == version:
            return models
        if models is None or block:
            async with self._lock:
                if self._models is None or self._models.version != version:
                    async with pool.acquire() as conn:
                        await self._fit(conn, version)
            assert self._models is not None
            return self._models
        due = time.monotonic() - self._last_fit >= self.min_refit_interval_s
        if due and (self._refit is None or self._refit.done()):
            self._refit = asyncio.create_task(self._background_fit(pool, version))
        return models

    async def _background_fit(self, pool: Any, version: int) -> None:
        try:
            async with self._lock, pool.acquire() as conn:
                await self._fit(conn, version)
        except Exception:
            log.exception("refitting the routing models failed; keeping the previous ones")

    async def _fit(self, conn: Any, version: int) -> None:
        fingerprint = tuple(await conn.fetchrow(_FINGERPRINT_SQL))
        if self._models is not None and fingerprint == self._fingerprint:
            # Neither the history nor the KB's labelled passages changed (e.g. an article without a category).
            self._models.version = version
            return
        rows = await conn.fetch(_HISTORY_SQL, self.max_rows)
        kb_rows = await conn.fetch(_KB_EXAMPLES_SQL, MAX_KB_EXAMPLES)
        history = History.from_rows(rows, kb_rows)
        self._models = await asyncio.to_thread(_fit_on_every_core, history, version)
        self._fingerprint = fingerprint
        self._last_fit = time.monotonic()


def _fit_on_every_core(history: History, version: int) -> RoutingModels:
    """A fit is rare and big: BLAS may use every core for it, though the worker keeps it to one thread for the
    per-ticket math (`agent.runner.TicketProcessor`)."""
    with threadpool_limits(os.cpu_count() or 1, user_api="blas"):
        return RoutingModels.fit(history, version)
