"""The go-live report: from the deployment's reviewed decisions, per category, how many replies the agent would
have sent on its own and how often reviewers found them right, and whether the category is ready to go live.

The computation is pure (`go_live_report` over `ReviewedDecision`s); `load_reviewed_decisions` reads them from
the `review_labels` view. A decision counts as auto-resolved at a threshold t when its confidence is at least t
and no gate held it back (a risk, a guard violation, nothing to ground a reply in: the score step's `gate`).
Precision is the share of those a reviewer approved unchanged, with a 95 % Wilson score interval. A category is
ready when, at some threshold, at least `min_reviews` would-be auto-resolved replies were reviewed and the
interval's lower bound reaches the target precision; the threshold reported is the lowest such (the most
replies sent). With no mistakes at all that takes 73 reviews for a 0.95 target (n / (n + 1.96²) ≥ 0.95).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from core.db import Connection
from core.settings import Settings
from review.modes import CATEGORIES, mode_view

Z_95 = 1.959963984540054
DEFAULT_TARGET_PRECISION = 0.95
DEFAULT_MIN_REVIEWS = 30


@dataclass(frozen=True, slots=True)
class ReviewedDecision:
    category: str
    confidence: float
    right: bool
    gated: bool = False  # the score step's gate held it back: never auto-resolved


@dataclass(frozen=True, slots=True)
class Precision:
    """Of `n` would-be auto-resolved replies, `right` were approved; `low`/`high`: the 95 % Wilson interval."""

    threshold: float
    n: int
    right: int
    precision: float | None
    low: float | None
    high: float | None


@dataclass(frozen=True, slots=True)
class CategoryReport:
    category: str
    reviewed: int
    right: int
    at_current: Precision
    threshold: float | None  # lowest threshold at which the category is ready; None: none is
    at_threshold: Precision | None
    ready: bool
    verdict: str
    mode: str | None = None  # the category's effective mode, filled by the caller


@dataclass(frozen=True, slots=True)
class GoLiveReport:
    target_precision: float
    min_reviews: int
    current_threshold: float
    categories: list[CategoryReport] = field(default_factory=list)


def wilson_interval(right: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a proportion `right / n` (n > 0)."""
    if n <= 0:
        raise ValueError("n must be positive")
    p = right / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def precision_at(decisions: Sequence[ReviewedDecision], threshold: float) -> Precision:
    chosen = [d for d in decisions if d.confidence >= threshold and not d.gated]
    right = sum(d.right for d in chosen)
    if not chosen:
        return Precision(threshold, 0, 0, None, None, None)
    low, high = wilson_interval(right, len(chosen))
    return Precision(threshold, len(chosen), right, right / len(chosen), low, high)


def category_report(
    category: str,
    decisions: Sequence[ReviewedDecision],
    *,
    current_threshold: float,
    target_precision: float = DEFAULT_TARGET_PRECISION,
    min_reviews: int = DEFAULT_MIN_REVIEWS,
    lowest_threshold: float = 0.0,
) -> CategoryReport:
    """One category's line of the report. Thresholds tried: each reviewed confidence from `lowest_threshold`
    (the review threshold: below it the agent never sends) upwards."""
    at_current = precision_at(decisions, current_threshold)
    candidates = sorted({d.confidence for d in decisions if d.confidence >= lowest_threshold and not d.gated})
    best: Precision | None = None  # the highest lower bound seen, for the verdict's "why not"
    chosen: Precision | None = None
    for threshold in candidates:
        stats = precision_at(decisions, threshold)
        if stats.n < min_reviews:
            break  # higher thresholds only have fewer
        if best is None or (stats.low or 0.0) > (best.low or 0.0):
            best = stats
        if stats.low is not None and stats.low >= target_precision:
            chosen = stats
            break
    right = sum(d.right for d in decisions)
    verdict = _verdict(decisions, chosen, best, target_precision, min_reviews)
    return CategoryReport(
        category=category,
        reviewed=len(decisions),
        right=right,
        at_current=at_current,
        threshold=chosen.threshold if chosen else None,
        at_threshold=chosen,
        ready=chosen is not None,
        verdict=verdict,
    )


def _verdict(
    decisions: Sequence[ReviewedDecision],
    chosen: Precision | None,
    best: Precision | None,
    target: float,
    min_reviews: int,
) -> str:
    if chosen is not None:
        return (
            f"ready: at threshold {chosen.threshold:.2f}, {chosen.right} of {chosen.n} would-be auto-resolved "
            f"replies were right (precision {chosen.precision:.3f}, 95% CI {chosen.low:.3f}-{chosen.high:.3f})"
        )
    eligible = sum(1 for d in decisions if not d.gated)
    if eligible < min_reviews:
        return f"not yet: too few reviews ({eligible} reviewed decisions the agent could send, {min_reviews} needed)"
    if best is None:
        return f"not yet: too few reviews above the review threshold ({min_reviews} needed at one threshold)"
    return (
        f"not yet: precision interval below target {target:.2f} at every threshold with {min_reviews}+ reviews "
        f"(best: {best.right} of {best.n} right at {best.threshold:.2f}, 95% CI {best.low:.3f}-{best.high:.3f})"
    )


def go_live_report(
    decisions: Iterable[ReviewedDecision],
    *,
    current_threshold: float,
    target_precision: float = DEFAULT_TARGET_PRECISION,
    min_reviews: int = DEFAULT_MIN_REVIEWS,
    lowest_threshold: float = 0.0,
    categories: Sequence[str] = CATEGORIES,
) -> GoLiveReport:
    """The report over every category (a category without reviews gets its "too few reviews" line)."""
    if not 0.0 < target_precision < 1.0:
        raise ValueError("target_precision must be between 0 and 1")
    if min_reviews < 1:
        raise ValueError("min_reviews must be at least 1")
    by_category: dict[str, list[ReviewedDecision]] = {c: [] for c in categories}
    for decision in decisions:
        by_category.setdefault(decision.category, []).append(decision)
    return GoLiveReport(
        target_precision=target_precision,
        min_reviews=min_reviews,
        current_threshold=current_threshold,
        categories=[
            category_report(
                category,
                rows,
                current_threshold=current_threshold,
                target_precision=target_precision,
                min_reviews=min_reviews,
                lowest_threshold=lowest_threshold,
            )
            for category, rows in by_category.items()
        ],
    )


async def load_reviewed_decisions(conn: Connection) -> list[ReviewedDecision]:
    """Every labelled review with a scored attempt, the latest review of each attempt."""
    rows = await conn.fetch(
        """SELECT DISTINCT ON (attempt_id) category, confidence, verdict, gate
           FROM review_labels
           WHERE confidence IS NOT NULL AND category IS NOT NULL
           ORDER BY attempt_id, reviewed_at DESC, review_id"""
    )
    return [
        ReviewedDecision(
            category=row["category"],
            confidence=float(row["confidence"]),
            right=row["verdict"] == "right",
            gated=row["gate"] is not None,
        )
        for row in rows
    ]


async def build_go_live_report(
    conn: Connection,
    settings: Settings,
    *,
    target_precision: float = DEFAULT_TARGET_PRECISION,
    min_reviews: int = DEFAULT_MIN_REVIEWS,
) -> GoLiveReport:
    """The report on this deployment's reviews at its configured thresholds, with each category's mode."""
    decisions = await load_reviewed_decisions(conn)
    modes = await mode_view(conn, settings.mode)
    report = go_live_report(
        decisions,
        current_threshold=settings.auto_resolve_threshold,
        target_precision=target_precision,
        min_reviews=min_reviews,
        lowest_threshold=settings.review_threshold,
    )
    for index, line in enumerate(report.categories):
        effective = modes["categories"].get(line.category, {}).get("effective", modes["mode"])
        report.categories[index] = replace(line, mode=effective)
    return report


def report_as_dict(report: GoLiveReport) -> dict[str, Any]:
    """The JSON shape of `GET /api/reports/go-live` and `deskpilot report go-live --json`."""

    def precision(p: Precision | None) -> dict[str, Any] | None:
        if p is None:
            return None
        return {
            "threshold": p.threshold,
            "would_auto_resolve": p.n,
            "right": p.right,
            "precision": p.precision,
            "ci95": [p.low, p.high] if p.low is not None else None,
        }

    return {
        "target_precision": report.target_precision,
        "min_reviews": report.min_reviews,
        "current_threshold": report.current_threshold,
        "categories": [
            {
                "category": c.category,
                "mode": c.mode,
                "reviewed": c.reviewed,
                "right": c.right,
                "at_current_threshold": precision(c.at_current),
                "recommended_threshold": c.threshold,
                "at_recommended_threshold": precision(c.at_threshold),
                "ready": c.ready,
                "verdict": c.verdict,
            }
            for c in report.categories
        ],
    }
