"""The worker's LISTEN connection: wakes the claim loop and the outbox loop on NOTIFY, proves itself alive while
idle, and reconnects after any loss (a NOTIFY sent while it is down is lost, so every reconnect looks for work)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import asyncpg

from app.worker.context import (
    ACQUIRE_TIMEOUT_S,
    RELEASE_TIMEOUT_S,
    TRANSIENT_DB_ERRORS,
    DatabaseBackoff,
    WorkerContext,
    brief,
    wait_first,
)
from tickets.queue import NOTIFY_CHANNEL

log = logging.getLogger(__name__)

# How often an idle LISTEN connection proves it is still alive (a dead one would miss every wake-up).
LISTENER_CHECK_S = 10.0


class Listener:
    """Keeps one LISTEN connection up for as long as the worker runs; `listening` is set while it is."""

    def __init__(self, ctx: WorkerContext, *, check_s: float = LISTENER_CHECK_S) -> None:
        self.ctx = ctx
        self.check_s = check_s
        self.listening = asyncio.Event()

    async def run(self) -> None:
        """Listen until the worker stops, reconnecting after any loss."""
        ctx = self.ctx
        backoff = DatabaseBackoff()
        while not ctx.stopping.is_set():
            try:
                await self._listen_once(backoff)
            except Exception as exc:
                if ctx.stopping.is_set():
                    break
                delay = backoff.next_delay()
                log.warning(
                    "worker %s: LISTEN connection lost (%s); reconnecting in %.1fs",
                    ctx.worker_id,
                    brief(exc),
                    delay,
                    exc_info=None if isinstance(exc, TRANSIENT_DB_ERRORS) else exc,
                )
                # The poll fallback keeps work moving meanwhile; look for it now in case a wake-up was missed.
                ctx.wake_up()
                await ctx.pause(delay)

    def _on_notify(self, conn: object, pid: int, channel: str, payload: object) -> None:
        self.ctx.wake_up()

    async def _listen_once(self, backoff: DatabaseBackoff) -> None:
        ctx = self.ctx
        conn = await ctx.pool.acquire(timeout=ACQUIRE_TIMEOUT_S)
        closed = asyncio.Event()

        def on_close(_: object) -> None:
            closed.set()

        healthy = False
        try:
            conn.add_termination_listener(on_close)
            await conn.execute(
                "SELECT set_config('application_name', $1, false)", f"deskpilot-listen {ctx.worker_id}"[:63]
            )
            await conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
            self.listening.set()
            backoff.reset()
            log.info("worker %s: listening on %s", ctx.worker_id, NOTIFY_CHANNEL)
            ctx.wake_up()  # whatever was announced while we were not listening
            while True:
                await wait_first((), events=(closed, ctx.stopping), timeout=self.check_s)
                if ctx.stopping.is_set():
                    healthy = True
                    return
                if closed.is_set():
                    raise asyncpg.ConnectionDoesNotExistError("the LISTEN connection was closed")
                # A connection can die without a word (a restarted server behind a proxy, dropped NAT state);
                # re-issuing LISTEN proves it alive and is a no-op for a channel already listened to.
                await conn.execute(f'LISTEN "{NOTIFY_CHANNEL}"', timeout=ACQUIRE_TIMEOUT_S)
        finally:
            self.listening.clear()
            await self._drop_connection(conn, on_close, healthy=healthy)

    async def _drop_connection(
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
                    await self.ctx.pool.release(conn)
                released = True
        except Exception:
            pass  # terminated below
        finally:
            if not released:
                # A suspect or interrupted connection must not go back into the pool as it is; terminating it
                # hands its slot back.
                with contextlib.suppress(asyncpg.InterfaceError):
                    conn.terminate()
