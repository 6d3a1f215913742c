"""Load on a real `deskpilot serve` process over HTTP (RELIABILITY.md, "Load"): a storm of identical posts, a storm of
conflicting reuses of one id, and a model that takes 20 s to answer while ingest and the admin API keep serving.

The server runs on the test session's database (tables emptied first), so the database is read directly to count
rows; the model is `tests.support.fake_openai`, in this process, so the test sees when each model call arrives.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import httpx
import pytest

from tests.support.fake_openai import FakeOpenAI, RecordedRequest, reply_json, slow
from tests.support.knowledge import load_example_resolutions, memo_embedder
from tests.support.server import ServerProcess
from tests.support.workers import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

INGEST = "/api/webhooks/support/ingest"
STORM = 100


def start_server(env: dict[str, str], log_path: Path, *extra: str) -> ServerProcess:
    server = ServerProcess.serve(env, log_path, *extra)
    try:
        server.wait_ready(timeout_s=120)
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="module")
def api_server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """`deskpilot serve --no-worker` on the test database (each test empties it first): ingest and admin API only."""
    tmp_path = tmp_path_factory.mktemp("api-server")
    env = {"DESKPILOT_DATABASE_URL": database_url, "DESKPILOT_DATA_DIR": str(tmp_path / "data")}
    server = start_server(env, tmp_path / "serve.log", "--no-worker")
    yield server
    assert server.stop() == 0, server.log()
    assert "Traceback" not in server.log(), server.log()


async def storm(base_url: str, payloads: list[dict[str, Any]]) -> list[httpx.Response]:
    """Every payload posted at once, each on its own connection opened beforehand, so that the requests reach the
    server within a few milliseconds of each other instead of trickling in as connections are set up."""
    limits = httpx.Limits(max_connections=len(payloads), max_keepalive_connections=len(payloads))
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60) as http:
        warm = await asyncio.gather(*(http.get("/health") for _ in payloads))
        assert {r.status_code for r in warm} == {200}
        return list(await asyncio.gather(*(http.post(INGEST, json=payload) for payload in payloads)))


async def table_counts(pool: asyncpg.Pool) -> dict[str, int]:
    tables = ("tickets", "ingest_keys", "ticket_messages", "ticket_status_history", "customers")
    return {table: await pool.fetchval(f"SELECT count(*) FROM {table}") for table in tables}


# What one accepted ticket from a new customer leaves in the database.
ONE_TICKET_ROWS = {"tickets": 1, "ingest_keys": 1, "ticket_messages": 1, "ticket_status_history": 1, "customers": 1}


async def test_a_storm_of_identical_posts_makes_one_ticket_and_every_answer_names_it(
    clean_db: asyncpg.Pool, api_server: ServerProcess
) -> None:
    payload = {
        "external_id": "storm-1",
        "channel": "email",
        "customer_email": "storm@example.com",  # a new customer: the posts also race to create it
        "subject": "Export stops at 50%",
        "body": "The CSV export stops halfway every time. Can you help?",
    }
    responses = await storm(api_server.base_url, [payload] * STORM)

    codes = [r.status_code for r in responses]
    assert sorted(codes) == [200] * (STORM - 1) + [201], codes
    answers = [r.json() for r in responses]
    ticket_ids = {answer["ticket_id"] for answer in answers}
    assert len(ticket_ids) == 1, ticket_ids
    created = next(answer for r, answer in zip(responses, answers, strict=True) if r.status_code == 201)
    assert "duplicate" not in created
    duplicates = [answer for r, answer in zip(responses, answers, strict=True) if r.status_code == 200]
    assert all(answer.get("duplicate") is True for answer in duplicates)

    [ticket_id] = ticket_ids
    row = await clean_db.fetchrow("SELECT id, external_id, body FROM tickets")
    assert row is not None
    assert (str(row["id"]), row["external_id"], row["body"]) == (ticket_id, "storm-1", payload["body"])
    assert await table_counts(clean_db) == ONE_TICKET_ROWS


async def test_a_storm_of_conflicting_reuses_of_one_id_writes_only_the_winner(
    clean_db: asyncpg.Pool, api_server: ServerProcess
) -> None:
    """Same external id, a different customer and body each time: one 201, 409 for the rest, and nothing of the
    refused requests written, not even their (new) customers."""
    payloads = [
        {
            "external_id": "contested-1",
            "channel": "email",
            "customer_email": f"claimant-{n}@example.com",
            "subject": "Whose ticket is it?",
            "body": f"Request number {n}.",
        }
        for n in range(STORM)
    ]
    responses = await storm(api_server.base_url, payloads)

    codes = [r.status_code for r in responses]
    assert sorted(codes) == [201] + [409] * (STORM - 1), codes
    winner = next(n for n, r in enumerate(responses) if r.status_code == 201)
    ticket_id = responses[winner].json()["ticket_id"]
    for response in responses:
        if response.status_code == 409:
            assert response.headers["content-type"].startswith("application/problem+json")
            assert response.json()["field"] == "external_id"
    row = await clean_db.fetchrow(
        "SELECT t.id, t.body, c.email FROM tickets t JOIN customers c ON c.id = t.customer_id"
    )
    assert row is not None
    assert (str(row["id"]), row["body"], row["email"]) == (
        ticket_id,
        payloads[winner]["body"],
        payloads[winner]["customer_email"],
    )
    assert await table_counts(clean_db) == ONE_TICKET_ROWS


async def test_a_storm_of_new_tickets_from_one_new_customer_creates_it_once(
    clean_db: asyncpg.Pool, api_server: ServerProcess
) -> None:
    """Distinct ids, one customer nobody has seen: every post races to create it; all are accepted, none fails."""
    payloads = [
        {
            "external_id": f"newcomer-{n}",
            "channel": "in_app",
            "customer_email": "newcomer@example.com",
            "body": f"Question number {n}.",
        }
        for n in range(STORM)
    ]
    responses = await storm(api_server.base_url, payloads)

    assert [r.status_code for r in responses] == [201] * STORM, [r.text for r in responses if r.status_code != 201]
    assert len({r.json()["ticket_id"] for r in responses}) == STORM
    assert await clean_db.fetchval("SELECT count(DISTINCT customer_id) FROM tickets") == 1
    assert await table_counts(clean_db) == {
        "tickets": STORM,
        "ingest_keys": STORM,
        "ticket_messages": STORM,
        "ticket_status_history": STORM,
        "customers": 1,
    }


# --- a slow model -------------------------------------------------------------------------------------------

MODEL_SECONDS = 20.0
LEASE_S = 5.0
LLM_TIMEOUT_S = 60.0
SAMPLES = 30
# Generous: a loaded two-core CI machine answers these in a few tens of milliseconds. An event loop blocked by the
# model call would take the whole 20 s.
P95_BOUND_S = 0.5

ANSWER = {
    "reply": "Hello, open Settings, then Data, then Export, and choose CSV.",
    "cited_ids": [],
    "confidence": 0.4,
    "reasons": ["no past resolution is about this"],
    "needs_human": False,
}


def ticket_payload(external_id: str, body: str) -> dict[str, Any]:
    return {
        "external_id": external_id,
        "channel": "email",
        "customer_email": "patient@example.com",
        "subject": "CSV export",
        "body": body,
    }


class Latencies:
    def __init__(self) -> None:
        self.ingest: list[float] = []
        self.admin: list[float] = []

    @staticmethod
    def p95(values: list[float]) -> float:
        return statistics.quantiles(values, n=20)[-1]

    def summary(self) -> str:
        return (
            f"ingest p50 {statistics.median(self.ingest) * 1000:.1f} ms p95 {self.p95(self.ingest) * 1000:.1f} ms, "
            f"admin p50 {statistics.median(self.admin) * 1000:.1f} ms p95 {self.p95(self.admin) * 1000:.1f} ms"
        )


async def measure(http: httpx.AsyncClient, label: str) -> Latencies:
    """SAMPLES new tickets posted and SAMPLES ticket lists read, alternately, one request at a time."""
    seen = Latencies()
    for n in range(SAMPLES):
        started = time.perf_counter()
        created = await http.post(INGEST, json=ticket_payload(f"{label}-{n}", f"How do I export, take {label} {n}?"))
        seen.ingest.append(time.perf_counter() - started)
        assert created.status_code == 201, created.text
        started = time.perf_counter()
        listed = await http.get("/api/tickets", params={"limit": 50})
        seen.admin.append(time.perf_counter() - started)
        assert listed.status_code == 200, listed.text
    return seen


def calls_for(llm: FakeOpenAI, marker: str) -> list[RecordedRequest]:
    return [request for request in list(llm.requests) if marker in request.message_text("user")]


async def nothing_in_flight(pool: asyncpg.Pool) -> bool:
    busy: int = await pool.fetchval(
        """SELECT count(*) FROM tickets
           WHERE lease_owner IS NOT NULL OR (next_attempt_at IS NOT NULL AND next_attempt_at <= now())"""
    )
    return busy == 0


async def test_a_20s_model_call_slows_neither_ingest_nor_the_admin_api_and_keeps_its_lease(
    clean_db: asyncpg.Pool, database_url: str, tmp_path: Path, embedder: Any
) -> None:
    async with clean_db.acquire() as conn:  # something to cite: with nothing retrieved, the model is not asked
        await load_example_resolutions(conn, memo_embedder(embedder))
    with FakeOpenAI() as llm:
        llm.default = reply_json(ANSWER)  # every other ticket: an answer at once
        env = {
            "DESKPILOT_DATABASE_URL": database_url,
            "DESKPILOT_DATA_DIR": str(tmp_path / "data"),
            "OPENAI_BASE_URL": llm.base_url,
            "OPENAI_API_KEY": "sk-slow-model-test",
            "DESKPILOT_LLM_TIMEOUT": str(LLM_TIMEOUT_S),
            "DESKPILOT_LLM_MAX_RETRIES": "0",
            "DESKPILOT_LLM_FALLBACK": "escalate",
            "DESKPILOT_LEASE_SECONDS": str(LEASE_S),
            "DESKPILOT_POLL_INTERVAL": "0.5",
            # One slot waits on the model; the other is free, and would take the ticket over if its lease lapsed.
            "DESKPILOT_WORKER_CONCURRENCY": "2",
        }
        server = start_server(env, tmp_path / "serve.log")
        try:
            async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as http:
                llm_view = (await http.get("/health")).json()["llm"]
                assert llm_view["enabled"] is True
                assert llm_view["timeout_s"] == LLM_TIMEOUT_S > MODEL_SECONDS  # the 20 s answer is in time

                # Warm up (the embedder and routing models load with the first ticket), then the baseline: the same
                # requests while no model call is pending.
                warm = await http.post(INGEST, json=ticket_payload("warm-up", "How do I export?"))
                assert warm.status_code == 201, warm.text
                await eventually(lambda: nothing_in_flight(clean_db), within_s=120, what="warm-up ticket decided")
                assert calls_for(llm, "How do I export?"), "the agent never called the model"
                baseline = await measure(http, "before")
                await eventually(lambda: nothing_in_flight(clean_db), within_s=60, what="baseline tickets decided")

                marker = "slow-model-marker-4471"
                llm.script(slow(MODEL_SECONDS, reply_json(ANSWER)))
                posted = await http.post(INGEST, json=ticket_payload("slow-1", f"How do I export? {marker}"))
                assert posted.status_code == 201, posted.text
                slow_id = UUID(posted.json()["ticket_id"])
                await eventually(lambda: truthy_calls(llm, marker), within_s=30, what="the slow model call started")
                called_at = calls_for(llm, marker)[0].received_at
                held = await clean_db.fetchrow(
                    "SELECT lease_token, lease_expires_at, attempt_count FROM tickets WHERE id = $1", slow_id
                )
                assert held is not None and held["attempt_count"] == 1

                during = await measure(http, "during")
                measured_at = time.monotonic()
                detail = (await http.get(f"/api/tickets/{slow_id}")).json()
                # Every request above was answered while the model call was still open.
                assert measured_at < called_at + MODEL_SECONDS
                assert detail["status"] == "in_progress" and not any(a["decision"] for a in detail["attempts"])
                print(f"\nbefore: {baseline.summary()}\nduring: {during.summary()}")
                assert Latencies.p95(during.ingest) < P95_BOUND_S, during.summary()
                assert Latencies.p95(during.admin) < P95_BOUND_S, during.summary()
                assert max(during.ingest + during.admin) < MODEL_SECONDS / 4, during.summary()

                # Past two whole leases, the ticket is still held by the same claim: the heartbeat extended it.
                await eventually(
                    lambda: lease_extended(clean_db, slow_id, held["lease_token"], held["lease_expires_at"]),
                    within_s=MODEL_SECONDS,
                    what="the lease extended past its first expiry",
                )
                await asyncio.sleep(max(0.0, called_at + 2 * LEASE_S - time.monotonic()))
                assert await lease_extended(clean_db, slow_id, held["lease_token"], held["lease_expires_at"])

                await eventually(
                    lambda: decided(http, slow_id), within_s=MODEL_SECONDS + 40, what="the slow ticket decided"
                )
                trace = (await http.get(f"/api/tickets/{slow_id}/trace")).json()
            await eventually(lambda: nothing_in_flight(clean_db), within_s=60, what="every ticket decided")
        finally:
            code = server.stop()
        assert code == 0, server.log()

    # Exactly one attempt and one model call: never rescued, never retried, and the 20 s answer was the one used.
    row = await clean_db.fetchrow("SELECT attempt_count, lease_token FROM tickets WHERE id = $1", slow_id)
    assert row is not None
    assert row["attempt_count"] == 1 and row["lease_token"] == held["lease_token"]
    assert await clean_db.fetchval("SELECT count(*) FROM resolution_attempts WHERE ticket_id = $1", slow_id) == 1
    assert len(calls_for(llm, marker)) == 1
    [attempt] = trace["attempts"]
    draft = next(step for step in attempt["steps"] if step["node"] == "draft")
    assert draft["output"]["drafter"] == "llm"
    assert draft["output"]["llm"]["error"] is None
    assert draft["output"]["llm"]["latency_ms"] >= MODEL_SECONDS * 1000
    # And every other ticket, those posted while the slow call was open included, was processed exactly once.
    assert await clean_db.fetchval("SELECT count(*) FROM tickets WHERE attempt_count <> 1") == 0
    assert await clean_db.fetchval("SELECT count(*) FROM resolution_attempts") == 2 * SAMPLES + 2
    log = server.log_path.read_text(errors="replace")
    assert "lease lost" not in log and "Traceback" not in log, log[-5000:]


async def truthy_calls(llm: FakeOpenAI, marker: str) -> bool:
    return bool(calls_for(llm, marker))


async def lease_extended(pool: asyncpg.Pool, ticket_id: UUID, token: int, first_expiry: Any) -> bool:
    row = await pool.fetchrow(
        """SELECT lease_token, lease_expires_at, lease_expires_at > now() AS live, attempt_count
           FROM tickets WHERE id = $1""",
        ticket_id,
    )
    assert row is not None
    assert row["lease_token"] == token and row["attempt_count"] == 1, dict(row)
    return bool(row["live"] and row["lease_expires_at"] > first_expiry)


async def decided(http: httpx.AsyncClient, ticket_id: UUID) -> bool:
    detail = (await http.get(f"/api/tickets/{ticket_id}")).json()
    return any(attempt["decision"] for attempt in detail["attempts"])
