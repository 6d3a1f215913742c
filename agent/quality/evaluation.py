"""`deskpilot eval`: labelled tickets through routing and the agent, without delivering, into a quality report.

A fresh database on the same server holds the history (the data set minus a deterministic holdout, or
`--history`); every held-out ticket runs through the real graph offline. A reply counts as right when its
primary grounding past resolution has the ticket's issue label (`orig_intent` / `intent`). Without issue
labels the report gives the mean cosine similarity of the reply to the gold answer instead.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import numpy as np

from agent.account import ACCOUNT_WINDOW_DAYS
from agent.drafting.drafter import default_drafter
from agent.drafting.questions import language_of
from agent.drafting.request import Drafter
from agent.nodes import choose_grounding
from agent.runner import TicketProcessor, run_graph_offline
from agent.scoring.confidence import compute_signals
from agent.state import AgentState, TicketInput, ticket_text
from agent.triage.keywords import CATEGORIES, PRIORITIES
from core import db
from core.db import Connection
from core.settings import Settings
from ingest.schemas import PayloadError, normalize_payload, parse_payload
from knowledge.embedder import Embedder, get_embedder
from knowledge.loader import LoadReport as KbLoadReport
from knowledge.loader import load_paths
from knowledge.reembed import reembed
from knowledge.store import ResolutionRow, insert_resolutions
from tickets.customer_loader import LoadReport as CustomerLoadReport
from tickets.customer_loader import load_customers

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
T = TypeVar("T")


@dataclass
class LabelledTicket:
    id: str
    subject: str
    body: str
    answer: str | None
    category: str | None
    priority: str | None
    intent: str | None
    language: str | None

    @property
    def text(self) -> str:
        subject, body = self.subject.strip(), self.body.strip()
        return f"{subject}\n\n{body}" if subject and body else subject or body


def _clean(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def read_labelled(path: Path) -> list[LabelledTicket]:
    """JSONL or CSV records with subject/body/answer/category/priority/intent (or orig_intent)."""
    records: list[dict[str, Any]] = []
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            records = list(csv.DictReader(handle))
    else:
        with path.open(encoding="utf-8") as handle:
            records = [json.loads(line) for line in handle if line.strip()]
    tickets: list[LabelledTicket] = []
    for i, record in enumerate(records):
        body = _clean(record.get("body")) or ""
        subject = _clean(record.get("subject")) or ""
        if not (body or subject):
            continue
        category = _clean(record.get("category"))
        priority = _clean(record.get("priority"))
        tickets.append(
            LabelledTicket(
                id=_clean(record.get("id")) or f"{path.stem}-{i}",
                subject=subject,
                body=body,
                answer=_clean(record.get("answer")) or _clean(record.get("resolution")),
                category=category if category in CATEGORIES else None,
                priority=priority if priority in PRIORITIES else None,
                intent=_clean(record.get("orig_intent")) or _clean(record.get("intent")),
                language=_clean(record.get("language")),
            )
        )
    return tickets


def _rank(ticket_id: str, seed: int) -> int:
    return int(hashlib.sha256(f"deskpilot-eval:{seed}:{ticket_id}".encode()).hexdigest()[:12], 16)


def split_holdout(
    tickets: Sequence[LabelledTicket], holdout: float, seed: int
) -> tuple[list[LabelledTicket], list[LabelledTicket]]:
    """(history, evaluation): a deterministic hash split by id, so the eval tickets are never in the history."""
    cut = int(holdout * 10_000)
    history: list[LabelledTicket] = []
    evaluation: list[LabelledTicket] = []
    for ticket in tickets:
        (evaluation if _rank(ticket.id, seed) % 10_000 < cut else history).append(ticket)
    return history, evaluation


def sample(tickets: Sequence[LabelledTicket], limit: int | None, seed: int) -> list[LabelledTicket]:
    if limit is None or limit >= len(tickets):
        return list(tickets)
    return sorted(tickets, key=lambda t: _rank(t.id, seed + 1))[:limit]


# --- a scratch database on the same server -------------------------------------------------------------------


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


class ScratchDatabase:
    """`deskpilot_eval_<random>` on the server of `url`, migrated on entry and dropped on exit."""

    def __init__(self, url: str) -> None:
        self.server_url = url
        self.name = f"deskpilot_eval_{secrets.token_hex(4)}"
        self.url = _with_database(url, self.name)

    async def __aenter__(self) -> ScratchDatabase:
        conn = await asyncpg.connect(self.server_url)
        try:
            await conn.execute(f'CREATE DATABASE "{self.name}"')
        finally:
            await conn.close()
        await db.migrate(self.url)
        return self

    async def __aexit__(self, *exc: object) -> None:
        conn = await asyncpg.connect(self.server_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        finally:
            await conn.close()


# --- running ------------------------------------------------------------------------------------------------


@dataclass
class TicketResult:
    id: str
    category: str | None
    predicted_category: str
    priority: str | None
    predicted_priority: str
    decision: str
    confidence: float
    intent: str | None
    grounding_intent: str | None
    right: bool | None
    signals: dict[str, float]
    signal_model: str
    similarity_signals: dict[str, float]
    similarity_right: bool | None
    draft: str
    answer: str | None
    risks: list[str] = field(default_factory=list)


def encode_all(embedder: Embedder, texts: Sequence[str], progress: Progress | None, label: str) -> np.ndarray:
    """Embed in chunks (the model batches inside each) so the progress bar moves."""
    if not texts:
        return np.zeros((0, embedder.dimension), dtype=np.float32)
    out: list[np.ndarray] = []
    step = 256
    for start in range(0, len(texts), step):
        out.append(embedder.encode(list(texts[start : start + step])))
        if progress:
            progress(label, min(start + step, len(texts)), len(texts))
    return np.vstack(out)


async def load_history(conn: Connection, tickets: Sequence[LabelledTicket], embeddings: np.ndarray) -> int:
    rows = [
        ResolutionRow(
            ticket_text=t.text,
            # Data sets without answers (routing-only sets) still teach the classifier; such rows ground nothing.
            resolution=t.answer or "",
            embedding=embeddings[i],
            source="history",
            source_ref=t.id,
            category=t.category,
            priority=t.priority,
            intent=t.intent,
            language=t.language,
        )
        for i, t in enumerate(tickets)
    ]
    added = 0
    for start in range(0, len(rows), 2000):
        added += await insert_resolutions(conn, rows[start : start + 2000])
    return added


async def run_tickets(
    processor: TicketProcessor,
    tickets: Sequence[LabelledTicket],
    embeddings: np.ndarray,
    progress: Progress | None = None,
) -> list[TicketResult]:
    results: list[TicketResult] = []
    for i, ticket in enumerate(tickets):
        state = await run_graph_offline(
            processor,
            TicketInput(ticket_id=None, channel="email", subject=ticket.subject, body=ticket.body, account={}),
            embedding=embeddings[i],
        )
        grounding = state["grounding"]
        item = grounding.item
        scoring = state["scoring"]
        prediction = state.get("prediction")
        # The same ticket as a history without issue labels would see it: calibration data for that model.
        resolutions = [r for r in state.get("items", []) if r.kind == "resolution"]
        category = state["classification"]["category"]
        plain = choose_grounding(resolutions, None, category, False)
        similarity_signals = compute_signals(
            grounding=plain,
            neighbours=prediction.neighbours if prediction else [],
            intent_probs={},
            category=category,
            category_certainty=state["classification"]["certainty"],
            use_intents=False,
        )
        right = None
        similarity_right = None
        if ticket.intent:
            right = bool(item is not None and item.intent == ticket.intent)
            similarity_right = bool(plain.item is not None and plain.item.intent == ticket.intent)
        results.append(
            TicketResult(
                id=ticket.id,
                category=ticket.category,
                predicted_category=category,
                priority=ticket.priority,
                predicted_priority=state["prioritization"]["priority"],
                decision=state["outcome"]["decision"],
                confidence=float(scoring["confidence"]),
                intent=ticket.intent,
                grounding_intent=item.intent if item is not None else None,
                right=right,
                signals=dict(scoring["signals"]),
                signal_model=str(scoring["model"]),
                similarity_signals=similarity_signals,
                similarity_right=similarity_right,
                draft=state["drafted"]["draft"],
                answer=ticket.answer,
                risks=list(scoring.get("risk_kinds", [])),
            )
        )
        if progress:
            progress("tickets", i + 1, len(tickets))
    return results


# --- metrics ------------------------------------------------------------------------------------------------


def expected_calibration_error(confidence: Sequence[float], right: Sequence[bool], bins: int = 10) -> float | None:
    if not confidence:
        return None
    conf = np.asarray(confidence, dtype=float)
    return float(_binned_gaps(conf, np.asarray(right, dtype=float)[None, :], bins)[0])


def _binned_gaps(conf: np.ndarray, hits: np.ndarray, bins: int) -> np.ndarray:
    """The binned ECE of `conf` against each row of `hits` (outcomes, one row per draw)."""
    index = np.minimum((conf * bins).astype(int), bins - 1)
    total = np.zeros(len(hits))
    for b in range(bins):
        mask = index == b
        if mask.any():
            total += np.abs(conf[mask].mean() - hits[:, mask].mean(axis=1)) * mask.mean()
    return total


# Simulated outcomes behind `ece_if_calibrated`: enough for a stable median and 90 % range.
CALIBRATED_ECE_DRAWS = 2_000


def ece_if_calibrated(
    confidence: Sequence[float], bins: int = 10, *, draws: int = CALIBRATED_ECE_DRAWS, seed: int = 0
) -> dict[str, float] | None:
    """The ECE a perfectly calibrated scorer would show on these confidences: each ticket drawn right with its
    confidence as the probability, `draws` times; the median and the 5th and 95th percentiles.

    The binned ECE of a few dozen tickets is mostly sampling noise. On the 62 unseen tickets of the go-live
    rehearsal a perfect curve shows a median of about 0.12 and falls to 0.05 or below in fewer than one draw in a
    thousand, so a measured ECE is read against this range, not against zero."""
    if not confidence:
        return None
    conf = np.asarray(confidence, dtype=float)
    hits = np.random.default_rng(seed).random((draws, len(conf))) < conf
    low, median, high = np.percentile(_binned_gaps(conf, hits, bins), [5, 50, 95])
    return {"median": round(float(median), 4), "p05": round(float(low), 4), "p95": round(float(high), 4)}


def macro_f1(truth: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> float:
    scores = []
    for label in labels:
        tp = sum(1 for t, p in zip(truth, predicted, strict=True) if t == label and p == label)
        fp = sum(1 for t, p in zip(truth, predicted, strict=True) if t != label and p == label)
        fn = sum(1 for t, p in zip(truth, predicted, strict=True) if t == label and p != label)
        if tp + fp + fn == 0:
            continue
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else 0.0


def baseline_accuracy(history: Sequence[LabelledTicket], evaluation: Sequence[LabelledTicket]) -> float | None:
    """TF-IDF (word 1-2 grams, sublinear tf) + logistic regression trained on the same history."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    train = [t for t in history if t.category]
    test = [t for t in evaluation if t.category]
    if len({t.category for t in train}) < 2 or not test:
        return None
    model = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True), LogisticRegression(C=10, max_iter=2000)
    )
    model.fit([t.text for t in train], [t.category for t in train])
    predicted = model.predict([t.text for t in test])
    return float(np.mean([p == t.category for p, t in zip(predicted, test, strict=True)]))


def _rate(values: Sequence[bool]) -> float | None:
    return float(np.mean(values)) if values else None


def _by_confidence(judged: Sequence[TicketResult], thresholds: dict[str, float]) -> dict[str, Any]:
    auto = [bool(r.right) for r in judged if r.confidence >= thresholds["auto_resolve"]]
    flag = [bool(r.right) for r in judged if thresholds["review"] <= r.confidence < thresholds["auto_resolve"]]
    n = len(judged)
    return {
        "auto_resolve_rate": len(auto) / n if n else None,
        "auto_resolve_precision": _rate(auto),
        "flag_rate": len(flag) / n if n else None,
        "flag_precision": _rate(flag),
    }


def summarize(
    results: Sequence[TicketResult],
    *,
    thresholds: dict[str, float],
    seconds: float,
    reply_similarity: float | None,
    baseline: float | None,
) -> dict[str, Any]:
    n = len(results)
    labelled = [r for r in results if r.category]
    truth = [r.category or "" for r in labelled]
    predicted = [r.predicted_category for r in labelled]
    confusion = {
        t: {p: sum(1 for r in labelled if r.category == t and r.predicted_category == p) for p in CATEGORIES}
        for t in CATEGORIES
        if any(r.category == t for r in labelled)
    }
    with_priority = [r for r in results if r.priority]
    decisions = [r.decision for r in results]
    has_intents = any(r.right is not None for r in results)
    delivered = [r.right for r in results if r.decision == "deliver" and r.right is not None]
    flagged = [r.right for r in results if r.decision == "flag_for_review" and r.right is not None]
    judged = [r for r in results if r.right is not None]
    report: dict[str, Any] = {
        "n": n,
        "category_accuracy": _rate([r.category == r.predicted_category for r in labelled]),
        "category_macro_f1": macro_f1(truth, predicted, sorted(set(truth))) if labelled else None,
        "baseline_category_accuracy": baseline,
        "baseline": "TF-IDF (word 1-2 grams, sublinear tf) + logistic regression (C=10), same history",
        "priority_accuracy": _rate([r.priority == r.predicted_priority for r in with_priority]),
        "auto_resolve_rate": decisions.count("deliver") / n if n else None,
        "auto_resolve_precision": _rate([bool(v) for v in delivered]) if has_intents else None,
        "flag_rate": decisions.count("flag_for_review") / n if n else None,
        "flag_precision": _rate([bool(v) for v in flagged]) if has_intents else None,
        "escalate_rate": decisions.count("escalate") / n if n else None,
        "ece": expected_calibration_error([r.confidence for r in judged], [bool(r.right) for r in judged])
        if has_intents
        else None,
        "grounding_accuracy": _rate([bool(r.right) for r in judged]) if has_intents else None,
        "rightness": "grounding resolution has the ticket's issue label"
        if has_intents
        else "no issue labels: see reply_similarity (mean cosine of reply to gold answer)",
        "reply_similarity": reply_similarity,
        "mean_confidence": float(np.mean([r.confidence for r in results])) if results else None,
        "tickets_per_second": n / seconds if seconds > 0 else None,
        "confusion_matrix": confusion,
        # What the thresholds alone would do, before the gates (risks, nothing to send) overrule them: the
        # calibration's own quality on sets whose history has no answers to send (banking77).
        "by_confidence": _by_confidence(judged, thresholds) if has_intents else None,
        "risk_counts": {
            kind: sum(1 for r in results if kind in r.risks) for kind in sorted({k for r in results for k in r.risks})
        },
    }
    return report


# --- per language -------------------------------------------------------------------------------------------

# How many nearest texts the retrieval check looks at.
RETRIEVAL_K = 5


def language_breakdown(
    embedder: Embedder,
    evaluation: Sequence[LabelledTicket],
    results: Sequence[TicketResult],
    reply_similarities: dict[str, float],
    stored_vectors: np.ndarray,
    first_eval_row: int,
) -> dict[str, dict[str, Any]]:
    """Per language of the ticket text (`language_of`: the data's own labels can be wrong): how many tickets,
    category accuracy, mean reply similarity, and a retrieval check: the ticket's subject alone must find its
    ticket (and so its resolution) among the `RETRIEVAL_K` nearest of every stored and evaluated text.
    `stored_vectors` are the history's vectors then the evaluated tickets' (row `first_eval_row + i` is ticket i)."""
    languages = {t.id: language_of(t.text) for t in evaluation}
    rows = {t.id: first_eval_row + i for i, t in enumerate(evaluation)}
    with_subject = [t for t in evaluation if t.subject.strip() and t.body.strip()]
    found: dict[str, bool] = {}
    if with_subject and len(stored_vectors):
        queries = embedder.encode([t.subject for t in with_subject])
        similarities = queries @ stored_vectors.T
        top = np.argsort(-similarities, axis=1)[:, :RETRIEVAL_K]
        found = {t.id: bool(rows[t.id] in top[i]) for i, t in enumerate(with_subject)}
    breakdown: dict[str, dict[str, Any]] = {}
    for language in sorted(set(languages.values())):
        mine = [r for r in results if languages[r.id] == language]
        labelled = [r for r in mine if r.category]
        replies = [reply_similarities[r.id] for r in mine if r.id in reply_similarities]
        checks = [found[r.id] for r in mine if r.id in found]
        breakdown[language] = {
            "n": len(mine),
            "category_accuracy": _rate([r.category == r.predicted_category for r in labelled]),
            "reply_similarity": float(np.mean(replies)) if replies else None,
            f"subject_finds_ticket_at_{RETRIEVAL_K}": _rate(checks),
            "retrieval_checks": len(checks),
        }
    return breakdown


# --- the whole run ------------------------------------------------------------------------------------------


@dataclass
class EvaluationRun:
    report: dict[str, Any]
    results: list[TicketResult]


def history_and_evaluation(
    dataset: Path,
    history_path: Path | None,
    *,
    holdout: float,
    limit: int | None,
    seed: int,
    limit_holdout_only: bool = False,
) -> tuple[list[LabelledTicket], list[LabelledTicket]]:
    """The history the scratch deployment learns from and the tickets it is evaluated on: with `history_path`,
    `limit` tickets of the set against that history (minus any ticket of the set); else a `holdout` share of the
    set against the rest. `limit` samples the whole set before the split, or with `limit_holdout_only` only the
    holdout (the history stays the rest of the set: a few slow LLM tickets against a full history)."""
    labelled = read_labelled(dataset)
    if history_path is not None:
        evaluation = sample(labelled, limit, seed)
        eval_ids = {t.id for t in evaluation}
        history = [t for t in read_labelled(history_path) if t.id not in eval_ids]
    elif limit_holdout_only:
        history, evaluation = split_holdout(labelled, holdout, seed)
        evaluation = sample(evaluation, limit, seed)
    else:
        history, evaluation = split_holdout(sample(labelled, limit, seed), holdout, seed)
    if not evaluation:
        raise ValueError("no tickets to evaluate: the holdout is empty")
    return history, evaluation


async def evaluate(
    dataset: Path,
    *,
    settings: Settings,
    history_path: Path | None = None,
    kb: Path | None = None,
    holdout: float = 0.2,
    limit: int | None = None,
    seed: int = 0,
    database_url: str | None = None,
    embedder: Embedder | None = None,
    progress: Progress | None = None,
) -> EvaluationRun:
    """Run the evaluation end to end in a scratch database and return the report and per-ticket results."""
    started_all = time.perf_counter()
    history, evaluation = history_and_evaluation(dataset, history_path, holdout=holdout, limit=limit, seed=seed)
    embedder = embedder or get_embedder(settings.embedding_model)
    server_url = database_url or db.resolve_database_url(settings)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    history_vectors = await asyncio.to_thread(
        encode_all, embedder, [t.text for t in history], progress, "embedding history"
    )
    timings["embed_history_s"] = time.perf_counter() - t0
    # Embedding is the bottleneck: every eval text in one batched pass, as the worker's batcher would.
    t0 = time.perf_counter()
    eval_vectors = await asyncio.to_thread(
        encode_all, embedder, [t.text for t in evaluation], progress, "embedding tickets"
    )
    timings["embed_tickets_s"] = time.perf_counter() - t0
    results, processor, run_timings = await run_in_scratch_database(
        server_url, settings, embedder, history, history_vectors, evaluation, eval_vectors, kb=kb, progress=progress
    )
    timings.update(run_timings)
    seconds = timings["embed_tickets_s"] + timings["graph_s"]
    reply_similarity = None
    reply_similarities = np.zeros(0, dtype=np.float32)
    with_answers = [(r.draft, r.answer) for r in results if r.answer]
    if with_answers:
        drafts = embedder.encode([d for d, _ in with_answers])
        answers = embedder.encode([a or "" for _, a in with_answers])
        reply_similarities = np.sum(drafts * answers, axis=1)
        reply_similarity = float(np.mean(reply_similarities))
    baseline = await asyncio.to_thread(baseline_accuracy, history, evaluation)
    thresholds = {"auto_resolve": settings.auto_resolve_threshold, "review": settings.review_threshold}
    report = summarize(
        results, thresholds=thresholds, seconds=seconds, reply_similarity=reply_similarity, baseline=baseline
    )
    report.update(
        dataset=str(dataset),
        history=str(history_path) if history_path else f"{len(history)} rows of the data set (holdout {holdout})",
        history_size=len(history),
        seed=seed,
        timings={k: round(v, 2) for k, v in timings.items()},
        total_seconds=round(time.perf_counter() - started_all, 2),
        thresholds=thresholds,
        calibration=processor.calibration.meta.get("source"),
        models=processor.models.current.describe() if processor.models.current else None,
    )
    report["by_language"] = await asyncio.to_thread(
        language_breakdown,
        embedder,
        evaluation,
        results,
        {r.id: float(s) for r, s in zip([r for r in results if r.answer], reply_similarities, strict=True)},
        np.vstack([history_vectors, eval_vectors]),
        len(history),
    )
    report["embedding"] = {
        "model": embedder.name,
        "dimension": embedder.dimension,
        "texts_per_second": len(history) / timings["embed_history_s"] if timings["embed_history_s"] > 0 else None,
    }
    return EvaluationRun(report=report, results=results)


async def run_in_scratch_database(
    server_url: str,
    settings: Settings,
    embedder: Embedder,
    history: Sequence[LabelledTicket],
    history_vectors: np.ndarray,
    evaluation: Sequence[LabelledTicket],
    eval_vectors: np.ndarray,
    *,
    kb: Path | None = None,
    progress: Progress | None = None,
) -> tuple[list[TicketResult], TicketProcessor, dict[str, float]]:
    """Load the history (and KB) into a scratch database, fit the models, run every ticket offline."""

    async def load(conn: Connection) -> None:
        await load_history(conn, history, history_vectors)
        if kb is not None:
            await load_paths(conn, [kb], embedder=embedder)

    async with scratch_processor(server_url, settings, embedder, load) as (processor, _, timings):
        t0 = time.perf_counter()
        results = await run_tickets(processor, evaluation, eval_vectors, progress)
        timings["graph_s"] = time.perf_counter() - t0
    return results, processor, timings


@asynccontextmanager
async def scratch_processor(
    server_url: str,
    settings: Settings,
    embedder: Embedder,
    load: Callable[[Connection], Awaitable[T]],
    *,
    drafter: Drafter | None = None,
) -> AsyncIterator[tuple[TicketProcessor, T, dict[str, float]]]:
    """A scratch database filled by `load`, and a ticket processor over it with its routing models fitted:
    (processor, what `load` returned, timings). The database is dropped on exit. `drafter` replaces the one the
    settings call for."""
    timings: dict[str, float] = {}
    async with ScratchDatabase(server_url) as scratch:
        pool = await db.create_pool(scratch.url, settings)
        try:
            t0 = time.perf_counter()
            async with pool.acquire() as conn:
                # The scratch schema's vectors follow the model under evaluation (an empty store: no rows to encode).
                await reembed(conn, embedder)
                loaded = await load(conn)
            timings["load_s"] = time.perf_counter() - t0
            # The drafter the settings call for: the LLM path is evaluated the same way when a model is configured.
            processor = TicketProcessor(
                pool, settings, None, embedder=embedder, drafter=drafter or default_drafter(settings)
            )
            t0 = time.perf_counter()
            await processor.models.get(pool, block=True)
            timings["fit_models_s"] = time.perf_counter() - t0
            yield processor, loaded, timings
        finally:
            await pool.close()


def finite(value: Any) -> Any:
    """JSON-safe numbers (NaN and inf become null)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


# --- deployment-shaped sets (DESIGN.md section 4) -----------------------------------------------------------

KINDS = ("answerable", "not_covered", "must_escalate")
# A reply goes out on both: a flagged reply is sent and reviewed afterwards.
SENT = frozenset({"deliver", "flag_for_review"})


@dataclass(frozen=True)
class Expectation:
    """What a right outcome is: `kind` answerable | not_covered | must_escalate, and for answerable tickets the
    literal facts a right reply contains."""

    kind: str
    category: str | None = None
    priority: str | None = None
    articles: tuple[str, ...] = ()
    answer_facts: tuple[str, ...] = ()


@dataclass
class DeploymentTicket:
    id: str
    ticket: TicketInput
    expect: Expectation


def _expectation(raw: Any) -> Expectation:
    if not isinstance(raw, dict):
        raise ValueError("expect: must be an object")
    kind = raw.get("kind")
    if kind not in KINDS:
        raise ValueError(f"expect.kind: must be one of {', '.join(KINDS)}, got {kind!r}")
    category, priority = raw.get("category"), raw.get("priority")
    if category is not None and category not in CATEGORIES:
        raise ValueError(f"expect.category: must be one of {', '.join(CATEGORIES)}, got {category!r}")
    if priority is not None and priority not in PRIORITIES:
        raise ValueError(f"expect.priority: must be one of {', '.join(PRIORITIES)}, got {priority!r}")
    facts, articles = raw.get("answer_facts") or [], raw.get("articles") or []
    if not isinstance(facts, list) or not all(isinstance(f, str) and f.strip() for f in facts):
        raise ValueError("expect.answer_facts: must be a list of non-empty strings")
    if not isinstance(articles, list) or not all(isinstance(a, str) for a in articles):
        raise ValueError("expect.articles: must be a list of paths")
    if kind == "answerable" and not facts:
        raise ValueError("expect.answer_facts: an answerable ticket needs at least one fact")
    return Expectation(kind, category, priority, tuple(articles), tuple(facts))


def is_deployment_set(path: Path) -> bool:
    """Whether the file's first record carries `expect`: a deployment-shaped set, not labelled tickets."""
    with path.open(encoding="utf-8-sig", errors="replace") as handle:
        first = next((line for line in handle if line.strip()), "")
    try:
        record = json.loads(first)
    except json.JSONDecodeError:
        return False
    return isinstance(record, dict) and "expect" in record


def read_deployment_set(path: Path) -> list[DeploymentTicket]:
    """JSONL, each line an ingest payload plus `expect`; the payload is validated and normalized as the webhook
    would (a bad line raises ValueError naming the line and the field)."""
    tickets: list[DeploymentTicket] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path.name}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: not JSON: {exc.msg}") from None
            if not isinstance(record, dict) or "expect" not in record:
                raise ValueError(f"{where}: expect: missing (each line is an ingest payload plus `expect`)")
            try:
                expect = _expectation(record.pop("expect"))
                payload, _ = parse_payload(json.dumps(record).encode())
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None
            except PayloadError as exc:
                raise ValueError(f"{where}: {exc.field or 'payload'}: {exc.detail}") from None
            normalized = normalize_payload(payload)
            raw_text = "\n\n".join(part for part in (payload.subject, payload.body) if part)
            ticket = TicketInput(
                ticket_id=None,
                channel=normalized.channel,
                subject=normalized.subject,
                body=normalized.body,
                customer_name=normalized.customer_name,
                customer_email=normalized.customer_email,
                raw_text=raw_text,
                metadata=dict(normalized.metadata),
                account={},
            )
            tickets.append(DeploymentTicket(id=normalized.external_id, ticket=ticket, expect=expect))
    if not tickets:
        raise ValueError(f"{path.name}: no tickets")
    return tickets


def sample_deployment(tickets: Sequence[DeploymentTicket], limit: int | None, seed: int) -> list[DeploymentTicket]:
    """At most `limit` tickets, a deterministic sample by id (every kind keeps roughly its share)."""
    if limit is None or limit >= len(tickets):
        return list(tickets)
    chosen = {t.id for t in sorted(tickets, key=lambda t: _rank(t.id, seed + 1))[:limit]}
    return [t for t in tickets if t.id in chosen]


def _squash(text: str) -> str:
    return " ".join(text.split()).casefold()


def missing_facts(reply: str, facts: Sequence[str]) -> list[str]:
    """The facts the reply does not contain (case-insensitive, whitespace collapsed)."""
    squashed = _squash(reply)
    return [fact for fact in facts if _squash(fact) not in squashed]


@dataclass
class DeploymentResult:
    id: str
    kind: str
    category: str | None
    predicted_category: str
    priority: str | None
    predicted_priority: str
    decision: str
    confidence: float
    draft: str
    answer_facts: tuple[str, ...] = ()
    risks: list[str] = field(default_factory=list)
    signals: dict[str, float] = field(default_factory=dict)
    signal_model: str = ""
    gate: str | None = None  # the score step's gate ("escalate" / "review"): never auto-resolved

    @property
    def sent(self) -> bool:
        return self.decision in SENT

    @property
    def missing(self) -> list[str]:
        return missing_facts(self.draft, self.answer_facts) if self.kind == "answerable" else []

    @property
    def replied_right(self) -> bool:
        """The draft answers the ticket, whatever was decided about sending it."""
        return self.kind == "answerable" and bool(self.draft.strip()) and not self.missing

    @property
    def answered_right(self) -> bool:
        """The customer got a right answer."""
        return self.sent and self.replied_right


def deployment_result(item: DeploymentTicket, state: AgentState) -> DeploymentResult:
    """What the graph did with one deployment-set ticket, next to what was expected."""
    scoring = state["scoring"]
    return DeploymentResult(
        id=item.id,
        kind=item.expect.kind,
        category=item.expect.category,
        predicted_category=state["classification"]["category"],
        priority=item.expect.priority,
        predicted_priority=state["prioritization"]["priority"],
        decision=state["outcome"]["decision"],
        confidence=float(scoring["confidence"]),
        draft=state["drafted"]["draft"],
        answer_facts=item.expect.answer_facts,
        risks=list(scoring.get("risk_kinds", [])),
        signals=dict(scoring.get("signals", {})),
        signal_model=str(scoring.get("model", "")),
        gate=scoring.get("gate"),
    )


def _failure(r: DeploymentResult) -> str | None:
    if r.kind == "answerable" and not r.answered_right:
        if not r.sent:
            return "answerable, not sent" + ("" if r.replied_right else " (draft incomplete too)")
        return "sent without every fact"
    if r.kind == "not_covered" and r.sent:
        return "not covered, reply sent" + (" automatically" if r.decision == "deliver" else " (flagged)")
    if r.kind == "must_escalate" and r.sent:
        return "must escalate, reply sent"
    return None


def score_deployment(results: Sequence[DeploymentResult], *, seconds: float) -> dict[str, Any]:
    """The customer's view of a deployment-shaped run (DESIGN.md section 4)."""
    n = len(results)
    answerable = [r for r in results if r.kind == "answerable"]
    delivered = [r for r in results if r.decision == "deliver"]
    flagged = [r for r in results if r.decision == "flag_for_review"]
    with_category = [r for r in results if r.category]
    with_priority = [r for r in results if r.priority]

    def count(rows: Sequence[DeploymentResult], decision: str) -> int:
        return sum(1 for r in rows if r.decision == decision)

    by_kind: dict[str, Any] = {}
    for kind in KINDS:
        rows = [r for r in results if r.kind == kind]
        if not rows:
            continue
        by_kind[kind] = {
            "n": len(rows),
            "deliver": count(rows, "deliver"),
            "flag_for_review": count(rows, "flag_for_review"),
            "escalate": count(rows, "escalate"),
            "answered_right": sum(1 for r in rows if r.answered_right) if kind == "answerable" else None,
            "replied_right": sum(1 for r in rows if r.replied_right) if kind == "answerable" else None,
            "category_accuracy": _rate([r.category == r.predicted_category for r in rows if r.category]),
            "priority_accuracy": _rate([r.priority == r.predicted_priority for r in rows if r.priority]),
            "mean_confidence": float(np.mean([r.confidence for r in rows])),
        }
    truth = [r.category or "" for r in with_category]
    return {
        "n": n,
        "answered_right_rate": _rate([r.answered_right for r in answerable]),
        "replied_right_rate": _rate([r.replied_right for r in answerable]),
        "auto_resolve_rate": len(delivered) / n if n else None,
        "auto_resolve_rate_answerable": count(answerable, "deliver") / len(answerable) if answerable else None,
        "auto_resolve_precision": _rate([r.answered_right for r in delivered]),
        "flag_rate": len(flagged) / n if n else None,
        "flag_precision": _rate([r.answered_right for r in flagged]),
        "escalate_rate": count(results, "escalate") / n if n else None,
        "not_covered_auto": sum(1 for r in delivered if r.kind == "not_covered"),
        "not_covered_sent": sum(1 for r in results if r.kind == "not_covered" and r.sent),
        "must_escalate_replied": sum(1 for r in results if r.kind == "must_escalate" and r.sent),
        "category_accuracy": _rate([r.category == r.predicted_category for r in with_category]),
        "category_macro_f1": macro_f1(truth, [r.predicted_category for r in with_category], sorted(set(truth)))
        if with_category
        else None,
        "priority_accuracy": _rate([r.priority == r.predicted_priority for r in with_priority]),
        # Confidence claims the probability that the reply answers every question: a reply to a ticket that
        # must not be answered, or one missing a fact, is wrong.
        "ece": expected_calibration_error([r.confidence for r in results], [r.replied_right for r in results]),
        "ece_if_calibrated": ece_if_calibrated([r.confidence for r in results]),
        "mean_confidence": float(np.mean([r.confidence for r in results])) if results else None,
        "tickets_per_second": n / seconds if seconds > 0 else None,
        "rightness": "answerable and the reply contains every answer_facts string (case-insensitive, "
        "whitespace collapsed); sent = deliver or flag_for_review",
        "by_kind": by_kind,
        "priority_confusion": {
            t: {p: sum(1 for r in with_priority if r.priority == t and r.predicted_priority == p) for p in PRIORITIES}
            for t in PRIORITIES
            if any(r.priority == t for r in with_priority)
        },
        "failures": [
            {
                "id": r.id,
                "kind": r.kind,
                "decision": r.decision,
                "confidence": round(r.confidence, 4),
                "missing_facts": r.missing,
                "reason": reason,
                "risks": r.risks,
            }
            for r in results
            if (reason := _failure(r)) is not None
        ],
        "misrouted": [
            {
                "id": r.id,
                "kind": r.kind,
                "category": r.category,
                "predicted_category": r.predicted_category,
                "priority": r.priority,
                "predicted_priority": r.predicted_priority,
            }
            for r in results
            if (r.category and r.category != r.predicted_category)
            or (r.priority and r.priority != r.predicted_priority)
        ],
    }


_ACCOUNTS_SQL = """
SELECT c.email, c.name, c.tier, c.metadata,
       LEAST(c.created_at, (SELECT min(e.occurred_at) FROM customer_events e WHERE e.customer_id = c.id)) AS since,
       ARRAY(SELECT ROW(e.kind, e.occurred_at, e.data::text)
               FROM customer_events e
              WHERE e.customer_id = c.id AND e.occurred_at > now() - make_interval(days => $1)
              ORDER BY e.occurred_at DESC LIMIT 50) AS events
FROM customers c
"""


async def offline_accounts(conn: Connection) -> dict[str, dict[str, Any]]:
    """Every customer's account context as an offline run supplies it (by email), read as a claimed ticket's
    would be: tier, name, events of the last ACCOUNT_WINDOW_DAYS, newest first. An account is as old as its
    oldest event when that is older than the row (customers are imported on the day a deployment starts)."""
    accounts: dict[str, dict[str, Any]] = {}
    for row in await conn.fetch(_ACCOUNTS_SQL, ACCOUNT_WINDOW_DAYS):
        accounts[row["email"]] = {
            "tier": row["tier"],
            "name": row["name"],
            "customer_since": row["since"].isoformat(),
            "metadata": dict(row["metadata"] or {}),
            "events": [
                {"kind": kind, "occurred_at": occurred_at.isoformat(), "data": json.loads(data) if data else None}
                for kind, occurred_at, data in row["events"]
            ],
        }
    return accounts


@dataclass(frozen=True)
class DeploymentFiles:
    """A deployment's content as files: its help centre, its past resolutions and its customers' accounts (both
    optional: a deployment can start from its help centre alone)."""

    kb: Path
    history: Path | None = None
    customers: Path | None = None
    # The customers' events are moved so the newest falls here (the demo's were written on fixed dates); None
    # loads them as written.
    newest_event_at: datetime | None = None

    @classmethod
    def demo(cls, examples: Path, newest_event_at: datetime) -> DeploymentFiles:
        return cls(
            kb=examples / "kb",
            history=examples / "resolutions.jsonl",
            customers=examples / "customers.jsonl",
            newest_event_at=newest_event_at,
        )

    def describe(self, base: Path | None = None) -> str:
        """The files, joined; relative to `base` where they lie inside it (a file shipped in the repository)."""
        paths = [p for p in (self.kb, self.history, self.customers) if p is not None]
        return " + ".join(str(p.relative_to(base) if base and p.is_relative_to(base) else p) for p in paths)


@dataclass
class DeploymentContent:
    articles: KbLoadReport
    history: KbLoadReport
    customers: CustomerLoadReport

    @property
    def errors(self) -> list[str]:
        return [str(e) for e in (*self.articles.errors, *self.history.errors)] + self.customers.errors

    def summary(self) -> str:
        return (
            f"{self.articles.documents} articles ({self.articles.chunks} chunks), {self.history.resolutions} past "
            f"resolutions, {self.customers.customers} customers ({self.customers.events} events)"
        )


async def load_deployment(conn: Connection, files: DeploymentFiles, *, embedder: Embedder) -> DeploymentContent:
    """The deployment's articles, history and accounts into the database."""
    history = (
        await load_paths(conn, [files.history], embedder=embedder, kind="resolution")
        if files.history is not None
        else KbLoadReport()
    )
    customers = (
        await load_customers(conn, files.customers, newest_event_at=files.newest_event_at)
        if files.customers is not None
        else CustomerLoadReport()
    )
    return DeploymentContent(
        articles=await load_paths(conn, [files.kb], embedder=embedder, kind="article"),
        history=history,
        customers=customers,
    )


async def evaluate_deployment(
    dataset: Path,
    *,
    settings: Settings,
    deployment: DeploymentFiles,
    limit: int | None = None,
    seed: int = 0,
    database_url: str | None = None,
    embedder: Embedder | None = None,
    progress: Progress | None = None,
) -> DeploymentRun:
    """A deployment-shaped set against its deployment (the demo's, or an operator's own files) in a scratch
    database: every ticket through the real graph offline, with its sender's account context when the sender is
    one of the deployment's customers."""
    started_all = time.perf_counter()
    tickets = sample_deployment(read_deployment_set(dataset), limit, seed)
    embedder = embedder or get_embedder(settings.embedding_model)
    server_url = database_url or db.resolve_database_url(settings)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    vectors = await asyncio.to_thread(
        encode_all, embedder, [ticket_text(t.ticket) for t in tickets], progress, "embedding tickets"
    )
    timings["embed_tickets_s"] = time.perf_counter() - t0

    async def load(conn: Connection) -> tuple[DeploymentContent, dict[str, dict[str, Any]]]:
        content = await load_deployment(conn, deployment, embedder=embedder)
        return content, await offline_accounts(conn)

    results: list[DeploymentResult] = []
    async with scratch_processor(server_url, settings, embedder, load) as (processor, loaded, run_timings):
        content, accounts = loaded
        if not content.articles.documents:
            # Scored without a help centre, every answerable ticket would count as missed: a wrong path, not a result.
            first = f" ({content.errors[0]})" if content.errors else ""
            raise ValueError(f"{deployment.kb}: no help-centre article loaded{first}")
        t0 = time.perf_counter()
        for i, item in enumerate(tickets):
            account = accounts.get(item.ticket.get("customer_email") or "", {})
            state = await run_graph_offline(processor, {**item.ticket, "account": account}, embedding=vectors[i])
            results.append(deployment_result(item, state))
            if progress:
                progress("tickets", i + 1, len(tickets))
        run_timings["graph_s"] = time.perf_counter() - t0
        timings.update(run_timings)
        models = processor.models.current.describe() if processor.models.current else None
        calibration = processor.calibration.meta.get("source")
    report = score_deployment(results, seconds=timings["embed_tickets_s"] + timings["graph_s"])
    report.update(
        dataset=str(dataset),
        deployment=f"{deployment.describe()}: {content.summary()}",
        known_senders=sum(1 for t in tickets if (t.ticket.get("customer_email") or "") in accounts),
        load_problems=content.errors[:10],
        timings={k: round(v, 2) for k, v in timings.items()},
        total_seconds=round(time.perf_counter() - started_all, 2),
        thresholds={"auto_resolve": settings.auto_resolve_threshold, "review": settings.review_threshold},
        calibration=calibration,
        models=models,
    )
    return DeploymentRun(report=report, results=results)


@dataclass
class DeploymentRun:
    report: dict[str, Any]
    results: list[DeploymentResult]
