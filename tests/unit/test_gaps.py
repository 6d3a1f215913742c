"""The content-gap grouping without a database: clusters, labels, weekly trend, why a ticket is a gap."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import numpy as np
import pytest

from review import gaps

NOW = datetime(2026, 12, 6, 15, 0, tzinfo=UTC)  # a Sunday, ISO week 2026-W49


def unit(*values: float) -> np.ndarray:
    v = np.asarray(values, dtype=np.float32)
    return v / np.linalg.norm(v)


def ticket(n: int, subject: str, vector: np.ndarray, days_ago: float = 0.0) -> gaps.GapTicket:
    return gaps.GapTicket(UUID(int=n), subject, NOW - timedelta(days=days_ago), vector)


def test_cluster_labels_cut_at_the_cosine_distance() -> None:
    vectors = np.stack([unit(1, 0.1, 0), unit(1, 0, 0.1), unit(0, 1, 0), unit(0, 1, 0.05), unit(0, 0, 1)])
    labels = gaps.cluster_labels(vectors, distance_threshold=0.3)
    assert labels[0] == labels[1] and labels[2] == labels[3]
    assert len({labels[0], labels[2], labels[4]}) == 3
    assert len(set(gaps.cluster_labels(vectors, distance_threshold=1.5))) == 1  # everything merges
    assert gaps.cluster_labels(np.zeros((0, 3))) == []
    assert gaps.cluster_labels(vectors[:1]) == [0]


def test_labels_are_distinctive_subject_words_without_stopwords() -> None:
    labels = gaps.topic_labels(
        [
            ["Desktop app for Linux?", "Is there a Linux desktop app", "Linux timer app"],
            ["App for the Apple Watch", "Apple Watch support"],
            ["?", ""],
        ]
    )
    assert labels[0].split(" · ")[0] == "linux"  # in every subject of the topic, in no other topic
    assert "desktop" in labels[0] and "for" not in labels[0] and "is" not in labels[0].split(" · ")
    assert labels[1].startswith("apple · watch")
    assert labels[2] == "?"  # no word left: the first subject


def test_weekly_trend_counts_iso_weeks_oldest_first_with_zeros() -> None:
    created = [
        NOW,
        NOW - timedelta(days=6),
        NOW - timedelta(days=7),
        NOW - timedelta(weeks=3),
        NOW - timedelta(weeks=9),
    ]
    trend = gaps.weekly_trend(created, now=NOW, weeks=4)
    assert trend == [("2026-W46", 1), ("2026-W47", 0), ("2026-W48", 1), ("2026-W49", 2)]
    assert gaps.window_start(NOW, 1) == datetime(2026, 11, 30, tzinfo=UTC)  # this week's Monday
    assert gaps.window_start(NOW, 4) == datetime(2026, 11, 9, tzinfo=UTC)
    assert gaps.iso_week(datetime(2027, 1, 1).date()) == "2026-W53"  # ISO years, not calendar years


def test_topics_largest_first_examples_newest_first() -> None:
    linux = unit(1, 0, 0)
    watch = unit(0, 1, 0)
    tickets = [
        ticket(1, "Linux desktop app", linux, days_ago=10),
        ticket(2, "Apple Watch app", watch, days_ago=1),
        ticket(3, "Desktop app for Linux", linux, days_ago=2),
        ticket(4, "Linux client", linux, days_ago=20),
    ]
    topics = gaps.group_topics(tickets, now=NOW, weeks=6, examples=2)
    assert [t.count for t in topics] == [3, 1]
    assert [e.ticket_id.int for e in topics[0].examples] == [3, 1]  # newest first, at most `examples`
    assert topics[0].label.startswith("linux")
    assert sum(c for _, c in topics[0].trend) == 3 and len(topics[0].trend) == 6
    as_json = gaps.topic_as_dict(topics[1])
    assert as_json["count"] == 1 and as_json["examples"][0]["subject"] == "Apple Watch app"
    assert gaps.group_topics([], now=NOW) == []


def escalation(**overrides: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "decision": "escalate",
        "escalation_retryable": True,
        "rejected_incomplete": False,
        "scoring": {"model": "knowledge", "confidence": 0.4, "signals": {"coverage": 1.0, "reader_min": 0.45}},
        "drafted": {"llm": {"handed_over": []}},
    }
    row.update(overrides)
    return row


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        (escalation(scoring={"gate_reasons": ["nothing to ground a reply in: no past resolution"]}), "nothing to"),
        (escalation(drafted={"llm": {"handed_over": ["Is there an SDK?"]}}), "1 question(s) handed over"),
        (escalation(drafted={"detail": {"handed_over": ["a", "b"]}}), "2 question(s) handed over"),
        (escalation(scoring={"model": "knowledge", "signals": {"coverage": 0.5}}), "knowledge coverage 0.50"),
        (escalation(), "weak evidence: confidence 0.40, weakest answer match 0.45"),
        (escalation(decision="deliver", rejected_incomplete=True), "a reviewer rejected the reply as incomplete"),
    ],
)
def test_why_a_ticket_is_a_gap(row: dict[str, Any], reason: str) -> None:
    found = gaps.gap_reason(row)
    assert found is not None and found.startswith(reason)


@pytest.mark.parametrize(
    "row",
    [
        escalation(escalation_retryable=False),  # a demand, an injection, an incident: no article changes that
        escalation(decision="flag_for_review"),
        escalation(decision="deliver"),
        escalation(decision=None, escalation_retryable=None),  # no completed attempt yet
    ],
)
def test_what_is_not_a_gap(row: dict[str, Any]) -> None:
    assert gaps.gap_reason(row) is None


async def test_ticket_vectors_encode_each_text_once() -> None:
    class Counting:
        name, dimension = "counting", 2

        def __init__(self) -> None:
            self.texts: list[str] = []

        def encode(self, texts: list[str]) -> np.ndarray:
            self.texts.extend(texts)
            return np.stack([unit(len(t), 1) for t in texts])

    embedder = Counting()
    cache = gaps.TicketVectors(size=2)
    a, b, c = (UUID(int=1), "a"), (UUID(int=2), "bb"), (UUID(int=3), "ccc")
    first = await cache.vectors(embedder, [a, b])
    again = await cache.vectors(embedder, [b, a])
    assert embedder.texts == ["a", "bb"]
    assert np.array_equal(first[0], again[1])
    await cache.vectors(embedder, [c])  # over `size`: the least recently used (b) goes
    await cache.vectors(embedder, [a])
    assert embedder.texts == ["a", "bb", "ccc"]
    await cache.vectors(embedder, [b])
    assert embedder.texts == ["a", "bb", "ccc", "bb"]
