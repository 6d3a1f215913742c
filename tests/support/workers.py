"""Worker test support: queued tickets seeded in SQL, a fake ticket processor, and a worker process.

The process, for the end-to-end tests:

    python -m tests.support.workers --url URL --concurrency N --mode sleep|ok [--sleep-s S] [--grace-s G]

runs `app.worker.run_worker_process` (the real pool, LISTEN, heartbeats, signal handling and shutdown) around a
processor that records, in tables the test created: each ticket it starts (`test_started`), each fenced
completion (`test_processed`, written in the completing transaction after `assert_lease`) and each completion
the fence refused (`test_refused`). Mode `sleep` holds each ticket for `--sleep-s` seconds, or for N seconds
when the ticket's subject is `sleep N`; mode `ok` completes at once. Settings (lease, poll interval) come from
the environment.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from uuid import UUID

import asyncpg

from app.worker import Processor, ProcessorFactory, Worker, run_worker_process
from core.metrics import Metrics
from core.settings import Settings
from tickets.queue import Claim, LeaseLost, assert_lease, finish_claim, notify_work

# --- for tests in the test process ----------------------------------------------------------------------------


async def insert_queued_tickets(
    pool: asyncpg.Pool, count: int = 1, *, subjects: Sequence[str] = (), notify: bool = False
) -> list[UUID]:
    """Queued tickets (due now) straight in SQL, optionally announced the way ingest does it.

    One ticket per subject when `subjects` is given, else `count` tickets.
    """
    subjects = list(subjects) or [f"question {n}" for n in range(count)]
    async with pool.acquire() as conn, conn.transaction():
        customer_id = await conn.fetchval(
            """INSERT INTO customers (email) VALUES ('worker-test@example.com')
               ON CONFLICT (email) DO UPDATE SET updated_at = now() RETURNING id"""
        )
        rows = await conn.fetch(
            """INSERT INTO tickets (external_id, customer_id, channel, subject, body, raw_payload,
                                   next_attempt_at)
               SELECT 'worker-' || gen_random_uuid(), $1, 'email', subject, 'body', '{}'::jsonb, now()
               FROM unnest($2::text[]) WITH ORDINALITY AS s (subject, n)
               ORDER BY n
               RETURNING id""",
            customer_id,
            subjects,
        )
        if notify:
            await notify_work(conn)
    return [row["id"] for row in rows]


async def eventually(check: Callable[[], Awaitable[object]], *, within_s: float, what: str) -> None:
    """Poll `check` until it is truthy; fail with `what` after `within_s` (a generous bound, never a target)."""
    deadline = time.monotonic() + within_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within_s}s")
        await asyncio.sleep(0.05)


async def truthy(value: object) -> bool:
    """For `eventually(lambda: truthy(...))` on in-memory state."""
    return bool(value)


def tickets_done(pool: asyncpg.Pool, ids: list[UUID]) -> Callable[[], Awaitable[bool]]:
    """For `eventually`: every one of `ids` has left the queue."""

    async def check() -> bool:
        done: int = await pool.fetchval(
            "SELECT count(*) FROM tickets WHERE id = ANY($1) AND next_attempt_at IS NULL", ids
        )
        return done == len(ids)

    return check


@asynccontextmanager
async def running_worker(worker: Worker) -> AsyncIterator[asyncio.Task[None]]:
    """Run a worker for the block, then stop it without a grace period (its claims are released)."""
    task = asyncio.create_task(worker.run())
    try:
        yield task
    finally:
        worker.request_stop(now=True)
        await asyncio.wait_for(task, 15)


class FakeProcessor:
    """Stands in for the agent: records every call and completes through the same fenced transaction.

    Tickets in `poison` raise; a ticket waits for its event in `holds` (or for `hold_all`) before completing.
    """

    def __init__(self, pool: asyncpg.Pool, *, delay_s: float = 0.0) -> None:
        self.pool = pool
        self.delay_s = delay_s
        self.calls: list[Claim] = []
        self.completed: list[Claim] = []
        self.refused: list[Claim] = []
        self.cancelled: list[Claim] = []
        self.poison: set[UUID] = set()
        self.holds: dict[UUID, asyncio.Event] = {}
        self.hold_all: asyncio.Event | None = None
        self.running = 0
        self.max_running = 0

    async def __call__(self, claim: Claim) -> str:
        self.calls.append(claim)
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            if claim.ticket_id in self.poison:
                raise RuntimeError(f"poison ticket {claim.ticket_id}")
            gate = self.holds.get(claim.ticket_id) or self.hold_all
            if gate is not None:
                await gate.wait()
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            try:
                async with self.pool.acquire() as conn, conn.transaction():
                    await assert_lease(conn, claim)
                    await finish_claim(conn, claim)
            except LeaseLost:
                self.refused.append(claim)
                raise
            self.completed.append(claim)
            return "completed"
        except asyncio.CancelledError:
            self.cancelled.append(claim)
            raise
        finally:
            self.running -= 1

    def calls_for(self, ticket_id: UUID) -> list[Claim]:
        return [claim for claim in self.calls if claim.ticket_id == ticket_id]


# --- the worker process ---------------------------------------------------------------------------------------

RECORD_TABLES = ("test_started", "test_processed", "test_refused")
TABLES_SQL = "".join(
    f"""CREATE TABLE IF NOT EXISTS {table} (
            ticket_id uuid NOT NULL, worker_pid int NOT NULL, token bigint NOT NULL,
            at timestamptz NOT NULL DEFAULT clock_timestamp());
        TRUNCATE {table};
    """
    for table in RECORD_TABLES
)
"""What a test runs first: the recording tables, created empty."""


def hold_for(subject: str, default_s: float) -> float:
    """`sleep 12.5` in the subject holds that ticket 12.5 s; anything else holds it `default_s`."""
    word, _, seconds = subject.partition(" ")
    if word == "sleep":
        try:
            return float(seconds)
        except ValueError:
            pass
    return default_s


def recording_processor(mode: str, sleep_s: float) -> ProcessorFactory:
    def make(pool: asyncpg.Pool, settings: Settings, metrics: Metrics) -> Processor:
        pid = os.getpid()

        async def process(claim: Claim) -> str:
            async with pool.acquire() as conn:
                await conn.execute(
                    "INSERT INTO test_started (ticket_id, worker_pid, token) VALUES ($1, $2, $3)",
                    claim.ticket_id,
                    pid,
                    claim.token,
                )
                subject = await conn.fetchval("SELECT subject FROM tickets WHERE id = $1", claim.ticket_id)
            if mode == "sleep":
                await asyncio.sleep(hold_for(subject, sleep_s))
            try:
                async with pool.acquire() as conn, conn.transaction():
                    await assert_lease(conn, claim)
                    await conn.execute(
                        "INSERT INTO test_processed (ticket_id, worker_pid, token) VALUES ($1, $2, $3)",
                        claim.ticket_id,
                        pid,
                        claim.token,
                    )
                    await finish_claim(conn, claim)
            except LeaseLost:
                await pool.execute(
                    "INSERT INTO test_refused (ticket_id, worker_pid, token) VALUES ($1, $2, $3)",
                    claim.ticket_id,
                    pid,
                    claim.token,
                )
                raise
            return "recorded"

        return process

    return make


def log_to_stderr() -> None:
    """A worker process's log, as the tests read it: INFO and up, each line with its process id."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--mode", choices=("sleep", "ok"), default="ok")
    parser.add_argument("--sleep-s", type=float, default=2.0)
    parser.add_argument("--grace-s", type=float, default=20.0)
    args = parser.parse_args(argv)
    log_to_stderr()
    settings = Settings.from_env(env_file=None)
    asyncio.run(
        run_worker_process(
            settings,
            args.url,
            concurrency=args.concurrency,
            grace_s=args.grace_s,
            make_processor=recording_processor(args.mode, args.sleep_s),
        )
    )


if __name__ == "__main__":
    main()
