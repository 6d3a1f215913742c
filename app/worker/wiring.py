"""The production wiring of workers: the in-process worker of `deskpilot serve` and the `deskpilot worker`
process, each with the agent's processor, the maintenance job and the outbox drain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Coroutine
from typing import Any, TypeVar

import asyncpg

from agent.runner import make_ticket_processor
from app.maintenance import MAINTENANCE_EVERY_S, run_maintenance
from app.runtime import Runtime
from app.worker.claims import Processor, ProcessorFactory
from app.worker.context import RELEASE_TIMEOUT_S, TRANSIENT_DB_ERRORS, DatabaseBackoff, brief
from app.worker.outbox_loop import OutboxDrain
from app.worker.periodic import PeriodicJob
from app.worker.worker import DEFAULT_GRACE_S, Worker
from core import db
from core.metrics import Metrics
from core.settings import Settings
from delivery.outbox import drain_outbox
from ingest.mailbox import MailboxConfig, keep_watching

log = logging.getLogger(__name__)
T = TypeVar("T")

# The in-process worker of `deskpilot serve` is finished or released within this long of shutdown.
SHUTDOWN_LIMIT_S = 30.0


def build_worker(
    pool: asyncpg.Pool,
    settings: Settings,
    metrics: Metrics,
    process: Processor,
    *,
    concurrency: int,
    stop: asyncio.Event | None = None,
    grace_s: float = DEFAULT_GRACE_S,
    drain: OutboxDrain | None = drain_outbox,
) -> Worker:
    """The production worker: the processor, plus maintenance and the outbox drain (None: sends nothing)."""

    async def maintenance() -> None:
        await run_maintenance(pool, settings)

    stop = stop if stop is not None else asyncio.Event()
    jobs = [PeriodicJob("maintenance", MAINTENANCE_EVERY_S, maintenance)]
    if settings.imap_url:
        jobs.append(mailbox_job(pool, settings, stop))
    return Worker(
        pool,
        settings,
        metrics,
        process,
        concurrency=concurrency,
        periodic_jobs=jobs,
        drain_outbox=drain,
        grace_s=grace_s,
        stop=stop,
    )


def mailbox_job(pool: asyncpg.Pool, settings: Settings, stop: asyncio.Event) -> PeriodicJob:
    """With DESKPILOT_IMAP_URL set, the worker reads the mailbox too (`ingest.mailbox`: IDLE where offered, else a
    poll every DESKPILOT_IMAP_POLL_SECONDS), until the worker stops. Every worker process with the setting does:
    the Message-ID keeps that safe, but one reader is enough."""
    config = MailboxConfig.from_settings(settings)

    async def watch() -> None:
        await keep_watching(pool, settings, config, stop)

    return PeriodicJob("mailbox", settings.imap_poll_s, watch)


async def start_background_work(
    runtime: Runtime, make_processor: ProcessorFactory = make_ticket_processor
) -> list[asyncio.Task[None]]:
    """The in-process worker of `deskpilot serve`; it stops when `runtime.stop` is set."""
    pool = runtime.require_pool()
    settings = runtime.settings
    worker = build_worker(
        pool,
        settings,
        runtime.metrics,
        make_processor(pool, settings, runtime.metrics),
        concurrency=settings.worker_concurrency,
        stop=runtime.stop,
    )
    return [asyncio.create_task(worker.run(), name=f"worker {worker.worker_id}")]


async def stop_background_work(runtime: Runtime) -> None:
    """Stop the in-process worker: in-flight tickets are finished or released within 30 s."""
    runtime.stop.set()
    tasks = list(runtime.background)
    runtime.background.clear()
    if not tasks:
        return
    _, late = await asyncio.wait(tasks, timeout=SHUTDOWN_LIMIT_S)
    for task in late:
        task.cancel()
    for result in await asyncio.gather(*tasks, return_exceptions=True):
        if isinstance(result, Exception):
            log.error("background work failed", exc_info=result)


def run_on_event_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run a worker's (or a benchmark's) top coroutine on uvloop when it is installed (it comes with
    `uvicorn[standard]`, and `deskpilot serve` runs on it already), else on asyncio's own loop. A worker spends
    a large share of its Python time in the loop's socket and scheduling code (~30 database round trips per
    ticket), which uvloop runs natively."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


async def run_worker_process(
    settings: Settings,
    url: str,
    *,
    concurrency: int,
    grace_s: float = DEFAULT_GRACE_S,
    make_processor: ProcessorFactory = make_ticket_processor,
    drain: OutboxDrain | None = drain_outbox,
) -> None:
    """`deskpilot worker`: workers only, on their own pool, until SIGTERM or SIGINT.

    The first signal stops claiming and gives in-flight tickets `grace_s` before releasing them (a second
    signal releases them at once); the process then exits 0 within 30 s. `make_processor` defaults to the
    agent's, `drain` to the outbox's (None: this process sends no deliveries).
    """
    stop = asyncio.Event()
    workers: list[Worker] = []

    def on_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            log.warning("%s again: releasing in-flight tickets now", name)
            for worker in workers:
                worker.request_stop(now=True)
            return
        log.info("%s: stopping; in-flight tickets get %.0fs to finish", name, grace_s)
        stop.set()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        pool = await _connect_pool(url, settings.sized_for_worker(concurrency), stop)
        if pool is None:
            return
        try:
            metrics = Metrics()
            worker = build_worker(
                pool,
                settings,
                metrics,
                make_processor(pool, settings, metrics),
                concurrency=concurrency,
                stop=stop,
                grace_s=grace_s,
                drain=drain,
            )
            workers.append(worker)
            await worker.run()
        finally:
            try:
                async with asyncio.timeout(RELEASE_TIMEOUT_S):
                    await pool.close()
            except TRANSIENT_DB_ERRORS:
                pool.terminate()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


async def _connect_pool(url: str, settings: Settings, stop: asyncio.Event) -> asyncpg.Pool | None:
    """The pool, once the database answers (a worker may start before it); None if stopped first."""
    backoff = DatabaseBackoff(cap_s=10.0)
    while not stop.is_set():
        try:
            return await db.create_pool(url, settings)
        except TRANSIENT_DB_ERRORS as exc:
            delay = backoff.next_delay()
            log.warning("database not reachable (%s); retrying in %.1fs", brief(exc), delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
    return None
