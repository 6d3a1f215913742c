"""The worker's surroundings: the in-process worker of `deskpilot serve`, periodic maintenance, and the queue
guarantees the worker leans on when a claim ends."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg
import pytest

from app import worker as worker_module
from app.maintenance import MAINTENANCE_LOCK_KEY, Hook, run_maintenance
from app.runtime import Runtime
from core.metrics import Metrics
from core.settings import Settings
from tests.support.workers import eventually, insert_queued_tickets
from tickets.queue import (
    NOTIFY_CHANNEL,
    Claim,
    LeaseLost,
    assert_lease,
    claim_next_ticket,
    fail_claim,
    finish_claim,
    heartbeat,
    release_claim,
)

pytestmark = pytest.mark.timeout(60)


# --- the in-process worker ----------------------------------------------------------------------------------


def completing_processor(pool: asyncpg.Pool, settings: Settings, metrics: Metrics) -> worker_module.Processor:
    async def process(claim: Claim) -> str:
        async with pool.acquire() as conn, conn.transaction():
            await assert_lease(conn, claim)
            await finish_claim(conn, claim)
        return "done"

    return process


async def test_background_work_processes_tickets_and_stops_with_the_runtime(
    clean_db: asyncpg.Pool, make_settings: Callable[..., Settings]
) -> None:
    runtime = Runtime(settings=make_settings(DESKPILOT_POLL_INTERVAL="0.2"), database_url=None, run_worker=True)
    runtime.pool = clean_db
    runtime.background.extend(await worker_module.start_background_work(runtime, completing_processor))
    assert len(runtime.background) == 1
    tasks = list(runtime.background)
    [ticket_id] = await insert_queued_tickets(clean_db, notify=True)

    async def completed() -> object:
        return await clean_db.fetchval("SELECT next_attempt_at IS NULL FROM tickets WHERE id = $1", ticket_id)

    await eventually(completed, within_s=10, what="the in-process worker completed the ticket")
    await asyncio.wait_for(worker_module.stop_background_work(runtime), 30)
    assert runtime.stop.is_set()
    assert runtime.background == []
    assert all(task.done() and not task.cancelled() for task in tasks)
    sample = runtime.metrics.registry.get_sample_value("deskpilot_worker_claims_total", {"outcome": "completed"})
    assert sample == 1


# --- maintenance --------------------------------------------------------------------------------------------


async def test_maintenance_runs_every_hook_and_a_failing_one_undoes_only_itself(
    clean_db: asyncpg.Pool, settings: Settings, database_url: str
) -> None:
    [ticket_id] = await insert_queued_tickets(clean_db)
    await clean_db.execute("UPDATE tickets SET next_attempt_at = NULL WHERE id = $1", ticket_id)

    async def broken(conn: asyncpg.Connection, settings: Settings) -> object:
        await conn.execute("UPDATE tickets SET subject = 'half done' WHERE id = $1", ticket_id)
        raise RuntimeError("hook bug")

    async def requeue(conn: asyncpg.Connection, settings: Settings) -> object:
        status: str = await conn.execute("UPDATE tickets SET next_attempt_at = now() WHERE id = $1", ticket_id)
        return int(status.split()[-1])

    hooks: dict[str, Hook] = {"broken": broken, "requeue": requeue}
    listener = await asyncpg.connect(database_url)
    woken = asyncio.Event()
    try:
        await listener.add_listener(NOTIFY_CHANNEL, lambda *_: woken.set())
        assert await run_maintenance(clean_db, settings, hooks) == {"broken": None, "requeue": 1}
        await asyncio.wait_for(woken.wait(), 5)  # requeued work is announced
    finally:
        await listener.close()
    row = await clean_db.fetchrow("SELECT subject, next_attempt_at FROM tickets WHERE id = $1", ticket_id)
    assert row is not None
    assert row["subject"] == "question 0"
    assert row["next_attempt_at"] is not None


async def test_only_one_worker_at_a_time_runs_maintenance(clean_db: asyncpg.Pool, settings: Settings) -> None:
    calls: list[str] = []

    async def hook(conn: asyncpg.Connection, settings: Settings) -> object:
        calls.append("ran")
        return 0

    async with clean_db.acquire() as other, other.transaction():
        assert await other.fetchval("SELECT pg_try_advisory_xact_lock($1)", MAINTENANCE_LOCK_KEY)
        assert await run_maintenance(clean_db, settings, {"hook": hook}) is None
    assert calls == []
    assert await run_maintenance(clean_db, settings, {"hook": hook}) == {"hook": 0}
    assert calls == ["ran"]


async def test_the_installed_maintenance_hooks_run_cleanly(clean_db: asyncpg.Pool, settings: Settings) -> None:
    results = await run_maintenance(clean_db, settings)
    assert results is not None
    assert all(result is not None for result in results.values()), results


# --- what the queue guarantees once a claim has ended -------------------------------------------------------


async def test_a_finished_claim_is_not_leased_released_or_failed_afterwards(clean_db: asyncpg.Pool) -> None:
    [ticket_id] = await insert_queued_tickets(clean_db)
    async with clean_db.acquire() as conn:
        claim = await claim_next_ticket(conn, "w1", 30)
        assert claim is not None
        assert claim.ticket_id == ticket_id
        async with conn.transaction():
            await assert_lease(conn, claim)
            await finish_claim(conn, claim)
        # A heartbeat, a shutdown release or a crash report racing the completing commit changes nothing.
        assert await heartbeat(conn, claim, 30) is False
        await release_claim(conn, claim)
        with pytest.raises(LeaseLost):
            await fail_claim(conn, claim, "after the commit", max_failures=3)
        row = await conn.fetchrow("SELECT * FROM tickets WHERE id = $1", ticket_id)
    assert row is not None
    assert row["next_attempt_at"] is None
    assert row["lease_expires_at"] is None
    assert row["failure_count"] == 0
    assert row["last_error"] is None
