"""What the parts of one worker share: who it is, its database and settings, the events that stop and wake it,
and the waiting and retrying every one of its loops does the same way."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from core.backoff import Backoff
from core.errors import DATABASE_UNAVAILABLE
from core.metrics import Metrics
from core.settings import Settings

log = logging.getLogger(__name__)

# "The database is not answering right now", as opposed to "this work is bad": retried, never fatal.
TRANSIENT_DB_ERRORS = DATABASE_UNAVAILABLE

# Bound on acquiring a pooled connection for the loops' own short statements.
ACQUIRE_TIMEOUT_S = 10.0
# Hard bound on releasing claims and closing connections once the grace period is over.
RELEASE_TIMEOUT_S = 5.0

_worker_numbers = itertools.count(1)


def make_worker_id() -> str:
    """`hostname:pid:n`: who holds a lease, readable in `tickets.lease_owner`."""
    return f"{socket.gethostname()}:{os.getpid()}:{next(_worker_numbers)}"


class DatabaseBackoff(Backoff):
    """Pauses between tries while the database is away (`core.backoff`): 0.2 s at first, at most `cap_s`;
    `reset()` once it answers."""

    def __init__(self, *, base_s: float = 0.2, cap_s: float = 5.0) -> None:
        super().__init__(base_s=base_s, cap_s=cap_s)


@dataclass(eq=False)
class WorkerContext:
    """One worker's identity and resources, and its events: `stopping` (claim no more), `hurry` (no grace left:
    nothing waits for the database beyond `RELEASE_TIMEOUT_S`), and the wake-ups NOTIFY sets."""

    pool: asyncpg.Pool
    settings: Settings
    metrics: Metrics
    worker_id: str
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    hurry: asyncio.Event = field(default_factory=asyncio.Event)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    outbox_wake: asyncio.Event = field(default_factory=asyncio.Event)

    def wake_up(self) -> None:
        """Look for work now: tickets to claim and deliveries to send."""
        self.wake.set()
        self.outbox_wake.set()

    def count(self, outcome: str) -> None:
        self.metrics.worker_claims.labels(outcome).inc()

    async def pause(self, seconds: float, *, until: asyncio.Event | None = None) -> None:
        """Sleep, cut short by a stop request (or by `until`)."""
        await wait_first((), events=(until or self.stopping,), timeout=seconds)

    @contextlib.asynccontextmanager
    async def connection(
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
                log.debug("worker %s: connection dropped on release (%s)", self.worker_id, brief(exc))


async def wait_first(
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


def brief(exc: BaseException) -> str:
    """An exception in one line for a log message."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
