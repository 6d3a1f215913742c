"""`deskpilot serve --demo`: fill an empty database with the example KB, past resolutions and customers."""

from __future__ import annotations

import sys
from pathlib import Path

from core import db
from core.settings import PROJECT_ROOT, Settings
from knowledge.embedder import load_embedder
from knowledge.loader import load_paths
from tickets.customer_loader import load_customers_file

EXAMPLES_DIR = PROJECT_ROOT / "examples"
# pg_advisory_lock key: two replicas started with --demo at once must not both load.
_DEMO_LOCK_KEY = 0x64656D6F  # "demo"


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
            articles = await load_paths(conn, [examples / "kb"], embedder=embedder, kind="article")
            history = await load_paths(conn, [examples / "resolutions.jsonl"], embedder=embedder, kind="resolution")
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _DEMO_LOCK_KEY)
    customers_file = examples / "customers.jsonl"
    customers = await load_customers_file(url, settings, customers_file)
    errors = [*articles.errors, *history.errors, *customers.errors]
    print(
        f"demo: loaded {articles.documents} articles ({articles.chunks} chunks), "
        f"{history.resolutions} past resolutions, {customers.customers} customers "
        f"({customers.events} events)" + (f"; {len(errors)} problems, first: {errors[0]}" if errors else ""),
        file=sys.stderr,
    )
