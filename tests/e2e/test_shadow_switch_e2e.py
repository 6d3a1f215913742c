"""A mode switch with a ticket in flight in a real worker process: the worker stops itself (SIGSTOP) once the
reply is drafted, the operator switches the mode, the worker resumes and decides. The decision transaction reads
the mode, so the ticket is held (live -> shadow: nothing reaches the real SMTP server) or sent exactly once
(shadow -> live), never both, never lost."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from core.settings import PROJECT_ROOT
from review import modes
from tests.support.agent_graph import new_ticket
from tests.support.agent_worker import PAUSE_MARK, AgentWorkerProcess
from tests.support.knowledge import load_example_articles, memo_embedder
from tests.support.smtp import running_smtp_server
from tests.support.workers import eventually, truthy

pytestmark = pytest.mark.e2e

QUESTION: dict[str, Any] = json.loads((PROJECT_ROOT / "examples" / "tickets" / "howto-invoice.json").read_text())
PAUSE_POINT = "after:draft"


@pytest.fixture(scope="module")
async def demo_knowledge(history: int, pool: asyncpg.Pool, embedder: Any) -> int:
    """The example help centre next to the example history: what the agent answers the question from."""
    async with pool.acquire() as conn:
        return await load_example_articles(conn, memo_embedder(embedder))


@pytest.mark.parametrize(("start", "switch_to"), [("live", "shadow"), ("shadow", "live")])
async def test_a_mode_switch_with_a_ticket_in_flight_neither_loses_nor_double_sends(
    demo_knowledge: int, pool: asyncpg.Pool, database_url: str, tmp_path: Path, start: str, switch_to: str
) -> None:
    await pool.execute("TRUNCATE agent_modes, audit_log")
    with running_smtp_server() as sink:
        env = {
            "DESKPILOT_DATABASE_URL": database_url,
            "DESKPILOT_DATA_DIR": str(tmp_path),
            "DESKPILOT_POLL_INTERVAL": "0.5",
            "DESKPILOT_SMTP_URL": sink.url,
            "DESKPILOT_MODE": start,
        }
        worker = await AgentWorkerProcess.start(database_url, env, tmp_path / "worker.log", pause_at=PAUSE_POINT)
        try:
            await worker.wait_listening(within_s=120)
            ticket_id = await new_ticket(
                pool,
                subject=QUESTION["subject"],
                body=QUESTION["body"],
                email=f"{start}-{switch_to}@customers.example",
            )
            await pool.execute("NOTIFY deskpilot_work")
            await worker.wait_log(f"{PAUSE_MARK} {PAUSE_POINT} (ticket {ticket_id})", within_s=60)
            await eventually(lambda: truthy(worker.stopped()), within_s=10, what="the worker stopped")
            async with pool.acquire() as conn:
                change = await modes.set_mode(conn, mode=switch_to, category=None, actor="ops", default=start)
            assert (change["from"], change["to"]) == (start, switch_to)
            worker.signal(signal.SIGCONT)

            async def decided() -> bool:
                state = await pool.fetchval(
                    "SELECT state FROM resolution_attempts WHERE ticket_id = $1 ORDER BY attempt_no DESC LIMIT 1",
                    ticket_id,
                )
                return state == "completed"

            with worker.log_on_failure():
                await eventually(decided, within_s=60, what="the resumed worker decided")
                if switch_to == "live":
                    await eventually(lambda: truthy(sink.messages), within_s=30, what="the reply sent (or a decision)")
                await asyncio.sleep(3.0)  # room for anything else it might send
        finally:
            await worker.stop()
        received = list(sink.messages)

    attempt = await pool.fetchrow(
        """SELECT decision, decision_reasons, mode FROM resolution_attempts
           WHERE ticket_id = $1 AND state = 'completed'""",
        ticket_id,
    )
    assert attempt["decision"] in {"deliver", "flag_for_review"}, dict(attempt)  # a reply in either mode
    assert attempt["mode"] == switch_to
    deliveries = await pool.fetch("SELECT status FROM deliveries WHERE ticket_id = $1", ticket_id)
    ticket = await pool.fetchrow("SELECT status, needs_review FROM tickets WHERE id = $1", ticket_id)
    if switch_to == "shadow":
        assert deliveries == [] and received == []
        assert (ticket["status"], ticket["needs_review"]) == ("pending_customer", True)
    else:
        assert [d["status"] for d in deliveries] == ["sent"]
        assert len(received) == 1
        assert ticket["status"] == "resolved"
