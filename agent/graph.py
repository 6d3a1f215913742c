"""The resolution graph: routing (classify, prioritize, dispatch), then the agent (load_context, retrieve, draft,
score) and one of three decisions. `builder` is uncompiled so tests and tools compile their own.
"""

from __future__ import annotations

import itertools
from typing import Any

from langgraph.graph import END, START, StateGraph

from agent import nodes
from agent.context import Context
from agent.routers import route_after_score
from agent.state import AgentState

PIPELINE = ("classify", "prioritize", "dispatch", "load_context", "retrieve", "draft", "score")
DECISIONS = ("deliver", "flag_for_review", "escalate")


def build_graph() -> StateGraph[AgentState, Context, AgentState, AgentState]:
    builder: StateGraph[AgentState, Context, AgentState, AgentState] = StateGraph(AgentState, context_schema=Context)
    builder.add_node("classify", nodes.classify)
    builder.add_node("prioritize", nodes.prioritize)
    builder.add_node("dispatch", nodes.dispatch)
    builder.add_node("load_context", nodes.load_context)
    builder.add_node("retrieve", nodes.retrieve)
    builder.add_node("draft", nodes.draft)
    builder.add_node("score", nodes.score)
    builder.add_node("deliver", nodes.deliver)
    builder.add_node("flag_for_review", nodes.flag_for_review)
    builder.add_node("escalate", nodes.escalate)
    builder.add_edge(START, "classify")
    for before, after in itertools.pairwise(PIPELINE):
        builder.add_edge(before, after)
    builder.add_conditional_edges("score", route_after_score, list(DECISIONS))
    for decision in DECISIONS:
        builder.add_edge(decision, END)
    return builder


builder = build_graph()


def compile_graph() -> Any:
    return build_graph().compile()
