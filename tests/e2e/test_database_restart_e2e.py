"""A real `deskpilot serve` (the API and its in-process worker) rides out a restart of its PostgreSQL, `fast` and
`immediate`, while tickets are in the middle of the graph.

The drafts come from a scripted model (`tests.support.fake_openai`) that takes 3 s over the first two requests:
the database goes down while those tickets wait for it, after their dispatch committed and before their decision.
The poll fallback is 600 s, so a ticket picked up within seconds after the restart was woken by NOTIFY, which
needs the worker's LISTEN connection to have come back. Runs on a throwaway server (the session server must never
go down); everything is on this machine (a Unix socket, and 127.0.0.1).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from core import db
from core.settings import PROJECT_ROOT, Settings
from tests.support.fake_openai import FakeOpenAI, reply_json, slow
from tests.support.knowledge import load_example_resolutions
from tests.support.pg import ThrowawayPostgres
from tests.support.server import ServerProcess
from tests.support.workers import eventually, truthy

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(240)]

INGEST = "/api/webhooks/support/ingest"
POLL_S = 600.0
LEASE_S = 5.0
PROMPT_PICKUP_S = 30.0
EXAMPLES = PROJECT_ROOT / "examples" / "tickets"
ANSWER = reply_json(
    {
        # Every factual sentence in the words of the resolution it cites: the drafter drops unsupported ones.
        "reply": "Hello, please check spam, junk and any quarantine folder your company uses for the reset email [R1]. "
        "Make sure you request it for the exact address you signed up with [R1]. "
        "Reply here if it still does not arrive.",
        "cited_ids": ["R1"],
        "confidence": 0.95,
        "reasons": ["R1 answers the question"],
        "needs_human": False,
    }
)


async def seed_history(url: str, embedder: Any) -> None:
    """The schema and the example past resolutions, so that the how-to questions are answered."""
    await db.migrate(url)
    async with db.pool_for(url, Settings(db_pool_min=1, db_pool_max=2)) as pool, pool.acquire() as conn:
        await load_example_resolutions(conn, embedder)


def question(name: str, tag: str) -> dict[str, Any]:
    """An example ticket from a customer of its own (a customer asking twice is flagged for review)."""
    payload: dict[str, Any] = json.loads((EXAMPLES / f"{name}.json").read_text())
    key = uuid.uuid4().hex[:8]
    return {**payload, "external_id": f"restart-{tag}-{key}", "customer_email": f"{tag}-{key}@customers.example"}


async def fetch(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    """One query on a connection of its own: the server under test restarts, so nothing here is pooled."""
    conn = await asyncpg.connect(url, timeout=5)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def answers(url: str, sql: str, *args: Any) -> bool:
    """For `eventually`: the query's first value is true (False while the database is not answering)."""
    try:
        rows = await fetch(url, sql, *args)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
    return bool(rows and rows[0][0])


DECIDED = """
    SELECT t.external_id FROM tickets t
    WHERE t.lease_owner IS NULL
      AND EXISTS (SELECT 1 FROM resolution_attempts a
                  WHERE a.ticket_id = t.id AND a.state = 'completed' AND a.decision IS NOT NULL)
      AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.ticket_id = t.id AND d.status <> 'sent')
"""
"""Tickets with a decision, nobody working on them, and their reply (if any) sent."""


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_serve_rides_out_a_database_restart_while_tickets_are_in_the_graph(
    throwaway_pg: ThrowawayPostgres, embedder: Any, pg_data_root: Path, tmp_path: Path, mode: str
) -> None:
    url = throwaway_pg.url
    await seed_history(url, embedder)
    with FakeOpenAI() as llm:
        llm.script(slow(3.0, ANSWER), slow(3.0, ANSWER))
        llm.default = ANSWER
        env = {
            "DESKPILOT_DATABASE_URL": url,
            "DESKPILOT_DATA_DIR": str(pg_data_root / "data"),
            "DESKPILOT_POLL_INTERVAL": str(POLL_S),
            "DESKPILOT_LEASE_SECONDS": str(LEASE_S),
            "DESKPILOT_WORKER_CONCURRENCY": "2",
            "OPENAI_BASE_URL": llm.base_url,
            "OPENAI_API_KEY": "sk-restart-test",
        }
        server = ServerProcess.serve(env, tmp_path / "serve.log")
        try:
            await asyncio.to_thread(server.wait_ready, 120.0)
            async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as http:
                await ride_out_a_restart(throwaway_pg, server, llm, http, mode)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- serve log (tail) ---\n{server.log()}") from exc
        finally:
            server.stop()


async def ride_out_a_restart(
    pg: ThrowawayPostgres, server: ServerProcess, llm: FakeOpenAI, http: httpx.AsyncClient, mode: str
) -> None:
    url = pg.url
    acknowledged: dict[str, str] = {}

    async def post(payload: dict[str, Any]) -> httpx.Response:
        response = await http.post(INGEST, json=payload)
        if response.status_code == 201:
            acknowledged[payload["external_id"]] = response.json()["ticket_id"]
        return response

    before = [question("password-reset", f"before-{n}") for n in range(4)] + [question("refund-demand", "demand")]
    for payload in before:
        assert (await post(payload)).status_code == 201

    # Two tickets are waiting for the model (their dispatch committed): take the database away under them.
    await eventually(lambda: truthy(len(llm.requests) >= 2), within_s=120, what="two tickets reached the model")
    leased = await fetch(url, "SELECT id FROM tickets WHERE status = 'in_progress' AND lease_owner IS NOT NULL")
    in_flight = {r["id"] for r in leased}
    assert len(in_flight) == 2
    await asyncio.to_thread(pg.stop, mode)  # type: ignore[arg-type]

    during = question("password-reset", "during")
    refused = await post(during)
    assert refused.status_code == 503, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert int(refused.headers["retry-after"]) > 0
    health = await http.get("/health")
    assert health.status_code == 503
    assert int(health.headers["retry-after"]) > 0
    # The model answers; the attempts cannot record their next step, and the worker keeps their claims.
    await eventually(
        lambda: truthy(server.log_path.read_text(errors="replace").count("could not mark attempt") >= 2),
        within_s=30,
        what="both in-flight tickets failed on the outage",
    )

    await asyncio.to_thread(pg.start)

    async def healthy() -> bool:
        return (await http.get("/health")).status_code == 200

    await eventually(healthy, within_s=60, what="health 200 after the restart")
    # The client retries what was refused (as Retry-After asks): it was never stored, so it is new now.
    assert not await fetch(url, "SELECT 1 FROM tickets WHERE external_id = $1", during["external_id"])

    async def accepted() -> bool:
        return (await post(during)).status_code == 201

    await eventually(accepted, within_s=30, what="the refused ticket accepted after the restart")

    await eventually(
        lambda: answers(
            url,
            "SELECT count(*) > 0 FROM pg_stat_activity WHERE application_name LIKE 'deskpilot-listen%'",
        ),
        within_s=30,
        what="the worker's LISTEN connection re-established",
    )
    # The worker is idle: nothing is leased, and what the outage pushed back is due, yet unclaimed, since
    # nobody woke the worker (its poll is 600 s away). Only a NOTIFY can make it claim now.
    await eventually(
        lambda: answers(
            url,
            f"""SELECT bool_and(t.external_id IN ({DECIDED}) OR (t.next_attempt_at <= now() AND t.lease_owner IS NULL))
                FROM tickets t""",
        ),
        within_s=60,
        what="every earlier ticket decided or due again, none in flight",
    )
    after = question("password-reset", "after")
    posted_at = time.monotonic()
    assert (await post(after)).status_code == 201
    await eventually(
        lambda: answers(url, f"SELECT $1 IN ({DECIDED})", after["external_id"]),
        within_s=PROMPT_PICKUP_S,
        what=f"the ticket posted after the restart picked up by NOTIFY (poll in {POLL_S:.0f}s)",
    )
    assert time.monotonic() - posted_at < PROMPT_PICKUP_S

    # Nothing lost: every acknowledged ticket is stored once and reaches a decision.
    await eventually(
        lambda: answers(url, f"SELECT count(*) = $1 FROM ({DECIDED}) decided", len(acknowledged)),
        within_s=60,
        what="every acknowledged ticket decided",
    )
    stored = await fetch(url, "SELECT external_id, id FROM tickets")
    assert {r["external_id"]: str(r["id"]) for r in stored} == acknowledged

    # The two tickets in flight lost their attempt to the outage and were decided by a later one.
    crashed = await fetch(
        url,
        """SELECT ticket_id, array_agg(state ORDER BY attempt_no) AS states FROM resolution_attempts
           WHERE ticket_id = ANY($1) GROUP BY ticket_id""",
        list(in_flight),
    )
    assert len(crashed) == 2, crashed
    for row in crashed:
        assert len(row["states"]) >= 2, row
        assert row["states"][-1] == "completed", row
        assert set(row["states"][:-1]) <= {"abandoned", "failed"}, row

    # No duplicate side effect: at most one reply per ticket, each with its one delivery, sent.
    replies = await fetch(
        url,
        """SELECT t.external_id,
                  (SELECT count(*) FROM ticket_messages m WHERE m.ticket_id = t.id AND m.direction = 'outbound')
                      AS messages,
                  (SELECT count(*) FROM deliveries d WHERE d.ticket_id = t.id) AS deliveries,
                  (SELECT count(*) FROM deliveries d WHERE d.ticket_id = t.id AND d.status = 'sent') AS sent
           FROM tickets t""",
    )
    assert all(r["messages"] <= 1 for r in replies), replies
    assert all(r["messages"] == r["deliveries"] == r["sent"] for r in replies), replies
    assert sum(r["messages"] for r in replies) >= 4, replies  # the how-to questions were answered
    demand = next(r for r in replies if r["external_id"] == before[-1]["external_id"])
    assert demand["messages"] == 0  # the refund demand was escalated, not answered
