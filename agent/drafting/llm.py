"""The LLM drafter: a reply and a structured self-assessment from any OpenAI-compatible server via langchain-openai.

One `write()` call is a bounded series of attempts (our retries, not the client's: each is timed, counted and
may honour Retry-After). The result is never a reply from an errored call: it carries either a checked reply with
the model's verdict, or `error` + `fell_back` so the caller uses the offline drafter or escalates
(`settings.llm_fallback`). `draft()` is the same as a `Draft`, the `Drafter` protocol's result.

Structured output follows the server in front of it: before the first draft (and again after a failure that may
be the method's fault) the server is probed for a forced tool call (`function_calling`), a `json_schema` response
format, then JSON mode (the schema in the prompt, the answer validated, one repair); the first that works is used
and recorded in the trace. `DESKPILOT_LLM_STRUCTURED_OUTPUT` fixes one instead. Whatever the method, a verdict
written as plain-text JSON is parsed, not wasted.

Two ways to reply from the knowledge base (`DESKPILOT_LLM_REPLY`). `quote` (the default): the model is shown each
question with the reader's best passages, their sentences numbered, and answers with the ids that answer each
question, an optional opening sentence and its verdict; the reply quotes the chosen sentences word for word, cited
(`agent.drafting.composer`), so every factual sentence is the passage's own. Ids it was not shown are refused.
`write`: the model writes the reply, and every sentence that states a fact must be supported by a passage it cites
(`agent.drafting.support`): the others are removed; a question left without a supported answer, or too large a
share removed, escalates. Without a knowledge base (past resolutions only) the model writes.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import json
import logging
import math
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

import openai
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.runnables import Runnable
from langchain_openai import ChatOpenAI
from pydantic import SecretStr, ValidationError

from agent.drafting.composer import compose_answers, knowledge_reply
from agent.drafting.guardrails import check_reply
from agent.drafting.phrasing import localized
from agent.drafting.prompts import (
    DISTINCTIVE_RULES,
    FENCE_NAMES,
    OPENING_CHARS,
    PROMPT_CANARY,
    QUOTE_TOOL_NAME,
    SYSTEM_PROMPT,
    VERDICT_SCHEMA,
    VERDICT_TOOL_NAME,
    BuiltPrompt,
    DraftVerdict,
    Method,
    QuoteUnit,
    QuoteVerdict,
    build_messages,
    build_quote_messages,
    reply_limit,
    reply_material,
)
from agent.drafting.reader import ANSWER_FLOOR, Evidence, Quote
from agent.drafting.request import NOT_ASKED, Draft, DrafterName, DraftRequest, allowed_addresses
from agent.drafting.support import (
    SupportCheck,
    check_support,
    first_sentence,
    insert_before_signoff,
    strip_citations,
)
from agent.drafting.tokens import ServerTokenizerProbe, server_counter, token_counter
from agent.scoring.risk import fold
from agent.state import ticket_text
from core.backoff import backoff_s
from core.settings import redact_url

if TYPE_CHECKING:
    from core.metrics import Metrics
    from core.settings import Settings
    from knowledge.retrieval import RetrievedItem

log = logging.getLogger("deskpilot.llm")

# The order the probe tries: a forced tool call is what OpenAI, vLLM, Ollama and `python -m llama_cpp.server`
# honour; `llama-server --jinja` ignores it but takes a json_schema response format; JSON mode is the last resort.
METHODS: tuple[Method, ...] = ("function_calling", "json_schema", "json_mode")

Outcome = Literal[
    "ok", "rate_limited", "server_error", "timeout", "connection", "client_error", "invalid_output", "refusal"
]
_RETRYABLE: frozenset[str] = frozenset({"rate_limited", "server_error", "timeout", "connection"})
# A malformed or refused answer is worth one more try, not the whole retry budget.
_OUTPUT_FAILURES: frozenset[str] = frozenset({"invalid_output", "refusal"})
# Failures the structured-output method may cause (a 500 on json_schema, a tool call ignored): probe again.
_METHOD_SUSPECT: frozenset[str] = frozenset({"invalid_output", "server_error", "client_error"})
RAW_OUTPUT_CHARS = 20_000
# Quote mode's answer is ids, a sentence and a verdict: measured 40-90 tokens (Qwen2.5-Coder 1.5B). A model that
# rambles past this is cut off and retried once rather than left to write to the general output limit.
QUOTE_MAX_OUTPUT_TOKENS = 256
# Room left in the context window besides the prompt and the answer (template tokens, counting error).
CONTEXT_MARGIN_TOKENS = 64


# --- the result ---------------------------------------------------------------------------------------------


@dataclass
class AttemptRecord:
    n: int
    outcome: Outcome
    latency_ms: float
    status_code: int | None = None
    error: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    retry_after_s: float | None = None
    slept_s: float = 0.0
    method: str | None = None
    repair: bool = False


@dataclass
class DraftResult:
    """One LLM draft. With `error` set, `reply` is empty and `fell_back` is true: the caller must use the offline
    drafter (`fallback == "offline"`) or escalate (`fallback == "escalate"`). With `escalate` set, the reply
    must not be sent (guardrail violation, unsupported content, or the model itself asked for a person)."""

    reply: str = ""
    cited_ids: list[str] = field(default_factory=list)  # item ids (labels mapped back), valid ones only
    self_confidence: float | None = None
    citation_validity: float | None = None
    reasons: list[str] = field(default_factory=list)
    needs_human: bool = False
    violations: list[str] = field(default_factory=list)  # blocking: the reply must not be sent
    flags: list[str] = field(default_factory=list)  # not blocking: unknown citations, trimmed input ...
    invalid_citations: list[str] = field(default_factory=list)
    escalate: bool = False
    escalate_reasons: list[str] = field(default_factory=list)
    model: str = ""
    usage: dict[str, int] = field(default_factory=lambda: {"prompt_tokens": 0, "completion_tokens": 0})
    latency_ms: float = 0.0
    error: str | None = None
    error_kind: Outcome | Literal["nothing_to_cite"] | None = None
    raw_output: str = ""
    prompt: str = ""
    labels: dict[str, str] = field(default_factory=dict)  # "R1" / "KB-1a2b3c4d" -> item id, as the model saw them
    dropped_ids: list[str] = field(default_factory=list)  # items left out to fit the input budget
    attempts: int = 0
    attempt_log: list[AttemptRecord] = field(default_factory=list)
    fell_back: bool = False
    fallback: str | None = None
    drafter: str = "llm"
    mode: str = "resolution"  # "knowledge": per-question evidence; "resolution": retrieved items
    structured_output: str | None = None  # the method the verdict was asked for with
    probe: dict[str, Any] = field(default_factory=dict)  # the latest probe of the server
    prompt_tokens_estimate: int = 0  # our count of the prompt (the server's is in usage)
    token_source: str = ""
    removed: list[str] = field(default_factory=list)  # factual sentences no cited passage supports, taken out
    support: dict[str, Any] = field(default_factory=dict)  # the per-sentence support check
    # Quote mode: each question and the ids the model chose for it, the ids refused (not shown to it), the
    # questions the reply answers and those it hands over (no passage, or the model chose nothing).
    quote: dict[str, Any] = field(default_factory=dict)
    answered: list[str] = field(default_factory=list)
    handed_over: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def sendable(self) -> bool:
        """A reply the decision step may send (subject to the confidence thresholds)."""
        return self.ok and not self.escalate and bool(self.reply.strip())

    @property
    def confidence_factor(self) -> float | None:
        """What the LLM adds to the confidence score (see `confidence_factor`), lowered by the share of its
        factual sentences the support check removed: a model that wrote claims its passages do not make is
        trusted less with what is left. None without a verdict."""
        if not self.ok or self.self_confidence is None or self.citation_validity is None:
            return None
        if self.mode == "quote":
            return quote_confidence_factor(self.self_confidence, self.citation_validity)
        removed = min(1.0, max(0.0, float(self.support.get("removed_share") or 0.0)))
        return confidence_factor(self.self_confidence, self.citation_validity) * (1.0 - removed)

    def to_trace(self) -> dict[str, Any]:
        """Everything, as JSON: the attempt row's detail and the trace viewer's source."""
        data = asdict(self)
        data["sendable"] = self.sendable
        data["confidence_factor"] = self.confidence_factor
        return data

    def step_output(self) -> dict[str, Any]:
        """The `draft` node's step output in the shape docs/architecture.md gives (`draft`, `citations`,
        `drafter`, `prompt`), with the model's details under `llm`."""
        detail = self.to_trace()
        for key in ("reply", "cited_ids", "prompt", "drafter"):
            detail.pop(key)
        return {
            "draft": self.reply,
            "citations": list(self.cited_ids),
            "drafter": self.drafter,
            "prompt": self.prompt,
            "model": self.model,
            "llm": detail,
        }

    def to_draft(self) -> Draft:
        """The result as the `Drafter` protocol returns it."""
        model = {
            "drafter": "llm",
            "model": self.model,
            "usage": dict(self.usage),
            "attempts": self.attempts,
            "structured_output": self.structured_output,
        }
        if not self.ok:
            escalate = self.fallback == "escalate"
            return Draft(
                text="",
                citations=[],
                drafter="llm",
                grounded=False,
                prompt=self.prompt or None,
                model=model,
                fell_back=not escalate,
                escalate=escalate,
                escalate_reasons=[f"the LLM failed: {self.error}"] if escalate else [],
                error=self.error,
                detail=self.to_trace(),
            )
        return Draft(
            text=self.reply,
            citations=list(self.cited_ids),
            drafter="llm",
            grounded=bool(self.cited_ids),
            prompt=self.prompt or None,
            model=model,
            removed=list(self.removed),
            violations=list(self.violations),
            self_assessment=self.confidence_factor,
            escalate=self.escalate,
            escalate_reasons=list(self.escalate_reasons),
            notes=list(self.flags),
            detail=self.to_trace(),
        )


# Weights of `confidence_factor`; the floor terms keep one weak signal from zeroing a strong retrieval score,
# while grounding (citation validity) weighs more than the model's opinion of itself.
CITATION_FLOOR = 0.5
SELF_FLOOR = 0.55


# Quote mode: the model's own rating lowers the confidence only below this (the model doubts what it chose);
# agreeing with the reader costs nothing.
QUOTE_SELF_DOUBT = 0.5


def quote_confidence_factor(self_confidence: float, citation_validity: float) -> float:
    """A multiplier in [0, 1] for the knowledge calibration's confidence of a quoted reply.

    The calibration's signals are the reader's, and the reply keeps the reader's quote: the model's choice may
    only lower the confidence, by its ids' validity (0.5 + 0.5·share of ids it was shown) and by its own rating
    when that is under `QUOTE_SELF_DOUBT`. Choosing the reader's sentences, or others it was shown, keeps 1.0."""
    v = min(1.0, max(0.0, citation_validity))
    s = min(1.0, max(0.0, self_confidence))
    doubt = 1.0 if s >= QUOTE_SELF_DOUBT else SELF_FLOOR + (1 - SELF_FLOOR) * s / QUOTE_SELF_DOUBT
    return (CITATION_FLOOR + (1 - CITATION_FLOOR) * v) * doubt


def with_additions(evidence: Evidence, units: Sequence[QuoteUnit]) -> tuple[list[Quote], list[QuoteUnit]]:
    """Pure: the reader's quotes for a question with the model's chosen units added (those not quoted already),
    each passage's sentences in passage order, the reader's passages first; and the units that were added."""
    place = {(str(c.item.id), text): n for c in evidence.candidates for n, text in c.units}
    passages: dict[str, tuple[RetrievedItem, dict[str, int]]] = {}
    for quote in evidence.quotes:
        key = str(quote.item.id)
        order = passages.setdefault(key, (quote.item, {}))[1]
        for n, text in enumerate(quote.units):
            order.setdefault(text, place.get((key, text), n))
    added: list[QuoteUnit] = []
    for unit in units:
        order = passages.setdefault(str(unit.item.id), (unit.item, {}))[1]
        if unit.text not in order:
            order[unit.text] = unit.index
            added.append(unit)
    quotes = [Quote(item, tuple(sorted(order, key=order.__getitem__))) for item, order in passages.values()]
    return quotes, added


def confidence_factor(self_confidence: float, citation_validity: float) -> float:
    """A multiplier in [0.275, 1] for the retrieval-based confidence: the LLM can only lower it.

    f = (0.5 + 0.5·citation_validity) · (0.55 + 0.45·self_confidence). A reply citing nothing that was
    retrieved gets at most half the retrieval score, so a confident model with no supporting sources lands below
    the review threshold; a fully grounded reply the model rates 1.0 keeps the score unchanged."""
    v = min(1.0, max(0.0, citation_validity))
    s = min(1.0, max(0.0, self_confidence))
    return (CITATION_FLOOR + (1 - CITATION_FLOOR) * v) * (SELF_FLOOR + (1 - SELF_FLOOR) * s)


# --- configuration ------------------------------------------------------------------------------------------


def build_chat_model(settings: Settings, *, http_async_client: Any = None) -> ChatOpenAI:
    """The chat model as configured: our own timeout (never the client's 600 s) and no client retries."""
    base_url, credentials = split_url_credentials(settings.openai_base_url)
    return ChatOpenAI(
        model=settings.llm_model,
        api_key=SecretStr(settings.openai_api_key or "not-needed"),  # local servers accept anything
        base_url=base_url,
        default_headers={"Authorization": credentials} if credentials else None,
        timeout=settings.llm_timeout_s,
        max_retries=0,  # we retry ourselves: each try is recorded and Retry-After is honoured
        temperature=settings.llm_temperature,
        max_completion_tokens=settings.llm_max_output_tokens,  # the field `max_tokens`, by its alias
        http_async_client=http_async_client,
    )


def split_url_credentials(url: str | None) -> tuple[str | None, str | None]:
    """(the URL without its user-info, the Basic `Authorization` value that user-info stands for, or None).

    HTTP clients send `https://user:pass@proxy/v1` as that header anyway, but they also print the URL: httpx logs
    every request's URL at INFO, and errors quote it. Without the user-info in the URL, no log line can show it.
    """
    if not url:
        return url, None
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, host = parts.netloc.rsplit("@", 1)
    user, _, password = userinfo.partition(":")
    token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode()
    return urlunsplit(parts._replace(netloc=host)), f"Basic {token}"


def input_budget(settings: Settings) -> int:
    """The prompt's token budget: what the context window leaves after the answer, at most the input cap."""
    window = settings.llm_context_tokens - settings.llm_max_output_tokens - CONTEXT_MARGIN_TOKENS
    return max(1, min(settings.llm_max_input_tokens, window))


def describe_llm(settings: Settings) -> dict[str, Any]:
    """The LLM configuration as /health and traces show it; the key only as "set" or None, no URL credentials."""
    return {
        "enabled": settings.llm_enabled,
        "model": settings.llm_model,
        "base_url": redact_url(settings.openai_base_url, keep_user=False) if settings.openai_base_url else None,
        "api_key": "set" if settings.openai_api_key else None,
        "timeout_s": settings.llm_timeout_s,
        "max_retries": settings.llm_max_retries,
        "temperature": settings.llm_temperature,
        "max_input_tokens": settings.llm_max_input_tokens,
        "max_output_tokens": settings.llm_max_output_tokens,
        "context_tokens": settings.llm_context_tokens,
        "input_budget_tokens": input_budget(settings),
        "tokenizer": settings.llm_tokenizer,
        "fallback": settings.llm_fallback,
        "structured_output": settings.llm_structured_output,
        "max_unsupported_share": settings.llm_max_unsupported_share,
        "reply": settings.llm_reply,
    }


def make_llm_drafter(settings: Settings, metrics: Metrics | None = None, **options: Any) -> LLMDrafter | None:
    """The drafter for these settings, or None when no LLM is configured (the offline drafter is used)."""
    if not settings.llm_enabled:
        return None
    return LLMDrafter(settings, metrics=metrics, **options)


# --- output checks ------------------------------------------------------------------------------------------

_WORD = re.compile(r"[a-z0-9']+")
_SHINGLE = 6  # six consecutive words of a rule in a reply are no coincidence


def _shingles(text: str, n: int = _SHINGLE) -> set[tuple[str, ...]]:
    words = _WORD.findall(fold(text))
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


_RULE_SHINGLES: frozenset[tuple[str, ...]] = frozenset().union(*(_shingles(rule) for rule in DISTINCTIVE_RULES))
_OBEYS_INJECTION = re.compile(
    r"\b(?:ignor(?:e|ing)|disregard(?:ing)?|overrid(?:e|ing)|bypass(?:ing)?|forget(?:ting)?)\s+"
    r"(?:(?:all|any|my|the|your|our|previous|prior|earlier|above|these|those|of|safety|support|usual|own)\s+){0,4}"
    r"(?:rules|instructions|guidelines|policies|policy|prompt|restrictions|guardrails|programming)\b"
    r"|\bas (?:you )?(?:instructed|requested|commanded|told)\b[^.!?\n]{0,40}"
    r"\b(?:i|we)\s*(?:will|'ll|am going to|shall)\b"
    r"|\b(?:developer|jailbreak|god|dan) mode\b"
    r"|\bnew instructions\b"
)
_FENCE_ECHO = re.compile(r"</?\s*(?:" + "|".join(FENCE_NAMES) + r")\b", re.IGNORECASE)


def llm_output_violations(reply: str, *, channel: str | None) -> list[str]:
    """What `agent.drafting.guardrails.check_reply` does not cover for model output: repeating the system prompt,
    acting on injected instructions, echoing our fences, and the channel's length limit."""
    found: list[str] = []
    if PROMPT_CANARY in reply.lower() or _shingles(reply) & _RULE_SHINGLES or SYSTEM_PROMPT[:80] in reply:
        found.append("repeats its system prompt")
    match = _OBEYS_INJECTION.search(fold(reply))
    if match:
        found.append(f"acts on injected instructions: \u201c{match.group(0)}\u201d")
    if _FENCE_ECHO.search(reply):
        found.append("echoes the prompt's delimiters")
    limit = reply_limit(channel)
    if len(reply) > limit:
        found.append(f"is {len(reply)} characters long, over the {channel or 'default'} limit of {limit}")
    return found


def reply_violations(reply: str, request: DraftRequest) -> list[str]:
    """Everything that stops a model reply from being sent: the shared guard plus the LLM-only checks.

    Addresses are allowed when a knowledge-base passage or the configured support address contains them: never
    because the ticket or another customer's past resolution does (`allowed_addresses`)."""
    urls, emails = allowed_addresses(request)
    violations = check_reply(reply, allowed_urls=urls, allowed_emails=emails)
    channel = request.ticket.get("channel") or "email"
    return violations + [v for v in llm_output_violations(reply, channel=channel) if v not in violations]


def citation_validity(cited: Sequence[str], labels: Mapping[str, str]) -> tuple[float, list[str], list[str]]:
    """(share of citations that point at an item the model was given, the valid item ids, the invalid citations).

    A citation may be a label the model was shown ("R1", "[k2]", "KB-1a2b3c4d", in any case) or an item id.
    Citing nothing scores 0: a reply that rests on no source is not grounded, however confident the model is."""
    by_label = {label.upper(): item_id for label, item_id in labels.items()}
    by_id = {item_id: item_id for item_id in labels.values()}
    valid: list[str] = []
    invalid: list[str] = []
    for raw in cited:
        key = str(raw).strip().strip("[]()").strip()
        item_id = by_label.get(key.upper()) or by_id.get(key)
        if item_id is None:
            invalid.append(str(raw))
        elif item_id not in valid:
            valid.append(item_id)
    total = len(valid) + len(invalid)
    return (len(valid) / total if total else 0.0), valid, invalid


_REFUSAL = re.compile(
    r"^(?:i'?m sorry|i am sorry|sorry|unfortunately|as an ai)?[,.!]?\s*(?:but\s+)?"
    r"(?:i|we)\s+(?:can ?not|can't|won't|will not|am unable to|am not able to|must decline to)\s+"
    r"(?:help|assist|comply|do that|provide|fulfil+|respond|answer|continue|process)"
    r"(?:\s+(?:you\s+)?with)?(?:\s+(?:that|this|your))?(?:\s+request)?\s*[.!]?\s*$"
)


def looks_like_refusal(text: str) -> bool:
    """A bare refusal ("I'm sorry, but I can't help with that."), not a reply that happens to apologise."""
    folded = fold(text).strip()
    return len(folded) <= 200 and bool(_REFUSAL.match(folded))


# --- structured output: the methods and the probe -----------------------------------------------------------

PROBE_NAME = "DeskPilotProbe"
# Marks a probe request, for logs and for test servers that answer probes apart from drafts.
PROBE_MARKER = "deskpilot-structured-output-probe"
PROBE_MAX_TOKENS = 32
# A probe is a short prompt and at most PROBE_MAX_TOKENS tokens, but a small local model on a busy CPU reads
# even that slowly (measured: 8-20 s for the 1.5B model on one shared core): it gets the draft's own timeout.
_PROBE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"ok": {"type": "boolean", "description": "true"}},
    "required": ["ok"],
}
_PROBE_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": PROBE_NAME,
        "description": "Confirms that structured answers work.",
        "parameters": _PROBE_SCHEMA,
    },
}
_PROBE_MESSAGES: list[BaseMessage] = [
    SystemMessage(content=f"({PROBE_MARKER}) Answer exactly as asked and nothing else."),
    HumanMessage(content='Answer with the JSON object {"ok": true}.'),
]
WORKS = "works"


@dataclass
class ProbeReport:
    """What the server did with each method tried, in order, and the method chosen (None: not reachable)."""

    method: Method | None
    results: dict[str, str]
    reachable: bool
    at: str
    latency_ms: float
    # JSON mode without `response_format` (the server refused even that): the prompt alone asks for JSON.
    prompt_only_json: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class _Unreachable(Exception):
    """The probe could not reach the server (timeout, connection, rate limit): it says nothing about methods."""


def _bind(chat: BaseChatModel, method: Method, *, prompt_only_json: bool = False) -> Runnable[Any, BaseMessage]:
    if method == "function_calling":
        return chat.bind_tools([DraftVerdict], tool_choice=VERDICT_TOOL_NAME, parallel_tool_calls=False)
    if method == "json_schema":
        schema = {"name": VERDICT_TOOL_NAME, "description": DraftVerdict.__doc__, "schema": VERDICT_SCHEMA}
        return chat.bind(response_format={"type": "json_schema", "json_schema": schema})
    if prompt_only_json:
        return chat
    return chat.bind(response_format={"type": "json_object"})


def _bind_probe(chat: BaseChatModel, method: Method) -> Runnable[Any, BaseMessage]:
    limit = {"max_completion_tokens": PROBE_MAX_TOKENS}
    if method == "function_calling":
        return chat.bind_tools([_PROBE_TOOL], tool_choice=PROBE_NAME, parallel_tool_calls=False, **limit)
    if method == "json_schema":
        schema = {"name": PROBE_NAME, "schema": _PROBE_SCHEMA}
        return chat.bind(response_format={"type": "json_schema", "json_schema": schema}, **limit)
    return chat.bind(response_format={"type": "json_object"}, **limit)


def _probe_verdict(method: Method, message: BaseMessage) -> str:
    """WORKS, or what went wrong, for one probe answer."""
    if not isinstance(message, AIMessage):
        return "no answer"
    obj = _json_object(message.text)
    if method == "function_calling":
        call = next((c for c in message.tool_calls if c.get("name") == PROBE_NAME), None)
        if call is not None and isinstance(call.get("args", {}).get("ok"), bool):
            return WORKS
        if obj is not None:
            return "the forced tool was ignored: the JSON came back as plain text"
        return "no tool call"
    if obj is None:
        return "the answer is not JSON"
    if method == "json_schema" and not isinstance(obj.get("ok"), bool):
        return "the JSON does not follow the schema"
    return WORKS


# --- the drafter --------------------------------------------------------------------------------------------


@dataclass
class _Attempt:
    outcome: Outcome
    verdict: DraftVerdict | QuoteVerdict | None = None
    error: str | None = None
    status_code: int | None = None
    retry_after_s: float | None = None
    raw_output: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass
class _LoopState:
    """What belongs to one event loop: the HTTP client, the chat model, its bound runnables, the probe lock."""

    loop: asyncio.AbstractEventLoop
    chat: BaseChatModel
    http_client: Any
    lock: asyncio.Lock
    bound: dict[tuple[str, bool], Runnable[Any, BaseMessage]] = field(default_factory=dict)


class LLMDrafter:
    """Drafts replies with the configured model; implements the `Drafter` protocol. Construct once per process;
    `draft` is safe to call concurrently. Tests may inject `chat_model`, `sleep` and `rng`."""

    name: DrafterName = "llm"

    def __init__(
        self,
        settings: Settings,
        *,
        metrics: Metrics | None = None,
        chat_model: BaseChatModel | None = None,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 8.0,
        retry_after_cap_s: float = 20.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.retry_after_cap_s = retry_after_cap_s
        self._sleep = sleep
        self._rng = rng
        self._injected = chat_model
        self._state: _LoopState | None = None
        self._secrets = _secrets_of(settings)
        self._counter = token_counter(settings.llm_tokenizer)
        # Without a tokenizer file, the server's own tokenize endpoint counts (looked for before the first draft).
        self._tokenizer_probe: ServerTokenizerProbe | None = None
        self._look_for_tokenizer = not self._counter.exact and bool(settings.openai_base_url) and chat_model is None
        self._auto = settings.llm_structured_output == "auto"
        self._method: Method | None = None if self._auto else _as_method(settings.llm_structured_output)
        self._probe: ProbeReport | None = None
        self._probes = 0  # probes finished: a draft that waited for one does not start another
        self._stale = self._auto

    @property
    def model(self) -> str:
        return self.settings.llm_model

    def describe(self) -> dict[str, Any]:
        described = describe_llm(self.settings)
        described["structured_output_method"] = self._method
        described["token_counter"] = self._counter.source
        if self._tokenizer_probe is not None:
            described["tokenizer_probe"] = dict(self._tokenizer_probe.results)
        if self._probe is not None:
            described["probe"] = self._probe.to_json()
        return described

    def _loop_state(self) -> _LoopState:
        # An httpx client belongs to one event loop: build the model for the loop we run in (eval and tests may
        # run several loops in one process) instead of langchain's process-wide cached client.
        loop = asyncio.get_running_loop()
        state = self._state
        if state is None or state.loop is not loop:
            http_client = None
            if self._injected is not None:
                chat: BaseChatModel = self._injected
            else:
                http_client = openai.DefaultAsyncHttpxClient(timeout=self.settings.llm_timeout_s)
                chat = build_chat_model(self.settings, http_async_client=http_client)
            state = self._state = _LoopState(loop, chat, http_client, asyncio.Lock())
        return state

    def _quote_runnable(self, method: Method, built: BuiltPrompt) -> Runnable[Any, BaseMessage]:
        """Quote mode's binding: the schema is this prompt's (each question's ids), so it is bound per draft."""
        chat = self._loop_state().chat
        limit = {"max_completion_tokens": min(self.settings.llm_max_output_tokens, QUOTE_MAX_OUTPUT_TOKENS)}
        schema = built.schema or {}
        if method == "function_calling":
            tool = {
                "type": "function",
                "function": {"name": QUOTE_TOOL_NAME, "description": QuoteVerdict.__doc__, "parameters": schema},
            }
            return chat.bind_tools([tool], tool_choice=QUOTE_TOOL_NAME, parallel_tool_calls=False, **limit)
        if method == "json_schema":
            return chat.bind(
                response_format={"type": "json_schema", "json_schema": {"name": QUOTE_TOOL_NAME, "schema": schema}},
                **limit,
            )
        if self._probe is not None and self._probe.prompt_only_json:
            return chat.bind(**limit)
        return chat.bind(response_format={"type": "json_object"}, **limit)

    def _runnable(self, method: Method) -> Runnable[Any, BaseMessage]:
        state = self._loop_state()
        prompt_only = method == "json_mode" and self._probe is not None and self._probe.prompt_only_json
        key = (method, prompt_only)
        if key not in state.bound:
            state.bound[key] = _bind(state.chat, method, prompt_only_json=prompt_only)
        return state.bound[key]

    async def aclose(self) -> None:
        state, self._state = self._state, None
        if state is not None and state.http_client is not None:
            await state.http_client.aclose()

    # --- structured output ----------------------------------------------------------------------------------

    async def probe(self) -> ProbeReport:
        """Ask the server, with a tiny request per method, which structured output it honours; remember the
        first that works. A server that cannot be reached leaves the method unknown (probed again next draft)."""
        started = time.perf_counter()
        chat = self._loop_state().chat
        results: dict[str, str] = {}
        chosen: Method | None = None
        reachable = True
        for method in METHODS:
            try:
                results[method] = await self._probe_one(chat, method)
            except _Unreachable as exc:
                results[method] = f"unreachable: {self._redact(str(exc))}"
                reachable = False
                break
            if results[method] == WORKS:
                chosen = method
                break
        prompt_only = False
        if reachable and chosen is None:
            # Nothing structured works: JSON mode's validation and repair still make a prompt's JSON usable.
            chosen = "json_mode"
            prompt_only = results.get("json_mode", "").startswith("refused")
        report = ProbeReport(
            method=chosen,
            results=results,
            reachable=reachable,
            at=datetime.now(UTC).isoformat(timespec="seconds"),
            latency_ms=round((time.perf_counter() - started) * 1000, 1),
            prompt_only_json=prompt_only,
        )
        self._probe = report
        self._probes += 1
        if reachable:
            self._method, self._stale = chosen, False
            log.info("structured output: %s (%s)", chosen, "; ".join(f"{m}: {r}" for m, r in results.items()))
        else:
            log.warning("could not probe the model server for structured output: %s", results)
        return report

    async def _probe_one(self, chat: BaseChatModel, method: Method) -> str:
        guard = self.settings.llm_timeout_s + 1.0
        try:
            async with asyncio.timeout(guard):
                message = await _bind_probe(chat, method).ainvoke(_PROBE_MESSAGES)
        except TimeoutError as exc:
            raise _Unreachable(f"no answer within {guard:.1f} s") from exc
        except (openai.APIConnectionError, openai.RateLimitError) as exc:
            raise _Unreachable(f"{type(exc).__name__}: {exc}") from exc
        except openai.APIStatusError as exc:
            return f"refused: HTTP {exc.status_code}"
        except openai.OpenAIError as exc:  # the answer was cut off or filtered: the method itself answered
            return f"unusable answer: {type(exc).__name__}"
        except Exception as exc:  # a library error must not take drafting down: this method is not used
            log.warning("structured-output probe (%s) failed unexpectedly", method, exc_info=True)
            return f"failed: {type(exc).__name__}"
        return _probe_verdict(method, message)

    async def find_tokenizer(self) -> None:
        """Use the server's tokenize endpoint to count prompt tokens when no tokenizer file is configured and
        the server has one; an unreachable server is asked again before the next draft."""
        if not self._look_for_tokenizer:
            return
        base_url, credentials = split_url_credentials(self.settings.openai_base_url)
        headers = {"Authorization": credentials or f"Bearer {self.settings.openai_api_key or 'not-needed'}"}
        found = await asyncio.to_thread(server_counter, base_url or "", headers=headers, fallback=self._counter)
        self._tokenizer_probe = found
        if found.reachable:
            self._look_for_tokenizer = False
        if found.counter is not None:
            self._counter = found.counter
            log.info("prompt tokens counted by the %s", found.counter.source)

    async def _current_method(self) -> Method:
        """The method for the next attempt: probed first when unknown or after a failure (`auto` only)."""
        if self._auto and (self._stale or self._method is None):
            state = self._loop_state()
            seen = self._probes
            async with state.lock:
                if self._probes == seen:  # nobody probed while we waited
                    await self.probe()
        return self._method or METHODS[0]

    # --- drafting -------------------------------------------------------------------------------------------

    async def draft(self, request: DraftRequest) -> Draft:
        return (await self.write(request)).to_draft()

    async def write(self, request: DraftRequest) -> DraftResult:
        """The model's reply to `request`, checked, with everything that happened on the way."""
        started = time.perf_counter()
        if self._quotes(request) and not any(
            ev.item is not None and ev.units and ev.score >= ANSWER_FLOOR for ev in request.evidence
        ):
            # No passage answers any question: nothing to choose from, the reply hands every question over.
            result = DraftResult(model=self.model, mode="quote")
            self._compose_quoted(result, request, [[] for _ in request.evidence], opening="")
            result.latency_ms = round((time.perf_counter() - started) * 1000, 1)
            return result
        if not self._quotes(request) and not reply_material(request):
            # No passage and no past answer: a model could only write an unsupported reply or a handover, and
            # the decision escalates either way. The offline drafter writes the handover; no tokens are spent.
            return DraftResult(
                model=self.model,
                error="nothing to cite: no knowledge-base passage or past answer was retrieved",
                error_kind=NOT_ASKED,
                fell_back=True,
                fallback="offline",
            )
        await self.find_tokenizer()
        result = DraftResult(model=self.model, token_source=self._counter.source)
        attempt, built = await self._attempt_with_retries(request, result)
        result.latency_ms = round((time.perf_counter() - started) * 1000, 1)
        result.raw_output = self._redact(attempt.raw_output[:RAW_OUTPUT_CHARS])
        if self._probe is not None:
            result.probe = self._probe.to_json()
        if attempt.outcome != "ok" or attempt.verdict is None:
            return self._failed(result, attempt)
        self._accept(result, attempt.verdict, built, request)
        return result

    async def _build_async(self, request: DraftRequest, method: Method, result: DraftResult) -> BuiltPrompt:
        # The server's tokenizer counts over HTTP: off the event loop, which other tickets share.
        if self._tokenizer_probe is not None and self._tokenizer_probe.counter is self._counter:
            return await asyncio.to_thread(self._build, request, method, result)
        return self._build(request, method, result)

    def _quotes(self, request: DraftRequest) -> bool:
        """Whether this request is answered by choosing passage sentences (quote mode, reader evidence)."""
        return self.settings.llm_reply == "quote" and bool(request.evidence)

    def _build(self, request: DraftRequest, method: Method, result: DraftResult) -> BuiltPrompt:
        build = build_quote_messages if self._quotes(request) else build_messages
        built = build(request, max_input_tokens=input_budget(self.settings), counter=self._counter, method=method)
        result.prompt = self._redact(built.text)
        result.labels = dict(built.labels)
        result.dropped_ids = list(built.dropped_ids)
        result.mode = built.mode
        result.structured_output = method
        result.prompt_tokens_estimate = built.approx_tokens
        result.flags = [f for f in result.flags if not f.endswith("to fit the input")]
        if built.dropped_ids:
            result.flags.append(f"{len(built.dropped_ids)} lower-ranked reference item(s) left out to fit the input")
        for part in built.truncated:
            result.flags.append(f"{part} shortened to fit the input")
        return built

    async def _attempt_with_retries(self, request: DraftRequest, result: DraftResult) -> tuple[_Attempt, BuiltPrompt]:
        retries_left = self.settings.llm_max_retries
        output_retry_used = False
        reprobed = False
        transient_failures = 0
        method = await self._current_method()
        built = await self._build_async(request, method, result)
        repair: _Attempt | None = None
        while True:
            n = result.attempts + 1
            t0 = time.perf_counter()
            attempt = await self._attempt(built, method, repair)
            seconds = time.perf_counter() - t0
            result.attempts = n
            record = AttemptRecord(
                n=n,
                outcome=attempt.outcome,
                latency_ms=round(seconds * 1000, 1),
                status_code=attempt.status_code,
                error=self._redact(attempt.error) if attempt.error else None,
                prompt_tokens=attempt.prompt_tokens,
                completion_tokens=attempt.completion_tokens,
                retry_after_s=attempt.retry_after_s,
                method=method,
                repair=repair is not None,
            )
            result.attempt_log.append(record)
            result.usage["prompt_tokens"] += attempt.prompt_tokens or 0
            result.usage["completion_tokens"] += attempt.completion_tokens or 0
            self._observe(attempt, seconds)
            if attempt.outcome == "ok":
                return attempt, built
            suspect = self._auto and attempt.outcome in _METHOD_SUSPECT
            if suspect:
                self._stale = True  # the method may be at fault: the next attempt (or draft) probes again
            if retries_left <= 0:
                return attempt, built
            repair = None
            if attempt.outcome in _OUTPUT_FAILURES and not output_retry_used:
                output_retry_used = True
                delay = 0.0
                # JSON mode's one repair: the model sees its answer and what is wrong with it.
                if method == "json_mode" and attempt.outcome == "invalid_output" and attempt.raw_output:
                    repair = attempt
            elif attempt.outcome in _RETRYABLE:
                transient_failures += 1
                delay = self._delay(transient_failures, attempt.retry_after_s)
            else:
                return attempt, built
            retries_left -= 1
            log.warning("LLM attempt %d failed (%s: %s); retrying in %.2f s", n, attempt.outcome, record.error, delay)
            record.slept_s = round(delay, 3)
            if delay > 0:
                await self._sleep(delay)
            if suspect and not reprobed:
                reprobed = True
                changed = await self._current_method()
                if changed != method:
                    method, repair = changed, None
                    built = await self._build_async(request, method, result)

    def _delay(self, failures: int, retry_after_s: float | None) -> float:
        if retry_after_s is not None and retry_after_s >= 0:
            # The server knows when it will take us again; a little jitter keeps workers from stampeding.
            return min(retry_after_s, self.retry_after_cap_s) * (1.0 + 0.1 * self._rng())
        return backoff_s(failures, base_s=self.backoff_base_s, cap_s=self.backoff_max_s, rng=self._rng)

    async def _attempt(self, built: BuiltPrompt, method: Method, repair: _Attempt | None) -> _Attempt:
        messages = list(built.messages)
        quote = built.mode == "quote"
        if repair is not None:
            keys = "answers, opening, confidence, reasons" if quote else "reply, cited_ids, confidence, reasons"
            messages += [
                AIMessage(content=repair.raw_output),
                HumanMessage(
                    content=f"That answer cannot be used: {repair.error}. Write the whole answer again as one "
                    f"corrected JSON object with the keys {keys} and needs_human, and nothing else."
                ),
            ]
        runnable = self._quote_runnable(method, built) if quote else self._runnable(method)
        # The client's own timeout normally fires first; this guard also bounds a server that trickles bytes.
        guard = self.settings.llm_timeout_s + 1.0
        try:
            async with asyncio.timeout(guard):
                message = await runnable.ainvoke(messages)
        except TimeoutError:
            return _Attempt("timeout", error=f"no answer within {guard:.1f} s")
        except openai.LengthFinishReasonError as exc:
            usage = exc.completion.usage
            return _Attempt(
                "invalid_output",
                error="the answer was cut off at the output token limit",
                raw_output=_completion_text(exc.completion),
                prompt_tokens=usage.prompt_tokens if usage else None,
                completion_tokens=usage.completion_tokens if usage else None,
            )
        except openai.ContentFilterFinishReasonError:
            return _Attempt("refusal", error="the answer was withheld by the server's content filter")
        except openai.APIError as exc:
            return _classify_api_error(exc)
        except Exception as exc:  # a library bug must fall back, not take the ticket down with it
            log.exception("LLM call failed unexpectedly")
            return _Attempt("client_error", error=f"{type(exc).__name__}: {exc}")
        return _interpret(message, quote=quote)

    def _observe(self, attempt: _Attempt, seconds: float) -> None:
        if self.metrics is None:
            return
        self.metrics.llm_calls.labels(attempt.outcome).inc()
        self.metrics.llm_latency.observe(seconds)
        if attempt.prompt_tokens:
            self.metrics.llm_tokens.labels("prompt").inc(attempt.prompt_tokens)
        if attempt.completion_tokens:
            self.metrics.llm_tokens.labels("completion").inc(attempt.completion_tokens)

    def _failed(self, result: DraftResult, attempt: _Attempt) -> DraftResult:
        result.error = self._redact(f"{attempt.outcome}: {attempt.error or 'no usable answer'}")
        result.error_kind = attempt.outcome
        result.fell_back = True
        result.fallback = self.settings.llm_fallback
        result.reply = ""
        if self.settings.llm_fallback == "escalate":
            result.escalate = True
            result.escalate_reasons.append(f"the model failed after {result.attempts} attempt(s): {result.error}")
        return result

    def _accept(
        self, result: DraftResult, verdict: DraftVerdict | QuoteVerdict, built: BuiltPrompt, request: DraftRequest
    ) -> None:
        if isinstance(verdict, QuoteVerdict):
            self._accept_quote(result, verdict, built, request)
            return
        validity, valid, invalid = citation_validity(verdict.cited_ids, built.labels)
        cited_labels = [label for label, item_id in built.labels.items() if item_id in valid]
        check = check_support(
            verdict.reply,
            passages=built.passages,
            cited=cited_labels,
            ticket=ticket_text(request.ticket),
            customer_name=request.customer_name,
        )
        reply = check.text
        result.cited_ids = valid
        result.invalid_citations = invalid + [label for label in check.invalid_labels if label not in invalid]
        result.citation_validity = validity
        result.self_confidence = verdict.confidence
        result.reasons = [self._redact(r) for r in verdict.reasons]
        result.needs_human = verdict.needs_human
        result.removed = [s.text for s in check.removed]
        if not verdict.cited_ids:
            result.flags.append("cites no reference material")
        if result.invalid_citations:
            result.flags.append(f"cites items it was not given: {', '.join(result.invalid_citations)}")
        if result.removed:
            result.flags.append(f"{len(result.removed)} unsupported sentence(s) removed")
        if built.handed_over and not check.has_handover():
            words = localized(request.language)
            answered = any(q.label is not None for q in built.questions)
            quoted = "; ".join(f"\u201c{' '.join(q.split())[:140]}\u201d" for q in built.handed_over)
            note = words["passed_on"].format(questions=quoted) if answered else words["handover"]
            reply = insert_before_signoff(reply, note)
            result.flags.append("handover sentence added for the questions no passage answers")
        result.reply = reply
        result.support = {**check.to_json(), **self._support_verdict(check, built, result)}
        # The guard reads what the model wrote, not only what is left: a removed promise still escalates.
        written = strip_citations(verdict.reply)
        result.violations = reply_violations(written, request)
        result.violations += [v for v in reply_violations(reply, request) if v not in result.violations]
        if result.violations:
            result.escalate = True
            result.escalate_reasons.append("the reply failed the output check: " + "; ".join(result.violations))
        if verdict.needs_human:
            result.escalate = True
            result.escalate_reasons.append("the model says a person must handle this ticket")

    def _accept_quote(
        self, result: DraftResult, verdict: QuoteVerdict, built: BuiltPrompt, request: DraftRequest
    ) -> None:
        """The reply from the reader's quote and the sentences the model added to it: ids it was not shown are
        refused; a question it chose nothing for keeps the reader's quote and is recorded as disputed (measured
        on the demo deployment set with the 1.5B model: its "nothing answers this" was wrong each time the reader
        had answered, while a sentence it added from another passage could complete a reply); the opening goes
        through the support check and the guard."""
        chosen: dict[str, list[str]] = {}
        refused: list[str] = []
        for key, ids in verdict.answers.items():
            for uid in ids:
                if uid in built.units and key in built.choices:
                    chosen.setdefault(key, [])
                    if uid not in chosen[key]:
                        chosen[key].append(uid)
                else:
                    refused.append(f"{key}:{uid}")
        quotes: list[list[Quote]] = []
        added: dict[str, list[str]] = {}
        disputed: list[str] = []
        for ev, plan in zip(request.evidence, built.questions, strict=True):
            if plan.label is None:
                quotes.append([])
                continue
            key = plan.label
            units = sorted((built.units[uid] for uid in chosen.get(key, [])), key=lambda u: (u.passage, u.index))
            if not units:
                disputed.append(key)
            merged, extra = with_additions(ev, units)
            quotes.append(merged)
            if extra:
                added[key] = [u.id for u in extra]
        given = sum(len(ids) for ids in chosen.values()) + len(refused)
        result.citation_validity = (given - len(refused)) / given if given else 1.0
        result.self_confidence = verdict.confidence
        result.reasons = [self._redact(r) for r in verdict.reasons]
        result.needs_human = verdict.needs_human
        result.invalid_citations = refused
        if refused:
            result.flags.append(f"chose sentences it was not shown: {', '.join(refused)}")
        opening, check = self._opening(verdict.opening, built, request)
        if check is not None:
            result.support = {"opening": check.to_json()}
            result.removed = [s.text for s in check.removed]
            if result.removed:
                result.flags.append("the opening sentence states what no passage supports: removed")
        result.quote = {
            "asked": {q.label: q.text for q in built.questions if q.label is not None},
            "chosen": chosen,
            "added": added,
            "refused": refused,
            "disputed": disputed,
            "opening": opening or None,
        }
        self._compose_quoted(result, request, quotes, opening=opening, written=verdict.opening)
        if verdict.needs_human:
            result.escalate = True
            result.escalate_reasons.append("the model says a person must handle this ticket")

    def _opening(self, written: str, built: BuiltPrompt, request: DraftRequest) -> tuple[str, SupportCheck | None]:
        """The model's opening sentence, less a greeting (the reply has its own), or "" when it states a fact no
        passage shown supports."""
        opening = _LEADING_GREETING.sub("", first_sentence(written))[:OPENING_CHARS].strip()
        # A sentence, not a name or a signature line (measured: the 1.5B model wrote "Ahmed Rahimi"), and not the
        # customer's own words back (measured: "Please switch Lumen Lab to annual billing starting today, …" as the
        # opening of a reply, which reads as if we had agreed).
        if len(opening.split()) < MIN_OPENING_WORDS or opening[-1] not in ".!":
            return "", None
        if _shingles(opening, ECHO_WORDS) & _shingles(ticket_text(request.ticket), ECHO_WORDS):
            return "", None
        opening = opening[0].upper() + opening[1:]
        check = check_support(
            opening,
            passages=built.passages,
            cited=list(built.passages),
            ticket=ticket_text(request.ticket),
            customer_name=request.customer_name,
        )
        return ("" if check.removed else opening), check

    def _compose_quoted(
        self,
        result: DraftResult,
        request: DraftRequest,
        quotes: list[list[Quote]],
        *,
        opening: str,
        written: str = "",
    ) -> None:
        composition = compose_answers(
            request.evidence, language=request.language, tier=request.tier, on_trial=request.on_trial, chosen=quotes
        )
        reply = knowledge_reply(request, composition, opening=opening or None)
        result.reply = reply.text
        result.cited_ids = list(composition.citations)
        result.answered = [e.question.text for e in composition.answered]
        result.handed_over = [e.question.text for e in composition.handed_over]
        if reply.removed:
            result.quote["guard_removed"] = reply.removed
        # The guard reads what the model wrote (a removed opening still escalates a promise) and the reply.
        violations = reply_violations(written, request) if written.strip() else []
        violations += [v for v in reply.violations if v not in violations]
        channel = request.ticket.get("channel") or "email"
        violations += [v for v in llm_output_violations(reply.text, channel=channel) if v not in violations]
        result.violations = violations
        if violations:
            result.escalate = True
            result.escalate_reasons.append("the reply failed the output check: " + "; ".join(violations))

    def _support_verdict(self, check: SupportCheck, built: BuiltPrompt, result: DraftResult) -> dict[str, Any]:
        """Escalate when a question the evidence answers is left without a supported answer, when more than
        `llm_max_unsupported_share` of the factual sentences were removed, or when no supported fact is left."""
        unanswered = [
            q.text for q in built.questions if q.answerable and (q.label is None or not check.answers(q.label))
        ]
        limit = self.settings.llm_max_unsupported_share
        reasons: list[str] = []
        for question in unanswered:
            reasons.append(f"the question \u201c{' '.join(question.split())[:140]}\u201d has no supported answer")
        factual = len(check.factual)
        if check.removed and check.removed_share > limit:
            reasons.append(
                f"{len(check.removed)} of {factual} factual sentence(s) had no support in the passages they cite "
                f"(more than {limit:.0%})"
            )
        elif factual == len(check.removed) and not result.needs_human:
            reasons.append("the reply states nothing the passages it cites support")
        if reasons:
            result.escalate = True
            result.escalate_reasons.extend(reasons)
        return {"unanswered": unanswered, "handed_over": built.handed_over, "max_removed_share": limit}

    def _redact(self, text: str) -> str:
        """The text without the key or the URL's credentials (a provider's error may quote either)."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text


def _as_method(value: str) -> Method:
    if value == "json_schema":
        return "json_schema"
    if value == "json_mode":
        return "json_mode"
    return "function_calling"


def _secrets_of(settings: Settings) -> tuple[str, ...]:
    """What `_redact` removes: the key, and the base URL's user-info in every form a message may quote it."""
    found: list[str] = [settings.openai_api_key or ""]
    url = settings.openai_base_url or ""
    _, credentials = split_url_credentials(url)
    if credentials:
        userinfo = urlsplit(url).netloc.rsplit("@", 1)[0]
        user, _, password = userinfo.partition(":")
        found += [userinfo, unquote(userinfo), credentials.removeprefix("Basic "), password, unquote(password)]
        if not password:  # `https://<token>@host`: the user name is the secret
            found += [user, unquote(user)]
    # Longest first, so a secret is replaced whole before a part of it could be; very short ones would mangle text.
    return tuple(sorted({s for s in found if len(s) >= 4}, key=len, reverse=True))


def _retry_after(exc: openai.APIStatusError) -> float | None:
    headers = exc.response.headers
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds: float = float(value) / divisor
        except ValueError:
            parsed = email.utils.parsedate_tz(value) if divisor == 1.0 else None
            if parsed is None:
                continue
            seconds = float(email.utils.mktime_tz(parsed)) - time.time()
        if math.isfinite(seconds):
            return max(0.0, seconds)
    return None


def _classify_api_error(exc: openai.APIError) -> _Attempt:
    message = f"{type(exc).__name__}: {getattr(exc, 'message', None) or exc}"
    # Subclasses before their parents: a timeout is a connection error, a 429 is a status error.
    if isinstance(exc, openai.APITimeoutError):
        return _Attempt("timeout", error=message)
    if isinstance(exc, openai.APIConnectionError):
        return _Attempt("connection", error=message)
    if isinstance(exc, openai.RateLimitError):
        return _Attempt("rate_limited", error=message, status_code=429, retry_after_s=_retry_after(exc))
    if isinstance(exc, openai.APIStatusError):
        code = exc.status_code
        if code == 408:
            return _Attempt("timeout", error=message, status_code=code)
        if code >= 500:
            return _Attempt("server_error", error=message, status_code=code, retry_after_s=_retry_after(exc))
        # 400 (including a context overflow), 401, 403, 404, 409, 422: trying again cannot help.
        return _Attempt("client_error", error=message, status_code=code)
    # APIResponseValidationError and the like: the server answered something the client could not read.
    return _Attempt("server_error", error=message)


def _message_basics(message: AIMessage) -> tuple[dict[str, Any], _Attempt | None]:
    """What every attempt records of the model's message (its raw text and token counts), and the attempt when the
    server flagged the answer as a refusal."""
    usage: Mapping[str, Any] = message.usage_metadata or {}
    base: dict[str, Any] = {
        "raw_output": _raw_text(message),
        "prompt_tokens": usage.get("input_tokens"),
        "completion_tokens": usage.get("output_tokens"),
    }
    refused = message.additional_kwargs.get("refusal")
    if refused:
        return base, _Attempt("refusal", error=f"the model refused: {str(refused)[:200]}", **base)
    return base, None


def _interpret(message: BaseMessage, *, quote: bool = False) -> _Attempt:
    """Turn the model's message into an attempt: the verdict from the forced tool call, or from JSON written as
    the message (json_schema, JSON mode, or a server that ignored the tool), checked."""
    if quote:
        return _interpret_quote(message)
    if not isinstance(message, AIMessage):
        return _Attempt("invalid_output", error=f"unexpected answer type {type(message).__name__}")
    base, refusal = _message_basics(message)
    if refusal is not None:
        return refusal
    content = message.text
    calls = [c for c in message.tool_calls if c.get("name") == VERDICT_TOOL_NAME] or list(message.tool_calls)
    verdict: DraftVerdict | None = None
    if calls:
        try:
            verdict = DraftVerdict.model_validate(calls[0].get("args") or {})
        except ValidationError as exc:
            return _Attempt("invalid_output", error=_describe_parse_error(exc), **base)
    elif message.invalid_tool_calls:
        return _Attempt("invalid_output", error="the tool call's arguments are not valid JSON", **base)
    else:
        verdict, problem = _verdict_from_content(content)
        if verdict is None:
            if content and looks_like_refusal(content):
                return _Attempt("refusal", error=f"the model refused: {content[:200]}", **base)
            if problem is not None:
                return _Attempt("invalid_output", error=_describe_parse_error(problem), **base)
            what = "answered in plain text" if content.strip() else "returned nothing"
            return _Attempt("invalid_output", error=f"the model {what} instead of the {VERDICT_TOOL_NAME} JSON", **base)
    finish = message.response_metadata.get("finish_reason")
    if not verdict.needs_human and looks_like_refusal(verdict.reply):
        return _Attempt("refusal", error=f"the reply is a refusal: {verdict.reply[:200]}", **base)
    if not verdict.reply.strip() and not verdict.needs_human:
        return _Attempt("invalid_output", error="the reply is empty", **base)
    if finish == "length":
        return _Attempt("invalid_output", error="the answer was cut off at the output token limit", **base)
    return _Attempt("ok", verdict=verdict, **base)


def _interpret_quote(message: BaseMessage) -> _Attempt:
    """Quote mode's answer: the ids per question, read from the tool call or the message's JSON."""
    if not isinstance(message, AIMessage):
        return _Attempt("invalid_output", error=f"unexpected answer type {type(message).__name__}")
    base, refusal = _message_basics(message)
    if refusal is not None:
        return refusal
    calls = [c for c in message.tool_calls if c.get("name") == QUOTE_TOOL_NAME] or list(message.tool_calls)
    if calls:
        obj: dict[str, Any] | None = dict(calls[0].get("args") or {})
    elif message.invalid_tool_calls:
        return _Attempt("invalid_output", error="the tool call's arguments are not valid JSON", **base)
    else:
        obj = _unwrap(_json_object(message.text), QUOTE_TOOL_NAME)
    if obj is None:
        if message.text and looks_like_refusal(message.text):
            return _Attempt("refusal", error=f"the model refused: {message.text[:200]}", **base)
        what = "answered in plain text" if message.text.strip() else "returned nothing"
        return _Attempt("invalid_output", error=f"the model {what} instead of the {QUOTE_TOOL_NAME} JSON", **base)
    try:
        verdict = QuoteVerdict.model_validate(obj)
    except ValidationError as exc:
        return _Attempt("invalid_output", error=_describe_parse_error(exc, QUOTE_TOOL_NAME), **base)
    if message.response_metadata.get("finish_reason") == "length":
        return _Attempt("invalid_output", error="the answer was cut off at the output token limit", **base)
    return _Attempt("ok", verdict=verdict, **base)


def _unwrap(obj: dict[str, Any] | None, name: str) -> dict[str, Any] | None:
    """The arguments of a call written as text ({"name": …, "arguments": {…}}) or wrapped in the tool's name."""
    if obj is None:
        return None
    for key in ("arguments", "parameters"):
        if isinstance(obj.get(key), dict) and obj.get("name") in (name, None):
            return dict(obj[key])
    if isinstance(obj.get(name), dict) and len(obj) == 1:
        return dict(obj[name])
    return obj


MIN_OPENING_WORDS = 4
# An opening sharing this many consecutive words with the ticket copies it.
ECHO_WORDS = 4
# A greeting the model opened its opening with ("Hi Sam, thanks for …"): the reply already greets.
_LEADING_GREETING = re.compile(
    r"^(?:hi|hello|hey|dear|good (?:morning|afternoon|evening)|hallo|hola|bonjour|ol[áa])\b[^,.!?]{0,40}[,!.]\s*",
    re.IGNORECASE,
)


def _describe_parse_error(problem: BaseException, name: str = VERDICT_TOOL_NAME) -> str:
    if isinstance(problem, ValidationError):
        details = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'output'}: {e['msg']}" for e in problem.errors()[:5]
        )
        return f"the structured output does not fit {name} ({details})"
    return f"{type(problem).__name__}: {str(problem).splitlines()[0][:300] if str(problem) else ''}"


def _json_object(text: str) -> dict[str, Any] | None:
    """The JSON object a message's text holds: bare, in a ``` fence, or between prose and the closing brace."""
    text = text.strip()
    if text.startswith("```"):
        text = text.strip("`").strip()
        text = text.removeprefix("json").strip()
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        return None
    try:
        value = json.loads(text[start : end + 1])
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _verdict_from_content(content: str) -> tuple[DraftVerdict | None, ValidationError | None]:
    """The verdict written as the message: some servers ignore `tool_choice` and answer with the JSON, as the
    arguments alone or as the call ({"name": "DraftVerdict", "arguments": {...}})."""
    obj = _json_object(content)
    if obj is None:
        return None, None
    for key in ("arguments", "parameters"):
        if isinstance(obj.get(key), dict) and obj.get("name") in (VERDICT_TOOL_NAME, None):
            obj = obj[key]
            break
    if isinstance(obj.get(VERDICT_TOOL_NAME), dict) and len(obj) == 1:
        obj = obj[VERDICT_TOOL_NAME]
    try:
        return DraftVerdict.model_validate(obj), None
    except ValidationError as exc:
        return None, exc


def _completion_text(completion: Any) -> str:
    try:
        return str(completion.choices[0].message.content or "")
    except (AttributeError, IndexError):
        return ""


def _raw_text(raw: AIMessage) -> str:
    parts: list[str] = []
    if raw.text:
        parts.append(raw.text)
    parts.extend(json.dumps(call.get("args"), ensure_ascii=False) for call in raw.tool_calls)
    parts.extend(str(call.get("args") or "") for call in raw.invalid_tool_calls)
    refusal = raw.additional_kwargs.get("refusal")
    if refusal:
        parts.append(f"refusal: {refusal}")
    return "\n".join(parts)
