"""Queries behind the operator console overview (the review queue is `review.submit.review_queue`)."""

from __future__ import annotations

from typing import Any

from core.db import Connection

STATUSES = ("open", "in_progress", "pending_customer", "resolved", "closed")
CATEGORIES = ("billing", "technical", "onboarding", "general")
PRIORITIES = ("low", "normal", "high", "urgent")


async def ticket_counts(conn: Connection) -> dict[str, Any]:
    """Counts by status, category and priority (zeros included) and the queue at a glance."""
    rows = await conn.fetch(
        """SELECT 'status' AS dimension, status AS value, count(*) AS n FROM tickets GROUP BY status
           UNION ALL
           SELECT 'category', COALESCE(category, 'unclassified'), count(*) FROM tickets GROUP BY 2
           UNION ALL
           SELECT 'priority', COALESCE(priority, 'unscored'), count(*) FROM tickets GROUP BY 2"""
    )
    counts: dict[str, dict[str, int]] = {
        "status": dict.fromkeys(STATUSES, 0),
        "category": dict.fromkeys(CATEGORIES, 0),
        "priority": dict.fromkeys(PRIORITIES, 0),
    }
    for row in rows:
        counts[row["dimension"]][row["value"]] = row["n"]
    totals = await conn.fetchrow(
        """SELECT count(*) AS total,
                  count(*) FILTER (WHERE needs_review OR flagged) AS needs_review,
                  count(*) FILTER (WHERE next_attempt_at IS NOT NULL AND parked_at IS NULL) AS queued,
                  count(*) FILTER (WHERE parked_at IS NOT NULL) AS parked
           FROM tickets"""
    )
    assert totals is not None  # an aggregate without GROUP BY always returns one row
    return {**counts, **dict(totals)}
