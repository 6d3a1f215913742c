"""Content gaps through the real agent, the real embedder and the real app: tickets the knowledge base cannot
answer come out as topics, an article that covers one makes it shrink once the escalated tickets are drafted
again; a category's frequent topics (the onboarding setup blockers); the console page; bad parameters."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from agent.drafting.drafter import OfflineDrafter
from agent.runner import TicketProcessor, requeue_on_knowledge_change
from agent.triage.classifier import RoutingModelCache
from app.web.security import CONTENT_SECURITY_POLICY
from core.metrics import Metrics
from core.settings import Settings
from knowledge.loader import load_paths
from tests.support.agent_graph import claim, fixed_calibration, new_ticket

LINUX = [
    ("Desktop app for Linux?", "Is there a desktop app for Ubuntu? We would like to track time on Linux."),
    ("Linux desktop client", "Do you ship a native desktop application for Linux machines?"),
    ("Desktop app on our Linux laptops", "Our team uses Linux laptops. Is there a desktop app we can install?"),
]
HIPAA = [
    ("BAA for HIPAA", "Will you sign a Business Associate Agreement? We are a clinic and need HIPAA compliance."),
    ("HIPAA business associate agreement", "Our healthcare practice needs a signed HIPAA BAA before we start."),
]
LINUX_ARTICLE = """# Desktop app for Linux

Yes: Tallyhive has a desktop app for Linux. It runs on Ubuntu 22.04 or later, Debian 12, Fedora 39 and other
distributions with the AppImage.

## Install the desktop app on Linux

1. Open **Settings → Apps → Desktop** in the web app.
2. Download the `.deb` package for Ubuntu and Debian, the `.rpm` for Fedora, or the AppImage for other Linux
   distributions.
3. Install it and sign in with your Tallyhive account. The timer syncs with the web app.
"""


@pytest.fixture(scope="module")
def models() -> RoutingModelCache:
    return RoutingModelCache()


@pytest.fixture
def processor(
    demo_kb: asyncpg.Pool, embedder: Any, models: RoutingModelCache, make_settings: Callable[..., Settings]
) -> TicketProcessor:
    # Every grounded reply at 0.70 (review, not escalation): with the shipped calibration the article's right
    # answers still scored 0.46-0.53 and escalated, the calibration issue 16 starts from, not what this tests.
    return TicketProcessor(
        demo_kb,
        make_settings(),
        Metrics(),
        embedder=embedder,
        drafter=OfflineDrafter(),
        models=models,
        calibration=fixed_calibration(0.7),
    )


async def topics_of(client: Any, **params: str) -> dict[str, Any]:
    response = await client.get("/api/reports/content-gaps", params=params)
    assert response.status_code == 200, response.text
    report: dict[str, Any] = response.json()
    return report


def topic_with(report: dict[str, Any], subject: str) -> dict[str, Any] | None:
    return next((t for t in report["topics"] if subject in {e["subject"] for e in t["examples"]}), None)


async def test_gaps_are_topics_and_an_article_shrinks_its_topic(
    client: Any, demo_kb: asyncpg.Pool, processor: TicketProcessor, memo: Any, tmp_path: Path
) -> None:
    pool = demo_kb
    linux = [await new_ticket(pool, subject=s, body=b, email=f"l{i}@example.com") for i, (s, b) in enumerate(LINUX)]
    hipaa = [await new_ticket(pool, subject=s, body=b, email=f"h{i}@example.com") for i, (s, b) in enumerate(HIPAA)]
    # Escalated too, but for a demand no article can change: no content gap.
    demand = await new_ticket(pool, subject="Refund", body="Refund me now for the unused seats.")
    for ticket_id in [*linux, *hipaa, demand]:
        await processor(await claim(pool, ticket_id))
    decisions = {
        r["ticket_id"]: (r["decision"], r["escalation_retryable"], r["decision_reasons"])
        for r in await pool.fetch(
            "SELECT ticket_id, decision, escalation_retryable, decision_reasons FROM resolution_attempts"
        )
    }
    # Escalated, and a re-run could change that (no risk gate): what a content gap is made of.
    assert all(decisions[t][:2] == ("escalate", True) for t in [*linux, *hipaa]), decisions
    assert decisions[demand][:2] == ("escalate", False), decisions[demand]

    report = await topics_of(client)
    assert report["kind"] == "content_gaps"
    assert report["tickets"] == 5  # not the demand
    linux_topic, hipaa_topic = topic_with(report, LINUX[0][0]), topic_with(report, HIPAA[0][0])
    assert linux_topic is not None and hipaa_topic is not None
    assert linux_topic["count"] == 3 and hipaa_topic["count"] == 2
    assert {e["ticket_id"] for e in linux_topic["examples"]} == {str(t) for t in linux}
    assert "linux" in linux_topic["label"] and "hipaa" in hipaa_topic["label"]
    assert all(e["reason"] for e in linux_topic["examples"])  # why each is a gap
    created = [e["created_at"] for e in linux_topic["examples"]]
    assert created == sorted(created, reverse=True)  # newest first
    assert len(linux_topic["trend"]) == 6 and linux_topic["trend"][-1]["count"] == 3

    # The article goes in; the escalated tickets are drafted again, as the maintenance loop does.
    (tmp_path / "desktop-app-for-linux.md").write_text(LINUX_ARTICLE)
    async with pool.acquire() as conn:
        loaded = await load_paths(conn, [tmp_path], embedder=memo, category="technical")
        assert loaded.documents == 1 and not loaded.errors
        assert await requeue_on_knowledge_change(conn) == 5
    for ticket_id in [*linux, *hipaa]:
        await processor(await claim(pool, ticket_id))
    redrafted = await pool.fetch(
        """SELECT DISTINCT ON (ticket_id) ticket_id, decision FROM resolution_attempts
           WHERE ticket_id = ANY($1::uuid[]) ORDER BY ticket_id, attempt_no DESC""",
        linux,
    )
    answered = {r["ticket_id"] for r in redrafted if r["decision"] != "escalate"}
    assert answered, "the article answers none of the tickets it covers"

    after = await topics_of(client)
    shrunk = next(
        (t for t in after["topics"] if {e["ticket_id"] for e in t["examples"]} & {str(t) for t in linux}), None
    )
    assert (shrunk["count"] if shrunk else 0) == 3 - len(answered), after
    assert not {e["ticket_id"] for t in after["topics"] for e in t["examples"]} & {str(t) for t in answered}
    still = topic_with(after, HIPAA[0][0])
    assert still is not None and still["count"] == 2


async def test_category_topics_encode_tickets_without_an_attempt(client: Any, clean_db: asyncpg.Pool) -> None:
    blockers = [
        ("Calendar sync not connecting", "The Google Calendar sync will not connect during setup."),
        ("Google Calendar won't connect", "Setting up: connecting Google Calendar fails every time."),
        ("Cannot invite my team", "Invitations to my colleagues never arrive, we are trying to get started."),
    ]
    ids = []
    for i, (subject, body) in enumerate(blockers):
        ticket_id = await new_ticket(clean_db, subject=subject, body=body, email=f"o{i}@example.com")
        await clean_db.execute(
            "UPDATE tickets SET category = 'onboarding', created_at = now() - make_interval(days => $2) WHERE id = $1",
            ticket_id,
            i * 8,
        )
        ids.append(ticket_id)
    billing = await new_ticket(clean_db, subject="Invoice copy", body="Send me last month's invoice again.")
    await clean_db.execute("UPDATE tickets SET category = 'billing' WHERE id = $1", billing)

    report = await topics_of(client, category="onboarding", weeks="4")
    assert report["kind"] == "category_topics" and report["category"] == "onboarding"
    assert report["tickets"] == 3
    calendar = topic_with(report, blockers[0][0])
    assert calendar is not None and calendar["count"] == 2
    assert "calendar" in calendar["label"]
    assert [e["ticket_id"] for e in calendar["examples"]] == [str(ids[0]), str(ids[1])]  # newest first
    weeks = [w["count"] for w in calendar["trend"]]
    assert len(weeks) == 4 and sum(weeks) == 2 and weeks[-1] >= 1
    assert report["topics"][0] is calendar or report["topics"][0]["count"] == 2  # the largest first
    # Nothing escalated: no content gap.
    assert (await topics_of(client))["topics"] == []


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("weeks=0", "weeks"),
        ("weeks=53", "weeks"),
        ("weeks=abc", "weeks"),
        ("category=sales", "category"),
    ],
)
async def test_bad_parameters_name_the_field(client: Any, query: str, field: str) -> None:
    response = await client.get(f"/api/reports/content-gaps?{query}")
    assert response.status_code in (400, 422), response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["field"] == field


async def test_api_and_page_need_the_admin_token(make_client: Callable[..., Any], clean_db: asyncpg.Pool) -> None:
    token = "content-gaps-admin-token-0123456789"
    await new_ticket(clean_db, subject="Billing <script>alert(1)</script>", body="hi")
    await clean_db.execute("UPDATE tickets SET category = 'onboarding'")
    async with make_client(DESKPILOT_ADMIN_TOKEN=token) as c:
        assert (await c.get("/api/reports/content-gaps")).status_code == 401
        page = await c.get("/console/content-gaps", follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"].startswith("/login")
        auth = {"Authorization": f"Bearer {token}"}
        assert (await c.get("/api/reports/content-gaps", headers=auth)).status_code == 200
        page = await c.get("/console/content-gaps", headers=auth)
        assert page.status_code == 200, page.text
        assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert 'href="/console/content-gaps" aria-current="page"' in page.text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text and "<script>" not in page.text
        assert 'id="category-topics"' in page.text
        bad = await c.get("/console/content-gaps?weeks=-1", headers=auth)
        assert bad.status_code == 422 and "weeks" in bad.text
