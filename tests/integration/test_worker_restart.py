"""A worker rides out a real PostgreSQL restart: the in-flight ticket completes once, LISTEN comes back.

Runs on a throwaway server (the session server must never go down).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from app.worker import Worker
from core import db
from core.metrics import Metrics
from core.settings import Settings
from tests.support.pg import ThrowawayPostgres, throwaway_postgres
from tests.support.workers import (
    FakeProcessor,
    eventually,
    insert_queued_tickets,
    running_worker,
    tickets_done,
    truthy,
)

pytestmark = [pytest.mark.timeout(90), pytest.mark.slow]


@pytest.fixture(scope="module")
def throwaway_pg() -> Iterator[ThrowawayPostgres]:
    """One migrated server for both restart modes (conftest's is per test): starting one takes seconds."""
    with throwaway_postgres(migrated=True) as server:
        yield server


@pytest.fixture
async def restart_pool(throwaway_pg: ThrowawayPostgres) -> AsyncIterator[asyncpg.Pool]:
    pool = await db.create_pool(throwaway_pg.url, Settings(db_pool_min=1, db_pool_max=8))
    yield pool
    await asyncio.wait_for(pool.close(), 10)


async def listener_pids(pool: asyncpg.Pool) -> list[int]:
    rows = await pool.fetch(
        """SELECT pid FROM pg_stat_activity
           WHERE datname = current_database() AND application_name LIKE 'deskpilot-listen%'"""
    )
    return [row["pid"] for row in rows]


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_a_worker_rides_out_a_database_restart(
    throwaway_pg: ThrowawayPostgres, restart_pool: asyncpg.Pool, mode: str
) -> None:
    settings = Settings.from_mapping({"DESKPILOT_POLL_INTERVAL": "30", "DESKPILOT_LEASE_SECONDS": "3"})
    process = FakeProcessor(restart_pool)
    process.hold_all = asyncio.Event()
    worker = Worker(restart_pool, settings, Metrics(), process, concurrency=2)
    async with running_worker(worker):
        await asyncio.wait_for(worker.listening.wait(), 10)
        [in_flight] = await insert_queued_tickets(restart_pool, notify=True)
        await eventually(lambda: truthy(process.calls), within_s=10, what="ticket started")
        [old_listener] = await listener_pids(restart_pool)

        await asyncio.to_thread(throwaway_pg.stop, mode)  # type: ignore[arg-type]
        await eventually(lambda: truthy(not worker.listening.is_set()), within_s=10, what="LISTEN lost")
        await asyncio.sleep(1)  # the worker meets the outage: failed heartbeats, failed reconnects
        await asyncio.to_thread(throwaway_pg.start)

        async def listening_again() -> bool:
            try:
                pids = await listener_pids(restart_pool)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                return False
            return worker.listening.is_set() and bool(pids) and old_listener not in pids

        await eventually(listening_again, within_s=30, what="LISTEN re-established after the restart")
        process.hold_all.set()
        await eventually(tickets_done(restart_pool, [in_flight]), within_s=30, what="in-flight ticket completed")
        await asyncio.sleep(0.5)  # the re-LISTEN's own look for work is over: only a NOTIFY wakes it now
        fresh = await insert_queued_tickets(restart_pool, 2, notify=True)
        await eventually(tickets_done(restart_pool, fresh), within_s=5, what="woken by NOTIFY after the restart")

    assert [claim.ticket_id for claim in process.completed].count(in_flight) == 1
    row = await restart_pool.fetchrow("SELECT failure_count, lease_owner FROM tickets WHERE id = $1", in_flight)
    assert row is not None
    assert row["failure_count"] == 0
    assert row["lease_owner"] is None
