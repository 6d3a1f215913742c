"""The transactional outbox: replies queued in the decision's transaction, sent here on their channel.

A drain claims due `pending` rows with a lease and a fencing token (`FOR UPDATE SKIP LOCKED`), sends each one,
then records the outcome in a transaction that first checks the token is still ours: `sent`, a retry later
(exponential backoff with jitter, never sooner than the receiver's Retry-After), or after the last try
`failed` — and a failed or disabled delivery puts its ticket back in front of a reviewer, since the customer
never got the answer.

The one tolerated duplicate: a crash after the receiver accepted a message but before our commit. The lease
then expires and the next drain sends again with the same idempotency key (Message-ID / webhook-id).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from core.backoff import backoff_s
from core.db import Connection
from core.metrics import Metrics
from core.settings import Settings
from delivery import in_app, mail, webhook
from delivery.model import Delivery, SendOutcome

log = logging.getLogger(__name__)

BACKOFF_BASE_S = 30.0
BACKOFF_CAP_S = 3600.0
RETRY_AFTER_CAP_S = 24 * 3600.0
MAX_CONCURRENT_SENDS = 4


def reply_idempotency_key(channel: str, ref: str) -> str:
    """The idempotency key of one reply: a Message-ID for email, the bare reference for the other channels."""
    return f"<{ref}@deskpilot>" if channel == "email" else ref


def reply_recipient(
    channel: str,
    *,
    customer_email: str | None,
    customer_id: Any,
    ticket_metadata: Mapping[str, Any] | None,
    settings: Settings,
) -> str:
    """The `recipient` a reply's delivery row records: where its channel's sender will send it. Email: the
    customer's address; in-app: the customer's id; webhook: the ticket's callback URL by the sender's own rule
    (`webhook.ticket_callback_url`), empty when there is none (the send then fails visibly)."""
    if channel == "email":
        return customer_email or ""
    if channel == "in_app":
        return str(customer_id or "")
    return webhook.ticket_callback_url(ticket_metadata, settings) or ""


def delivery_backoff_s(tries: int, retry_after_s: float | None = None) -> float:
    """The pause after `tries` failed sends (`core.backoff`: exponential, capped, equal jitter); never shorter
    than the receiver's Retry-After."""
    delay = backoff_s(tries, base_s=BACKOFF_BASE_S, cap_s=BACKOFF_CAP_S)
    if retry_after_s is not None and retry_after_s > 0:
        delay = max(delay, min(retry_after_s, RETRY_AFTER_CAP_S))
    return delay


def delivery_lease_s(settings: Settings) -> float:
    """The lease on claimed deliveries: the worker lease. A drain renews the leases of its unfinished sends every
    third of it (`_keep_leases`), so a slow receiver never loses a send to another worker, while the sends of a
    sender that was killed are taken over within one lease."""
    return settings.lease_seconds


# --- queueing -----------------------------------------------------------------------------------------------


async def enqueue_reply(
    conn: Connection,
    *,
    ticket_id: UUID,
    channel: str,
    recipient: str,
    subject: str,
    body: str,
    idempotency_key: str,
    origin: str = "agent",
    attempt_id: UUID | None = None,
    review_id: UUID | None = None,
) -> tuple[UUID, UUID]:
    """Write the outbound message and its outbox row (call inside the deciding transaction).

    Returns (message_id, delivery_id).
    """
    # One statement: the message, then its outbox row pointing at it.
    row = await conn.fetchrow(
        """WITH message AS (
               INSERT INTO ticket_messages (ticket_id, direction, channel, author, subject, body, attempt_id)
               VALUES ($1, 'outbound', $2, $3, $4, $5, $6) RETURNING id
           )
           INSERT INTO deliveries (ticket_id, attempt_id, message_id, channel, idempotency_key, recipient,
                                   subject, body, origin, review_id)
           SELECT $1, $6, message.id, $2, $7, $8, $4, $5, $9, $10 FROM message
           RETURNING message_id, id""",
        ticket_id,
        channel,
        "reviewer" if origin == "reviewer" else "agent",
        subject,
        body,
        attempt_id,
        idempotency_key,
        recipient,
        origin,
        review_id,
    )
    assert row is not None  # the message CTE always inserts one row
    message_id: UUID = row["message_id"]
    delivery_id: UUID = row["id"]
    return message_id, delivery_id


# --- claiming -----------------------------------------------------------------------------------------------

_CLAIM_SQL = """
WITH due AS (
    SELECT id FROM deliveries
    WHERE status = 'pending'
      AND next_attempt_at <= COALESCE($3::timestamptz, now())
      AND (lease_expires_at IS NULL OR lease_expires_at < COALESCE($3::timestamptz, now()))
    ORDER BY next_attempt_at
    LIMIT $4
    FOR UPDATE SKIP LOCKED
)
UPDATE deliveries d SET
    lease_owner = $1,
    lease_expires_at = COALESCE($3::timestamptz, now()) + make_interval(secs => $2),
    lease_token = nextval('lease_token_seq'),
    tries = d.tries + 1,
    updated_at = now()
FROM due WHERE d.id = due.id
RETURNING d.id, d.ticket_id, d.attempt_id, d.message_id, d.review_id, d.channel, d.idempotency_key,
          d.recipient,
          d.subject, d.body, d.headers, d.origin, d.tries, d.lease_token, d.created_at
"""

_CONTEXT_SQL = """
SELECT t.id, t.subject, t.external_id, t.metadata, c.email AS customer_email,
       array_remove(
           ARRAY[t.email_message_id] || ARRAY(
               SELECT m.email_message_id FROM ticket_messages m
               WHERE m.ticket_id = t.id AND m.direction = 'inbound' AND m.email_message_id IS NOT NULL
               ORDER BY m.created_at, m.id),
           NULL) AS customer_message_ids
FROM tickets t JOIN customers c ON c.id = t.customer_id
WHERE t.id = ANY($1::uuid[])
"""


async def claim_due_deliveries(
    conn: Connection, worker_id: str, *, lease_s: float, limit: int, now: datetime | None = None
) -> list[Delivery]:
    """Lease up to `limit` due pending deliveries (oldest due first) and load their ticket context."""
    rows = await conn.fetch(_CLAIM_SQL, worker_id, lease_s, now, limit)
    if not rows:
        return []
    contexts = {r["id"]: r for r in await conn.fetch(_CONTEXT_SQL, list({r["ticket_id"] for r in rows}))}
    review_attempts = {
        r["id"]: r["attempt_id"]
        for r in await conn.fetch(
            "SELECT id, attempt_id FROM reviews WHERE id = ANY($1::uuid[])",
            [r["review_id"] for r in rows if r["review_id"] is not None],
        )
    }
    deliveries = []
    for row in rows:
        ticket = contexts.get(row["ticket_id"])
        deliveries.append(
            Delivery(
                id=row["id"],
                ticket_id=row["ticket_id"],
                channel=row["channel"],
                idempotency_key=row["idempotency_key"],
                recipient=row["recipient"],
                subject=row["subject"],
                body=row["body"],
                origin=row["origin"],
                tries=row["tries"],
                lease_token=row["lease_token"],
                attempt_id=row["attempt_id"] or review_attempts.get(row["review_id"]),
                message_id=row["message_id"],
                created_at=row["created_at"],
                headers=_as_dict(row["headers"]),
                ticket_subject=ticket["subject"] if ticket else "",
                ticket_external_id=ticket["external_id"] if ticket else "",
                ticket_metadata=_as_dict(ticket["metadata"]) if ticket else {},
                customer_email=ticket["customer_email"] if ticket else "",
                customer_message_ids=tuple(dict.fromkeys(ticket["customer_message_ids"])) if ticket else (),
            )
        )
    return deliveries


def _as_dict(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {}


# --- sending ------------------------------------------------------------------------------------------------


async def send_one(delivery: Delivery, settings: Settings) -> SendOutcome:
    """Send through the delivery's channel; a sender that raises is retried like any transient failure."""
    try:
        if delivery.channel == "email":
            return await mail.send_email(delivery, settings)
        if delivery.channel == "webhook":
            return await webhook.send_webhook(delivery, settings)
        if delivery.channel == "in_app":
            return await in_app.send_in_app(delivery)
        return SendOutcome.failed(f"unknown channel {delivery.channel!r}")
    except Exception as exc:
        log.exception("delivery %s: the %s sender raised", delivery.id, delivery.channel)
        return SendOutcome.retry(f"sender error: {type(exc).__name__}")


# --- recording ----------------------------------------------------------------------------------------------


async def record_outcome(
    pool: asyncpg.Pool,
    delivery: Delivery,
    outcome: SendOutcome,
    settings: Settings,
    metrics: Metrics | None,
    *,
    now: datetime | None = None,
) -> bool:
    """Commit the outcome of one send, fenced by the lease token; False when the lease was lost."""
    kind = outcome.kind
    detail = outcome.detail[:2000]
    if kind == "retry" and delivery.tries >= settings.delivery_max_tries:
        kind = "failed"
        detail = f"gave up after {delivery.tries} tries; last error: {detail}"
    async with pool.acquire() as conn, conn.transaction():
        current = await conn.fetchrow(
            "SELECT lease_token, status FROM deliveries WHERE id = $1 FOR UPDATE", delivery.id
        )
        if current is None or current["lease_token"] != delivery.lease_token or current["status"] != "pending":
            log.warning(
                "delivery %s: lease %s lost before its outcome (%s) was recorded",
                delivery.id,
                delivery.lease_token,
                kind,
            )
            if metrics is not None:
                metrics.deliveries.labels(delivery.channel, "lease_lost").inc()
            return False
        if kind == "sent":
            if delivery.channel == "in_app":
                await in_app.ensure_stored(conn, delivery)
            await conn.execute(
                """UPDATE deliveries SET status = 'sent', sent_at = COALESCE($2::timestamptz, now()),
                          last_error = NULL, lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
                   WHERE id = $1""",
                delivery.id,
                now,
            )
        elif kind == "retry":
            await conn.execute(
                """UPDATE deliveries SET
                          next_attempt_at = COALESCE($2::timestamptz, now()) + make_interval(secs => $3),
                          last_error = $4, lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
                   WHERE id = $1""",
                delivery.id,
                now,
                delivery_backoff_s(delivery.tries, outcome.retry_after_s),
                detail,
            )
        else:
            await conn.execute(
                """UPDATE deliveries SET status = $2, last_error = $3,
                          lease_owner = NULL, lease_expires_at = NULL,
                          updated_at = now()
                   WHERE id = $1""",
                delivery.id,
                kind,
                detail,
            )
            await flag_undelivered(conn, delivery.ticket_id, f"{delivery.channel} delivery {kind}: {detail}")
    if metrics is not None:
        metrics.deliveries.labels(delivery.channel, kind).inc()
    if kind in {"failed", "disabled"}:
        log.warning("delivery %s (%s) %s: %s", delivery.id, delivery.channel, kind, detail)
    return True


async def flag_undelivered(conn: Connection, ticket_id: UUID, reason: str) -> None:
    """The customer did not get the reply: the ticket goes back to a reviewer, with the reason on record."""
    await conn.execute(
        "UPDATE tickets SET needs_review = true, last_error = $2, updated_at = now() WHERE id = $1",
        ticket_id,
        reason[:4000],
    )
    # A history entry without a status change: the trace shows when and why the reply did not go out.
    await conn.execute(
        """INSERT INTO ticket_status_history (ticket_id, from_status, to_status, reason)
           SELECT id, status, status, $2 FROM tickets WHERE id = $1""",
        ticket_id,
        reason[:4000],
    )


# --- the drain ----------------------------------------------------------------------------------------------


async def drain_outbox(
    pool: asyncpg.Pool,
    settings: Settings,
    metrics: Metrics | None,
    worker_id: str,
    *,
    limit: int = 10,
    now: datetime | None = None,
) -> int:
    """Send up to `limit` due deliveries; returns how many outcomes were recorded (0: nothing was due).

    `now` replaces the database clock for due times, leases and backoff (tests drive time with it).
    """
    lease_s = delivery_lease_s(settings)
    async with pool.acquire() as conn:
        deliveries = await claim_due_deliveries(conn, worker_id, lease_s=lease_s, limit=limit, now=now)
    if not deliveries:
        return 0
    unfinished = {d.id: d.lease_token for d in deliveries}
    # Tests that drive the clock with `now` renew nothing: their leases end when they say.
    renewal = asyncio.create_task(_keep_leases(pool, unfinished, lease_s)) if now is None else None
    gate = asyncio.Semaphore(MAX_CONCURRENT_SENDS)

    async def process(delivery: Delivery) -> bool:
        async with gate:
            if delivery.tries > settings.delivery_max_tries:
                # Earlier tries were claimed but never recorded (the sender crashed each time): stop here.
                outcome = SendOutcome.failed(
                    f"gave up after {delivery.tries - 1} tries that did not finish (crashed or timed out)"
                )
            else:
                outcome = await send_one(delivery, settings)
        try:
            return await record_outcome(pool, delivery, outcome, settings, metrics, now=now)
        finally:
            unfinished.pop(delivery.id, None)

    try:
        results: list[Any] = await asyncio.gather(*(process(d) for d in deliveries), return_exceptions=True)
    finally:
        if renewal is not None:
            renewal.cancel()
    recorded = 0
    for delivery, result in zip(deliveries, results, strict=True):
        if isinstance(result, Exception):
            # Not recorded: the lease runs out and a later drain sends again with the same idempotency key.
            log.error(
                "delivery %s: could not record the outcome: %s: %s",
                delivery.id,
                type(result).__name__,
                result,
            )
        elif isinstance(result, BaseException):
            raise result
        elif result:
            recorded += 1
    return recorded


async def _keep_leases(pool: asyncpg.Pool, unfinished: dict[UUID, int], lease_s: float) -> None:
    """Renew the leases of the sends still in flight (fenced by their tokens) until cancelled."""
    while True:
        await asyncio.sleep(lease_s / 3)
        if not unfinished:
            continue
        try:
            await pool.execute(
                """UPDATE deliveries d SET lease_expires_at = now() + make_interval(secs => $3)
                   FROM unnest($1::uuid[], $2::bigint[]) AS mine (id, token)
                   WHERE d.id = mine.id AND d.lease_token = mine.token AND d.status = 'pending'""",
                list(unfinished),
                list(unfinished.values()),
                lease_s,
            )
        except (asyncpg.PostgresError, OSError) as exc:
            # The lease may lapse and another worker send again with the same idempotency key; our outcome is
            # then refused by the fence.
            log.warning("could not renew delivery leases: %s: %s", type(exc).__name__, exc)
