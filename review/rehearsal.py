"""A go-live rehearsal on a labelled deployment set: what going live would look like for a deployment whose
reviewers had already seen half of its tickets.

The set's tickets ran through the real graph (`agent.quality.evaluation.evaluate_deployment`). Half of them, chosen
by a hash of the ticket id, become simulated reviews: a draft with every fact the ticket's answer needs is
approved, anything else (a draft missing a fact, any reply to a ticket the help centre does not cover or a person
must handle) is rejected. Those reviews refit the calibration exactly as `deskpilot calibrate --from-reviews` does
(its own held-out share decides whether the refit is activated) and place the go-live report's recommended
threshold. The other half, which no simulated reviewer saw, is then scored with the calibration in force: its
expected calibration error, and how many replies would go out on their own at the recommended threshold and how
many of those are right (95 % Wilson interval).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agent.quality.evaluation import DeploymentResult, ece_if_calibrated, expected_calibration_error
from agent.scoring.confidence import MODELS, Calibration
from review import calibration as review_calibration
from review.golive import DEFAULT_TARGET_PRECISION, ReviewedDecision, category_report, precision_at

DEFAULT_REVIEWED_SHARE = 0.5
# The deployment-shaped set has about a hundred tickets, not the hundreds `calibrate --from-reviews` asks for.
DEFAULT_MIN_REVIEWS = 20
DEFAULT_MIN_AUTO = 10


@dataclass(frozen=True, slots=True)
class Rehearsed:
    """One ticket of the rehearsal: its simulated review label and the decision the go-live report counts."""

    result: DeploymentResult
    label: review_calibration.ReviewLabel
    reviewed: bool  # in the half the simulated reviewers saw


def reviewed_half(ticket_id: str, share: float = DEFAULT_REVIEWED_SHARE) -> bool:
    """Whether a ticket is among the simulated reviews: a stable function of its id."""
    digest = hashlib.sha256(f"deskpilot-rehearsal:{ticket_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def rehearsed(results: Sequence[DeploymentResult], share: float = DEFAULT_REVIEWED_SHARE) -> list[Rehearsed]:
    """The results a reviewer could label: scored by a calibration model, with the signals it reads."""
    rows = []
    for result in results:
        if result.signal_model not in MODELS or not result.signals:
            continue
        label = review_calibration.ReviewLabel(
            review_id=result.id, model=result.signal_model, signals=result.signals, right=result.replied_right
        )
        rows.append(Rehearsed(result, label, reviewed_half(result.id, share)))
    return rows


def _decisions(rows: Sequence[Rehearsed], calibration: Calibration) -> list[ReviewedDecision]:
    return [
        ReviewedDecision(
            category="all",
            confidence=review_calibration.predict(calibration, row.label),
            right=row.label.right,
            gated=row.result.gate is not None,
        )
        for row in rows
    ]


def rehearse_go_live(
    results: Sequence[DeploymentResult],
    current: Calibration,
    *,
    share: float = DEFAULT_REVIEWED_SHARE,
    holdout_share: float = review_calibration.DEFAULT_HOLDOUT_SHARE,
    min_reviews: int = DEFAULT_MIN_REVIEWS,
    min_auto: int = DEFAULT_MIN_AUTO,
    target_precision: float = DEFAULT_TARGET_PRECISION,
    review_threshold: float = 0.0,
) -> dict[str, Any]:
    """The rehearsal's figures (see the module docstring). `min_auto`: would-be auto-resolved reviews needed at a
    threshold before it can be recommended (the go-live report's `min_reviews`)."""
    if not 0.0 < share < 1.0:
        raise ValueError("share must be between 0 and 1")
    rows = rehearsed(results, share)
    reviewed = [row for row in rows if row.reviewed]
    unseen = [row for row in rows if not row.reviewed]
    train, holdout = review_calibration.split([row.label for row in reviewed], holdout_share)
    refit = review_calibration.refit_from_reviews(train, holdout, current, min_reviews=min_reviews)
    in_force = refit.candidate if refit.activate else current

    line = category_report(
        "all",
        _decisions(reviewed, in_force),
        current_threshold=1.0,
        target_precision=target_precision,
        min_reviews=min_auto,
        lowest_threshold=review_threshold,
    )
    unseen_decisions = _decisions(unseen, in_force)
    ece_current = expected_calibration_error(
        [review_calibration.predict(current, row.label) for row in unseen], [row.label.right for row in unseen]
    )
    ece_in_force = expected_calibration_error(
        [d.confidence for d in unseen_decisions], [d.right for d in unseen_decisions]
    )
    noise = ece_if_calibrated([d.confidence for d in unseen_decisions])
    at_threshold = precision_at(unseen_decisions, line.threshold) if line.threshold is not None else None
    return {
        "tickets": len(results),
        "labelled": len(rows),
        "reviewed": len(reviewed),
        "unseen": len(unseen),
        "right_share_unseen": round(sum(d.right for d in unseen_decisions) / len(unseen), 3) if unseen else None,
        "refit": {
            "activated": refit.activate,
            "reason": refit.reason,
            "refitted_models": refit.refitted_models,
            "n_train": refit.n_train,
            "n_holdout": refit.n_holdout,
        },
        "ece_unseen": {
            "shipped": _round(ece_current),
            "in_force": _round(ece_in_force),
            # What a perfectly calibrated curve would show on these tickets: the measured ECE is read against it.
            "if_calibrated": noise,
        },
        "max_confidence_unseen": round(max((d.confidence for d in unseen_decisions), default=0.0), 3),
        "recommended_threshold": line.threshold,
        "verdict_on_reviews": line.verdict,
        "at_recommended_threshold": None
        if at_threshold is None
        else {
            "would_auto_resolve": at_threshold.n,
            "share_of_unseen": round(at_threshold.n / len(unseen), 3) if unseen else None,
            "right": at_threshold.right,
            "precision": _round(at_threshold.precision),
            "ci95": [_round(at_threshold.low), _round(at_threshold.high)],
        },
        "targets": {
            "ece_at_most_0_05": ece_in_force is not None and ece_in_force <= 0.05,
            "ece_within_what_a_calibrated_curve_shows": bool(
                ece_in_force is not None and noise is not None and ece_in_force <= noise["p95"]
            ),
            "precision_at_least_0_95": bool(
                at_threshold
                and at_threshold.n
                and at_threshold.precision is not None
                and at_threshold.precision >= 0.95
            ),
        },
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
