"""Gauges read from the database at scrape time: queue depth, outbox, tickets by status."""

from __future__ import annotations

import asyncio
import logging

from app.plugin import Runtime
from core.errors import DATABASE_UNAVAILABLE
from tickets.lifecycle import STATUSES
from tickets.support_health import refresh_support_health_gauges

log = logging.getLogger(__name__)


async def refresh_database_gauges(runtime: Runtime) -> None:
    metrics = runtime.metrics
    try:
        pool = runtime.require_pool()
        async with asyncio.timeout(5), pool.acquire() as conn:
            counts = {r["status"]: r["n"] for r in await conn.fetch(
                "SELECT status, count(*) AS n FROM tickets GROUP BY status")}
            queued = await conn.fetchval(
                "SELECT count(*) FROM tickets WHERE next_attempt_at IS NOT NULL AND parked_at IS NULL")
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
