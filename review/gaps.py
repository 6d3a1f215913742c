"""Content gaps: the tickets the agent could not answer for lack of evidence (and replies reviewers rejected as
incomplete), grouped into topics by their embeddings; a category's most frequent topics (the onboarding setup
blockers) the same way.

A ticket is a gap while its latest completed attempt escalated for lack of evidence: a retryable escalation (no
demand, injection, incident or guard failure held it back; what is left is the evidence) — its score step found
nothing to ground a reply in, its reader left a question unanswered (knowledge coverage below 1, questions handed
over to a person), or the passages it found matched too weakly for a confidence at the review threshold. When the
knowledge base changes such tickets are drafted again (`agent.runner.requeue_on_knowledge_change`): one the new
article answers stops being a gap, so a topic shrinks as the knowledge base covers it.

The grouping is pure (`group_topics` over `GapTicket`s): average-linkage agglomerative clustering on cosine
distance, cut at `DISTANCE_THRESHOLD`; a topic's label is its subjects' most distinctive words. The vectors are the
attempts' stored query embeddings, or the ticket text encoded when an attempt has none (`TicketVectors`).
"""

from __future__ import annotations

import math
import re
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from uuid import UUID

import numpy as np
from sklearn.cluster import AgglomerativeClustering
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from agent.state import handed_over_questions
from core.db import Connection
from knowledge.embedder import Embedder, embed

# Average-linkage cosine distance at which two groups stop merging. MiniLM puts paraphrases of one question at
# 0.15-0.55 of each other and different questions of one product mostly at 0.6-1.0. On the demo set's 23
# not-covered tickets (23 different questions) 0.5 gives 21 topics (two pairs of neighbouring questions merged),
# 0.4 gives 23, 0.55 19: 0.5 keeps most paraphrases together without merging much else.
DISTANCE_THRESHOLD = 0.5
DEFAULT_WEEKS = 6
MAX_WEEKS = 52
EXAMPLES_PER_TOPIC = 5
LABEL_WORDS = 3
# Words that say nothing about a support topic, on top of the English stopwords.
_FILLER = frozenset({"can", "help", "hello", "question", "issue", "problem", "need", "want", "please", "thanks"})
_WORD = re.compile(r"[^\W\d_]{3,}")
# The text of a ticket the embedder sees when its attempt stored no vector: the same shape the agent encodes.
TEXT_CHARS = 2000


@dataclass(frozen=True, slots=True)
class GapTicket:
    ticket_id: UUID
    subject: str
    created_at: datetime
    vector: np.ndarray
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Topic:
    label: str
    count: int
    trend: list[tuple[str, int]]  # (ISO week "2026-W49", tickets created that week), oldest first
    examples: list[GapTicket]  # newest first


def cluster_labels(vectors: np.ndarray, *, distance_threshold: float = DISTANCE_THRESHOLD) -> list[int]:
    """One cluster number per row of `vectors`: average linkage on cosine distance, cut at the threshold."""
    n = len(vectors)
    if n == 0:
        return []
    if n == 1:
        return [0]
    model = AgglomerativeClustering(
        n_clusters=None, distance_threshold=distance_threshold, metric="cosine", linkage="average"
    )
    return [int(label) for label in model.fit_predict(np.asarray(vectors, dtype=np.float64))]


def words_of(text: str) -> list[str]:
    return [w for w in (m.lower() for m in _WORD.findall(text)) if w not in ENGLISH_STOP_WORDS and w not in _FILLER]


def topic_labels(subjects_by_topic: Sequence[Sequence[str]], *, words: int = LABEL_WORDS) -> list[str]:
    """Each topic's most frequent subject words, weighted by how few other topics use them (tf-idf over topics);
    ties go to the word seen first. A topic whose subjects have no word left is labelled by its first subject."""
    counts = [Counter(w for s in subjects for w in words_of(s)) for subjects in subjects_by_topic]
    df = Counter(w for c in counts for w in c)
    n = len(counts)
    labels = []
    for subjects, c in zip(subjects_by_topic, counts, strict=True):
        order = {w: i for i, w in enumerate(dict.fromkeys(w for s in subjects for w in words_of(s)))}
        ranked = sorted(c, key=lambda w: (-c[w] * math.log(1 + n / df[w]), order[w]))
        labels.append(" · ".join(ranked[:words]) if ranked else (subjects[0] if subjects else "")[:80])
    return labels


def iso_week(day: date) -> str:
    year, week, _ = day.isocalendar()
    return f"{year}-W{week:02d}"


def window_start(now: datetime, weeks: int) -> datetime:
    """Monday 00:00 UTC of the oldest of the `weeks` ISO weeks ending with the current one."""
    today = now.astimezone(UTC).date()
    monday = today - timedelta(days=today.weekday()) - timedelta(weeks=weeks - 1)
    return datetime(monday.year, monday.month, monday.day, tzinfo=UTC)


def weekly_trend(created: Sequence[datetime], *, now: datetime, weeks: int) -> list[tuple[str, int]]:
    """Tickets per ISO week over the last `weeks` weeks (the current one included), oldest first, zeros kept."""
    start = window_start(now, weeks).date()
    buckets = {iso_week(start + timedelta(weeks=i)): 0 for i in range(weeks)}
    for at in created:
        week = iso_week(at.astimezone(UTC).date())
        if week in buckets:
            buckets[week] += 1
    return list(buckets.items())


def group_topics(
    tickets: Sequence[GapTicket],
    *,
    now: datetime,
    weeks: int = DEFAULT_WEEKS,
    distance_threshold: float = DISTANCE_THRESHOLD,
    examples: int = EXAMPLES_PER_TOPIC,
) -> list[Topic]:
    """The tickets as topics, the largest first (ties: the most recent ticket first)."""
    if not tickets:
        return []
    labels = cluster_labels(np.stack([t.vector for t in tickets]), distance_threshold=distance_threshold)
    members: dict[int, list[GapTicket]] = {}
    for ticket, label in zip(tickets, labels, strict=True):
        members.setdefault(label, []).append(ticket)
    groups = [sorted(group, key=lambda t: (t.created_at, str(t.ticket_id)), reverse=True) for group in members.values()]
    groups.sort(key=lambda g: (-len(g), -g[0].created_at.timestamp(), str(g[0].ticket_id)))
    names = topic_labels([[t.subject for t in g] for g in groups])
    return [
        Topic(
            label=name,
            count=len(group),
            trend=weekly_trend([t.created_at for t in group], now=now, weeks=weeks),
            examples=group[:examples],
        )
        for name, group in zip(names, groups, strict=True)
    ]


def topic_as_dict(topic: Topic) -> dict[str, Any]:
    return {
        "label": topic.label,
        "count": topic.count,
        "trend": [{"week": week, "count": count} for week, count in topic.trend],
        "examples": [
            {"ticket_id": t.ticket_id, "subject": t.subject, "created_at": t.created_at, "reason": t.reason}
            for t in topic.examples
        ],
    }


# --- reading the candidates ---------------------------------------------------------------------------------

# The latest completed attempt of each ticket created in the window, with its score and draft steps' outputs and
# whether a reviewer rejected it as incomplete.
_LATEST_SQL = """
WITH latest AS (
    SELECT DISTINCT ON (a.ticket_id) a.id, a.ticket_id, a.decision, a.escalation_retryable, a.query_embedding
    FROM resolution_attempts a
    JOIN tickets t ON t.id = a.ticket_id
    WHERE a.state = 'completed' AND t.created_at >= $1
    ORDER BY a.ticket_id, a.attempt_no DESC
)
SELECT t.id AS ticket_id, t.subject, t.body, t.created_at, t.category, l.decision, l.escalation_retryable,
       l.query_embedding::real[] AS query_embedding,
       COALESCE(s.output, '{}'::jsonb) AS scoring,
       COALESCE(d.output, '{}'::jsonb) AS drafted,
       EXISTS (SELECT 1 FROM reviews r
               WHERE r.attempt_id = l.id AND r.action = 'reject' AND r.reason = 'incomplete') AS rejected_incomplete
FROM tickets t
LEFT JOIN latest l ON l.ticket_id = t.id
LEFT JOIN LATERAL (
    SELECT output FROM attempt_steps WHERE attempt_id = l.id AND node = 'score' ORDER BY seq DESC LIMIT 1
) s ON true
LEFT JOIN LATERAL (
    SELECT output FROM attempt_steps WHERE attempt_id = l.id AND node = 'draft' ORDER BY seq DESC LIMIT 1
) d ON true
WHERE t.created_at >= $1 AND ($2::text IS NULL OR t.category = $2::text)
ORDER BY t.created_at DESC, t.id DESC
LIMIT $3
"""
# The most tickets one report clusters (newest first): average linkage is quadratic in memory.
MAX_TICKETS = 2000
NOTHING_TO_GROUND = "nothing to ground a reply in"


def gap_reason(row: dict[str, Any]) -> str | None:
    """Why the ticket's latest attempt is a content gap, or None when it is not one."""
    if row.get("rejected_incomplete"):
        return "a reviewer rejected the reply as incomplete"
    if row.get("decision") != "escalate" or row.get("escalation_retryable") is not True:
        return None
    scoring: dict[str, Any] = row.get("scoring") or {}
    drafted: dict[str, Any] = row.get("drafted") or {}
    if any(str(r).startswith(NOTHING_TO_GROUND) for r in scoring.get("gate_reasons") or []):
        return NOTHING_TO_GROUND
    handed_over = handed_over_questions(drafted)
    if handed_over:
        return f"{len(handed_over)} question(s) handed over: no passage answers them"
    signals = scoring.get("signals") or {}
    coverage = signals.get("coverage")
    if scoring.get("model") == "knowledge" and isinstance(coverage, int | float) and coverage < 1:
        return f"knowledge coverage {coverage:.2f}: a question has no answering passage"
    # Retryable and below the review threshold: the passages found were too weak a match to answer with.
    confidence = scoring.get("confidence")
    weak = f"weak evidence: confidence {confidence:.2f}" if isinstance(confidence, int | float) else "weak evidence"
    reader = signals.get("reader_min")
    return f"{weak}, weakest answer match {reader:.2f}" if isinstance(reader, int | float) else weak


class TicketVectors:
    """Ticket texts encoded for tickets whose attempt stored no vector, remembered (up to `size`) so a report
    asked for again does not encode them again."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._memo: OrderedDict[tuple[UUID, str], np.ndarray] = OrderedDict()

    async def vectors(self, embedder: Embedder, keyed_texts: Sequence[tuple[UUID, str]]) -> list[np.ndarray]:
        missing = [k for k in dict.fromkeys(keyed_texts) if k not in self._memo]
        if missing:
            for key, vector in zip(missing, await embed(embedder, [text for _, text in missing]), strict=True):
                self._memo[key] = vector
                if len(self._memo) > self.size:
                    self._memo.popitem(last=False)
        out = []
        for key in keyed_texts:
            self._memo.move_to_end(key)
            out.append(self._memo[key])
        return out


def ticket_text(subject: str, body: str) -> str:
    return f"{subject}\n{body}"[:TEXT_CHARS]


# Is there a ticket in the window with no completed attempt that stored a query vector?
_NEEDS_ENCODING_SQL = """
SELECT EXISTS (
    SELECT 1 FROM tickets t
    WHERE t.created_at >= $1 AND ($2::text IS NULL OR t.category = $2::text)
      AND NOT EXISTS (SELECT 1 FROM resolution_attempts a
                      WHERE a.ticket_id = t.id AND a.state = 'completed' AND a.query_embedding IS NOT NULL)
)
"""


async def needs_encoding(conn: Connection, *, since: datetime, category: str | None) -> bool:
    """Whether a report over this window may have to encode ticket texts (so the model must be loaded)."""
    return bool(await conn.fetchval(_NEEDS_ENCODING_SQL, since, category))


async def load_topic_tickets(
    conn: Connection,
    *,
    since: datetime,
    category: str | None,
    embedder: Embedder | None,
    vectors: TicketVectors,
) -> list[GapTicket]:
    """Content gaps (no `category`), or every ticket of `category` (its frequent topics), created since `since`,
    newest first. Without an `embedder`, tickets whose attempt stored no vector are left out."""
    rows = [dict(r) for r in await conn.fetch(_LATEST_SQL, since, category, MAX_TICKETS)]
    chosen: list[tuple[dict[str, Any], str]] = []
    for row in rows:
        reason = gap_reason(row)
        if category is None and reason is None:
            continue
        chosen.append((row, reason or ""))
    to_encode = [
        (row["ticket_id"], ticket_text(row["subject"], row["body"]))
        for row, _ in chosen
        if row["query_embedding"] is None
    ]
    encoded: dict[UUID, np.ndarray] = {}
    if to_encode and embedder is not None:
        found = await vectors.vectors(embedder, to_encode)
        encoded = {key: vector for (key, _), vector in zip(to_encode, found, strict=True)}
    out = []
    for row, reason in chosen:
        stored = row["query_embedding"]
        vector = np.asarray(stored, dtype=np.float32) if stored is not None else encoded.get(row["ticket_id"])
        if vector is None:
            continue
        out.append(GapTicket(row["ticket_id"], row["subject"], row["created_at"], vector, reason))
    return out


async def build_topic_report(
    conn: Connection,
    *,
    now: datetime,
    weeks: int = DEFAULT_WEEKS,
    category: str | None = None,
    embedder: Embedder | None,
    vectors: TicketVectors,
) -> dict[str, Any]:
    """The content-gap report (no `category`), or the category's most frequent topics, as JSON-ready data."""
    since = window_start(now, weeks)
    tickets = await load_topic_tickets(conn, since=since, category=category, embedder=embedder, vectors=vectors)
    topics = group_topics(tickets, now=now, weeks=weeks)
    return {
        "kind": "content_gaps" if category is None else "category_topics",
        "category": category,
        "weeks": weeks,
        "since": since,
        "generated_at": now,
        "tickets": len(tickets),
        "distance_threshold": DISTANCE_THRESHOLD,
        "topics": [topic_as_dict(t) for t in topics],
    }
