"""The idempotent ticket insert: one transaction writes the ticket (or follow-up), its key and its queued work.

Idempotency rests on unique constraints, not on a read-then-write: concurrent posts of one `external_id` race
on `INSERT ... ON CONFLICT DO NOTHING`; the losers wait for the winner's commit and then read its answer.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from core.db import Connection
from core.errors import Conflict, InvalidInput
from ingest.schemas import NormalizedTicket
from tickets import lifecycle
from tickets.queue import NOTIFY_CHANNEL, notify_work

# "Re:", "Fwd:", "AW:", "WG:", "RE[2]:" ... prefixes a mail client puts before the subject of a reply.
_REPLY_PREFIX = re.compile(r"^\s*((re|fwd?|aw|wg|sv|vs|antw|rif|tr)(\[\d+\])?\s*:\s*)+", re.IGNORECASE)
# How long an email reply can still be matched to a ticket by its subject alone.
SUBJECT_MATCH_DAYS = 30


@dataclass(frozen=True, slots=True)
class IngestResult:
    ticket_id: UUID
    status: str
    created_at: datetime
    duplicate: bool
    followup: bool
    message_id: UUID | None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "ticket_id": str(self.ticket_id),
            "status": self.status,
            "created_at": self.created_at.isoformat(),
        }
        if self.duplicate:
            body["duplicate"] = True
        if self.followup:
            body["followup"] = True
            body["message_id"] = str(self.message_id) if self.message_id else None
        return body


def base_subject(subject: str) -> str:
    return _REPLY_PREFIX.sub("", subject).strip().lower()


async def ingest(conn: Connection, ticket: NormalizedTicket, raw_payload: dict[str, Any]) -> IngestResult:
    """Store a new ticket or a follow-up, exactly once per external_id. Commits before returning."""
    if _may_follow_up(ticket):
        replay = await _replay_of(conn, ticket)
        if replay is not None:
            return replay
        # No account yet means no earlier thread to follow up on (a thread_ref then fails as foreign).
        customer_id = await conn.fetchval("SELECT id FROM customers WHERE email = $1", ticket.customer_email)
        parent = await _thread_parent(conn, ticket, customer_id)
        if parent is not None:
            async with conn.transaction():
                result = await _append_followup(conn, ticket, raw_payload, parent)
                if result is None:
                    # Lost the race to a concurrent request with the same key; its answer is ours.
                    raise _LostRace
                await notify_work(conn)
                return result
    return await _ingest_new_ticket(conn, ticket, raw_payload)


def _may_follow_up(ticket: NormalizedTicket) -> bool:
    """Only these requests need the thread lookup; everything else takes the one-statement path."""
    if ticket.thread_ref:
        return True
    return ticket.channel == "email" and bool(
        ticket.in_reply_to or ticket.references or _REPLY_PREFIX.match(ticket.subject)
    )


# The common case in one round trip: customer lookup-or-create, ticket (queued), first message, idempotency
# key, status history and the worker wake-up, all in one implicitly transactional statement.
#
# A new customer is created only together with its ticket (the ticket names the id $14 the customer row then takes;
# the foreign key is checked at the end of the statement). So a request that loses the race for its external_id —
# a replay, or a conflicting reuse answered 409 — writes nothing, even while the winner has not committed yet. When
# a concurrent request creates the same customer first, the customer insert does nothing, the foreign key check
# fails, and the caller tries again (the customer then exists).
_NEW_TICKET_SQL = (
    """
WITH existing_customer AS (
    SELECT id FROM customers WHERE email = $3
), ticket AS (
    INSERT INTO tickets (id, external_id, customer_id, channel, subject, body, customer_name, metadata,
                         raw_payload, thread_ref, email_message_id, next_attempt_at)
    SELECT $1, $2, COALESCE((SELECT id FROM existing_customer), $14), $4, $5, $6, $7, $8, $9, $10, $11, now()
    ON CONFLICT (external_id) DO NOTHING
    RETURNING id, created_at, customer_id
), new_customer AS (
    INSERT INTO customers (id, email, name)
    SELECT $14, $3, $7 FROM ticket WHERE ticket.customer_id = $14
    ON CONFLICT (email) DO NOTHING
    RETURNING id
), message AS (
    INSERT INTO ticket_messages (ticket_id, direction, channel, author, external_id, subject, body,
                                 email_message_id)
    SELECT ticket.id, 'inbound', $4, 'customer', $2, $5, $6, $11 FROM ticket
    RETURNING 1
), idempotency_key AS (
    INSERT INTO ingest_keys (external_id, content_hash, ticket_id) SELECT $2, $12, ticket.id FROM ticket
    RETURNING 1
), history AS (
    INSERT INTO ticket_status_history (ticket_id, from_status, to_status, reason)
    SELECT ticket.id, NULL, 'open', $13 FROM ticket
    RETURNING 1
), wake AS (
    SELECT pg_notify('"""
    + NOTIFY_CHANNEL
    + """', '') FROM ticket
)
SELECT ticket.created_at,
       (SELECT count(*) FROM message) + (SELECT count(*) FROM idempotency_key)
       + (SELECT count(*) FROM history) + (SELECT count(*) FROM wake) AS written
FROM ticket
"""
)


async def _ingest_new_ticket(
    conn: Connection, ticket: NormalizedTicket, raw_payload: dict[str, Any]
) -> IngestResult:
    ticket_id = uuid.uuid4()
    # Twice at most: the first try fails when a concurrent request created the same customer meanwhile.
    for _ in range(2):
        try:
            row = await conn.fetchrow(
                _NEW_TICKET_SQL,
                ticket_id,
                ticket.external_id,
                ticket.customer_email,
                ticket.channel,
                ticket.subject,
                ticket.body,
                ticket.customer_name,
                _ticket_metadata(ticket),
                raw_payload,
                ticket.thread_ref,
                ticket.message_id,
                ticket.content_hash,
                f"received via {ticket.channel}",
                uuid.uuid4(),
            )
        except asyncpg.UniqueViolationError:
            row = None  # the key belongs to a follow-up message: a replay or a conflict, decided below
        except asyncpg.ForeignKeyViolationError:
            continue  # the customer was created concurrently: it exists now
        if row is not None:
            return IngestResult(ticket_id, "open", row["created_at"], duplicate=False, followup=False, message_id=None)
        replay = await _replay_of(conn, ticket)
        if replay is not None:
            return replay
    raise RuntimeError(f"could not store ticket {ticket.external_id!r}: no customer row and no replay")


def _ticket_metadata(ticket: NormalizedTicket) -> dict[str, Any]:
    return {**ticket.metadata, "ingest": ticket.flags} if ticket.flags else ticket.metadata


class _LostRace(Exception):
    """Internal: a concurrent request committed the same external_id first."""


async def ingest_once(conn: Connection, ticket: NormalizedTicket, raw_payload: dict[str, Any]) -> IngestResult:
    try:
        return await ingest(conn, ticket, raw_payload)
    except _LostRace:
        replay = await _replay_of(conn, ticket)
        if replay is None:  # cannot happen: the winner committed before our insert returned
            raise RuntimeError(f"idempotency key {ticket.external_id!r} vanished after a conflict") from None
        return replay


async def _replay_of(conn: Connection, ticket: NormalizedTicket) -> IngestResult | None:
    row = await conn.fetchrow(
        """SELECT k.content_hash, k.ticket_id, k.message_id, k.created_at, t.status
           FROM ingest_keys k JOIN tickets t ON t.id = k.ticket_id WHERE k.external_id = $1""",
        ticket.external_id,
    )
    if row is None:
        return None
    if row["content_hash"] != ticket.content_hash:
        raise Conflict(
            f"external_id {ticket.external_id!r} was already used for a different request",
            field="external_id",
            ticket_id=str(row["ticket_id"]),
        )
    return IngestResult(
        ticket_id=row["ticket_id"],
        status=row["status"],
        created_at=row["created_at"],
        duplicate=True,
        followup=row["message_id"] is not None,
        message_id=row["message_id"],
    )


async def _thread_parent(conn: Connection, ticket: NormalizedTicket, customer_id: UUID) -> UUID | None:
    """The earlier ticket this message follows up on, by thread_ref, email headers, or reply subject."""
    if ticket.thread_ref:
        parent = await conn.fetchrow(
            """SELECT t.id, t.customer_id FROM ingest_keys k JOIN tickets t ON t.id = k.ticket_id
               WHERE k.external_id = $1""",
            ticket.thread_ref,
        )
        if parent is None and _is_uuid(ticket.thread_ref):
            parent = await conn.fetchrow("SELECT id, customer_id FROM tickets WHERE id = $1", UUID(ticket.thread_ref))
        if parent is None:
            raise InvalidInput(f"thread_ref {ticket.thread_ref!r} does not match any ticket", field="thread_ref")
        if parent["customer_id"] != customer_id:
            # A customer can only add to their own thread.
            raise InvalidInput("thread_ref belongs to another customer's ticket", field="thread_ref")
        return UUID(str(parent["id"]))
    if ticket.channel != "email":
        return None
    header_ids = [m for m in (ticket.in_reply_to, *ticket.references) if m]
    if header_ids:
        found = await conn.fetchval(
            """SELECT t.id FROM tickets t
               WHERE t.customer_id = $2 AND (
                   t.email_message_id = ANY($1::text[])
                   OR EXISTS (SELECT 1 FROM ticket_messages m
                              WHERE m.ticket_id = t.id AND m.email_message_id = ANY($1::text[])))
               ORDER BY t.created_at DESC LIMIT 1""",
            header_ids,
            customer_id,
        )
        if found is not None:
            return UUID(str(found))
    if _REPLY_PREFIX.match(ticket.subject) and base_subject(ticket.subject):
        found = await conn.fetchval(
            """SELECT id FROM tickets
               WHERE customer_id = $1 AND channel = 'email' AND status <> 'closed'
                 AND created_at > now() - make_interval(days => $3)
                 AND lower(regexp_replace(subject, $4, '', 'i')) = $2
               ORDER BY created_at DESC LIMIT 1""",
            customer_id,
            base_subject(ticket.subject),
            SUBJECT_MATCH_DAYS,
            _REPLY_PREFIX.pattern,
        )
        if found is not None:
            return UUID(str(found))
    return None


def _is_uuid(value: str) -> bool:
    try:
        UUID(value)
    except ValueError:
        return False
    return True


async def _insert_message(
    conn: Connection, ticket_id: UUID, ticket: NormalizedTicket, *, raw_payload: dict[str, Any] | None
) -> UUID:
    message_id = uuid.uuid4()
    await conn.execute(
        """INSERT INTO ticket_messages (id, ticket_id, direction, channel, author, external_id, subject, body,
                                        raw_payload, email_message_id)
           VALUES ($1, $2, 'inbound', $3, 'customer', $4, $5, $6, $7, $8)""",
        message_id,
        ticket_id,
        ticket.channel,
        ticket.external_id,
        ticket.subject,
        ticket.body,
        raw_payload,
        ticket.message_id,
    )
    return message_id


async def _append_followup(
    conn: Connection, ticket: NormalizedTicket, raw_payload: dict[str, Any], parent_id: UUID
) -> IngestResult | None:
    claimed = await conn.fetchval(
        """INSERT INTO ingest_keys (external_id, content_hash, ticket_id)
           VALUES ($1, $2, $3) ON CONFLICT (external_id) DO NOTHING RETURNING 1""",
        ticket.external_id,
        ticket.content_hash,
        parent_id,
    )
    if claimed is None:
        return None
    message_id = await _insert_message(conn, parent_id, ticket, raw_payload=raw_payload)
    await conn.execute("UPDATE ingest_keys SET message_id = $2 WHERE external_id = $1", ticket.external_id, message_id)
    status = await conn.fetchval("SELECT status FROM tickets WHERE id = $1 FOR UPDATE", parent_id)
    reopened = status in ("resolved", "closed")
    if reopened:
        await lifecycle.transition(
            conn, parent_id, "open", "customer replied", extra_sets="reopen_count = reopen_count + 1"
        )
    # The customer wrote again: the ticket is due for another look now. A worker holding it sees the newer
    # last_customer_message_at when it finishes and requeues instead of dropping it.
    row = await conn.fetchrow(
        """UPDATE tickets SET last_customer_message_at = now(), next_attempt_at = now(), cycle_count = 0,
                              parked_at = NULL, failure_count = 0, updated_at = now()
           WHERE id = $1 RETURNING status, created_at""",
        parent_id,
    )
    assert row is not None  # locked FOR UPDATE above: it still exists
    return IngestResult(
        parent_id, row["status"], row["created_at"], duplicate=False, followup=True, message_id=message_id
    )
