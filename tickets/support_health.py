"""Support-health signals for account health scoring: per customer over the API (one customer, or every customer
a page at a time: the export), per tier as Prometheus gauges.

One query computes the figures for both, so the endpoint and the gauges always mean the same thing: open = not
closed; unresolved = open, in progress or waiting on the customer; escalated = not closed and waiting on a
human (escalated to pending_customer, or flagged for review — a failed delivery included); tickets_30d =
created in the last 30 days; mean_confidence over tickets the agent scored; reopens = customer replies that
re-opened a ticket; last_contact = the customer's last message; failed_deliveries = replies that failed or
whose endpoint is disabled.
"""

from __future__ import annotations

import math
from typing import Any
from uuid import UUID

from core.db import Connection
from core.errors import NotFound
from core.metrics import Metrics
from tickets.reads import decode_cursor, encode_cursor

# The label of customers with no known plan (tier NULL: e.g. created by an inbound ticket).
NO_TIER_LABEL = "none"

# The figures, over the tickets `t` of the customers `c` grouped by; `fd`: each ticket's failed deliveries.
_FIGURE_COLUMNS = """
       count(t.id) AS total_tickets,
       count(t.id) FILTER (WHERE t.status <> 'closed') AS open_tickets,
       count(t.id) FILTER (
           WHERE t.status IN ('open', 'in_progress', 'pending_customer')
       ) AS unresolved_tickets,
       count(t.id) FILTER (
           WHERE t.status <> 'closed' AND (t.status = 'pending_customer' OR t.needs_review OR t.flagged)
       ) AS escalated_tickets,
       count(t.id) FILTER (WHERE t.created_at > now() - interval '30 days') AS tickets_30d,
       avg(t.confidence_score)::float8 AS mean_confidence,
       COALESCE(sum(t.reopen_count), 0)::bigint AS reopen_count,
       max(t.last_customer_message_at) AS last_contact_at,
       COALESCE(sum(fd.n), 0)::bigint AS failed_deliveries
"""
_FIGURE_JOINS = """
LEFT JOIN tickets t ON t.customer_id = c.id
LEFT JOIN (
    SELECT ticket_id, count(*) AS n FROM deliveries WHERE status IN ('failed', 'disabled') GROUP BY ticket_id
) fd ON fd.ticket_id = t.id
"""

_FIGURES_SQL = f"""
SELECT c.tier, {_FIGURE_COLUMNS}
FROM customers c
{_FIGURE_JOINS}
WHERE $1::uuid IS NULL OR c.id = $1::uuid
GROUP BY c.tier
"""

# The export: one page of customers in the order they were created (a customer created later lands on a later
# page, so a walk through the pages sees each customer once), the figures computed for that page only.
_EXPORT_SQL = f"""
WITH page AS (
    SELECT id, email, tier, created_at FROM customers
    WHERE $1::timestamptz IS NULL OR (created_at, id) > ($1::timestamptz, $2::uuid)
    ORDER BY created_at, id
    LIMIT $3
)
SELECT c.id AS customer_id, c.email, c.tier, c.created_at, {_FIGURE_COLUMNS}
FROM page c
{_FIGURE_JOINS}
GROUP BY c.id, c.email, c.tier, c.created_at
ORDER BY c.created_at, c.id
"""

FIGURES = (
    "open_tickets",
    "unresolved_tickets",
    "escalated_tickets",
    "tickets_30d",
    "mean_confidence",
    "reopen_count",
    "last_contact_at",
    "failed_deliveries",
)

# figure -> (gauge name, help text)
GAUGES: dict[str, tuple[str, str]] = {
    "open_tickets": ("deskpilot_support_open_tickets", "Tickets not closed, by customer tier"),
    "unresolved_tickets": (
        "deskpilot_support_unresolved_tickets",
        "Tickets open, in progress or waiting on the customer, by customer tier",
    ),
    "escalated_tickets": (
        "deskpilot_support_escalated_tickets",
        "Open tickets waiting on a human (escalated or flagged), by customer tier",
    ),
    "tickets_30d": ("deskpilot_support_tickets_30d", "Tickets created in the last 30 days, by customer tier"),
    "mean_confidence": (
        "deskpilot_support_mean_confidence",
        "Mean agent confidence of scored tickets, by tier",
    ),
    "reopen_count": ("deskpilot_support_reopens", "Tickets re-opened by a customer reply (total), by tier"),
    "last_contact_at": (
        "deskpilot_support_last_contact_timestamp_seconds",
        "Unix time of the latest customer message, by customer tier",
    ),
    "failed_deliveries": (
        "deskpilot_support_failed_deliveries",
        "Replies that failed or whose endpoint is disabled, by customer tier",
    ),
}


async def customer_support_health(conn: Connection, customer_id: UUID) -> dict[str, Any]:
    """The support-health figures of one customer account; NotFound for an unknown id."""
    customer = await conn.fetchrow("SELECT id, email, tier FROM customers WHERE id = $1", customer_id)
    if customer is None:
        raise NotFound(f"customer {customer_id} does not exist")
    row = await conn.fetchrow(_FIGURES_SQL, customer_id)
    figures = dict(row) if row is not None else {}
    return {
        "customer_id": customer["id"],
        "email": customer["email"],
        "tier": customer["tier"],
        "total_tickets": figures.get("total_tickets", 0),
        **{name: figures.get(name) for name in FIGURES},
    }


async def list_support_health(
    conn: Connection, *, cursor: str | None = None, limit: int = 100
) -> tuple[list[dict[str, Any]], str | None]:
    """Every customer's support-health figures, oldest customer first, a page at a time: the page and the cursor
    of the next one (None on the last page). Each item has the keys of `customer_support_health`."""
    after_at, after_id = decode_cursor(cursor) if cursor else (None, None)
    rows = await conn.fetch(_EXPORT_SQL, after_at, after_id, limit + 1)
    items = [
        {
            "customer_id": row["customer_id"],
            "email": row["email"],
            "tier": row["tier"],
            "total_tickets": row["total_tickets"],
            **{name: row[name] for name in FIGURES},
        }
        for row in rows[:limit]
    ]
    next_cursor = None
    if len(rows) > limit:
        next_cursor = encode_cursor(rows[limit - 1]["created_at"], rows[limit - 1]["customer_id"])
    return items, next_cursor


async def refresh_support_health_gauges(conn: Connection, metrics: Metrics) -> None:
    """Set the per-tier gauges from the database (called at scrape time): one series per plan name the customers
    have (zeros included), `none` for customers without one; a plan no customer has any more is dropped."""
    by_tier = {
        row["tier"] if row["tier"] is not None else NO_TIER_LABEL: dict(row)
        for row in await conn.fetch(_FIGURES_SQL, None)
    }
    for figure, (name, documentation) in GAUGES.items():
        gauge = metrics.tier_gauge(name, documentation)
        gauge.clear()
        for tier, figures in by_tier.items():
            gauge.labels(tier).set(_gauge_value(figure, figures.get(figure)))


def _gauge_value(figure: str, value: Any) -> float:
    if value is None:
        # No scored ticket: a mean is undefined; no contact yet: timestamp 0.
        return math.nan if figure == "mean_confidence" else 0.0
    if figure == "last_contact_at":
        return float(value.timestamp())
    return float(value)
