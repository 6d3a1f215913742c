"""The end of a ticket's life: resolved tickets the customer has not written back to close after a quiet
period.

The quiet period runs from the latest of: the customer's last message, the resolution, the last reply sent. A
ticket still waiting for a reviewer, with a reply not yet out, or queued for the agent is left alone.
"""

from __future__ import annotations

import logging
from datetime import datetime

from core.db import Connection
from core.settings import Settings
from tickets.lifecycle import transition

log = logging.getLogger(__name__)

QUIET_PERIOD_REASON = "quiet period elapsed"
CLOSE_BATCH = 500

_QUIET_SQL = """
SELECT t.id FROM tickets t
WHERE t.status = 'resolved'
  AND NOT t.needs_review AND NOT t.flagged
  AND t.next_attempt_at IS NULL
  AND (t.lease_expires_at IS NULL OR t.lease_expires_at < COALESCE($1::timestamptz, now()))
  AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.ticket_id = t.id AND d.status = 'pending')
  AND GREATEST(
        t.last_customer_message_at,
        COALESCE(t.resolved_at, t.last_customer_message_at),
        COALESCE(
            (SELECT max(d.sent_at) FROM deliveries d WHERE d.ticket_id = t.id), t.last_customer_message_at
        )
      ) <= COALESCE($1::timestamptz, now()) - make_interval(secs => $2)
ORDER BY t.resolved_at NULLS FIRST
LIMIT $3
FOR UPDATE OF t SKIP LOCKED
"""


async def close_quiet_tickets(conn: Connection, settings: Settings, *, now: datetime | None = None) -> int:
    """Close resolved tickets quiet for `settings.close_after_s`; returns how many closed.

    `now` replaces the database clock (tests drive time with it). Closes at most CLOSE_BATCH per call.
    """
    closed = 0
    async with conn.transaction():
        rows = await conn.fetch(_QUIET_SQL, now, settings.close_after_s, CLOSE_BATCH)
        for row in rows:
            # The scan locked the rows, so each is still resolved: the transition is legal.
            await transition(conn, row["id"], "closed", QUIET_PERIOD_REASON)
            closed += 1
    if closed:
        log.info("closed %d quiet ticket(s)", closed)
    return closed
