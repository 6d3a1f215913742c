"""The LLM's contribution to confidence, the account summary for the prompt, and the draft step's output."""

from __future__ import annotations

import pytest

from agent.drafting.llm import DraftResult, confidence_factor
from agent.drafting.prompts import summarize_account

REVIEW_THRESHOLD = 0.60


def test_factor_bounds_and_monotonicity() -> None:
    assert confidence_factor(1.0, 1.0) == pytest.approx(1.0)
    assert confidence_factor(0.0, 0.0) == pytest.approx(0.275)
    grid = [i / 10 for i in range(11)]
    for s in grid:
        for v in grid[:-1]:
            assert confidence_factor(s, v) <= confidence_factor(s, v + 0.1)
            assert confidence_factor(v, s) <= confidence_factor(v + 0.1, s)
    assert confidence_factor(7.0, -3.0) == confidence_factor(1.0, 0.0)  # clamped, never outside [0.275, 1]


def test_a_confident_model_without_sources_is_not_confident() -> None:
    # Even a perfect retrieval score cannot carry an ungrounded reply past the review threshold.
    assert 1.0 * confidence_factor(1.0, 0.0) < REVIEW_THRESHOLD
    # A grounded reply the model rates highly keeps a strong retrieval score in the auto-resolve band.
    assert 0.95 * confidence_factor(0.9, 1.0) >= 0.85


def test_result_exposes_the_factor_only_with_a_verdict() -> None:
    ok = DraftResult(reply="hi", self_confidence=0.8, citation_validity=0.5)
    assert ok.confidence_factor == pytest.approx(confidence_factor(0.8, 0.5))
    failed = DraftResult(error="timeout: no answer", fell_back=True)
    assert failed.confidence_factor is None and not failed.sendable


def test_step_output_has_the_documented_keys() -> None:
    result = DraftResult(reply="hello", cited_ids=["a"], prompt="### system\n...", model="m", self_confidence=0.7)
    out = result.step_output()
    assert out["draft"] == "hello" and out["citations"] == ["a"] and out["drafter"] == "llm"
    assert out["prompt"].startswith("### system") and out["model"] == "m"
    assert out["llm"]["self_confidence"] == 0.7 and "reply" not in out["llm"]


def test_account_summary_from_load_context_output() -> None:
    context = {
        "customer": {"tier": "pro", "name": "Ana"},
        "signals": ["failed payment in the last 30 days"],
        "events": [{"type": "payment_failed", "occurred_at": "2025-05-01", "amount": "49.00"}],
        "prior_tickets": [{"subject": "Card declined", "status": "resolved", "resolution": "Updated the card."}],
    }
    summary = summarize_account(context)
    assert summary.splitlines() == [
        "Signals: failed payment in the last 30 days",
        "Event: payment_failed 2025-05-01 49.00",
        "Earlier ticket: Card declined (resolved); resolved with: Updated the card.",
    ]
    assert summarize_account({}) == ""


def test_quote_mode_factor_costs_nothing_when_the_model_agrees_and_lowers_on_doubt() -> None:
    from agent.drafting.llm import quote_confidence_factor

    # Ids it was shown, rated anywhere from 0.5 up: the calibration stands.
    assert quote_confidence_factor(0.5, 1.0) == pytest.approx(1.0)
    assert quote_confidence_factor(0.95, 1.0) == pytest.approx(1.0)
    # Ids it was not shown, and a model that doubts its choice, lower it.
    assert quote_confidence_factor(0.9, 0.5) == pytest.approx(0.75)
    assert quote_confidence_factor(0.0, 1.0) == pytest.approx(0.55)


def test_the_models_additions_keep_the_readers_quote_and_passage_order() -> None:
    from agent.drafting.llm import with_additions
    from agent.drafting.prompts import QuoteUnit
    from agent.drafting.questions import Question
    from agent.drafting.reader import Candidate, Evidence
    from tests.support.draft_requests import item

    first = item("11111111-0000-4000-8000-000000000001", title="A", text="One. Two. Three. Four.")
    second = item("22222222-0000-4000-8000-000000000002", title="B", text="Five. Six.")
    units = ((0, "One."), (1, "Two."), (2, "Three."), (3, "Four."))
    evidence = Evidence(
        Question("q?"),
        first,
        units=["Two.", "Four."],
        score=0.6,
        candidates=[Candidate(first, 0.6, units), Candidate(second, 0.5, ((1, "Six."),))],
    )
    chosen = [QuoteUnit("1.3", first, 2, "Three.", 1), QuoteUnit("1.4", first, 3, "Four.", 1)]
    chosen.append(QuoteUnit("2.2", second, 1, "Six.", 2))
    quotes, added = with_additions(evidence, chosen)

    assert [(str(q.item.id)[:2], q.units) for q in quotes] == [("11", ("Two.", "Three.", "Four.")), ("22", ("Six.",))]
    assert [u.id for u in added] == ["1.3", "2.2"]  # "Four." was the reader's already
    assert with_additions(evidence, [])[0][0].units == ("Two.", "Four.")  # nothing chosen: the reader's quote


def test_the_reply_mode_setting_is_checked() -> None:
    from core.settings import Settings, SettingsError

    assert Settings.from_mapping({}).llm_reply == "quote"
    assert Settings.from_mapping({"DESKPILOT_LLM_REPLY": "Write"}).llm_reply == "write"
    with pytest.raises(SettingsError, match="DESKPILOT_LLM_REPLY"):
        Settings.from_mapping({"DESKPILOT_LLM_REPLY": "paraphrase"})
