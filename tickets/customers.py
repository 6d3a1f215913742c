"""Customer accounts and their events (billing, usage): the account context the router and agent read."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from email_validator import EmailNotValidError, validate_email

from core.db import Connection
from core.errors import InvalidInput, NotFound


def normalized_email(address: str) -> str:
    """The address as accounts are keyed: validated, normalized, lower-cased."""
    try:
        return validate_email(address.strip(), check_deliverability=False).normalized.lower()
    except EmailNotValidError as exc:
        raise InvalidInput(f"not a valid email address: {exc}", field="email") from None


async def upsert_customer(
    conn: Connection,
    *,
    email: str,
    name: str | None,
    tier: str | None,
    metadata: dict[str, Any] | None,
) -> tuple[dict[str, Any], bool]:
    """Create the account, or update the given fields of an existing one. Returns (customer, created).

    A customer created without a tier has none (NULL: no plan known), as one created by an inbound ticket."""
    row = await conn.fetchrow(
        """
        INSERT INTO customers (email, name, tier, metadata)
        VALUES ($1, $2, $3, COALESCE($4::jsonb, '{}'::jsonb))
        ON CONFLICT (email) DO UPDATE SET
            name = COALESCE(EXCLUDED.name, customers.name),
            tier = COALESCE($3, customers.tier),
            metadata = customers.metadata || COALESCE($4::jsonb, '{}'::jsonb),
            updated_at = now()
        RETURNING id, email, name, tier, metadata, created_at, updated_at, (xmax = 0) AS created
        """,
        email,
        name,
        tier,
        metadata,
    )
    assert row is not None  # INSERT ... ON CONFLICT DO UPDATE ... RETURNING always returns the row
    customer = dict(row)
    created = bool(customer.pop("created"))
    return customer, created


async def add_event(
    conn: Connection, customer_id: UUID, kind: str, occurred_at: datetime | None, data: dict[str, Any]
) -> dict[str, Any]:
    exists = await conn.fetchval("SELECT 1 FROM customers WHERE id = $1", customer_id)
    if not exists:
        raise NotFound(f"customer {customer_id} does not exist")
    row = await conn.fetchrow(
        """INSERT INTO customer_events (customer_id, kind, occurred_at, data)
           VALUES ($1, $2, COALESCE($3, now()), $4) RETURNING id, customer_id, kind, occurred_at, data, created_at""",
        customer_id,
        kind,
        occurred_at,
        data,
    )
    assert row is not None  # INSERT ... RETURNING returns the row
    return dict(row)


async def get_customer(conn: Connection, customer_id: UUID) -> dict[str, Any]:
    row = await conn.fetchrow(
        "SELECT id, email, name, tier, metadata, created_at, updated_at FROM customers WHERE id = $1",
        customer_id,
    )
    if row is None:
        raise NotFound(f"customer {customer_id} does not exist")
    return dict(row)
