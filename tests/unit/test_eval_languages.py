"""`deskpilot eval`'s per-language breakdown: counts, accuracy, reply similarity and the subject retrieval check."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from agent.quality.evaluation import LabelledTicket, TicketResult, language_breakdown

TICKETS = [
    (
        "t1",
        "Invoice charged twice",
        "The invoice for this month shows the same charge twice, what can we do?",
        "billing",
    ),
    (
        "t2",
        "Drucker druckt nicht",
        "Unser Drucker druckt seit dem Update nicht mehr und wir können nicht arbeiten.",
        "technical",
    ),
    ("t3", "Login broken", "I cannot log in since the password reset and the page is blank.", "technical"),
]


class SubjectEmbedder:
    """A ticket's subject is its own vector; a ticket's full text is the same vector, so the check finds it."""

    name = "subject-fake"
    dimension = 3

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return np.stack([np.eye(3, dtype=np.float32)[[t[1] for t in TICKETS].index(text)] for text in texts])


def result(ticket_id: str, category: str, predicted: str) -> TicketResult:
    return TicketResult(
        id=ticket_id,
        category=category,
        predicted_category=predicted,
        priority=None,
        predicted_priority="normal",
        decision="escalate",
        confidence=0.1,
        intent=None,
        grounding_intent=None,
        right=None,
        signals={},
        signal_model="similarity",
        similarity_signals={},
        similarity_right=None,
        draft="",
        answer="gold",
    )


def test_figures_are_split_by_the_language_of_the_ticket_text() -> None:
    evaluation = [LabelledTicket(i, s, b, "gold", c, None, None, None) for i, s, b, c in TICKETS]
    results = [
        result("t1", "billing", "billing"),
        result("t2", "technical", "general"),
        result("t3", "technical", "technical"),
    ]
    # Six history rows that are t2's subject exactly, then the three tickets: t1's and t3's rows are their own
    # subjects' vectors; t2's row is t1's vector, so the history outranks it and its check fails.
    eye = np.eye(3, dtype=np.float32)
    stored = np.vstack([eye[[1] * 6], eye[[0, 0, 2]]])

    breakdown = language_breakdown(
        SubjectEmbedder(), evaluation, results, {"t1": 0.8, "t2": 0.4, "t3": 0.6}, stored, first_eval_row=6
    )

    assert set(breakdown) == {"en", "de"}
    assert breakdown["en"] == {
        "n": 2,
        "category_accuracy": 1.0,
        "reply_similarity": 0.7,
        "subject_finds_ticket_at_5": 1.0,
        "retrieval_checks": 2,
    }
    assert breakdown["de"]["category_accuracy"] == 0.0
    assert breakdown["de"]["reply_similarity"] == 0.4
    assert (breakdown["de"]["subject_finds_ticket_at_5"], breakdown["de"]["retrieval_checks"]) == (0.0, 1)
