"""The claim loop: claim queued tickets up to the concurrency, run each under a heartbeated lease, and settle
how it ended: completed, lease lost, crashed (retried later or parked), or given back at shutdown.

The queue itself (claim, heartbeat, fencing, failure and release) is `tickets.queue`; this module decides when
those happen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import asyncpg

from app.worker.context import RELEASE_TIMEOUT_S, TRANSIENT_DB_ERRORS, DatabaseBackoff, WorkerContext, brief, wait_first
from core.metrics import Metrics
from core.settings import Settings
from tickets.queue import (
    Claim,
    HoldersVanished,
    LeaseLost,
    claim_next_ticket,
    fail_claim,
    heartbeat,
    release_claim,
)

log = logging.getLogger(__name__)

Processor = Callable[[Claim], Awaitable[str]]
"""Processes one claimed ticket and returns a short outcome; raises `LeaseLost` when fenced out."""

ProcessorFactory = Callable[[asyncpg.Pool, Settings, Metrics], Processor]


@runtime_checkable
class WarmsUp(Protocol):
    """A processor with first-use costs (models to load, caches to fill) it can pay before its first ticket."""

    async def warm_up(self, stop: asyncio.Event | None = None) -> None: ...


@dataclass(eq=False)
class _Job:
    """One claimed ticket: the processor task and the supervisor that heartbeats and settles it."""

    claim: Claim
    processing: asyncio.Task[str]
    supervisor: asyncio.Task[None] | None = None
    lease_lost: bool = False
    started: float = field(default_factory=time.monotonic)


class ClaimLoop:
    """Claims tickets and runs `process` on each, at most `concurrency` at a time, until `ctx.stopping`."""

    def __init__(self, ctx: WorkerContext, process: Processor, *, concurrency: int) -> None:
        self.ctx = ctx
        self.process = process
        self.concurrency = concurrency
        self.lease_s = ctx.settings.lease_seconds
        self._jobs: dict[asyncio.Task[None], _Job] = {}

    def supervisors(self) -> set[asyncio.Task[None]]:
        """The tasks settling the tickets in flight: each ends once its ticket is settled."""
        return set(self._jobs)

    def cancel_processing(self) -> None:
        """Stop every ticket in flight: each is settled as released, and its claim goes back to the queue."""
        for job in list(self._jobs.values()):
            job.processing.cancel()

    async def run(self) -> None:
        ctx = self.ctx
        backoff = DatabaseBackoff()
        while not ctx.stopping.is_set():
            if len(self._jobs) >= self.concurrency:
                await wait_first(self._jobs, events=(ctx.stopping,))
                continue
            # Cleared before the claim, so a NOTIFY arriving while we claim is not lost.
            ctx.wake.clear()
            try:
                claim = await self._claim()
            except TRANSIENT_DB_ERRORS as exc:
                delay = backoff.next_delay()
                log.warning("worker %s: cannot claim (%s); retrying in %.1fs", ctx.worker_id, brief(exc), delay)
                await ctx.pause(delay)
                continue
            except Exception:
                # Whatever went wrong, the loop goes on: a worker that dies silently is worse than one that
                # logs the same error every few seconds.
                delay = backoff.next_delay()
                log.exception("worker %s: claim failed; retrying in %.1fs", ctx.worker_id, delay)
                await ctx.pause(delay)
                continue
            backoff.reset()
            if claim is None:
                await wait_first((), events=(ctx.wake, ctx.stopping), timeout=ctx.settings.poll_interval_s)
                continue
            if ctx.stopping.is_set():
                await self._give_back(claim)
                break
            if claim.failures >= ctx.settings.max_attempts:
                # Its holders kept stopping mid-ticket: park it instead of handing it to one more worker.
                error = f"{claim.failures} attempts ended without finishing (worker killed, out of memory or cut off)"
                await self._record_failure(claim, HoldersVanished(error))
                continue
            self._start(claim)

    async def _claim(self) -> Claim | None:
        async with self.ctx.connection() as conn:
            return await claim_next_ticket(conn, self.ctx.worker_id, self.lease_s)

    def _start(self, claim: Claim) -> None:
        job = _Job(claim, asyncio.create_task(self._process(claim), name=f"ticket {claim.ticket_id}"))
        job.supervisor = asyncio.create_task(self._supervise(job), name=f"supervise {claim.ticket_id}")
        self._jobs[job.supervisor] = job
        job.supervisor.add_done_callback(self._forget)
        log.debug("worker %s: claimed ticket %s (attempt %d)", self.ctx.worker_id, claim.ticket_id, claim.attempt_no)

    async def _process(self, claim: Claim) -> str:
        return await self.process(claim)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._jobs.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("worker %s: supervisor failed", self.ctx.worker_id, exc_info=task.exception())

    # --- one ticket -----------------------------------------------------------------------------------------

    async def _supervise(self, job: _Job) -> None:
        keeper = asyncio.create_task(self._keep_lease(job), name=f"heartbeat {job.claim.ticket_id}")
        try:
            await asyncio.wait({job.processing})
        except asyncio.CancelledError:
            job.processing.cancel()
            raise
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
        await self._settle(job)

    async def _keep_lease(self, job: _Job) -> None:
        """Extend the lease every third of it; when it turns out lost, cancel the processor at once."""
        claim = job.claim
        interval = self.lease_s / 3
        while True:
            await asyncio.sleep(interval)
            try:
                async with self.ctx.connection(interval) as conn:
                    if await heartbeat(conn, claim, self.lease_s):
                        continue
                    # Not extended: superseded by another worker, or finished while we were beating.
                    token = await conn.fetchval("SELECT lease_token FROM tickets WHERE id = $1", claim.ticket_id)
            except Exception as exc:
                # Keep trying: the answer that counts comes when the database is back, and fencing keeps the
                # processor from completing in the meantime if someone else took the ticket.
                log.warning("ticket %s: heartbeat failed (%s)", claim.ticket_id, brief(exc))
                continue
            if token == claim.token:
                return  # this claim was finished or released: nothing left to keep
            job.lease_lost = True
            log.warning(
                "ticket %s: lease lost (token %d superseded by %s); cancelling its processing",
                claim.ticket_id,
                claim.token,
                token,
            )
            job.processing.cancel()
            return

    async def _settle(self, job: _Job) -> None:
        claim, task = job.claim, job.processing
        elapsed = time.monotonic() - job.started
        if task.cancelled():
            if job.lease_lost:
                self.ctx.count("lease_lost")
            else:  # shutdown cancelled it: someone else should take the ticket now
                await self._give_back(claim)
            return
        exc = task.exception()
        if exc is None:
            self.ctx.count("completed")
            log.info("ticket %s attempt %d: %s (%.2fs)", claim.ticket_id, claim.attempt_no, task.result(), elapsed)
            return
        if isinstance(exc, LeaseLost):
            self.ctx.count("lease_lost")
            log.warning("ticket %s: lease lost, completion refused: %s", claim.ticket_id, exc)
            return
        await self._record_failure(claim, exc)

    async def _record_failure(self, claim: Claim, exc: BaseException) -> None:
        """A crash: back off and retry later, or park the ticket with its error after `max_attempts`."""
        ctx = self.ctx
        ctx.metrics.attempt_errors.inc()
        error = describe_error(exc)
        backoff = DatabaseBackoff()
        while True:
            try:
                async with ctx.connection() as conn:
                    parked = await fail_claim(conn, claim, error, max_failures=ctx.settings.max_attempts)
                break
            except LeaseLost:
                ctx.count("lease_lost")
                log.warning("ticket %s: crashed after its claim ended; nothing recorded", claim.ticket_id)
                return
            except Exception as db_exc:
                if not isinstance(db_exc, TRANSIENT_DB_ERRORS):
                    log.exception("ticket %s: could not record its crash", claim.ticket_id)
                    return
                if ctx.hurry.is_set():
                    log.warning(
                        "ticket %s: crash not recorded (%s); its lease will expire", claim.ticket_id, brief(db_exc)
                    )
                    return
                await ctx.pause(backoff.next_delay(), until=ctx.hurry)
        ctx.count("parked" if parked else "failed")
        if parked:
            log.error(
                "ticket %s parked after %d failed attempts; last error: %s",
                claim.ticket_id,
                ctx.settings.max_attempts,
                error.splitlines()[0],
                exc_info=exc,
            )
        else:
            log.warning(
                "ticket %s attempt %d crashed; retrying later: %s",
                claim.ticket_id,
                claim.attempt_no,
                error.splitlines()[0],
                exc_info=exc,
            )

    async def _give_back(self, claim: Claim) -> None:
        """Release a claim untouched (shutdown): another worker takes it now rather than after the lease."""
        try:
            async with asyncio.timeout(RELEASE_TIMEOUT_S):
                async with self.ctx.connection() as conn:
                    await release_claim(conn, claim)
        except Exception as exc:  # the timeout included
            log.warning("ticket %s: not released (%s); its lease expires instead", claim.ticket_id, brief(exc))
            return
        self.ctx.count("released")
        log.info("ticket %s: released for another worker", claim.ticket_id)


def describe_error(exc: BaseException) -> str:
    """The error as recorded on the ticket: the message first (it survives truncation), then the traceback."""
    headline = "".join(traceback.format_exception_only(exc)).strip()
    trace = "".join(traceback.format_exception(exc)).strip()
    return f"{headline}\n\n{trace}"
