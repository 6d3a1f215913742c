"""`deskpilot calibrate --from-reviews` on a real database: the refit is versioned, activated (and audited) only
when better on held-out reviews; a second refit on the same reviews, or one below the minimum, is not."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from pathlib import Path
from typing import Any

import asyncpg
from click.testing import CliRunner

from agent.drafting.drafter import OfflineDrafter
from agent.runner import TicketProcessor
from agent.scoring.confidence import SIMILARITY_SIGNALS, Calibration, active_calibration
from app.cli import main
from core.metrics import Metrics
from review.calibration import load_review_labels
from tests.support.agent_graph import claim, new_ticket
from tests.support.delivery import seed_customer
from tickets.trace import get_trace


async def seed_scored_reviews(pool: asyncpg.Pool, n: int, *, seed: int = 0) -> None:
    """`n` reviewed attempts scored by the shipped `without_intents` model; right with probability raw²."""
    shipped = Calibration.load().without_intents
    rng = random.Random(seed)
    customer_id = await seed_customer(pool, "calib@example.com")
    tickets, attempts, steps, reviews = [], [], [], []
    for i in range(n):
        signals = {name: rng.random() for name in SIMILARITY_SIGNALS}
        raw, _ = shipped.raw(signals)
        right = rng.random() < raw * raw
        ticket_id, attempt_id = uuid.uuid4(), uuid.uuid4()
        tickets.append((ticket_id, f"calib-{i}", customer_id))
        attempts.append((attempt_id, ticket_id, shipped.calibrate(raw)))
        steps.append((attempt_id, {"model": "without_intents", "signals": signals, "gate": None}))
        reviews.append((ticket_id, attempt_id, "approve" if right else "edit", "right" if right else "wrong"))
    async with pool.acquire() as conn, conn.transaction():
        await conn.executemany(
            """INSERT INTO tickets (id, external_id, customer_id, channel, subject, body, raw_payload, status)
               VALUES ($1, $2, $3, 'email', 's', 'b', '{}'::jsonb, 'resolved')""",
            tickets,
        )
        await conn.executemany(
            """INSERT INTO resolution_attempts (id, ticket_id, attempt_no, state, category, confidence, decision,
                                                draft, finished_at)
               VALUES ($1, $2, 1, 'completed', 'technical', $3, 'deliver', 'd', now())""",
            attempts,
        )
        await conn.executemany(
            """INSERT INTO attempt_steps (attempt_id, seq, node, started_at, duration_ms, output)
               VALUES ($1, 7, 'score', now(), 1, $2)""",
            steps,
        )
        await conn.executemany(
            "INSERT INTO reviews (ticket_id, attempt_id, action, verdict) VALUES ($1, $2, $3, $4)", reviews
        )


async def calibrate(database_url: str, tmp_path: Path, *args: str) -> Any:
    result = await asyncio.to_thread(
        CliRunner().invoke,
        main,
        ["calibrate", "--from-reviews", "--json", *args],
        env={"DESKPILOT_DATABASE_URL": database_url, "DESKPILOT_DATA_DIR": str(tmp_path)},
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


async def test_refit_versioned_activated_only_when_better(
    clean_db: asyncpg.Pool, database_url: str, tmp_path: Path
) -> None:
    await seed_scored_reviews(clean_db, 400)
    async with clean_db.acquire() as conn:
        assert len(await load_review_labels(conn)) == 400

    too_few = await calibrate(database_url, tmp_path, "--min-reviews", "1000")
    assert too_few["activated"] is False
    assert too_few["reason"] == "too few reviews: 400 with signals, 1000 needed"

    first = await calibrate(database_url, tmp_path, "--min-reviews", "100")
    assert first["activated"] is True, first
    assert first["holdout"]["refitted"]["brier"] < first["holdout"]["current"]["brier"]
    assert first["n_train"] + first["n_holdout"] == 400
    version = first["version"]
    async with clean_db.acquire() as conn:
        active = await active_calibration(conn)
    assert active is not None and active.meta["version"] == version
    audit = await clean_db.fetchrow("SELECT action, from_value, to_value FROM audit_log")
    assert tuple(audit) == ("calibration.activate", "shipped", str(version))  # the refused one was never active

    # The same reviews again: the refit equals the active calibration, so it is not better and not activated.
    again = await calibrate(database_url, tmp_path, "--min-reviews", "100")
    assert again["activated"] is False and again["reason"].startswith("not better")
    rows = await clean_db.fetch("SELECT version, active, note FROM calibration_versions ORDER BY version")
    assert [r["active"] for r in rows if r["version"] == version] == [True]
    assert sum(r["active"] for r in rows) == 1
    assert await clean_db.fetchval("SELECT count(*) FROM audit_log") == 1

    refused = await asyncio.to_thread(
        CliRunner().invoke,
        main,
        ["calibrate", "--from-reviews", "--holdout-share", "2"],
        env={"DESKPILOT_DATABASE_URL": database_url, "DESKPILOT_DATA_DIR": str(tmp_path)},
    )
    assert refused.exit_code == 2 and "holdout-share" in refused.output


async def test_the_activated_version_scores_live_attempts_and_the_trace_shows_it(
    clean_db: asyncpg.Pool, database_url: str, tmp_path: Path, embedder: Any, make_settings: Any
) -> None:
    await seed_scored_reviews(clean_db, 400)
    version = (await calibrate(database_url, tmp_path, "--min-reviews", "100"))["version"]
    ticket_id = await new_ticket(
        clean_db, subject="Export", body="How do I export my timesheets?", email="v@example.com"
    )
    processor = TicketProcessor(clean_db, make_settings(), Metrics(), embedder=embedder, drafter=OfflineDrafter())
    await processor(await claim(clean_db, ticket_id))
    attempt = await clean_db.fetchrow(
        "SELECT id, calibration_version FROM resolution_attempts WHERE ticket_id = $1", ticket_id
    )
    assert attempt["calibration_version"] == version
    step = await clean_db.fetchval(
        "SELECT output FROM attempt_steps WHERE attempt_id = $1 AND node = 'score'", attempt["id"]
    )
    assert step["calibration_version"] == version
    async with clean_db.acquire() as conn:
        trace = await get_trace(conn, ticket_id)
    assert trace["attempts"][-1]["calibration_version"] == version
