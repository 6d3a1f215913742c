"""Ingest as a state machine (RELIABILITY.md invariants 1 and 3): hypothesis interleaves new tickets, replays,
conflicting reuses of an id, follow-ups, invalid requests and service restarts against the real app and
database, and after every step checks in SQL that nothing was lost, nothing duplicated, and nothing written for a
refusal.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)
from litestar.testing import TestClient

from app.asgi import create_app
from core import db
from core.errors import Conflict
from core.settings import Settings
from ingest.schemas import normalize_payload, parse_payload
from ingest.store import ingest_once

INGEST = "/api/webhooks/support/ingest"
CUSTOMERS = ("ann@example.com", "bob@example.org")
words = st.lists(
    st.sampled_from(["invoice", "export", "login", "broken", "slow", "charged", "twice", "please", "help", "API"]),
    min_size=1,
    max_size=6,
).map(" ".join)


@dataclass(frozen=True)
class Accepted:
    """A request the service acknowledged, exactly as sent, and the ticket it landed on."""

    external_id: str
    payload: dict[str, Any]
    ticket_id: str
    followup: bool


class Harness:
    """The app behind a synchronous client, and SQL through the app's own pool on the app's own loop."""

    def __init__(self, start: Callable[[], TestClient[Any]]) -> None:
        self._start = start
        self.client = start().__enter__()

    def restart(self) -> None:
        """Stop the service (its lifespan ends, the pool closes) and start a new one on the same database."""
        self.stop()
        self.client = self._start().__enter__()

    def stop(self) -> None:
        self.client.__exit__(None, None, None)

    def post(self, payload: Any) -> Any:
        return self.client.post(INGEST, json=payload)

    def sql(self, query: str, *args: Any) -> Any:
        pool: asyncpg.Pool = self.client.app.state.runtime.pool
        return self.client.blocking_portal.call(pool.fetch, query, *args)

    def reset(self) -> None:
        """Empty what ingest writes. DELETE, not TRUNCATE: on a few rows it is many times faster."""
        pool: asyncpg.Pool = self.client.app.state.runtime.pool
        self.client.blocking_portal.call(pool.execute, "DELETE FROM tickets; DELETE FROM customers")


class IngestMachine(RuleBasedStateMachine):
    harness: Harness  # set by the test before the machine runs

    tickets = Bundle("tickets")
    followups = Bundle("followups")

    def __init__(self) -> None:
        super().__init__()
        self.harness.reset()
        self.accepted: dict[str, Accepted] = {}
        self.serial = 0

    def fresh_id(self, prefix: str) -> str:
        self.serial += 1
        return f"{prefix}-{self.serial}"

    # --- rules ---

    @rule(
        target=tickets,
        customer=st.sampled_from(CUSTOMERS),
        channel=st.sampled_from(["email", "in_app", "webhook"]),
        subject=words,
        body=words,
    )
    def post_new_ticket(self, customer: str, channel: str, subject: str, body: str) -> Accepted:
        payload = {
            "external_id": self.fresh_id("t"),
            "channel": channel,
            "customer_email": customer,
            "subject": subject,
            "body": body,
        }
        response = self.harness.post(payload)
        assert response.status_code == 201, response.text
        answer = response.json()
        assert answer["status"] == "open" and "duplicate" not in answer and "followup" not in answer
        assert answer["ticket_id"] not in {a.ticket_id for a in self.accepted.values() if not a.followup}
        accepted = Accepted(payload["external_id"], payload, answer["ticket_id"], followup=False)
        self.accepted[accepted.external_id] = accepted
        return accepted

    @rule(original=tickets | followups)
    def replay(self, original: Accepted) -> None:
        response = self.harness.post(original.payload)
        assert response.status_code == 200, response.text
        assert response.json()["duplicate"] is True
        assert response.json()["ticket_id"] == original.ticket_id

    @rule(original=tickets | followups, field=st.sampled_from(["body", "subject", "channel", "customer_email"]))
    def reuse_id_for_other_content(self, original: Accepted, field: str) -> None:
        changed = dict(original.payload)
        changed[field] = {
            "body": f"{original.payload['body']} and something else",
            "subject": f"{original.payload.get('subject', '')} (second thoughts)",
            "channel": "webhook" if original.payload.get("channel") != "webhook" else "email",
            "customer_email": "mallory@example.net",
        }[field]
        response = self.harness.post(changed)
        assert response.status_code == 409, response.text
        assert response.json()["field"] == "external_id"

    @rule(target=followups, parent=tickets, body=words, by_ticket_id=st.booleans())
    def post_followup(self, parent: Accepted, body: str, by_ticket_id: bool) -> Accepted:
        payload = {
            "external_id": self.fresh_id("f"),
            "channel": parent.payload["channel"],
            "customer_email": parent.payload["customer_email"],
            "subject": f"more on {parent.external_id}",
            "body": body,
            "thread_ref": parent.ticket_id if by_ticket_id else parent.external_id,
        }
        response = self.harness.post(payload)
        assert response.status_code == 201, response.text
        assert response.json()["followup"] is True
        assert response.json()["ticket_id"] == parent.ticket_id
        accepted = Accepted(payload["external_id"], payload, parent.ticket_id, followup=True)
        self.accepted[accepted.external_id] = accepted
        return accepted

    @rule(target=tickets, parent=tickets)
    def followup_from_another_customer(self, parent: Accepted) -> Accepted:
        stranger = next(c for c in CUSTOMERS if c != parent.payload["customer_email"])
        payload = {
            "external_id": self.fresh_id("x"),
            "channel": "in_app",
            "customer_email": stranger,
            "body": "let me into this thread",
            "thread_ref": parent.external_id,
        }
        response = self.harness.post(payload)
        # Another customer's thread is never joined: the message becomes a ticket of its own.
        assert response.status_code == 201, response.text
        answer = response.json()
        assert "followup" not in answer and answer["ticket_id"] != parent.ticket_id
        accepted = Accepted(payload["external_id"], payload, answer["ticket_id"], followup=False)
        self.accepted[accepted.external_id] = accepted
        return accepted

    @rule(
        mistake=st.sampled_from(
            [
                ("external_id", {"external_id": ""}),
                ("external_id", {"external_id": "x" * 256}),
                ("external_id", {"external_id": "tab\there"}),
                ("customer_email", {"customer_email": "not-an-address"}),
                ("body", {"body": "\u200b\u200d "}),
                ("body", {"body": None}),
                ("channel", {"channel": "fax"}),
                ("thread_ref", {"thread_ref": "no-such-ticket"}),
                ("metadata", {"metadata": ["not", "an", "object"]}),
            ]
        ),
        customer=st.sampled_from([*CUSTOMERS, "newcomer@example.com"]),
    )
    def post_invalid(self, mistake: tuple[str, dict[str, Any]], customer: str) -> None:
        field, override = mistake
        payload = {"external_id": self.fresh_id("bad"), "customer_email": customer, "body": "help", **override}
        response = self.harness.post(payload)
        assert response.status_code == 422, response.text
        assert response.json()["field"] == field

    # --- invariants, in SQL ---

    @rule()
    def restart_the_service(self) -> None:
        # Everything acknowledged lives in the database: a new process answers replays and conflicts the same way.
        self.harness.restart()

    @invariant()
    def one_ticket_per_accepted_new_id(self) -> None:
        new = {a.external_id: a for a in self.accepted.values() if not a.followup}
        rows = self.harness.sql("SELECT external_id, id::text AS id, body FROM tickets")
        assert len(rows) == len(new)
        for row in rows:
            accepted = new[row["external_id"]]
            assert row["id"] == accepted.ticket_id
            assert row["body"] == accepted.payload["body"]  # a conflicting reuse never touched it

    @invariant()
    def every_accepted_id_maps_to_its_ticket(self) -> None:
        rows = self.harness.sql("SELECT external_id, ticket_id::text AS ticket_id FROM ingest_keys")
        assert {r["external_id"]: r["ticket_id"] for r in rows} == {
            a.external_id: a.ticket_id for a in self.accepted.values()
        }

    @invariant()
    def one_message_per_accepted_request(self) -> None:
        rows = self.harness.sql("SELECT ticket_id::text AS ticket_id, external_id FROM ticket_messages")
        assert sorted((r["ticket_id"], r["external_id"]) for r in rows) == sorted(
            (a.ticket_id, a.external_id) for a in self.accepted.values()
        )

    @invariant()
    def no_customer_from_a_refused_request(self) -> None:
        rows = self.harness.sql("SELECT email FROM customers")
        # Exactly the customers of accepted requests: a 409, a 422 or a replay leaves no customer behind.
        assert {r["email"] for r in rows} == {a.payload["customer_email"] for a in self.accepted.values()}


@pytest.fixture
def harness(database_url: str, make_settings: Callable[..., Settings], clean_db: asyncpg.Pool) -> Iterator[Harness]:
    harness = Harness(
        lambda: TestClient(app=create_app(make_settings(), database_url=database_url), raise_server_exceptions=False)
    )
    try:
        yield harness
    finally:
        harness.stop()


def test_ingest_state_machine(harness: Harness) -> None:
    IngestMachine.harness = harness
    run_state_machine_as_test(
        IngestMachine,
        settings=settings(
            max_examples=30,
            stateful_step_count=15,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )


def test_conflict_writes_no_customer(harness: Harness) -> None:
    first = {"external_id": "c-1", "customer_email": "ann@example.com", "body": "My export fails."}
    assert harness.post(first).status_code == 201
    assert harness.post({**first, "customer_email": "mallory@example.net"}).status_code == 409
    assert [r["email"] for r in harness.sql("SELECT email FROM customers")] == ["ann@example.com"]


async def post_at_once(pool: asyncpg.Pool, payloads: list[dict[str, Any]]) -> list[Any]:
    """Each payload through ingest on its own connection, all at once: the race an HTTP storm makes, every time."""
    parsed = [parse_payload(json.dumps(payload).encode()) for payload in payloads]
    connections = [await pool.acquire() for _ in payloads]
    try:

        async def post(conn: Any, payload: Any, raw: dict[str, Any]) -> Any:
            try:
                return await ingest_once(conn, normalize_payload(payload), raw)
            except Conflict as conflict:
                return conflict

        return await asyncio.gather(
            *(post(conn, payload, raw) for conn, (payload, raw) in zip(connections, parsed, strict=True))
        )
    finally:
        for conn in connections:
            await pool.release(conn)


async def test_concurrent_conflicts_write_no_customer(clean_db: asyncpg.Pool, database_url: str) -> None:
    """A conflicting reuse racing the winner's uncommitted insert must not leave its new customer behind either."""
    pool = await db.create_pool(database_url, Settings(db_pool_min=1, db_pool_max=24))
    try:
        for round_ in range(5):
            payloads = [
                {"external_id": f"race-{round_}", "customer_email": f"racer-{round_}-{n}@example.com", "body": f"#{n}"}
                for n in range(20)
            ]
            results = await post_at_once(pool, payloads)
            winners = [n for n, result in enumerate(results) if not isinstance(result, Conflict)]
            assert len(winners) == 1, results
            assert all(isinstance(results[n], Conflict) for n in range(20) if n != winners[0])
            emails = [
                r["email"]
                for r in await pool.fetch("SELECT email FROM customers WHERE email LIKE $1", f"racer-{round_}-%")
            ]
            assert emails == [payloads[winners[0]]["customer_email"]]
        # Distinct ids from one new customer race to create it: every one is stored, on one customer row.
        payloads = [
            {"external_id": f"same-{n}", "customer_email": "newcomer@example.com", "body": "hi"} for n in range(20)
        ]
        results = await post_at_once(pool, payloads)
        assert all(not isinstance(r, Conflict) and not r.duplicate for r in results), results
        assert await pool.fetchval("SELECT count(*) FROM customers WHERE email = 'newcomer@example.com'") == 1
        assert await pool.fetchval("SELECT count(*) FROM tickets WHERE external_id LIKE 'same-%'") == 20
    finally:
        await pool.close()
