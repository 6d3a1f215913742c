"""A confidence calibration per deployment, refitted on its own reviewed decisions (`deskpilot calibrate
--from-reviews`), versioned in the database, activated only when it beats the one in use on held-out reviews.

What is refitted is the last step of the shipped mapping: each model's signals -> raw score (the logistic part)
stays, and the raw score -> probability curve (the isotonic part) is fitted again on what reviewers said (approve
= right; edit or reject = wrong). A few hundred reviews can place that curve; they could not re-weigh the signals
without overfitting. A share of the reviews is held out (chosen by review id, so a re-run picks the same ones);
the candidate is activated only with at least `min_reviews` reviews and a lower Brier score than the current
calibration on the held-out ones. Every stored refit, activated or not, is a row of `calibration_versions`; an
activation is also a row of the audit log.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agent.quality.calibration import binned_isotonic
from agent.quality.evaluation import expected_calibration_error
from agent.scoring.confidence import MODELS, Calibration, CalibrationModel, calibration_to_json
from core.db import Connection

DEFAULT_HOLDOUT_SHARE = 0.3
DEFAULT_MIN_REVIEWS = 100
# A step of the refitted curve rests on at least this many reviews (the shipped curve uses 200 per step).
MIN_POINTS_PER_STEP = 20


@dataclass(frozen=True, slots=True)
class ReviewLabel:
    review_id: str
    model: str  # the calibration model that scored the attempt (with_intents, without_intents, knowledge)
    signals: Mapping[str, float]
    right: bool


@dataclass(frozen=True, slots=True)
class Fit:
    brier: float | None
    ece: float | None
    n: int


@dataclass
class Refit:
    candidate: Calibration
    n_train: int
    n_holdout: int
    current: Fit
    refitted: Fit
    refitted_models: list[str]
    activate: bool
    reason: str
    per_model: dict[str, int] = field(default_factory=dict)


def in_holdout(review_id: str, share: float) -> bool:
    """Whether a review is held out: a stable function of its id, so every run holds out the same ones."""
    digest = hashlib.sha256(f"deskpilot-holdout:{review_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def split(labels: Sequence[ReviewLabel], share: float) -> tuple[list[ReviewLabel], list[ReviewLabel]]:
    train = [label for label in labels if not in_holdout(label.review_id, share)]
    holdout = [label for label in labels if in_holdout(label.review_id, share)]
    return train, holdout


def _usable(label: ReviewLabel, calibration: Calibration) -> bool:
    return label.model in MODELS and all(name in label.signals for name in calibration.named(label.model).signals)


def predict(calibration: Calibration, label: ReviewLabel) -> float:
    model = calibration.named(label.model)
    raw, _ = model.raw(label.signals)
    return model.calibrate(raw)


def fit_quality(calibration: Calibration, labels: Sequence[ReviewLabel]) -> Fit:
    if not labels:
        return Fit(None, None, 0)
    p = np.array([predict(calibration, label) for label in labels])
    y = np.array([1.0 if label.right else 0.0 for label in labels])
    return Fit(
        brier=round(float(np.mean((p - y) ** 2)), 6),
        ece=round(expected_calibration_error(list(p), [label.right for label in labels]) or 0.0, 6),
        n=len(labels),
    )


def refit_from_reviews(
    train: Sequence[ReviewLabel],
    holdout: Sequence[ReviewLabel],
    current: Calibration,
    *,
    min_reviews: int = DEFAULT_MIN_REVIEWS,
) -> Refit:
    """Refit each model's raw -> probability curve on `train` and judge it against `current` on `holdout`."""
    train = [label for label in train if _usable(label, current)]
    holdout = [label for label in holdout if _usable(label, current)]
    models: dict[str, CalibrationModel] = {name: current.named(name) for name in MODELS}
    refitted: list[str] = []
    per_model: dict[str, int] = {}
    for name in MODELS:
        rows = [label for label in train if label.model == name]
        per_model[name] = len(rows)
        right = np.array([1.0 if label.right else 0.0 for label in rows])
        if len(rows) < 2 * MIN_POINTS_PER_STEP or right.min(initial=1.0) == right.max(initial=0.0):
            continue  # too few, or all right / all wrong: nothing to place a curve on
        base = current.named(name)
        raw = np.array([base.raw(label.signals)[0] for label in rows])
        iso_x, iso_y = binned_isotonic(raw, right, np.ones(len(rows)), min_points=MIN_POINTS_PER_STEP)
        models[name] = CalibrationModel(
            signals=base.signals,
            coef=list(base.coef),
            intercept=base.intercept,
            iso_x=[round(v, 6) for v in iso_x],
            iso_y=[round(v, 6) for v in iso_y],
            fitted_on={"source": "reviews", "n": len(rows)},
        )
        refitted.append(name)
    candidate = Calibration(
        with_intents=models["with_intents"],
        without_intents=models["without_intents"],
        knowledge=models["knowledge"],
        meta={"source": "reviews"},
    )
    before, after = fit_quality(current, holdout), fit_quality(candidate, holdout)
    total = len(train) + len(holdout)
    if total < min_reviews:
        activate, reason = False, f"too few reviews: {total} with signals, {min_reviews} needed"
    elif not refitted:
        activate, reason = False, "no model had enough reviews (both right and wrong) to refit"
    elif not holdout:
        activate, reason = False, "no held-out reviews to compare on"
    elif after.brier is not None and before.brier is not None and after.brier < before.brier:
        activate, reason = True, f"better on {len(holdout)} held-out reviews: Brier {before.brier} -> {after.brier}"
    else:
        activate, reason = (
            False,
            f"not better on {len(holdout)} held-out reviews: Brier {before.brier} (current) vs {after.brier}",
        )
    return Refit(
        candidate=candidate,
        n_train=len(train),
        n_holdout=len(holdout),
        current=before,
        refitted=after,
        refitted_models=refitted,
        activate=activate,
        reason=reason,
        per_model=per_model,
    )


async def load_review_labels(conn: Connection) -> list[ReviewLabel]:
    """The latest labelled review of each scored attempt, with the signals its score step recorded."""
    rows = await conn.fetch(
        """SELECT DISTINCT ON (attempt_id) review_id, score_model, signals, verdict
           FROM review_labels WHERE score_model IS NOT NULL
           ORDER BY attempt_id, reviewed_at DESC, review_id"""
    )
    return [
        ReviewLabel(
            review_id=str(row["review_id"]),
            model=row["score_model"],
            signals={k: float(v) for k, v in (row["signals"] or {}).items() if isinstance(v, int | float)},
            right=row["verdict"] == "right",
        )
        for row in rows
    ]


async def store_refit(conn: Connection, refit: Refit, *, actor: str) -> int:
    """Record the refit as a new version; when it is to be activated, it replaces the active one (audited)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('deskpilot.calibration_versions'))")
        previous: int | None = await conn.fetchval("SELECT version FROM calibration_versions WHERE active")
        if refit.activate:
            await conn.execute("UPDATE calibration_versions SET active = false WHERE active")
        version: int = await conn.fetchval(
            """INSERT INTO calibration_versions (mapping, n_train, n_holdout, holdout, active, activated_at, note)
               VALUES ($1, $2, $3, $4, $5, CASE WHEN $5 THEN now() END, $6) RETURNING version""",
            calibration_to_json(refit.candidate),
            refit.n_train,
            refit.n_holdout,
            {
                "current": vars_of(refit.current),
                "refitted": vars_of(refit.refitted),
                "refitted_models": refit.refitted_models,
                "per_model": refit.per_model,
            },
            refit.activate,
            refit.reason,
        )
        if refit.activate:
            await conn.execute(
                """INSERT INTO audit_log (actor, action, scope, from_value, to_value, detail)
                   VALUES ($1, 'calibration.activate', 'calibration', $2, $3, $4)""",
                actor,
                str(previous) if previous is not None else "shipped",
                str(version),
                {"reason": refit.reason},
            )
    return version


def vars_of(fit: Fit) -> dict[str, Any]:
    return {"brier": fit.brier, "ece": fit.ece, "n": fit.n}


def refit_summary(refit: Refit, version: int | None) -> dict[str, Any]:
    """What `deskpilot calibrate --from-reviews --json` prints."""
    return {
        "version": version,
        "activated": refit.activate,
        "reason": refit.reason,
        "n_train": refit.n_train,
        "n_holdout": refit.n_holdout,
        "refitted_models": refit.refitted_models,
        "train_reviews_per_model": refit.per_model,
        "holdout": {"current": vars_of(refit.current), "refitted": vars_of(refit.refitted)},
    }
