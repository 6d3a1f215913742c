"""Gauges read from the database for /metrics (queue depth, outbox, tickets by status), cached for a few seconds;
and the log filter that keeps URL query strings (tokens) out of the HTTP clients' log lines.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable

from app.runtime import Runtime
from core.errors import DATABASE_UNAVAILABLE
from tickets.lifecycle import STATUSES
from tickets.support_health import refresh_support_health_gauges

log = logging.getLogger(__name__)

# Scrapes within this many seconds of a refresh answer from the gauges as they are: however often /metrics is
# called, the aggregates run (and hold a pool connection) at most once per interval.
GAUGE_TTL_S = 5.0


async def refresh_database_gauges(runtime: Runtime, *, clock: Callable[[], float] = time.monotonic) -> bool:
    """Refresh the database gauges unless they are fresh; concurrent scrapes share one refresh. Returns whether
    this call ran the aggregates."""
    if clock() - runtime.gauges_refreshed_at < GAUGE_TTL_S:
        return False
    async with runtime.gauges_lock:
        if clock() - runtime.gauges_refreshed_at < GAUGE_TTL_S:
            return False
        try:
            await _read_database_gauges(runtime)
        finally:
            # A failed read is not retried by every scrape either: a database that is down is not hammered.
            runtime.gauges_refreshed_at = clock()
    return True


async def _read_database_gauges(runtime: Runtime) -> None:
    metrics = runtime.metrics
    try:
        pool = runtime.require_pool()
        async with asyncio.timeout(5), pool.acquire() as conn:
            counts = {
                r["status"]: r["n"]
                for r in await conn.fetch("SELECT status, count(*) AS n FROM tickets GROUP BY status")
            }
            queued = await conn.fetchval(
                "SELECT count(*) FROM tickets WHERE next_attempt_at IS NOT NULL AND parked_at IS NULL"
            )
            outbox = await conn.fetchval("SELECT count(*) FROM deliveries WHERE status = 'pending'")
            await refresh_support_health_gauges(conn, metrics)
    except DATABASE_UNAVAILABLE as exc:
        # The scrape still answers with the process-local counters.
        log.warning("metrics: database unavailable (%s)", type(exc).__name__)
        return
    for status in STATUSES:
        metrics.tickets_by_status.labels(status).set(counts.get(status, 0))
    metrics.queue_depth.set(queued)
    metrics.outbox_pending.set(outbox)


# --- logs ---------------------------------------------------------------------------------------------------

# Callback and model URLs may carry credentials in their query (`?token=...`) or user info: HTTP client libraries
# log whole request URLs at INFO (httpx: `HTTP Request: POST <url> "HTTP/1.1 200 OK"`).
_URL_QUERY = re.compile(r"(?P<base>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s?#'\"<>]*)\?[^\s#'\"<>]*")
_URL_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^\s/@'\"<>]+@")
REDACTED_LOGGERS = ("httpx", "httpcore", "openai", "urllib3", "aiosmtplib")


def redact_urls(text: str) -> str:
    """Every URL in `text` without its query string and user info."""
    text = _URL_QUERY.sub(r"\g<base>?<redacted>", text)
    return _URL_USERINFO.sub(r"\g<scheme><redacted>@", text)


class RedactUrlsFilter(logging.Filter):
    """Rewrites a record's message with its URLs redacted (the record is kept)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_urls(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def install_log_redaction() -> None:
    """Attach the filter to the HTTP client loggers (once): their records are redacted at the source, whichever
    handler writes them."""
    for name in REDACTED_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactUrlsFilter) for f in logger.filters):
            logger.addFilter(RedactUrlsFilter())
