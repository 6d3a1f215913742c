"""The go-live report's figures on a fixed set of reviews equal a hand computation.

Hand computation of the Wilson interval (z = 1.96): the roots of p²(1 + z²/n) − p(2p̂ + z²/n) + p̂² = 0, e.g.
5 of 6 right: p̂ = 0.8333 → 0.4365 and 0.9699.
"""

from __future__ import annotations

import pytest

from review.golive import ReviewedDecision, go_live_report, report_as_dict, wilson_interval

BILLING = [  # confidence, approved?
    (0.95, True),
    (0.93, True),
    (0.91, True),
    (0.90, False),
    (0.88, True),
    (0.86, True),
    (0.84, True),
    (0.80, False),
    (0.70, True),
    (0.65, False),
    (0.40, False),  # below the review threshold: never a candidate threshold, never auto-resolved at 0.85
]
TECHNICAL = [(0.70 + 0.02 * i, True) for i in range(12)]  # 0.70 ... 0.92, all right


def decisions() -> list[ReviewedDecision]:
    rows = [ReviewedDecision("billing", c, r) for c, r in BILLING]
    rows += [ReviewedDecision("technical", round(c, 2), r) for c, r in TECHNICAL]
    # Gated (a refund demand): wrong, confident, and never auto-resolved, so it counts nowhere.
    rows.append(ReviewedDecision("technical", 0.99, False, gated=True))
    rows += [ReviewedDecision("onboarding", 0.9, True), ReviewedDecision("onboarding", 0.5, False)]
    return rows


@pytest.mark.parametrize(
    ("right", "n", "low", "high"),
    [
        (5, 6, 0.4365, 0.9699),
        (7, 10, 0.3968, 0.8922),
        (6, 7, 0.4869, 0.9743),
        (3, 3, 0.4385, 1.0),
        (12, 12, 0.7575, 1.0),
    ],
)
def test_wilson_interval_matches_the_hand_computation(right: int, n: int, low: float, high: float) -> None:
    got = wilson_interval(right, n)
    assert got == pytest.approx((low, high), abs=5e-5)


def test_the_report_on_a_fixed_set_of_reviews() -> None:
    report = go_live_report(
        decisions(), current_threshold=0.85, target_precision=0.6, min_reviews=3, lowest_threshold=0.6
    )
    by_category = {c.category: c for c in report.categories}
    assert list(by_category) == ["billing", "technical", "onboarding", "general"]

    billing = by_category["billing"]
    assert (billing.reviewed, billing.right) == (11, 7)
    # At 0.85: 0.95 0.93 0.91 0.90(wrong) 0.88 0.86 -> 5 of 6.
    assert (billing.at_current.n, billing.at_current.right) == (6, 5)
    assert billing.at_current.precision == pytest.approx(5 / 6)
    assert (billing.at_current.low, billing.at_current.high) == pytest.approx((0.4365, 0.9699), abs=5e-5)
    # No threshold from 0.65 up has a lower bound >= 0.6 with 3+ reviews; the best is 6 of 7 at 0.84.
    assert billing.ready is False and billing.threshold is None and billing.at_threshold is None
    assert billing.verdict == (
        "not yet: precision interval below target 0.60 at every threshold with 3+ reviews "
        "(best: 6 of 7 right at 0.84, 95% CI 0.487-0.974)"
    )

    technical = by_category["technical"]
    assert (technical.reviewed, technical.right) == (13, 12)
    # At 0.85: 0.86 0.88 0.90 0.92 -> 4 of 4 (the gated 0.99 is not counted).
    assert (technical.at_current.n, technical.at_current.right) == (4, 4)
    # Ready at the lowest threshold: 12 of 12, lower bound 12 / (12 + 1.96²) = 0.7575.
    assert technical.ready is True and technical.threshold == pytest.approx(0.70)
    assert technical.at_threshold is not None
    assert (technical.at_threshold.n, technical.at_threshold.right) == (12, 12)
    assert technical.at_threshold.low == pytest.approx(0.7575, abs=5e-5)
    assert technical.verdict == (
        "ready: at threshold 0.70, 12 of 12 would-be auto-resolved replies were right "
        "(precision 1.000, 95% CI 0.758-1.000)"
    )

    onboarding = by_category["onboarding"]
    assert onboarding.ready is False
    assert onboarding.verdict == ("not yet: too few reviews (2 reviewed decisions the agent could send, 3 needed)")
    general = by_category["general"]
    assert (general.reviewed, general.at_current.n, general.at_current.precision) == (0, 0, None)
    assert general.verdict.startswith("not yet: too few reviews (0 ")


def test_the_default_target_needs_seventy_three_clean_reviews() -> None:
    """With no mistakes, the lower bound n / (n + 1.96²) reaches 0.95 at n = 73, not before."""
    for n, ready in ((72, False), (73, True)):
        rows = [ReviewedDecision("billing", 0.9, True) for _ in range(n)]
        line = go_live_report(rows, current_threshold=0.85, min_reviews=30).categories[0]
        assert line.ready is ready, n


def test_the_json_shape() -> None:
    report = go_live_report(decisions(), current_threshold=0.85, target_precision=0.6, min_reviews=3)
    data = report_as_dict(report)
    assert set(data) == {"target_precision", "min_reviews", "current_threshold", "categories"}
    technical = next(c for c in data["categories"] if c["category"] == "technical")
    assert technical["at_current_threshold"] == {
        "threshold": 0.85,
        "would_auto_resolve": 4,
        "right": 4,
        "precision": 1.0,
        "ci95": [pytest.approx(0.5101, abs=5e-5), 1.0],
    }
    assert technical["recommended_threshold"] == pytest.approx(0.70)


@pytest.mark.parametrize(("target", "minimum"), [(0.0, 3), (1.0, 3), (0.9, 0)])
def test_bad_parameters_are_refused(target: float, minimum: int) -> None:
    with pytest.raises(ValueError, match=r"target_precision|min_reviews"):
        go_live_report([], current_threshold=0.85, target_precision=target, min_reviews=minimum)
