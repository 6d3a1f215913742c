"""The audit trail of the agent: one `resolution_attempts` row per run of the graph, one `attempt_steps` row per
node as it finishes (docs/architecture.md, "Audit trail").
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from core.db import Connection
from tickets.queue import Claim


def json_text(value: Any) -> str:
    """Node outputs as JSON text (UUIDs, datetimes and numpy scalars as strings or floats), for a `$n::text::jsonb`
    parameter: encoded once here, where the pool's jsonb codec would need plain objects first."""
    return json.dumps(value, default=_default, ensure_ascii=False)


def _default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalar
        return value.item()
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


async def start_attempt(conn: Connection, claim: Claim) -> tuple[UUID, int]:
    """Insert the attempt row (state running, at the current knowledge version); earlier running attempts of the
    ticket are abandoned. Returns its id and knowledge version. One statement, committed without waiting for the
    WAL flush: losing this row in a crash loses the steps written after it too (WAL order), and the ticket is
    claimed and attempted again; only the decision transaction must be durable."""
    row = await conn.fetchrow(
        """WITH async_commit AS (SELECT set_config('synchronous_commit', 'off', true)),
           superseded AS (
               UPDATE resolution_attempts SET state = 'abandoned', finished_at = now(),
                      error = COALESCE(error, 'superseded by attempt ' || $2::int)
               WHERE ticket_id = $1 AND state = 'running' AND attempt_no <> $2
           )
           INSERT INTO resolution_attempts (ticket_id, attempt_no, lease_token, worker_id, knowledge_version)
           SELECT $1, $2, $3, $4, COALESCE((SELECT version FROM knowledge_version), 0) FROM async_commit
           ON CONFLICT (ticket_id, attempt_no) DO UPDATE SET
               state = 'running', lease_token = EXCLUDED.lease_token, worker_id = EXCLUDED.worker_id,
               knowledge_version = EXCLUDED.knowledge_version, started_at = now(), finished_at = NULL, error = NULL
           RETURNING id, knowledge_version""",
        claim.ticket_id,
        claim.attempt_no,
        claim.token,
        claim.worker_id,
    )
    assert row is not None  # INSERT ... ON CONFLICT DO UPDATE always returns the row
    return row["id"], int(row["knowledge_version"])


class DatabaseRecorder:
    """Writes each step as its node finishes, so a trace shows work in progress, and an attempt cut short (its
    worker killed) still shows every step it finished."""

    def __init__(self, pool: asyncpg.Pool, attempt_id: UUID) -> None:
        self.pool = pool
        self.attempt_id = attempt_id
        self.seq = 0

    async def record(
        self, node: str, started_at: datetime, duration_ms: float, output: dict[str, Any], error: str | None
    ) -> None:
        self.seq += 1
        async with self.pool.acquire() as conn:
            # Trace rows need not survive an OS crash the way a decision must: this statement's own
            # transaction commits without waiting for the WAL flush (set_config(..., true) is local to it).
            await conn.execute(
                """WITH async_commit AS (SELECT set_config('synchronous_commit', 'off', true))
                   INSERT INTO attempt_steps (attempt_id, seq, node, started_at, duration_ms, output, error)
                   SELECT $1, $2, $3, $4, $5, $6::text::jsonb, $7 FROM async_commit""",
                self.attempt_id,
                self.seq,
                node,
                started_at,
                duration_ms,
                json_text(output),
                error,
            )


async def fail_attempt(conn: Connection, attempt_id: UUID, error: str, *, state: str = "failed") -> None:
    """Close an attempt that raised (or lost its lease); the ticket itself is the worker's to handle."""
    await conn.execute(
        """UPDATE resolution_attempts SET state = $2, error = $3, finished_at = now()
           WHERE id = $1 AND state = 'running'""",
        attempt_id,
        state,
        error[:4000],
    )
