"""Hard gates that understand meaning (issue 15): reports and demands in words no pattern lists, run through the
real graph (real embedder, past resolutions in a real database). With a calibration that would send every
grounded reply, a paraphrased incident still escalates as urgent and a demand or threat escalates, each with the
learned detector's score in the trace; everyday questions are still answered."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from agent.context import MemoryRecorder
from agent.drafting.drafter import OfflineDrafter
from agent.runner import TicketProcessor, run_graph_offline
from agent.scoring.confidence import INTENT_SIGNALS, SIMILARITY_SIGNALS, Calibration, CalibrationModel
from agent.scoring.risk import detect_risks
from agent.state import TicketInput
from agent.triage.classifier import RoutingModelCache
from core.metrics import Metrics
from core.settings import Settings


def sends_everything() -> Calibration:
    """Every grounded reply at confidence 0.95: only a gate can stop it."""
    intercept = math.log(0.95 / 0.05)

    def model(names: tuple[str, ...]) -> CalibrationModel:
        return CalibrationModel(signals=names, coef=[0.0] * len(names), intercept=intercept, iso_x=[], iso_y=[])

    return Calibration(with_intents=model(INTENT_SIGNALS), without_intents=model(SIMILARITY_SIGNALS))


@pytest.fixture
def processor(
    pool: asyncpg.Pool, embedder: Any, history: int, make_settings: Callable[..., Settings]
) -> TicketProcessor:
    return TicketProcessor(
        pool,
        make_settings(),
        Metrics(),
        embedder=embedder,
        drafter=OfflineDrafter(),
        models=RoutingModelCache(),
        calibration=sends_everything(),
    )


# Written for this test (not in agent/scoring/risk_examples.jsonl nor tests/data); no pattern matches them.
URGENT_REPORTS = [
    (
        "Timesheets empty",
        "Hi, I opened the approvals page and every timesheet of my team for October is empty. We logged around "
        "600 hours and nobody here removed anything. What happened to them?",
    ),
    (
        "Strange owner",
        "Since last night a person none of us knows is the owner of our workspace, and I was turned into an "
        "ordinary member. I did not hand over anything.",
    ),
    (
        "Zugangsdaten öffentlich",
        "Ein Kollege hat unseren API-Schlüssel gestern aus Versehen in einem öffentlichen Forum gepostet.",
    ),
    (
        "No puedo entrar",
        "Alguien cambió la contraseña y el correo de mi cuenta esta mañana y ya no puedo entrar.",
    ),
]
DEMANDS = [
    ("Renewal", "You charged the yearly renewal after we had said goodbye. Put those euros back where they came from."),
    ("Last warning", "Answer this week or we will let a judge decide who pays for the hours we lost."),
]


async def run(processor: TicketProcessor, subject: str, body: str) -> tuple[dict[str, Any], MemoryRecorder]:
    recorder = MemoryRecorder()
    state = await run_graph_offline(processor, TicketInput(subject=subject, body=body), recorder=recorder)
    return dict(state), recorder


@pytest.mark.parametrize(
    ("subject", "body"), URGENT_REPORTS, ids=["data_loss", "takeover", "security-de", "takeover-es"]
)
async def test_paraphrased_incidents_escalate_as_urgent(processor: TicketProcessor, subject: str, body: str) -> None:
    assert not {r.kind for r in detect_risks(f"{subject}\n\n{body}")}  # no pattern knows these words
    state, _ = await run(processor, subject, body)
    assert state["outcome"]["decision"] == "escalate"
    assert state["prioritization"]["priority"] == "urgent"
    assert "incident report" in " ".join(state["prioritization"]["reasons"])
    reasons = " ".join(state["outcome"]["reasons"])
    assert "learned detector" in reasons, reasons
    assert state["outcome"]["retryable"] is False
    assert state["outcome"]["delivery_id"] is None


@pytest.mark.parametrize(("subject", "body"), DEMANDS, ids=["refund", "legal"])
async def test_paraphrased_demands_and_threats_escalate(processor: TicketProcessor, subject: str, body: str) -> None:
    assert not {r.kind for r in detect_risks(f"{subject}\n\n{body}")}  # no pattern knows these words
    state, _ = await run(processor, subject, body)
    assert state["outcome"]["decision"] == "escalate"
    assert "learned detector" in " ".join(state["outcome"]["reasons"])


@pytest.mark.parametrize(
    ("subject", "body"),
    [
        ("Invoice copy", "Where can I download a copy of last month's invoice as a PDF?"),
        ("Refund policy", "How do refunds work if we move from the annual plan to monthly?"),
        ("2FA", "How do I turn on two-factor sign-in for everyone in our workspace?"),
    ],
)
async def test_everyday_questions_are_still_answered(processor: TicketProcessor, subject: str, body: str) -> None:
    state, _ = await run(processor, subject, body)
    assert state["outcome"]["decision"] == "deliver", state["scoring"]["gate_reasons"]
    assert state["scoring"]["gate"] is None


async def test_beside_the_english_model_the_detector_reads_the_ticket_with_the_multilingual_one(
    processor: TicketProcessor, embedder: Any
) -> None:
    from agent.scoring.risk_model import risk_model
    from knowledge.embedder import get_embedder

    subject, body = URGENT_REPORTS[2]  # German: MiniLM reads it poorly, the multilingual model does not
    state, _ = await run(processor, subject, body)
    [risk] = [r for r in state["risks"] if r.score is not None]
    detector = risk_model(embedder, multilingual=get_embedder("multilingual-use"))
    assert detector.multilingual_threshold is not None
    assert risk.threshold == detector.multilingual_threshold != detector.threshold
    assert state["prioritization"]["priority"] == "urgent"


HELD_OUT = [
    json.loads(line)
    for line in (Path(__file__).resolve().parents[1] / "data" / "heldout_escalations.jsonl").read_text().splitlines()
    if line.strip()
]


async def test_held_out_tickets_that_must_reach_a_person_escalate_and_their_look_alikes_are_not_gated(
    processor: TicketProcessor,
) -> None:
    # Written after the gates were last changed (tests/data/README.md); with a calibration that sends everything,
    # only a gate keeps a reply from going out.
    missed, held = [], []
    for ticket in HELD_OUT:
        state, _ = await run(processor, ticket["subject"], ticket["body"])
        gated = state["scoring"]["gate"] is not None
        if ticket["kind"] == "must_escalate" and (state["outcome"]["decision"] != "escalate" or not gated):
            missed.append(ticket["id"])
        if ticket["kind"] == "benign" and gated:
            held.append((ticket["id"], state["scoring"]["gate_reasons"]))
    assert sum(t["kind"] == "must_escalate" for t in HELD_OUT) == 52
    assert not missed, missed
    assert not held, held
