"""`deskpilot serve` as a process pointed at a local Chat Completions server: the real langchain-openai client
drafts the reply, the trace shows the model, and a failing model never produces a reply marked sent."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support.fake_openai import FakeOpenAI, reply_json, status
from tests.support.server import ServerProcess, example_ticket, serving, wait_for_decision

pytestmark = pytest.mark.e2e

API_KEY = "sk-e2e-secret-7731"


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


@pytest.fixture(scope="module")
def llm_server(llm: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {
        "DESKPILOT_POLL_INTERVAL": "0.5",
        "OPENAI_BASE_URL": llm.base_url,
        "OPENAI_API_KEY": API_KEY,
        "DESKPILOT_LLM_MODEL": "local-test-model",
        "DESKPILOT_LLM_MAX_RETRIES": "1",
        "DESKPILOT_LLM_FALLBACK": "escalate",
    }
    log_path = tmp_path_factory.mktemp("logs") / "serve.log"
    with serving(env, log_path, "--demo", data_prefix="deskpilot-e2e-llm-") as server:
        yield server


def test_llm_drafts_the_reply_and_the_trace_shows_it(llm: FakeOpenAI, llm_server: ServerProcess) -> None:
    llm.script(
        reply_json(
            {
                "reply": "Hello! You can download every invoice as a PDF from Billing, then History.",
                "cited_ids": ["R1"],
                "confidence": 0.95,
                "reasons": ["R1 answers the question"],
                "needs_human": False,
            }
        )
    )
    with httpx.Client(base_url=llm_server.base_url, timeout=10) as http:
        health = http.get("/health").json()
        assert health["llm"]["enabled"] is True
        assert health["llm"]["model"] == "local-test-model"
        assert API_KEY not in http.get("/health").text
        ticket = wait_for_decision(
            http, http.post("/api/webhooks/support/ingest", json=example_ticket("howto-invoice")).json()["ticket_id"]
        )
        trace = http.get(f"/api/tickets/{ticket['id']}/trace")
        draft_step = next(s for s in trace.json()["attempts"][-1]["steps"] if s["node"] == "draft")
        assert draft_step["output"]["drafter"] == "llm"
        assert API_KEY not in trace.text
    assert llm.requests, "the model was never called"
    assert "<customer_ticket" in str(llm.requests[-1].body)


def test_a_failing_model_escalates_and_sends_nothing(llm: FakeOpenAI, llm_server: ServerProcess) -> None:
    llm.script(status(500), status(500), status(500), status(500))
    payload = {**example_ticket("password-reset"), "external_id": "e2e-llm-fail-1"}
    with httpx.Client(base_url=llm_server.base_url, timeout=10) as http:
        ticket = wait_for_decision(http, http.post("/api/webhooks/support/ingest", json=payload).json()["ticket_id"])
        assert ticket["attempts"][-1]["decision"] == "escalate"
        assert ticket["deliveries"] == []
        assert not [m for m in ticket["messages"] if m["direction"] == "outbound"]
