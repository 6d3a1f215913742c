"""The graph's nodes: each reads the state, returns only the keys it changes, and reaches its dependencies
through `Runtime[Context]`. `traced` times every node and hands its output (or error) to the step recorder.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parseaddr
from typing import Any, Protocol
from uuid import UUID

import numpy as np
from langgraph.runtime import Runtime

from agent import outcome
from agent.account import load_account, offline_account
from agent.context import Context
from agent.drafting.guardrails import review_reasons
from agent.drafting.questions import Question, language_of, split_questions
from agent.drafting.reader import ANSWER_FLOOR, Evidence, Reader, document_of
from agent.drafting.request import NOT_ASKED, Draft, DraftRequest
from agent.scoring.confidence import Grounding, compute_signals, knowledge_signals, score_confidence
from agent.scoring.risk import Risk, detect_risks, hidden_instructions, strongest_action
from agent.scoring.risk_model import risk_model
from agent.state import STEP_OUTPUTS, AgentState, TicketInput, latest_message, ticket_text
from agent.triage.classifier import RoutingPrediction
from agent.triage.decisions import decide_category, decide_priority
from agent.triage.specialists import specialist_for, wants_event
from knowledge.embedder import embed
from knowledge.retrieval import (
    RetrievedItem,
    article_leads,
    article_sections,
    help_centre_passages,
    nearest_resolutions,
    search,
    shorten,
)

log = logging.getLogger(__name__)

# Knowledge-base passages searched per question, besides those found for the whole ticket.
QUESTION_PASSAGES = 6


class Node(Protocol):
    """A graph node as LangGraph calls it: the state, and the runtime by keyword."""

    def __call__(self, state: AgentState, *, runtime: Runtime[Context]) -> Awaitable[dict[str, Any]]: ...


def traced(name: str) -> Callable[[Node], Node]:
    """Time the node, record its output (or error) as one audit step, observe its latency."""
    output_key = STEP_OUTPUTS[name]

    def wrap(node: Node) -> Node:
        @functools.wraps(node)
        async def run(state: AgentState, *, runtime: Runtime[Context]) -> dict[str, Any]:
            ctx = runtime.context
            started_at = datetime.now(UTC)
            started = time.perf_counter()
            try:
                update = await node(state, runtime=runtime)
            except Exception as exc:
                elapsed = (time.perf_counter() - started) * 1000
                if ctx.recorder is not None:
                    try:
                        await ctx.recorder.record(name, started_at, elapsed, {}, f"{type(exc).__name__}: {exc}")
                    except Exception:  # the original error is the one the worker must see
                        log.warning("could not record the failed %s step", name, exc_info=True)
                raise
            elapsed = (time.perf_counter() - started) * 1000
            if ctx.metrics is not None:
                ctx.metrics.node_latency.labels(name).observe(elapsed / 1000)
            if ctx.recorder is not None:
                await ctx.recorder.record(name, started_at, elapsed, update.get(output_key, {}), None)
            return update

        return run

    return wrap


# --- routing ------------------------------------------------------------------------------------------------


@traced("classify")
async def classify(state: AgentState, *, runtime: Runtime[Context]) -> dict[str, Any]:
    ctx = runtime.context
    ticket = state["ticket"]
    text = ticket_text(ticket)
    embedding = state.get("embedding")
    if embedding is None:
        embedding = await ctx.embeddings.encode(text)
    models = await ctx.routing_models()
    if ctx.live and ticket.get("customer_id"):
        async with ctx.pool.acquire() as conn:
            account = await load_account(conn, ticket, embedding)
    else:
        account = offline_account(ticket)
    prediction = models.predict(text, embedding, exclude_ticket_id=ticket.get("ticket_id"))
    classification = decide_category(text, prediction, account, tiers=ctx.settings.tiers)
    classification["model"] = prediction.model
    return {"embedding": embedding, "account": account, "prediction": prediction, "classification": classification}


@traced("prioritize")
async def prioritize(state: AgentState, *, runtime: Runtime[Context]) -> dict[str, Any]:
    text = ticket_text(state["ticket"])
    account = state.get("account", {})
    repeated = bool(account.get("repeated_contact"))
    risks = detect_risks(text, repeated_contact=repeated)
    hidden = hidden_instructions(state["ticket"].get("raw_text") or "", text)
    if hidden is not None and not any(r.kind == "prompt_injection" for r in risks):
        risks.insert(0, hidden)
    # The learned detector reads what the patterns may not have words for; a kind the patterns found already
    # keeps their evidence. Fitted once per process, in a thread: encoding its examples takes seconds. Beside an
    # English-only model it reads the ticket with the multilingual one too, when that loads.
    embeddings = runtime.context.embeddings
    multilingual = await embeddings.multilingual.get() if embeddings.multilingual is not None else None
    detector = await asyncio.to_thread(risk_model, embeddings.embedder, multilingual=multilingual)
    beside = (await embed(multilingual, [text]))[0] if multilingual is not None else None
    found = {r.kind for r in risks}
    risks += [r for r in detector.detect(text, state.get("embedding"), beside) if r.kind not in found]
    repeated = repeated or any(r.kind == "repeated_contact" for r in risks)
    prioritization = decide_priority(
        text, state.get("prediction"), account, risks, repeated_contact=repeated, tiers=runtime.context.settings.tiers
    )
    out: dict[str, Any] = {"risks": risks, "prioritization": prioritization}
    if beside is not None:
        out["multilingual_embedding"] = beside
    return out


@traced("dispatch")
async def dispatch(state: AgentState, *, runtime: Runtime[Context]) -> dict[str, Any]:
    ctx = runtime.context
    category = state["classification"]["category"]
    specialist = specialist_for(category)
    previous = state["ticket"].get("status", "open")
    if ctx.claim is not None:
        previous = await outcome.mark_in_progress(
            ctx.pool,
            ctx.claim,
            category=category,
            priority=state["prioritization"]["priority"],
            assigned_agent=specialist.name,
        )
    reasons = [f"category {category} goes to {specialist.name}", f"status {previous} -> in_progress"]
    return {
        "dispatch": {
            "assigned_agent": specialist.name,
            "status": "in_progress",
            "previous_status": previous,
            "reasons": reasons,
        }
    }


# --- the resolution agent -----------------------------------------------------------------------------------


def _event_summary(event: dict[str, Any]) -> str:
    data = event.get("data") or {}
    detail = ", ".join(f"{k}={v}" for k, v in list(data.items())[:3]) if isinstance(data, dict) else ""
    return f"{event.get('kind')} at {event.get('occurred_at')}" + (f" ({detail})" if detail else "")


@traced("load_context")
async def load_context(state: AgentState, *, runtime: Runtime[Context]) -> dict[str, Any]:
    """What the assigned specialist knows about the customer: its kind of events, earlier tickets and their
    resolutions, and the signals those add up to."""
    account = state.get("account", {})
    specialist = specialist_for(state["classification"]["category"])
    now = datetime.now(UTC)
    events = []
    for event in account.get("events") or []:
        occurred = event.get("occurred_at")
        age = None
        if isinstance(occurred, str):
            try:
                age = (now - datetime.fromisoformat(occurred)).total_seconds() / 86400
            except ValueError:
                age = None
        if wants_event(specialist, str(event.get("kind", ""))) and (age is None or age <= specialist.event_days):
            events.append(event)
    prior = account.get("prior_tickets") or []
    signals: list[str] = []
    tier = account.get("tier")
    if tier:
        signals.append(f"{tier} tier")
    for event in events[:3]:
        signals.append(_event_summary(event))
    if account.get("repeated_contact"):
        signals.append("the customer reported a similar problem before")
    if account.get("earlier_replies"):
        signals.append(f"{account['earlier_replies']} earlier replies on this ticket")
    open_prior = [p for p in prior if p.get("status") in {"open", "in_progress", "pending_customer"}]
    if open_prior:
        signals.append(f"{len(open_prior)} other open tickets")
    return {
        "context": {
            "specialist": specialist.name,
            "customer": {
                "tier": tier,
                "trial": runtime.context.settings.tiers.is_trial(tier),
                "name": state["ticket"].get("customer_name") or account.get("name"),
            },
            "events": events[:10],
            "prior_tickets": prior[:5],
            "signals": signals,
        }
    }


async def _resolution_with_issue(ctx: Context, embedding: Any, intent: str) -> RetrievedItem | None:
    """The past resolution of `intent` closest to the ticket, for when hybrid retrieval did not surface one."""
    async with ctx.pool.acquire() as conn, conn.transaction():
        # Exact: an HNSW scan filtered by intent may find none of that intent among its candidates.
        await conn.execute("SET LOCAL enable_indexscan = off")
        row = await conn.fetchrow(
            """SELECT id, ticket_text, resolution, category, intent, source, source_ref, priority, tags, language,
                      ticket_id, metadata, 1 - (embedding <=> $1) AS similarity
               FROM past_resolutions WHERE intent = $2 ORDER BY embedding <=> $1 LIMIT 1""",
            embedding,
            intent,
        )
    if row is None:
        return None
    metadata = dict(row["metadata"] or {})
    metadata.update(
        source_ref=row["source_ref"],
        priority=row["priority"],
        tags=list(row["tags"] or []),
        language=row["language"],
        ticket_id=str(row["ticket_id"]) if row["ticket_id"] else None,
    )
    first_line = next((ln for ln in row["ticket_text"].splitlines() if ln.strip()), row["ticket_text"])
    return RetrievedItem(
        kind="resolution",
        id=row["id"],
        title=shorten(first_line, 100),
        text=row["ticket_text"],
        resolution=row["resolution"],
        category=row["category"],
        intent=row["intent"],
        source=row["source"],
        similarity=float(row["similarity"]),
        text_rank=None,
        vector_rank=None,
        score=0.0,
        metadata=metadata,
    )


def choose_grounding(
    resolutions: list[RetrievedItem], prediction: RoutingPrediction | None, category: str, use_intents: bool
) -> Grounding:
    """The past resolution the reply rests on: the closest one of the predicted issue when the history has
    issue labels, else the closest one, preferring the ticket's category among near ties."""
    if not resolutions:
        return Grounding(None, None, "no past resolution retrieved")
    by_similarity = sorted(resolutions, key=lambda r: -(r.similarity or 0.0))
    if use_intents and prediction is not None and prediction.intent:
        same = [r for r in by_similarity if r.intent == prediction.intent]
        if same:
            return Grounding(
                same[0], prediction.intent, f"closest resolution of the predicted issue {prediction.intent}"
            )
    best = by_similarity[0]
    near = [r for r in by_similarity if r.category == category and (r.similarity or 0) >= (best.similarity or 0) - 0.02]
    chosen = near[0] if near else best
    return Grounding(chosen, chosen.intent, "closest past resolution" + (" of this category" if near else ""))


@traced("retrieve")
async def retrieve(state: AgentState, *, runtime: Runtime[Context]) -> dict[str, Any]:
    ctx = runtime.context
    settings = ctx.settings
    category = state["classification"]["category"]
    specialist = specialist_for(category)
    text = ticket_text(state["ticket"])
    embedding = state["embedding"]
    k = max(settings.retrieve_k * 2, 12)
    async with ctx.pool.acquire() as conn:
        items = await search(
            conn,
            query_embedding=embedding,
            query_text=text,
            k=k,
            ef_search=settings.hnsw_ef_search,
            candidates=max(40, k),
        )

    # The specialist prefers material of its own category; uncategorised KB articles apply everywhere.
    def boosted(item: RetrievedItem) -> float:
        same = item.category == category or (item.kind == "kb_chunk" and item.category is None)
        return item.score * (specialist.category_boost if same else 1.0)

    items = sorted(items, key=lambda i: -boosted(i))
    prediction: RoutingPrediction | None = state.get("prediction")
    # The models that classified this ticket decide, even if a refit finished since.
    use_intents = bool(prediction is not None and prediction.intent_probs)
    resolutions = [i for i in items if i.kind == "resolution"]
    if not resolutions:
        # KB passages filled the fused list: still look at the closest past tickets.
        async with ctx.pool.acquire() as conn:
            nearest = await nearest_resolutions(conn, embedding, k=3, ef_search=settings.hnsw_ef_search)
        items.extend(nearest)
        resolutions.extend(nearest)
    if (
        use_intents
        and prediction is not None
        and prediction.intent
        and not any(r.intent == prediction.intent for r in resolutions)
    ):
        extra = await _resolution_with_issue(ctx, embedding, prediction.intent)
        if extra is not None:
            items.append(extra)
            resolutions.append(extra)
    grounding = choose_grounding(resolutions, prediction, category, use_intents)
    questions, evidence, across = await _read_knowledge(
        ctx, state["ticket"], embedding, items, state.get("multilingual_embedding")
    )
    return {
        "items": items,
        "grounding": grounding,
        "questions": questions,
        "evidence": evidence,
        "retrieval": {
            "items": [
                {
                    "kind": i.kind,
                    "id": str(i.id),
                    "title": i.title,
                    "preview": i.preview,
                    "category": i.category,
                    "intent": i.intent,
                    "source": i.source,
                    "similarity": round(i.similarity, 4) if i.similarity is not None else None,
                    "text_rank": i.text_rank,
                    "score": round(boosted(i), 6),
                }
                for i in items
            ],
            "primary": str(grounding.item.id) if grounding.item is not None else None,
            "grounding": grounding.how,
            "specialist": specialist.name,
            "mode": "knowledge" if evidence else "resolution",
            "read_across": across,
            "questions": [e.to_json() for e in evidence],
        },
    }


async def _read_knowledge(
    ctx: Context,
    ticket: TicketInput,
    embedding: Any,
    items: list[RetrievedItem],
    multilingual: np.ndarray | None = None,
) -> tuple[list[Question], list[Evidence], dict[str, str] | None]:
    """The ticket's questions and, for each, the knowledge-base passage that answers it (the reader).

    Each question gets its own search besides the ticket's: a second question is often about something the
    ticket as a whole is not closest to. A deployment without a knowledge base costs one empty search here. A
    ticket in another language than the help centre's is read, and its passages searched, with the multilingual
    model (`agent.drafting.crosslingual`) when the configured one reads English only; the third value then says so
    (the two languages and the model), for the trace. `multilingual`, the ticket's vector from that model when
    the risk detector computed it, is not computed again.
    """
    settings = ctx.settings
    passages = {i.id: i for i in items if i.kind == "kb_chunk"}
    async with ctx.pool.acquire() as conn:
        if not passages:
            found = await search(
                conn,
                query_embedding=embedding,
                query_text=ticket_text(ticket),
                kinds=("kb_chunk",),
                k=QUESTION_PASSAGES,
                ef_search=settings.hnsw_ef_search,
            )
            passages.update((i.id, i) for i in found)
        if not passages:
            return [], [], None
        questions = split_questions(ticket.get("subject") or "", latest_message(ticket))
        if not questions:
            return [], [], None
        # One encode for the questions and, of a question asking several things, its parts.
        parts = [q.parts if len(q.parts) > 1 else [] for q in questions]
        texts = [q.query for q in questions] + [p for ps in parts for p in ps]
        english = await ctx.embeddings.reader.encode_questions(texts)
        reading = _Reading.of(ctx.embeddings.reader, embedding, english, parts)
        for text, vector in zip(texts[: len(questions)], reading.questions, strict=True):
            found = await search(
                conn,
                query_embedding=vector,
                query_text=text,
                kinds=("kb_chunk",),
                k=QUESTION_PASSAGES,
                ef_search=settings.hnsw_ef_search,
            )
            passages.update((i.id, i) for i in found)
        # A ticket in another language than the help centre's: read with the multilingual model too, when it loads.
        across = None
        crosslingual = ctx.embeddings.crosslingual
        apart = _languages_apart(ticket, list(passages.values())) if crosslingual is not None else None
        joint = await crosslingual.reader() if crosslingual is not None and apart is not None else None
        if crosslingual is not None and apart is not None and joint is not None:
            # The passages found so far stay: a product word, a code or a menu label is found in any language.
            # The English half of the joint vectors is what was just computed: only the multilingual model runs.
            encoded = await crosslingual.encode(
                [ticket_text(ticket), *texts], np.vstack([embedding, english]), first=multilingual
            )
            reading = _Reading.of(joint, encoded[0], encoded[1:], parts)
            queries = np.vstack([reading.ticket, reading.questions])
            everything, stored = await help_centre_passages(conn)
            found = await crosslingual.nearest(everything, stored, queries, QUESTION_PASSAGES)
            passages.update((i.id, i) for i in found)
            across = {**apart, "model": joint.embedder.name}
        # Each article's opening paragraph, quoted beside the section the reader chose when it answers too.
        leads = await article_leads(conn, list(dict.fromkeys(UUID(document_of(i)) for i in passages.values())))
    evidence = await reading.read(questions, list(passages.values()), leads)
    # A question asking several things looks for its further parts in every section of the article it chose:
    # fetched for those articles only, then read again (the passages' units are cached by then).
    chosen = [e.item for e, p in zip(evidence, reading.parts, strict=True) if p is not None and e.item is not None]
    if chosen:
        async with ctx.pool.acquire() as conn:
            sections = await article_sections(conn, list(dict.fromkeys(UUID(document_of(i)) for i in chosen)))
        evidence = await reading.read(questions, list(passages.values()), sections)
    return questions, evidence, across


@dataclass(frozen=True)
class _Reading:
    """A ticket as one model reads it: the model's reader, and the ticket's, its questions' and (of a question
    asking several things) its parts' vectors."""

    reader: Reader
    ticket: np.ndarray
    questions: np.ndarray
    parts: list[np.ndarray | None]

    @classmethod
    def of(cls, reader: Reader, ticket: np.ndarray, encoded: np.ndarray, parts: list[list[str]]) -> _Reading:
        """`encoded`: the questions' vectors, then their parts' in order."""
        at = len(parts)
        part_vectors: list[np.ndarray | None] = []
        for ps in parts:
            part_vectors.append(encoded[at : at + len(ps)] if ps else None)
            at += len(ps)
        return cls(reader, ticket, encoded[: len(parts)], part_vectors)

    async def read(
        self, questions: list[Question], passages: list[RetrievedItem], sections: list[RetrievedItem] | None = None
    ) -> list[Evidence]:
        return await self.reader.read(
            questions, self.questions, self.ticket, passages, part_vectors=self.parts, sections=sections or ()
        )


def _languages_apart(ticket: TicketInput, passages: list[RetrievedItem]) -> dict[str, str] | None:
    """The ticket's language and the help centre's (as the passages found for the ticket are written) when they
    differ; else None."""
    help_centre = language_of(" ".join(p.text for p in passages[:QUESTION_PASSAGES]))
    language = language_of(ticket_text(ticket))
    return {"ticket_language": language, "help_centre_language": help_centre} if language != help_centre else None


@traced("draft")
async def draft(state: AgentState, *, runtime: Runtime[Context]) -> dict[str, Any]:
    ctx = runtime.context
    ticket = state["ticket"]
    items: list[RetrievedItem] = state.get("items", [])
    grounding: Grounding = state["grounding"]
    request = DraftRequest(
        ticket=ticket,
        category=state["classification"]["category"],
        priority=state["prioritization"]["priority"],
        specialist=specialist_for(state["classification"]["category"]),
        customer_name=ticket.get("customer_name") or state.get("account", {}).get("name"),
        grounding=grounding.item,
        resolutions=[i for i in items if i.kind == "resolution"],
        passages=[i for i in items if i.kind == "kb_chunk"],
        context=state.get("context", {}),
        risks=list(state.get("risks", [])),
        evidence=list(state.get("evidence") or []),
        language=language_of(ticket_text(ticket)),
        support_email=parseaddr(ctx.settings.smtp_from)[1] or None,
    )
    result: Draft = await ctx.drafter.draft(request)
    if result.fell_back and ctx.fallback_drafter is not None:
        failed = result
        result = await ctx.fallback_drafter.draft(request)
        if failed.detail.get("error_kind") == NOT_ASKED:
            result.notes.append(f"the model was not asked ({failed.error}); offline drafter used")
        else:
            result.notes.append(f"LLM failed ({failed.error}); offline drafter used")
        result.model = {**result.model, "llm": failed.model}
    drafted: dict[str, Any] = {
        "draft": result.text,
        "citations": result.citations,
        "drafter": result.drafter,
        "grounded": result.grounded,
        "removed": result.removed,
        "violations": result.violations,
        "model": result.model,
    }
    if result.template is not None:
        drafted["template"] = result.template
    if result.prompt is not None:
        drafted["prompt"] = result.prompt
    if result.notes:
        drafted["notes"] = result.notes
    if result.detail:
        drafted["llm"] = result.detail
    if result.escalate:
        drafted["escalate"] = result.escalate_reasons or ["the drafter asked for a person"]
    return {"drafted": drafted, "draft_result": result}


def _gate(risks: list[Risk], drafted: dict[str, Any]) -> tuple[str | None, list[str], bool]:
    """Decision gates no confidence overrides: risky tickets, guard violations, drafter escalations, nothing
    to send. Returns (gate, reasons, retryable): only a missing answer can change with a later cycle."""
    reasons = [r.describe() for r in risks]
    action = strongest_action(risks)
    gate: str | None = None
    retryable = True
    if action in {"escalate", "escalate_urgent"}:
        gate, retryable = "escalate", False
    elif action == "review":
        gate = "review"
    if drafted.get("violations"):
        gate, retryable = "escalate", False
        reasons += [f"reply failed the guard: {v}" for v in drafted["violations"]]
    if drafted.get("escalate"):
        gate, retryable = "escalate", False
        reasons += list(drafted["escalate"])
    if not drafted.get("grounded"):
        gate = "escalate"
        reasons.append("nothing to ground a reply in: no past resolution or KB passage with reply text")
    if gate is None and (review := review_reasons(drafted.get("draft") or "")):
        gate = "review"
        reasons += review
    return gate, reasons, retryable


@traced("score")
async def score(state: AgentState, *, runtime: Runtime[Context]) -> dict[str, Any]:
    ctx = runtime.context
    settings = ctx.settings
    prediction: RoutingPrediction | None = state.get("prediction")
    # The models that classified this ticket decide, even if a refit finished since.
    use_intents = bool(prediction is not None and prediction.intent_probs)
    grounding: Grounding = state["grounding"]
    evidence: list[Evidence] = list(state.get("evidence") or [])
    if evidence:
        signals = knowledge_signals(
            evidence,
            category_certainty=state["classification"]["certainty"],
            floor=ANSWER_FLOOR,
            items=state.get("items", []),
        )
    else:
        signals = compute_signals(
            grounding=grounding,
            neighbours=prediction.neighbours if prediction else [],
            intent_probs=prediction.intent_probs if prediction else {},
            category=state["classification"]["category"],
            category_certainty=state["classification"]["certainty"],
            use_intents=use_intents,
        )
    result: Draft | None = state.get("draft_result")
    drafted = state["drafted"]
    scored = score_confidence(
        signals,
        ctx.calibration,
        use_intents=use_intents,
        knowledge=bool(evidence),
        self_assessment=result.self_assessment if result is not None else None,
        grounded=bool(drafted.get("grounded")),
    )
    risks: list[Risk] = list(state.get("risks", []))
    gate, gate_reasons, retryable = _gate(risks, drafted)
    return {
        "scoring": {
            "confidence": scored.confidence,
            "raw_score": scored.raw_score,
            "calibrated": scored.calibrated,
            "breakdown": scored.breakdown,
            "signals": {k: round(v, 4) for k, v in signals.items()},
            "model": "knowledge" if evidence else "with_intents" if use_intents else "without_intents",
            "risks": [r.describe() for r in risks],
            "risk_kinds": sorted({r.kind for r in risks}),
            "gate": gate,
            "gate_reasons": gate_reasons,
            "retryable": retryable,
            "thresholds": {"auto_resolve": settings.auto_resolve_threshold, "review": settings.review_threshold},
            "calibration_version": ctx.calibration.meta.get("version"),
        }
    }


# --- decisions ----------------------------------------------------------------------------------------------


def _confidence_reason(scoring: dict[str, Any]) -> str:
    t = scoring["thresholds"]
    return (
        f"confidence {scoring['confidence']:.2f} (auto-resolve at {t['auto_resolve']:.2f}, review at {t['review']:.2f})"
    )


@traced("deliver")
async def deliver(state: AgentState, *, runtime: Runtime[Context]) -> dict[str, Any]:
    return await _reply(state, runtime, "deliver", [_confidence_reason(state["scoring"])])


@traced("flag_for_review")
async def flag_for_review(state: AgentState, *, runtime: Runtime[Context]) -> dict[str, Any]:
    scoring = state["scoring"]
    reasons = [_confidence_reason(scoring)]
    if scoring.get("gate") == "review":
        reasons = ["never auto-resolved: " + "; ".join(scoring["gate_reasons"]), *reasons]
    return await _reply(state, runtime, "flag_for_review", reasons)


async def _reply(state: AgentState, runtime: Runtime[Context], decision: Any, reasons: list[str]) -> dict[str, Any]:
    ctx = runtime.context
    delivery_id: UUID | None = None
    if ctx.claim is not None and ctx.attempt_id is not None:
        delivery_id = await outcome.commit_reply(
            ctx.pool, ctx.settings, ctx.claim, ctx.attempt_id, state, decision=decision, reasons=reasons
        )
    if ctx.metrics is not None:
        ctx.metrics.attempts.labels(decision).inc()
    held = ctx.claim is not None and delivery_id is None  # shadow mode: nothing sent, held for a reviewer
    return {
        "outcome": {
            "decision": decision,
            "reasons": [outcome.SHADOW_REASON, *reasons] if held else reasons,
            "delivery_id": str(delivery_id) if delivery_id else None,
            "status": "pending_customer" if held else "resolved",
            "flagged": decision == "flag_for_review",
            "mode": "shadow" if held else "live",
        }
    }


@traced("escalate")
async def escalate(state: AgentState, *, runtime: Runtime[Context]) -> dict[str, Any]:
    ctx = runtime.context
    scoring = state["scoring"]
    reasons = list(scoring.get("gate_reasons") or []) if scoring.get("gate") == "escalate" else []
    reasons.append(_confidence_reason(scoring))
    # A re-run cannot change a demand, an injection, an incident report or a refused reply: those wait for a
    # person. Low confidence and missing answers can change when the knowledge base grows: more cycles.
    retryable = bool(scoring.get("retryable", True))
    plan: dict[str, Any] = {"retry": False}
    if ctx.claim is not None and ctx.attempt_id is not None:
        plan = await outcome.commit_escalation(
            ctx.pool, ctx.settings, ctx.claim, ctx.attempt_id, state, reasons=reasons, retryable=retryable
        )
    if ctx.metrics is not None:
        ctx.metrics.attempts.labels("escalate").inc()
    if plan.get("retry"):
        reasons.append(f"another cycle in {plan['retry_in_s']:.0f}s (cycle {plan['cycle']})")
    elif ctx.claim is not None:
        reasons.append("left for manual review")
    return {
        "outcome": {
            "decision": "escalate",
            "reasons": reasons,
            "delivery_id": None,
            "status": "pending_customer",
            "retryable": retryable,
            "retry": plan,
        }
    }
