"""`Worker`: one claim loop with its helpers (the LISTEN connection, the outbox loop, periodic jobs, the processor's
warm-up), run together and stopped together: in-flight tickets get a grace period, then are released."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import asyncpg

from app.worker.claims import ClaimLoop, Processor, WarmsUp
from app.worker.context import RELEASE_TIMEOUT_S, WorkerContext, brief, make_worker_id, wait_first
from app.worker.listener import LISTENER_CHECK_S, Listener
from app.worker.outbox_loop import OutboxDrain, drain_outbox_loop
from app.worker.periodic import PeriodicJob, run_periodically
from core.metrics import Metrics
from core.settings import Settings

log = logging.getLogger(__name__)

# SIGTERM promises in-flight work finished or released within 30 s: wait this long for it, then release.
DEFAULT_GRACE_S = 20.0
# A processor that warms up (`WarmsUp`) does so as the worker starts and again this often: a help-centre article
# added or edited since is then read before the tickets about it come.
WARM_UP_EVERY_S = 300.0


class Worker:
    """Claims tickets and runs `process` on each, at most `concurrency` at a time.

    `run()` returns once `stopping` is set (or `request_stop()` is called) and every claim is finished or
    released. Pass `stop` to share a stop event with the caller (the app lifespan does).
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        metrics: Metrics,
        process: Processor,
        *,
        concurrency: int | None = None,
        worker_id: str | None = None,
        periodic_jobs: Sequence[PeriodicJob] = (),
        drain_outbox: OutboxDrain | None = None,
        grace_s: float = DEFAULT_GRACE_S,
        listener_check_s: float = LISTENER_CHECK_S,
        stop: asyncio.Event | None = None,
        warm_up_every_s: float = WARM_UP_EVERY_S,
    ) -> None:
        concurrency = settings.worker_concurrency if concurrency is None else concurrency
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self.ctx = WorkerContext(pool, settings, metrics, worker_id or make_worker_id())
        if stop is not None:
            self.ctx.stopping = stop
        self.claims = ClaimLoop(self.ctx, process, concurrency=concurrency)
        self.listener = Listener(self.ctx, check_s=listener_check_s)
        self.periodic_jobs = tuple(periodic_jobs)
        self.drain_outbox = drain_outbox
        self.grace_s = grace_s
        self.warm_up_every_s = warm_up_every_s
        self._started = False

    @property
    def worker_id(self) -> str:
        return self.ctx.worker_id

    @property
    def metrics(self) -> Metrics:
        return self.ctx.metrics

    @property
    def stopping(self) -> asyncio.Event:
        return self.ctx.stopping

    @property
    def listening(self) -> asyncio.Event:
        """Set while the LISTEN connection is up."""
        return self.listener.listening

    def request_stop(self, *, now: bool = False) -> None:
        """Stop claiming; in-flight tickets get the grace period (none with `now`), then are released."""
        self.ctx.stopping.set()
        if now:
            self.ctx.hurry.set()

    async def run(self) -> None:
        if self._started:
            raise RuntimeError("a Worker runs once")
        self._started = True
        ctx = self.ctx
        log.info(
            "worker %s: concurrency %d, lease %.0fs, poll every %.1fs",
            ctx.worker_id,
            self.claims.concurrency,
            self.claims.lease_s,
            ctx.settings.poll_interval_s,
        )
        helpers = [asyncio.create_task(self.listener.run(), name=f"{ctx.worker_id} listen")]
        helpers += [
            asyncio.create_task(run_periodically(ctx, job), name=f"{ctx.worker_id} {job.name}")
            for job in self.periodic_jobs
        ]
        if self.drain_outbox is not None:
            helpers.append(
                asyncio.create_task(drain_outbox_loop(ctx, self.drain_outbox), name=f"{ctx.worker_id} outbox")
            )
        if isinstance(self.claims.process, WarmsUp):
            helpers.append(asyncio.create_task(self._warm_up(self.claims.process), name=f"{ctx.worker_id} warm-up"))
        try:
            await self.claims.run()
        except asyncio.CancelledError:
            ctx.hurry.set()  # cancelled from outside: no grace period, but still give the claims back
            raise
        finally:
            ctx.stopping.set()
            await self._finish_in_flight(helpers)
            log.info("worker %s stopped", ctx.worker_id)

    async def _warm_up(self, process: WarmsUp) -> None:
        """The processor's warm-up beside the claim loop, at start and every `warm_up_every_s` until the worker
        stops: a failure is logged, and tickets then load what they need themselves."""
        ctx = self.ctx
        while not ctx.stopping.is_set():
            try:
                await process.warm_up(ctx.stopping)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("worker %s: warm-up failed (%s); tickets load what they need", ctx.worker_id, brief(exc))
            await ctx.pause(self.warm_up_every_s)

    async def _finish_in_flight(self, helpers: list[asyncio.Task[None]]) -> None:
        """Give in-flight work the grace period, then cancel what is left and release its claims.

        The helpers (LISTEN, outbox, periodic jobs) see `stopping` and end by themselves; a delivery being
        sent gets the same grace period as a ticket.
        """
        ctx = self.ctx
        in_flight = self.claims.supervisors()
        waiting: set[asyncio.Future[Any]] = {*in_flight, *helpers}
        if in_flight:
            log.info(
                "worker %s stopping: waiting up to %.0fs for %d ticket(s) in flight",
                ctx.worker_id,
                0 if ctx.hurry.is_set() else self.grace_s,
                len(in_flight),
            )
        deadline = time.monotonic() + self.grace_s
        while waiting and not ctx.hurry.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            await wait_first(waiting, events=(ctx.hurry,), timeout=remaining)
            waiting = {task for task in waiting if not task.done()}
        ctx.hurry.set()  # from here on, nothing waits for the database beyond RELEASE_TIMEOUT_S
        self.claims.cancel_processing()
        for helper in helpers:
            helper.cancel()
        tasks: set[asyncio.Task[None]] = {*self.claims.supervisors(), *helpers}
        _, stuck = await asyncio.wait(tasks, timeout=RELEASE_TIMEOUT_S + 1)
        for task in stuck:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.listener.listening.clear()
