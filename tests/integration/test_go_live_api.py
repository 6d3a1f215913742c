"""Going live through the real app: the run-time mode switch (admin API, console form) and its audit log,
reviews as labels (verdict and reason, problem+json naming the field on bad input), the shadow entries of the
review queue, and the go-live report as JSON API, console page and `deskpilot report go-live --json`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any
from uuid import UUID

import asyncpg
import pytest
from click.testing import CliRunner

from app.cli import main
from tests.support.delivery import seed_attempt, seed_ticket

TOKEN = "go-live-admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def problem_field(response: Any) -> str:
    assert response.headers["content-type"].startswith("application/problem+json"), response.text
    body = response.json()
    return f"{body.get('field')}: {body.get('detail')}"


async def test_mode_switch_is_admin_only_validated_and_audited(
    make_client: Callable[..., Any], clean_db: asyncpg.Pool
) -> None:
    async with make_client(DESKPILOT_ADMIN_TOKEN=TOKEN) as c:
        assert (await c.get("/api/admin/mode")).status_code == 401
        assert (await c.put("/api/admin/mode", json={"mode": "shadow"})).status_code == 401
        assert (await c.get("/api/admin/audit-log")).status_code == 401

        view = (await c.get("/api/admin/mode", headers=AUTH)).json()
        assert (view["mode"], view["source"], view["environment_default"]) == ("live", "environment", "live")
        assert view["categories"]["billing"] == {
            "setting": "inherit",
            "effective": "live",
            "updated_at": None,
            "updated_by": None,
        }

        switched = await c.put(
            "/api/admin/mode", headers=AUTH, json={"mode": "shadow", "changed_by": "ops-alice", "note": "pilot"}
        )
        assert switched.status_code == 200, switched.text
        body = switched.json()
        assert body["change"] == {"scope": "*", "from": "live", "to": "shadow", "changed": True}
        assert (body["mode"], body["source"]) == ("shadow", "database")
        assert body["categories"]["technical"]["effective"] == "shadow"

        billing = await c.put("/api/admin/mode", headers=AUTH, json={"mode": "live", "category": "billing"})
        assert billing.status_code == 200, billing.text
        assert billing.json()["categories"]["billing"]["effective"] == "live"
        back = await c.put("/api/admin/mode", headers=AUTH, json={"mode": "inherit", "category": "billing"})
        assert back.json()["categories"]["billing"] == {
            "setting": "inherit",
            "effective": "shadow",
            "updated_at": None,
            "updated_by": None,
        }

        for payload, field in (
            ({"mode": "paused"}, "mode"),
            ({"mode": "inherit"}, "mode"),  # the deployment has nothing to inherit from
            ({"mode": "live", "category": "sales"}, "category"),
            ({"mode": "live", "status": "closed"}, "status"),
            ({}, "mode"),
        ):
            bad = await c.put("/api/admin/mode", headers=AUTH, json=payload)
            assert bad.status_code in (400, 422), (payload, bad.text)
            assert field in problem_field(bad), (payload, bad.text)
        not_json = await c.put("/api/admin/mode", headers={**AUTH, "content-type": "application/json"}, content=b"{")
        assert not_json.status_code == 400

        log = (await c.get("/api/admin/audit-log", headers=AUTH)).json()["items"]
    assert [(r["actor"], r["scope"], r["from_value"], r["to_value"]) for r in reversed(log)] == [
        ("ops-alice (admin token)", "*", "live", "shadow"),
        ("admin token", "billing", "inherit", "live"),
        ("admin token", "billing", "live", "inherit"),
    ]
    assert log[-1]["detail"] == {"note": "pilot"}
    assert await clean_db.fetchval("SELECT mode FROM agent_modes WHERE scope = '*'") == "shadow"


async def test_review_reasons_are_labels(client: Any, clean_db: asyncpg.Pool) -> None:
    async def escalated() -> tuple[UUID, UUID]:
        ticket_id = await seed_ticket(
            clean_db, status="pending_customer", needs_review=True, email=f"{id(object())}@e.com"
        )
        return ticket_id, await seed_attempt(clean_db, ticket_id, confidence=0.55, category="billing")

    ticket_id, attempt_id = await escalated()
    for body, field in (
        ({"action": "reject"}, "reason"),
        ({"action": "reject", "reason": "rude"}, "reason"),
        ({"action": "approve", "reason": "tone"}, "reason"),
    ):
        bad = await client.post(f"/api/tickets/{ticket_id}/review", json=body)
        assert bad.status_code in (400, 422), (body, bad.text)
        assert field in problem_field(bad), (body, bad.text)
    assert await clean_db.fetchval("SELECT count(*) FROM reviews") == 0

    rejected = await client.post(f"/api/tickets/{ticket_id}/review", json={"action": "reject", "reason": "tone"})
    assert rejected.status_code == 200, rejected.text
    assert (rejected.json()["verdict"], rejected.json()["reason"]) == ("wrong", "tone")

    edited_ticket, edited_attempt = await escalated()
    edited = await client.post(
        f"/api/tickets/{edited_ticket}/review",
        json={"action": "edit", "text": "Better answer.", "reason": "incomplete"},
    )
    approved_ticket, approved_attempt = await escalated()
    approved = await client.post(f"/api/tickets/{approved_ticket}/review", json={"action": "approve"})
    assert edited.status_code == approved.status_code == 200
    labels = {
        r["attempt_id"]: (r["verdict"], r["reason"], r["corrected_text"], r["category"], r["confidence"])
        for r in await clean_db.fetch("SELECT * FROM review_labels")
    }
    assert labels == {
        attempt_id: ("wrong", "tone", None, "billing", pytest.approx(0.55)),
        edited_attempt: ("wrong", "incomplete", "Better answer.", "billing", pytest.approx(0.55)),
        approved_attempt: ("right", None, None, "billing", pytest.approx(0.55)),
    }
    trace = (await client.get(f"/api/tickets/{edited_ticket}/trace")).json()
    assert trace["attempts"][0]["reviews"][0]["verdict"] == "wrong"


async def test_the_review_queue_shows_what_shadow_mode_would_have_done(client: Any, clean_db: asyncpg.Pool) -> None:
    ticket_id = await seed_ticket(clean_db, status="pending_customer", needs_review=True)
    attempt_id = await seed_attempt(clean_db, ticket_id, decision="deliver", confidence=0.93)
    await clean_db.execute("UPDATE resolution_attempts SET mode = 'shadow' WHERE id = $1", attempt_id)
    item = (await client.get("/api/review-queue")).json()["items"][0]
    assert (item["reason"], item["would_have"], item["mode"], item["attempt"]["mode"]) == (
        "shadow",
        "deliver",
        "shadow",
        "shadow",
    )
    page = await client.get("/console/review")
    assert "would have:" in page.text and '<span class="badge deliver">deliver</span>' in page.text
    trace = await client.get(f"/traces/{ticket_id}")
    assert "Shadow mode: nothing was sent" in trace.text


async def seed_reviews(pool: asyncpg.Pool, category: str, rows: list[tuple[float, bool]]) -> None:
    for n, (confidence, right) in enumerate(rows):
        ticket_id = await seed_ticket(pool, email=f"{category}{n}@example.com", category=category)
        attempt_id = await seed_attempt(pool, ticket_id, decision="deliver", confidence=confidence, category=category)
        await pool.execute(
            """INSERT INTO reviews (ticket_id, attempt_id, action, verdict, reason)
               VALUES ($1, $2, $3, $4, $5)""",
            ticket_id,
            attempt_id,
            "approve" if right else "reject",
            "right" if right else "wrong",
            None if right else "wrong_answer",
        )


BILLING = [(0.95, True), (0.93, True), (0.91, True), (0.90, False), (0.88, True), (0.86, True), (0.84, True)]


async def test_go_live_report_api_console_and_cli(
    client: Any, clean_db: asyncpg.Pool, database_url: str, tmp_path: Any
) -> None:
    await seed_reviews(clean_db, "billing", BILLING)
    response = await client.get("/api/reports/go-live", params={"target_precision": 0.6, "min_reviews": 3})
    assert response.status_code == 200, response.text
    report = response.json()
    billing = next(c for c in report["categories"] if c["category"] == "billing")
    # At 0.85: 5 of 6 right, Wilson 0.4365-0.9699; lowest threshold with a lower bound >= 0.6: none.
    assert billing["at_current_threshold"]["would_auto_resolve"] == 6
    assert billing["at_current_threshold"]["right"] == 5
    assert billing["at_current_threshold"]["ci95"] == [pytest.approx(0.4365, abs=5e-5), pytest.approx(0.9699, abs=5e-5)]
    assert billing["ready"] is False and billing["mode"] == "live"
    assert billing["verdict"].startswith("not yet: precision interval below target 0.60")

    for params, name in (({"target_precision": 2}, "target_precision"), ({"min_reviews": 0}, "min_reviews")):
        bad = await client.get("/api/reports/go-live", params=params)
        assert bad.status_code in (400, 422), bad.text
        assert name in problem_field(bad)

    page = await client.get("/console/go-live")
    assert page.status_code == 200
    assert 'id="go-live-report"' in page.text and "not yet" in page.text
    assert "script-src" not in page.text  # server-rendered, no script
    csrf = page.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    client.follow_redirects = False
    forged = await client.post("/console/mode", data={"mode": "shadow", "category": ""})
    assert forged.status_code == 403
    done = await client.post("/console/mode", data={"mode": "live", "category": "billing", "csrf_token": csrf})
    assert done.status_code == 303, done.text
    assert done.headers["location"] == "/console/go-live?switched=billing+live"
    bad_form = await client.post("/console/mode", data={"mode": "paused", "category": "", "csrf_token": csrf})
    assert bad_form.status_code == 422 and "mode" in bad_form.text
    after = (await client.get(done.headers["location"])).text
    assert "Mode set: billing live." in after and 'id="audit-log"' in after
    assert await clean_db.fetchval("SELECT actor FROM audit_log") == "open admin API (no admin token configured)"

    result = await asyncio.to_thread(
        CliRunner().invoke,
        main,
        ["report", "go-live", "--json", "--target-precision", "0.6", "--min-reviews", "3"],
        env={"DESKPILOT_DATABASE_URL": database_url, "DESKPILOT_DATA_DIR": str(tmp_path)},
    )
    assert result.exit_code == 0, result.output
    cli_report = json.loads(result.stdout)
    assert next(c for c in cli_report["categories"] if c["category"] == "billing") == {**billing, "mode": "live"}
    table = await asyncio.to_thread(
        CliRunner().invoke,
        main,
        ["report", "go-live", "--min-reviews", "3"],
        env={"DESKPILOT_DATABASE_URL": database_url, "DESKPILOT_DATA_DIR": str(tmp_path)},
    )
    assert table.exit_code == 0 and "billing" in table.output and "not yet" in table.output
    refused = await asyncio.to_thread(
        CliRunner().invoke,
        main,
        ["report", "go-live", "--target-precision", "1.5"],
        env={"DESKPILOT_DATABASE_URL": database_url, "DESKPILOT_DATA_DIR": str(tmp_path)},
    )
    assert refused.exit_code == 2 and "target-precision" in refused.output
