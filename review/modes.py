"""The agent's mode, switched at run time: live (send what it decides) or shadow (send nothing, every decision
to the review queue), for the deployment and per category, each change recorded in the audit log.

The decision transaction reads the mode (`agent.outcome.decision_mode`); DESKPILOT_MODE is the deployment's
mode until an operator sets one here.
"""

from __future__ import annotations

from typing import Any, Literal

from core.db import Connection
from core.errors import InvalidInput
from core.settings import AGENT_MODES

CATEGORIES = ("billing", "technical", "onboarding", "general")
DEPLOYMENT = "*"
ModeChoice = Literal["live", "shadow", "inherit"]


def check_scope(category: str | None) -> str:
    if category is None:
        return DEPLOYMENT
    if category not in CATEGORIES:
        raise InvalidInput(f"category must be one of {', '.join(CATEGORIES)}", field="category")
    return category


async def mode_view(conn: Connection, default: str) -> dict[str, Any]:
    """The deployment's mode (and where it comes from), each category's own setting and its effective mode."""
    rows = {
        r["scope"]: dict(r) for r in await conn.fetch("SELECT scope, mode, updated_at, updated_by FROM agent_modes")
    }
    deployment = rows.get(DEPLOYMENT)
    deployment_mode = deployment["mode"] if deployment else default
    return {
        "mode": deployment_mode,
        "source": "database" if deployment else "environment",
        "environment_default": default,
        "updated_at": deployment["updated_at"] if deployment else None,
        "updated_by": deployment["updated_by"] if deployment else None,
        "categories": {
            category: {
                "setting": rows[category]["mode"] if category in rows else "inherit",
                "effective": rows[category]["mode"] if category in rows else deployment_mode,
                "updated_at": rows[category]["updated_at"] if category in rows else None,
                "updated_by": rows[category]["updated_by"] if category in rows else None,
            }
            for category in CATEGORIES
        },
    }


async def set_mode(
    conn: Connection, *, mode: str, category: str | None, actor: str, default: str, note: str | None = None
) -> dict[str, Any]:
    """Set the deployment's mode (`category` None) or one category's (`inherit` drops the category's own), and
    record the change. Returns {scope, from, to, changed}; setting the current value again records nothing."""
    scope = check_scope(category)
    allowed = (*AGENT_MODES, "inherit") if scope != DEPLOYMENT else AGENT_MODES
    if mode not in allowed:
        raise InvalidInput(f"mode must be one of {', '.join(allowed)}", field="mode")
    async with conn.transaction():
        # One switch at a time: the audit log's from/to stay a chain.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('deskpilot.agent_modes'))")
        current: str | None = await conn.fetchval("SELECT mode FROM agent_modes WHERE scope = $1", scope)
        previous = current or (default if scope == DEPLOYMENT else "inherit")
        if previous == mode and (current is not None or scope != DEPLOYMENT):
            return {"scope": scope, "from": previous, "to": mode, "changed": False}
        if mode == "inherit":
            await conn.execute("DELETE FROM agent_modes WHERE scope = $1", scope)
        else:
            await conn.execute(
                """INSERT INTO agent_modes (scope, mode, updated_by) VALUES ($1, $2, $3)
                   ON CONFLICT (scope) DO UPDATE SET mode = EXCLUDED.mode, updated_at = now(),
                                                     updated_by = EXCLUDED.updated_by""",
                scope,
                mode,
                actor,
            )
        await conn.execute(
            """INSERT INTO audit_log (actor, action, scope, from_value, to_value, detail)
               VALUES ($1, 'mode.set', $2, $3, $4, $5)""",
            actor,
            scope,
            previous,
            mode,
            {"note": note} if note else {},
        )
    return {"scope": scope, "from": previous, "to": mode, "changed": previous != mode}


async def audit_log(conn: Connection, *, limit: int = 50) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """SELECT id, at, actor, action, scope, from_value, to_value, detail FROM audit_log
           ORDER BY at DESC, id DESC LIMIT $1""",
        limit,
    )
    return [dict(r) for r in rows]
