"""What the trace page needs on top of the JSON trace: timeline geometry, citation anchors, confidence view.

Nothing here queries the database or changes a value: the page renders the dict `tickets.trace.get_trace`
returns (the JSON of `GET /api/tickets/{id}/trace`), and this module only derives layout from it. Node outputs
follow the table in docs/architecture.md; a key missing from an output is shown as missing, never invented.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from agent.state import handed_over_questions
from core.settings import Settings

# The graph's nodes in the order they run (agent/graph.py); the last three are the alternative decisions.
PIPELINE_NODES = ("classify", "prioritize", "dispatch", "load_context", "retrieve", "draft", "score")
DECISION_NODES = ("deliver", "flag_for_review", "escalate")
ITEM_KINDS = {"kb_chunk": "KB chunk", "resolution": "past resolution"}
# A bar never shrinks below this share of the axis, so a sub-millisecond node is still visible.
MIN_BAR_PCT = 0.4


def present_trace(trace: dict[str, Any], settings: Settings) -> dict[str, Any]:
    attempts = trace.get("attempts") or []
    views = [present_attempt(attempt, index, settings) for index, attempt in enumerate(attempts, start=1)]
    return {
        "state": ticket_state(trace["ticket"], attempts),
        "attempts": views,
        "review": review_target(attempts),
    }


def review_target(attempts: list[dict[str, Any]]) -> dict[str, Any]:
    """The attempt a reviewer acts on: the latest that finished (as `review.submit` picks it)."""
    for attempt in reversed(attempts):
        if attempt.get("state") not in ("running", "abandoned"):
            draft_step = next((s for s in attempt.get("steps") or [] if s["node"] == "draft"), None)
            step_draft = (draft_step.get("output") or {}).get("draft") if draft_step else None
            return {
                "decision": attempt.get("decision"),
                "draft": attempt.get("draft") or step_draft,
                "mode": attempt.get("mode"),
            }
    return {"decision": None, "draft": None, "mode": None}


def ticket_state(ticket: dict[str, Any], attempts: list[dict[str, Any]]) -> dict[str, Any]:
    """Where the ticket is in the pipeline, in words, for the banner at the top of the page."""
    latest = attempts[-1] if attempts else None
    if ticket.get("parked_at"):
        return {
            "key": "parked",
            "label": "parked after repeated failures: left for manual review",
            "detail": ticket.get("last_error"),
        }
    if latest is not None and latest.get("state") == "running":
        return {
            "key": "running",
            "label": "running",
            "detail": f"attempt {latest.get('attempt_no')} in progress",
        }
    if ticket.get("next_attempt_at") is not None:
        if latest is None:
            return {"key": "queued", "label": "queued, waiting for a worker", "detail": None}
        return {
            "key": "requeued",
            "label": "re-queued for another cycle",
            "detail": ticket["next_attempt_at"],
        }
    if latest is None:
        return {"key": "idle", "label": "no resolution attempt yet", "detail": None}
    return {"key": "settled", "label": latest.get("state") or "", "detail": None}


def present_attempt(attempt: dict[str, Any], index: int, settings: Settings) -> dict[str, Any]:
    prefix = f"att{index}"
    steps: list[dict[str, Any]] = attempt.get("steps") or []
    outputs = {step["node"]: output_of(step) for step in steps}

    retrieve = outputs.get("retrieve", {})
    items = retrieve.get("items") if "retrieve" in outputs else attempt.get("retrieved")
    items = [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []
    anchors: dict[str, str] = {}
    for number, item in enumerate(items, start=1):
        anchors.setdefault(str(item.get("id")), f"{prefix}-item{number}")

    draft_output = outputs.get("draft", {})
    citation_ids = draft_output.get("citations") if "draft" in outputs else attempt.get("citations")
    if not isinstance(citation_ids, list):
        citation_ids = []
    reading = reading_view(retrieve.get("questions"), draft_output, anchors)
    # A passage read beside the retrieved ones (an article's lead or another section) is titled from the reading.
    read_titles = {str(quote["id"]): quote["title"] for q in reading for quote in q["quotes"]}
    citations = [
        {"id": cid, "anchor": anchors.get(str(cid)), "title": _title_of(items, cid) or read_titles.get(str(cid))}
        for cid in citation_ids or []
    ]

    done = {step["node"] for step in steps}
    running = attempt.get("state") == "running"
    return {
        "index": index,
        "prefix": prefix,
        "timeline": timeline(attempt, steps, prefix),
        "retrieved_items": [
            {**item, "anchor": f"{prefix}-item{n}", "kind_label": kind_label(item.get("kind"))}
            for n, item in enumerate(items, start=1)
        ],
        "reading": reading,
        "citations": citations,
        # A ticket read in another language than the help centre's: the two languages and the model that read it.
        "read_across": retrieve.get("read_across"),
        "confidence": confidence_view(attempt, outputs.get("score"), settings),
        "decision": decision_view(attempt, steps),
        "pending_nodes": [node for node in PIPELINE_NODES if node not in done] if running else [],
        "total_ms": _elapsed_ms(attempt.get("started_at"), attempt.get("finished_at")),
    }


def output_of(step: dict[str, Any]) -> dict[str, Any]:
    output = step.get("output")
    return output if isinstance(output, dict) else {}


def kind_label(kind: Any) -> str:
    return ITEM_KINDS.get(str(kind), str(kind or "item"))


def timeline(attempt: dict[str, Any], steps: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    """One bar per node: placed where the node started, as long as it ran, on an axis spanning the run."""
    starts: list[datetime] = [s["started_at"] for s in steps if isinstance(s.get("started_at"), datetime)]
    origin = attempt.get("started_at")
    if starts and not (isinstance(origin, datetime) and origin <= min(starts)):
        origin = min(starts)
    placed: list[tuple[dict[str, Any], float, float]] = []
    end_of_previous = 0.0
    for step in steps:
        duration = float(step.get("duration_ms") or 0.0)
        started = step.get("started_at")
        if isinstance(started, datetime) and isinstance(origin, datetime):
            offset = max((started - origin).total_seconds() * 1000, 0.0)
        else:  # no usable clock: lay the nodes end to end
            offset = end_of_previous
        placed.append((step, offset, duration))
        end_of_previous = offset + duration
    span = max((offset + duration for _, offset, duration in placed), default=0.0) or 1.0
    bars = []
    for step, offset, duration in placed:
        x = min(offset / span * 100, 100.0 - MIN_BAR_PCT)
        width = min(max(duration / span * 100, MIN_BAR_PCT), 100.0 - x)
        bars.append(
            {
                "node": step["node"],
                "seq": step.get("seq"),
                "duration_ms": step.get("duration_ms"),
                "error": step.get("error"),
                "x": round(x, 2),
                "width": round(width, 2),
                "anchor": f"{prefix}-{step['node']}-{step.get('seq')}",
            }
        )
    return bars


def confidence_view(attempt: dict[str, Any], score: dict[str, Any] | None, settings: Settings) -> dict[str, Any] | None:
    """The score node's output (or the attempt's final values) with the thresholds it was judged against."""
    if score is None:
        if attempt.get("confidence") is None:
            return None
        score = {
            "confidence": attempt.get("confidence"),
            "breakdown": attempt.get("confidence_breakdown") or {},
        }
    thresholds = score.get("thresholds") if isinstance(score.get("thresholds"), dict) else None
    recorded = thresholds is not None
    thresholds = thresholds or {}
    review = thresholds.get("review", settings.review_threshold)
    auto = thresholds.get("auto_resolve", settings.auto_resolve_threshold)
    breakdown = score.get("breakdown")
    signals: list[dict[str, Any]] = []
    if not isinstance(breakdown, dict):
        breakdown = {}
    for name, detail in breakdown.items():
        if not isinstance(detail, dict):
            detail = {"value": detail}
        signals.append({"name": name, **{k: detail.get(k) for k in ("value", "weight", "contribution", "note")}})
    signals.sort(key=lambda signal: -_magnitude(signal["contribution"]))
    confidence = score.get("confidence")
    return {
        "confidence": confidence,
        "raw_score": score.get("raw_score"),
        "review": review,
        "auto_resolve": auto,
        "thresholds_recorded": recorded,
        "zone": _zone(confidence, review, auto),
        "signals": signals,
        "risks": score.get("risks") or [],
    }


def decision_view(attempt: dict[str, Any], steps: list[dict[str, Any]]) -> dict[str, Any] | None:
    step = next((s for s in reversed(steps) if s["node"] in DECISION_NODES), None)
    output = output_of(step) if step is not None else {}
    decision = output.get("decision") or (step["node"] if step is not None else None) or attempt.get("decision")
    if decision is None:
        return None
    reasons = output.get("reasons") if step is not None else attempt.get("decision_reasons")
    return {
        "decision": decision,
        "reasons": reasons or [],
        "delivery_id": output.get("delivery_id"),
        "node": step["node"] if step is not None else None,
    }


def _zone(confidence: Any, review: Any, auto: Any) -> str:
    if not isinstance(confidence, int | float) or not isinstance(review, int | float):
        return "unknown"
    if isinstance(auto, int | float) and confidence >= auto:
        return "auto"
    return "review" if confidence >= review else "escalate"


def _magnitude(value: Any) -> float:
    return abs(float(value)) if isinstance(value, int | float) and not isinstance(value, bool) else -1.0


def reading_view(questions: Any, drafted: dict[str, Any], anchors: dict[str, str]) -> list[dict[str, Any]]:
    """What the reader did for each of the ticket's questions (the retrieve step's `questions`): the passages it
    quoted and the sentences, how sure it was, and whether the reply answered the question or handed it over."""
    if not isinstance(questions, list):
        return []
    handed_over = set(handed_over_questions(drafted))
    out: list[dict[str, Any]] = []
    for question in questions:
        if not isinstance(question, dict):
            continue
        chosen = [question] if question.get("passage") else []
        more = [m for m in question.get("more") or [] if isinstance(m, dict)]
        quotes = [
            {
                "id": quote.get("passage"),
                "title": quote.get("title"),
                "units": [u for u in quote.get("units") or [] if isinstance(u, str)],
                "anchor": anchors.get(str(quote.get("passage"))),
            }
            for quote in [*chosen, *more]
        ]
        score, runner_up = question.get("score"), question.get("runner_up")
        margin = score - runner_up if isinstance(score, int | float) and isinstance(runner_up, int | float) else None
        out.append(
            {
                "question": question.get("question"),
                "quotes": quotes,
                "score": score,
                "best_unit": question.get("best_unit"),
                "margin": margin,
                "handed_over": question.get("question") in handed_over,
            }
        )
    return out


def _title_of(items: list[dict[str, Any]], item_id: Any) -> str | None:
    for item in items:
        if str(item.get("id")) == str(item_id):
            title = item.get("title")
            return str(title) if title else None
    return None


def _elapsed_ms(started: Any, finished: Any) -> float | None:
    if isinstance(started, datetime) and isinstance(finished, datetime):
        return (finished - started).total_seconds() * 1000
    return None
