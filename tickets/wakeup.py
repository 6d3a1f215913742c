"""Waking idle workers after new work was committed, outside the transaction that stored it.

PostgreSQL serializes notifying commits (a cluster-wide lock from a notifying transaction's pre-commit until its
commit, WAL flush included, is done), so a NOTIFY inside every ingest transaction kept those commits from sharing
disk flushes. Ingest commits without one; `WorkerWaker.wake()` then asks for a NOTIFY on a connection of its own,
one for any number of commits that happened while the previous NOTIFY was in flight or less than
`WAKE_SPACING_S` ago, committed without waiting for the disk. A wake-up lost to a failure or a crash costs a
delay, never a ticket: workers also poll every DESKPILOT_POLL_INTERVAL and look for work whenever their LISTEN
connection (re)connects.
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType

import asyncpg

from tickets.queue import NOTIFY_CHANNEL

log = logging.getLogger(__name__)

# One implicit transaction: the NOTIFY, committed without waiting for the WAL flush (a wake-up need not be
# durable), so it holds PostgreSQL's notify lock only for an instant.
WAKE_SQL = f"SELECT set_config('synchronous_commit', 'off', true), pg_notify('{NOTIFY_CHANNEL}', '')"
# A wake-up is worth little after this long: the workers' poll finds the work anyway.
WAKE_TIMEOUT_S = 5.0
# How long `close` lets a wake-up in flight (and the one queued behind it) finish before cancelling it.
CLOSE_TIMEOUT_S = 2.0
# Commits that arrive while a NOTIFY is in flight wait this long after it for company: under a steady stream of
# ingests one NOTIFY (a transaction for PostgreSQL and a round trip for the API) answers this many milliseconds
# of commits, not each batch of them (bench/ingest.py), and a worker is woken at most this much later.
WAKE_SPACING_S = 0.01


class WorkerWaker:
    """Sends `NOTIFY deskpilot_work` after commits, coalesced, from one process: call `wake()` after each commit
    that queued work; it returns at once. At most one NOTIFY is in flight; `wake()` calls meanwhile are answered
    by a single NOTIFY sent after it, no sooner than `spacing_s` after it ended, so every commit is followed by
    at least one NOTIFY that began after it, and a steady stream of commits costs one NOTIFY per `spacing_s`."""

    def __init__(
        self, pool: asyncpg.Pool, *, timeout_s: float = WAKE_TIMEOUT_S, spacing_s: float = WAKE_SPACING_S
    ) -> None:
        self.pool = pool
        self.timeout_s = timeout_s
        self.spacing_s = spacing_s
        self.sent = 0  # NOTIFYs committed (tests and logs)
        self._pending = False
        self._last_notify_at = float("-inf")
        self._closed = False
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        """Wake the workers soon (call after the commit). Never raises and never waits."""
        if self._closed:
            log.debug("worker wake-up after close: left to the workers' poll")
            return
        self._pending = True
        # `done()` turns true as soon as `_send` returns, so a wake-up after its last look at `_pending`
        # starts a new task; the reference kept here keeps the task from being garbage-collected.
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._send(), name="wake workers")

    async def _send(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            wait_s = self._last_notify_at + self.spacing_s - loop.time()
            if wait_s > 0 and not self._closed:
                await asyncio.sleep(wait_s)  # the last NOTIFY was just now: let more commits join this one
            self._pending = False  # cleared first: a commit after this point gets a NOTIFY of its own
            await self._notify()
            self._last_notify_at = loop.time()

    async def _notify(self) -> None:
        # Twice at most: the pool may hand out a connection that died with a database restart; the second try
        # gets a fresh one.
        for attempt in (1, 2):
            try:
                async with asyncio.timeout(self.timeout_s), self.pool.acquire() as conn:
                    await conn.execute(WAKE_SQL)
            except Exception as exc:
                if attempt == 2 or self._closed:
                    log.warning(
                        "could not wake the workers (%s: %s); they find the work on their next poll",
                        type(exc).__name__,
                        exc,
                    )
                    return
                log.debug("worker wake-up failed (%s: %s); trying once more", type(exc).__name__, exc)
            else:
                self.sent += 1
                return

    async def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Send what is still due (waiting at most `timeout_s`), then stop; later `wake()` calls do nothing.
        Call before closing the pool."""
        self._closed = True
        task = self._task
        if task is None or task.done():
            return
        _, pending = await asyncio.wait({task}, timeout=timeout_s)
        if pending:
            task.cancel()
            await asyncio.wait({task}, timeout=timeout_s)
            log.warning("worker wake-up still in flight at shutdown: cancelled")

    async def __aenter__(self) -> WorkerWaker:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
