"""`kill -9` of a real agent worker at every node boundary of a resolved ticket, and inside its delivery by email
and by signed webhook.

The victims are `python -m tests.support.agent_worker --die-at POINT`: the production worker loop around the real
graph, embedding model and fenced decision transaction, which SIGKILLs itself at POINT. The rescuers are the real
`deskpilot worker` command. Replies go by SMTP to an aiosmtpd server in this process, which records every message
whose data reached it; webhook replies go to an HTTP receiver in this process. Leases are 3 s, so rescues happen
within seconds; the promise checked is "within 60 s".

The same victims also stop themselves (`--pause-at`: SIGSTOP past the lease, then SIGCONT after a rescue) and die
on one ticket only (`--ticket`: a poison ticket, parked after DESKPILOT_MAX_ATTEMPTS deaths).

The ticket is a how-to question the agent answers on the example history (decision `deliver`), each from its own
customer: a customer asking the same thing twice is flagged for review instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import json
import os
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from litestar.testing import AsyncTestClient

from agent.graph import PIPELINE
from agent.runner import TicketProcessor
from app.asgi import create_app
from core.metrics import Metrics
from core.settings import PROJECT_ROOT, Settings
from ingest.signatures import verify_webhook
from tests.support.agent_worker import KILL_MARK, PAUSE_MARK, POINTS, AgentWorkerProcess
from tests.support.http_receiver import HttpReceiver, ReceivedRequest
from tests.support.server import free_port
from tests.support.workers import eventually, truthy
from tickets.queue import claim_next_ticket

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(480)]

LEASE_S = 3.0
RESCUE_LIMIT_S = 60.0
# Nine processes share two cores: threads per process only add switching.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
QUESTION: dict[str, Any] = json.loads((PROJECT_ROOT / "examples" / "tickets" / "password-reset.json").read_text())


# --- the mail server ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    message_id: str
    to: str
    body: str
    received_at: float  # time.time()


@dataclass
class SmtpSink:
    """Records every message whose data arrived; when armed, SIGKILLs the sending worker once, either while it
    holds the data unanswered (`DATA`) or after the 250 that accepted it, when the client says QUIT (`QUIT`)."""

    port: int
    received: list[Received] = field(default_factory=list)
    kill_pid: int | None = None
    kill_on: str = "DATA"

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def arm(self, pid: int, on: str) -> None:
        self.kill_pid, self.kill_on = pid, on

    def to(self, address: str) -> list[Received]:
        return [message for message in self.received if message.to == address]

    def _kill_if_armed(self, moment: str) -> None:
        if self.kill_pid is not None and self.kill_on == moment:
            pid, self.kill_pid = self.kill_pid, None
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content
        assert isinstance(raw, bytes)
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        plain = parsed.get_body(preferencelist=("plain",))
        self.received.append(
            Received(str(parsed["Message-ID"]), str(parsed["To"]), plain.get_content() if plain else "", time.time())
        )
        self._kill_if_armed("DATA")
        return "250 Message accepted for delivery"

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self._kill_if_armed("QUIT")
        return "221 Bye"


@contextlib.contextmanager
def smtp_sink() -> Iterator[SmtpSink]:
    sink = SmtpSink(free_port())
    controller = Controller(sink, hostname="127.0.0.1", port=sink.port)
    controller.start()
    try:
        yield sink
    finally:
        controller.stop()


# --- seeding and posting --------------------------------------------------------------------------------------


def worker_env(database_url: str, sink: SmtpSink, data_dir: Path) -> dict[str, str]:
    return {
        "DESKPILOT_DATABASE_URL": database_url,
        "DESKPILOT_DATA_DIR": str(data_dir),
        "DESKPILOT_LEASE_SECONDS": str(LEASE_S),
        "DESKPILOT_POLL_INTERVAL": "0.5",
        "DESKPILOT_SMTP_URL": sink.url,
    }


@dataclass(frozen=True)
class Question:
    ticket_id: UUID
    customer_email: str


async def post_questions(database_url: str, data_dir: Path, count: int, tag: str, **fields: Any) -> list[Question]:
    """The how-to question from `count` new customers, through the real ingest endpoint (which NOTIFYs);
    `fields` replace those of the example (channel, metadata)."""
    settings = Settings.from_mapping({"DESKPILOT_DATABASE_URL": database_url, "DESKPILOT_DATA_DIR": str(data_dir)})
    questions = []
    async with AsyncTestClient(app=create_app(settings, database_url=database_url)) as client:
        for n in range(count):
            address = f"{tag}-{n}-{uuid.uuid4().hex[:6]}@customers.example"
            payload = {
                **QUESTION,
                **fields,
                "external_id": f"kill-{tag}-{n}-{uuid.uuid4().hex}",
                "customer_email": address,
            }
            response = await client.post("/api/webhooks/support/ingest", json=payload)
            assert response.status_code == 201, response.text
            questions.append(Question(UUID(response.json()["ticket_id"]), address))
    return questions


def deliveries_sent(pool: asyncpg.Pool, ticket_ids: list[UUID]) -> Callable[[], Awaitable[bool]]:
    """For `eventually`: every ticket is resolved and its reply marked sent."""

    async def check() -> bool:
        sent: int = await pool.fetchval(
            """SELECT count(DISTINCT t.id) FROM tickets t JOIN deliveries d ON d.ticket_id = t.id
               WHERE t.id = ANY($1) AND t.status = 'resolved' AND d.status = 'sent'""",
            ticket_ids,
        )
        return sent == len(ticket_ids)

    return check


def worker_pattern(process: AgentWorkerProcess) -> str:
    """`resolution_attempts.worker_id` is `host:pid:n`."""
    return f"%:{process.pid}:%"


# --- kill -9 at every point of the graph ----------------------------------------------------------------------


@dataclass
class NodeKills:
    victims: dict[str, AgentWorkerProcess]
    exit_codes: dict[str, int]
    questions: list[Question]
    received: list[Received]


@pytest.fixture(scope="module")
async def node_kills(
    history: int, pool: asyncpg.Pool, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> NodeKills:
    """One victim per point, all at once (each takes one ticket, concurrency 1, and dies on it), then one
    `deskpilot worker` that rescues whatever they left. Victims do not send mail: a victim still alive could
    otherwise take another victim's queued reply and die in the middle of sending it (the tolerated duplicate,
    tested on its own below), which would blur what each point shows."""
    logs = tmp_path_factory.mktemp("agent-faults")
    with smtp_sink() as sink:
        env = worker_env(database_url, sink, logs)
        victims = dict(
            zip(
                POINTS,
                await asyncio.gather(
                    *(
                        AgentWorkerProcess.start(
                            database_url, {**env, **ONE_THREAD}, logs / f"victim-{n}.log", die_at=point, outbox=False
                        )
                        for n, point in enumerate(POINTS)
                    )
                ),
                strict=True,
            )
        )
        rescuer: AgentWorkerProcess | None = None
        try:
            await asyncio.gather(*(victim.wait_listening(within_s=240) for victim in victims.values()))
            questions = await post_questions(database_url, logs, len(POINTS), "node")
            exit_codes = {point: await victim.wait_exit(within_s=60) for point, victim in victims.items()}
            rescuer = await AgentWorkerProcess.start_cli(env, logs / "rescuer.log")
            with rescuer.log_on_failure():
                await eventually(
                    deliveries_sent(pool, [q.ticket_id for q in questions]), within_s=90, what="every ticket answered"
                )
            await asyncio.sleep(1.0)  # room for a duplicate send to show up, if there were one
        finally:
            for process in [*victims.values(), *([rescuer] if rescuer else [])]:
                await process.stop()
        return NodeKills(victims, exit_codes, questions, list(sink.received))


def nodes_run(point: str) -> list[str]:
    """The nodes that had finished when the victim died: the pipeline up to the node it died after, or all of it
    for a death in (or right after) the decision transaction, which deliver runs before its own step."""
    if point.startswith("after:"):
        return list(PIPELINE[: PIPELINE.index(point.removeprefix("after:")) + 1])
    return list(PIPELINE)


async def one_sent_reply(pool: asyncpg.Pool, ticket_id: UUID, attempt_id: UUID) -> asyncpg.Record:
    """The ticket's only outbound message and its delivery: `attempt_id`'s, sent once. Returns the delivery."""
    outbound = await pool.fetch(
        "SELECT id, attempt_id FROM ticket_messages WHERE ticket_id = $1 AND direction = 'outbound'", ticket_id
    )
    assert [m["attempt_id"] for m in outbound] == [attempt_id]
    [delivery] = await pool.fetch(
        """SELECT attempt_id, message_id, idempotency_key, status, tries, sent_at FROM deliveries
           WHERE ticket_id = $1""",
        ticket_id,
    )
    assert (delivery["status"], delivery["tries"]) == ("sent", 1)
    assert delivery["attempt_id"] == attempt_id
    assert delivery["message_id"] == outbound[0]["id"]
    assert delivery["idempotency_key"] == f"<{attempt_id}@deskpilot>"
    return delivery


@pytest.mark.parametrize("point", POINTS)
async def test_a_worker_killed_at_each_point_of_the_graph_leaves_exactly_one_reply(
    node_kills: NodeKills, pool: asyncpg.Pool, point: str
) -> None:
    victim = node_kills.victims[point]
    assert node_kills.exit_codes[point] == -signal.SIGKILL, victim.log()[-3000:]
    assert f"{KILL_MARK} {point} " in victim.log()

    # The victim made one attempt. Its trace holds every step it finished, and none past the point.
    [killed] = await pool.fetch(
        "SELECT id, ticket_id, started_at FROM resolution_attempts WHERE worker_id LIKE $1", worker_pattern(victim)
    )
    ticket_id = killed["ticket_id"]
    steps = [
        row["node"]
        for row in await pool.fetch("SELECT node FROM attempt_steps WHERE attempt_id = $1 ORDER BY seq", killed["id"])
    ]
    ran = nodes_run(point)
    assert steps == ran, steps
    killed_after = killed["started_at"].timestamp()  # a lower bound: the rescue times below are upper bounds

    attempts = await pool.fetch(
        """SELECT id, attempt_no, state, decision, started_at, worker_id FROM resolution_attempts
           WHERE ticket_id = $1 ORDER BY attempt_no""",
        ticket_id,
    )
    ticket = await pool.fetchrow(
        """SELECT status, attempt_count, next_attempt_at, lease_owner, parked_at, needs_review
           FROM tickets WHERE id = $1""",
        ticket_id,
    )
    assert ticket is not None
    if point == "deliver:after-commit":
        # The decision committed before the kill: nothing is redone, the queued reply is sent by the rescuer.
        assert [(a["state"], a["decision"]) for a in attempts] == [("completed", "deliver")]
        completed = attempts[0]
    else:
        # Nothing the victim did counts: its attempt is abandoned when the rescuer claims the ticket again.
        assert [(a["state"], a["decision"]) for a in attempts] == [("abandoned", None), ("completed", "deliver")]
        assert attempts[0]["id"] == killed["id"]
        completed = attempts[1]
        assert completed["worker_id"] != attempts[0]["worker_id"]
        assert completed["started_at"].timestamp() - killed_after < RESCUE_LIMIT_S
    assert ticket["status"] == "resolved"
    assert ticket["attempt_count"] == len(attempts)
    assert ticket["next_attempt_at"] is None
    assert ticket["lease_owner"] is None
    assert ticket["parked_at"] is None
    assert ticket["needs_review"] is False

    # Exactly one reply: one outbound message, one delivery, sent once, keyed by the completed attempt.
    delivery = await one_sent_reply(pool, ticket_id, completed["id"])
    assert delivery["sent_at"].timestamp() - killed_after < RESCUE_LIMIT_S

    # And the mail server saw that one reply, once.
    [question] = [q for q in node_kills.questions if q.ticket_id == ticket_id]
    assert [m.message_id for m in node_kills.received if m.to == question.customer_email] == [
        delivery["idempotency_key"]
    ]


async def test_every_ticket_posted_to_the_victims_was_answered_once(node_kills: NodeKills, pool: asyncpg.Pool) -> None:
    """Across all the kills: one message per ticket reached the mail server, with one Message-ID each."""
    addresses = [q.customer_email for q in node_kills.questions]
    assert sorted(m.to for m in node_kills.received) == sorted(addresses)
    keys = await pool.fetch(
        "SELECT idempotency_key FROM deliveries WHERE ticket_id = ANY($1)", [q.ticket_id for q in node_kills.questions]
    )
    assert sorted(m.message_id for m in node_kills.received) == sorted(k["idempotency_key"] for k in keys)


# --- kill -9 inside the SMTP delivery -------------------------------------------------------------------------


async def answer_in_this_process(pool: asyncpg.Pool, settings: Settings, embedder: Any) -> None:
    """Run the queued ticket through the real processor here (this process has the model loaded already)."""
    async with pool.acquire() as conn:
        claim = await claim_next_ticket(conn, "test-process", 30.0)
    assert claim is not None
    assert await TicketProcessor(pool, settings, Metrics(), embedder=embedder)(claim) == "deliver"


@pytest.mark.parametrize(
    "moment", ["DATA", "QUIT"], ids=["killed-while-the-server-holds-the-data", "killed-after-the-250"]
)
async def test_a_worker_killed_inside_smtp_delivery_resends_with_the_same_message_id(
    history: int,
    pool: asyncpg.Pool,
    database_url: str,
    embedder: Any,
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    moment: str,
) -> None:
    """The crash window the promise tolerates: the mail server has the message, our commit has not happened.
    The reply is sent again by the next worker, with the same Message-ID, and is never a second reply."""
    with smtp_sink() as sink:
        env = worker_env(database_url, sink, tmp_path)
        [question] = await post_questions(database_url, tmp_path, 1, f"smtp-{moment.lower()}")
        await answer_in_this_process(pool, make_settings(), embedder)
        # The outbox is drained by the worker loop: `deskpilot worker` here, the same loop inside `deskpilot serve`.
        victim = await AgentWorkerProcess.start_cli(env, tmp_path / "victim.log", concurrency=1)
        rescuer: AgentWorkerProcess | None = None
        try:
            sink.arm(victim.pid, moment)  # long before it can reach the mail server: it is still starting Python
            assert await victim.wait_exit(within_s=60) == -signal.SIGKILL, victim.log()[-3000:]
            [first_copy] = sink.to(question.customer_email)

            delivery = await pool.fetchrow(
                "SELECT id, idempotency_key, status, tries, lease_owner FROM deliveries WHERE ticket_id = $1",
                question.ticket_id,
            )
            assert delivery is not None
            assert delivery["status"] == "pending"  # sent, but not recorded: the victim died first
            assert delivery["tries"] == 1
            assert f":{victim.pid}:" in delivery["lease_owner"]
            assert first_copy.message_id == delivery["idempotency_key"]

            # The dead sender's lease on the delivery runs out; the next worker takes the send over.
            rescuer = await AgentWorkerProcess.start_cli(env, tmp_path / "rescuer.log", concurrency=1)
            with rescuer.log_on_failure():
                await eventually(deliveries_sent(pool, [question.ticket_id]), within_s=RESCUE_LIMIT_S, what="re-sent")
            await asyncio.sleep(1.0)  # room for a third copy to show up, if there were one
        finally:
            for process in [victim, *([rescuer] if rescuer else [])]:
                await process.stop()

    copies = sink.to(question.customer_email)
    assert len(copies) == 2
    assert {c.message_id for c in copies} == {delivery["idempotency_key"]}
    assert copies[0].body == copies[1].body
    row = await answered_once_by_a_resend(pool, question.ticket_id, delivery["id"])
    assert row["sent_at"].timestamp() - first_copy.received_at < RESCUE_LIMIT_S  # the kill came after the copy
    assert delivery["idempotency_key"] == f"<{row['attempt_id']}@deskpilot>"


async def answered_once_by_a_resend(pool: asyncpg.Pool, ticket_id: UUID, delivery_id: UUID) -> asyncpg.Record:
    """The ticket's one reply, sent twice by the crash window: one attempt, one message, one delivery, which
    ended `sent` on its second try; the ticket resolved. Returns the delivery row."""
    row = await pool.fetchrow("SELECT status, tries, attempt_id, sent_at FROM deliveries WHERE id = $1", delivery_id)
    assert row is not None
    assert (row["status"], row["tries"]) == ("sent", 2)
    attempts = await pool.fetch("SELECT state, decision FROM resolution_attempts WHERE ticket_id = $1", ticket_id)
    assert [(a["state"], a["decision"]) for a in attempts] == [("completed", "deliver")]
    outbound = "SELECT count(*) FROM ticket_messages WHERE ticket_id = $1 AND direction = 'outbound'"
    assert await pool.fetchval(outbound, ticket_id) == 1
    assert await pool.fetchval("SELECT count(*) FROM deliveries WHERE ticket_id = $1", ticket_id) == 1
    assert await pool.fetchval("SELECT status FROM tickets WHERE id = $1", ticket_id) == "resolved"
    return row


# --- kill -9 inside the signed webhook delivery ---------------------------------------------------------------

CALLBACK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
CALLBACK_PATH = "/integrations/acme/replies"


def kill_once(pid: int, seen_at: list[float]) -> Callable[[ReceivedRequest], None]:
    """A receiver hook that SIGKILLs `pid` the first time it runs, noting when (time.time())."""

    def hook(request: ReceivedRequest) -> None:
        if not seen_at:
            seen_at.append(time.time())
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    return hook


@pytest.mark.parametrize(
    "moment",
    ["request", "replied"],
    ids=["killed-while-the-receiver-holds-the-request", "killed-after-the-2xx"],
)
async def test_a_worker_killed_inside_webhook_delivery_resends_with_the_same_webhook_id(
    history: int,
    pool: asyncpg.Pool,
    database_url: str,
    embedder: Any,
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    moment: str,
) -> None:
    """The same crash window on the webhook channel: the callback has the signed POST (held unanswered, or
    answered 2xx), our commit has not happened. The next worker sends it again with the same `webhook-id`, so the
    integration can drop it, and it is never a second reply. The callback URL is the ticket's own (metadata), on
    loopback, which the SSRF guard allows only with DESKPILOT_ALLOW_PRIVATE_CALLBACKS."""
    receiver = await HttpReceiver().start()
    env = {
        "DESKPILOT_DATABASE_URL": database_url,
        "DESKPILOT_DATA_DIR": str(tmp_path),
        "DESKPILOT_LEASE_SECONDS": str(LEASE_S),
        "DESKPILOT_POLL_INTERVAL": "0.5",
        "DESKPILOT_CALLBACK_SECRET": CALLBACK_SECRET,
        "DESKPILOT_ALLOW_PRIVATE_CALLBACKS": "true",
        "DESKPILOT_CALLBACK_HOSTS": "127.0.0.1",  # the ticket's own callback URL, on loopback
    }
    killed_at: list[float] = []
    victim: AgentWorkerProcess | None = None
    rescuer: AgentWorkerProcess | None = None
    try:
        [question] = await post_questions(
            database_url,
            tmp_path,
            1,
            f"hook-{moment}",
            channel="webhook",
            metadata={"callback_url": receiver.url(CALLBACK_PATH)},
        )
        await answer_in_this_process(pool, make_settings(DESKPILOT_CALLBACK_HOSTS="127.0.0.1"), embedder)
        victim = await AgentWorkerProcess.start_cli(env, tmp_path / "victim.log", concurrency=1)
        # Armed long before the victim can reach the receiver: it is still starting Python.
        hook = kill_once(victim.pid, killed_at)
        if moment == "request":
            receiver.on_request = hook  # the request has arrived whole; the answer is not written yet
        else:
            receiver.on_replied = hook  # the 200 has just been written to the socket
        assert await victim.wait_exit(within_s=60) == -signal.SIGKILL, victim.log()[-3000:]
        [first_copy] = receiver.requests

        delivery = await pool.fetchrow(
            """SELECT id, channel, idempotency_key, recipient, body, status, tries, lease_owner FROM deliveries
               WHERE ticket_id = $1""",
            question.ticket_id,
        )
        assert delivery is not None
        assert delivery["channel"] == "webhook"
        assert delivery["recipient"] == receiver.url(CALLBACK_PATH)  # the ticket's own URL, where it was sent
        assert delivery["status"] == "pending"  # received, but not recorded: the victim died first
        assert delivery["tries"] == 1
        assert f":{victim.pid}:" in delivery["lease_owner"]
        assert first_copy.headers["webhook-id"] == delivery["idempotency_key"]

        # The dead sender's lease on the delivery runs out; the next worker takes the send over.
        rescuer = await AgentWorkerProcess.start_cli(env, tmp_path / "rescuer.log", concurrency=1)
        with rescuer.log_on_failure():
            await eventually(deliveries_sent(pool, [question.ticket_id]), within_s=RESCUE_LIMIT_S, what="re-sent")
        await asyncio.sleep(1.0)  # room for a third copy to show up, if there were one
    finally:
        for process in [p for p in (victim, rescuer) if p is not None]:
            await process.stop()
        await receiver.stop()

    # Two copies of one reply: same webhook-id (the deliveries row's key), each validly signed, byte-identical
    # bodies (a receiver that refuses a reused Idempotency-Key with another payload accepts the re-send).
    copies = list(receiver.requests)
    assert len(copies) == 2
    key = delivery["idempotency_key"]
    assert [c.headers["webhook-id"] for c in copies] == [key, key]
    assert [verify_webhook(CALLBACK_SECRET, c.headers, c.body) for c in copies] == [key, key]
    assert [(c.method, c.path) for c in copies] == [("POST", CALLBACK_PATH)] * 2
    assert copies[1].body == copies[0].body
    # Only the signature's timestamp is the time of each send (the re-send comes a lease later).
    assert int(copies[1].headers["webhook-timestamp"]) > int(copies[0].headers["webhook-timestamp"])
    payloads = [json.loads(c.body) for c in copies]
    assert payloads[0]["ticket_id"] == str(question.ticket_id)
    assert payloads[0]["customer_email"] == question.customer_email
    assert payloads[0]["body"] == delivery["body"]

    row = await answered_once_by_a_resend(pool, question.ticket_id, delivery["id"])
    assert row["sent_at"].timestamp() - killed_at[0] < RESCUE_LIMIT_S
    assert key == str(row["attempt_id"]) == payloads[0]["attempt_id"]
    assert await pool.fetchval("SELECT channel FROM tickets WHERE id = $1", question.ticket_id) == "webhook"


# --- SIGSTOP past the lease -----------------------------------------------------------------------------------

PAUSE_POINT = "after:draft"


async def test_a_real_agent_worker_paused_past_its_lease_sends_nothing_after_it_resumes(
    history: int, pool: asyncpg.Pool, database_url: str, tmp_path: Path
) -> None:
    """A real agent worker stops itself (SIGSTOP, heartbeats and all) once `draft` is done, before its decision.
    Its lease runs out; `deskpilot worker` takes the ticket over and answers it. Resumed, the paused worker runs
    on from its next node, and meets the fence: its decision transaction is refused (lease token superseded), or
    its heartbeat finds the token superseded first and cancels its processing. Nothing it does afterwards reaches
    the database's decision tables or the mail server."""
    with smtp_sink() as sink:
        env = worker_env(database_url, sink, tmp_path)
        paused = await AgentWorkerProcess.start(
            database_url, {**env, **ONE_THREAD}, tmp_path / "paused.log", pause_at=PAUSE_POINT
        )
        rescuer: AgentWorkerProcess | None = None
        try:
            await paused.wait_listening(within_s=120)
            [question] = await post_questions(database_url, tmp_path, 1, "paused")
            ticket_id = question.ticket_id
            await paused.wait_log(f"{PAUSE_MARK} {PAUSE_POINT} (ticket {ticket_id})", within_s=60)
            await eventually(lambda: truthy(paused.stopped()), within_s=10, what="the worker stopped")

            rescuer = await AgentWorkerProcess.start_cli(env, tmp_path / "rescuer.log", concurrency=1)
            with rescuer.log_on_failure():
                await eventually(deliveries_sent(pool, [ticket_id]), within_s=RESCUE_LIMIT_S, what="rescued")
            assert paused.stopped()  # paused all along: the rescue did not wait for it
            [first, second] = await pool.fetch(
                "SELECT lease_token FROM resolution_attempts WHERE ticket_id = $1 ORDER BY attempt_no", ticket_id
            )
            paused_token, rescuer_token = first["lease_token"], second["lease_token"]
            assert rescuer_token > paused_token

            paused.signal(signal.SIGCONT)
            refusal = (
                f"ticket {ticket_id}: lease lost, completion refused: "
                f"ticket {ticket_id}: lease token {paused_token} superseded by {rescuer_token}"
            )
            cancelling = (
                f"ticket {ticket_id}: lease lost (token {paused_token} superseded by {rescuer_token}); "
                "cancelling its processing"
            )
            with paused.log_on_failure():
                await eventually(
                    lambda: truthy(refusal in paused.log() or cancelling in paused.log()),
                    within_s=30,
                    what="the resumed worker fenced out",
                )
                await asyncio.sleep(3.0)  # room for anything it might still write or send
                assert paused.process.returncode is None  # alive, and working on
        finally:
            for process in [paused, *([rescuer] if rescuer else [])]:
                await process.stop()
        received = list(sink.received)

    assert f"ticket {ticket_id} attempt" not in paused.log()  # the worker's line for a completed attempt

    # Two attempts: the paused one superseded when the rescuer started its own, which alone has a decision.
    attempts = await pool.fetch(
        """SELECT id, state, decision, error, worker_id, finished_at FROM resolution_attempts
           WHERE ticket_id = $1 ORDER BY attempt_no""",
        ticket_id,
    )
    assert [(a["state"], a["decision"]) for a in attempts] == [("abandoned", None), ("completed", "deliver")]
    stale, completed = attempts
    assert stale["error"] == "superseded by attempt 2"
    assert f":{paused.pid}:" in stale["worker_id"]
    assert rescuer is not None and f":{rescuer.pid}:" in completed["worker_id"]
    # The paused attempt's trace: every node up to the pause; whatever it ran after it resumed is trace only,
    # and a decision node it reached failed on the fence.
    steps = await pool.fetch("SELECT node, error FROM attempt_steps WHERE attempt_id = $1 ORDER BY seq", stale["id"])
    ran = nodes_run(PAUSE_POINT)
    assert [s["node"] for s in steps][: len(ran)] == ran
    for step in steps[len(ran) :]:
        if step["node"] not in PIPELINE:
            assert step["error"].startswith("LeaseLost: "), step

    ticket = await pool.fetchrow(
        """SELECT status, attempt_count, failure_count, last_error, next_attempt_at, lease_owner, parked_at,
                  needs_review
           FROM tickets WHERE id = $1""",
        ticket_id,
    )
    assert ticket is not None
    assert ticket["status"] == "resolved"
    assert ticket["attempt_count"] == 2
    assert ticket["failure_count"] == 1  # the rescuer's claim counted the holder that stopped
    assert ticket["last_error"] is None  # the rescuer's completion cleared it; the refusal recorded nothing
    assert ticket["next_attempt_at"] is None
    assert ticket["lease_owner"] is None
    assert ticket["parked_at"] is None
    assert ticket["needs_review"] is False

    # One reply: one outbound message and one delivery, the completed attempt's, sent once.
    delivery = await one_sent_reply(pool, ticket_id, completed["id"])
    assert [(m.to, m.message_id) for m in received] == [(question.customer_email, delivery["idempotency_key"])]


# --- a ticket that kills every worker that takes it -----------------------------------------------------------

MAX_ATTEMPTS = 2
POISON_POINT = "after:classify"


def lease_run_out(pool: asyncpg.Pool, ticket_id: UUID) -> Callable[[], Awaitable[bool]]:
    """For `eventually`: nobody holds a live lease on the ticket."""

    async def check() -> bool:
        free: bool = await pool.fetchval(
            "SELECT lease_expires_at IS NULL OR lease_expires_at < now() FROM tickets WHERE id = $1", ticket_id
        )
        return free

    return check


async def test_a_ticket_that_kills_every_worker_is_parked_and_the_rest_flow(
    history: int, pool: asyncpg.Pool, database_url: str, tmp_path: Path
) -> None:
    """Every worker that runs one ticket dies on it (SIGKILL once `classify` is done with it), as a ticket that
    crashes the interpreter or exhausts memory would; a normal ticket is posted alongside. As a supervisor
    would, the test starts a new worker after each death, each armed the same way. With
    DESKPILOT_MAX_ATTEMPTS=2, two workers die; the third claims the ticket, counts the two holders that vanished,
    and parks it without running it; it answers the other ticket, once."""
    with smtp_sink() as sink:
        env = {**worker_env(database_url, sink, tmp_path), **ONE_THREAD, "DESKPILOT_MAX_ATTEMPTS": str(MAX_ATTEMPTS)}
        [poison] = await post_questions(database_url, tmp_path, 1, "poison")
        [good] = await post_questions(database_url, tmp_path, 1, "good")  # queued behind the poison ticket

        async def parked() -> bool:
            return bool(
                await pool.fetchval("SELECT parked_at IS NOT NULL FROM tickets WHERE id = $1", poison.ticket_id)
            )

        workers: list[AgentWorkerProcess] = []
        try:
            for n in range(MAX_ATTEMPTS + 2):  # room for one death too many, if parking did not stop it
                if await parked():
                    break
                # Each replacement starts once the dead worker's lease ran out, so that the poison ticket (the
                # older one) is the first it claims: a worker that answered the good ticket and then died on the
                # poison one could die while sending that reply (the tolerated duplicate, tested above).
                await eventually(lease_run_out(pool, poison.ticket_id), within_s=2 * LEASE_S, what="lease run out")
                worker = await AgentWorkerProcess.start(
                    database_url, env, tmp_path / f"worker-{n}.log", die_at=POISON_POINT, ticket=poison.ticket_id
                )
                workers.append(worker)

                async def died_or_parked(worker: AgentWorkerProcess = worker) -> bool:
                    return worker.process.returncode is not None or await parked()

                with worker.log_on_failure():
                    await worker.wait_listening(within_s=120)
                    await eventually(died_or_parked, within_s=60, what=f"worker {n} died, or the ticket was parked")
            survivor = workers[-1]
            with survivor.log_on_failure():
                await eventually(deliveries_sent(pool, [good.ticket_id]), within_s=RESCUE_LIMIT_S, what="answered")
                await asyncio.sleep(2.0)  # four poll intervals: a parked ticket is not claimed again
                assert survivor.process.returncode is None
        finally:
            for process in workers:
                await process.stop()
        received = list(sink.received)

    # Exactly MAX_ATTEMPTS deaths, each on the poison ticket after `classify`; the next worker lived.
    exits = [w.process.returncode for w in workers]
    assert exits == [-signal.SIGKILL] * MAX_ATTEMPTS + [0], exits  # the survivor exited on SIGTERM
    for worker in workers[:MAX_ATTEMPTS]:
        assert f"{KILL_MARK} {POISON_POINT} (ticket {poison.ticket_id})" in worker.log()
    survivor_log = survivor.log()
    assert KILL_MARK not in survivor_log
    assert (
        f"ticket {poison.ticket_id} parked after {MAX_ATTEMPTS} failed attempts; last error: "
        f"tickets.queue.HoldersVanished: {MAX_ATTEMPTS} attempts ended without finishing"
    ) in survivor_log

    # Parked with its error, out of the queue, left for review; never dispatched, nothing written for it.
    ticket = await pool.fetchrow(
        """SELECT status, attempt_count, failure_count, last_error, lease_owner, lease_expires_at, parked_at,
                  needs_review
           FROM tickets WHERE id = $1""",
        poison.ticket_id,
    )
    assert ticket is not None
    assert ticket["parked_at"] is not None
    assert ticket["needs_review"] is True
    assert ticket["last_error"].startswith(
        f"tickets.queue.HoldersVanished: {MAX_ATTEMPTS} attempts ended without finishing "
        "(worker killed, out of memory or cut off)"
    )
    assert ticket["status"] == "open"
    assert ticket["attempt_count"] == MAX_ATTEMPTS + 1  # the claims: one per death, and the one that parked it
    assert ticket["failure_count"] == MAX_ATTEMPTS + 1  # the holders that vanished, and the parking itself
    assert ticket["lease_owner"] is None
    assert ticket["lease_expires_at"] is None
    # One attempt per death, each with the one step it finished; none has a decision, and the parking claim ran
    # no attempt at all.
    attempts = await pool.fetch(
        """SELECT id, state, decision, worker_id, error, finished_at FROM resolution_attempts
           WHERE ticket_id = $1 ORDER BY attempt_no""",
        poison.ticket_id,
    )
    assert len(attempts) == MAX_ATTEMPTS
    for attempt, worker in zip(attempts, workers, strict=False):
        assert f":{worker.pid}:" in attempt["worker_id"]
    assert [a["decision"] for a in attempts] == [None] * MAX_ATTEMPTS
    # Each attempt ended (the first superseded by the second, the last when the ticket was parked): none is left
    # "running" in the trace of a ticket nobody will run again.
    assert [a["state"] for a in attempts] == ["abandoned"] * MAX_ATTEMPTS
    assert all(a["finished_at"] is not None for a in attempts)
    assert attempts[-1]["error"] == "its worker stopped before finishing; the ticket was parked"
    for attempt in attempts:
        steps = await pool.fetch("SELECT node FROM attempt_steps WHERE attempt_id = $1 ORDER BY seq", attempt["id"])
        assert [s["node"] for s in steps] == nodes_run(POISON_POINT)
    assert await pool.fetchval("SELECT count(*) FROM deliveries WHERE ticket_id = $1", poison.ticket_id) == 0
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM ticket_messages WHERE ticket_id = $1 AND direction = 'outbound'", poison.ticket_id
        )
        == 0
    )

    # The other ticket flowed: answered by the survivor, one attempt, one reply sent once.
    attempts = await pool.fetch(
        "SELECT id, state, decision, worker_id FROM resolution_attempts WHERE ticket_id = $1", good.ticket_id
    )
    assert [(a["state"], a["decision"]) for a in attempts] == [("completed", "deliver")]
    assert f":{survivor.pid}:" in attempts[0]["worker_id"]
    [delivery] = await pool.fetch(
        "SELECT attempt_id, idempotency_key, status, tries FROM deliveries WHERE ticket_id = $1", good.ticket_id
    )
    assert (delivery["attempt_id"], delivery["status"], delivery["tries"]) == (attempts[0]["id"], "sent", 1)
    assert await pool.fetchval("SELECT status FROM tickets WHERE id = $1", good.ticket_id) == "resolved"
    assert [(m.to, m.message_id) for m in received] == [(good.customer_email, delivery["idempotency_key"])]
