"""The ticket work queue in Postgres: claim with SKIP LOCKED, leases with heartbeats, fencing tokens on completion.

A ticket is queued while `next_attempt_at` is set. A claim takes a fresh `lease_token` from a sequence; every write
that completes work first checks, in its own transaction, that the ticket still carries that token, so a worker that
was paused past its lease (and replaced) cannot complete or deliver anything afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg

from core.backoff import backoff_s
from core.db import Connection

NOTIFY_CHANNEL = "deskpilot_work"


@dataclass(frozen=True, slots=True)
class Claim:
    ticket_id: UUID
    token: int
    worker_id: str
    attempt_no: int
    claimed_at: datetime
    # Failed attempts so far, counting holders that vanished with the ticket (their lease ran out unfinished).
    failures: int = 0


class LeaseLost(Exception):
    """The claim's lease expired and someone else holds the ticket now: the holder must stop without writing."""


class HoldersVanished(Exception):
    """Every worker that took the ticket stopped before finishing it: running it again would likely kill another."""


_CLAIM_SQL = """
WITH next AS (
    SELECT id FROM tickets
    WHERE next_attempt_at IS NOT NULL AND next_attempt_at <= now()
      AND parked_at IS NULL
      AND (lease_expires_at IS NULL OR lease_expires_at < now())
    ORDER BY next_attempt_at
    LIMIT 1
    FOR UPDATE SKIP LOCKED
)
UPDATE tickets t SET
    lease_owner = $1,
    lease_expires_at = now() + make_interval(secs => $2),
    lease_token = nextval('lease_token_seq'),
    attempt_count = t.attempt_count + 1,
    -- A lease still set but run out: its holder stopped mid-ticket without recording anything (killed, out of
    -- memory, paused, cut off). That counts as a failed attempt, so a ticket that kills its worker gets parked.
    failure_count = t.failure_count + (t.lease_expires_at IS NOT NULL)::int,
    last_error = CASE WHEN t.lease_expires_at IS NOT NULL
                      THEN 'the worker holding it (' || COALESCE(t.lease_owner, '?') || ') stopped before finishing'
                      ELSE t.last_error END,
    updated_at = now()
FROM next WHERE t.id = next.id
RETURNING t.id, t.lease_token, t.attempt_count, t.failure_count, now() AS claimed_at
"""


async def claim_next_ticket(conn: Connection, worker_id: str, lease_s: float) -> Claim | None:
    """Take the oldest due ticket nobody holds a live lease on, or None when there is nothing to do."""
    row = await conn.fetchrow(_CLAIM_SQL, worker_id, lease_s)
    if row is None:
        return None
    return Claim(
        ticket_id=row["id"],
        token=row["lease_token"],
        worker_id=worker_id,
        attempt_no=row["attempt_count"],
        claimed_at=row["claimed_at"],
        failures=row["failure_count"],
    )


async def heartbeat(conn: Connection, claim: Claim, lease_s: float) -> bool:
    """Extend the lease; False means it was lost (expired and re-claimed), and the work must stop.

    A claim that was already finished, failed or released is not leased again (a heartbeat racing the
    completing commit would otherwise hide a ticket that is due again behind a fresh lease).
    """
    status = await conn.execute(
        """UPDATE tickets SET lease_expires_at = now() + make_interval(secs => $3)
           WHERE id = $1 AND lease_token = $2 AND lease_expires_at IS NOT NULL""",
        claim.ticket_id,
        claim.token,
        lease_s,
    )
    return status == "UPDATE 1"


async def assert_lease(conn: Connection, claim: Claim, *, durable: bool = True) -> asyncpg.Record:
    """Lock the ticket row and check the fencing token. Call first inside every completing transaction.

    Returns the locked row's `status` and `cycle_count`, which stay current until the transaction ends.
    `durable=False` commits the transaction without waiting for the WAL flush (for writes a crash may lose
    because they are redone), set by the same statement.
    """
    async_commit = "" if durable else ", set_config('synchronous_commit', 'off', true)"
    row = await conn.fetchrow(
        f"SELECT lease_token, status, cycle_count{async_commit} FROM tickets WHERE id = $1 FOR UPDATE",
        claim.ticket_id,
    )
    token = row["lease_token"] if row is not None else None
    if token != claim.token:
        raise LeaseLost(f"ticket {claim.ticket_id}: lease token {claim.token} superseded by {token}")
    assert row is not None  # a missing row has no token: LeaseLost above
    return row


async def finish_claim(conn: Connection, claim: Claim, *, retry_at_s: float | None = None) -> None:
    """Release the ticket after a completed attempt (call inside the completing transaction, after assert_lease).

    The ticket leaves the queue unless `retry_at_s` asks for another cycle later, or the customer wrote again
    while this attempt ran, in which case it is due again at once.
    """
    await conn.execute(
        """
        UPDATE tickets SET
            lease_owner = NULL, lease_expires_at = NULL, last_error = NULL,
            next_attempt_at = CASE
                WHEN last_customer_message_at > $2 THEN now()
                WHEN $3::float8 IS NOT NULL THEN now() + make_interval(secs => $3::float8)
                ELSE NULL END,
            updated_at = now()
        WHERE id = $1
        """,
        claim.ticket_id,
        claim.claimed_at,
        retry_at_s,
    )


# A ticket whose processing raised waits 5 s, 10 s, 20 s ... at most 10 minutes (less by up to half: `core.backoff`).
FAILURE_BACKOFF_BASE_S = 5.0
FAILURE_BACKOFF_CAP_S = 600.0


async def fail_claim(conn: Connection, claim: Claim, error: str, *, max_failures: int) -> bool:
    """Record a crashed attempt: retry later with backoff, or park the ticket after `max_failures`.

    Returns True when the ticket was parked. Fenced: a lost lease records nothing, and neither does a claim
    that was already finished (an error raised after the completing commit must not queue the ticket again).
    """
    async with conn.transaction():
        await assert_lease(conn, claim)
        held = await conn.fetchval("SELECT lease_expires_at IS NOT NULL FROM tickets WHERE id = $1", claim.ticket_id)
        if not held:
            raise LeaseLost(f"ticket {claim.ticket_id}: claim {claim.token} was already finished or released")
        failures = await conn.fetchval(
            "UPDATE tickets SET failure_count = failure_count + 1 WHERE id = $1 RETURNING failure_count",
            claim.ticket_id,
        )
        parked = failures >= max_failures
        await conn.execute(
            """
            UPDATE tickets SET
                lease_owner = NULL, lease_expires_at = NULL, last_error = $2,
                parked_at = CASE WHEN $3 THEN now() ELSE NULL END,
                needs_review = needs_review OR $3,
                next_attempt_at = now() + make_interval(secs => $4),
                updated_at = now()
            WHERE id = $1
            """,
            claim.ticket_id,
            error[:4000],
            parked,
            backoff_s(failures, base_s=FAILURE_BACKOFF_BASE_S, cap_s=FAILURE_BACKOFF_CAP_S),
        )
        if parked:
            # No later attempt will supersede them: attempts whose workers died mid-graph end here, in the trace too.
            await conn.execute(
                """UPDATE resolution_attempts SET state = 'abandoned', finished_at = now(),
                          error = COALESCE(error, 'its worker stopped before finishing; the ticket was parked')
                   WHERE ticket_id = $1 AND state = 'running'""",
                claim.ticket_id,
            )
        return bool(parked)


async def release_claim(conn: Connection, claim: Claim) -> None:
    """Give the ticket back untouched (graceful shutdown): due again at once for another worker.

    Only a claim still held is given back: when the attempt's completing transaction committed just before the
    processor was cancelled, the ticket stays finished instead of being queued for a second reply.
    """
    await conn.execute(
        """UPDATE tickets SET lease_owner = NULL, lease_expires_at = NULL, next_attempt_at = now(),
                              updated_at = now()
           WHERE id = $1 AND lease_token = $2 AND lease_expires_at IS NOT NULL""",
        claim.ticket_id,
        claim.token,
    )


async def notify_work(conn: Connection) -> None:
    """Wake idle workers (delivered on commit when called inside a transaction)."""
    await conn.execute(f"NOTIFY {NOTIFY_CHANNEL}")
