"""`deskpilot serve --demo`: fill an empty database with the example KB, past resolutions and customers."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent.quality.evaluation import DeploymentFiles, load_deployment
from core import db
from core.settings import PROJECT_ROOT, Settings
from knowledge.embedder import load_embedder

EXAMPLES_DIR = PROJECT_ROOT / "examples"
# The example events were written on fixed dates; loaded as they are, they would age out of every window the
# specialists read. The newest is moved to a day ago, every other event by the same offset.
DEMO_EVENT_AGE = timedelta(days=1)
# pg_advisory_lock key: two replicas started with --demo at once must not both load.
_DEMO_LOCK_KEY = 0x64656D6F  # "demo"


def demo_newest_event_at() -> datetime:
    return datetime.now(UTC) - DEMO_EVENT_AGE


def demo_deployment(examples: Path = EXAMPLES_DIR) -> DeploymentFiles:
    """The demo's help centre, history and customers, their events moved to end a day ago."""
    return DeploymentFiles.demo(examples, demo_newest_event_at())


async def load_demo_if_empty(url: str, settings: Settings, examples: Path = EXAMPLES_DIR) -> None:
    """Load `examples/` when the knowledge base and the resolution history are both empty; else do nothing."""
    async with db.pool_for(url, settings) as pool, pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", _DEMO_LOCK_KEY)
        try:
            empty = await conn.fetchval(
                "SELECT NOT EXISTS (SELECT 1 FROM kb_documents) AND NOT EXISTS (SELECT 1 FROM past_resolutions)"
            )
            if not empty:
                print("demo: the knowledge base already has content; demo data not loaded", file=sys.stderr)
                return
            embedder = await load_embedder(settings.embedding_model)
            content = await load_deployment(conn, demo_deployment(examples), embedder=embedder)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _DEMO_LOCK_KEY)
    errors = content.errors
    print(
        f"demo: loaded {content.summary()}" + (f"; {len(errors)} problems, first: {errors[0]}" if errors else ""),
        file=sys.stderr,
    )
