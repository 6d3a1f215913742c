"""The worker loop against a real Postgres: claims, concurrency, failures, leases, wake-ups, shutdown.

A fake processor stands in for the agent: it records its calls and completes through the same fenced
transaction the real one uses (`assert_lease` then `finish_claim`).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from app.worker import Worker
from core import db
from core.metrics import Metrics
from core.settings import Settings
from tests.support.workers import (
    FakeProcessor,
    eventually,
    insert_queued_tickets,
    running_worker,
    tickets_done,
    truthy,
)
from tickets.queue import LeaseLost, assert_lease, claim_next_ticket, notify_work

pytestmark = pytest.mark.timeout(60)

WORKER_APP = "deskpilot-test-worker"


# --- helpers ------------------------------------------------------------------------------------------------


async def ticket(pool: asyncpg.Pool, ticket_id: UUID) -> asyncpg.Record:
    row = await pool.fetchrow(
        """SELECT *, next_attempt_at > now() AS backing_off, lease_expires_at > now() AS leased
           FROM tickets WHERE id = $1""",
        ticket_id,
    )
    assert row is not None
    return row


@pytest.fixture
async def worker_pool(clean_db: asyncpg.Pool, database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool of the worker's own, named so tests can find (and kill) its connections."""
    pool = await asyncpg.create_pool(
        database_url,
        min_size=1,
        max_size=12,
        init=db.init_connection,
        server_settings={"application_name": WORKER_APP},
    )
    assert pool is not None
    yield pool
    await asyncio.wait_for(pool.close(), 10)


@pytest.fixture
def worker_settings(make_settings: Callable[..., Settings]) -> Callable[..., Settings]:
    def build(**env: str) -> Settings:
        return make_settings(**{"DESKPILOT_POLL_INTERVAL": "0.2", **env})

    return build


def make_worker(pool: asyncpg.Pool, settings: Settings, process: FakeProcessor, **options: Any) -> Worker:
    return Worker(pool, settings, Metrics(), process, **options)


def claims(worker: Worker, outcome: str) -> float:
    value = worker.metrics.registry.get_sample_value("deskpilot_worker_claims_total", {"outcome": outcome})
    return value or 0.0


# --- claiming -----------------------------------------------------------------------------------------------


async def test_every_ticket_is_processed_exactly_once_with_four_slots(
    worker_pool: asyncpg.Pool, worker_settings: Callable[..., Settings]
) -> None:
    process = FakeProcessor(worker_pool, delay_s=0.02)
    worker = make_worker(worker_pool, worker_settings(), process, concurrency=4)
    ids = await insert_queued_tickets(worker_pool, 40)
    async with running_worker(worker):
        await eventually(tickets_done(worker_pool, ids), within_s=30, what="40 tickets completed")
    per_ticket = Counter(claim.ticket_id for claim in process.calls)
    assert set(per_ticket) == set(ids)
    assert set(per_ticket.values()) == {1}
    assert len({claim.token for claim in process.calls}) == 40
    assert 2 <= process.max_running <= 4
    assert claims(worker, "completed") == 40
    leftover = await worker_pool.fetchval(
        "SELECT count(*) FROM tickets WHERE lease_owner IS NOT NULL OR lease_expires_at IS NOT NULL"
    )
    assert leftover == 0


async def test_a_poison_ticket_backs_off_then_is_parked_while_others_flow(
    worker_pool: asyncpg.Pool, worker_settings: Callable[..., Settings]
) -> None:
    process = FakeProcessor(worker_pool)
    worker = make_worker(worker_pool, worker_settings(DESKPILOT_MAX_ATTEMPTS="3"), process, concurrency=2)
    poison, *good = await insert_queued_tickets(worker_pool, 6)
    process.poison.add(poison)
    async with running_worker(worker):
        for failures in (1, 2):

            async def failed(failures: int = failures) -> bool:
                row = await ticket(worker_pool, poison)
                return bool(row["failure_count"] == failures and row["lease_owner"] is None)

            await eventually(failed, within_s=10, what=f"failure {failures} recorded")
            row = await ticket(worker_pool, poison)
            assert row["backing_off"], "a crashed ticket is retried later, not at once"
            assert row["parked_at"] is None
            assert row["last_error"].startswith(f"RuntimeError: poison ticket {poison}")
            # Skip the backoff rather than wait for it.
            await worker_pool.execute("UPDATE tickets SET next_attempt_at = now() WHERE id = $1", poison)

        async def parked() -> bool:
            return (await ticket(worker_pool, poison))["parked_at"] is not None

        await eventually(parked, within_s=10, what="poison ticket parked")
        await eventually(tickets_done(worker_pool, good), within_s=10, what="the other tickets completed")
        await worker_pool.execute("UPDATE tickets SET next_attempt_at = now() WHERE id = $1", poison)
        await asyncio.sleep(0.6)  # three poll intervals: a parked ticket is not claimed again

    row = await ticket(worker_pool, poison)
    assert row["failure_count"] == 3
    assert row["needs_review"] is True
    assert row["last_error"].startswith(f"RuntimeError: poison ticket {poison}")
    assert "Traceback" in row["last_error"]
    assert len(process.calls_for(poison)) == 3
    assert sorted(claim.ticket_id for claim in process.completed) == sorted(good)
    assert worker.metrics.registry.get_sample_value("deskpilot_resolution_errors_total") == 3
    assert claims(worker, "failed") == 2
    assert claims(worker, "parked") == 1


async def test_a_ticket_whose_workers_keep_dying_is_parked_without_running_again(
    worker_pool: asyncpg.Pool, worker_settings: Callable[..., Settings]
) -> None:
    process = FakeProcessor(worker_pool)
    killer, *good = await insert_queued_tickets(worker_pool, 4)
    # Three workers took it and vanished (kill -9, out of memory): each left a lease that ran out unfinished.
    for n in range(3):
        await worker_pool.execute(
            """UPDATE tickets SET next_attempt_at = CASE WHEN id = $1 THEN now() ELSE now() + interval '1 hour' END""",
            killer,
        )
        async with worker_pool.acquire() as conn:
            claim = await claim_next_ticket(conn, f"doomed-{n}", 60.0)
        assert claim is not None and claim.ticket_id == killer
        assert claim.failures == n
        await worker_pool.execute("UPDATE tickets SET lease_expires_at = now() - interval '1 second'")
    await worker_pool.execute("UPDATE tickets SET next_attempt_at = now()")

    worker = make_worker(worker_pool, worker_settings(DESKPILOT_MAX_ATTEMPTS="3"), process, concurrency=2)
    async with running_worker(worker):

        async def parked() -> bool:
            return (await ticket(worker_pool, killer))["parked_at"] is not None

        await eventually(parked, within_s=10, what="the ticket that kills its workers parked")
        await eventually(tickets_done(worker_pool, good), within_s=10, what="the other tickets completed")

    row = await ticket(worker_pool, killer)
    assert row["needs_review"] is True
    assert row["lease_owner"] is None
    assert row["last_error"].startswith("tickets.queue.HoldersVanished: 3 attempts ended without finishing")
    assert process.calls_for(killer) == []  # parked, not run a fourth time
    assert sorted(claim.ticket_id for claim in process.completed) == sorted(good)
    assert claims(worker, "parked") == 1


# --- leases -------------------------------------------------------------------------------------------------


async def test_heartbeats_keep_a_long_jobs_lease(
    worker_pool: asyncpg.Pool, worker_settings: Callable[..., Settings]
) -> None:
    process = FakeProcessor(worker_pool)
    process.hold_all = asyncio.Event()
    worker = make_worker(worker_pool, worker_settings(DESKPILOT_LEASE_SECONDS="1.2"), process, concurrency=1)
    [ticket_id] = await insert_queued_tickets(worker_pool, 1)
    async with running_worker(worker):
        await eventually(lambda: truthy(process.calls), within_s=10, what="ticket started")
        token = process.calls[0].token
        for _ in range(6):  # 3 s: the lease would have run out more than twice without heartbeats
            await asyncio.sleep(0.5)
            row = await ticket(worker_pool, ticket_id)
            assert row["leased"]
            assert row["lease_token"] == token
            async with worker_pool.acquire() as conn:
                assert await claim_next_ticket(conn, "intruder", 1.2) is None
        process.hold_all.set()
        await eventually(tickets_done(worker_pool, [ticket_id]), within_s=10, what="ticket completed")
    assert [claim.ticket_id for claim in process.completed] == [ticket_id]
    assert process.cancelled == []


async def test_a_lost_lease_cancels_the_job_and_its_completion_is_refused(
    worker_pool: asyncpg.Pool, worker_settings: Callable[..., Settings]
) -> None:
    process = FakeProcessor(worker_pool)
    process.hold_all = asyncio.Event()  # never set: only the heartbeat can end this job
    worker = make_worker(worker_pool, worker_settings(DESKPILOT_LEASE_SECONDS="1.5"), process, concurrency=1)
    [ticket_id] = await insert_queued_tickets(worker_pool, 1)
    async with running_worker(worker):
        await eventually(lambda: truthy(process.calls), within_s=10, what="ticket started")
        await steal_lease(worker_pool, ticket_id)
        await eventually(lambda: truthy(process.cancelled), within_s=10, what="processing cancelled")
        [claim] = process.cancelled
        async with worker_pool.acquire() as conn, conn.transaction():
            with pytest.raises(LeaseLost):
                await assert_lease(conn, claim)
    row = await ticket(worker_pool, ticket_id)
    assert row["lease_owner"] == "thief"
    assert row["failure_count"] == 0
    assert row["last_error"] is None
    assert process.completed == []
    assert claims(worker, "lease_lost") == 1


async def test_a_completion_after_the_lease_was_lost_is_refused_and_records_nothing(
    worker_pool: asyncpg.Pool, worker_settings: Callable[..., Settings]
) -> None:
    process = FakeProcessor(worker_pool)
    process.hold_all = asyncio.Event()
    # A 30 s lease beats every 10 s: the processor reaches its fenced completion before the heartbeat notices.
    worker = make_worker(worker_pool, worker_settings(), process, concurrency=1)
    [ticket_id] = await insert_queued_tickets(worker_pool, 1)
    async with running_worker(worker):
        await eventually(lambda: truthy(process.calls), within_s=10, what="ticket started")
        await steal_lease(worker_pool, ticket_id)
        process.hold_all.set()
        await eventually(lambda: truthy(process.refused), within_s=10, what="completion refused")
        await eventually(lambda: truthy(claims(worker, "lease_lost")), within_s=5, what="claim dropped")
    row = await ticket(worker_pool, ticket_id)
    assert row["lease_owner"] == "thief"
    assert row["leased"]
    assert row["next_attempt_at"] is not None, "still queued: the thief's attempt decides"
    assert row["failure_count"] == 0
    assert row["last_error"] is None
    assert process.completed == []


async def steal_lease(pool: asyncpg.Pool, ticket_id: UUID) -> None:
    """What another worker's claim after an expired lease does to the row."""
    await pool.execute(
        """UPDATE tickets SET lease_token = nextval('lease_token_seq'), lease_owner = 'thief',
                              lease_expires_at = now() + interval '60 seconds'
           WHERE id = $1""",
        ticket_id,
    )


# --- wake-ups -----------------------------------------------------------------------------------------------


async def test_notify_wakes_an_idle_worker_long_before_the_poll(
    worker_pool: asyncpg.Pool, worker_settings: Callable[..., Settings]
) -> None:
    process = FakeProcessor(worker_pool)
    worker = make_worker(worker_pool, worker_settings(DESKPILOT_POLL_INTERVAL="30"), process)
    async with running_worker(worker):
        await asyncio.wait_for(worker.listening.wait(), 10)
        await asyncio.sleep(0.5)  # let the first look for work find nothing: the worker is idle now
        ids = await insert_queued_tickets(worker_pool, 3, notify=True)
        await eventually(tickets_done(worker_pool, ids), within_s=5, what="woken by NOTIFY")


async def listener_pid(pool: asyncpg.Pool) -> int | None:
    pid: int | None = await pool.fetchval(
        """SELECT pid FROM pg_stat_activity
           WHERE datname = current_database() AND query LIKE 'LISTEN%'
             AND application_name LIKE 'deskpilot-listen%'"""
    )
    return pid


async def test_the_listener_reconnects_after_its_connection_is_killed(
    worker_pool: asyncpg.Pool, clean_db: asyncpg.Pool, worker_settings: Callable[..., Settings]
) -> None:
    process = FakeProcessor(worker_pool)
    worker = make_worker(worker_pool, worker_settings(DESKPILOT_POLL_INTERVAL="30"), process)
    async with running_worker(worker):
        await asyncio.wait_for(worker.listening.wait(), 10)
        old_pid = await listener_pid(clean_db)
        assert old_pid is not None
        assert await clean_db.fetchval("SELECT pg_terminate_backend($1)", old_pid)

        async def listening_again() -> bool:
            pid = await listener_pid(clean_db)
            return pid is not None and pid != old_pid and worker.listening.is_set()

        await eventually(listening_again, within_s=15, what="a new LISTEN connection")
        await asyncio.sleep(0.5)  # the reconnect's own look for work is over
        ids = await insert_queued_tickets(worker_pool, 2, notify=True)
        await eventually(tickets_done(worker_pool, ids), within_s=5, what="woken by NOTIFY after reconnecting")


async def test_connections_come_back_to_the_pool_without_the_listeners_session_state(
    clean_db: asyncpg.Pool, database_url: str, worker_settings: Callable[..., Settings]
) -> None:
    """The pool skips asyncpg's reset query (`db.keep_session`), so the LISTEN connection must undo its LISTEN
    and its name itself: the next borrower of that connection must not get notifications or look like it."""
    settings = worker_settings(DESKPILOT_POLL_INTERVAL="30", DESKPILOT_DB_POOL_MIN="2", DESKPILOT_DB_POOL_MAX="2")
    pool = await db.create_pool(database_url, settings)
    try:
        worker = make_worker(pool, settings, FakeProcessor(pool))
        task = asyncio.create_task(worker.run())
        await asyncio.wait_for(worker.listening.wait(), 10)
        listen_pid = await listener_pid(clean_db)
        worker.request_stop()  # graceful: the listener hands its connection back instead of closing it
        await asyncio.wait_for(task, 15)
        async with pool.acquire() as first, pool.acquire() as second:  # the whole pool
            pids = {await conn.fetchval("SELECT pg_backend_pid()"): conn for conn in (first, second)}
            assert listen_pid in pids, "the LISTEN connection was closed, not returned to the pool"
            listened_on = pids[listen_pid]
            assert await listened_on.fetchval("SELECT count(*) FROM pg_listening_channels()") == 0
            assert not (await listened_on.fetchval("SHOW application_name")).startswith("deskpilot-listen")
    finally:
        await asyncio.wait_for(pool.close(), 10)


async def test_the_worker_survives_all_its_connections_being_killed(
    worker_pool: asyncpg.Pool, clean_db: asyncpg.Pool, worker_settings: Callable[..., Settings]
) -> None:
    process = FakeProcessor(worker_pool)
    worker = make_worker(worker_pool, worker_settings(DESKPILOT_POLL_INTERVAL="0.3"), process, concurrency=2)
    async with running_worker(worker):
        first = await insert_queued_tickets(worker_pool, 5, notify=True)
        await eventually(tickets_done(worker_pool, first), within_s=10, what="first batch")
        for _ in range(2):
            killed = await clean_db.fetchval(
                """SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                   WHERE datname = current_database() AND application_name LIKE ANY($1)""",
                [f"{WORKER_APP}%", "deskpilot-listen%"],
            )
            assert killed >= 1
            await asyncio.sleep(0.3)
        second = await insert_queued_tickets(worker_pool, 5, notify=True)
        await eventually(tickets_done(worker_pool, second), within_s=20, what="second batch after the kills")
        await eventually(lambda: truthy(worker.listening.is_set()), within_s=15, what="listening again")
    per_ticket = Counter(claim.ticket_id for claim in process.completed)
    assert set(per_ticket.values()) == {1}


async def test_the_outbox_is_drained_when_woken_and_batch_after_batch(
    worker_pool: asyncpg.Pool, worker_settings: Callable[..., Settings]
) -> None:
    drains: list[str] = []
    backlog = [0]  # deliveries due, handed out 10 per drain

    async def drain_outbox(
        pool: asyncpg.Pool, settings: Settings, metrics: Metrics, worker_id: str, *, limit: int = 10
    ) -> int:
        drains.append(worker_id)
        handled = min(limit, backlog[0])
        backlog[0] -= handled
        return handled

    worker = make_worker(
        worker_pool,
        worker_settings(DESKPILOT_POLL_INTERVAL="30"),
        FakeProcessor(worker_pool),
        drain_outbox=drain_outbox,
    )
    async with running_worker(worker):
        await asyncio.wait_for(worker.listening.wait(), 10)
        await asyncio.sleep(0.5)  # the start-up drains are over
        before = len(drains)
        assert before >= 1, "drained once at start"
        backlog[0] = 25
        async with worker_pool.acquire() as conn:
            await notify_work(conn)
        await eventually(lambda: truthy(backlog[0] == 0), within_s=5, what="backlog drained on NOTIFY")
        await asyncio.sleep(0.3)
        assert len(drains) - before == 3, "10 + 10 + 5, and no batch more"
    assert set(drains) == {worker.worker_id}


# --- shutdown -----------------------------------------------------------------------------------------------


async def test_stopping_releases_a_claim_that_outlives_the_grace_period(
    worker_pool: asyncpg.Pool, worker_settings: Callable[..., Settings]
) -> None:
    process = FakeProcessor(worker_pool)
    process.hold_all = asyncio.Event()  # never set
    worker = make_worker(worker_pool, worker_settings(), process, concurrency=1, grace_s=1.0)
    [ticket_id] = await insert_queued_tickets(worker_pool, 1)
    task = asyncio.create_task(worker.run())
    await eventually(lambda: truthy(process.calls), within_s=10, what="ticket started")
    worker.request_stop()
    await asyncio.wait_for(task, 10)
    assert [claim.ticket_id for claim in process.cancelled] == [ticket_id]
    row = await ticket(worker_pool, ticket_id)
    assert row["lease_owner"] is None
    assert row["lease_expires_at"] is None
    assert row["next_attempt_at"] is not None
    assert not row["backing_off"], "due again at once"
    assert row["failure_count"] == 0
    assert claims(worker, "released") == 1
    async with worker_pool.acquire() as conn:
        again = await claim_next_ticket(conn, "next-worker", 30)
    assert again is not None
    assert again.ticket_id == ticket_id
    assert again.token > process.calls[0].token


async def test_stopping_lets_in_flight_work_finish_and_claims_nothing_more(
    worker_pool: asyncpg.Pool, worker_settings: Callable[..., Settings]
) -> None:
    process = FakeProcessor(worker_pool)
    process.hold_all = asyncio.Event()
    worker = make_worker(worker_pool, worker_settings(), process, concurrency=1, grace_s=10.0)
    first, second = await insert_queued_tickets(worker_pool, 2)
    task = asyncio.create_task(worker.run())
    await eventually(lambda: truthy(process.calls), within_s=10, what="a ticket started")
    worker.request_stop()
    await asyncio.sleep(0.3)
    assert not task.done(), "the in-flight ticket is waited for"
    process.hold_all.set()
    await asyncio.wait_for(task, 10)
    [done] = process.completed
    other = second if done.ticket_id == first else first
    assert (await ticket(worker_pool, done.ticket_id))["next_attempt_at"] is None
    untouched = await ticket(worker_pool, other)
    assert untouched["attempt_count"] == 0
    assert untouched["lease_owner"] is None
    assert process.cancelled == []


# --- warm-up ------------------------------------------------------------------------------------------------


class WarmingProcessor(FakeProcessor):
    """A fake processor with a warm-up that waits for `release` (or fails), counting its runs."""

    def __init__(self, pool: asyncpg.Pool, *, fail: bool = False) -> None:
        super().__init__(pool)
        self.release = asyncio.Event()
        self.warm_ups = 0
        self.fail = fail
        self.stopped_early = False

    async def warm_up(self, stop: asyncio.Event | None = None) -> None:
        self.warm_ups += 1
        if self.fail:
            raise RuntimeError("the help centre could not be read")
        assert stop is not None
        waits = {asyncio.ensure_future(self.release.wait()), asyncio.ensure_future(stop.wait())}
        _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for waiting in pending:
            waiting.cancel()
        self.stopped_early = stop.is_set() and not self.release.is_set()


async def test_the_processors_warm_up_runs_once_at_start_and_tickets_do_not_wait_for_it(
    worker_pool: asyncpg.Pool, worker_settings: Callable[..., Settings]
) -> None:
    process = WarmingProcessor(worker_pool)
    worker = make_worker(worker_pool, worker_settings(), process, concurrency=2)
    ids = await insert_queued_tickets(worker_pool, 5)
    async with running_worker(worker):
        # The warm-up has not finished (nothing released it): tickets are processed all the same.
        await eventually(tickets_done(worker_pool, ids), within_s=30, what="5 tickets completed")
        assert process.warm_ups == 1 and not process.release.is_set()
    # Stopping the worker ends a warm-up still running.
    assert process.stopped_early


async def test_a_failed_warm_up_is_logged_and_the_worker_goes_on(
    worker_pool: asyncpg.Pool, worker_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    process = WarmingProcessor(worker_pool, fail=True)
    worker = make_worker(worker_pool, worker_settings(), process, concurrency=2)
    ids = await insert_queued_tickets(worker_pool, 3)
    async with running_worker(worker):
        await eventually(tickets_done(worker_pool, ids), within_s=30, what="3 tickets completed")
    assert process.warm_ups == 1
    assert "warm-up failed (RuntimeError: the help centre could not be read)" in caplog.text


async def test_the_warm_up_runs_again_every_period(
    worker_pool: asyncpg.Pool, worker_settings: Callable[..., Settings]
) -> None:
    # Again and again, so that an article added since is read before the tickets about it come.
    process = WarmingProcessor(worker_pool)
    process.release.set()
    worker = make_worker(worker_pool, worker_settings(), process, concurrency=1, warm_up_every_s=0.05)
    async with running_worker(worker):
        await eventually(lambda: truthy(process.warm_ups >= 3), within_s=10, what="three warm-ups")
