"""Periodic jobs a worker runs besides tickets (maintenance): every `every_s` seconds, with jitter, from a random
point of the period so that workers started together do not all run at once."""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from app.worker.context import TRANSIENT_DB_ERRORS, WorkerContext, brief

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PeriodicJob:
    """Work a worker runs every `every_s` seconds (with jitter), such as `app.maintenance.run_maintenance`."""

    name: str
    every_s: float
    run: Callable[[], Awaitable[object]]


async def run_periodically(ctx: WorkerContext, job: PeriodicJob) -> None:
    """Run `job` until the worker stops; a run that fails is logged and the schedule goes on."""
    await ctx.pause(random.uniform(0, job.every_s))
    while not ctx.stopping.is_set():
        try:
            await job.run()
        except TRANSIENT_DB_ERRORS as exc:
            log.warning("worker %s: %s skipped (%s)", ctx.worker_id, job.name, brief(exc))
        except Exception:
            log.exception("worker %s: %s failed", ctx.worker_id, job.name)
        await ctx.pause(job.every_s * random.uniform(0.9, 1.1))
