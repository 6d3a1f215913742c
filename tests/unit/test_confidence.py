"""Confidence: the shipped calibration is monotone and stays in [0, 1]; the router obeys gates and thresholds."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from agent.routers import route_after_score
from agent.scoring.confidence import INTENT_SIGNALS, SIMILARITY_SIGNALS, Calibration, score_confidence
from agent.state import AgentState


@pytest.fixture(scope="module")
def calibration() -> Calibration:
    return Calibration.load()


def _signals(level: float) -> dict[str, float]:
    return {
        "issue_probability": level,
        "top_similarity": 0.3 + 0.65 * level,
        "similarity_margin": -0.05 + 0.3 * level,
        "neighbour_agreement": level,
        "category_certainty": 0.4 + 0.59 * level,
        "grounding_category_match": 1.0 if level > 0.5 else 0.0,
    }


@pytest.mark.parametrize("use_intents", [True, False])
def test_calibration_is_monotone_and_bounded(calibration: Calibration, use_intents: bool) -> None:
    model = calibration.model(use_intents)
    assert tuple(model.signals) == (INTENT_SIGNALS if use_intents else SIMILARITY_SIGNALS)
    assert model.iso_y == sorted(model.iso_y)
    assert all(0.0 <= y <= 1.0 for y in model.iso_y)
    # Monotone in the raw score over the whole range, and in [0, 1] even outside the fitted range.
    raws = np.linspace(-0.5, 1.5, 201)
    values = [model.calibrate(float(r)) for r in raws]
    assert all(0.0 <= v <= 1.0 for v in values)
    assert all(b >= a - 1e-12 for a, b in itertools.pairwise(values))
    # Stronger evidence never lowers the confidence.
    scores = [
        score_confidence(_signals(level), calibration, use_intents=use_intents).confidence
        for level in np.linspace(0, 1, 21)
    ]
    assert all(b >= a - 1e-9 for a, b in itertools.pairwise(scores))
    assert scores[-1] > scores[0]


def test_breakdown_explains_the_raw_score(calibration: Calibration) -> None:
    scored = score_confidence(_signals(0.9), calibration, use_intents=True)
    model = calibration.model(True)
    total = model.intercept + sum(entry["contribution"] for entry in scored.breakdown.values())
    assert math.isclose(1 / (1 + math.exp(-total)), scored.raw_score, abs_tol=2e-3)
    assert set(scored.breakdown) == set(INTENT_SIGNALS)
    for entry in scored.breakdown.values():
        assert {"value", "weight", "contribution", "note"} <= set(entry)


def test_self_assessment_only_lowers_and_coverage_is_recorded(calibration: Calibration) -> None:
    base = score_confidence(_signals(0.9), calibration, use_intents=True)
    lowered = score_confidence(_signals(0.9), calibration, use_intents=True, self_assessment=0.5)
    assert lowered.confidence <= base.confidence
    assert "self_assessment" in lowered.breakdown
    ungrounded = score_confidence(_signals(0.9), calibration, use_intents=True, grounded=False)
    assert ungrounded.confidence == base.confidence  # a gate, not a probability
    assert "coverage" in ungrounded.breakdown


def _state(confidence: float, gate: str | None = None) -> AgentState:
    return AgentState(
        scoring={"confidence": confidence, "gate": gate, "thresholds": {"auto_resolve": 0.85, "review": 0.6}}
    )


@pytest.mark.parametrize(
    ("confidence", "gate", "expected"),
    [
        (0.95, None, "deliver"),
        (0.85, None, "deliver"),
        (0.84, None, "flag_for_review"),
        (0.60, None, "flag_for_review"),
        (0.59, None, "escalate"),
        (0.99, "review", "flag_for_review"),
        (0.99, "escalate", "escalate"),
        (0.30, "review", "escalate"),
    ],
)
def test_route_after_score(confidence: float, gate: str | None, expected: str) -> None:
    assert route_after_score(_state(confidence, gate)) == expected


def test_a_fitted_mapping_does_not_depend_on_the_scale_a_signal_is_measured_in() -> None:
    from agent.quality.calibration import fit_model

    rng = np.random.default_rng(0)
    cosine = rng.uniform(0.3, 0.8, 300)  # a narrow range
    agreement = rng.integers(0, 3, 300) / 2  # 0, ½ or 1
    right = rng.random(300) < 1 / (1 + np.exp(-(12 * (cosine - 0.55) + 2 * (agreement - 0.5))))
    names = ("cosine", "agreement")

    def fit(scale: float) -> list[float]:
        rows = [{"cosine": c * scale, "agreement": a} for c, a in zip(cosine, agreement, strict=True)]
        model, _ = fit_model(rows, list(right), [1.0] * len(rows), names, {})
        return [model.raw(r)[0] for r in rows]

    # The same signal in tenths gets ten times the weight: the regularisation treats both alike.
    assert fit(1.0) == pytest.approx(fit(0.1), abs=1e-6)
