"""Worker processes on one database: contention, `kill -9`, SIGSTOP past the lease, and SIGTERM.

Each process is `python -m tests.support.workers`: the real `run_worker_process` around a processor that
records what it starts and what its fenced completion commits (see that module). Leases are 3 s here so that
rescues happen within seconds.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from uuid import UUID

import asyncpg
import pytest

from core.settings import PROJECT_ROOT
from tests.support.workers import TABLES_SQL, eventually, insert_queued_tickets, truthy

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

LEASE_S = 3.0
# For tests about contention rather than expiry: a lease no scheduling stall on a loaded 2-core machine outlasts,
# so a second claim of a ticket can only mean two workers claimed it at once.
CONTENTION_LEASE_S = 30.0


class WorkerProcess:
    def __init__(self, process: asyncio.subprocess.Process, log_path: Path) -> None:
        self.process = process
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    async def wait_listening(self, within_s: float = 30.0) -> None:
        await eventually(lambda: truthy("listening on" in self.log()), within_s=within_s, what="worker ready")

    async def exit_code(self, within_s: float) -> int:
        return await asyncio.wait_for(self.process.wait(), within_s)


@pytest.fixture
async def start_worker(
    clean_db: asyncpg.Pool, database_url: str, tmp_path: Path
) -> AsyncIterator[Callable[..., Awaitable[WorkerProcess]]]:
    await clean_db.execute(TABLES_SQL)
    started: list[WorkerProcess] = []

    async def start(
        *,
        concurrency: int = 2,
        mode: str = "ok",
        sleep_s: float = 2.0,
        grace_s: float = 20.0,
        lease_s: float = LEASE_S,
    ) -> WorkerProcess:
        log_path = tmp_path / f"worker-{len(started)}.log"
        env = {
            **os.environ,
            "DESKPILOT_DATABASE_URL": database_url,
            "DESKPILOT_LEASE_SECONDS": str(lease_s),
            "DESKPILOT_POLL_INTERVAL": "0.5",
        }
        with log_path.open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.support.workers",
                "--url",
                database_url,
                "--concurrency",
                str(concurrency),
                "--mode",
                mode,
                "--sleep-s",
                str(sleep_s),
                "--grace-s",
                str(grace_s),
                cwd=PROJECT_ROOT,
                env=env,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
        worker = WorkerProcess(process, log_path)
        started.append(worker)
        await worker.wait_listening()
        return worker

    yield start
    for worker in started:
        if worker.process.returncode is None:
            worker.signal(signal.SIGCONT)
            worker.signal(signal.SIGKILL)
            await worker.process.wait()


def rows_in(pool: asyncpg.Pool, table: str, count: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        found: int = await pool.fetchval(f"SELECT count(*) FROM {table}")
        return found >= count

    return check


@pytest.mark.parametrize(
    ("workers", "count"), [(2, 500), (3, 2000)], ids=["2 workers, 500 tickets", "3 workers, 2000 tickets"]
)
async def test_contending_workers_process_each_ticket_exactly_once_without_overlapping_leases(
    clean_db: asyncpg.Pool, start_worker: Callable[..., Awaitable[WorkerProcess]], workers: int, count: int
) -> None:
    concurrency = 4
    started = await asyncio.gather(
        *(start_worker(concurrency=concurrency, lease_s=CONTENTION_LEASE_S) for _ in range(workers))
    )
    ids = await insert_queued_tickets(clean_db, count, notify=True)
    await eventually(rows_in(clean_db, "test_processed", count), within_s=60, what=f"{count} completions")
    await asyncio.sleep(0.5)  # room for a duplicate to show up, if there were one

    processed = await clean_db.fetch("SELECT ticket_id, worker_pid, token, at FROM test_processed")
    assert len(processed) == count
    assert {row["ticket_id"] for row in processed} == set(ids)
    assert await clean_db.fetchval("SELECT count(*) FROM test_refused") == 0
    # One claim per ticket, counted by the database itself: not even a claim that never reached a processor.
    claims = await clean_db.fetch("SELECT id, attempt_count, lease_token FROM tickets WHERE id = ANY($1)", ids)
    assert {row["attempt_count"] for row in claims} == {1}
    # The fencing token each completion carried is the ticket's current one, and no two claims shared one.
    current_token = {row["id"]: row["lease_token"] for row in claims}
    assert all(row["token"] == current_token[row["ticket_id"]] for row in processed)
    assert len({row["token"] for row in processed}) == count

    # Every hold of a ticket, from the processor's start to its fenced completion: per ticket the holds never
    # overlap (here: exactly one each), and no worker held more tickets at once than it has slots.
    starts = await clean_db.fetch("SELECT ticket_id, worker_pid, token, at FROM test_started")
    assert len(starts) == count
    end_of = {(row["ticket_id"], row["token"]): row["at"] for row in processed}
    holds: dict[UUID, list[tuple[datetime, datetime]]] = {}
    by_worker: dict[int, list[tuple[datetime, datetime]]] = {}
    for row in starts:
        end = end_of[(row["ticket_id"], row["token"])]  # the same claim started and completed it
        assert row["at"] <= end
        holds.setdefault(row["ticket_id"], []).append((row["at"], end))
        by_worker.setdefault(row["worker_pid"], []).append((row["at"], end))
    for ticket_id, intervals in holds.items():
        intervals.sort()
        assert all(later[0] >= earlier[1] for earlier, later in itertools.pairwise(intervals)), ticket_id
    assert set(by_worker) == {worker.pid for worker in started}  # every process took part
    assert all(most_at_once(intervals) <= concurrency for intervals in by_worker.values())

    left = await clean_db.fetchval(
        "SELECT count(*) FROM tickets WHERE next_attempt_at IS NOT NULL OR lease_owner IS NOT NULL"
    )
    assert left == 0


def most_at_once(intervals: list[tuple[datetime, datetime]]) -> int:
    """The largest number of intervals open at one instant (an end at the same instant as a start closes first)."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    open_now = peak = 0
    for _, step in edges:
        open_now += step
        peak = max(peak, open_now)
    return peak


async def test_a_killed_workers_ticket_is_rescued_after_its_lease_and_completed_once(
    clean_db: asyncpg.Pool, start_worker: Callable[..., Awaitable[WorkerProcess]]
) -> None:
    victim = await start_worker(concurrency=1, mode="sleep", sleep_s=60)
    [ticket_id] = await insert_queued_tickets(clean_db, subjects=["held by the victim"], notify=True)
    await eventually(rows_in(clean_db, "test_started", 1), within_s=15, what="victim started the ticket")
    rescuer = await start_worker(concurrency=1, mode="ok")
    victim.signal(signal.SIGKILL)
    killed_at = time.monotonic()
    await eventually(rows_in(clean_db, "test_processed", 1), within_s=60, what="ticket rescued")
    assert time.monotonic() - killed_at < 60

    await asyncio.sleep(0.5)
    [done] = await clean_db.fetch("SELECT ticket_id, worker_pid, token FROM test_processed")
    assert done["ticket_id"] == ticket_id
    assert done["worker_pid"] == rescuer.pid
    starts = await clean_db.fetch("SELECT worker_pid, token FROM test_started ORDER BY at")
    assert [row["worker_pid"] for row in starts] == [victim.pid, rescuer.pid]
    assert done["token"] > starts[0]["token"]
    row = await clean_db.fetchrow("SELECT next_attempt_at, lease_owner FROM tickets WHERE id = $1", ticket_id)
    assert row is not None
    assert row["next_attempt_at"] is None
    assert row["lease_owner"] is None


async def test_a_paused_worker_past_its_lease_cannot_complete_after_it_resumes(
    clean_db: asyncpg.Pool, start_worker: Callable[..., Awaitable[WorkerProcess]]
) -> None:
    sleeper = await start_worker(concurrency=1, mode="sleep", sleep_s=LEASE_S + 1)
    [ticket_id] = await insert_queued_tickets(clean_db, subjects=["held by the sleeper"], notify=True)
    await eventually(rows_in(clean_db, "test_started", 1), within_s=15, what="sleeper started the ticket")
    sleeper.signal(signal.SIGSTOP)
    try:
        rescuer = await start_worker(concurrency=1, mode="ok")
        await eventually(rows_in(clean_db, "test_processed", 1), within_s=60, what="ticket rescued")
    finally:
        sleeper.signal(signal.SIGCONT)
    processed = await clean_db.fetch("SELECT ticket_id, worker_pid, token FROM test_processed")
    assert [(row["ticket_id"], row["worker_pid"]) for row in processed] == [(ticket_id, rescuer.pid)]
    started = await clean_db.fetch("SELECT worker_pid, token FROM test_started ORDER BY at")
    assert [row["worker_pid"] for row in started] == [sleeper.pid, rescuer.pid]
    sleeper_token, rescuer_token = started[0]["token"], processed[0]["token"]
    assert rescuer_token > sleeper_token
    # Resumed past its sleep and its lease, the sleeper meets the fence one of two ways, whichever timer fires
    # first: its fenced completion is refused (recorded in test_refused and logged), or its heartbeat finds the
    # token superseded and cancels the processing before it completes. Either names both tokens.
    refusal = (
        f"ticket {ticket_id}: lease lost, completion refused: "
        f"ticket {ticket_id}: lease token {sleeper_token} superseded by {rescuer_token}"
    )
    cancelling = (
        f"ticket {ticket_id}: lease lost (token {sleeper_token} superseded by {rescuer_token}); "
        "cancelling its processing"
    )
    await eventually(
        lambda: truthy(refusal in sleeper.log() or cancelling in sleeper.log()),
        within_s=15,
        what="the resumed sleeper is fenced out",
    )
    await asyncio.sleep(0.5)

    log = sleeper.log()
    refused = [
        (row["ticket_id"], row["worker_pid"], row["token"])
        for row in await clean_db.fetch("SELECT ticket_id, worker_pid, token FROM test_refused")
    ]
    # The refused completion's row is written before LeaseLost propagates; a heartbeat cancelling it during that
    # write may leave the row without the refusal line, never the line without the row.
    assert refused in ([], [(ticket_id, sleeper.pid, sleeper_token)]), refused
    if refusal in log:
        assert refused == [(ticket_id, sleeper.pid, sleeper_token)]
    else:
        assert cancelling in log, log
    assert f"ticket {ticket_id} attempt" not in log  # the worker's line for a completed attempt
    row = await clean_db.fetchrow("SELECT failure_count, last_error FROM tickets WHERE id = $1", ticket_id)
    assert row is not None
    # The rescuer's claim counted the holder that stopped (its lease ran out unfinished); the refused completion
    # of the resumed sleeper records nothing more, and the rescuer's completion clears the error.
    assert row["failure_count"] == 1
    assert row["last_error"] is None
    sleeper.signal(signal.SIGTERM)
    assert await sleeper.exit_code(within_s=30) == 0


async def test_sigterm_finishes_short_work_releases_the_rest_and_exits_0_within_30s(
    clean_db: asyncpg.Pool, start_worker: Callable[..., Awaitable[WorkerProcess]]
) -> None:
    worker = await start_worker(concurrency=2, mode="sleep", grace_s=4)
    short, long = await insert_queued_tickets(clean_db, subjects=["sleep 1.5", "sleep 120"], notify=True)
    await eventually(rows_in(clean_db, "test_started", 2), within_s=15, what="both tickets started")
    worker.signal(signal.SIGTERM)
    signalled_at = time.monotonic()
    assert await worker.exit_code(within_s=30) == 0
    assert time.monotonic() - signalled_at < 30

    processed = await clean_db.fetch("SELECT ticket_id FROM test_processed")
    assert [row["ticket_id"] for row in processed] == [short]
    released = await clean_db.fetchrow(
        """SELECT lease_owner, lease_expires_at, next_attempt_at <= now() AS due, failure_count
           FROM tickets WHERE id = $1""",
        long,
    )
    assert released is not None
    assert released["lease_owner"] is None
    assert released["lease_expires_at"] is None
    assert released["due"] is True
    assert released["failure_count"] == 0
    assert "released for another worker" in worker.log()
