"""Pure routers of the resolution graph: where a ticket goes after scoring."""

from __future__ import annotations

from typing import Literal

from agent.state import AgentState

Decision = Literal["deliver", "flag_for_review", "escalate"]


def route_after_score(state: AgentState) -> Decision:
    """Gates first (risks, guard violations), then the confidence against the thresholds recorded by `score`."""
    scoring = state["scoring"]
    if scoring.get("gate") == "escalate":
        return "escalate"
    thresholds = scoring["thresholds"]
    confidence = scoring["confidence"]
    if confidence < thresholds["review"]:
        return "escalate"
    if confidence < thresholds["auto_resolve"] or scoring.get("gate") == "review":
        return "flag_for_review"
    return "deliver"
