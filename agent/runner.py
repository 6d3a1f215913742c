"""The worker's entry point: `make_ticket_processor(pool, settings, metrics)` returns the callable that runs one
claimed ticket through the graph with its audit trail; `run_graph_offline` runs the same graph without writing
tickets or deliveries (evaluation, calibration, benchmarks); `requeue_on_knowledge_change` gives escalated
tickets another look when the knowledge base grew.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, cast

import asyncpg
import numpy as np
from threadpoolctl import threadpool_limits

from agent.account import load_ticket
from agent.audit import DatabaseRecorder, fail_attempt, start_attempt
from agent.context import Context, MemoryRecorder, StepRecorder
from agent.drafting.drafter import OfflineDrafter, default_drafter
from agent.drafting.request import Drafter
from agent.embedding import QueryEmbedder
from agent.graph import build_graph
from agent.outcome import finish_without_work
from agent.scoring.confidence import Calibration, active_calibration
from agent.scoring.risk_model import risk_model
from agent.state import AgentState, TicketInput
from agent.triage.classifier import RoutingModelCache
from core.db import Connection
from core.metrics import Metrics
from core.settings import Settings
from knowledge.embedder import Embedder, load_embedder
from knowledge.retrieval import help_centre_sections
from tickets.queue import Claim, LeaseLost, notify_work

log = logging.getLogger(__name__)

_GRAPH = build_graph().compile()
# How stale a worker's view of the activated calibration version may be.
CALIBRATION_TTL_S = 30.0


class TicketProcessor:
    """Runs claimed tickets through the graph. One per process: it holds the embedder, the fitted routing
    models and the drafter. Raises whatever the graph raises (the worker records it with `fail_claim`),
    `LeaseLost` included."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        metrics: Metrics | None = None,
        *,
        embedder: Embedder | None = None,
        drafter: Drafter | None = None,
        models: RoutingModelCache | None = None,
        calibration: Calibration | None = None,
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.metrics = metrics
        # The per-ticket math (similarities to the history, linear scores) is small matrices: one BLAS thread
        # does it as fast, where a pool of them spins on every core against the model and the event loop
        # (measured: half the CPU of routing a ticket on a 1,500-ticket history).
        threadpool_limits(1, user_api="blas")
        self._embedder = embedder
        self._queries: QueryEmbedder | None = (
            QueryEmbedder(embedder, crosslingual=settings.crosslingual_reader) if embedder is not None else None
        )
        self._queries_lock = asyncio.Lock()
        self._warmed_up = False
        self.drafter = drafter or default_drafter(settings, metrics)
        self.fallback_drafter: Drafter = OfflineDrafter()
        self.models = models or RoutingModelCache()
        self.shipped_calibration = calibration or Calibration.load()
        self.calibration = self.shipped_calibration
        # A fixed calibration (tests, evaluation) is used as given; otherwise the deployment's activated refit.
        self._calibration_fixed = calibration is not None
        self._calibration_checked = -CALIBRATION_TTL_S
        self.graph = _GRAPH

    async def current_calibration(self, conn: Connection) -> Calibration:
        """The activated refit of this deployment's reviews, else the shipped calibration; looked up at most
        every `CALIBRATION_TTL_S`, so an activation reaches every worker within that."""
        now = time.monotonic()
        if not self._calibration_fixed and now - self._calibration_checked >= CALIBRATION_TTL_S:
            self.calibration = await active_calibration(conn) or self.shipped_calibration
            self._calibration_checked = now
        return self.calibration

    async def embeddings(self) -> QueryEmbedder:
        if self._queries is None:
            async with self._queries_lock:
                if self._queries is None:
                    self._embedder = await load_embedder(self.settings.embedding_model)
                    self._queries = QueryEmbedder(self._embedder, crosslingual=self.settings.crosslingual_reader)
        return self._queries

    async def warm_up(self, stop: asyncio.Event | None = None) -> None:
        """What a worker's tickets would otherwise wait for: the embedding models, the routing models' fit, the
        risk detector's fit and the reader's reading of the help centre (up to its cache; a help-centre passage
        costs one encode per sentence the first time the reader meets it). Run as a worker starts and again every
        few minutes (`app.worker.Worker`), when only what changed costs anything: passages added or edited since.
        Tickets claimed meanwhile go ahead, each waiting for whatever it needs that is not ready yet; `stop` ends
        it early."""
        started = time.monotonic()
        embeddings = await self.embeddings()
        multilingual = await embeddings.multilingual.get() if embeddings.multilingual is not None else None
        await asyncio.to_thread(risk_model, embeddings.embedder, multilingual=multilingual)
        await self.models.get(self.pool)
        async with self.pool.acquire() as conn:
            sections = await help_centre_sections(conn)
        read = await embeddings.reader.warm(sections, stop)
        log.log(
            logging.INFO if read or not self._warmed_up else logging.DEBUG,
            "warmed up in %.1fs: models loaded and fitted, %d of the help centre's %d passages read",
            time.monotonic() - started,
            read,
            len(sections),
        )
        self._warmed_up = True

    def context(
        self,
        *,
        claim: Claim | None,
        attempt_id: Any,
        recorder: StepRecorder | None,
        embeddings: QueryEmbedder,
        block_on_refit: bool = False,
    ) -> Context:
        return Context(
            settings=self.settings,
            pool=self.pool,
            embeddings=embeddings,
            models=self.models,
            drafter=self.drafter,
            calibration=self.calibration,
            recorder=recorder,
            metrics=self.metrics,
            claim=claim,
            attempt_id=attempt_id,
            block_on_refit=block_on_refit,
            fallback_drafter=self.fallback_drafter,
        )

    async def __call__(self, claim: Claim) -> str:
        """Process one claimed ticket; returns the decision (deliver | flag_for_review | escalate | skipped)."""
        embeddings = await self.embeddings()
        async with self.pool.acquire() as conn:
            ticket = await load_ticket(conn, claim.ticket_id)
            if ticket is None:
                raise LookupError(f"ticket {claim.ticket_id} does not exist")
            if ticket.get("status") in {"resolved", "closed"}:
                # Nothing to answer (e.g. requeued after a reviewer already resolved it).
                await finish_without_work(self.pool, claim)
                return "skipped"
            attempt_id, knowledge_version = await start_attempt(conn, claim)
            calibration = await self.current_calibration(conn)
        recorder = DatabaseRecorder(self.pool, attempt_id)
        ctx = self.context(claim=claim, attempt_id=attempt_id, recorder=recorder, embeddings=embeddings)
        ctx.calibration = calibration
        ctx.knowledge_version = knowledge_version
        try:
            final = cast(AgentState, await self.graph.ainvoke(AgentState(ticket=ticket), context=ctx))
        except LeaseLost as exc:
            async with self.pool.acquire() as conn:
                await fail_attempt(conn, attempt_id, f"lease lost: {exc}", state="abandoned")
            raise
        except BaseException as exc:
            if self.metrics is not None:
                self.metrics.attempt_errors.inc()
            try:
                async with self.pool.acquire() as conn:
                    await fail_attempt(conn, attempt_id, f"{type(exc).__name__}: {exc}")
            except Exception:  # the database may be what failed; the worker records the original error
                log.warning("could not mark attempt %s failed", attempt_id, exc_info=True)
            raise
        return str(final["outcome"]["decision"])


def make_ticket_processor(pool: asyncpg.Pool, settings: Settings, metrics: Metrics) -> TicketProcessor:
    """The worker's factory (`app.worker.ProcessorFactory`): cheap to call; the model loads on first use."""
    return TicketProcessor(pool, settings, metrics)


async def run_graph_offline(
    processor: TicketProcessor,
    ticket: TicketInput,
    *,
    embedding: np.ndarray | None = None,
    recorder: StepRecorder | None = None,
) -> AgentState:
    """The same graph on a ticket that needs no row: nothing is written to tickets, messages or deliveries.

    Pass `embedding` when it was computed in a batch up front; the steps go to `recorder` (memory by default).
    """
    embeddings = await processor.embeddings()
    ctx = processor.context(
        claim=None,
        attempt_id=None,
        recorder=recorder or MemoryRecorder(),
        embeddings=embeddings,
        block_on_refit=True,
    )
    state = AgentState(ticket=ticket)
    if embedding is not None:
        state["embedding"] = np.asarray(embedding, dtype=np.float32)
    return cast(AgentState, await processor.graph.ainvoke(state, context=ctx))


# Re-drafts after a knowledge change are batched and bounded: the knowledge base must have been quiet for
# `settle_s` (a burst of reviewer sends, each a new past resolution, makes one round, not one per send), at most
# `batch` tickets per round (oldest waiting first; the maintenance loop runs every 30 s), and only tickets with
# cycles left (DESKPILOT_MAX_CYCLES: each re-draft that escalates again uses one).
REQUEUE_BATCH = 20
KNOWLEDGE_SETTLE_S = 60.0

_REQUEUE_SQL = """
WITH latest AS (
    SELECT DISTINCT ON (a.ticket_id) a.ticket_id, a.knowledge_version, a.decision, a.escalation_retryable
    FROM resolution_attempts a
    JOIN tickets t ON t.id = a.ticket_id
    WHERE a.state = 'completed' AND t.status = 'pending_customer' AND t.needs_review AND t.cycle_count < $1
    ORDER BY a.ticket_id, a.attempt_no DESC
), due AS (
    SELECT t.id
    FROM tickets t
    JOIN latest ON latest.ticket_id = t.id
    CROSS JOIN knowledge_version kv
    WHERE latest.decision = 'escalate'
      AND latest.escalation_retryable IS TRUE
      AND latest.knowledge_version < kv.version
      AND kv.changed_at <= now() - make_interval(secs => $3)
      AND t.parked_at IS NULL
      AND (t.next_attempt_at IS NULL OR t.next_attempt_at > now())
      AND (t.lease_expires_at IS NULL OR t.lease_expires_at < now())
    ORDER BY t.updated_at, t.id
    LIMIT $2
)
UPDATE tickets t SET next_attempt_at = now(), updated_at = now()
FROM due
WHERE t.id = due.id
RETURNING t.id
"""


async def requeue_on_knowledge_change(
    conn: Connection, *, max_cycles: int = 3, batch: int = REQUEUE_BATCH, settle_s: float = 0.0
) -> int:
    """Queue again, at once, escalated tickets whose last attempt saw an older knowledge version and that a re-run
    could change (low confidence, not a demand, injection or incident): at most `batch`, with cycles left, once
    the knowledge base has been unchanged for `settle_s`. Returns how many."""
    async with conn.transaction():
        rows = await conn.fetch(_REQUEUE_SQL, max_cycles, batch, settle_s)
        if rows:
            await notify_work(conn)
    if rows:
        log.info("requeued %d escalated tickets after a knowledge change", len(rows))
    return len(rows)
