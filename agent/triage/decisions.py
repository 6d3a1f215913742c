"""Routing decisions as pure functions: category and priority from the learned models, keyword priors, account
context and the customer's history, each with the reasons that moved it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from agent.scoring.risk import DEMANDS, URGENT, Risk
from agent.triage.classifier import RoutingPrediction
from agent.triage.keywords import CATEGORIES, PRIORITIES, category_keywords, is_enquiry, priority_keywords
from core.settings import TierPolicy

DEFAULT_TIERS = TierPolicy()
BILLING_EVENTS = {
    "payment_failed": 0.7,
    "refund_issued": 0.6,
    "charge_disputed": 0.7,
    "chargeback": 0.7,
    "invoice_overdue": 0.6,
    "payment_overdue": 0.6,
    "plan_changed": 0.4,
    "subscription_cancelled": 0.4,
}
# Log-odds a category receives from the learned model when the history never showed it (e.g. no onboarding
# tickets yet): low, but keywords and account context can still reach it.
ABSENT_CATEGORY_LOGIT = math.log(0.01)
# Setup / "how do I" phrasing, for the trial-account onboarding signal.
_SETUP_WORDS = (
    "how do i",
    "how to",
    "how can i",
    "set up",
    "setup",
    "get started",
    "configure",
    "where do i",
    "wie kann ich",
    "como puedo",
    "comment",
    "como posso",
)


def _age_days(value: Any, now: datetime) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return max(0.0, float((now - value).total_seconds()) / 86400)
    return None


def _softmax(logits: dict[str, float]) -> dict[str, float]:
    top = max(logits.values())
    exp = {k: math.exp(v - top) for k, v in logits.items()}
    total = sum(exp.values())
    return {k: v / total for k, v in exp.items()}


def decide_category(
    text: str,
    prediction: RoutingPrediction | None,
    account: dict[str, Any],
    *,
    now: datetime | None = None,
    tiers: TierPolicy = DEFAULT_TIERS,
) -> dict[str, Any]:
    """The `classify` output: category, certainty, scores, reasons, keywords, neighbours. `tiers` says which of
    the operator's plan names are trials."""
    now = now or datetime.now(UTC)
    keywords = category_keywords(text)
    reasons: list[str] = []
    learned = prediction.category_probs if prediction else {}
    if learned:
        logits = {
            c: math.log(max(learned[c], 1e-6)) if c in learned else ABSENT_CATEGORY_LOGIT + 0.5 * len(keywords[c])
            for c in CATEGORIES
        }
        best = max(learned, key=learned.__getitem__)
        views = prediction.category_views if prediction else {}
        view_text = ", ".join(f"{name} {max(v, key=v.__getitem__)} {max(v.values()):.2f}" for name, v in views.items())
        reasons.append(
            f"learned model ({prediction.model.get('history', 0) if prediction else 0} past tickets): "
            f"{best} {learned[best]:.2f} [{view_text}]"
        )
    else:
        # Cold start: keywords only, with everything else falling to general.
        logits = {c: 1.2 * math.log1p(len(keywords[c])) for c in CATEGORIES}
        logits["general"] += 0.3
        reasons.append("no labelled history yet: keyword rules only")
    matched = [f"{c}:{term}" for c in CATEGORIES for term in keywords[c]]
    if matched:
        reasons.append("keywords " + ", ".join(matched[:12]))

    # Account context: recent billing events pull towards billing; a new or trial account asking how to set
    # something up towards onboarding; the customer's recent tickets towards their categories.
    for event in account.get("events") or []:
        kind = str(event.get("kind", "")).lower()
        age = _age_days(event.get("occurred_at"), now)
        if kind in BILLING_EVENTS and (age is None or age <= 14):
            logits["billing"] += BILLING_EVENTS[kind]
            reasons.append(
                f"account event {kind}"
                + (f" {age:.0f} days ago" if age is not None else "")
                + f": billing +{BILLING_EVENTS[kind]}"
            )
            break
    tier = account.get("tier")
    customer_age = _age_days(account.get("customer_since"), now)
    trial = tiers.is_trial(tier)
    if trial or (customer_age is not None and customer_age <= 30):
        lowered = text.lower()
        bonus = 0.5 if any(w in lowered for w in _SETUP_WORDS) else 0.2
        logits["onboarding"] += bonus
        reasons.append(
            (f"trial account ({tier})" if trial else f"account {customer_age:.0f} days old") + f": onboarding +{bonus}"
        )
    for prior in (account.get("prior_tickets") or [])[:5]:
        category = prior.get("category")
        similarity = prior.get("similarity")
        if category in logits and similarity is not None and similarity >= 0.6:
            logits[category] += 0.4
            reasons.append(f"similar earlier ticket ({similarity:.2f}) was {category}: +0.4")
            break

    scores = _softmax(logits)
    category = max(scores, key=scores.__getitem__)
    neighbours = [n.to_json() for n in (prediction.neighbours[:5] if prediction else [])]
    if neighbours:
        same = sum(1 for n in prediction.neighbours if n.category == category) if prediction else 0
        reasons.append(
            f"neighbours: {same}/{len(prediction.neighbours) if prediction else 0} {category}, "
            f"top similarity {neighbours[0]['similarity']:.2f}"
        )
    return {
        "category": category,
        "certainty": round(scores[category], 4),
        "scores": {c: round(p, 4) for c, p in scores.items()},
        "reasons": reasons,
        "keywords": [term for c in CATEGORIES for term in keywords[c]],
        "neighbours": neighbours,
    }


_LEVEL = {p: i for i, p in enumerate(PRIORITIES)}


def _raise(priority: str, to: str) -> str:
    return to if _LEVEL[to] > _LEVEL[priority] else priority


def decide_priority(
    text: str,
    prediction: RoutingPrediction | None,
    account: dict[str, Any],
    risks: Sequence[Risk],
    *,
    repeated_contact: bool,
    tiers: TierPolicy = DEFAULT_TIERS,
) -> dict[str, Any]:
    """The `prioritize` output: priority, reasons, signals. `tiers` says which plan names pay and which are the
    top plans."""
    found = priority_keywords(text)
    incidents = [r for r in risks if r.kind in URGENT]
    learned = {p: v for p, v in (prediction.priority_probs if prediction else {}).items() if p in _LEVEL}
    reasons: list[str] = []
    if learned:
        priority = max(learned, key=learned.__getitem__)
        reasons.append(f"learned from labelled history: {priority} {learned[priority]:.2f}")
    elif found["high"]:
        priority = "high"
        reasons.append("something is broken or blocked: " + ", ".join(found["high"][:5]))
    elif found["low"] and not found["normal"]:
        priority = "low"
        reasons.append("general enquiry or feature request: " + ", ".join(found["low"][:5]))
    elif is_enquiry(text, found):
        priority = "low"
        reasons.append("general enquiry: asks something and reports nothing broken, slow or wrong")
    else:
        priority = "normal"
        reasons.append("no urgency signals" if not found["normal"] else "degraded: " + ", ".join(found["normal"][:5]))
    if incidents:
        priority = "urgent"
        reasons.append("incident report (" + ", ".join(sorted({r.kind for r in incidents})) + "): urgent")
    demands = sorted({r.kind for r in risks if r.kind in DEMANDS or r.kind == "legal_threat"})
    if demands and priority == "low":
        # Low is for enquiries and feature requests; a demand or a threat waits on a person's action.
        priority = "normal"
        reasons.append("demand a person must act on (" + ", ".join(demands) + "): at least normal")
    tier = account.get("tier")
    blocked = bool(found["high"])
    # A paying customer blocked is high; a top-plan customer reporting a problem at all is at least normal. An
    # enquiry or a feature request stays low whatever the plan (the contract: "an enterprise customer blocked").
    if tiers.is_paying(tier) and blocked and priority != "urgent":
        before = priority
        priority = _raise(priority, "high")
        if priority != before:
            reasons.append(f"paying customer ({tier}) blocked: raised to high")
    elif tiers.is_top(tier) and priority == "low" and found["normal"]:
        priority = "normal"
        reasons.append(f"top-plan customer ({tier}) reporting a problem: at least normal")
    if repeated_contact and priority != "urgent":
        before = priority
        priority = PRIORITIES[min(_LEVEL[priority] + 1, _LEVEL["high"])]
        if priority != before:
            reasons.append(f"same problem reported again: raised from {before} to {priority}")
    return {
        "priority": priority,
        "reasons": reasons,
        "signals": {
            "learned": {p: round(v, 4) for p, v in learned.items()},
            "keywords": {level: terms for level, terms in found.items() if terms},
            "incident": sorted({r.kind for r in incidents}),
            "tier": tier,
            "paying": tiers.is_paying(tier),
            "blocked": blocked,
            "repeated_contact": repeated_contact,
        },
    }
