"""Plan names are the operator's words: validated as free strings, read through the tier settings by routing."""

from __future__ import annotations

import msgspec
import pytest

from agent.triage.classifier import RoutingPrediction
from agent.triage.decisions import decide_category, decide_priority
from core.settings import Settings, SettingsError, TierPolicy
from tickets.schemas import CustomerIn

# An operator whose plans are Basic (free), Trial, Team and Scale (the top plan).
OPERATOR = Settings.from_mapping(
    {"DESKPILOT_FREE_TIERS": "Basic", "DESKPILOT_TRIAL_TIERS": " Trial ,Pilot", "DESKPILOT_TOP_TIERS": "Scale"}
).tiers


def learned(priority: str) -> RoutingPrediction:
    return RoutingPrediction(
        category_probs={},
        category_views={},
        intent_probs={},
        priority_probs={priority: 0.9},
        neighbours=[],
        model={},
    )


def test_tier_settings_are_lists_of_plan_names() -> None:
    assert TierPolicy(trial=("trial", "pilot"), free=("basic",), top=("scale",)) == OPERATOR
    assert Settings.from_mapping({}).tiers == TierPolicy(trial=("trial",), free=("free",), top=("enterprise",))
    assert OPERATOR.is_paying("Team") and OPERATOR.is_paying("SCALE") and OPERATOR.is_top("scale")
    assert not OPERATOR.is_paying("basic") and not OPERATOR.is_paying("Pilot") and not OPERATOR.is_paying(None)
    with pytest.raises(SettingsError, match="DESKPILOT_TOP_TIERS"):
        Settings.from_mapping({"DESKPILOT_TOP_TIERS": "Scale,\x07bell"})
    with pytest.raises(SettingsError, match="DESKPILOT_FREE_TIERS"):
        Settings.from_mapping({"DESKPILOT_FREE_TIERS": "x" * 65})


@pytest.mark.parametrize("tier", ["Scale", "Team plan (annual)", "Équipe", "x" * 64])
def test_any_printable_plan_name_is_a_tier(tier: str) -> None:
    assert msgspec.convert({"email": "a@b.co", "tier": tier}, CustomerIn).tier == tier


@pytest.mark.parametrize("tier", ["", "   ", "x" * 65, "Team\nplan", "Team\n", "bell\x07"])
def test_a_tier_that_is_not_a_plan_name_is_refused(tier: str) -> None:
    with pytest.raises(msgspec.ValidationError, match="tier"):
        msgspec.convert({"email": "a@b.co", "tier": tier}, CustomerIn)


BLOCKED = "I cannot access the reports page, it is not working for me."


@pytest.mark.parametrize(
    ("tier", "expected"),
    [
        ("Team", "high"),
        ("Scale", "high"),
        ("Basic", "normal"),
        ("trial", "normal"),
        ("Pilot", "normal"),
        (None, "normal"),
    ],
)
def test_a_paying_customer_blocked_is_high_by_the_operators_plan_names(tier: str | None, expected: str) -> None:
    decided = decide_priority(BLOCKED, learned("normal"), {"tier": tier}, [], repeated_contact=False, tiers=OPERATOR)
    assert decided["priority"] == expected
    assert decided["signals"]["paying"] is (tier in {"Team", "Scale"})


def test_a_top_plan_raises_a_problem_but_not_an_enquiry() -> None:
    problem = "Reports are slow and sometimes time out."
    enquiry = "Would like to know whether you have a Linux app."
    for tier, text, expected in [("Scale", problem, "normal"), ("Scale", enquiry, "low"), ("Team", problem, "low")]:
        decided = decide_priority(text, learned("low"), {"tier": tier}, [], repeated_contact=False, tiers=OPERATOR)
        assert decided["priority"] == expected, (tier, text)
    # The default policy reads "enterprise" as the top plan.
    default = decide_priority(problem, learned("low"), {"tier": "Enterprise"}, [], repeated_contact=False)
    assert default["priority"] == "normal"


def test_a_trial_by_the_operators_name_leans_to_onboarding() -> None:
    text = "How do I set up my projects?"
    for tier, bonus in [("Pilot", True), ("TRIAL", True), ("Team", False)]:
        decided = decide_category(text, None, {"tier": tier, "events": []}, tiers=OPERATOR)
        assert any(r.startswith("trial account") for r in decided["reasons"]) is bonus, tier
