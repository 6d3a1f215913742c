"""`deskpilot calibrate`: fit the signals -> confidence mapping on held-out folds of labelled history.

For each file and fold, the rest of the file is the history and the fold runs through the real graph offline;
a reply is right when its grounding resolution has the ticket's issue label. A logistic regression on the
signals (signals only, never text) is then made monotone and calibrated by isotonic regression fitted on its
out-of-fold predictions. Files are weighted equally, so one large data set does not set the curve alone.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from agent.quality.evaluation import (
    DeploymentFiles,
    DeploymentResult,
    Progress,
    _rank,
    encode_all,
    evaluate_deployment,
    expected_calibration_error,
    read_labelled,
    run_in_scratch_database,
    sample,
)
from agent.scoring.confidence import (
    INTENT_SIGNALS,
    KNOWLEDGE_SIGNALS,
    SIMILARITY_SIGNALS,
    Calibration,
    CalibrationModel,
    features,
)
from core import db
from core.settings import PROJECT_ROOT, Settings
from knowledge.embedder import Embedder, get_embedder

log = logging.getLogger(__name__)


def _label(path: Path) -> str:
    """A data file named with its folder: several data sets ship as dev.jsonl."""
    return f"{path.parent.name}/{path.name}"


# Signals are kept with the knowledge mapping to this many decimals (the trace shows four).
SIGNAL_DECIMALS = 4
# Isotonic steps need support: fewer points than this per step overfit the curve's tail.
KNOWLEDGE_ISOTONIC_POINTS = 15
MIN_ISOTONIC_POINTS = 200


def binned_isotonic(
    raw: np.ndarray, right: np.ndarray, weights: np.ndarray, min_points: int = MIN_ISOTONIC_POINTS
) -> tuple[list[float], list[float]]:
    """Isotonic regression on quantile bins of at least `min_points` replies each: every step of the curve
    rests on enough data, and the ends are not pinned to 0 or 1 by a handful of extreme scores."""
    order = np.argsort(raw)
    n_bins = max(1, len(raw) // min_points)
    xs: list[float] = []
    ys: list[float] = []
    ws: list[float] = []
    for chunk in np.array_split(order, n_bins):
        w = weights[chunk]
        xs.append(float(np.average(raw[chunk], weights=w)))
        # Laplace-smoothed: 200 right replies out of 200 is evidence of about 99.5 %, not of certainty.
        ys.append(float((np.sum(right[chunk] * w) + 1.0) / (w.sum() + 2.0)))
        ws.append(float(w.sum()))
    fitted = IsotonicRegression(increasing=True, y_min=0.0, y_max=1.0).fit(xs, ys, sample_weight=ws)
    return xs, [float(v) for v in fitted.predict(xs)]


def fit_model(
    rows: Sequence[dict[str, float]],
    right: Sequence[bool],
    weights: Sequence[float],
    names: Sequence[str],
    source: dict[str, Any],
    *,
    min_points: int = MIN_ISOTONIC_POINTS,
) -> tuple[CalibrationModel, dict[str, Any]]:
    x = np.stack([features(r, names) for r in rows])
    y = np.asarray(right, dtype=int)
    w = np.asarray(weights, dtype=float)
    # Weights average 1, so the regularisation means the same whatever the data set sizes.
    w = w / w.mean()
    if len(set(y.tolist())) < 2:
        raise ValueError("calibration needs both right and wrong replies in the data")
    # Standardized, so the regularisation shrinks every signal alike: on raw values a signal spanning 0.3–0.8
    # (a cosine) was held to a fraction of the weight of one spanning 0–1 in steps of ½.
    lr = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000))
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    weighted = {"logisticregression__sample_weight": w}
    oof = cross_val_predict(lr, x, y, cv=folds, method="predict_proba", params=weighted)[:, 1]
    iso_x, iso_y = binned_isotonic(oof, y.astype(float), w, min_points)
    lr.fit(x, y, **weighted)
    scaler, logistic = lr.named_steps["standardscaler"], lr.named_steps["logisticregression"]
    # The same model on the raw signals: what `CalibrationModel` stores and the trace explains.
    coef = logistic.coef_[0] / scaler.scale_
    intercept = float(logistic.intercept_[0]) - float(np.dot(coef, scaler.mean_))
    model = CalibrationModel(
        signals=tuple(names),
        coef=[round(float(c), 6) for c in coef],
        intercept=round(intercept, 6),
        iso_x=[round(v, 6) for v in iso_x],
        iso_y=[round(v, 6) for v in iso_y],
        fitted_on=source,
    )
    calibrated = np.array([model.calibrate(float(p)) for p in oof])
    high = calibrated >= 0.85
    summary = {
        "n": len(y),
        "right_rate": round(float(np.average(y, weights=w)), 4),
        "ece_raw_out_of_fold": round(expected_calibration_error(list(oof), list(y.astype(bool))) or 0.0, 4),
        "ece_calibrated": round(expected_calibration_error(list(calibrated), list(y.astype(bool))) or 0.0, 4),
        "share_at_or_above_0.85": round(float(np.mean(high)), 4),
        "precision_at_or_above_0.85": round(float(np.mean(y[high])) if high.any() else 0.0, 4),
    }
    return model, summary


async def fit_calibration(
    paths: Sequence[Path],
    *,
    settings: Settings,
    folds: int = 3,
    limit: int | None = None,
    seed: int = 0,
    database_url: str | None = None,
    embedder: Embedder | None = None,
    progress: Progress | None = None,
    signals_out: Path | None = None,
) -> tuple[Calibration, dict[str, Any]]:
    embedder = embedder or get_embedder(settings.embedding_model)
    server_url = database_url or db.resolve_database_url(settings)
    with_rows: list[dict[str, float]] = []
    with_right: list[bool] = []
    with_weight: list[float] = []
    plain_rows: list[dict[str, float]] = []
    plain_right: list[bool] = []
    plain_weight: list[float] = []
    per_file: dict[str, Any] = {}
    for path in paths:
        tickets = [t for t in sample(read_labelled(path), limit, seed) if t.intent]
        if len(tickets) < 50:
            log.warning("%s: fewer than 50 tickets with issue labels, skipped", path)
            per_file[_label(path)] = {"skipped": "fewer than 50 tickets with issue labels"}
            continue
        vectors = await asyncio.to_thread(
            encode_all, embedder, [t.text for t in tickets], progress, f"embedding {path.name}"
        )
        fold_of = np.array([_rank(t.id, seed + 7) % folds for t in tickets])
        collected = 0
        for fold in range(folds):
            test = np.flatnonzero(fold_of == fold)
            train = np.flatnonzero(fold_of != fold)
            results, _, _ = await run_in_scratch_database(
                server_url,
                settings,
                embedder,
                [tickets[i] for i in train],
                vectors[train],
                [tickets[i] for i in test],
                vectors[test],
                progress=progress,
            )
            weight = 1.0 / len(tickets)
            for r in results:
                if r.signal_model == "with_intents" and r.right is not None:
                    with_rows.append(r.signals)
                    with_right.append(r.right)
                    with_weight.append(weight)
                if r.similarity_right is not None:
                    plain_rows.append(r.similarity_signals)
                    plain_right.append(r.similarity_right)
                    plain_weight.append(weight)
            collected += len(results)
        per_file[_label(path)] = {"tickets": collected}
    if signals_out is not None:
        await asyncio.to_thread(
            signals_out.write_text,
            json.dumps(
                {
                    "with": [with_rows, with_right, with_weight],
                    "plain": [plain_rows, plain_right, plain_weight],
                    "files": per_file,
                }
            ),
            "utf-8",
        )
    return fit_from_signals(
        (with_rows, with_right, with_weight),
        (plain_rows, plain_right, plain_weight),
        paths,
        per_file,
        folds=folds,
        limit=limit,
        seed=seed,
    )


def fit_from_signals(
    with_data: tuple[list[dict[str, float]], list[bool], list[float]],
    plain_data: tuple[list[dict[str, float]], list[bool], list[float]],
    paths: Sequence[Path],
    per_file: dict[str, Any],
    *,
    folds: int,
    limit: int | None,
    seed: int,
) -> tuple[Calibration, dict[str, Any]]:
    """The calibration from collected (signals, right, weight) rows: refits without re-running the graph."""
    with_rows, with_right, with_weight = with_data
    plain_rows, plain_right, plain_weight = plain_data
    source = {
        "files": [_label(p) for p in paths] or sorted(per_file),
        "folds": folds,
        "limit": limit,
        "seed": seed,
        "fitted_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    with_model, with_summary = fit_model(with_rows, with_right, with_weight, INTENT_SIGNALS, source)
    plain_model, plain_summary = fit_model(plain_rows, plain_right, plain_weight, SIMILARITY_SIGNALS, source)
    calibration = Calibration(
        with_intents=with_model,
        without_intents=plain_model,
        meta={
            "fitted_on": source,
            "summary": {"with_intents": with_summary, "without_intents": plain_summary, "files": per_file},
        },
    )
    return calibration, calibration.meta["summary"]


async def fit_knowledge_calibration(
    datasets: Sequence[Path],
    *,
    settings: Settings,
    deployment: DeploymentFiles,
    embedder: Embedder | None = None,
    progress: Progress | None = None,
) -> tuple[CalibrationModel, dict[str, Any]]:
    """The knowledge-base replies' mapping, fitted on deployment-shaped sets run against their deployment.

    A reply is right when it contains every required fact of an answerable ticket; not-covered tickets are
    wrong whatever was drafted; must-escalate tickets are left out (their gates, not the confidence, decide).
    Several sets written by different people keep the curve from learning one writer's wording.
    """
    rows: list[Any] = []
    per_file: dict[str, int] = {}
    for dataset in datasets:
        run = await evaluate_deployment(
            dataset,
            settings=settings,
            deployment=deployment,
            embedder=embedder,
            progress=progress,
        )
        fitted = [r for r in run.results if r.signal_model == "knowledge" and r.kind != "must_escalate"]
        per_file[_label(dataset)] = len(fitted)
        rows.extend(fitted)
    source = {
        "files": list(per_file),
        "rows_per_file": per_file,
        # Relative to the repository, where the mapping ships: not the paths of the machine that fitted it.
        "deployment": deployment.describe(PROJECT_ROOT),
        "fitted_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "rightness": "answerable and the draft contains every answer fact",
        # The signals each ticket gave when the mapping was fitted: a change to the reader that moves them leaves
        # the mapping describing replies the code no longer writes (`signal_drift`).
        "signals": {r.id: {k: round(v, SIGNAL_DECIMALS) for k, v in r.signals.items()} for r in rows},
    }
    return fit_model(
        [r.signals for r in rows],
        [r.kind == "answerable" and r.replied_right for r in rows],
        [1.0] * len(rows),
        KNOWLEDGE_SIGNALS,
        source,
        # A deployment-shaped set has tens of tickets, not thousands: smaller bins, or the curve is one step.
        min_points=KNOWLEDGE_ISOTONIC_POINTS,
    )


def signal_drift(fitted_on: dict[str, Any], results: Sequence[DeploymentResult]) -> dict[str, float]:
    """For each of `results` the knowledge mapping was fitted on, the largest change of any of its signals since
    (`fit_knowledge_calibration` keeps them): non-zero when the reader now reads that ticket differently and the
    mapping should be refitted (`deskpilot calibrate --deployment …`)."""
    fitted = fitted_on.get("signals", {})
    return {
        r.id: max((abs(r.signals.get(k, 0.0) - v) for k, v in fitted[r.id].items()), default=0.0)
        for r in results
        if r.id in fitted
    }
