"""Soak: ingest at a fixed rate into two worker processes running the real agent while workers are killed and
PostgreSQL restarts; counts what was accepted, lost and duplicated, and which replies reached their sinks.

    python bench/soak.py [--minutes 5] [--rate 5] [--quick] [--seed 7] [--keep]

Everything runs as real processes on loopback, on one throwaway embedded PostgreSQL:

- `deskpilot serve --no-worker`: the API alone. Its in-process worker stays off so that the two worker processes
  are the only consumers (a third one inside the API would hide a killed worker's tickets, and would put the
  model on the ingest process's cores and event loop, blurring the ingest latency).
- two `deskpilot worker` processes: the real agent (MiniLM, offline drafter) and the outbox senders, lease 5 s,
  poll 0.5 s, so a killed worker's ticket is rescued within seconds.
- this driver (never the server): seeds the demo knowledge base, past resolutions and customers of `examples/`
  (in a child process, so the model never loads here), runs an SMTP sink (aiosmtpd) and a webhook receiver that
  record each reply's Message-ID / `webhook-id`, runs the load, and injects the faults:
  * every minute, half-way through it, one worker (alternately) is SIGKILLed — at a moment it holds a ticket,
    waiting up to 5 s for one — and a new one is started at once;
  * on a minute boundary PostgreSQL is stopped `immediate` (runs of 4 minutes or more: once `fast`, once
    `immediate`), kept down `--outage-s`, and started again.
  `--quick` (about a minute and a half in all): a smaller knowledge base, 30 s of traffic, one kill at 10 s,
  one `immediate` restart at 18 s.

Before the clock starts, warm-up tickets are posted until each worker has decided one (its model loaded, as in a
service that has been running a while; a restarted worker loads its model again, and that counts). Traffic is
`--rate` posts per second at fixed times (open loop), signed with Standard Webhooks: about 8 % replay an earlier
request later, 7 % are concurrent duplicates (the same request twice at once), 7 % are follow-ups by
`thread_ref`, the rest are new tickets written from the examples, on email (45 %), in_app (40 %) and webhook
(15 %). A 503 (Retry-After honoured, capped at 5 s) or a refused connection is retried by the client, as a real
sender would; only a 2xx counts as accepted. The default 5/s is about half of what the two workers kept up with
on the 2-core development machine (at 12/s they fell behind: ratio 0.80).

When the traffic stops the driver waits (at most `--drain-s`) until every ticket has a decision and the outbox
is empty. A reply whose send outcome was never recorded (its sender was killed, or the database went away,
mid-send) is sent again with the same id once its delivery lease (one worker lease, 5 s here) has run out;
the drain waits for that too. Then the services stop and the driver
counts, in SQL and at the sinks:

- accepted: distinct external ids that got a 2xx;
- lost: accepted ids without their ticket (or follow-up message) row, plus tickets without a decision — a
  completed attempt that replied, flagged or escalated, and no work due on the ticket — or a parked ticket
  with its error recorded;
- duplicated: an external id stored twice, answered with two different ticket ids, or with 201 twice;
- replies_duplicated: more agent replies on a ticket than customer messages, more than one reply or outbound
  message for one attempt, or a Message-ID / webhook-id arriving that no delivery explains; resent_same_id
  counts the tolerated window apart (the same id received again);
- replies_missing: deliveries marked sent whose id never reached the sink; replies_stuck: replies still in
  the outbox that are not in the unrecorded window;
- p50/p99 latency of the 2xx answers (all; `_calm` and `_outage` split them by whether the request was sent
  between a database stop and 5 s after its return), of a ticket's commit to its first decision, and of a
  decision to its reply being sent.

ratio — decision throughput against the offered rate, both from the same run: (span of ticket arrivals) /
(span from the first arrival to the last first decision). 1.0 means tickets were decided as fast as they
arrived, faults included; it drops as the workers fall behind: 0.8 means finishing the work took 25 % longer
than the traffic did.

Prints a summary to stderr and one JSON line to stdout (the last line). Exits 1 when anything was lost or
duplicated, a reply was duplicated, missing or stuck, a process crashed, or the API answered a 5xx other than
503 or a 4xx to a valid request, or a sender gave up; 2 when the soak could not run. Every process it started
and every file it wrote are removed at the end (`--keep` keeps the logs), on SIGTERM and Ctrl-C too.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import email
import email.policy
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import asyncpg  # noqa: E402
import httpx  # noqa: E402

from core import db  # noqa: E402
from ingest.signatures import standard_webhook_headers  # noqa: E402
from tests.support.http_receiver import HttpReceiver  # noqa: E402
from tests.support.pg import ThrowawayPostgres  # noqa: E402
from tests.support.server import free_port  # noqa: E402

EXAMPLES = REPO / "examples"
INGEST_PATH = "/api/webhooks/support/ingest"
LEASE_S = 5.0
POLL_S = 0.5
WORKER_CONCURRENCY = 2
RETRY_AFTER_CAP_S = 5.0
KILL_AIM_S = 5.0
GIVE_UP_S = 120.0  # a sender that still has no 2xx after this gives up (counted, never silently)
OUTAGE_TAIL_S = 5.0  # answers this long after PostgreSQL is back still count as "during the outage"
CHANNELS = (("email", 0.45), ("in_app", 0.40), ("webhook", 0.15))
OPENERS = ("", "Hi,\n\n", "Hello team,\n\n", "Good morning,\n\n", "Hey there,\n\n")
CLOSERS = ("", "\n\nThanks!", "\n\nBest regards", "\n\nThank you for your help.", "\n\nCheers")
FOLLOW_UPS = (
    "Any news on this? We are still stuck.",
    "Thanks for the quick answer. One more question: does this also apply to the other workspaces we own?",
    "I tried that but it did not change anything. What else can I do?",
    "Adding a detail: this started after we invited two new teammates yesterday.",
)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[int(q * (len(ordered) - 1))]


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(1000 * seconds, 1)


# --- the plan -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    traffic_s: float
    kills_at: tuple[float, ...]
    restarts_at: tuple[tuple[float, Literal["fast", "immediate"]], ...]
    outage_s: float
    drain_s: float
    full_demo: bool

    @classmethod
    def build(cls, *, minutes: float, quick: bool, outage_s: float, drain_s: float | None) -> Plan:
        if quick:
            # About a minute in all: 30 s of traffic, one kill, one immediate restart, fault-free first 10 s.
            return cls(
                30.0,
                (10.0,),
                ((18.0, "immediate"),),
                outage_s,
                drain_s or 45.0,
                full_demo=False,
            )
        traffic_s = 60.0 * minutes
        # Kills half-way through each minute, restarts on minute boundaries: the two faults never overlap.
        kills = tuple(t for t in (30.0 + 60.0 * k for k in range(int(minutes) + 1)) if t < traffic_s - 10.0)
        boundaries = [60.0 * m for m in range(1, int(minutes) + 1) if 60.0 * m < traffic_s - 15.0]
        restarts: list[tuple[float, Literal["fast", "immediate"]]]
        if minutes >= 4:
            third = len(boundaries) // 3
            restarts = [(boundaries[third], "fast"), (boundaries[2 * third], "immediate")]
        elif boundaries:
            restarts = [(boundaries[len(boundaries) // 2], "immediate")]
        else:
            restarts = [(max(15.0, traffic_s / 2 - 15.0), "immediate")]
        # The drain bound leaves room for re-sends (same id) of replies whose outcome was never recorded.
        return cls(
            traffic_s,
            kills,
            tuple(restarts),
            outage_s,
            drain_s or 150.0,
            full_demo=True,
        )


# --- child processes ------------------------------------------------------------------------------------------


class Child:
    """A child process in its own session, so that it and anything it started can be signalled as a group."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self.killed_by_us = False
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)

    def kill(self) -> None:
        self.killed_by_us = True
        self.signal_group(signal.SIGKILL)
        self.process.wait()

    def stop(self, timeout_s: float = 35.0) -> int:
        """SIGTERM (graceful), then SIGKILL of the whole group after `timeout_s`."""
        if self.alive():
            self.signal_group(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.killed_by_us = True
                self.signal_group(signal.SIGKILL)
                self.process.wait()
        self.signal_group(signal.SIGKILL)  # stragglers of the group, if any
        return self.process.returncode


# --- sinks ----------------------------------------------------------------------------------------------------


@dataclass
class MailSink:
    """An SMTP server (aiosmtpd, its own thread) that keeps each received message's Message-ID."""

    received: list[tuple[str, float]] = field(default_factory=list)
    controller: Any = None
    port: int = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = envelope.original_content or envelope.content
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        self.received.append((str(parsed.get("Message-ID", "")).strip(), time.monotonic()))
        return "250 Message accepted for delivery"

    def start(self) -> None:
        from aiosmtpd.controller import Controller

        self.port = free_port()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            with contextlib.suppress(Exception):
                self.controller.stop()
            self.controller = None

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"


# --- the load -------------------------------------------------------------------------------------------------


@dataclass
class Post:
    external_id: str
    kind: Literal["new", "followup"]
    payload: dict[str, Any]
    body: bytes


@dataclass
class Exchange:
    sent_at: float
    latency_s: float
    status: int


def ticket_corpus() -> list[tuple[str, str]]:
    """(subject, body) pairs written from the examples: past resolutions and the sample tickets."""
    corpus = []
    for line in (EXAMPLES / "resolutions.jsonl").read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            corpus.append((record.get("subject") or "", record["body"]))
    for path in sorted((EXAMPLES / "tickets").glob("*.json")):
        record = json.loads(path.read_text())
        if not record.get("thread_ref"):
            corpus.append((record.get("subject") or "", record["body"]))
    return corpus


def customer_pool() -> list[tuple[str, str]]:
    """The demo customers (with account context) and 150 unknown ones."""
    known = []
    for line in (EXAMPLES / "customers.jsonl").read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            known.append((record["email"], record.get("name") or ""))
    unknown = [(f"soak-user-{n}@customers.example", f"Soak User {n}") for n in range(150)]
    return known + unknown


class Load:
    """Posts at fixed times (open loop); each post is its own task, retried on 503 and connection errors."""

    def __init__(self, secret: str, rate: float, seconds: float, rng: random.Random) -> None:
        self.secret = secret
        self.rate = rate
        self.seconds = seconds
        self.rng = rng
        self.corpus = ticket_corpus()
        self.customers = customer_pool()
        self.posts: dict[str, Post] = {}
        self.sent_ids: list[str] = []
        self.accepted_new: list[str] = []
        self.exchanges: list[Exchange] = []
        self.answers: dict[str, list[tuple[int, str]]] = defaultdict(list)  # id -> [(status, ticket_id)]
        self.accept_latency_s: list[float] = []
        self.actions: Counter[str] = Counter()
        self.retries = 0
        self.transport_errors = 0
        self.gave_up: set[str] = set()
        self.server_errors: list[tuple[str, int, str]] = []
        self.refused: list[tuple[str, int, str]] = []
        self.started_at = 0.0
        self.warmup_ids: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._n = 0

    # what to send

    def new_post(self) -> Post:
        self._n += 1
        external_id = f"soak-{self._n:06d}"
        subject, body = self.rng.choice(self.corpus)
        email_address, name = self.rng.choice(self.customers)
        channel = self.rng.choices([c for c, _ in CHANNELS], [w for _, w in CHANNELS])[0]
        payload = {
            "external_id": external_id,
            "channel": channel,
            "customer_email": email_address,
            "customer_name": name,
            "subject": subject,
            "body": self.rng.choice(OPENERS) + body + self.rng.choice(CLOSERS),
            "metadata": {"source": "soak"},
        }
        return self._register(Post(external_id, "new", payload, json.dumps(payload).encode()))

    def _followup_post(self, parent_id: str) -> Post:
        self._n += 1
        parent = self.posts[parent_id].payload
        external_id = f"soak-{self._n:06d}"
        payload = {
            "external_id": external_id,
            "channel": parent["channel"],
            "customer_email": parent["customer_email"],
            "subject": "Re: " + (parent["subject"] or "my question"),
            "body": self.rng.choice(FOLLOW_UPS),
            "thread_ref": parent_id,
        }
        return self._register(Post(external_id, "followup", payload, json.dumps(payload).encode()))

    def _register(self, post: Post) -> Post:
        self.posts[post.external_id] = post
        self.sent_ids.append(post.external_id)
        return post

    def _next(self) -> list[Post]:
        """One scheduled slot: usually one post, a concurrent duplicate is the same post twice."""
        roll = self.rng.random()
        if roll < 0.08 and self.sent_ids:
            self.actions["replay"] += 1
            return [self.posts[self.rng.choice(self.sent_ids)]]
        if roll < 0.15:
            self.actions["concurrent_duplicate"] += 1
            post = self.new_post()
            return [post, post]
        if roll < 0.22 and self.accepted_new:
            self.actions["followup"] += 1
            return [self._followup_post(self.rng.choice(self.accepted_new))]
        self.actions["new"] += 1
        return [self.new_post()]

    # sending

    async def run(self, http: httpx.AsyncClient) -> None:
        self.started_at = time.monotonic()
        slot = 0
        while True:
            due = self.started_at + slot / self.rate
            if due - self.started_at >= self.seconds:
                break
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            for post in self._next():
                self.spawn(http, post)
            slot += 1

    def spawn(self, http: httpx.AsyncClient, post: Post) -> None:
        task = asyncio.create_task(self._deliver(http, post))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def finish(self) -> None:
        """Wait for every post still retrying (each gives up after GIVE_UP_S); a post that raised is a bug here."""
        while self._tasks:
            for outcome in await asyncio.gather(*list(self._tasks), return_exceptions=True):
                if isinstance(outcome, BaseException):
                    raise outcome

    async def _deliver(self, http: httpx.AsyncClient, post: Post) -> None:
        first = time.monotonic()
        failures = 0
        while True:
            headers = {"content-type": "application/json"}
            headers.update(standard_webhook_headers(self.secret, f"msg_{post.external_id}", post.body))
            sent = time.monotonic()
            delay: float
            try:
                response = await http.post(INGEST_PATH, content=post.body, headers=headers)
            except httpx.TransportError:
                self.transport_errors += 1
                failures += 1
                delay = min(RETRY_AFTER_CAP_S, 0.2 * 2**failures)
            else:
                status = response.status_code
                self.exchanges.append(Exchange(sent, time.monotonic() - sent, status))
                if 200 <= status < 300:
                    ticket_id = str(response.json().get("ticket_id"))
                    self.answers[post.external_id].append((status, ticket_id))
                    self.accept_latency_s.append(time.monotonic() - first)
                    if status == 201 and post.kind == "new":
                        self.accepted_new.append(post.external_id)
                    return
                if status == 503:
                    failures += 1
                    try:
                        delay = min(float(response.headers.get("retry-after", "1")), RETRY_AFTER_CAP_S)
                    except ValueError:
                        delay = 1.0
                elif status >= 500:
                    self.server_errors.append((post.external_id, status, response.text[:300]))
                    failures += 1
                    delay = min(RETRY_AFTER_CAP_S, 0.2 * 2**failures)
                else:
                    # A 4xx for a well-formed, correctly signed request is a bug (a 409 would mean the service
                    # saw different content under the same id): recorded, never retried.
                    self.refused.append((post.external_id, status, response.text[:300]))
                    return
            if time.monotonic() + delay - first > GIVE_UP_S:
                self.gave_up.add(post.external_id)
                return
            self.retries += 1
            await asyncio.sleep(delay * self.rng.uniform(0.8, 1.2))


# --- the run --------------------------------------------------------------------------------------------------


@dataclass
class Resources:
    """Everything the soak starts, released by `cleanup()` whatever happened."""

    root: Path
    keep: bool = False
    pg: Any = None
    children: list[Child] = field(default_factory=list)
    mail: MailSink = field(default_factory=MailSink)

    def cleanup(self) -> None:
        for child in reversed(self.children):
            with contextlib.suppress(Exception):
                child.stop(timeout_s=10.0)
        self.mail.stop()
        if self.pg is not None:
            with contextlib.suppress(Exception):
                self.pg.cleanup()
            with contextlib.suppress(Exception):
                shutil.rmtree(self.pg.root, ignore_errors=True)
        if self.keep:
            print(f"soak: logs kept in {self.root}", file=sys.stderr)
        else:
            shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class Events:
    kills: list[dict[str, Any]] = field(default_factory=list)
    restarts: list[dict[str, Any]] = field(default_factory=list)
    outages: list[tuple[float, float]] = field(default_factory=list)  # monotonic (down, back + tail)
    crashes: list[str] = field(default_factory=list)


def base_env() -> dict[str, str]:
    """The caller's environment without any DeskPilot or LLM settings: the soak sets its own."""
    drop = ("DESKPILOT_", "OPENAI_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    return env


async def sql(url: str, work: Callable[[asyncpg.Connection], Awaitable[Any]]) -> Any:
    """One short-lived connection per question: nothing stale survives a PostgreSQL restart."""
    conn = await asyncpg.connect(url, timeout=10)
    try:
        return await work(conn)
    finally:
        await conn.close()


async def wait_for(check: Callable[[], bool], within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {within_s:.0f}s")
        await asyncio.sleep(0.2)


class Soak:
    def __init__(self, args: argparse.Namespace, plan: Plan, res: Resources) -> None:
        self.args = args
        self.plan = plan
        self.res = res
        self.events = Events()
        self.rng = random.Random(args.seed)
        self.secret = "whsec_" + base64.b64encode(self.rng.randbytes(32)).decode()
        self.hooks = HttpReceiver()
        self.url = ""
        self.base_url = ""
        self.api: Child | None = None
        self.workers: list[Child] = []
        self.stages: dict[str, float] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._worker_serial = 0

    # processes

    def _env(self) -> dict[str, str]:
        return {
            **base_env(),
            "DESKPILOT_DATABASE_URL": self.url,
            "DESKPILOT_DATA_DIR": str(self.res.root / "data"),
            "DESKPILOT_WEBHOOK_SECRET": self.secret,
            "DESKPILOT_LEASE_SECONDS": str(LEASE_S),
            "DESKPILOT_POLL_INTERVAL": str(POLL_S),
            "DESKPILOT_SMTP_URL": self.res.mail.url,
            "DESKPILOT_SMTP_FROM": "DeskPilot Support <support@soak.example>",
            "DESKPILOT_CALLBACK_URL": self.hooks.url("/replies"),
            "DESKPILOT_CALLBACK_SECRET": self.secret,
            "DESKPILOT_ALLOW_PRIVATE_CALLBACKS": "true",  # the receiver is on loopback
        }

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Child:
        child = Child(name, args, env or self._env(), self.res.root / f"{name}.log")
        self.res.children.append(child)
        return child

    def _start_worker(self) -> Child:
        self._worker_serial += 1
        return self._spawn(
            f"worker-{self._worker_serial}",
            [sys.executable, "-m", "app.cli", "worker", "--concurrency", str(self.args.concurrency)],
        )

    async def _worker_listening(self, worker: Child, within_s: float = 90.0) -> None:
        def ready() -> bool:
            if not worker.alive():
                raise RuntimeError(f"{worker.name} exited with {worker.process.returncode}:\n{worker.log()[-3000:]}")
            return "listening on" in worker.log()

        await wait_for(ready, within_s, f"{worker.name} listening")

    async def start(self) -> None:
        self.res.pg = ThrowawayPostgres()
        self.url = self.res.pg.url
        await db.migrate(self.url)
        self.res.mail.start()
        await self.hooks.start()
        (self.res.root / "data").mkdir(exist_ok=True)
        seed = self._spawn(
            "seed",
            [sys.executable, __file__, "--seed-db", self.url, "--demo", "full" if self.plan.full_demo else "quick"],
        )
        port = free_port()
        self.api = self._spawn(
            "api", [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(port), "--no-worker"]
        )
        self.base_url = f"http://127.0.0.1:{port}"
        self.workers = [self._start_worker(), self._start_worker()]
        await wait_for(lambda: not seed.alive(), 240.0, "seeding the knowledge base")
        if seed.process.returncode != 0:
            raise RuntimeError(f"seeding failed:\n{seed.log()[-3000:]}")
        self.stages["seeded"] = time.monotonic()
        await self._api_ready()
        self.stages["api_ready"] = time.monotonic()
        for worker in self.workers:
            await self._worker_listening(worker)
        self.stages["workers_listening"] = time.monotonic()

    async def _warm_up(self, load: Load, http: httpx.AsyncClient, within_s: float = 120.0) -> None:
        """Post tickets until each worker has decided one: the clock starts with the models loaded, as in a
        service that has been running a while (a restarted worker loads its model again, and that counts)."""
        deadline = time.monotonic() + within_s
        while not all(DECIDED_LINE.search(worker.log()) for worker in self.workers):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the workers decided no ticket within {within_s:.0f}s")
            for _ in range(2):
                post = load.new_post()
                load.warmup_ids.add(post.external_id)
                load.spawn(http, post)
            await asyncio.sleep(1.0)
        await load.finish()
        self.stages["warm"] = time.monotonic()

    async def _api_ready(self, within_s: float = 90.0) -> None:
        assert self.api is not None
        deadline = time.monotonic() + within_s
        async with httpx.AsyncClient(base_url=self.base_url, timeout=2) as http:
            while time.monotonic() < deadline:
                if not self.api.alive():
                    raise RuntimeError(f"the API exited:\n{self.api.log()[-3000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get("/health")).status_code == 200:
                        return
                await asyncio.sleep(0.2)
        raise TimeoutError("the API did not answer /health")

    # faults

    async def _kill_worker(self, at: float) -> None:
        index = len(self.events.kills) % len(self.workers)
        victim = self.workers[index]
        pattern = f"%:{victim.pid}:%"

        async def in_flight(conn: asyncpg.Connection) -> tuple[int, int]:
            # Aim the kill at a moment the worker holds a ticket (for at most KILL_AIM_S): a kill between
            # tickets proves little.
            deadline = time.monotonic() + KILL_AIM_S
            while True:
                tickets = await conn.fetchval(
                    "SELECT count(*) FROM tickets WHERE lease_owner LIKE $1 AND lease_expires_at > now()", pattern
                )
                if tickets or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.02)
            sends = await conn.fetchval(
                """SELECT count(*) FROM deliveries
                   WHERE lease_owner LIKE $1 AND lease_expires_at > now() AND status = 'pending'""",
                pattern,
            )
            return int(tickets), int(sends)

        try:
            tickets, sends = await sql(self.url, in_flight)
        except (OSError, asyncpg.PostgresError):
            tickets, sends = -1, -1
        victim.kill()
        killed = time.monotonic()
        replacement = self._start_worker()
        self.workers[index] = replacement
        event: dict[str, Any] = {
            "at_s": round(at, 1),
            "worker": victim.name,
            "tickets_in_flight": tickets,
            "sends_in_flight": sends,
            "replacement_listening_s": None,
        }
        self.events.kills.append(event)

        async def time_replacement() -> None:
            with contextlib.suppress(Exception):
                await self._worker_listening(replacement, within_s=300.0)
                event["replacement_listening_s"] = round(time.monotonic() - killed, 1)

        self._background.add(asyncio.create_task(time_replacement()))
        print(
            f"soak: t={at:5.1f}s SIGKILL {victim.name} (pid {victim.pid}, {tickets} tickets and {sends} sends "
            f"in flight); started {replacement.name}",
            file=sys.stderr,
        )

    async def _restart_postgres(self, at: float, mode: Literal["fast", "immediate"]) -> None:
        down = time.monotonic()
        await asyncio.to_thread(self.res.pg.stop, mode)
        stopped = time.monotonic()
        await asyncio.sleep(self.plan.outage_s)
        await asyncio.to_thread(self.res.pg.start)
        back = time.monotonic()
        self.events.outages.append((down, back + OUTAGE_TAIL_S))
        self.events.restarts.append(
            {"at_s": round(at, 1), "mode": mode, "stop_s": round(stopped - down, 2), "down_s": round(back - down, 2)}
        )
        print(f"soak: t={at:5.1f}s PostgreSQL stopped ({mode}), back after {back - down:.1f}s", file=sys.stderr)

    async def _faults(self, started: float) -> None:
        plan = [(t, "kill", None) for t in self.plan.kills_at] + [(t, "restart", m) for t, m in self.plan.restarts_at]
        for at, kind, mode in sorted(plan, key=lambda item: item[0]):
            await asyncio.sleep(max(0.0, started + at - time.monotonic()))
            if kind == "kill":
                await self._kill_worker(time.monotonic() - started)
            else:
                assert mode is not None
                await self._restart_postgres(time.monotonic() - started, mode)

    async def _watch(self) -> None:
        """Record any child that exits without being told to; restart a crashed worker to keep two running."""
        while True:
            await asyncio.sleep(0.5)
            if self.api is not None and not self.api.alive():
                self.events.crashes.append(f"api exited with {self.api.process.returncode}")
                raise RuntimeError(f"the API exited:\n{self.api.log()[-3000:]}")
            for index, worker in enumerate(self.workers):
                if not worker.alive() and not worker.killed_by_us:
                    self.events.crashes.append(f"{worker.name} exited with {worker.process.returncode}")
                    print(f"soak: {worker.name} CRASHED:\n{worker.log()[-2000:]}", file=sys.stderr)
                    self.workers[index] = self._start_worker()

    # the run

    async def run(self) -> dict[str, Any]:
        wall_started = time.monotonic()
        await self.start()
        load = Load(self.secret, self.args.rate, self.plan.traffic_s, self.rng)
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=32)
        async with httpx.AsyncClient(base_url=self.base_url, timeout=15, limits=limits) as http:
            await self._warm_up(load, http)
            startup_s = time.monotonic() - wall_started
            stages = ", ".join(f"{name} {at - wall_started:.1f}s" for name, at in self.stages.items())
            print(
                f"soak: ready after {startup_s:.1f}s ({stages}); {self.plan.traffic_s:.0f}s of traffic at "
                f"{self.args.rate}/s",
                file=sys.stderr,
            )
            started = time.monotonic()
            watcher = asyncio.create_task(self._watch())
            work = asyncio.create_task(self._traffic(load, http, started))
            try:
                # The watcher only ever ends by raising (the API died): then the run stops at once.
                await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
                if watcher.done():
                    work.cancel()
                    watcher.result()
                traffic_done = work.result()
                drained, drain_s = await self._drain()
            finally:
                for task in (watcher, work, *self._background):
                    task.cancel()
                await asyncio.gather(watcher, work, *self._background, return_exceptions=True)
        # Stop the services before counting: nothing is sent behind the counts' back.
        services = [*self.workers, self.api]
        codes = await asyncio.gather(*(asyncio.to_thread(child.stop) for child in services if child is not None))
        for child, code in zip([c for c in services if c is not None], codes, strict=True):
            # A worker still starting up (importing, migrating) ends by the default SIGTERM action: not a crash.
            started_up = child is self.api or "listening on" in child.log()
            if code != 0 and not child.killed_by_us and started_up:
                self.events.crashes.append(f"{child.name} exited with {code} on SIGTERM")
        counts = await sql(self.url, lambda conn: self._count(conn, load))
        await self.hooks.stop()
        return self._report(load, counts, startup_s, traffic_done - started, drained, drain_s, wall_started)

    async def _traffic(self, load: Load, http: httpx.AsyncClient, started: float) -> float:
        """The load and the faults side by side; returns when the last post got its answer."""
        await asyncio.gather(load.run(http), self._faults(started))
        await load.finish()
        return time.monotonic()

    async def _drain(self) -> tuple[bool, float]:
        """Wait until every ticket is decided and the outbox is empty, at most `plan.drain_s`.

        A reply whose send outcome was never recorded (the database went away mid-send, or the sender was
        killed) is sent again with the same id once its delivery lease has run out.
        """
        started = time.monotonic()
        while time.monotonic() - started < self.plan.drain_s:
            try:
                undecided, pending = await sql(
                    self.url,
                    lambda conn: conn.fetchrow(
                        f"""SELECT (SELECT count(*) FROM tickets t WHERE NOT {DECIDED}) AS undecided,
                                   (SELECT count(*) FROM deliveries d
                                    WHERE d.status = 'pending') AS pending"""
                    ),
                )
            except (OSError, asyncpg.PostgresError):
                undecided = pending = -1
            if undecided == 0 and pending == 0:
                return True, time.monotonic() - started
            await asyncio.sleep(0.5)
        return False, time.monotonic() - started

    async def _count(self, conn: asyncpg.Connection, load: Load) -> dict[str, Any]:
        accepted = {eid for eid, answers in load.answers.items() if answers}
        new_ids = sorted(eid for eid in accepted if load.posts[eid].kind == "new")
        followup_ids = sorted(eid for eid in accepted if load.posts[eid].kind == "followup")
        ticket_rows = await conn.fetch(
            "SELECT external_id, id::text AS id FROM tickets WHERE external_id = ANY($1::text[])", new_ids
        )
        rows_by_id: dict[str, list[str]] = defaultdict(list)
        for row in ticket_rows:
            rows_by_id[row["external_id"]].append(row["id"])
        followup_rows = await conn.fetch(
            """SELECT k.external_id, k.ticket_id::text AS ticket_id, m.id IS NOT NULL AS stored
               FROM ingest_keys k LEFT JOIN ticket_messages m ON m.id = k.message_id AND m.direction = 'inbound'
               WHERE k.external_id = ANY($1::text[])""",
            followup_ids,
        )
        followups_stored = {row["external_id"]: row["ticket_id"] for row in followup_rows if row["stored"]}
        missing = [eid for eid in new_ids if not rows_by_id.get(eid)] + [
            eid for eid in followup_ids if eid not in followups_stored
        ]
        duplicated = [eid for eid, ids in rows_by_id.items() if len(ids) > 1]
        for eid in accepted:
            answers = load.answers[eid]
            stored = rows_by_id.get(eid) or ([followups_stored[eid]] if eid in followups_stored else [])
            if len({tid for _, tid in answers} | set(stored)) > 1 or sum(s == 201 for s, _ in answers) > 1:
                duplicated.append(eid)
        accepted_tickets = sorted({tid for ids in rows_by_id.values() for tid in ids} | set(followups_stored.values()))
        tickets = await conn.fetch(
            f"""SELECT t.id::text AS id, t.external_id, t.status, t.parked_at IS NOT NULL AS parked, t.last_error,
                       {DECIDED} AS decided, t.created_at,
                       (SELECT min(a.finished_at) FROM resolution_attempts a
                        WHERE a.ticket_id = t.id AND a.state = 'completed') AS first_decided_at,
                       (SELECT a.decision FROM resolution_attempts a
                        WHERE a.ticket_id = t.id AND a.state = 'completed'
                        ORDER BY a.attempt_no DESC LIMIT 1) AS decision,
                       (SELECT count(*) FROM ticket_messages m
                        WHERE m.ticket_id = t.id AND m.direction = 'inbound') AS inbound,
                       (SELECT count(*) FROM deliveries d WHERE d.ticket_id = t.id AND d.origin = 'agent') AS replies
                FROM tickets t"""
        )
        attempts = await conn.fetchrow(
            """SELECT count(*) FILTER (WHERE state = 'completed') AS completed,
                      count(*) FILTER (WHERE state = 'abandoned') AS abandoned,
                      count(*) FILTER (WHERE state = 'failed') AS failed,
                      count(*) FILTER (WHERE state = 'running') AS running
               FROM resolution_attempts"""
        )
        per_attempt = await conn.fetchval(
            """SELECT (SELECT count(*) FROM (SELECT attempt_id FROM deliveries WHERE attempt_id IS NOT NULL
                                             GROUP BY attempt_id HAVING count(*) > 1) d)
                    + (SELECT count(*) FROM (SELECT attempt_id FROM ticket_messages
                                             WHERE direction = 'outbound' AND attempt_id IS NOT NULL
                                             GROUP BY attempt_id HAVING count(*) > 1) m)"""
        )
        deliveries = await conn.fetch(
            f"""SELECT d.ticket_id::text AS ticket_id, d.channel, d.idempotency_key, d.status, d.tries,
                      d.lease_expires_at > now() AS leased, {UNRECORDED} AS unrecorded, d.lease_owner,
                      d.last_error,
                      extract(epoch FROM d.lease_expires_at - now()) AS lease_left_s,
                      extract(epoch FROM now() - d.created_at) AS age_s,
                      extract(epoch FROM d.sent_at - d.created_at) AS reply_s
               FROM deliveries d"""
        )
        return {
            "accepted": accepted,
            "new_ids": new_ids,
            "followup_ids": followup_ids,
            "missing": missing,
            "duplicated": sorted(set(duplicated)),
            "accepted_tickets": set(accepted_tickets),
            "tickets": [dict(row) for row in tickets],
            "attempts": dict(attempts) if attempts is not None else {},
            "per_attempt_duplicates": int(per_attempt),
            "deliveries": [dict(row) for row in deliveries],
        }

    def _report(
        self,
        load: Load,
        counts: dict[str, Any],
        startup_s: float,
        traffic_s: float,
        drained: bool,
        drain_s: float,
        wall_started: float,
    ) -> dict[str, Any]:
        tickets = counts["tickets"]
        accepted_tickets = counts["accepted_tickets"]
        undecided = [t for t in tickets if t["id"] in accepted_tickets and not t["decided"]]
        lost = len(counts["missing"]) + len(undecided)

        # replies: what the sinks received, by id, against the deliveries that explain it
        received: Counter[str] = Counter(mid for mid, _ in self.res.mail.received)
        received.update(r.headers.get("webhook-id", "") for r in self.hooks.requests)
        by_key = {d["idempotency_key"]: d for d in counts["deliveries"]}
        resent_same_id = sum(n - 1 for n in received.values() if n > 1)
        unknown_ids = [key for key in received if key not in by_key]
        keys_per_ticket: Counter[str] = Counter(by_key[key]["ticket_id"] for key in received if key in by_key)
        excess_replies = 0
        for ticket in tickets:
            replies = max(ticket["replies"], keys_per_ticket.get(ticket["id"], 0))
            excess_replies += max(0, replies - ticket["inbound"])
        replies_duplicated = excess_replies + counts["per_attempt_duplicates"] + len(unknown_ids)
        sent = [d for d in counts["deliveries"] if d["status"] == "sent"]
        missing_replies = [d for d in sent if d["channel"] != "in_app" and d["idempotency_key"] not in received]
        pending = [d for d in counts["deliveries"] if d["status"] == "pending"]
        reply_s = [float(d["reply_s"]) for d in sent if d["reply_s"] is not None]

        ok = [x for x in load.exchanges if 200 <= x.status < 300]

        def in_outage(x: Exchange) -> bool:
            return any(down <= x.sent_at <= until for down, until in self.events.outages)

        calm = [x.latency_s for x in ok if not in_outage(x)]
        stormy = [x.latency_s for x in ok if in_outage(x)]
        all_latencies = [x.latency_s for x in ok]
        new_ids = set(counts["new_ids"])
        unacknowledged = [t["external_id"] for t in tickets if t["external_id"] not in new_ids]
        # Timing figures leave out the warm-up tickets (posted before the clock started).
        new_tickets = [t for t in tickets if t["external_id"] in new_ids - load.warmup_ids]
        decision_s = [
            (t["first_decided_at"] - t["created_at"]).total_seconds() for t in new_tickets if t["first_decided_at"]
        ]
        ratio = None
        if len(new_tickets) > 1 and all(t["first_decided_at"] for t in new_tickets):
            first = min(t["created_at"] for t in new_tickets)
            arrivals = (max(t["created_at"] for t in new_tickets) - first).total_seconds()
            decided = (max(t["first_decided_at"] for t in new_tickets) - first).total_seconds()
            ratio = round(arrivals / decided, 3) if decided > 0 else None
        decisions = Counter(t["decision"] or ("parked" if t["parked"] else "none") for t in new_tickets)
        statuses = Counter(x.status for x in load.exchanges)
        result = {
            "benchmark": "soak",
            "machine": f"{os.cpu_count()} cores",
            "minutes": round(self.plan.traffic_s / 60, 2),
            "rate": self.args.rate,
            "quick": self.args.quick,
            "traffic_s": round(traffic_s, 1),
            "requests": len(load.exchanges),
            "accepted": len(counts["accepted"]),
            "accepted_new": len(counts["new_ids"]),
            "accepted_followups": len(counts["followup_ids"]),
            "warmup_tickets": len(load.warmup_ids),
            "unacknowledged_tickets": len(unacknowledged),
            "lost": lost,
            "duplicated": len(counts["duplicated"]),
            "replies_duplicated": replies_duplicated,
            "resent_same_id": resent_same_id,
            "replies_sent": len(sent),
            "replies_missing": len(missing_replies),
            "replies_unrecorded": sum(1 for d in pending if d["unrecorded"]),
            "replies_stuck": sum(1 for d in pending if not d["unrecorded"]),
            "replies_failed": sum(1 for d in counts["deliveries"] if d["status"] == "failed"),
            "p50_ms": ms(percentile(all_latencies, 0.5)),
            "p99_ms": ms(percentile(all_latencies, 0.99)),
            "p99_ms_calm": ms(percentile(calm, 0.99)),
            "p99_ms_outage": ms(percentile(stormy, 0.99)),
            "accept_p99_ms": ms(percentile(load.accept_latency_s, 0.99)),
            "reply_p99_s": round(percentile(reply_s, 0.99) or 0.0, 2) if reply_s else None,
            "reply_max_s": round(max(reply_s), 2) if reply_s else None,
            "decision_p50_s": round(statistics.median(decision_s), 2) if decision_s else None,
            "decision_p99_s": round(percentile(decision_s, 0.99) or 0.0, 2) if decision_s else None,
            "ratio": ratio,
            "ratio_of": "ticket arrival span / span to the last first decision (1.0 = decisions kept pace)",
            "worker_kills": len(self.events.kills),
            "postgres_restarts": len(self.events.restarts),
            "kills": self.events.kills,
            "restarts": self.events.restarts,
            "decisions": dict(decisions),
            "attempts": counts["attempts"],
            "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "actions": dict(load.actions),
            "retries": load.retries,
            "transport_errors": load.transport_errors,
            "gave_up": len(load.gave_up),
            "server_errors": len(load.server_errors),
            "refused": len(load.refused),
            "crashes": self.events.crashes,
            "drained": drained,
            "drain_s": round(drain_s, 1),
            "startup_s": round(startup_s, 1),
            "wall_s": round(time.monotonic() - wall_started, 1),
        }
        details = {
            "missing": counts["missing"][:10],
            "undecided": [
                {k: str(t[k]) for k in ("external_id", "status", "parked", "last_error")} for t in undecided[:10]
            ],
            "duplicated": counts["duplicated"][:10],
            "unknown_reply_ids": unknown_ids[:10],
            "missing_replies": [d["idempotency_key"] for d in missing_replies[:10]],
            "pending_replies": [{**d, "received": d["idempotency_key"] in received} for d in pending[:5]],
            "server_errors": load.server_errors[:5],
            "refused": load.refused[:5],
        }
        return {"result": result, "details": details}


UNRECORDED = """(d.lease_expires_at > now() AND d.updated_at < now() - interval '10 seconds')"""
"""A pending delivery claimed a while ago whose outcome never came back: it waits for its lease to run out."""

DECIDED_LINE = re.compile(r"ticket \S+ attempt \d+: (deliver|flag_for_review|escalate) ")
"""A worker's log line for a decided ticket (`app.worker`)."""

DECIDED = """(t.parked_at IS NOT NULL OR (
    t.lease_expires_at IS NULL
    AND (t.next_attempt_at IS NULL OR (t.next_attempt_at > now() AND t.last_error IS NULL))
    AND EXISTS (SELECT 1 FROM resolution_attempts a
                WHERE a.ticket_id = t.id AND a.state = 'completed' AND a.decision IS NOT NULL)))"""
"""A ticket has reached a decision: a completed attempt replied, flagged or escalated and no work is due on it
(an escalation's next cycle, hours away, is not due), or it was parked with its error recorded."""


def failed(result: dict[str, Any]) -> list[str]:
    reasons = []
    keys = ("lost", "duplicated", "replies_duplicated", "replies_missing", "replies_stuck", "server_errors", "refused")
    for key in (*keys, "gave_up"):
        if result[key]:
            reasons.append(f"{key}={result[key]}")
    if result["crashes"]:
        reasons.append(f"crashes={result['crashes']}")
    if not result["accepted"]:
        reasons.append("nothing accepted")
    return reasons


def summary(result: dict[str, Any], details: dict[str, Any]) -> str:
    r = result
    lines = [
        f"soak: {r['minutes']} min at {r['rate']}/s on {r['machine']}: {r['requests']} requests {r['statuses']}, "
        f"{r['retries']} retries, {r['transport_errors']} connection errors, {r['gave_up']} given up",
        f"  accepted {r['accepted']} ids ({r['accepted_new']} tickets, {r['accepted_followups']} follow-ups); "
        f"lost {r['lost']}, duplicated {r['duplicated']}",
        f"  decisions {r['decisions']}; attempts {r['attempts']}",
        f"  replies: {r['replies_sent']} sent, {r['replies_stuck']} stuck in the outbox, {r['replies_unrecorded']} "
        f"sent or not but unrecorded (re-sent after their lease), "
        f"{r['replies_failed']} failed, duplicated {r['replies_duplicated']}, re-sent with the same id "
        f"{r['resent_same_id']}, marked sent but not received {r['replies_missing']}",
        f"  ingest latency (2xx) p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms (calm {r['p99_ms_calm']} ms, "
        f"outage {r['p99_ms_outage']} ms); accept incl. retries p99 {r['accept_p99_ms']} ms",
        f"  commit -> first decision p50 {r['decision_p50_s']} s, p99 {r['decision_p99_s']} s; decision -> reply "
        f"sent p99 {r['reply_p99_s']} s, max {r['reply_max_s']} s; ratio {r['ratio']} "
        f"({r['ratio_of']})",
        f"  faults: {r['worker_kills']} worker kills {r['kills']}, {r['postgres_restarts']} PostgreSQL restarts "
        f"{r['restarts']}; crashes {r['crashes']}",
        f"  drained {r['drained']} in {r['drain_s']} s; startup {r['startup_s']} s; wall {r['wall_s']} s",
    ]
    problems = {k: v for k, v in details.items() if v}
    if problems:
        lines.append(f"  details: {json.dumps(problems, default=str)[:3000]}")
    return "\n".join(lines)


def error_lines(res: Resources) -> str:
    """The distinct ERROR/CRITICAL lines of each service log (for a failed run)."""
    out = []
    for child in res.children:
        with contextlib.suppress(OSError):
            seen = dict.fromkeys(
                line.split(": ", 1)[-1][:200]
                for line in child.log().splitlines()
                if " ERROR " in line or " CRITICAL " in line or line.startswith("Traceback")
            )
            if seen:
                out.append(f"  {child.name}: " + " | ".join(list(seen)[:5]))
    return "\n".join(out)


# --- seeding (a child process: the model loads there, not in the driver) -------------------------------------


def seed_database(url: str, which: str) -> int:
    """Load the demo knowledge base, resolutions and customers (`quick`: two articles per KB folder)."""
    from app.demo import load_demo_if_empty
    from core.settings import Settings

    with tempfile.TemporaryDirectory(prefix="deskpilot-soak-examples-") as tmp:
        examples = EXAMPLES
        if which == "quick":
            examples = Path(tmp)
            for name in ("resolutions.jsonl", "customers.jsonl"):
                shutil.copy(EXAMPLES / name, examples / name)
            for folder in sorted((EXAMPLES / "kb").iterdir()):
                target = examples / "kb" / folder.name
                target.mkdir(parents=True)
                for path in sorted(folder.iterdir())[:2]:
                    shutil.copy(path, target / path.name)
        settings = Settings.from_mapping({"DESKPILOT_DATA_DIR": tmp})
        asyncio.run(load_demo_if_empty(url, settings, examples))
    return 0


# --- entry point ----------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0, help="minutes of traffic (default 5)")
    parser.add_argument("--rate", type=float, default=5.0, help="posts per second (default 5)")
    parser.add_argument("--quick", action="store_true", help="30 s of traffic, one fault of each (~1.5 min in all)")
    parser.add_argument("--concurrency", type=int, default=WORKER_CONCURRENCY, help="tickets at once per worker")
    parser.add_argument("--outage-s", type=float, default=3.0, help="how long PostgreSQL stays down")
    parser.add_argument("--drain-s", type=float, default=None, help="bound on waiting for the backlog")
    parser.add_argument("--seed", type=int, default=7, help="random seed of the traffic")
    parser.add_argument("--keep", action="store_true", help="keep the service logs (PostgreSQL is deleted anyway)")
    parser.add_argument("--seed-db", help=argparse.SUPPRESS)
    parser.add_argument("--demo", default="full", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.seed_db:
        return seed_database(args.seed_db, args.demo)
    if args.rate <= 0 or args.minutes <= 0:
        parser.error("--rate and --minutes must be positive")
    plan = Plan.build(minutes=args.minutes, quick=args.quick, outage_s=args.outage_s, drain_s=args.drain_s)
    res = Resources(Path(tempfile.mkdtemp(prefix="deskpilot-soak-")), keep=args.keep)
    # SIGTERM (a CI timeout, say) unwinds like Ctrl-C, so the finally below still stops every process.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        try:
            report = asyncio.run(Soak(args, plan, res).run())
        except (Exception, KeyboardInterrupt) as exc:
            why = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"{type(exc).__name__}: {exc}"
            print(f"soak: could not complete: {why}", file=sys.stderr)
            print(error_lines(res), file=sys.stderr)
            return 2
        result, details = report["result"], report["details"]
        print(summary(result, details), file=sys.stderr)
        reasons = failed(result)
        if reasons:
            print("soak: FAILED: " + ", ".join(reasons), file=sys.stderr)
            print(error_lines(res), file=sys.stderr)
        print(json.dumps(result, default=str))
        return 1 if reasons else 0
    finally:
        res.cleanup()


if __name__ == "__main__":
    sys.exit(main())
