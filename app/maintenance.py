"""Periodic housekeeping that one worker at a time runs: another look at escalated tickets after the knowledge
base changed, closing tickets that stayed quiet after their resolution, and copying fresh search statistics.

The hooks live with the code they belong to (`agent.runner`, `app.delivery.lifecycle`); a hook whose module is
not there is skipped, so a worker runs whatever part of the pipeline is installed.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import asyncpg

from app.db import Connection
from app.queue import notify_work
from app.settings import Settings

log = logging.getLogger(__name__)

MAINTENANCE_EVERY_S = 30.0
# pg_try_advisory_xact_lock key: any constant works as long as every worker uses the same one.
MAINTENANCE_LOCK_KEY = 0x6465736B6D6E74  # "deskmnt"

Hook = Callable[[Connection, Settings], Awaitable[object]]


def _missing(exc: ImportError, *modules: str) -> bool:
    """True when the import failed because one of `modules` (or the name asked of it) does not exist yet.

    Any other import error is a bug in a module that does exist, and must not be mistaken for "not installed".
    """
    return exc.name in modules


def knowledge_requeue_hook() -> Hook | None:
    """`agent.runner.requeue_on_knowledge_change`: escalated tickets get another look when the KB changed."""
    try:
        from agent.runner import requeue_on_knowledge_change
    except ImportError as exc:
        if _missing(exc, "agent", "agent.runner"):
            return None
        raise

    async def hook(conn: Connection, settings: Settings) -> object:
        return await requeue_on_knowledge_change(conn)

    return hook


def quiet_tickets_hook() -> Hook | None:
    """`app.delivery.lifecycle.close_quiet_tickets`: resolved tickets close after the quiet period."""
    try:
        from app.delivery.lifecycle import close_quiet_tickets
    except ImportError as exc:
        if _missing(exc, "app.delivery", "app.delivery.lifecycle"):
            return None
        raise

    async def hook(conn: Connection, settings: Settings) -> object:
        return await close_quiet_tickets(conn, settings)

    return hook


def term_stats_hook() -> Hook | None:
    """`knowledge.store.refresh_term_stats`: searches pick their words by statistics copied after each ANALYZE."""
    try:
        from knowledge.store import refresh_term_stats
    except ImportError as exc:
        if _missing(exc, "knowledge", "knowledge.store"):
            return None
        raise

    async def hook(conn: Connection, settings: Settings) -> object:
        return await refresh_term_stats(conn)

    return hook


def maintenance_hooks() -> dict[str, Hook]:
    """The hooks available in this installation, by name."""
    found = {
        "requeue_on_knowledge_change": knowledge_requeue_hook(),
        "close_quiet_tickets": quiet_tickets_hook(),
        "refresh_term_stats": term_stats_hook(),
    }
    return {name: hook for name, hook in found.items() if hook is not None}


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
