"""The process-wide resources of a running app (`Runtime`), created in the lifespan and reached through
`app.state.runtime`: the HTTP side (app.plugin, the controllers) and the in-process worker both use them."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from app.ratelimit import FailedAuthLimiter
from core.errors import Unavailable
from core.metrics import Metrics
from core.settings import Settings
from ingest.store import NewTicketBatcher
from tickets.wakeup import WorkerWaker


@dataclass
class Runtime:
    """Process-wide resources, created in the lifespan and reached through `app.state.runtime`."""

    settings: Settings
    database_url: str | None
    run_worker: bool
    metrics: Metrics = field(default_factory=Metrics)
    pool: asyncpg.Pool | None = None
    # Wakes the workers after ingest commits (`tickets.wakeup`); lives as long as the pool.
    waker: WorkerWaker | None = None
    # Stores the new tickets of concurrent ingest requests together (`ingest.store`); lives as long as the pool.
    ticket_batcher: NewTicketBatcher | None = None
    background: list[asyncio.Task[Any]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    # Failed authentications per client address (admin API 401s, console sign-ins): `app.ratelimit`.
    auth_limiter: FailedAuthLimiter = field(init=False)
    # When /metrics last read its database gauges (`app.observability`, cached a few seconds).
    gauges_refreshed_at: float = float("-inf")
    gauges_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        self.auth_limiter = FailedAuthLimiter(self.settings.auth_failure_limit)

    def wake_workers(self) -> None:
        """After a commit that queued work: a coalesced NOTIFY, sent without holding up the caller."""
        if self.waker is not None:
            self.waker.wake()

    def require_pool(self) -> asyncpg.Pool:
        if self.pool is None:
            raise Unavailable("the database pool is not ready")
        return self.pool

    def require_ticket_batcher(self) -> NewTicketBatcher:
        if self.ticket_batcher is None:
            raise Unavailable("the database pool is not ready")
        return self.ticket_batcher
