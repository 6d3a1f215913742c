"""Priority without a learned model — a deployment with fewer than 30 labelled past tickets — read from the text by
the contract's guide: urgent for an incident, high for something blocked, normal for something degraded or wrong,
low for an enquiry."""

from __future__ import annotations

import pytest

from agent.scoring.risk import Risk
from agent.triage.classifier import RoutingPrediction
from agent.triage.decisions import decide_priority


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Do you offer a discount for charities?", "low"),
        ("Can we add a second warehouse, and who can see it?", "low"),
        ("¿Se puede exportar el catálogo a Excel?", "low"),
        ("Wie lade ich weitere Nutzer ein?", "low"),
        ("The stock numbers on the dashboard are wrong since yesterday. Why?", "normal"),
        ("Why does the import keep showing an error?", "normal"),
        ("The invoice PDF is missing the VAT line, how do I add it?", "normal"),
        ("Our sync stopped working and we cannot ship anything. What do we do?", "high"),
        ("Thanks for the quick help last week.", "normal"),  # asks nothing, reports nothing: no signal either way
    ],
)
def test_without_a_learned_model_an_enquiry_is_low_and_a_problem_is_not(text: str, expected: str) -> None:
    decided = decide_priority(text, None, {}, [], repeated_contact=False)
    assert decided["priority"] == expected, decided["reasons"]


def test_an_incident_asked_as_a_question_is_still_urgent() -> None:
    text = "Is anyone else seeing every order gone from the dashboard?"
    decided = decide_priority(text, None, {}, [Risk("data_loss", "every order gone")], repeated_contact=False)
    assert decided["priority"] == "urgent"


def test_a_learned_model_decides_over_the_enquiry_rule() -> None:
    prediction = RoutingPrediction(
        category_probs={},
        category_views={},
        intent_probs={},
        priority_probs={"normal": 0.8, "low": 0.2},
        neighbours=[],
        model={},
    )
    decided = decide_priority("Do you offer a discount for charities?", prediction, {}, [], repeated_contact=False)
    assert decided["priority"] == "normal"
