"""The go-live rehearsal: simulated reviews on one half refit the curve and place the threshold; the other half
is scored. Its figures equal a hand computation over the same results."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from agent.quality.evaluation import DeploymentResult, ece_if_calibrated, expected_calibration_error
from agent.scoring.confidence import Calibration
from review import calibration as review_calibration
from review.rehearsal import rehearse_go_live, rehearsed, reviewed_half


def _result(
    i: int, *, strong: float, right: bool, gate: str | None = None, model: str = "knowledge"
) -> DeploymentResult:
    return DeploymentResult(
        id=f"t-{i}",
        kind="answerable",
        category="billing",
        predicted_category="billing",
        priority="normal",
        predicted_priority="normal",
        decision="flag_for_review",
        confidence=0.5,
        # A right draft contains its fact; a wrong one does not.
        draft="You can switch to annual billing." if right else "Please see the article.",
        answer_facts=("annual billing",),
        signals={
            "reader_min": strong,
            "unit_min": strong,
            "margin_min": strong / 4,
            "coverage": 1.0,
            "category_certainty": 0.9,
            "source_agreement": 1.0,
        },
        signal_model=model,
        gate=gate,
    )


def _results(n: int = 400, seed: int = 3) -> list[DeploymentResult]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        strong = rng.random()
        rows.append(
            _result(
                i, strong=strong, right=(strong > 0.5) != (rng.random() < 0.05), gate="review" if i % 17 == 0 else None
            )
        )
    return rows


def test_the_reviewed_half_is_a_stable_function_of_the_id() -> None:
    ids = [f"t-{i}" for i in range(2000)]
    first = [reviewed_half(i) for i in ids]
    assert first == [reviewed_half(i) for i in ids]
    assert 0.45 < sum(first) / len(first) < 0.55


def test_results_without_a_calibration_model_are_not_labelled() -> None:
    rows = [_result(1, strong=0.9, right=True), _result(2, strong=0.9, right=True, model="")]
    assert [row.result.id for row in rehearsed(rows)] == ["t-1"]


def test_figures_equal_a_hand_computation() -> None:
    results = _results()
    current = Calibration.load()
    data = rehearse_go_live(results, current, min_reviews=20, min_auto=10, target_precision=0.8)

    rows = rehearsed(results)
    reviewed = [row for row in rows if row.reviewed]
    unseen = [row for row in rows if not row.reviewed]
    assert (data["reviewed"], data["unseen"]) == (len(reviewed), len(unseen))
    assert data["reviewed"] + data["unseen"] == len(results)

    train, holdout = review_calibration.split([row.label for row in reviewed], review_calibration.DEFAULT_HOLDOUT_SHARE)
    refit = review_calibration.refit_from_reviews(train, holdout, current, min_reviews=20)
    assert data["refit"]["activated"] == refit.activate
    in_force = refit.candidate if refit.activate else current

    p = [review_calibration.predict(in_force, row.label) for row in unseen]
    y = [row.label.right for row in unseen]
    assert data["ece_unseen"]["in_force"] == pytest.approx(expected_calibration_error(p, y), abs=1e-3)
    noise = ece_if_calibrated(p)
    measured = expected_calibration_error(p, y)
    assert noise is not None and measured is not None
    assert data["ece_unseen"]["if_calibrated"] == noise
    assert data["targets"]["ece_within_what_a_calibrated_curve_shows"] == (measured <= noise["p95"])

    threshold = data["recommended_threshold"]
    assert threshold is not None
    chosen = [(pi, yi) for pi, yi, row in zip(p, y, unseen, strict=True) if pi >= threshold and row.result.gate is None]
    at = data["at_recommended_threshold"]
    assert at["would_auto_resolve"] == len(chosen)
    assert at["right"] == sum(yi for _, yi in chosen)
    assert at["precision"] == pytest.approx(sum(yi for _, yi in chosen) / len(chosen), abs=1e-3)


def test_gated_decisions_never_count_as_auto_resolved() -> None:
    results = [_result(i, strong=0.99, right=True, gate="escalate") for i in range(200)]
    data = rehearse_go_live(results, Calibration.load(), min_auto=10)
    assert data["recommended_threshold"] is None
    assert data["at_recommended_threshold"] is None
    assert not data["targets"]["precision_at_least_0_95"]


def test_a_threshold_is_checked_on_the_unseen_half_only() -> None:
    results = _results()
    data = rehearse_go_live(results, Calibration.load(), min_auto=10, target_precision=0.8)
    unseen_ids = {row.result.id for row in rehearsed(results) if not row.reviewed}
    # Flip every unseen ticket's verdict: the reviewed half (and so the threshold) is unchanged, the precision is not.
    flipped = [
        _result(
            int(r.id.split("-")[1]),
            strong=r.signals["reader_min"],
            right=not r.replied_right if r.id in unseen_ids else r.replied_right,
            gate=r.gate,
        )
        for r in results
    ]
    again = rehearse_go_live(flipped, Calibration.load(), min_auto=10, target_precision=0.8)
    assert again["recommended_threshold"] == data["recommended_threshold"]
    at, at_again = data["at_recommended_threshold"], again["at_recommended_threshold"]
    assert at_again["would_auto_resolve"] == at["would_auto_resolve"]
    assert at_again["right"] == at["would_auto_resolve"] - at["right"]


def test_the_command_names_a_bad_line_and_exits_non_zero(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from app.cli import main

    bad = tmp_path / "set.jsonl"
    bad.write_text('{"external_id": "x-1", "customer_email": "a@example.com", "body": "Hi"}\n', encoding="utf-8")
    result = CliRunner().invoke(main, ["report", "go-live-rehearsal", str(bad)])
    assert result.exit_code == 1
    assert "set.jsonl:1: expect: missing" in result.output

    missing = CliRunner().invoke(main, ["report", "go-live-rehearsal", str(tmp_path / "none.jsonl")])
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_a_perfect_curve_on_few_tickets_still_shows_an_ece_well_above_zero() -> None:
    rng = random.Random(0)
    few = [rng.uniform(0.2, 0.9) for _ in range(60)]
    noise = ece_if_calibrated(few)
    assert noise is not None
    assert 0.05 < noise["median"] < 0.2
    assert noise["p05"] < noise["median"] < noise["p95"]
    # The same confidences give the same range: the draws are seeded.
    assert ece_if_calibrated(few) == noise
    # Many tickets: sampling noise shrinks and a perfect curve's ECE approaches zero.
    many = ece_if_calibrated([rng.uniform(0.2, 0.9) for _ in range(20_000)], draws=200)
    assert many is not None and many["median"] < 0.01
    assert ece_if_calibrated([]) is None


def test_a_measured_ece_is_judged_against_what_a_calibrated_curve_shows() -> None:
    rng = random.Random(1)
    confidence = [rng.uniform(0.1, 0.9) for _ in range(300)]
    noise = ece_if_calibrated(confidence)
    assert noise is not None
    # Outcomes drawn with the confidences' own probabilities fall inside the range; a curve claiming 0.9 for
    # tickets right half the time does not.
    calibrated = expected_calibration_error(confidence, [rng.random() < c for c in confidence])
    assert calibrated is not None and calibrated <= noise["p95"]
    overconfident = [0.9] * 300
    claimed = ece_if_calibrated(overconfident)
    measured = expected_calibration_error(overconfident, [rng.random() < 0.5 for _ in overconfident])
    assert claimed is not None and measured is not None and measured > claimed["p95"]
