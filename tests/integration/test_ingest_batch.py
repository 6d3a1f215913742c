"""New tickets of concurrent requests stored together (`ingest.store.NewTicketBatcher`): one pipelined round trip
and one commit per batch, with the answers and the stored rows of one `ingest_once` after another."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg
import pytest

from core.errors import Conflict, TooManyRequests
from core.settings import Settings
from ingest.schemas import normalize_payload, parse_payload
from ingest.store import IngestResult, NewTicketBatcher, ingest_once

pytestmark = pytest.mark.timeout(60)


def payload(external_id: str, customer: str, **overrides: Any) -> dict[str, Any]:
    return {
        "external_id": external_id,
        "channel": "in_app",
        "customer_email": f"{customer}@example.com",
        "customer_name": customer.title(),
        "subject": "Cannot download my invoice",
        "body": f"Hello, the invoice download button does nothing ({external_id}). Can you help?",
        "metadata": {"plan": "pro", "seats": 3},
        **overrides,
    }


# In arrival order: new customers (one of them twice), a replay of a ticket in the same batch, a key reused for
# other content (409), and a customer over the quota (429, with the quota at 2).
ARRIVALS = [
    payload("t-1", "ada"),
    payload("t-2", "ada"),
    payload("t-3", "grace"),
    payload("t-1", "ada"),  # the replay: the same content
    payload("t-3", "grace", body="Something else entirely, under the same key."),
    payload("t-4", "ada"),  # ada's third ticket within the hour
    payload("t-5", "linus"),
]
QUOTA = {"DESKPILOT_TICKETS_PER_CUSTOMER_HOUR": "2"}


async def one_after_another(pool: asyncpg.Pool, settings: Settings) -> list[IngestResult | Exception]:
    answers: list[IngestResult | Exception] = []
    for body in ARRIVALS:
        parsed, raw = parse_payload(json.dumps(body).encode())
        async with pool.acquire() as conn:
            try:
                answers.append(await ingest_once(conn, normalize_payload(parsed), raw, settings=settings))
            except (Conflict, TooManyRequests) as exc:
                answers.append(exc)
    return answers


async def together(batcher: NewTicketBatcher) -> list[IngestResult | Exception]:
    async def arrive(body: dict[str, Any]) -> IngestResult:
        parsed, raw = parse_payload(json.dumps(body).encode())
        return await batcher.ingest(normalize_payload(parsed), raw)

    # Each task reaches the batcher before the first batch leaves: one batch holds them all.
    return list(await asyncio.gather(*(arrive(body) for body in ARRIVALS), return_exceptions=True))


def shape(answers: list[IngestResult | Exception]) -> list[Any]:
    """What a client sees of each answer, ticket ids by the arrival that created them."""
    first_seen: dict[Any, int] = {}
    seen = []
    for n, answer in enumerate(answers):
        if isinstance(answer, Exception):
            seen.append(type(answer).__name__)
        else:
            seen.append((first_seen.setdefault(answer.ticket_id, n), answer.status, answer.duplicate))
    return seen


STORED = {
    "tickets": """SELECT t.external_id, c.email, c.name, t.channel, t.subject, t.body, t.customer_name, t.metadata,
                         t.raw_payload, t.status, t.thread_ref, t.next_attempt_at IS NOT NULL AS queued
                  FROM tickets t JOIN customers c ON c.id = t.customer_id ORDER BY t.external_id""",
    "messages": """SELECT t.external_id, m.direction, m.channel, m.author, m.external_id, m.subject, m.body
                   FROM ticket_messages m JOIN tickets t ON t.id = m.ticket_id ORDER BY m.external_id""",
    "keys": """SELECT k.external_id, k.content_hash, t.external_id, k.message_id IS NULL
               FROM ingest_keys k JOIN tickets t ON t.id = k.ticket_id ORDER BY k.external_id""",
    "history": """SELECT t.external_id, h.from_status, h.to_status, h.reason
                  FROM ticket_status_history h JOIN tickets t ON t.id = h.ticket_id ORDER BY t.external_id""",
    "customers": "SELECT email, name FROM customers ORDER BY email",
}


async def stored(pool: asyncpg.Pool) -> dict[str, list[tuple[Any, ...]]]:
    return {name: [tuple(row) for row in await pool.fetch(sql)] for name, sql in STORED.items()}


async def test_a_batch_answers_and_stores_what_one_ticket_after_another_does(
    clean_db: asyncpg.Pool, make_settings: Any
) -> None:
    settings = make_settings(**QUOTA)
    expected_answers = shape(await one_after_another(clean_db, settings))
    expected_rows = await stored(clean_db)
    assert expected_answers == [
        (0, "open", False),
        (1, "open", False),
        (2, "open", False),
        (0, "open", True),
        "Conflict",
        "TooManyRequests",
        (6, "open", False),
    ]

    await clean_db.execute("TRUNCATE customers, tickets, ticket_messages, ingest_keys, ticket_status_history CASCADE")
    batcher = NewTicketBatcher(clean_db, settings, max_in_flight=1)
    answers = await together(batcher)
    await batcher.close()

    assert shape(answers) == expected_answers
    assert await stored(clean_db) == expected_rows
    assert batcher.batches == 1  # every ticket went in one round trip
    assert batcher.tickets_stored == 4
    # Only the refusal over the quota looked again on its own; the replay and the 409 came with the batch's rows.
    assert batcher.tickets_alone == 1


async def test_a_failed_batch_stores_each_ticket_alone(clean_db: asyncpg.Pool, settings: Settings) -> None:
    """A key that names a follow-up message makes the batch's statement fail (the message key is unique): nothing
    of the batch is committed, and each ticket is then stored, or refused, on its own."""
    batcher = NewTicketBatcher(clean_db, settings, max_in_flight=1)
    first, raw = parse_payload(json.dumps(payload("p-1", "ada")).encode())
    await batcher.ingest(normalize_payload(first), raw)
    followup, raw = parse_payload(json.dumps(payload("f-1", "ada", thread_ref="p-1")).encode())
    assert (await batcher.ingest(normalize_payload(followup), raw)).followup
    batches = batcher.batches

    async def arrive(body: dict[str, Any]) -> IngestResult:
        parsed, raw = parse_payload(json.dumps(body).encode())
        return await batcher.ingest(normalize_payload(parsed), raw)

    answers = await asyncio.gather(
        arrive(payload("n-1", "grace")),
        arrive(payload("f-1", "ada")),  # the follow-up's key, for a new ticket
        arrive(payload("n-2", "linus")),
        return_exceptions=True,
    )
    await batcher.close()

    assert batcher.batches == batches  # the batch of three failed
    assert isinstance(answers[1], Conflict)
    assert [type(answers[0]), type(answers[2])] == [IngestResult, IngestResult]
    assert not any(answer.duplicate for answer in (answers[0], answers[2]) if isinstance(answer, IngestResult))
    rows = await clean_db.fetch("SELECT external_id FROM tickets ORDER BY external_id")
    assert [row["external_id"] for row in rows] == ["n-1", "n-2", "p-1"]


async def test_an_idle_batcher_stores_a_lone_ticket_at_once(clean_db: asyncpg.Pool, settings: Settings) -> None:
    batcher = NewTicketBatcher(clean_db, settings)
    parsed, raw = parse_payload(json.dumps(payload("solo-1", "ada")).encode())
    result = await batcher.ingest(normalize_payload(parsed), raw)
    assert (result.status, result.duplicate, result.followup) == ("open", False, False)
    assert (batcher.batches, batcher.tickets_stored) == (1, 1)
    assert await clean_db.fetchval("SELECT count(*) FROM tickets WHERE id = $1", result.ticket_id) == 1


async def test_replays_of_earlier_tickets_are_answered_from_the_batch(
    clean_db: asyncpg.Pool, settings: Settings
) -> None:
    """A replay (200, the original ticket) or a key reused for other content (409) needs no second round trip."""
    batcher = NewTicketBatcher(clean_db, settings, max_in_flight=1)
    parsed, raw = parse_payload(json.dumps(payload("r-1", "ada")).encode())
    original = await batcher.ingest(normalize_payload(parsed), raw)

    async def arrive(body: dict[str, Any]) -> IngestResult:
        parsed, raw = parse_payload(json.dumps(body).encode())
        return await batcher.ingest(normalize_payload(parsed), raw)

    replay, reuse, fresh = await asyncio.gather(
        arrive(payload("r-1", "ada")),
        arrive(payload("r-1", "ada", body="Other content under the same key.")),
        arrive(payload("r-2", "grace")),
        return_exceptions=True,
    )
    await batcher.close()

    assert isinstance(replay, IngestResult) and isinstance(fresh, IngestResult)
    assert (replay.ticket_id, replay.status, replay.created_at) == (original.ticket_id, "open", original.created_at)
    assert (replay.duplicate, replay.followup, fresh.duplicate) == (True, False, False)
    assert isinstance(reuse, Conflict) and reuse.field == "external_id"
    assert (batcher.batches, batcher.tickets_stored, batcher.tickets_alone) == (2, 2, 0)
    assert await clean_db.fetchval("SELECT count(*) FROM tickets") == 2


async def test_a_replay_committed_while_the_batch_waited_is_looked_up_again(
    clean_db: asyncpg.Pool, settings: Settings
) -> None:
    """The batch's statement waits for a concurrent request holding the same key; once that one commits, the key
    is taken but not visible to the statement that waited: the request looks again and is answered the replay."""
    batcher = NewTicketBatcher(clean_db, settings, max_in_flight=1)
    parsed, raw = parse_payload(json.dumps(payload("c-1", "ada")).encode())
    ticket = normalize_payload(parsed)
    async with clean_db.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        first = await ingest_once(conn, ticket, raw, settings=settings)
        waiting = asyncio.create_task(batcher.ingest(ticket, raw))
        for _ in range(200):  # until the batch's statement waits for this transaction's key
            if await clean_db.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            ):
                break
            await asyncio.sleep(0.02)
        else:
            pytest.fail("the batch never waited for the concurrent key")
        await transaction.commit()
    answer = await waiting
    await batcher.close()

    assert (answer.ticket_id, answer.duplicate) == (first.ticket_id, True)
    assert batcher.tickets_alone == 1
    assert await clean_db.fetchval("SELECT count(*) FROM tickets") == 1
