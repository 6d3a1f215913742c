"""Workers: claim queued tickets from Postgres, run the ticket processor under a heartbeated lease, wake on
NOTIFY (polling as the fallback), drain the delivery outbox, run periodic maintenance, and stop gracefully.

The queue itself (claim, heartbeat, fencing, failure and release) is `tickets.queue`; this module decides when
those happen. Safety does not rest on the worker behaving: every completing write is fenced by the claim's
token, so a worker that was paused or cut off past its lease cannot complete anything afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import random
import signal
import socket
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import asyncpg

from agent.runner import make_ticket_processor
from app.maintenance import MAINTENANCE_EVERY_S, run_maintenance
from core import db
from core.errors import DATABASE_UNAVAILABLE
from core.metrics import Metrics
from core.settings import Settings
from delivery.outbox import drain_outbox
from tickets.queue import (
    NOTIFY_CHANNEL,
    Claim,
    HoldersVanished,
    LeaseLost,
    claim_next_ticket,
    fail_claim,
    failure_backoff_s,
    heartbeat,
    release_claim,
)

if TYPE_CHECKING:
    from app.plugin import Runtime

log = logging.getLogger(__name__)
T = TypeVar("T")

Processor = Callable[[Claim], Awaitable[str]]
"""Processes one claimed ticket and returns a short outcome; raises `LeaseLost` when fenced out."""

ProcessorFactory = Callable[[asyncpg.Pool, Settings, Metrics], Processor]


class OutboxDrain(Protocol):
    """`delivery.outbox.drain_outbox`: send due deliveries, return how many were handled."""

    async def __call__(
        self, pool: asyncpg.Pool, settings: Settings, metrics: Metrics, worker_id: str, *, limit: int = ...
    ) -> int: ...


# "The database is not answering right now", as opposed to "this work is bad": retried, never fatal.
TRANSIENT_DB_ERRORS = DATABASE_UNAVAILABLE

# SIGTERM promises in-flight work finished or released within 30 s: wait this long for it, then release.
DEFAULT_GRACE_S = 20.0
# Hard bound on releasing claims and closing connections once the grace period is over.
RELEASE_TIMEOUT_S = 5.0
SHUTDOWN_LIMIT_S = 30.0
# How often an idle LISTEN connection proves it is still alive (a dead one would miss every wake-up).
LISTENER_CHECK_S = 10.0
# Bound on acquiring a pooled connection for the loop's own short statements.
ACQUIRE_TIMEOUT_S = 10.0
OUTBOX_BATCH = 10

_worker_numbers = itertools.count(1)


def make_worker_id() -> str:
    """`hostname:pid:n`: who holds a lease, readable in `tickets.lease_owner`."""
    return f"{socket.gethostname()}:{os.getpid()}:{next(_worker_numbers)}"


@dataclass(frozen=True, slots=True)
class PeriodicJob:
    """Work a worker runs every `every_s` seconds (with jitter), such as `app.maintenance.run_maintenance`."""

    name: str
    every_s: float
    run: Callable[[], Awaitable[object]]


class Backoff:
    """Growing, jittered pauses between retries while the database is away; `reset()` once it answers."""

    def __init__(self, *, base_s: float = 0.2, cap_s: float = 5.0) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self.failures = 0

    def next_delay(self) -> float:
        self.failures += 1
        return failure_backoff_s(self.failures, base_s=self.base_s, cap_s=self.cap_s)

    def reset(self) -> None:
        self.failures = 0


@dataclass(eq=False)
class _Job:
    """One claimed ticket: the processor task and the supervisor that heartbeats and settles it."""

    claim: Claim
    processing: asyncio.Task[str]
    supervisor: asyncio.Task[None] | None = None
    lease_lost: bool = False
    started: float = field(default_factory=time.monotonic)


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
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.metrics = metrics
        self.process = process
        self.concurrency = settings.worker_concurrency if concurrency is None else concurrency
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {self.concurrency}")
        self.worker_id = worker_id or make_worker_id()
        self.periodic_jobs = tuple(periodic_jobs)
        self.drain_outbox = drain_outbox
        self.grace_s = grace_s
        self.listener_check_s = listener_check_s
        self.lease_s = settings.lease_seconds
        self.stopping = stop if stop is not None else asyncio.Event()
        # Set while the LISTEN connection is up; a NOTIFY sent while it is down is lost, so (re)connecting
        # always triggers a look for work.
        self.listening = asyncio.Event()
        self._hurry = asyncio.Event()
        self._wake = asyncio.Event()
        self._outbox_wake = asyncio.Event()
        self._jobs: dict[asyncio.Task[None], _Job] = {}
        self._started = False

    # --- public ---------------------------------------------------------------------------------------------

    def request_stop(self, *, now: bool = False) -> None:
        """Stop claiming; in-flight tickets get the grace period (none with `now`), then are released."""
        self.stopping.set()
        if now:
            self._hurry.set()

    async def run(self) -> None:
        if self._started:
            raise RuntimeError("a Worker runs once")
        self._started = True
        log.info(
            "worker %s: concurrency %d, lease %.0fs, poll every %.1fs",
            self.worker_id,
            self.concurrency,
            self.lease_s,
            self.settings.poll_interval_s,
        )
        helpers = [asyncio.create_task(self._listen(), name=f"{self.worker_id} listen")]
        helpers += [
            asyncio.create_task(self._run_periodically(job), name=f"{self.worker_id} {job.name}")
            for job in self.periodic_jobs
        ]
        if self.drain_outbox is not None:
            helpers.append(asyncio.create_task(self._drain_outbox_loop(), name=f"{self.worker_id} outbox"))
        try:
            await self._claim_loop()
        except asyncio.CancelledError:
            self._hurry.set()  # cancelled from outside: no grace period, but still give the claims back
            raise
        finally:
            self.stopping.set()
            await self._finish_in_flight(helpers)
            log.info("worker %s stopped", self.worker_id)

    # --- claiming -------------------------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        backoff = Backoff()
        while not self.stopping.is_set():
            if len(self._jobs) >= self.concurrency:
                await self._wait_first(self._jobs, events=(self.stopping,))
                continue
            # Cleared before the claim, so a NOTIFY arriving while we claim is not lost.
            self._wake.clear()
            try:
                claim = await self._claim()
            except TRANSIENT_DB_ERRORS as exc:
                delay = backoff.next_delay()
                log.warning("worker %s: cannot claim (%s); retrying in %.1fs", self.worker_id, _brief(exc), delay)
                await self._pause(delay)
                continue
            except Exception:
                # Whatever went wrong, the loop goes on: a worker that dies silently is worse than one that
                # logs the same error every few seconds.
                delay = backoff.next_delay()
                log.exception("worker %s: claim failed; retrying in %.1fs", self.worker_id, delay)
                await self._pause(delay)
                continue
            backoff.reset()
            if claim is None:
                await self._wait_first((), events=(self._wake, self.stopping), timeout=self.settings.poll_interval_s)
                continue
            if self.stopping.is_set():
                await self._give_back(claim)
                break
            if claim.failures >= self.settings.max_attempts:
                # Its holders kept stopping mid-ticket: park it instead of handing it to one more worker.
                error = f"{claim.failures} attempts ended without finishing (worker killed, out of memory or cut off)"
                await self._record_failure(claim, HoldersVanished(error))
                continue
            self._start(claim)

    async def _claim(self) -> Claim | None:
        async with self._connection() as conn:
            return await claim_next_ticket(conn, self.worker_id, self.lease_s)

    @contextlib.asynccontextmanager
    async def _connection(
        self, acquire_timeout_s: float = ACQUIRE_TIMEOUT_S
    ) -> AsyncIterator[asyncpg.pool.PoolConnectionProxy]:
        """A pooled connection whose release cannot undo what the block did.

        When the connection dies just after a statement committed (a claim, say), asyncpg's reset on release
        fails; it terminates the connection itself, and the committed result must still reach the caller.
        """
        conn = await self.pool.acquire(timeout=acquire_timeout_s)
        try:
            yield conn
        finally:
            try:
                await self.pool.release(conn)
            except Exception as exc:
                log.debug("worker %s: connection dropped on release (%s)", self.worker_id, _brief(exc))

    def _start(self, claim: Claim) -> None:
        job = _Job(claim, asyncio.create_task(self._process(claim), name=f"ticket {claim.ticket_id}"))
        job.supervisor = asyncio.create_task(self._supervise(job), name=f"supervise {claim.ticket_id}")
        self._jobs[job.supervisor] = job
        job.supervisor.add_done_callback(self._forget)
        log.debug("worker %s: claimed ticket %s (attempt %d)", self.worker_id, claim.ticket_id, claim.attempt_no)

    async def _process(self, claim: Claim) -> str:
        return await self.process(claim)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._jobs.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("worker %s: supervisor failed", self.worker_id, exc_info=task.exception())

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
                async with self._connection(interval) as conn:
                    if await heartbeat(conn, claim, self.lease_s):
                        continue
                    # Not extended: superseded by another worker, or finished while we were beating.
                    token = await conn.fetchval("SELECT lease_token FROM tickets WHERE id = $1", claim.ticket_id)
            except Exception as exc:
                # Keep trying: the answer that counts comes when the database is back, and fencing keeps the
                # processor from completing in the meantime if someone else took the ticket.
                log.warning("ticket %s: heartbeat failed (%s)", claim.ticket_id, _brief(exc))
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
                self._count("lease_lost")
            else:  # shutdown cancelled it: someone else should take the ticket now
                await self._give_back(claim)
            return
        exc = task.exception()
        if exc is None:
            self._count("completed")
            log.info("ticket %s attempt %d: %s (%.2fs)", claim.ticket_id, claim.attempt_no, task.result(), elapsed)
            return
        if isinstance(exc, LeaseLost):
            self._count("lease_lost")
            log.warning("ticket %s: lease lost, completion refused: %s", claim.ticket_id, exc)
            return
        await self._record_failure(claim, exc)

    async def _record_failure(self, claim: Claim, exc: BaseException) -> None:
        """A crash: back off and retry later, or park the ticket with its error after `max_attempts`."""
        self.metrics.attempt_errors.inc()
        error = describe_error(exc)
        backoff = Backoff()
        while True:
            try:
                async with self._connection() as conn:
                    parked = await fail_claim(conn, claim, error, max_failures=self.settings.max_attempts)
                break
            except LeaseLost:
                self._count("lease_lost")
                log.warning("ticket %s: crashed after its claim ended; nothing recorded", claim.ticket_id)
                return
            except Exception as db_exc:
                if not isinstance(db_exc, TRANSIENT_DB_ERRORS):
                    log.exception("ticket %s: could not record its crash", claim.ticket_id)
                    return
                if self._hurry.is_set():
                    log.warning(
                        "ticket %s: crash not recorded (%s); its lease will expire",
                        claim.ticket_id,
                        _brief(db_exc),
                    )
                    return
                await self._pause(backoff.next_delay(), until=self._hurry)
        self._count("parked" if parked else "failed")
        if parked:
            log.error(
                "ticket %s parked after %d failed attempts; last error: %s",
                claim.ticket_id,
                self.settings.max_attempts,
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
                async with self._connection() as conn:
                    await release_claim(conn, claim)
        except Exception as exc:  # the timeout included
            log.warning("ticket %s: not released (%s); its lease expires instead", claim.ticket_id, _brief(exc))
            return
        self._count("released")
        log.info("ticket %s: released for another worker", claim.ticket_id)

    def _count(self, outcome: str) -> None:
        self.metrics.worker_claims.labels(outcome).inc()

    # --- shutdown -------------------------------------------------------------------------------------------

    async def _finish_in_flight(self, helpers: list[asyncio.Task[None]]) -> None:
        """Give in-flight work the grace period, then cancel what is left and release its claims.

        The helpers (LISTEN, outbox, periodic jobs) see `stopping` and end by themselves; a delivery being
        sent gets the same grace period as a ticket.
        """
        waiting: set[asyncio.Future[Any]] = {*self._jobs, *helpers}
        if self._jobs:
            log.info(
                "worker %s stopping: waiting up to %.0fs for %d ticket(s) in flight",
                self.worker_id,
                0 if self._hurry.is_set() else self.grace_s,
                len(self._jobs),
            )
        deadline = time.monotonic() + self.grace_s
        while waiting and not self._hurry.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            await self._wait_first(waiting, events=(self._hurry,), timeout=remaining)
            waiting = {task for task in waiting if not task.done()}
        self._hurry.set()  # from here on, nothing waits for the database beyond RELEASE_TIMEOUT_S
        for job in list(self._jobs.values()):
            job.processing.cancel()  # settled as "released": the claim goes back to the queue
        for helper in helpers:
            helper.cancel()
        tasks: set[asyncio.Task[None]] = {*self._jobs, *helpers}
        _, stuck = await asyncio.wait(tasks, timeout=RELEASE_TIMEOUT_S + 1)
        for task in stuck:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.listening.clear()

    # --- wake-ups -------------------------------------------------------------------------------------------

    def _on_notify(self, conn: object, pid: int, channel: str, payload: object) -> None:
        self._wake_up()

    def _wake_up(self) -> None:
        self._wake.set()
        self._outbox_wake.set()

    async def _listen(self) -> None:
        """Keep one LISTEN connection alive for as long as the worker runs, reconnecting after any loss."""
        backoff = Backoff()
        while not self.stopping.is_set():
            try:
                await self._listen_once(backoff)
            except Exception as exc:
                if self.stopping.is_set():
                    break
                delay = backoff.next_delay()
                log.warning(
                    "worker %s: LISTEN connection lost (%s); reconnecting in %.1fs",
                    self.worker_id,
                    _brief(exc),
                    delay,
                    exc_info=None if isinstance(exc, TRANSIENT_DB_ERRORS) else exc,
                )
                # The poll fallback keeps work moving meanwhile; look for it now in case a wake-up was missed.
                self._wake_up()
                await self._pause(delay)

    async def _listen_once(self, backoff: Backoff) -> None:
        conn = await self.pool.acquire(timeout=ACQUIRE_TIMEOUT_S)
        closed = asyncio.Event()

        def on_close(_: object) -> None:
            closed.set()

        healthy = False
        try:
            conn.add_termination_listener(on_close)
            await conn.execute(
                "SELECT set_config('application_name', $1, false)", f"deskpilot-listen {self.worker_id}"[:63]
            )
            await conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
            self.listening.set()
            backoff.reset()
            log.info("worker %s: listening on %s", self.worker_id, NOTIFY_CHANNEL)
            self._wake_up()  # whatever was announced while we were not listening
            while True:
                await self._wait_first((), events=(closed, self.stopping), timeout=self.listener_check_s)
                if self.stopping.is_set():
                    healthy = True
                    return
                if closed.is_set():
                    raise asyncpg.ConnectionDoesNotExistError("the LISTEN connection was closed")
                # A connection can die without a word (a restarted server behind a proxy, dropped NAT state);
                # re-issuing LISTEN proves it alive and is a no-op for a channel already listened to.
                await conn.execute(f'LISTEN "{NOTIFY_CHANNEL}"', timeout=ACQUIRE_TIMEOUT_S)
        finally:
            self.listening.clear()
            await self._drop_listen_connection(conn, on_close, healthy=healthy)

    async def _drop_listen_connection(
        self, conn: asyncpg.pool.PoolConnectionProxy, on_close: Callable[[object], None], *, healthy: bool
    ) -> None:
        with contextlib.suppress(asyncpg.InterfaceError):  # already handed back to the pool when it closed
            conn.remove_termination_listener(on_close)
        released = False
        try:
            if healthy:
                async with asyncio.timeout(RELEASE_TIMEOUT_S):
                    await conn.remove_listener(NOTIFY_CHANNEL, self._on_notify)  # UNLISTEN
                    # Pooled connections come back without session state (`db.keep_session`).
                    await conn.execute("RESET application_name")
                    await self.pool.release(conn)
                released = True
        except Exception:
            pass  # terminated below
        finally:
            if not released:
                # A suspect or interrupted connection must not go back into the pool as it is; terminating it
                # hands its slot back.
                with contextlib.suppress(asyncpg.InterfaceError):
                    conn.terminate()

    # --- the outbox and periodic jobs -----------------------------------------------------------------------

    async def _drain_outbox_loop(self) -> None:
        """Send due deliveries when woken and on every poll tick, batch after batch while there are more."""
        assert self.drain_outbox is not None
        backoff = Backoff()
        while not self.stopping.is_set():
            self._outbox_wake.clear()
            try:
                while not self.stopping.is_set():
                    handled = await self.drain_outbox(
                        self.pool, self.settings, self.metrics, self.worker_id, limit=OUTBOX_BATCH
                    )
                    if handled < OUTBOX_BATCH:
                        break
                backoff.reset()
            except TRANSIENT_DB_ERRORS as exc:
                delay = backoff.next_delay()
                log.warning(
                    "worker %s: outbox drain failed (%s); retrying in %.1fs", self.worker_id, _brief(exc), delay
                )
                await self._pause(delay)
                continue
            except Exception:
                log.exception("worker %s: outbox drain failed", self.worker_id)
            await self._wait_first((), events=(self._outbox_wake, self.stopping), timeout=self.settings.poll_interval_s)

    async def _run_periodically(self, job: PeriodicJob) -> None:
        # Start at a random point of the period so that workers started together do not all run at once.
        await self._pause(random.uniform(0, job.every_s))
        while not self.stopping.is_set():
            try:
                await job.run()
            except TRANSIENT_DB_ERRORS as exc:
                log.warning("worker %s: %s skipped (%s)", self.worker_id, job.name, _brief(exc))
            except Exception:
                log.exception("worker %s: %s failed", self.worker_id, job.name)
            await self._pause(job.every_s * random.uniform(0.9, 1.1))

    # --- waiting --------------------------------------------------------------------------------------------

    async def _pause(self, seconds: float, *, until: asyncio.Event | None = None) -> None:
        """Sleep, cut short by a stop request (or by `until`)."""
        await self._wait_first((), events=(until or self.stopping,), timeout=seconds)

    @staticmethod
    async def _wait_first(
        futures: Iterable[asyncio.Future[Any]],
        *,
        events: Sequence[asyncio.Event],
        timeout: float | None = None,  # noqa: ASYNC109 - a bound on waiting, not on work that gets cancelled
    ) -> None:
        """Return as soon as one future is done, one event is set, or the timeout passes."""
        if any(event.is_set() for event in events):
            return
        waiters = [asyncio.ensure_future(event.wait()) for event in events]
        try:
            await asyncio.wait({*futures, *waiters}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()


def describe_error(exc: BaseException) -> str:
    """The error as recorded on the ticket: the message first (it survives truncation), then the traceback."""
    headline = "".join(traceback.format_exception_only(exc)).strip()
    trace = "".join(traceback.format_exception(exc)).strip()
    return f"{headline}\n\n{trace}"


def _brief(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


# --- wiring: the in-process worker of `deskpilot serve` and the `deskpilot worker` process ------------------


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

    return Worker(
        pool,
        settings,
        metrics,
        process,
        concurrency=concurrency,
        periodic_jobs=[PeriodicJob("maintenance", MAINTENANCE_EVERY_S, maintenance)],
        drain_outbox=drain,
        grace_s=grace_s,
        stop=stop,
    )


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
    backoff = Backoff(cap_s=10.0)
    while not stop.is_set():
        try:
            return await db.create_pool(url, settings)
        except TRANSIENT_DB_ERRORS as exc:
            delay = backoff.next_delay()
            log.warning("database not reachable (%s); retrying in %.1fs", _brief(exc), delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
    return None
