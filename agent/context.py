"""What the graph's nodes depend on, passed through LangGraph's `Runtime[Context]` (no module globals).

`claim` set means a live ticket: nodes that change the ticket do so fenced by it. `claim` None is an offline
run (evaluation, calibration, benchmarks): the same nodes compute the same outputs and write nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol
from uuid import UUID

import asyncpg

from agent.drafting.request import Drafter
from agent.embedding import QueryEmbedder
from agent.scoring.confidence import Calibration
from agent.triage.classifier import RoutingModelCache, RoutingModels
from core.metrics import Metrics
from core.settings import Settings
from tickets.queue import Claim


class StepRecorder(Protocol):
    """Receives each node's record as the node finishes (the runner writes `attempt_steps` rows)."""

    async def record(
        self, node: str, started_at: datetime, duration_ms: float, output: dict[str, Any], error: str | None
    ) -> None: ...


@dataclass
class MemoryRecorder:
    """Keeps the steps in memory: offline runs and tests."""

    steps: list[dict[str, Any]] = field(default_factory=list)

    async def record(
        self, node: str, started_at: datetime, duration_ms: float, output: dict[str, Any], error: str | None
    ) -> None:
        self.steps.append(
            {
                "seq": len(self.steps) + 1,
                "node": node,
                "started_at": started_at,
                "duration_ms": duration_ms,
                "output": output,
                "error": error,
            }
        )


@dataclass
class Context:
    settings: Settings
    pool: asyncpg.Pool
    embeddings: QueryEmbedder
    models: RoutingModelCache
    drafter: Drafter
    calibration: Calibration
    recorder: StepRecorder | None = None
    metrics: Metrics | None = None
    claim: Claim | None = None
    attempt_id: UUID | None = None
    # Offline runs fit the models once up front and must not race a background refit.
    block_on_refit: bool = False
    # The knowledge version the attempt started at (recorded on its row); None: read it when the models are needed.
    knowledge_version: int | None = None
    # The LLM drafter's fallback when it fails: the offline drafter.
    fallback_drafter: Drafter | None = None

    @property
    def live(self) -> bool:
        return self.claim is not None

    async def routing_models(self) -> RoutingModels:
        return await self.models.get(self.pool, block=self.block_on_refit, version=self.knowledge_version)
