"""Periodic housekeeping that one worker at a time runs: another look at escalated tickets after the knowledge
base changed, closing tickets that stayed quiet after their resolution, and copying fresh search statistics.

The hooks live with the code they belong to (`agent.runner`, `tickets.auto_close`, `knowledge.store`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import asyncpg

from agent.runner import KNOWLEDGE_SETTLE_S, REQUEUE_BATCH, requeue_on_knowledge_change
from core.db import Connection
from core.settings import Settings
from knowledge.store import refresh_term_stats
from tickets.auto_close import close_quiet_tickets
from tickets.queue import notify_work

log = logging.getLogger(__name__)

MAINTENANCE_EVERY_S = 30.0
# pg_try_advisory_xact_lock key: any constant works as long as every worker uses the same one.
MAINTENANCE_LOCK_KEY = 0x6465736B6D6E74  # "deskmnt"

Hook = Callable[[Connection, Settings], Awaitable[object]]


def maintenance_hooks() -> dict[str, Hook]:
    """The hooks, by name; each lives with the code it belongs to and takes the connection and the settings."""

    async def requeue(conn: Connection, settings: Settings) -> object:
        # Escalated tickets get another look when the KB changed: in bounded batches once it settled.
        return await requeue_on_knowledge_change(
            conn, max_cycles=settings.max_cycles, batch=REQUEUE_BATCH, settle_s=KNOWLEDGE_SETTLE_S
        )

    async def close_quiet(conn: Connection, settings: Settings) -> object:
        # Resolved tickets close after the quiet period.
        return await close_quiet_tickets(conn, settings)

    async def refresh_stats(conn: Connection, settings: Settings) -> object:
        # Searches pick their words by statistics copied after each ANALYZE.
        return await refresh_term_stats(conn)

    return {
        "requeue_on_knowledge_change": requeue,
        "close_quiet_tickets": close_quiet,
        "refresh_term_stats": refresh_stats,
    }


async def run_maintenance(
    pool: asyncpg.Pool, settings: Settings, hooks: dict[str, Hook] | None = None
) -> dict[str, object] | None:
    """Run each hook once in one transaction, unless another worker holds the maintenance lock (then None).

    Each hook runs in its own savepoint: one that fails is logged and rolled back, the others still commit.
    Workers are woken when a hook reports having done something (it may have queued tickets).
    """
    hooks = maintenance_hooks() if hooks is None else hooks
    if not hooks:
        return {}
    results: dict[str, object] = {}
    async with pool.acquire() as conn, conn.transaction():
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", MAINTENANCE_LOCK_KEY):
            return None
        for name, hook in hooks.items():
            try:
                async with conn.transaction():
                    results[name] = await hook(conn, settings)
            except Exception:
                if conn.is_closed():
                    raise  # the database went away: the caller retries the whole run later
                log.exception("maintenance hook %s failed", name)
                results[name] = None
        if any(results.values()):
            await notify_work(conn)
    done = {name: result for name, result in results.items() if result}
    if done:
        log.info("maintenance: %s", ", ".join(f"{name}={result}" for name, result in done.items()))
    return results
