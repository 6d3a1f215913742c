"""The worker's outbox loop: send due deliveries when woken (NOTIFY) and on every poll tick, batch after batch
while there are more."""

from __future__ import annotations

import logging
from typing import Protocol

import asyncpg

from app.worker.context import TRANSIENT_DB_ERRORS, DatabaseBackoff, WorkerContext, brief, wait_first
from core.metrics import Metrics
from core.settings import Settings

log = logging.getLogger(__name__)

OUTBOX_BATCH = 10


class OutboxDrain(Protocol):
    """`delivery.outbox.drain_outbox`: send due deliveries, return how many were handled."""

    async def __call__(
        self, pool: asyncpg.Pool, settings: Settings, metrics: Metrics, worker_id: str, *, limit: int = ...
    ) -> int: ...


async def drain_outbox_loop(ctx: WorkerContext, drain: OutboxDrain) -> None:
    """Drain until the worker stops; a drain that fails is tried again on the next wake-up or tick."""
    backoff = DatabaseBackoff()
    while not ctx.stopping.is_set():
        ctx.outbox_wake.clear()
        try:
            while not ctx.stopping.is_set():
                handled = await drain(ctx.pool, ctx.settings, ctx.metrics, ctx.worker_id, limit=OUTBOX_BATCH)
                if handled < OUTBOX_BATCH:
                    break
            backoff.reset()
        except TRANSIENT_DB_ERRORS as exc:
            delay = backoff.next_delay()
            log.warning("worker %s: outbox drain failed (%s); retrying in %.1fs", ctx.worker_id, brief(exc), delay)
            await ctx.pause(delay)
            continue
        except Exception:
            log.exception("worker %s: outbox drain failed", ctx.worker_id)
        await wait_first((), events=(ctx.outbox_wake, ctx.stopping), timeout=ctx.settings.poll_interval_s)
