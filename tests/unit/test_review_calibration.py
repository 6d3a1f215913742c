"""`review.calibration`: a refit on reviews is activated only with enough reviews and when it beats the current
calibration on the held-out ones."""

from __future__ import annotations

import math
import random

import pytest

from agent.scoring.confidence import (
    INTENT_SIGNALS,
    SIMILARITY_SIGNALS,
    Calibration,
    CalibrationModel,
    calibration_from_json,
    calibration_to_json,
    sigmoid,
)
from review.calibration import (
    ReviewLabel,
    in_holdout,
    predict,
    refit_from_reviews,
    split,
)


def current() -> Calibration:
    """Raw score sigmoid(8 s - 4) on the top similarity s, taken as the probability (no curve)."""

    def model(names: tuple[str, ...]) -> CalibrationModel:
        return CalibrationModel(signals=names, coef=[0.0] * len(names), intercept=0.0, iso_x=[], iso_y=[])

    plain = CalibrationModel(
        signals=SIMILARITY_SIGNALS, coef=[8.0, 0.0, 0.0, 0.0, 0.0], intercept=-4.0, iso_x=[], iso_y=[]
    )
    return Calibration(with_intents=model(INTENT_SIGNALS), without_intents=plain)


def labels(n: int, right_probability: object, *, seed: int, prefix: str) -> list[ReviewLabel]:
    """Reviews of `without_intents` attempts; a reply is right with probability `right_probability(raw)`."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        s = rng.random()
        raw = sigmoid(8 * s - 4)
        signals = {name: 0.5 for name in SIMILARITY_SIGNALS} | {"top_similarity": s}
        right = rng.random() < right_probability(raw)  # type: ignore[operator]
        rows.append(ReviewLabel(review_id=f"{prefix}-{i}", model="without_intents", signals=signals, right=right))
    return rows


def test_an_overconfident_calibration_is_refitted_and_activated() -> None:
    """The deployment's replies are right with probability raw² (the shipped curve says raw): the refit learns it."""
    train = labels(600, lambda raw: raw * raw, seed=1, prefix="t")
    holdout = labels(300, lambda raw: raw * raw, seed=2, prefix="h")
    refit = refit_from_reviews(train, holdout, current(), min_reviews=100)
    assert refit.activate, refit.reason
    assert refit.refitted_models == ["without_intents"]
    assert refit.refitted.brier is not None and refit.current.brier is not None
    assert refit.refitted.brier < refit.current.brier
    assert refit.refitted.ece is not None and refit.current.ece is not None
    assert refit.refitted.ece < refit.current.ece
    assert refit.reason.startswith("better on 300 held-out reviews")
    # At raw 0.9 the reviews say about 0.81 (0.9²), not 0.9: the refitted curve is well below it.
    probe = ReviewLabel("p", "without_intents", {n: 0.5 for n in SIMILARITY_SIGNALS} | {"top_similarity": 0.775}, True)
    assert predict(current(), probe) == pytest.approx(0.9, abs=0.01)
    assert 0.6 < predict(refit.candidate, probe) < 0.86
    # The models without reviews are the current ones, unchanged.
    assert refit.candidate.with_intents == current().with_intents


def test_below_the_minimum_nothing_is_activated() -> None:
    train = labels(45, lambda raw: raw * raw, seed=3, prefix="t")
    holdout = labels(20, lambda raw: raw * raw, seed=4, prefix="h")
    refit = refit_from_reviews(train, holdout, current(), min_reviews=100)
    assert refit.activate is False
    assert refit.reason == "too few reviews: 65 with signals, 100 needed"


def test_a_refit_worse_on_the_held_out_reviews_is_not_activated() -> None:
    """Fitted on reviews that disagree with the held-out ones (here: the opposite trend), it loses."""
    train = labels(600, lambda raw: 1 - raw, seed=5, prefix="t")
    holdout = labels(300, lambda raw: raw, seed=6, prefix="h")
    refit = refit_from_reviews(train, holdout, current(), min_reviews=100)
    assert refit.refitted_models == ["without_intents"]
    assert refit.activate is False
    assert refit.reason.startswith("not better on 300 held-out reviews")


def test_reviews_without_the_models_signals_are_left_out() -> None:
    broken = ReviewLabel("x", "without_intents", {"top_similarity": 0.9}, True)
    unknown = ReviewLabel("y", "no_such_model", {n: 0.5 for n in SIMILARITY_SIGNALS}, True)
    refit = refit_from_reviews([broken, unknown], [], current(), min_reviews=10)
    assert (refit.n_train, refit.n_holdout, refit.activate) == (0, 0, False)


def test_the_holdout_is_stable_and_about_its_share() -> None:
    rows = labels(2000, lambda raw: raw, seed=7, prefix="r")
    train, holdout = split(rows, 0.3)
    assert len(train) + len(holdout) == 2000
    assert 0.26 < len(holdout) / 2000 < 0.34
    assert [r.review_id for r in split(rows, 0.3)[1]] == [r.review_id for r in holdout]
    assert all(in_holdout(r.review_id, 0.3) for r in holdout)


def test_a_stored_mapping_loads_back_with_its_version() -> None:
    calibration = current()
    loaded = calibration_from_json(calibration_to_json(calibration), version=7)
    assert loaded.meta == {"source": "database version 7", "version": 7}
    assert loaded.without_intents.coef == calibration.without_intents.coef
    assert math.isclose(loaded.without_intents.intercept, -4.0)
