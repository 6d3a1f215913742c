"""Support-health signals for account health scoring: per customer over the API, per tier as Prometheus
gauges.

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

# The label of customers with no known plan (tier NULL: e.g. created by an inbound ticket).
NO_TIER_LABEL = "none"

_FIGURES_SQL = """
SELECT c.tier,
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
FROM customers c
LEFT JOIN tickets t ON t.customer_id = c.id
LEFT JOIN (
    SELECT ticket_id, count(*) AS n FROM deliveries WHERE status IN ('failed', 'disabled') GROUP BY ticket_id
) fd ON fd.ticket_id = t.id
WHERE $1::uuid IS NULL OR c.id = $1::uuid
GROUP BY c.tier
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
