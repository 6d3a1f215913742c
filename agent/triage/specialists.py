"""One specialist agent per category: what account context it reads and which knowledge it prefers."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Specialist:
    name: str
    category: str
    team: str
    # Event kinds (prefixes) this specialist reads; () means every recent event.
    event_prefixes: tuple[str, ...]
    # Multiplier on the retrieval score of KB passages and past resolutions of its own category.
    category_boost: float
    # Days of events to consider.
    event_days: int


SPECIALISTS: dict[str, Specialist] = {
    "billing": Specialist(
        name="billing-agent",
        category="billing",
        team="Billing team",
        event_prefixes=("payment", "refund", "invoice", "charge", "plan", "subscription", "credit", "dispute", "trial"),
        category_boost=1.25,
        event_days=60,
    ),
    "technical": Specialist(
        name="technical-agent",
        category="technical",
        team="Technical support",
        event_prefixes=("usage", "incident", "error", "login", "api", "outage", "deploy", "integration", "plan"),
        category_boost=1.15,
        event_days=30,
    ),
    "onboarding": Specialist(
        name="onboarding-agent",
        category="onboarding",
        team="Onboarding team",
        event_prefixes=("signup", "sign_up", "trial", "activation", "activated", "invite", "setup", "plan"),
        category_boost=1.2,
        event_days=45,
    ),
    "general": Specialist(
        name="general-agent",
        category="general",
        team="Customer support",
        event_prefixes=(),
        category_boost=1.0,
        event_days=30,
    ),
}
AGENT_NAMES: tuple[str, ...] = tuple(s.name for s in SPECIALISTS.values())


def specialist_for(category: str | None) -> Specialist:
    return SPECIALISTS.get(category or "general", SPECIALISTS["general"])


def wants_event(specialist: Specialist, kind: str) -> bool:
    return not specialist.event_prefixes or kind.lower().startswith(specialist.event_prefixes)
