"""Periodic housekeeping that one worker at a time runs: another look at escalated tickets after the knowledge
base changed, closing tickets that stayed quiet after their resolution, and copying fresh search statistics.

The hooks live with the code they belong to (`agent.runner`, `app.delivery.lifecycle`); a hook whose module is
not there is skipped, so a worker runs whatever part of the pipeline is installed.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from app.db import Connection
from app.queue import notify_work
from app.settings import Settings

log = logging.getLogger(__name__)

MAINTENANCE_EVERY_S = 30.0
# pg_try_advisory_xact_lock key: any constant works as long as every worker uses the same one.
MAINTENANCE_LOCK_KEY = 0x6465736B6D6E74  # "deskmnt"

Hook = Callable[[Connection, Settings], Awaitable[object]]


def _installed(module: str, function: str, *, with_settings: bool = False) -> Hook | None:
    """`module.function` as a hook, or None when that module is not installed. `function` takes the connection
    (and the settings when `with_settings`).

    Only a missing package or module means "not installed": any other import error is a bug in a module that
    does exist, and is raised.
    """
    try:
        found: Any = getattr(importlib.import_module(module), function)
    except ImportError as exc:
        parts = module.split(".")
        if exc.name in {".".join(parts[:n]) for n in range(1, len(parts) + 1)}:
            return None
        raise

    async def hook(conn: Connection, settings: Settings) -> object:
        result: object = await (found(conn, settings) if with_settings else found(conn))
        return result

    return hook


def maintenance_hooks() -> dict[str, Hook]:
    """The hooks available in this installation, by name."""
    found = {
        # Escalated tickets get another look when the KB changed.
        "requeue_on_knowledge_change": _installed("agent.runner", "requeue_on_knowledge_change"),
        # Resolved tickets close after the quiet period.
        "close_quiet_tickets": _installed("app.delivery.lifecycle", "close_quiet_tickets", with_settings=True),
        # Searches pick their words by statistics copied after each ANALYZE.
        "refresh_term_stats": _installed("knowledge.store", "refresh_term_stats"),
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
