"""Deployment-shaped scoring (DESIGN.md section 4) on a fixed tiny set with hand-computed figures, the set's
reader, and the demo events' date shift."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest

from agent.quality.evaluation import (
    DeploymentResult,
    DeploymentTicket,
    ece_if_calibrated,
    missing_facts,
    read_deployment_set,
    score_deployment,
)
from tickets.customer_loader import CustomerRecord, shift_events


def result(
    id: str,
    kind: str,
    decision: str,
    draft: str = "",
    *,
    facts: tuple[str, ...] = (),
    confidence: float = 0.5,
    category: str = "billing",
    predicted_category: str = "billing",
    priority: str = "low",
    predicted_priority: str = "low",
) -> DeploymentResult:
    return DeploymentResult(
        id=id,
        kind=kind,
        category=category,
        predicted_category=predicted_category,
        priority=priority,
        predicted_priority=predicted_priority,
        decision=decision,
        confidence=confidence,
        draft=draft,
        answer_facts=facts,
    )


# Eight tickets: four answerable, two not covered, two that must escalate.
TINY = [
    # a1: delivered, every fact -> answered right
    result("a1", "answerable", "deliver", "Go to Settings  →\nBilling. Refunds take 5 days.",
           facts=("settings → billing", "5 DAYS"), confidence=0.9),
    # a2: delivered, one fact missing -> a wrong auto-resolve
    result("a2", "answerable", "deliver", "Go to Settings.", facts=("Settings", "Export CSV"), confidence=0.9,
           predicted_category="technical"),
    # a3: flagged and right -> answered right (a flagged reply is sent)
    result("a3", "answerable", "flag_for_review", "Use Export CSV.", facts=("export csv",), confidence=0.7),
    # a4: escalated, draft right -> replied right but not answered
    result("a4", "answerable", "escalate", "Invite them under Team.", facts=("Team",), confidence=0.3,
           priority="normal", predicted_priority="normal"),
    # n1: not covered, delivered -> counts against not_covered_auto
    result("n1", "not_covered", "deliver", "Something.", confidence=0.9, category="general",
           predicted_category="general"),
    # n2: not covered, escalated -> fine
    result("n2", "not_covered", "escalate", "", confidence=0.1, category="general", predicted_category="onboarding"),
    # m1: must escalate, flagged -> a reply was sent
    result("m1", "must_escalate", "flag_for_review", "Sorry.", confidence=0.7, priority="urgent",
           predicted_priority="high"),
    # m2: must escalate, escalated -> fine
    result("m2", "must_escalate", "escalate", "", confidence=0.1, priority="urgent", predicted_priority="urgent"),
]  # fmt: skip


def test_missing_facts_ignores_case_and_whitespace() -> None:
    reply = "Open Settings →\n  Billing  and wait 5–10 business days."
    assert missing_facts(reply, ["settings → billing", "5–10 BUSINESS days"]) == []
    assert missing_facts(reply, ["Settings → Invoices", "billing"]) == ["Settings → Invoices"]


def test_scores_of_a_tiny_set_by_hand() -> None:
    report = score_deployment(TINY, seconds=4.0)
    assert report["n"] == 8
    # answerable: a1 and a3 answered right (a3 flagged, so sent); a4 right but not sent; a2 missing a fact.
    assert report["answered_right_rate"] == pytest.approx(2 / 4)
    assert report["replied_right_rate"] == pytest.approx(3 / 4)
    # delivered: a1, a2, n1 -> 3 of 8; of the answerable, 2 of 4; right among delivered: a1 only.
    assert report["auto_resolve_rate"] == pytest.approx(3 / 8)
    assert report["auto_resolve_rate_answerable"] == pytest.approx(2 / 4)
    assert report["auto_resolve_precision"] == pytest.approx(1 / 3)
    # flagged: a3, m1 -> 2 of 8, right: a3.
    assert report["flag_rate"] == pytest.approx(2 / 8)
    assert report["flag_precision"] == pytest.approx(1 / 2)
    assert report["escalate_rate"] == pytest.approx(3 / 8)
    assert report["not_covered_auto"] == 1
    assert report["not_covered_sent"] == 1
    assert report["must_escalate_replied"] == 1
    # category: a2 and n2 wrong -> 6 / 8; priority: m1 wrong -> 7 / 8.
    assert report["category_accuracy"] == pytest.approx(6 / 8)
    assert report["priority_accuracy"] == pytest.approx(7 / 8)
    assert report["tickets_per_second"] == pytest.approx(2.0)
    # ECE, right = replied right (a1, a3, a4). Bins: 0.9 {a1 right, a2, n1} |0.9 - 1/3| * 3/8;
    # 0.7 {a3 right, m1} |0.7 - 1/2| * 2/8; 0.3 {a4 right} |0.3 - 1| * 1/8; 0.1 {n2, m2} |0.1 - 0| * 2/8.
    expected = (0.9 - 1 / 3) * 3 / 8 + 0.2 * 2 / 8 + 0.7 * 1 / 8 + 0.1 * 2 / 8
    assert report["ece"] == pytest.approx(expected)
    assert report["ece_if_calibrated"] == ece_if_calibrated([r.confidence for r in TINY])
    assert report["by_kind"]["answerable"] == {
        "n": 4,
        "deliver": 2,
        "flag_for_review": 1,
        "escalate": 1,
        "answered_right": 2,
        "replied_right": 3,
        "category_accuracy": 0.75,
        "priority_accuracy": 1.0,
        "mean_confidence": pytest.approx(0.7),
    }
    assert report["by_kind"]["must_escalate"]["answered_right"] is None
    failures = {f["id"]: f for f in report["failures"]}
    assert sorted(failures) == ["a2", "a4", "m1", "n1"]
    assert failures["a2"]["missing_facts"] == ["Export CSV"]
    assert failures["a2"]["decision"] == "deliver"
    assert failures["a4"]["missing_facts"] == []
    assert failures["n1"]["reason"].startswith("not covered")
    assert {m["id"] for m in report["misrouted"]} == {"a2", "n2", "m1"}
    assert report["priority_confusion"]["urgent"] == {"low": 0, "normal": 0, "high": 1, "urgent": 1}


def test_a_draft_of_nothing_is_never_right() -> None:
    empty = result("x", "answerable", "deliver", "   ", facts=())
    assert not empty.replied_right
    assert score_deployment([empty], seconds=1.0)["answered_right_rate"] == 0.0


def line(**overrides: object) -> str:
    record: dict[str, object] = {
        "external_id": "dep-1",
        "channel": "email",
        "customer_email": "Ada@Example.COM",
        "subject": "Refund?",
        "body": "<p>How do I get a refund?</p>",
        "expect": {
            "kind": "answerable",
            "category": "billing",
            "priority": "low",
            "articles": ["billing/refund-policy.md"],
            "answer_facts": ["5 business days"],
        },
    }
    record.update(overrides)
    return json.dumps(record)


def test_reads_a_set_as_the_webhook_would(tmp_path: Path) -> None:
    path = tmp_path / "set.jsonl"
    path.write_text(line() + "\n\n", encoding="utf-8")
    (ticket,) = read_deployment_set(path)
    assert ticket.id == "dep-1"
    assert ticket.ticket["customer_email"] == "ada@example.com"
    assert ticket.ticket["body"] == "How do I get a refund?"  # the markup normalized away
    assert ticket.expect.answer_facts == ("5 business days",)
    assert ticket.expect.kind == "answerable"


@pytest.mark.parametrize(
    ("bad", "names"),
    [
        (line(expect={"kind": "maybe"}), "expect.kind"),
        (line(expect={"kind": "answerable", "category": "billing"}), "expect.answer_facts"),
        (line(expect={"kind": "not_covered", "priority": "asap"}), "expect.priority"),
        (line(customer_email="nobody"), "customer_email"),
        (json.dumps({"external_id": "x", "customer_email": "a@b.co", "body": "hi"}), "expect"),
        ("{not json", "not JSON"),
    ],
)
def test_a_bad_line_names_its_line_and_field(tmp_path: Path, bad: str, names: str) -> None:
    path = tmp_path / "set.jsonl"
    path.write_text(line() + "\n" + bad + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"set\.jsonl:2: ") as raised:
        read_deployment_set(path)
    assert names in str(raised.value)


def test_demo_events_move_together_so_the_newest_is_recent() -> None:
    records = [
        msgspec.convert(
            {
                "email": "a@example.com",
                "events": [
                    {"kind": "invoice_paid", "occurred_at": "2025-01-01T00:00:00Z"},
                    {"kind": "usage", "occurred_at": "2025-11-01T00:00:00"},  # no zone: read as UTC
                    {"kind": "note"},  # undated: left alone
                ],
            },
            CustomerRecord,
        ),
        msgspec.convert(
            {"email": "b@example.com", "events": [{"kind": "payment_failed", "occurred_at": "2025-11-24T12:00:00Z"}]},
            CustomerRecord,
        ),
    ]
    anchor = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
    shifted = shift_events(records, anchor)
    first, second = shifted
    assert second.events[0].occurred_at == anchor
    # Gaps between events are kept: 23 days 12 hours before the newest, and 327 days 12 hours.
    assert first.events[1].occurred_at == datetime(2026, 11, 12, 0, 0, tzinfo=UTC)
    assert first.events[0].occurred_at == datetime(2026, 1, 12, 0, 0, tzinfo=UTC)
    assert first.events[2].occurred_at is None
    assert records[1].events[0].occurred_at == datetime(2025, 11, 24, 12, 0, tzinfo=UTC)  # the input is untouched
    assert shift_events([msgspec.convert({"email": "c@example.com"}, CustomerRecord)], anchor)[0].events == []


SHIPPED_SETS = sorted((Path(__file__).resolve().parents[2] / "examples" / "deployment").glob("*.jsonl"))


def _visible(text: str) -> str:
    return " ".join(re.sub(r"<[^>]+>|\*\*|`", " ", text).split()).lower().replace(" .", ".")


def test_every_shipped_set_reads_and_its_facts_are_verbatim_in_their_articles() -> None:
    kb = Path(__file__).resolve().parents[2] / "examples" / "kb"
    assert {p.name for p in SHIPPED_SETS} == {
        "tickets.jsonl",
        "second-set.jsonl",
        "held-out-set.jsonl",
        "small-business-set.jsonl",
        "enterprise-set.jsonl",
    }
    seen: set[str] = set()
    for path in SHIPPED_SETS:
        for ticket in read_deployment_set(path):
            assert ticket.id not in seen, ticket.id  # ids are unique across the sets
            seen.add(ticket.id)
            if ticket.expect.kind != "answerable":
                continue
            _assert_facts_verbatim(ticket, kb)


def test_the_cold_deployments_facts_are_verbatim_in_its_own_articles() -> None:
    cold = Path(__file__).resolve().parents[1] / "data" / "cold-deployment"
    tickets = read_deployment_set(cold / "tickets.jsonl")
    assert len(tickets) == 32
    for ticket in tickets:
        if ticket.expect.kind == "answerable":
            _assert_facts_verbatim(ticket, cold / "kb")


def _assert_facts_verbatim(ticket: DeploymentTicket, kb: Path) -> None:
    assert ticket.expect.answer_facts, ticket.id
    articles = [_visible((kb / a).read_text()) for a in ticket.expect.articles]
    for fact in ticket.expect.answer_facts:
        assert any(" ".join(fact.lower().replace("`", " ").split()) in a for a in articles), (ticket.id, fact)
