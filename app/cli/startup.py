"""What every command does first: settings, the database URL, migrations, logging, the serve guards."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import sys
import time
from collections.abc import Callable
from typing import TypeVar

import click

from app.observability import install_log_redaction
from core import db
from core.settings import Settings, SettingsError
from knowledge.embedding_models import resolve_embedding_model

T = TypeVar("T")

log = logging.getLogger("deskpilot.cli")


def when_reachable(run: Callable[[], T]) -> T:
    """`run()`, retried with backoff while the database cannot be reached: a process may start before it, or
    while it restarts (a supervisor restarting a crashed worker during a database restart), and must not exit."""
    from app.worker import TRANSIENT_DB_ERRORS, DatabaseBackoff

    backoff = DatabaseBackoff(cap_s=10.0)
    while True:
        try:
            return run()
        except TRANSIENT_DB_ERRORS as exc:
            delay = backoff.next_delay()
            log.warning("database not reachable (%s); retrying in %.1fs", type(exc).__name__, delay)
            time.sleep(delay)


def load_settings() -> Settings:
    try:
        settings = Settings.from_env()
        resolve_embedding_model(settings.embedding_model)  # an unknown model name is a settings error too
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None
    return settings


def database_url_or_exit(settings: Settings, *, keep_running: bool = False) -> str:
    try:
        return db.resolve_database_url(settings, keep_running=keep_running)
    except db.EmbeddedDatabaseError as exc:
        raise click.ClickException(str(exc)) from None


def migrate_or_exit(url: str) -> list[str]:
    try:
        return asyncio.run(db.migrate(url))
    except (OSError, db.MigrationError) as exc:
        raise click.ClickException(f"migration failed: {exc}") from None


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Callback and model URLs can carry tokens in their query: the HTTP clients' log lines go without them.
    install_log_redaction()


def is_loopback_host(host: str) -> bool:
    """True for `localhost` and loopback addresses (127.0.0.0/8, ::1): only this machine can connect."""
    name = host.strip().removeprefix("[").removesuffix("]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a hostname or a wildcard (0.0.0.0, ::) may be reachable from anywhere


def require_secrets_off_loopback(host: str, settings: Settings) -> None:
    """Off loopback both secrets are required: without DESKPILOT_ADMIN_TOKEN the admin API and console are open,
    without DESKPILOT_WEBHOOK_SECRET anyone who reaches the port can post tickets as any customer. Names each one
    that is missing."""
    if is_loopback_host(host):
        return
    missing = {
        "DESKPILOT_ADMIN_TOKEN": "the admin API and the console would be open to anyone who can reach this port "
        "(clients send `Authorization: Bearer <token>`)",
        "DESKPILOT_WEBHOOK_SECRET": "anyone who can reach this port could post tickets as any customer "
        "(integrations sign each request, Standard Webhooks)",
    }
    if settings.admin_token:
        del missing["DESKPILOT_ADMIN_TOKEN"]
    if settings.webhook_secret:
        del missing["DESKPILOT_WEBHOOK_SECRET"]
    if not missing:
        return
    reasons = "; ".join(f"without {name}, {why}" for name, why in missing.items())
    raise click.ClickException(
        f"refusing to serve on {host} without {' and '.join(missing)}: {reasons}. "
        f"Set {' and '.join(missing)} (long random strings), or bind to 127.0.0.1."
    )
