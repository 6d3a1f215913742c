"""`deskpilot eval --llm`: the offline drafter and the LLM drafter side by side on the same tickets, in one run.

Both drafters work behind the same routing, retrieval, reader, scoring and gates, over one scratch database: the
tickets run once with the offline drafter and once with the LLM drafter (whose failures fall back to the offline
one, as in production). Each draft is timed and kept with the request it answered, so every reply, whoever wrote
it, is checked the same way: the sentences of the reply as it would go out that no passage the drafter was given
supports (`agent.drafting.support.check_support` against every knowledge-base passage and past resolution of the
request). For the LLM also: the sentences its own check removed before the reply could go out, tokens in and
out, fallbacks, the structured-output method and the token counter used.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent.drafting.composer import short_ref
from agent.drafting.drafter import OfflineDrafter
from agent.drafting.llm import DraftResult, LLMDrafter, make_llm_drafter
from agent.drafting.prompts import passage_text
from agent.drafting.questions import SIGNOFF
from agent.drafting.request import NOT_ASKED, Draft, Drafter, DrafterName, DraftRequest
from agent.drafting.support import check_support
from agent.quality.evaluation import (
    SENT,
    DeploymentFiles,
    DeploymentResult,
    LabelledTicket,
    Progress,
    TicketResult,
    deployment_result,
    encode_all,
    expected_calibration_error,
    history_and_evaluation,
    load_deployment,
    load_history,
    offline_accounts,
    read_deployment_set,
    run_tickets,
    sample_deployment,
    score_deployment,
    scratch_processor,
    summarize,
)
from agent.runner import TicketProcessor, run_graph_offline
from agent.state import ticket_text
from core import db
from core.settings import Settings
from knowledge.embedder import Embedder, get_embedder
from knowledge.retrieval import RetrievedItem

log = logging.getLogger("deskpilot.eval")

DRAFTERS: tuple[DrafterName, ...] = ("offline", "llm")


@dataclass
class DraftRecord:
    """One draft as the evaluation saw it: the request, the seconds it took, the LLM's own result if any."""

    request: DraftRequest
    seconds: float
    llm: DraftResult | None = None


class TimedDrafter:
    """A drafter that remembers every draft it wrote, in order (the evaluation runs one ticket at a time)."""

    def __init__(self, inner: Drafter) -> None:
        self.inner = inner
        self.name: DrafterName = inner.name
        self.records: list[DraftRecord] = []

    async def draft(self, request: DraftRequest) -> Draft:
        started = time.perf_counter()
        if isinstance(self.inner, LLMDrafter):
            result = await self.inner.write(request)
            self.records.append(DraftRecord(request, time.perf_counter() - started, result))
            return result.to_draft()
        draft = await self.inner.draft(request)
        self.records.append(DraftRecord(request, time.perf_counter() - started))
        return draft


def request_passages(request: DraftRequest) -> dict[str, str]:
    """Every passage a drafter was given, by the reference a reply shows for it: the reader's choices, their
    second quotes and its candidates, the retrieved knowledge-base passages, the past resolutions."""
    items: list[RetrievedItem] = []
    for ev in request.evidence:
        items += [q.item for q in ev.quotes]
        items += [c.item for c in ev.candidates]  # what a model choosing sentences is shown
        if ev.item is not None:
            items.append(ev.item)
    items += [i for i in [request.grounding, *request.resolutions, *request.passages] if i is not None]
    return {short_ref(str(i.id), i.kind): passage_text(i) for i in items}


# The frame of a reply, left out before the check: a reference line "(Source: Title, KB-1a2b3c4d)", a question
# quoted back "You asked “…”:", and the team's name under the sign-off.
_REFERENCE_LINE = re.compile(r"^\((?:[^()]*[\s,:])?(?:KB|R)-[0-9a-f]{4,12}(?:,\s*(?:KB|R)-[0-9a-f]{4,12})*\)$")
_QUOTED = re.compile(r"\u201c[^\u201d]*\u201d")


def reply_body(reply: str, ticket: str) -> str:
    """The reply without its frame: reference lines, the customer's questions quoted back (a line that is only a
    quotation of the ticket and a few words), and whatever follows the sign-off."""
    asked = " ".join(ticket.split()).casefold()
    lines: list[str] = []
    for line in reply.splitlines():
        stripped = line.strip()
        if SIGNOFF.match(stripped):
            break
        if _REFERENCE_LINE.match(stripped):
            continue
        quotes = _QUOTED.findall(stripped)
        rest = _QUOTED.sub("", stripped)
        echoed = quotes and all(" ".join(q.strip("\u201c\u201d").split()).casefold() in asked for q in quotes)
        if echoed and len(rest.split()) <= 4:  # "You asked “…”:", "Sie fragten “…”:"
            continue
        lines.append(line)
    return "\n".join(lines).strip()


def unsupported_sentences(reply: str, request: DraftRequest) -> list[str]:
    """The factual sentences of `reply` that no passage of the request supports (the same check for both
    drafters, on the reply without its frame: the LLM reply has had its labels taken out, so every passage
    stands as cited)."""
    reply = reply_body(reply, ticket_text(request.ticket))
    if not reply:
        return []
    passages = request_passages(request)
    check = check_support(
        reply,
        passages=passages,
        cited=list(passages),
        ticket=ticket_text(request.ticket),
        customer_name=request.customer_name,
    )
    return [s.text for s in check.removed]


def percentile(values: Sequence[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


@dataclass
class DrafterRow:
    """One ticket through one drafter, reduced to what the side-by-side report needs."""

    id: str
    decision: str
    confidence: float
    reply: str
    right: bool | None  # the reply is right (None: the set cannot say)
    answered_right: bool | None  # sent and right
    seconds: float
    unsupported: list[str]
    facts: tuple[int, int] | None = None  # (required facts present, required facts) on answerable tickets
    kind: str | None = None
    llm: dict[str, Any] = field(default_factory=dict)

    @property
    def sent(self) -> bool:
        return self.decision in SENT


def _llm_row(record: DraftRecord, state_drafter: str) -> dict[str, Any]:
    result = record.llm
    if result is None:
        return {}
    return {
        "drafter": state_drafter,  # "offline" when the LLM failed and the offline drafter replied
        "ok": result.ok,
        "error_kind": result.error_kind,
        "fell_back": result.fell_back,
        "escalate": result.escalate,
        "escalate_reasons": result.escalate_reasons,
        "needs_human": result.needs_human,
        "written_unsupported": list(result.removed),
        "prompt_tokens": result.usage.get("prompt_tokens", 0),
        "completion_tokens": result.usage.get("completion_tokens", 0),
        "prompt_tokens_estimate": result.prompt_tokens_estimate,
        "token_source": result.token_source,
        "structured_output": result.structured_output,
        "attempts": result.attempts,
        "latency_ms": result.latency_ms,
        "self_confidence": result.self_confidence,
        "confidence_factor": result.confidence_factor,
        "mode": result.mode,
        "disputed_by_model": len(result.quote.get("disputed") or []),
        "sentences_added_by_model": sum(len(ids) for ids in (result.quote.get("added") or {}).values()),
        "refused_ids": len(result.quote.get("refused") or []),
    }


def drafter_summary(rows: Sequence[DrafterRow]) -> dict[str, Any]:
    """The figures compared side by side, for one drafter."""
    n = len(rows)
    replies = [r for r in rows if r.reply.strip()]
    judged = [r for r in rows if r.right is not None]
    answerable = [r for r in rows if r.facts is not None]
    delivered = [r for r in rows if r.decision == "deliver"]
    seconds = [r.seconds for r in rows]
    summary: dict[str, Any] = {
        "n": n,
        "answered_right": sum(1 for r in rows if r.answered_right),
        "answered_right_rate": _mean([bool(r.answered_right) for r in (answerable or judged)]),
        "required_facts_present": _mean([p / t for p, t in (r.facts for r in answerable if r.facts)])
        if answerable
        else None,
        "unsupported_per_reply": _mean([len(r.unsupported) for r in replies]),
        "replies_with_unsupported": sum(1 for r in replies if r.unsupported),
        "sent_with_unsupported": sum(1 for r in rows if r.sent and r.unsupported),
        "auto_sent_with_unsupported": sum(1 for r in delivered if r.unsupported),
        "must_escalate_sent": sum(1 for r in rows if r.kind == "must_escalate" and r.sent) if answerable else None,
        "not_covered_sent": sum(1 for r in rows if r.kind == "not_covered" and r.sent) if answerable else None,
        "auto_resolve_rate": len(delivered) / n if n else None,
        "auto_resolve_precision": _mean([bool(r.right) for r in delivered if r.right is not None]),
        "escalate_rate": sum(1 for r in rows if r.decision == "escalate") / n if n else None,
        "ece": expected_calibration_error([r.confidence for r in judged], [bool(r.right) for r in judged]),
        "seconds_per_reply_p50": percentile(seconds, 50),
        "seconds_per_reply_p95": percentile(seconds, 95),
    }
    llm = [r.llm for r in rows if r.llm]
    if llm:
        tokens_in = [int(x["prompt_tokens"]) for x in llm]
        tokens_out = [int(x["completion_tokens"]) for x in llm]
        estimates = [x["prompt_tokens_estimate"] / x["prompt_tokens"] for x in llm if x["prompt_tokens"] and x["ok"]]
        summary.update(
            tokens_in_total=sum(tokens_in),
            tokens_out_total=sum(tokens_out),
            tokens_in_per_reply=_mean(tokens_in),
            tokens_out_per_reply=_mean(tokens_out),
            written_unsupported_per_reply=_mean([len(x["written_unsupported"]) for x in llm if x["ok"]]),
            llm_replies=sum(1 for x in llm if x["drafter"] == "llm"),
            not_asked=sum(1 for x in llm if x["error_kind"] == NOT_ASKED),
            fell_back=sum(1 for x in llm if x["fell_back"] and x["error_kind"] != NOT_ASKED),
            fell_back_by_kind=dict(
                Counter(str(x["error_kind"]) for x in llm if x["fell_back"] and x["error_kind"] != NOT_ASKED)
            ),
            escalated_by_llm_check=sum(1 for x in llm if x["ok"] and x["escalate"]),
            model_asked_for_a_person=sum(1 for x in llm if x["needs_human"]),
            questions_disputed_by_model=sum(int(x.get("disputed_by_model", 0)) for x in llm),
            sentences_added_by_model=sum(int(x.get("sentences_added_by_model", 0)) for x in llm),
            refused_ids=sum(int(x.get("refused_ids", 0)) for x in llm),
            reply_mode=dict(Counter(str(x.get("mode")) for x in llm)),
            structured_output=dict(Counter(str(x["structured_output"]) for x in llm)),
            token_counter=dict(Counter(str(x["token_source"]) for x in llm)),
            prompt_estimate_over_server_count=_mean(estimates),
        )
    else:
        summary.update(tokens_in_total=0, tokens_out_total=0, tokens_in_per_reply=0.0, tokens_out_per_reply=0.0)
    return summary


def _mean(values: Sequence[float] | Sequence[bool] | Sequence[int]) -> float | None:
    return float(np.mean(values)) if len(values) else None


# The rows of the printed table: (label, key, format) with format "%" (a share), "n" (a count) or "f" (a number).
SIDE_BY_SIDE: tuple[tuple[str, str, str], ...] = (
    ("answered right (sent, right)", "answered_right_rate", "%"),
    ("required facts present (answerable)", "required_facts_present", "%"),
    ("unsupported sentences per reply", "unsupported_per_reply", "f"),
    ("auto-sent replies with an unsupported sentence", "auto_sent_with_unsupported", "n"),
    ("sent replies with an unsupported sentence", "sent_with_unsupported", "n"),
    ("must-escalate tickets sent a reply", "must_escalate_sent", "n"),
    ("not-covered tickets sent a reply", "not_covered_sent", "n"),
    ("auto-resolve rate", "auto_resolve_rate", "%"),
    ("auto-resolve precision", "auto_resolve_precision", "%"),
    ("escalate rate", "escalate_rate", "%"),
    ("ECE (10 bins)", "ece", "f"),
    ("seconds per reply p50", "seconds_per_reply_p50", "f"),
    ("seconds per reply p95", "seconds_per_reply_p95", "f"),
    ("tokens in per reply", "tokens_in_per_reply", "f"),
    ("tokens out per reply", "tokens_out_per_reply", "f"),
    ("reply similarity to the gold answer", "reply_similarity", "f"),
)


def side_by_side(summaries: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"metric": label, "key": key, "format": kind, **{name: summaries[name].get(key) for name in summaries}}
        for label, key, kind in SIDE_BY_SIDE
        if any(summaries[name].get(key) is not None for name in summaries)
    ]


def _rows(
    records: Sequence[DraftRecord],
    finals: Sequence[tuple[str, str, float, str, str]],
    right: Sequence[bool | None],
    answered: Sequence[bool | None],
    facts: Sequence[tuple[int, int] | None],
    kinds: Sequence[str | None],
) -> list[DrafterRow]:
    if len(records) != len(finals):
        raise RuntimeError(f"{len(records)} drafts recorded for {len(finals)} tickets: the runs are out of step")
    rows = []
    for record, (ticket_id, decision, confidence, reply, drafter), r, a, f, k in zip(
        records, finals, right, answered, facts, kinds, strict=True
    ):
        rows.append(
            DrafterRow(
                id=ticket_id,
                decision=decision,
                confidence=confidence,
                reply=reply,
                right=r,
                answered_right=a,
                seconds=record.seconds,
                unsupported=unsupported_sentences(reply, record.request),
                facts=f,
                kind=k,
                llm=_llm_row(record, drafter),
            )
        )
    return rows


def _log_ticket(result: DeploymentResult, record: DraftRecord, drafter: str, offline: DeploymentResult) -> None:
    """One line per ticket as the LLM run goes: a long run that is stopped still says what it measured."""
    llm = record.llm
    line = {
        "id": result.id,
        "kind": result.kind,
        "offline": [offline.decision, offline.answered_right if offline.kind == "answerable" else None],
        "llm": [result.decision, result.answered_right if result.kind == "answerable" else None],
        "drafter": drafter,
        "seconds": round(record.seconds, 2),
        "tokens": [llm.usage.get("prompt_tokens", 0), llm.usage.get("completion_tokens", 0)] if llm else None,
        "removed": len(llm.removed) if llm else None,
        "error": llm.error_kind if llm else None,
        "escalate": llm.escalate_reasons[:2] if llm else None,
        "raw_tail": llm.raw_output[-300:] if llm and llm.error_kind else None,
    }
    log.info("eval ticket %s", json.dumps(line, ensure_ascii=False))


def llm_drafter_or_error(settings: Settings) -> LLMDrafter:
    drafter = make_llm_drafter(settings)
    if drafter is None:
        raise ValueError(
            "--llm needs a model: set OPENAI_BASE_URL (e.g. http://127.0.0.1:8092/v1 for `deskpilot llm serve`) "
            "or OPENAI_API_KEY, and DESKPILOT_LLM_MODEL"
        )
    return drafter


def _per_ticket(rows: dict[str, list[DrafterRow]]) -> list[dict[str, Any]]:
    out = []
    for i, offline in enumerate(rows["offline"]):
        llm = rows["llm"][i]
        out.append(
            {
                "id": offline.id,
                "kind": offline.kind,
                **{
                    name: {
                        "decision": row.decision,
                        "confidence": round(row.confidence, 4),
                        "right": row.right,
                        "seconds": round(row.seconds, 3),
                        "unsupported": row.unsupported,
                        "reply": row.reply,
                        **({"llm": row.llm} if row.llm else {}),
                    }
                    for name, row in (("offline", offline), ("llm", llm))
                },
            }
        )
    return out


def _with_drafters(
    processor: TicketProcessor, llm: LLMDrafter, embedder: Embedder
) -> tuple[TicketProcessor, TimedDrafter, TimedDrafter]:
    """The processor that ran with the offline drafter, and one like it, over the same database, routing models
    and calibration, with the LLM drafter."""
    offline = processor.drafter
    assert isinstance(offline, TimedDrafter)
    timed_llm = TimedDrafter(llm)
    twin = TicketProcessor(
        processor.pool,
        processor.settings,
        None,
        embedder=embedder,
        drafter=timed_llm,
        models=processor.models,
        calibration=processor.calibration,
    )
    return twin, offline, timed_llm


async def evaluate_deployment_side_by_side(
    dataset: Path,
    *,
    settings: Settings,
    deployment: DeploymentFiles,
    limit: int | None = None,
    seed: int = 0,
    database_url: str | None = None,
    embedder: Embedder | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """A deployment-shaped set against its deployment, each ticket through the offline and the LLM drafter."""
    started = time.perf_counter()
    llm = llm_drafter_or_error(settings)
    tickets = sample_deployment(read_deployment_set(dataset), limit, seed)
    embedder = embedder or get_embedder(settings.embedding_model)
    server_url = database_url or db.resolve_database_url(settings)
    vectors = await asyncio.to_thread(
        encode_all, embedder, [ticket_text(t.ticket) for t in tickets], progress, "embedding tickets"
    )

    async def load(conn: Any) -> dict[str, dict[str, Any]]:
        await load_deployment(conn, deployment, embedder=embedder)
        return await offline_accounts(conn)

    results: dict[str, list[DeploymentResult]] = {name: [] for name in DRAFTERS}
    finals: dict[str, list[tuple[str, str, float, str, str]]] = {name: [] for name in DRAFTERS}
    timings: dict[str, float] = {}
    offline_drafter = TimedDrafter(OfflineDrafter())
    try:
        async with scratch_processor(server_url, settings, embedder, load, drafter=offline_drafter) as (
            processor,
            accounts,
            run_timings,
        ):
            timings.update(run_timings)
            twin, offline, timed_llm = _with_drafters(processor, llm, embedder)
            for name, runner in (("offline", processor), ("llm", twin)):
                t0 = time.perf_counter()
                for i, item in enumerate(tickets):
                    account = accounts.get(item.ticket.get("customer_email") or "", {})
                    ticket = {**item.ticket, "account": account}
                    state = await run_graph_offline(runner, ticket, embedding=vectors[i])  # type: ignore[arg-type]
                    result = deployment_result(item, state)
                    results[name].append(result)
                    drafter = str(state["drafted"].get("drafter", name))
                    finals[name].append((item.id, result.decision, result.confidence, result.draft, drafter))
                    if name == "llm":
                        _log_ticket(result, timed_llm.records[-1], drafter, results["offline"][i])
                    if progress:
                        progress(f"tickets ({name})", i + 1, len(tickets))
                timings[f"graph_{name}_s"] = time.perf_counter() - t0
    finally:
        await llm.aclose()
    rows: dict[str, list[DrafterRow]] = {}
    reports: dict[str, dict[str, Any]] = {}
    for name, timed in (("offline", offline), ("llm", timed_llm)):
        rs = results[name]
        rows[name] = _rows(
            timed.records,
            finals[name],
            right=[r.replied_right if r.kind == "answerable" else r.decision == "escalate" for r in rs],
            answered=[r.answered_right if r.kind == "answerable" else None for r in rs],
            facts=[
                (len(r.answer_facts) - len(r.missing), len(r.answer_facts)) if r.kind == "answerable" else None
                for r in rs
            ],
            kinds=[r.kind for r in rs],
        )
        full = score_deployment(rs, seconds=timings[f"graph_{name}_s"])
        reports[name] = {
            **drafter_summary(rows[name]),
            # The set's own figures for this drafter (answered right counts answerable tickets only; ECE against
            # "the reply answers every question": see score_deployment).
            "answered_right_rate": full["answered_right_rate"],
            "ece": full["ece"],
            "deployment": {k: v for k, v in full.items() if k not in ("failures", "misrouted", "priority_confusion")},
            "failures": full["failures"],
        }
    return {
        "dataset": str(dataset),
        "n": len(tickets),
        "sample": {"limit": limit, "seed": seed},
        "model": llm.describe(),
        "drafters": reports,
        "side_by_side": side_by_side(reports),
        "tickets": _per_ticket(rows),
        "timings": {k: round(v, 2) for k, v in timings.items()},
        "total_seconds": round(time.perf_counter() - started, 2),
        "rightness": "answerable: sent and the reply contains every answer_facts string; not covered / must "
        "escalate: right when escalated (for ECE and auto-resolve precision); unsupported: factual sentences of "
        "the reply as it goes out that no passage the drafter was given supports (agent.drafting.support)",
    }


async def evaluate_side_by_side(
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
) -> dict[str, Any]:
    """A labelled public set: the history minus a holdout (or `--history`), the holdout (at most `limit` tickets)
    through both drafters. Right = the grounding resolution has the ticket's issue label, where the set has
    them; the replies' similarity to the gold answers is reported for both drafters."""
    started = time.perf_counter()
    llm = llm_drafter_or_error(settings)
    history, evaluation = history_and_evaluation(
        dataset, history_path, holdout=holdout, limit=limit, seed=seed, limit_holdout_only=True
    )
    embedder = embedder or get_embedder(settings.embedding_model)
    server_url = database_url or db.resolve_database_url(settings)
    history_vectors = await asyncio.to_thread(
        encode_all, embedder, [t.text for t in history], progress, "embedding history"
    )
    eval_vectors = await asyncio.to_thread(
        encode_all, embedder, [t.text for t in evaluation], progress, "embedding tickets"
    )

    async def load(conn: Any) -> None:
        await load_history(conn, history, history_vectors)
        if kb is not None:
            from knowledge.loader import load_paths

            await load_paths(conn, [kb], embedder=embedder)

    results: dict[str, list[TicketResult]] = {}
    timings: dict[str, float] = {}
    try:
        async with scratch_processor(server_url, settings, embedder, load, drafter=TimedDrafter(OfflineDrafter())) as (
            processor,
            _,
            run_timings,
        ):
            timings.update(run_timings)
            twin, offline, timed_llm = _with_drafters(processor, llm, embedder)
            for name, runner in (("offline", processor), ("llm", twin)):
                t0 = time.perf_counter()
                results[name] = await _run_labelled(runner, evaluation, eval_vectors, name, progress)
                timings[f"graph_{name}_s"] = time.perf_counter() - t0
    finally:
        await llm.aclose()
    thresholds = {"auto_resolve": settings.auto_resolve_threshold, "review": settings.review_threshold}
    reports: dict[str, dict[str, Any]] = {}
    rows: dict[str, list[DrafterRow]] = {}
    for name, timed in (("offline", offline), ("llm", timed_llm)):
        rs = results[name]
        rows[name] = _rows(
            timed.records,
            [(r.id, r.decision, r.confidence, r.draft, _drafter_of(timed, i)) for i, r in enumerate(rs)],
            right=[r.right for r in rs],
            answered=[(r.decision in SENT and bool(r.right)) if r.right is not None else None for r in rs],
            facts=[None] * len(rs),
            kinds=[None] * len(rs),
        )
        reports[name] = {
            **drafter_summary(rows[name]),
            "reply_similarity": _reply_similarity(embedder, rs),
            "set": summarize(
                rs, thresholds=thresholds, seconds=timings[f"graph_{name}_s"], reply_similarity=None, baseline=None
            ),
        }
    return {
        "dataset": str(dataset),
        "n": len(evaluation),
        "history_size": len(history),
        "sample": {"limit": limit, "seed": seed, "holdout": holdout},
        "model": llm.describe(),
        "drafters": reports,
        "side_by_side": side_by_side(reports),
        "tickets": _per_ticket(rows),
        "timings": {k: round(v, 2) for k, v in timings.items()},
        "total_seconds": round(time.perf_counter() - started, 2),
        "rightness": "the grounding past resolution has the ticket's issue label (sets with issue labels); "
        "unsupported: factual sentences of the reply as it goes out that no passage the drafter was given supports",
    }


def _drafter_of(timed: TimedDrafter, i: int) -> str:
    record = timed.records[i] if i < len(timed.records) else None
    if record is None or record.llm is None:
        return timed.name
    return "llm" if record.llm.ok else "offline"


async def _run_labelled(
    processor: TicketProcessor,
    evaluation: Sequence[LabelledTicket],
    vectors: np.ndarray,
    name: str,
    progress: Progress | None,
) -> list[TicketResult]:
    def relabel(label: str, done: int, total: int) -> None:
        if progress:
            progress(f"{label} ({name})", done, total)

    return await run_tickets(processor, evaluation, vectors, relabel)


def _reply_similarity(embedder: Embedder, results: Sequence[TicketResult]) -> float | None:
    pairs = [(r.draft, r.answer) for r in results if r.answer and r.draft.strip()]
    if not pairs:
        return None
    drafts = embedder.encode([d for d, _ in pairs])
    answers = embedder.encode([a or "" for _, a in pairs])
    return float(np.mean(np.sum(drafts * answers, axis=1)))
