"""DeskPilot settings: one immutable object built from a mapping (the environment plus `.env` by default).

Tests build their own with `Settings.from_mapping({...})` instead of touching `os.environ`.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SMTP_FROM = "DeskPilot Support <support@deskpilot.local>"
AGENT_MODES = ("live", "shadow")
STRUCTURED_OUTPUT_METHODS = ("auto", "json_schema", "function_calling", "json_mode")
# The models `deskpilot llm` can assemble and serve (app/local_llm.py pins their packages and checksums).
LOCAL_MODELS = ("smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")
DEFAULT_LOCAL_MODEL = "qwen2.5-coder-1.5b"
DEFAULT_LOCAL_PORT = 8091
LOCAL_LLM_TIMEOUT_S = 120.0
# The embedding runtimes (DESKPILOT_EMBEDDING_RUNTIME): auto = the int8 ONNX build when it builds and passes its
# load check, else torch fp32 (knowledge/embedder.py `sentence_transformer_embedder`).
AUTO_RUNTIME = "auto"
ONNX_INT8_RUNTIME = "onnx-int8"
TORCH_RUNTIME = "torch"
EMBEDDING_RUNTIMES = (AUTO_RUNTIME, ONNX_INT8_RUNTIME, TORCH_RUNTIME)
# The least prompt a context window must leave room for after the output (DESKPILOT_LLM_CONTEXT_TOKENS).
MIN_PROMPT_TOKENS = 256
# A shorter admin token can be guessed, failed-auth rate limit or not (`openssl rand -hex 32` gives 64).
MIN_ADMIN_TOKEN_CHARS = 24


class SettingsError(ValueError):
    """A setting has a value that cannot be used; the message names the variable."""


def _str(env: Mapping[str, str], key: str, default: str | None = None) -> str | None:
    value = env.get(key)
    if value is None or value.strip() == "":
        return default
    return value.strip()


def _float(env: Mapping[str, str], key: str, default: float, lo: float, hi: float) -> float:
    raw = _str(env, key)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{key} must be a number, got {raw!r}") from None
    if not lo <= value <= hi:
        raise SettingsError(f"{key} must be between {lo} and {hi}, got {value}")
    return value


def _int(env: Mapping[str, str], key: str, default: int, lo: int, hi: int) -> int:
    raw = _str(env, key)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{key} must be a whole number, got {raw!r}") from None
    if not lo <= value <= hi:
        raise SettingsError(f"{key} must be between {lo} and {hi}, got {value}")
    return value


def _bool(env: Mapping[str, str], key: str, default: bool) -> bool:
    raw = _str(env, key)
    if raw is None:
        return default
    lowered = raw.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{key} must be true or false, got {raw!r}")


def _admin_token(env: Mapping[str, str]) -> str | None:
    token = _str(env, "DESKPILOT_ADMIN_TOKEN")
    if token is not None and len(token) < MIN_ADMIN_TOKEN_CHARS:
        raise SettingsError(
            f"DESKPILOT_ADMIN_TOKEN must be at least {MIN_ADMIN_TOKEN_CHARS} characters long, got {len(token)}: "
            "use a long random string, e.g. `openssl rand -hex 32`"
        )
    return token


_HOST_NAME = re.compile(r"^(?:\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")


def _hosts(env: Mapping[str, str], key: str) -> tuple[str, ...]:
    """A comma-separated list of host names (`*.example.com` also allows its subdomains), lower-cased."""
    raw = _str(env, key)
    if raw is None:
        return ()
    hosts = []
    for item in raw.split(","):
        host = item.strip().lower().rstrip(".").removeprefix("[").removesuffix("]")
        if not host:
            continue
        if not _HOST_NAME.match(host) and not _is_ip_literal(host):
            raise SettingsError(f"{key} must list host names separated by commas, got {item.strip()!r}")
        hosts.append(host)
    return tuple(hosts)


def _is_ip_literal(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _imap_url(env: Mapping[str, str]) -> str | None:
    """`imap://` or `imaps://user:password@host[:port][/folder]`; the message names the variable, never the
    password."""
    from urllib.parse import urlsplit

    raw = _str(env, "DESKPILOT_IMAP_URL")
    if raw is None:
        return None
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise SettingsError(f"DESKPILOT_IMAP_URL is not a valid URL: {redact_url(raw)}") from None
    if parts.scheme.lower() not in {"imap", "imaps"} or not parts.hostname:
        raise SettingsError(f"DESKPILOT_IMAP_URL must be imap:// or imaps://user:password@host, got {redact_url(raw)}")
    if not parts.username or parts.password is None:
        raise SettingsError("DESKPILOT_IMAP_URL must carry the mailbox's user name and password")
    return raw


def _origins(env: Mapping[str, str], key: str) -> tuple[str, ...]:
    """Comma-separated web origins, `scheme://host[:port]`, normalized as browsers send them."""
    from urllib.parse import urlsplit

    raw = _str(env, key)
    if raw is None:
        return ()
    origins = []
    for item in raw.split(","):
        value = item.strip().rstrip("/")
        if not value:
            continue
        try:
            parts = urlsplit(value)
            port = parts.port
        except ValueError:
            raise SettingsError(f"{key} has an invalid origin {value!r}") from None
        if parts.scheme not in {"http", "https"} or not parts.hostname or parts.path or parts.query:
            raise SettingsError(f"{key} must list origins like https://app.example.com, got {value!r}")
        default = 443 if parts.scheme == "https" else 80
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        origins.append(f"{parts.scheme}://{host}" + (f":{port}" if port and port != default else ""))
    return tuple(origins)


# A plan (tier) name as the operator writes it: 1-64 characters, no control characters, not only spaces (no
# look-ahead: the OpenAPI document carries the pattern, and request generators must be able to read it).
TIER_NAME_MAX = 64
TIER_NAME_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
_TIER_NAME = re.compile(TIER_NAME_PATTERN)


def _tier_names(env: Mapping[str, str], key: str, default: str) -> tuple[str, ...]:
    """A comma-separated list of plan names, compared case-insensitively (kept case-folded)."""
    raw = _str(env, key, default) or default
    names = []
    for item in raw.split(","):
        name = item.strip()
        if not name:
            continue
        if len(name) > TIER_NAME_MAX or not _TIER_NAME.match(name):
            raise SettingsError(f"{key} must list plan names of 1-64 printable characters, got {name!r}")
        names.append(name.casefold())
    return tuple(dict.fromkeys(names))


@dataclass(frozen=True, slots=True)
class TierPolicy:
    """How the operator's plan names read for routing: trial plans, free plans and top plans (a paying
    customer is on a plan that is neither free nor trial). Names compare case-insensitively; no plan (None) is
    none of these."""

    trial: tuple[str, ...] = ("trial",)
    free: tuple[str, ...] = ("free",)
    top: tuple[str, ...] = ("enterprise",)

    def is_trial(self, tier: str | None) -> bool:
        return tier is not None and tier.casefold() in self.trial

    def is_free(self, tier: str | None) -> bool:
        return tier is not None and tier.casefold() in self.free

    def is_top(self, tier: str | None) -> bool:
        return tier is not None and tier.casefold() in self.top

    def is_paying(self, tier: str | None) -> bool:
        return tier is not None and not self.is_free(tier) and not self.is_trial(tier)


@dataclass(frozen=True, slots=True)
class Settings:
    # Database: unset means an embedded PostgreSQL server under data_dir.
    database_url: str | None = None
    data_dir: Path = field(default_factory=lambda: Path(".deskpilot"))
    db_pool_min: int = 2
    db_pool_max: int = 10

    # Security
    webhook_secret: str | None = None
    admin_token: str | None = None
    max_body_bytes: int = 256 * 1024
    # Failed authentications (admin API 401s, console logins) per client address in 15 minutes before 429.
    auth_failure_limit: int = 20

    # LLM (OpenAI-compatible); drafting is offline when neither key nor base URL is set.
    openai_api_key: str | None = None
    openai_base_url: str | None = None
    llm_model: str = "gpt-4o-mini"
    llm_timeout_s: float = 30.0
    llm_max_retries: int = 2
    llm_temperature: float = 0.0
    llm_max_input_tokens: int = 6000
    llm_max_output_tokens: int = 700
    # The model's context window: the prompt is trimmed to what it leaves after the output (small local models).
    llm_context_tokens: int = 4096
    # The served model's tokenizer (tokenizer.json or a Hugging Face folder) for exact prompt counts; unset: estimate.
    llm_tokenizer: str | None = None
    # "auto" probes the server for json_schema, a forced tool call or JSON mode; or one of those, fixed.
    llm_structured_output: str = "auto"
    # Above this share of a reply's factual sentences removed as unsupported, the reply escalates.
    llm_max_unsupported_share: float = 0.34
    # What to do when the model fails after its retries: "offline" (use the built-in drafter) or "escalate".
    llm_fallback: str = "offline"
    # How a knowledge-base reply is written with a model: "quote" (the model picks the passage sentences that answer
    # each question and the reply quotes them) or "write" (the model writes the reply, checked sentence by sentence).
    llm_reply: str = "quote"
    # The local model (`deskpilot llm serve`): DESKPILOT_LLM=local drafts with it on loopback, no API key, unless
    # OPENAI_BASE_URL names another server. Its runtime and weights are cached under llm_home, outside the repo.
    llm_local: bool = False
    llm_local_model: str = DEFAULT_LOCAL_MODEL
    llm_local_port: int = DEFAULT_LOCAL_PORT
    llm_home: Path = field(default_factory=lambda: default_llm_home({}))

    # Delivery
    smtp_url: str | None = None
    smtp_from: str = DEFAULT_SMTP_FROM
    callback_url: str | None = None
    # Hosts a ticket's own `metadata.callback_url` may point at; empty: only DESKPILOT_CALLBACK_URL is used.
    callback_hosts: tuple[str, ...] = ()
    callback_secret: str | None = None
    allow_private_callbacks: bool = False
    delivery_max_tries: int = 6

    # Decision thresholds
    auto_resolve_threshold: float = 0.85
    review_threshold: float = 0.60
    # "live" sends what the agent decides; "shadow" decides and drafts, sends nothing and puts every decision in
    # the review queue. The initial value only: once set at run time (admin API, console) the database wins.
    mode: str = "live"

    # Workers and lifecycle
    worker_concurrency: int = 8
    lease_seconds: float = 30.0
    poll_interval_s: float = 2.0
    max_attempts: int = 5
    max_cycles: int = 3
    cycle_backoff_s: float = 3600.0
    close_after_s: float = 7 * 24 * 3600.0
    # Quotas (0 = none): new tickets per customer and follow-ups per ticket, in any hour.
    tickets_per_customer_hour: int = 100
    followups_per_ticket_hour: int = 20

    # Inbound email (issue 18): raw MIME, the mail providers' webhooks, the IMAP connector.
    max_email_bytes: int = 25 * 1024 * 1024  # one message/rfc822 body or provider post (413 above)
    max_attachment_bytes: int = 10 * 1024 * 1024  # one decoded attachment, stored in ticket_attachments
    max_attachments: int = 20
    postmark_inbound_auth: str | None = None  # `user:password` (or a bare password) of the webhook URL's basic auth
    sendgrid_inbound_secret: str | None = None  # basic auth password or last path segment of the Parse URL
    mailgun_signing_key: str | None = None
    mailgun_replay_window_s: int = 300
    imap_url: str | None = None  # imaps://user:pass@host:993/INBOX; set: the worker reads the mailbox
    imap_move_to: str | None = None  # folder ingested messages are moved to (else they are marked \Seen)
    imap_poll_s: float = 60.0

    # The embeddable contact form (`GET /widget.js`).
    widget_secret: str | None = None  # HMAC key the operator's backend signs customer emails with
    widget_origins: tuple[str, ...] = ()  # origins (scheme://host[:port]) allowed to post
    widget_rate_limit: int = 60  # widget requests per client address per minute

    # Knowledge base / embeddings
    embedding_model: str | None = None
    # Tickets in another language than the help centre's are read with a multilingual model (when
    # `embedding_model` is not one already): `agent.drafting.crosslingual`.
    crosslingual_reader: bool = True
    embedding_runtime: str = AUTO_RUNTIME
    # Where built embedding runtimes (the int8 ONNX model) are cached, one folder per model content and recipe.
    embedding_cache: Path = field(default_factory=lambda: default_embedding_cache({}))
    hnsw_ef_search: int = 40
    retrieve_k: int = 8

    # Plan names, as the operator's customer records spell them (see TierPolicy).
    trial_tiers: tuple[str, ...] = ("trial",)
    free_tiers: tuple[str, ...] = ("free",)
    top_tiers: tuple[str, ...] = ("enterprise",)

    @property
    def tiers(self) -> TierPolicy:
        return TierPolicy(trial=self.trial_tiers, free=self.free_tiers, top=self.top_tiers)

    @property
    def llm_enabled(self) -> bool:
        return bool(self.openai_api_key or self.openai_base_url)

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "mail-spool"

    @property
    def embedded_pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @classmethod
    def from_mapping(cls, env: Mapping[str, str]) -> Settings:
        """Build settings from a mapping of environment-style names to strings."""
        auto = _float(env, "DESKPILOT_AUTO_RESOLVE_THRESHOLD", 0.85, 0.0, 1.0)
        review = _float(env, "DESKPILOT_REVIEW_THRESHOLD", 0.60, 0.0, 1.0)
        if review > auto:
            raise SettingsError(
                f"DESKPILOT_REVIEW_THRESHOLD must not exceed DESKPILOT_AUTO_RESOLVE_THRESHOLD ({review} > {auto})"
            )
        fallback = (_str(env, "DESKPILOT_LLM_FALLBACK", "offline") or "offline").lower()
        if fallback not in {"offline", "escalate"}:
            raise SettingsError(f"DESKPILOT_LLM_FALLBACK must be 'offline' or 'escalate', got {fallback!r}")
        llm_reply = (_str(env, "DESKPILOT_LLM_REPLY", "quote") or "quote").lower()
        if llm_reply not in {"quote", "write"}:
            raise SettingsError(f"DESKPILOT_LLM_REPLY must be 'quote' or 'write', got {llm_reply!r}")
        structured = (_str(env, "DESKPILOT_LLM_STRUCTURED_OUTPUT", "auto") or "auto").lower()
        if structured not in STRUCTURED_OUTPUT_METHODS:
            raise SettingsError(
                "DESKPILOT_LLM_STRUCTURED_OUTPUT must be one of "
                f"{', '.join(STRUCTURED_OUTPUT_METHODS)}, got {structured!r}"
            )
        max_output = _int(env, "DESKPILOT_LLM_MAX_OUTPUT_TOKENS", 700, 16, 100_000)
        context_tokens = _int(env, "DESKPILOT_LLM_CONTEXT_TOKENS", 4096, 512, 10_000_000)
        if context_tokens - max_output < MIN_PROMPT_TOKENS:
            raise SettingsError(
                f"DESKPILOT_LLM_CONTEXT_TOKENS ({context_tokens}) must leave at least {MIN_PROMPT_TOKENS} tokens "
                f"for the prompt after DESKPILOT_LLM_MAX_OUTPUT_TOKENS ({max_output})"
            )
        tokenizer = _str(env, "DESKPILOT_LLM_TOKENIZER")
        if tokenizer and not Path(tokenizer).exists():
            raise SettingsError(f"DESKPILOT_LLM_TOKENIZER: no file or folder at {tokenizer}")
        llm = (_str(env, "DESKPILOT_LLM", "") or "").lower()
        if llm not in {"", "local"}:
            raise SettingsError(f"DESKPILOT_LLM must be 'local' (or unset), got {llm!r}")
        local_model = (_str(env, "DESKPILOT_LLM_LOCAL_MODEL", DEFAULT_LOCAL_MODEL) or DEFAULT_LOCAL_MODEL).lower()
        if local_model not in LOCAL_MODELS:
            raise SettingsError(
                f"DESKPILOT_LLM_LOCAL_MODEL must be one of {', '.join(LOCAL_MODELS)}, got {local_model!r}"
            )
        local_port = _int(env, "DESKPILOT_LLM_LOCAL_PORT", DEFAULT_LOCAL_PORT, 1, 65535)
        base_url = _str(env, "OPENAI_BASE_URL")
        model = _str(env, "DESKPILOT_LLM_MODEL")
        if llm == "local":
            # The server `deskpilot llm serve` starts answers to the model's name (its alias) and needs no key.
            base_url = base_url or f"http://127.0.0.1:{local_port}/v1"
            model = model or local_model
        # One CPU thread reads a prompt at tens to hundreds of tokens/s: 30 s would make most local replies fall back.
        timeout = LOCAL_LLM_TIMEOUT_S if llm == "local" else 30.0
        mode = (_str(env, "DESKPILOT_MODE", "live") or "live").lower()
        if mode not in AGENT_MODES:
            raise SettingsError(f"DESKPILOT_MODE must be 'live' or 'shadow', got {mode!r}")
        return cls(
            database_url=_str(env, "DESKPILOT_DATABASE_URL"),
            data_dir=Path(_str(env, "DESKPILOT_DATA_DIR", ".deskpilot") or ".deskpilot"),
            db_pool_min=_int(env, "DESKPILOT_DB_POOL_MIN", 2, 1, 100),
            db_pool_max=_int(env, "DESKPILOT_DB_POOL_MAX", 10, 1, 500),
            webhook_secret=_str(env, "DESKPILOT_WEBHOOK_SECRET"),
            admin_token=_admin_token(env),
            auth_failure_limit=_int(env, "DESKPILOT_AUTH_FAILURE_LIMIT", 20, 1, 100_000),
            max_body_bytes=_int(env, "DESKPILOT_MAX_BODY_BYTES", 256 * 1024, 1024, 64 * 1024 * 1024),
            openai_api_key=_str(env, "OPENAI_API_KEY"),
            openai_base_url=base_url,
            llm_model=model or "gpt-4o-mini",
            llm_timeout_s=_float(env, "DESKPILOT_LLM_TIMEOUT", timeout, 0.1, 600.0),
            llm_max_retries=_int(env, "DESKPILOT_LLM_MAX_RETRIES", 2, 0, 10),
            llm_temperature=_float(env, "DESKPILOT_LLM_TEMPERATURE", 0.0, 0.0, 2.0),
            llm_max_input_tokens=_int(env, "DESKPILOT_LLM_MAX_INPUT_TOKENS", 6000, 256, 1_000_000),
            llm_max_output_tokens=max_output,
            llm_context_tokens=context_tokens,
            llm_tokenizer=tokenizer,
            llm_structured_output=structured,
            llm_max_unsupported_share=_float(env, "DESKPILOT_LLM_MAX_UNSUPPORTED_SHARE", 0.34, 0.0, 1.0),
            llm_fallback=fallback,
            llm_reply=llm_reply,
            llm_local=llm == "local",
            llm_local_model=local_model,
            llm_local_port=local_port,
            llm_home=default_llm_home(env),
            smtp_url=_str(env, "DESKPILOT_SMTP_URL"),
            smtp_from=_str(env, "DESKPILOT_SMTP_FROM", DEFAULT_SMTP_FROM) or DEFAULT_SMTP_FROM,
            callback_url=_str(env, "DESKPILOT_CALLBACK_URL"),
            callback_hosts=_hosts(env, "DESKPILOT_CALLBACK_HOSTS"),
            callback_secret=_str(env, "DESKPILOT_CALLBACK_SECRET"),
            allow_private_callbacks=_bool(env, "DESKPILOT_ALLOW_PRIVATE_CALLBACKS", False),
            delivery_max_tries=_int(env, "DESKPILOT_DELIVERY_MAX_TRIES", 6, 1, 100),
            auto_resolve_threshold=auto,
            review_threshold=review,
            mode=mode,
            worker_concurrency=_int(env, "DESKPILOT_WORKER_CONCURRENCY", 8, 1, 256),
            lease_seconds=_float(env, "DESKPILOT_LEASE_SECONDS", 30.0, 1.0, 3600.0),
            poll_interval_s=_float(env, "DESKPILOT_POLL_INTERVAL", 2.0, 0.05, 600.0),
            max_attempts=_int(env, "DESKPILOT_MAX_ATTEMPTS", 5, 1, 100),
            max_cycles=_int(env, "DESKPILOT_MAX_CYCLES", 3, 0, 100),
            cycle_backoff_s=_float(env, "DESKPILOT_CYCLE_BACKOFF", 3600.0, 0.0, 30 * 86400.0),
            close_after_s=_float(env, "DESKPILOT_CLOSE_AFTER", 7 * 86400.0, 0.0, 365 * 86400.0),
            tickets_per_customer_hour=_int(env, "DESKPILOT_TICKETS_PER_CUSTOMER_HOUR", 100, 0, 1_000_000),
            followups_per_ticket_hour=_int(env, "DESKPILOT_FOLLOWUPS_PER_TICKET_HOUR", 20, 0, 1_000_000),
            max_email_bytes=_int(env, "DESKPILOT_MAX_EMAIL_BYTES", 25 * 1024 * 1024, 1024, 512 * 1024 * 1024),
            max_attachment_bytes=_int(env, "DESKPILOT_MAX_ATTACHMENT_BYTES", 10 * 1024 * 1024, 1024, 512 * 1024 * 1024),
            max_attachments=_int(env, "DESKPILOT_MAX_ATTACHMENTS", 20, 0, 1000),
            postmark_inbound_auth=_str(env, "DESKPILOT_POSTMARK_INBOUND_AUTH"),
            sendgrid_inbound_secret=_str(env, "DESKPILOT_SENDGRID_INBOUND_SECRET"),
            mailgun_signing_key=_str(env, "DESKPILOT_MAILGUN_SIGNING_KEY"),
            mailgun_replay_window_s=_int(env, "DESKPILOT_MAILGUN_REPLAY_WINDOW_SECONDS", 300, 10, 86400),
            imap_url=_imap_url(env),
            imap_move_to=_str(env, "DESKPILOT_IMAP_MOVE_TO"),
            imap_poll_s=_float(env, "DESKPILOT_IMAP_POLL_SECONDS", 60.0, 1.0, 86400.0),
            widget_secret=_str(env, "DESKPILOT_WIDGET_SECRET"),
            widget_origins=_origins(env, "DESKPILOT_WIDGET_ORIGINS"),
            widget_rate_limit=_int(env, "DESKPILOT_WIDGET_RATE_LIMIT", 60, 1, 100_000),
            embedding_model=_str(env, "DESKPILOT_EMBEDDING_MODEL"),
            crosslingual_reader=_bool(env, "DESKPILOT_CROSSLINGUAL_READER", True),
            embedding_runtime=_embedding_runtime(env),
            embedding_cache=default_embedding_cache(env),
            hnsw_ef_search=_int(env, "DESKPILOT_HNSW_EF_SEARCH", 40, 1, 1000),
            retrieve_k=_int(env, "DESKPILOT_RETRIEVE_K", 8, 1, 100),
            trial_tiers=_tier_names(env, "DESKPILOT_TRIAL_TIERS", "trial"),
            free_tiers=_tier_names(env, "DESKPILOT_FREE_TIERS", "free"),
            top_tiers=_tier_names(env, "DESKPILOT_TOP_TIERS", "enterprise"),
        )

    @classmethod
    def from_env(cls, env_file: str | os.PathLike[str] | None = ".env") -> Settings:
        """The environment wins over `.env`, as with every twelve-factor tool."""
        merged: dict[str, str] = {}
        if env_file is not None and Path(env_file).is_file():
            merged.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
        merged.update(os.environ)
        return cls.from_mapping(merged)

    def sized_for_worker(self, concurrency: int) -> Settings:
        """These settings with a pool big enough for a worker of `concurrency` slots: each slot's processor and
        heartbeat, next to the claim, LISTEN, outbox and maintenance (and the API's requests, in `serve`)."""
        return replace(self, db_pool_max=max(self.db_pool_max, 2 * concurrency + 4))

    def public_view(self) -> dict[str, Any]:
        """Settings safe to show in /health and traces: secrets reduced to whether they are set."""
        secret = {
            "webhook_secret",
            "admin_token",
            "openai_api_key",
            "callback_secret",
            "postmark_inbound_auth",
            "sendgrid_inbound_secret",
            "mailgun_signing_key",
            "widget_secret",
        }
        view: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in secret:
                view[f.name] = "set" if value else None
            elif f.name in {"database_url", "smtp_url", "imap_url"}:
                view[f.name] = redact_url(value) if value else None
            elif f.name in {"openai_base_url", "callback_url"}:
                # A user name here is often a token of its own (`https://<token>@proxy/v1`): none of it is shown.
                view[f.name] = redact_url(value, keep_user=False) if value else None
            else:
                view[f.name] = str(value) if isinstance(value, Path) else value
        return view


def default_llm_home(env: Mapping[str, str]) -> Path:
    """DESKPILOT_LLM_HOME, else ~/.cache/deskpilot/llm: the llama.cpp build and the weights live outside the repo,
    shared by every checkout and kept across `make clean`."""
    raw = _str(env, "DESKPILOT_LLM_HOME")
    return Path(raw).expanduser() if raw else Path.home() / ".cache" / "deskpilot" / "llm"


def _embedding_runtime(env: Mapping[str, str]) -> str:
    runtime = (_str(env, "DESKPILOT_EMBEDDING_RUNTIME", AUTO_RUNTIME) or AUTO_RUNTIME).lower()
    if runtime not in EMBEDDING_RUNTIMES:
        choices = ", ".join(EMBEDDING_RUNTIMES)
        raise SettingsError(f"DESKPILOT_EMBEDDING_RUNTIME must be one of {choices}, got {runtime!r}")
    return runtime


def default_embedding_cache(env: Mapping[str, str]) -> Path:
    """DESKPILOT_EMBEDDING_CACHE, else ~/.cache/deskpilot/embeddings: built runtimes outlive the checkout."""
    raw = _str(env, "DESKPILOT_EMBEDDING_CACHE")
    return Path(raw).expanduser() if raw else Path.home() / ".cache" / "deskpilot" / "embeddings"


def redact_url(url: str, *, keep_user: bool = True) -> str:
    """Drop the password from a URL so it can be logged or shown; with `keep_user=False`, the user name too."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if "@" not in parts.netloc or (keep_user and not parts.password):
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    userinfo = f"{parts.username or ''}:***" if keep_user else "***"
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{netloc}"))
