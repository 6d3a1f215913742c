"""DeskPilot settings: one immutable object built from a mapping (the environment plus `.env` by default).

Tests build their own with `Settings.from_mapping({...})` instead of touching `os.environ`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SMTP_FROM = "DeskPilot Support <support@deskpilot.local>"


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

    # LLM (OpenAI-compatible); drafting is offline when neither key nor base URL is set.
    openai_api_key: str | None = None
    openai_base_url: str | None = None
    llm_model: str = "gpt-4o-mini"
    llm_timeout_s: float = 30.0
    llm_max_retries: int = 2
    llm_temperature: float = 0.0
    llm_max_input_tokens: int = 6000
    llm_max_output_tokens: int = 700
    # What to do when the model fails after its retries: "offline" (use the built-in drafter) or "escalate".
    llm_fallback: str = "offline"

    # Delivery
    smtp_url: str | None = None
    smtp_from: str = DEFAULT_SMTP_FROM
    callback_url: str | None = None
    callback_secret: str | None = None
    allow_private_callbacks: bool = False
    delivery_max_tries: int = 6

    # Decision thresholds
    auto_resolve_threshold: float = 0.85
    review_threshold: float = 0.60

    # Workers and lifecycle
    worker_concurrency: int = 8
    lease_seconds: float = 30.0
    poll_interval_s: float = 2.0
    max_attempts: int = 5
    max_cycles: int = 3
    cycle_backoff_s: float = 3600.0
    close_after_s: float = 7 * 24 * 3600.0

    # Knowledge base / embeddings
    embedding_model: str | None = None
    hnsw_ef_search: int = 40
    retrieve_k: int = 8

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
                "DESKPILOT_REVIEW_THRESHOLD must not exceed DESKPILOT_AUTO_RESOLVE_THRESHOLD "
                f"({review} > {auto})"
            )
        fallback = (_str(env, "DESKPILOT_LLM_FALLBACK", "offline") or "offline").lower()
        if fallback not in {"offline", "escalate"}:
            raise SettingsError(f"DESKPILOT_LLM_FALLBACK must be 'offline' or 'escalate', got {fallback!r}")
        return cls(
            database_url=_str(env, "DESKPILOT_DATABASE_URL"),
            data_dir=Path(_str(env, "DESKPILOT_DATA_DIR", ".deskpilot") or ".deskpilot"),
            db_pool_min=_int(env, "DESKPILOT_DB_POOL_MIN", 2, 1, 100),
            db_pool_max=_int(env, "DESKPILOT_DB_POOL_MAX", 10, 1, 500),
            webhook_secret=_str(env, "DESKPILOT_WEBHOOK_SECRET"),
            admin_token=_str(env, "DESKPILOT_ADMIN_TOKEN"),
            max_body_bytes=_int(env, "DESKPILOT_MAX_BODY_BYTES", 256 * 1024, 1024, 64 * 1024 * 1024),
            openai_api_key=_str(env, "OPENAI_API_KEY"),
            openai_base_url=_str(env, "OPENAI_BASE_URL"),
            llm_model=_str(env, "DESKPILOT_LLM_MODEL", "gpt-4o-mini") or "gpt-4o-mini",
            llm_timeout_s=_float(env, "DESKPILOT_LLM_TIMEOUT", 30.0, 0.1, 600.0),
            llm_max_retries=_int(env, "DESKPILOT_LLM_MAX_RETRIES", 2, 0, 10),
            llm_temperature=_float(env, "DESKPILOT_LLM_TEMPERATURE", 0.0, 0.0, 2.0),
            llm_max_input_tokens=_int(env, "DESKPILOT_LLM_MAX_INPUT_TOKENS", 6000, 256, 1_000_000),
            llm_max_output_tokens=_int(env, "DESKPILOT_LLM_MAX_OUTPUT_TOKENS", 700, 16, 100_000),
            llm_fallback=fallback,
            smtp_url=_str(env, "DESKPILOT_SMTP_URL"),
            smtp_from=_str(env, "DESKPILOT_SMTP_FROM", DEFAULT_SMTP_FROM) or DEFAULT_SMTP_FROM,
            callback_url=_str(env, "DESKPILOT_CALLBACK_URL"),
            callback_secret=_str(env, "DESKPILOT_CALLBACK_SECRET"),
            allow_private_callbacks=_bool(env, "DESKPILOT_ALLOW_PRIVATE_CALLBACKS", False),
            delivery_max_tries=_int(env, "DESKPILOT_DELIVERY_MAX_TRIES", 6, 1, 100),
            auto_resolve_threshold=auto,
            review_threshold=review,
            worker_concurrency=_int(env, "DESKPILOT_WORKER_CONCURRENCY", 8, 1, 256),
            lease_seconds=_float(env, "DESKPILOT_LEASE_SECONDS", 30.0, 1.0, 3600.0),
            poll_interval_s=_float(env, "DESKPILOT_POLL_INTERVAL", 2.0, 0.05, 600.0),
            max_attempts=_int(env, "DESKPILOT_MAX_ATTEMPTS", 5, 1, 100),
            max_cycles=_int(env, "DESKPILOT_MAX_CYCLES", 3, 0, 100),
            cycle_backoff_s=_float(env, "DESKPILOT_CYCLE_BACKOFF", 3600.0, 0.0, 30 * 86400.0),
            close_after_s=_float(env, "DESKPILOT_CLOSE_AFTER", 7 * 86400.0, 0.0, 365 * 86400.0),
            embedding_model=_str(env, "DESKPILOT_EMBEDDING_MODEL"),
            hnsw_ef_search=_int(env, "DESKPILOT_HNSW_EF_SEARCH", 40, 1, 1000),
            retrieve_k=_int(env, "DESKPILOT_RETRIEVE_K", 8, 1, 100),
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
        secret = {"webhook_secret", "admin_token", "openai_api_key", "callback_secret"}
        view: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in secret:
                view[f.name] = "set" if value else None
            elif f.name in {"database_url", "smtp_url"}:
                view[f.name] = redact_url(value) if value else None
            elif f.name in {"openai_base_url", "callback_url"}:
                # A user name here is often a token of its own (`https://<token>@proxy/v1`): none of it is shown.
                view[f.name] = redact_url(value, keep_user=False) if value else None
            else:
                view[f.name] = str(value) if isinstance(value, Path) else value
        return view


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
