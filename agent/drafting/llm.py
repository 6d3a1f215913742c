"""The LLM drafter: a reply and a structured self-assessment from any OpenAI-compatible server via langchain-openai.

One `draft()` call is a bounded series of attempts (our retries, not the client's: each is timed, counted and
may honour Retry-After). The result is never a reply from an errored call: it carries either a checked reply with
the model's verdict, or `error` + `fell_back` so the caller uses the offline drafter or escalates
(`settings.llm_fallback`). Structured output uses tool calling (`method="function_calling"`), which every
OpenAI-compatible server that supports tools understands, json_schema or not.
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
from typing import TYPE_CHECKING, Any, Literal, cast
from urllib.parse import unquote, urlsplit, urlunsplit

import openai
from langchain_core.exceptions import ModelRefusalError, OutputParserException
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage
from langchain_core.runnables import Runnable
from langchain_openai import ChatOpenAI
from pydantic import SecretStr, ValidationError

from agent.drafting.guardrails import check_reply, find_emails, find_urls
from agent.drafting.prompts import (
    DISTINCTIVE_RULES,
    FENCE_NAMES,
    PROMPT_CANARY,
    SYSTEM_PROMPT,
    BuiltPrompt,
    DraftVerdict,
    PromptInput,
    build_messages,
    reply_limit,
)
from agent.scoring.risk import fold
from core.settings import redact_url

if TYPE_CHECKING:
    from core.metrics import Metrics
    from core.settings import Settings

__all__ = [
    "STRUCTURED_OUTPUT_METHOD",
    "DraftRequest",
    "DraftResult",
    "DraftVerdict",
    "LLMDrafter",
    "build_chat_model",
    "citation_validity",
    "confidence_factor",
    "describe_llm",
    "llm_output_violations",
    "looks_like_refusal",
    "make_llm_drafter",
    "reply_violations",
    "split_url_credentials",
    "summarize_account",
]

log = logging.getLogger("deskpilot.llm")

# Tool calling works with OpenAI, Azure, vLLM, Ollama, llama.cpp, LiteLLM and the like; json_schema response
# formats are supported by fewer servers. The fake server in tests speaks both.
STRUCTURED_OUTPUT_METHOD: Literal["function_calling"] = "function_calling"

Outcome = Literal[
    "ok", "rate_limited", "server_error", "timeout", "connection", "client_error", "invalid_output", "refusal"
]
_RETRYABLE: frozenset[str] = frozenset({"rate_limited", "server_error", "timeout", "connection"})
# A malformed or refused answer is worth one more try, not the whole retry budget.
_OUTPUT_FAILURES: frozenset[str] = frozenset({"invalid_output", "refusal"})
RAW_OUTPUT_CHARS = 20_000


# --- request and result -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DraftRequest:
    """Everything the model may see. `items` are retrieved items, best first, as dicts with at least
    {id, kind ("resolution" | "kb_chunk"), title, text, resolution, similarity} (`RetrievedItem.to_json()`).
    `allowed_urls` / `allowed_emails` add addresses the reply may contain besides those in the ticket and items
    (the service's own support address, say)."""

    subject: str
    body: str
    customer_name: str | None = None
    customer_tier: str | None = None
    account_summary: str | None = None
    items: Sequence[Mapping[str, Any]] = ()
    category: str | None = None
    channel: str = "email"
    allowed_urls: Sequence[str] = ()
    allowed_emails: Sequence[str] = ()

    def prompt_input(self) -> PromptInput:
        return PromptInput(
            subject=self.subject,
            body=self.body,
            customer_name=self.customer_name,
            customer_tier=self.customer_tier,
            account_summary=self.account_summary,
            items=[_as_mapping(item) for item in self.items],
            category=self.category,
            channel=self.channel,
        )


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


@dataclass
class DraftResult:
    """One LLM draft. With `error` set, `reply` is empty and `fell_back` is true: the caller must use the offline
    drafter (`fallback == "offline"`) or escalate (`fallback == "escalate"`). With `escalate` set, the reply
    must not be sent (guardrail violation or the model itself asked for a person)."""

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
    error_kind: Outcome | None = None
    raw_output: str = ""
    prompt: str = ""
    labels: dict[str, str] = field(default_factory=dict)  # "R1" -> item id, as the model saw them
    dropped_ids: list[str] = field(default_factory=list)  # items left out to fit the input budget
    attempts: int = 0
    attempt_log: list[AttemptRecord] = field(default_factory=list)
    fell_back: bool = False
    fallback: str | None = None
    drafter: str = "llm"

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def sendable(self) -> bool:
        """A reply the decision step may send (subject to the confidence thresholds)."""
        return self.ok and not self.escalate and bool(self.reply.strip())

    @property
    def confidence_factor(self) -> float | None:
        """What the LLM adds to the confidence score (see `confidence_factor`); None without a verdict."""
        if not self.ok or self.self_confidence is None or self.citation_validity is None:
            return None
        return confidence_factor(self.self_confidence, self.citation_validity)

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


# Weights of `confidence_factor`; the floor terms keep one weak signal from zeroing a strong retrieval score,
# while grounding (citation validity) weighs more than the model's opinion of itself.
CITATION_FLOOR = 0.5
SELF_FLOOR = 0.55


def confidence_factor(self_confidence: float, citation_validity: float) -> float:
    """A multiplier in [0.275, 1] for the retrieval-based confidence: the LLM can only lower it.

    f = (0.5 + 0.5·citation_validity) · (0.55 + 0.45·self_confidence). A reply citing nothing that was
    retrieved gets at most half the retrieval score, so a confident model with no supporting sources lands below
    the review threshold; a fully grounded reply the model rates 1.0 keeps the score unchanged."""
    v = min(1.0, max(0.0, citation_validity))
    s = min(1.0, max(0.0, self_confidence))
    return (CITATION_FLOOR + (1 - CITATION_FLOOR) * v) * (SELF_FLOOR + (1 - SELF_FLOOR) * s)


def summarize_account(context: Mapping[str, Any], *, limit: int = 8) -> str:
    """The `load_context` output ({customer, events, prior_tickets, signals}) as short lines for the prompt."""
    lines: list[str] = []
    signals = [str(s) for s in context.get("signals") or []]
    if signals:
        lines.append("Signals: " + "; ".join(signals[:limit]))
    for event in list(context.get("events") or [])[:limit]:
        if isinstance(event, Mapping):
            kind = event.get("type") or event.get("kind") or event.get("event_type") or "event"
            when = event.get("occurred_at") or event.get("created_at") or event.get("at") or ""
            detail = event.get("summary") or event.get("description") or event.get("amount") or ""
            lines.append(" ".join(str(p) for p in ("Event:", kind, when, detail) if p))
    for ticket in list(context.get("prior_tickets") or [])[:limit]:
        if isinstance(ticket, Mapping):
            subject = " ".join(str(ticket.get("subject") or "").split())[:120]
            status = ticket.get("status") or ""
            resolution = " ".join(str(ticket.get("resolution") or "").split())[:200]
            text = f"Earlier ticket: {subject}" + (f" ({status})" if status else "")
            lines.append(text + (f"; resolved with: {resolution}" if resolution else ""))
    return "\n".join(lines)


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
        "fallback": settings.llm_fallback,
        "structured_output": STRUCTURED_OUTPUT_METHOD,
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

    Addresses are allowed when the ticket, a retrieved item or the caller's allow-list contains them."""
    sources = [request.subject, request.body, *(_item_text(_as_mapping(i)) for i in request.items)]
    urls = [url for text in sources for url in find_urls(text)] + list(request.allowed_urls)
    emails = [mail for text in sources for mail in find_emails(text)] + list(request.allowed_emails)
    violations = check_reply(reply, allowed_urls=urls, allowed_emails=emails)
    return violations + [v for v in llm_output_violations(reply, channel=request.channel) if v not in violations]


def citation_validity(cited: Sequence[str], labels: Mapping[str, str]) -> tuple[float, list[str], list[str]]:
    """(share of citations that point at a retrieved item, the valid item ids, the invalid citations).

    A citation may be a label the model was shown ("R1", "[K2]") or an item id. Citing nothing scores 0:
    a reply that rests on no source is not grounded, however confident the model is."""
    by_id = {item_id: item_id for item_id in labels.values()}
    valid: list[str] = []
    invalid: list[str] = []
    for raw in cited:
        key = str(raw).strip().strip("[]()").strip()
        item_id = labels.get(key.upper()) or by_id.get(key)
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


_LABEL_IN_REPLY = re.compile(r"\s?\[\s*[RK]\d{1,3}\s*\](?:\s*,\s*\[\s*[RK]\d{1,3}\s*\])*")


# --- the drafter --------------------------------------------------------------------------------------------


@dataclass
class _Attempt:
    outcome: Outcome
    verdict: DraftVerdict | None = None
    error: str | None = None
    status_code: int | None = None
    retry_after_s: float | None = None
    raw_output: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class LLMDrafter:
    """Drafts replies with the configured model. Construct once per process; `draft` is safe to call
    concurrently. Tests may inject `chat_model`, `sleep` and `rng`."""

    name = "llm"

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
        self._runnable: Runnable[Any, dict[str, Any]] | None = None
        self._http_client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._secrets = _secrets_of(settings)

    @property
    def model(self) -> str:
        return self.settings.llm_model

    def describe(self) -> dict[str, Any]:
        return describe_llm(self.settings)

    def _structured(self) -> Runnable[Any, dict[str, Any]]:
        # An httpx client belongs to one event loop: build the model for the loop we run in (eval and tests may
        # run several loops in one process) instead of langchain's process-wide cached client.
        loop = asyncio.get_running_loop()
        if self._runnable is None or (self._injected is None and self._loop is not loop):
            if self._injected is not None:
                chat: BaseChatModel = self._injected
            else:
                self._http_client = openai.DefaultAsyncHttpxClient(timeout=self.settings.llm_timeout_s)
                chat = build_chat_model(self.settings, http_async_client=self._http_client)
            structured = chat.with_structured_output(DraftVerdict, method=STRUCTURED_OUTPUT_METHOD, include_raw=True)
            self._runnable = cast("Runnable[Any, dict[str, Any]]", structured)
            self._loop = loop
        return self._runnable

    async def aclose(self) -> None:
        if self._http_client is not None:
            await self._http_client.aclose()
            self._http_client = None
            self._runnable = None

    async def draft(self, request: DraftRequest) -> DraftResult:
        started = time.perf_counter()
        built = build_messages(request.prompt_input(), max_input_tokens=self.settings.llm_max_input_tokens)
        result = DraftResult(
            model=self.model,
            prompt=self._redact(built.text),
            labels=dict(built.labels),
            dropped_ids=list(built.dropped_ids),
        )
        if built.dropped_ids:
            result.flags.append(f"{len(built.dropped_ids)} lower-ranked reference item(s) left out to fit the input")
        for part in built.truncated:
            result.flags.append(f"{part} shortened to fit the input")

        attempt = await self._attempt_with_retries(built, result)
        result.latency_ms = round((time.perf_counter() - started) * 1000, 1)
        result.raw_output = self._redact(attempt.raw_output[:RAW_OUTPUT_CHARS])
        if attempt.outcome != "ok" or attempt.verdict is None:
            return self._failed(result, attempt)
        self._accept(result, attempt.verdict, built, request)
        return result

    async def _attempt_with_retries(self, built: BuiltPrompt, result: DraftResult) -> _Attempt:
        retries_left = self.settings.llm_max_retries
        output_retry_used = False
        transient_failures = 0
        while True:
            n = result.attempts + 1
            t0 = time.perf_counter()
            attempt = await self._attempt(built)
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
            )
            result.attempt_log.append(record)
            result.usage["prompt_tokens"] += attempt.prompt_tokens or 0
            result.usage["completion_tokens"] += attempt.completion_tokens or 0
            self._observe(attempt, seconds)
            if attempt.outcome == "ok" or retries_left <= 0:
                return attempt
            if attempt.outcome in _OUTPUT_FAILURES and not output_retry_used:
                output_retry_used = True
                delay = 0.0
            elif attempt.outcome in _RETRYABLE:
                transient_failures += 1
                delay = self._delay(transient_failures, attempt.retry_after_s)
            else:
                return attempt
            retries_left -= 1
            log.warning(
                "LLM attempt %d failed (%s: %s); retrying in %.2f s", n, attempt.outcome, record.error, delay
            )
            record.slept_s = round(delay, 3)
            if delay > 0:
                await self._sleep(delay)

    def _delay(self, failures: int, retry_after_s: float | None) -> float:
        if retry_after_s is not None and retry_after_s >= 0:
            # The server knows when it will take us again; a little jitter keeps workers from stampeding.
            return min(retry_after_s, self.retry_after_cap_s) * (1.0 + 0.1 * self._rng())
        exp = min(self.backoff_max_s, self.backoff_base_s * 2.0 ** (failures - 1))
        return exp / 2 + self._rng() * exp / 2  # "equal jitter"

    async def _attempt(self, built: BuiltPrompt) -> _Attempt:
        # The client's own timeout normally fires first; this guard also bounds a server that trickles bytes.
        guard = self.settings.llm_timeout_s + 1.0
        try:
            async with asyncio.timeout(guard):
                out = await self._structured().ainvoke(built.messages)
        except TimeoutError:
            return _Attempt("timeout", error=f"no answer within {guard:.1f} s")
        except openai.APIError as exc:
            return _classify_api_error(exc)
        except Exception as exc:  # a library bug must fall back, not take the ticket down with it
            log.exception("LLM call failed unexpectedly")
            return _Attempt("client_error", error=f"{type(exc).__name__}: {exc}")
        return _interpret(out)

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

    def _accept(self, result: DraftResult, verdict: DraftVerdict, built: BuiltPrompt, request: DraftRequest) -> None:
        reply, stripped = _LABEL_IN_REPLY.subn("", verdict.reply)
        reply = reply.strip()
        if stripped:
            result.flags.append("reference labels removed from the reply text")
        validity, valid, invalid = citation_validity(verdict.cited_ids, built.labels)
        result.reply = reply
        result.cited_ids = valid
        result.invalid_citations = invalid
        result.citation_validity = validity
        result.self_confidence = verdict.confidence
        result.reasons = [self._redact(r) for r in verdict.reasons]
        result.needs_human = verdict.needs_human
        if not verdict.cited_ids:
            result.flags.append("cites no reference material")
        if invalid:
            result.flags.append(f"cites items it was not given: {', '.join(invalid)}")
        result.violations = reply_violations(reply, request)
        if result.violations:
            result.escalate = True
            result.escalate_reasons.append("the reply failed the output check: " + "; ".join(result.violations))
        if verdict.needs_human:
            result.escalate = True
            result.escalate_reasons.append("the model says a person must handle this ticket")

    def _redact(self, text: str) -> str:
        """The text without the key or the URL's credentials (a provider's error may quote either)."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text


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


def _as_mapping(item: Any) -> Mapping[str, Any]:
    if isinstance(item, Mapping):
        return item
    to_json = getattr(item, "to_json", None)
    if callable(to_json):
        return dict(to_json())
    return dict(vars(item))


def _item_text(item: Mapping[str, Any]) -> str:
    return " ".join(str(item.get(key) or "") for key in ("title", "text", "resolution"))


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


def _interpret(out: Mapping[str, Any]) -> _Attempt:
    """Turn `with_structured_output(..., include_raw=True)`'s {raw, parsed, parsing_error} into an attempt."""
    raw = out.get("raw")
    parsed = out.get("parsed")
    problem = out.get("parsing_error")
    usage = getattr(raw, "usage_metadata", None) or {}
    base: dict[str, Any] = {
        "raw_output": _raw_text(raw),
        "prompt_tokens": usage.get("input_tokens"),
        "completion_tokens": usage.get("output_tokens"),
    }
    if problem is not None:
        if isinstance(problem, ModelRefusalError):
            return _Attempt("refusal", error=f"the model refused: {problem}", **base)
        return _Attempt("invalid_output", error=_describe_parse_error(problem), **base)
    if isinstance(raw, AIMessage) and raw.invalid_tool_calls:
        return _Attempt("invalid_output", error="the tool call's arguments are not valid JSON", **base)
    content = raw.text if isinstance(raw, AIMessage) else ""
    verdict = parsed if isinstance(parsed, DraftVerdict) else _verdict_from_content(content)
    if verdict is None:
        if content and looks_like_refusal(content):
            return _Attempt("refusal", error=f"the model refused: {content[:200]}", **base)
        what = "answered in plain text" if content.strip() else "returned nothing"
        return _Attempt("invalid_output", error=f"the model {what} instead of calling DraftVerdict", **base)
    finish = raw.response_metadata.get("finish_reason") if isinstance(raw, AIMessage) else None
    if not verdict.needs_human and looks_like_refusal(verdict.reply):
        return _Attempt("refusal", error=f"the reply is a refusal: {verdict.reply[:200]}", **base)
    if not verdict.reply.strip() and not verdict.needs_human:
        return _Attempt("invalid_output", error="the reply is empty", **base)
    if finish == "length":
        return _Attempt("invalid_output", error="the answer was cut off at the output token limit", **base)
    return _Attempt("ok", verdict=verdict, **base)


def _describe_parse_error(problem: BaseException) -> str:
    if isinstance(problem, ValidationError):
        details = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'output'}: {e['msg']}" for e in problem.errors()[:5]
        )
        return f"the structured output does not fit DraftVerdict ({details})"
    if isinstance(problem, OutputParserException):
        return f"the structured output could not be parsed: {str(problem).splitlines()[0][:300]}"
    return f"{type(problem).__name__}: {str(problem).splitlines()[0][:300] if str(problem) else ''}"


def _verdict_from_content(content: str) -> DraftVerdict | None:
    """Some servers ignore `tool_choice` and write the JSON as the message: accept it when it fits."""
    text = content.strip()
    if text.startswith("```"):
        text = text.strip("`").removeprefix("json").strip()
    if not text.startswith("{"):
        return None
    try:
        return DraftVerdict.model_validate(json.loads(text))
    except (ValueError, ValidationError):
        return None


def _raw_text(raw: Any) -> str:
    if not isinstance(raw, AIMessage):
        return ""
    parts: list[str] = []
    if raw.text:
        parts.append(raw.text)
    parts.extend(json.dumps(call.get("args"), ensure_ascii=False) for call in raw.tool_calls)
    parts.extend(str(call.get("args") or "") for call in raw.invalid_tool_calls)
    refusal = raw.additional_kwargs.get("refusal")
    if refusal:
        parts.append(f"refusal: {refusal}")
    return "\n".join(parts)
