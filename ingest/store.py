"""The idempotent ticket insert: one transaction writes the ticket (or follow-up), its key and its queued work.

Idempotency rests on unique constraints, not on a read-then-write: concurrent posts of one `external_id` race
on `INSERT ... ON CONFLICT DO NOTHING`; the losers wait for the winner's commit and then read its answer.

The transaction sends no NOTIFY: PostgreSQL serializes notifying commits, so one in every ingest transaction kept
concurrent ingests from sharing WAL flushes. The caller wakes the workers after the commit
(`tickets.wakeup.WorkerWaker`, for every result that is not a duplicate).

The webhook's new tickets go through `NewTicketBatcher`: those of concurrent requests share one pipelined round
trip and one commit, with the answers and rows one transaction per ticket would give.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from core.db import Connection
from core.errors import Conflict, InvalidInput, TooManyRequests
from core.settings import Settings
from ingest.schemas import NormalizedTicket
from tickets import lifecycle
from tickets.subjects import REPLY_PREFIX_PATTERN, is_reply_subject, strip_reply_prefixes

log = logging.getLogger(__name__)

# How long an email reply can still be matched to a ticket by its subject alone.
SUBJECT_MATCH_DAYS = 30
# The window of the per-customer and per-ticket quotas.
QUOTA_WINDOW_S = 3600
_DEFAULT_SETTINGS = Settings()


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
    """What an emailed reply's subject is matched on: without reply prefixes (`tickets.subjects`), lower-cased."""
    return strip_reply_prefixes(subject).lower()


async def ingest(
    conn: Connection,
    ticket: NormalizedTicket,
    raw_payload: dict[str, Any],
    *,
    settings: Settings = _DEFAULT_SETTINGS,
    customer_verified: bool = False,
) -> IngestResult:
    """Store a new ticket or a follow-up, exactly once per external_id. Commits before returning (unless called
    inside the caller's transaction); wakes no worker: the caller does, after the commit (`tickets.wakeup`).

    `customer_verified`: the request was signed, so the integration that signed it vouches for `customer_email`;
    an unsigned ticket (loopback development only) is stored with `metadata.ingest.customer_verified = false`.
    A follow-up joins only a thread of the same customer; one naming another customer's ticket starts a new one.
    Over a quota (settings: new tickets per customer, follow-ups per ticket, per hour) nothing is written and
    `TooManyRequests` says when to try again.
    """
    if _may_follow_up(ticket):
        replay = await _replay_of(conn, ticket)
        if replay is not None:
            return replay
        # No account yet means no earlier thread to follow up on.
        customer_id = await conn.fetchval("SELECT id FROM customers WHERE email = $1", ticket.customer_email)
        parent = await _thread_parent(conn, ticket, customer_id)
        if parent is not None:
            async with conn.transaction():
                result = await _append_followup(conn, ticket, raw_payload, parent, settings)
                if result is None:
                    # Lost the race to a concurrent request with the same key; its answer is ours.
                    raise _LostRace
                return result
    return await _ingest_new_ticket(conn, ticket, raw_payload, settings, customer_verified=customer_verified)


def _may_follow_up(ticket: NormalizedTicket) -> bool:
    """Only these requests need the thread lookup; everything else takes the one-statement path."""
    if ticket.thread_ref:
        return True
    return ticket.channel == "email" and bool(
        ticket.in_reply_to or ticket.references or is_reply_subject(ticket.subject)
    )


# An idempotency key's earlier request: what a replay is answered with (`_replay`).
_REPLAY_SQL = """SELECT k.content_hash, k.ticket_id, k.message_id, k.created_at, t.status
    FROM ingest_keys k JOIN tickets t ON t.id = k.ticket_id WHERE k.external_id = $1"""


# The common case in one round trip: customer lookup-or-create, ticket (queued), first message, idempotency
# key and status history, all in one implicitly transactional statement (the workers are woken after the commit:
# see the module docstring).
#
# A new customer is created only together with its ticket (the ticket names the fresh id the customer row then
# takes; the foreign key is checked at the end of the statement). So a request that loses the race for its
# external_id — a replay, or a conflicting reuse answered 409 — writes nothing, even while the winner has not
# committed yet. When a concurrent request creates the same customer first, the customer insert does nothing, the
# foreign key check fails, and the caller tries again (the customer then exists).
#
# The ids come from PostgreSQL and the JSON arrives as text encoded by msgspec ($7, $8): both cost the API process
# less per request than uuid4() and asyncpg's JSON codec (bench/ingest.py).
_NEW_TICKET_SQL = f"""
WITH existing_customer AS (
    SELECT id FROM customers WHERE email = $2
), fresh_customer AS (
    SELECT gen_random_uuid() AS id
), ticket AS (
    INSERT INTO tickets (external_id, customer_id, channel, subject, body, customer_name, metadata,
                         raw_payload, thread_ref, email_message_id, next_attempt_at)
    SELECT $1, COALESCE((SELECT id FROM existing_customer), (SELECT id FROM fresh_customer)), $3, $4, $5, $6,
           $7::text::jsonb, $8::text::jsonb, $9, $10, now()
    -- The per-customer quota ($13, NULL: none), counted no further than the quota itself.
    WHERE $13::int IS NULL OR (
        SELECT count(*) FROM (
            SELECT 1 FROM tickets recent
            WHERE recent.customer_id = (SELECT id FROM existing_customer)
              AND recent.created_at > now() - make_interval(secs => $14)
            LIMIT $13::int) AS within_window) < $13::int
    ON CONFLICT (external_id) DO NOTHING
    RETURNING id, created_at, customer_id
), new_customer AS (
    INSERT INTO customers (id, email, name)
    SELECT fresh_customer.id, $2, $6 FROM ticket, fresh_customer WHERE ticket.customer_id = fresh_customer.id
    ON CONFLICT (email) DO NOTHING
    RETURNING id
), message AS (
    INSERT INTO ticket_messages (ticket_id, direction, channel, author, external_id, subject, body,
                                 email_message_id)
    SELECT ticket.id, 'inbound', $3, 'customer', $1, $4, $5, $10 FROM ticket
    RETURNING 1
), idempotency_key AS (
    INSERT INTO ingest_keys (external_id, content_hash, ticket_id) SELECT $1, $11, ticket.id FROM ticket
    RETURNING 1
), history AS (
    INSERT INTO ticket_status_history (ticket_id, from_status, to_status, reason)
    SELECT ticket.id, NULL, 'open', $12 FROM ticket
    RETURNING 1
), replay AS (
    -- Nothing written: the key's earlier request, when this statement can see it (committed before the
    -- statement began, or by an earlier statement of the same batch), answers a replay (or 409) from this round
    -- trip; when it cannot (the other request committed while this one waited on its key), replay_ticket_id is
    -- NULL and the caller looks again (`_why_not_written`).
    {_REPLAY_SQL} AND NOT EXISTS (SELECT FROM ticket)
)
-- Always one row (NULLs when nothing was written), so a pipelined batch of these statements answers one row per
-- ticket, in order (`NewTicketBatcher`).
SELECT (SELECT id FROM ticket) AS id, (SELECT created_at FROM ticket) AS created_at,
       (SELECT count(*) FROM message) + (SELECT count(*) FROM idempotency_key)
       + (SELECT count(*) FROM history) AS written,
       replay.content_hash AS replay_content_hash, replay.ticket_id AS replay_ticket_id,
       replay.message_id AS replay_message_id, replay.created_at AS replay_created_at,
       replay.status AS replay_status
FROM (SELECT) AS one_row LEFT JOIN replay ON true
"""


async def _ingest_new_ticket(
    conn: Connection,
    ticket: NormalizedTicket,
    raw_payload: dict[str, Any],
    settings: Settings,
    *,
    customer_verified: bool,
    thread_ref: str | None = None,
) -> IngestResult:
    args = _new_ticket_args(ticket, raw_payload, settings, customer_verified=customer_verified, thread_ref=thread_ref)
    # Twice at most: the first try fails when a concurrent request created the same customer meanwhile.
    for _ in range(2):
        try:
            row = await _fetchrow_alone(conn, _NEW_TICKET_SQL, *args)
        except asyncpg.UniqueViolationError:
            row = None  # the key belongs to a follow-up message: a replay or a conflict, decided below
        except asyncpg.ForeignKeyViolationError:
            continue  # the customer was created concurrently: it exists now
        if row is not None and row["id"] is not None:
            return _stored(row["id"], row["created_at"])
        if row is not None and row["replay_ticket_id"] is not None:
            return _replay_in(row, ticket)
        replay = await _why_not_written(conn, ticket, settings)
        if replay is not None:
            return replay
    raise RuntimeError(f"could not store ticket {ticket.external_id!r}: no customer row and no replay")


async def _why_not_written(conn: Connection, ticket: NormalizedTicket, settings: Settings) -> IngestResult | None:
    """After `_NEW_TICKET_SQL` wrote nothing: the replay's answer (409 for other content under the key), 429 for
    a customer over the quota, or None when neither holds (the customer was created concurrently: try again)."""
    replay = await _replay_of(conn, ticket)
    if replay is not None:
        return replay
    quota = settings.tickets_per_customer_hour
    if quota:
        retry_after = await _customer_quota_retry_after(conn, ticket.customer_email, quota)
        if retry_after is not None:
            raise TooManyRequests(
                f"this customer opened {quota} tickets in the last hour; add to an open ticket instead "
                "(thread_ref) or try again later",
                field="customer_email",
                retry_after_s=retry_after,
            )
    return None


def _new_ticket_args(
    ticket: NormalizedTicket,
    raw_payload: dict[str, Any],
    settings: Settings,
    *,
    customer_verified: bool,
    thread_ref: str | None = None,
) -> tuple[Any, ...]:
    """The parameters of `_NEW_TICKET_SQL`."""
    return (
        ticket.external_id,
        ticket.customer_email,
        ticket.channel,
        ticket.subject,
        ticket.body,
        ticket.customer_name,
        _json_text(_ticket_metadata(ticket, customer_verified=customer_verified)),
        _json_text(raw_payload),
        thread_ref,
        ticket.message_id,
        ticket.content_hash,
        f"received via {ticket.channel}",
        settings.tickets_per_customer_hour or None,
        float(QUOTA_WINDOW_S),
    )


def _json_text(value: Any) -> str:
    """Decoded JSON (and ingest's own flags) as JSON text for a `::text::jsonb` parameter: what the connection's
    JSON codec sends, encoded by msgspec, several times faster."""
    return msgspec.json.encode(value).decode()


def _stored(ticket_id: UUID, created_at: datetime) -> IngestResult:
    return IngestResult(ticket_id, "open", created_at, duplicate=False, followup=False, message_id=None)


async def _fetchrow_alone(conn: Connection, sql: str, *args: Any) -> asyncpg.Record | None:
    """One statement; inside a caller's transaction (inbound email stores its attachments with the ticket) in a
    savepoint of its own, so the conflict it may raise is handled here without aborting the caller's work."""
    if not conn.is_in_transaction():
        return await conn.fetchrow(sql, *args)
    async with conn.transaction():
        return await conn.fetchrow(sql, *args)


async def _customer_quota_retry_after(conn: Connection, customer_email: str, quota: int) -> float | None:
    """Seconds until the customer's oldest ticket in the window leaves it, when the quota is used up."""
    value: float | None = await conn.fetchval(
        """SELECT EXTRACT(epoch FROM min(created_at) + make_interval(secs => $3) - now())::float8
           FROM (SELECT t.created_at FROM tickets t JOIN customers c ON c.id = t.customer_id
                 WHERE c.email = $1 AND t.created_at > now() - make_interval(secs => $3)
                 ORDER BY t.created_at DESC LIMIT $2) AS recent
           HAVING count(*) >= $2""",
        customer_email,
        quota,
        float(QUOTA_WINDOW_S),
    )
    return max(1.0, value) if value is not None else None


def _ticket_metadata(ticket: NormalizedTicket, *, customer_verified: bool) -> dict[str, Any]:
    """The caller's metadata with what ingest recorded under `ingest` (the caller cannot set that key):
    what normalization removed, and whether a signature vouched for the customer."""
    return {**ticket.metadata, "ingest": {**ticket.flags, "customer_verified": customer_verified}}


class _LostRace(Exception):
    """Internal: a concurrent request committed the same external_id first."""


async def ingest_once(
    conn: Connection,
    ticket: NormalizedTicket,
    raw_payload: dict[str, Any],
    *,
    settings: Settings = _DEFAULT_SETTINGS,
    customer_verified: bool = False,
) -> IngestResult:
    try:
        return await ingest(conn, ticket, raw_payload, settings=settings, customer_verified=customer_verified)
    except _LostRace:
        replay = await _replay_of(conn, ticket)
        if replay is None:  # cannot happen: the winner committed before our insert returned
            raise RuntimeError(f"idempotency key {ticket.external_id!r} vanished after a conflict") from None
        return replay


# --- new tickets from concurrent requests, stored together -----------------------------------------------------

# Tickets in one pipelined round trip at most, and such round trips in flight at once per process (and half the
# pool at most). Where the WAL flush is slow, a ticket that waits for a batch in flight waits for its flush too:
# measured with 16 clients (bench/ingest.py) and 3.5 ms flushes, the webhook served 1,000 req/s with 2 in flight,
# 1,200 with 4 and 1,400 with 8, at the same CPU per ticket (batches of 3.7 from 4 on).
BATCH_MAX = 64
BATCHES_IN_FLIGHT = 8


@dataclass(slots=True)
class _Waiting:
    args: tuple[Any, ...]
    answer: asyncio.Future[asyncpg.Record]


class NewTicketBatcher:
    """Stores the new tickets of concurrent requests together, one pipelined round trip per batch.

    A ticket goes with the next batch to leave: at once while fewer than `max_in_flight` batches are being
    stored (with whatever else arrives before the event loop gets to it), else when one of them is done, with
    every ticket that arrived meanwhile. A batch is `_NEW_TICKET_SQL` once per ticket, pipelined (asyncpg
    `fetchmany`), in one implicit transaction, so one commit makes the whole batch durable before any of its
    requests is answered.
    An idle process stores a lone ticket at once, as `ingest_once` would. Per ticket this costs PostgreSQL about
    half the CPU of a transaction of its own, and the API process a third of the round trip's (docs/benchmarks.md).

    Each statement sees the batch's earlier ones (one transaction, READ COMMITTED), so the customer quota and a
    replay of a ticket in the same batch come out as they would one after the other. A replay, or a key reused for
    other content (409), is answered from the batch's own row when the statement saw the key's first request (no
    second round trip: one request in ten in bench/ingest.py). Whatever else the batch did not write (a customer
    over the quota, a key committed by another request while the statement waited on it) and every ticket of a
    batch that failed (say, a customer created concurrently by another process) then takes the one-ticket path,
    `ingest_once`, whose answers are the reference. Requests that may follow up on a thread never wait here.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        *,
        max_batch: int = BATCH_MAX,
        max_in_flight: int = BATCHES_IN_FLIGHT,
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.max_batch = max_batch
        self.max_in_flight = max(1, min(max_in_flight, settings.db_pool_max // 2))
        self.batches = 0  # round trips made, and tickets written through them (tests, logs)
        self.tickets_stored = 0
        self.tickets_alone = 0  # requests that took the one-ticket path (`ingest_once`)
        self._waiting: list[_Waiting] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._leaving = False  # a batch task was started and has not taken its tickets yet

    async def ingest(
        self, ticket: NormalizedTicket, raw_payload: dict[str, Any], *, customer_verified: bool = False
    ) -> IngestResult:
        """What `ingest_once` answers for the ticket, and with the same effects."""
        if _may_follow_up(ticket):
            return await self._alone(ticket, raw_payload, customer_verified=customer_verified, replay_first=False)
        args = _new_ticket_args(ticket, raw_payload, self.settings, customer_verified=customer_verified)
        answer: asyncio.Future[asyncpg.Record] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(args, answer))
        if not self._leaving and len(self._tasks) < self.max_in_flight:
            self._leaving = True
            task = asyncio.create_task(self._store_waiting(), name="store new tickets")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            row = await answer
        except _BatchFailed:
            return await self._alone(ticket, raw_payload, customer_verified=customer_verified, replay_first=False)
        if row["id"] is not None:
            return _stored(row["id"], row["created_at"])
        if row["replay_ticket_id"] is not None:  # a replay, or 409: answered from the batch's round trip
            return _replay_in(row, ticket)
        # Not written, and the batch could not see why (a key committed meanwhile, or a customer over the quota).
        return await self._alone(ticket, raw_payload, customer_verified=customer_verified, replay_first=True)

    async def _alone(
        self, ticket: NormalizedTicket, raw_payload: dict[str, Any], *, customer_verified: bool, replay_first: bool
    ) -> IngestResult:
        self.tickets_alone += 1
        async with self.pool.acquire() as conn:
            # Not written by the batch: a replay, 409 or 429 is answered without storing it once more.
            if replay_first and (replay := await _why_not_written(conn, ticket, self.settings)) is not None:
                return replay
            return await ingest_once(
                conn, ticket, raw_payload, settings=self.settings, customer_verified=customer_verified
            )

    async def _store_waiting(self) -> None:
        try:
            while self._waiting:
                self._leaving = False  # these leave now: a ticket after this point may start a batch of its own
                batch = self._waiting[: self.max_batch]
                del self._waiting[: self.max_batch]
                # A request that went away before its batch left is not stored, as before a statement of its own.
                batch = [waiting for waiting in batch if not waiting.answer.done()]
                if batch:
                    await self._store(batch)
        finally:
            self._leaving = False

    async def _store(self, batch: list[_Waiting]) -> None:
        try:
            async with self.pool.acquire() as conn:
                rows = await conn.fetchmany(_NEW_TICKET_SQL, [waiting.args for waiting in batch])
        except Exception as exc:  # nothing of the batch was committed: each ticket tries alone
            log.debug("a batch of %d new tickets failed (%s): each is stored alone", len(batch), exc)
            for waiting in batch:
                if not waiting.answer.done():
                    waiting.answer.set_exception(_BatchFailed())
            return
        except BaseException:  # cancelled (shutdown): whatever happened, the requests find out alone
            for waiting in batch:
                if not waiting.answer.done():
                    waiting.answer.set_exception(_BatchFailed())
            raise
        self.batches += 1
        for waiting, row in zip(batch, rows, strict=True):
            self.tickets_stored += row["id"] is not None
            if not waiting.answer.done():
                waiting.answer.set_result(row)

    async def close(self) -> None:
        """Wait for the batches in flight (call before closing the pool)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks))


class _BatchFailed(Exception):
    """Internal: the batch a ticket went with failed as a whole; nothing of it was committed."""


async def _replay_of(conn: Connection, ticket: NormalizedTicket) -> IngestResult | None:
    row = await conn.fetchrow(_REPLAY_SQL, ticket.external_id)
    if row is None:
        return None
    return _replay(ticket, row["content_hash"], row["ticket_id"], row["message_id"], row["created_at"], row["status"])


def _replay_in(row: asyncpg.Record, ticket: NormalizedTicket) -> IngestResult:
    """The replay `_NEW_TICKET_SQL` found (its `replay_*` columns)."""
    return _replay(
        ticket,
        row["replay_content_hash"],
        row["replay_ticket_id"],
        row["replay_message_id"],
        row["replay_created_at"],
        row["replay_status"],
    )


def _replay(
    ticket: NormalizedTicket,
    content_hash: str,
    ticket_id: UUID,
    message_id: UUID | None,
    created_at: datetime,
    status: str,
) -> IngestResult:
    """The answer to a request whose key was stored before: the original's, or 409 for other content."""
    if content_hash != ticket.content_hash:
        # No ticket id here: the key may be someone else's, and a ticket id opens its thread (thread_ref).
        raise Conflict(
            f"external_id {ticket.external_id!r} was already used for a different request",
            field="external_id",
        )
    return IngestResult(
        ticket_id=ticket_id,
        status=status,
        created_at=created_at,
        duplicate=True,
        followup=message_id is not None,
        message_id=message_id,
    )


async def _thread_parent(conn: Connection, ticket: NormalizedTicket, customer_id: UUID | None) -> UUID | None:
    """The earlier ticket of the same customer this message follows up on, by thread_ref, email headers, or reply
    subject; None makes it a new ticket."""
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
            # A customer only ever adds to their own thread: naming someone else's ticket starts a new one.
            return None
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
    if is_reply_subject(ticket.subject) and base_subject(ticket.subject):
        found = await conn.fetchval(
            """SELECT id FROM tickets
               WHERE customer_id = $1 AND channel = 'email' AND status <> 'closed'
                 AND created_at > now() - make_interval(days => $3)
                 AND lower(regexp_replace(subject, $4, '', 'i')) = $2
               ORDER BY created_at DESC LIMIT 1""",
            customer_id,
            base_subject(ticket.subject),
            SUBJECT_MATCH_DAYS,
            REPLY_PREFIX_PATTERN,
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
    conn: Connection, ticket: NormalizedTicket, raw_payload: dict[str, Any], parent_id: UUID, settings: Settings
) -> IngestResult | None:
    # The ticket row first: follow-ups to one ticket queue up here, so its quota is counted exactly.
    locked = await conn.fetchrow("SELECT status, cycle_count FROM tickets WHERE id = $1 FOR UPDATE", parent_id)
    assert locked is not None  # _thread_parent found it, and tickets are never deleted
    claimed = await conn.fetchval(
        """INSERT INTO ingest_keys (external_id, content_hash, ticket_id)
           VALUES ($1, $2, $3) ON CONFLICT (external_id) DO NOTHING RETURNING 1""",
        ticket.external_id,
        ticket.content_hash,
        parent_id,
    )
    if claimed is None:
        return None
    quota = settings.followups_per_ticket_hour
    if quota:
        retry_after = await _followup_quota_retry_after(conn, parent_id, quota)
        if retry_after is not None:
            # Raised inside the caller's transaction: the key claimed above is rolled back with it.
            raise TooManyRequests(
                f"this ticket received {quota} follow-ups in the last hour; try again later",
                field="thread_ref" if ticket.thread_ref else None,
                retry_after_s=retry_after,
            )
    message_id = await _insert_message(conn, parent_id, ticket, raw_payload=raw_payload)
    await conn.execute("UPDATE ingest_keys SET message_id = $2 WHERE external_id = $1", ticket.external_id, message_id)
    status = locked["status"]
    # The customer wrote again: the ticket is due for another look, a cycle of its own, while cycles remain
    # (DESKPILOT_MAX_CYCLES); after that it waits for a person in the review queue. A worker holding it sees the
    # newer last_customer_message_at when it finishes and requeues instead of dropping it.
    requeue = locked["cycle_count"] < settings.max_cycles
    if status in ("resolved", "closed"):
        await lifecycle.transition(
            conn, parent_id, "open", "customer replied", extra_sets="reopen_count = reopen_count + 1", current=status
        )
        if not requeue:
            # Where an escalation leaves a ticket, so a reviewer can answer and resolve it.
            await lifecycle.transition(conn, parent_id, "in_progress", "customer replied", current="open")
            await lifecycle.transition(
                conn,
                parent_id,
                "pending_customer",
                f"escalated: {settings.max_cycles} automatic looks used, a person answers from here",
                current="in_progress",
            )
    row = await conn.fetchrow(
        """UPDATE tickets SET last_customer_message_at = now(), cycle_count = cycle_count + 1,
                              next_attempt_at = CASE WHEN $2 THEN now() ELSE next_attempt_at END,
                              parked_at = CASE WHEN $2 THEN NULL ELSE parked_at END,
                              failure_count = CASE WHEN $2 THEN 0 ELSE failure_count END,
                              needs_review = needs_review OR NOT $2,
                              updated_at = now()
           WHERE id = $1 RETURNING status, created_at""",
        parent_id,
        requeue,
    )
    assert row is not None  # locked FOR UPDATE above: it still exists
    return IngestResult(
        parent_id, row["status"], row["created_at"], duplicate=False, followup=True, message_id=message_id
    )


async def _followup_quota_retry_after(conn: Connection, ticket_id: UUID, quota: int) -> float | None:
    """Seconds until the oldest follow-up in the window leaves it, when the ticket's quota is used up. The
    ticket's own first message is not a follow-up."""
    value: float | None = await conn.fetchval(
        """SELECT EXTRACT(epoch FROM min(created_at) + make_interval(secs => $3) - now())::float8
           FROM (SELECT m.created_at FROM ticket_messages m
                 WHERE m.ticket_id = $1 AND m.direction = 'inbound' AND m.author = 'customer'
                   AND m.created_at > now() - make_interval(secs => $3)
                   AND m.external_id IS DISTINCT FROM (SELECT external_id FROM tickets WHERE id = $1)
                 ORDER BY m.created_at DESC LIMIT $2) AS recent
           HAVING count(*) >= $2""",
        ticket_id,
        quota,
        float(QUOTA_WINDOW_S),
    )
    return max(1.0, value) if value is not None else None
