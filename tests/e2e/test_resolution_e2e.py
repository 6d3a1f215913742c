"""The whole pipeline on a real server process: `deskpilot serve --demo`, tickets posted over HTTP, decisions read."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.server import ServerProcess, example_ticket, serving, wait_for_decision

pytestmark = pytest.mark.e2e

GRAPH_ORDER = ["classify", "prioritize", "dispatch", "load_context", "retrieve", "draft", "score"]
DECISION_NODES = {"deliver", "flag_for_review", "escalate"}


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log_path = tmp_path_factory.mktemp("logs") / "serve.log"
    with serving({"DESKPILOT_POLL_INTERVAL": "0.5"}, log_path, "--demo", data_prefix="deskpilot-e2e-demo-") as server:
        yield server


def post(http: httpx.Client, payload: dict[str, Any]) -> str:
    response = http.post("/api/webhooks/support/ingest", json=payload)
    assert response.status_code == 201, response.text
    ticket_id: str = response.json()["ticket_id"]
    return ticket_id


def test_how_to_question_is_resolved_with_a_grounded_reply(demo_server: ServerProcess) -> None:
    with httpx.Client(base_url=demo_server.base_url, timeout=10) as http:
        ticket = wait_for_decision(http, post(http, example_ticket("howto-invoice")))
        assert ticket["status"] == "resolved", ticket
        assert ticket["category"] == "billing"
        outbound = [m for m in ticket["messages"] if m["direction"] == "outbound"]
        assert len(outbound) == 1
        assert "invoice" in outbound[0]["body"].lower()
        assert len(ticket["deliveries"]) == 1
        trace = http.get(f"/api/tickets/{ticket['id']}/trace").json()
        steps = trace["attempts"][-1]["steps"]
        names = [s["node"] for s in steps]
        assert names[: len(GRAPH_ORDER)] == GRAPH_ORDER
        assert names[-1] in DECISION_NODES
        assert all(s["duration_ms"] >= 0 for s in steps)
        page = http.get(f"/traces/{ticket['id']}")
        assert page.status_code == 200
        assert "retrieve" in page.text


@pytest.mark.parametrize("name", ["refund-demand", "prompt-injection-refund"])
def test_refund_demand_and_injection_are_escalated_not_answered(demo_server: ServerProcess, name: str) -> None:
    with httpx.Client(base_url=demo_server.base_url, timeout=10) as http:
        ticket = wait_for_decision(http, post(http, example_ticket(name)))
        assert ticket["attempts"][-1]["decision"] == "escalate", ticket["attempts"]
        assert ticket["status"] == "pending_customer"
        assert not [m for m in ticket["messages"] if m["direction"] == "outbound"]
        assert ticket["deliveries"] == []
        queue = http.get("/api/review-queue").json()
        assert ticket["id"] in json.dumps(queue)


def test_outage_report_is_urgent_and_never_auto_resolved(demo_server: ServerProcess) -> None:
    with httpx.Client(base_url=demo_server.base_url, timeout=10) as http:
        ticket = wait_for_decision(http, post(http, example_ticket("outage-report")))
        assert ticket["priority"] == "urgent"
        assert ticket["attempts"][-1]["decision"] != "deliver"
