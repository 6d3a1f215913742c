"""Confidence that a reply is right: retrieval and classifier signals mapped to a probability by a calibration
fitted on labelled history (`agent/scoring/calibration.json`, refit with `deskpilot calibrate`), then combined with
the model's self-assessment when an LLM drafted the reply. Risks never change the number; they gate the decision.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent.drafting.reader import Evidence, document_of
from agent.triage.classifier import Neighbour
from knowledge.retrieval import RetrievedItem

CALIBRATION_PATH = Path(__file__).with_name("calibration.json")
EPS = 1e-4

# Signals per model. "issue" models exist when the history carries issue labels (intents); without them the
# confidence rests on similarity and category agreement alone.
INTENT_SIGNALS: tuple[str, ...] = (
    "issue_probability",
    "top_similarity",
    "similarity_margin",
    "neighbour_agreement",
    "category_certainty",
    "grounding_category_match",
)
SIMILARITY_SIGNALS: tuple[str, ...] = (
    "top_similarity",
    "similarity_margin",
    "neighbour_agreement",
    "category_certainty",
    "grounding_category_match",
)
# Knowledge-base replies: the reader's view of each question's passage, the weakest question deciding.
KNOWLEDGE_SIGNALS: tuple[str, ...] = (
    "reader_min",
    "unit_min",
    "margin_min",
    "coverage",
    "category_certainty",
    "source_agreement",
)
NOTES: dict[str, str] = {
    "reader_min": "reader score of the passage answering the least well answered question",
    "unit_min": "best sentence's similarity to its question, for the least well answered question",
    "margin_min": "lead of that passage over the best passage of another article",
    "coverage": "share of the ticket's questions some passage answers",
    "source_agreement": "share of the ticket's two searches (vector, full text) whose best help-centre passage is "
    "from an article the reply quotes",
    "issue_probability": "issue model's probability for the grounding resolution's issue",
    "top_similarity": "cosine similarity of the grounding resolution to the ticket",
    "similarity_margin": "lead of the grounding over the closest resolution of another issue",
    "neighbour_agreement": "similarity-weighted share of the 10 nearest past tickets with the same issue",
    "category_certainty": "routing classifier's probability for the chosen category",
    "grounding_category_match": "grounding resolution has the ticket's category",
}
# Probabilities enter the linear model as log-odds.
LOGIT_SIGNALS = frozenset({"issue_probability", "category_certainty", "neighbour_agreement"})


def logit(p: float) -> float:
    p = min(1 - EPS, max(EPS, p))
    return math.log(p / (1 - p))


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


@dataclass(frozen=True)
class Grounding:
    """The past resolution a reply is built on, and how it was chosen."""

    item: RetrievedItem | None
    issue: str | None
    how: str


def compute_signals(
    *,
    grounding: Grounding,
    neighbours: Sequence[Neighbour],
    intent_probs: Mapping[str, float],
    category: str,
    category_certainty: float,
    use_intents: bool,
) -> dict[str, float]:
    """The raw, uncalibrated evidence for one reply (values only; weights come from the calibration)."""
    item = grounding.item
    top = float(item.similarity or 0.0) if item is not None else 0.0
    if use_intents:
        issue = item.intent if item is not None else None
        other = [n.similarity for n in neighbours if n.intent != issue]
        same_weight = sum(math.exp(10 * n.similarity) for n in neighbours if n.intent == issue and issue)
    else:
        key = item.category if item is not None else None
        other = [n.similarity for n in neighbours if item is None or n.id != str(item.id)]
        same_weight = sum(math.exp(10 * n.similarity) for n in neighbours if n.category == key and key)
    total_weight = sum(math.exp(10 * n.similarity) for n in neighbours) or 1.0
    signals = {
        "top_similarity": top,
        "similarity_margin": top - max(other) if other else top,
        "neighbour_agreement": same_weight / total_weight,
        "category_certainty": float(category_certainty),
        "grounding_category_match": 1.0 if item is not None and item.category == category else 0.0,
    }
    if use_intents:
        signals["issue_probability"] = float(intent_probs.get(item.intent or "", 0.0)) if item is not None else 0.0
    return signals


def knowledge_signals(
    evidence: Sequence[Evidence], *, category_certainty: float, floor: float, items: Sequence[RetrievedItem] = ()
) -> dict[str, float]:
    """The raw evidence for a reply composed from the knowledge base, one answer per question; `items`, the
    ticket's own hybrid search, tells whether its two arms agree with the reader."""
    if not evidence:
        return {name: 0.0 for name in KNOWLEDGE_SIGNALS} | {"category_certainty": float(category_certainty)}
    weakest = min(evidence, key=lambda e: e.score)
    return {
        "source_agreement": source_agreement(evidence, items),
        "reader_min": float(weakest.score),
        "unit_min": float(min(e.best_unit for e in evidence)),
        "margin_min": float(min(e.margin for e in evidence)),
        "coverage": sum(e.score >= floor and e.item is not None for e in evidence) / len(evidence),
        "category_certainty": float(category_certainty),
    }


def source_agreement(evidence: Sequence[Evidence], items: Sequence[RetrievedItem]) -> float:
    """Share of the ticket's two searches — by vector and by full text — whose best help-centre passage belongs to
    an article the reader quotes: 1 when both point where the reader went, 0 when neither does (or found nothing).
    """
    quoted = {document_of(e.item) for e in evidence if e.item is not None}
    passages = [i for i in items if i.kind == "kb_chunk"]
    agree = 0
    for rank in ("vector_rank", "text_rank"):
        ranked = sorted((i for i in passages if getattr(i, rank) is not None), key=lambda i: getattr(i, rank))
        agree += bool(ranked) and document_of(ranked[0]) in quoted
    return agree / 2


def features(signals: Mapping[str, float], names: Sequence[str]) -> np.ndarray:
    return np.array([logit(signals[n]) if n in LOGIT_SIGNALS else float(signals[n]) for n in names])


@dataclass
class CalibrationModel:
    """Logistic regression on the signals, then isotonic regression on its output (monotone, in [0, 1])."""

    signals: tuple[str, ...]
    coef: list[float]
    intercept: float
    iso_x: list[float]
    iso_y: list[float]
    fitted_on: dict[str, Any] = field(default_factory=dict)

    def raw(self, signals: Mapping[str, float]) -> tuple[float, dict[str, dict[str, Any]]]:
        x = features(signals, self.signals)
        z = self.intercept + float(np.dot(self.coef, x))
        breakdown = {
            name: {
                "value": round(float(signals[name]), 4),
                "weight": round(w, 4),
                "contribution": round(w * float(v), 4),
                "note": NOTES.get(name, ""),
            }
            for name, w, v in zip(self.signals, self.coef, x, strict=True)
        }
        return sigmoid(z), breakdown

    def calibrate(self, raw: float) -> float:
        if not self.iso_x:
            return min(1.0, max(0.0, raw))
        return float(np.clip(np.interp(raw, self.iso_x, self.iso_y), 0.0, 1.0))

    def to_json(self) -> dict[str, Any]:
        return {
            "signals": list(self.signals),
            "coef": self.coef,
            "intercept": self.intercept,
            "isotonic": {"x": self.iso_x, "y": self.iso_y},
            "fitted_on": self.fitted_on,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CalibrationModel:
        return cls(
            signals=tuple(data["signals"]),
            coef=[float(c) for c in data["coef"]],
            intercept=float(data["intercept"]),
            iso_x=[float(v) for v in data.get("isotonic", {}).get("x", [])],
            iso_y=[float(v) for v in data.get("isotonic", {}).get("y", [])],
            fitted_on=dict(data.get("fitted_on", {})),
        )


# Used until `deskpilot calibrate` has written agent/scoring/calibration.json: hand-set, deliberately conservative.
_DEFAULT = {
    "with_intents": {
        "signals": list(INTENT_SIGNALS),
        "coef": [0.9, 2.0, 2.0, 0.3, 0.2, 0.3],
        "intercept": -1.5,
        "isotonic": {"x": [], "y": []},
    },
    "without_intents": {
        "signals": list(SIMILARITY_SIGNALS),
        "coef": [6.0, 4.0, 0.3, 0.3, 0.3],
        "intercept": -5.0,
        "isotonic": {"x": [], "y": []},
    },
    "knowledge": {
        "signals": list(KNOWLEDGE_SIGNALS),
        "coef": [12.0, 4.0, 6.0, 3.0, 0.3, 2.0],
        "intercept": -12.0,
        "isotonic": {"x": [], "y": []},
    },
}
MODELS = ("with_intents", "without_intents", "knowledge")


@dataclass
class Calibration:
    with_intents: CalibrationModel
    without_intents: CalibrationModel
    knowledge: CalibrationModel = field(default_factory=lambda: CalibrationModel.from_json(_DEFAULT["knowledge"]))
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | None = None) -> Calibration:
        path = path or CALIBRATION_PATH
        data: Mapping[str, Any] = _DEFAULT
        meta: dict[str, Any] = {"source": "built-in defaults"}
        if path.is_file():
            data = json.loads(path.read_text(encoding="utf-8"))
            meta = {"source": str(path.name), **{k: v for k, v in data.items() if k not in _DEFAULT}}
        return cls(
            with_intents=CalibrationModel.from_json(data["with_intents"]),
            without_intents=CalibrationModel.from_json(data["without_intents"]),
            knowledge=CalibrationModel.from_json(data.get("knowledge") or _DEFAULT["knowledge"]),
            meta=meta,
        )

    def save(self, path: Path) -> None:
        payload = {
            **{k: v for k, v in self.meta.items() if k != "source"},
            "with_intents": self.with_intents.to_json(),
            "without_intents": self.without_intents.to_json(),
            "knowledge": self.knowledge.to_json(),
        }
        path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")

    def model(self, use_intents: bool) -> CalibrationModel:
        return self.with_intents if use_intents else self.without_intents

    def named(self, name: str) -> CalibrationModel:
        model: CalibrationModel = getattr(self, name)
        return model


@dataclass
class Score:
    confidence: float
    raw_score: float
    calibrated: float
    breakdown: dict[str, dict[str, Any]]


def score_confidence(
    signals: Mapping[str, float],
    calibration: Calibration,
    *,
    use_intents: bool,
    knowledge: bool = False,
    self_assessment: float | None = None,
    grounded: bool = True,
) -> Score:
    """Calibrated probability that the reply is right, with its breakdown.

    `self_assessment` is a multiplier in [0, 1] from an LLM drafter's structured verdict (it can only lower
    the score: the model's confidence is not evidence the retrieval lacked). An ungrounded reply keeps its
    number; the `coverage` entry records that there is nothing to send, and the decision escalates.
    """
    model = calibration.knowledge if knowledge else calibration.model(use_intents)
    raw, breakdown = model.raw(signals)
    calibrated = model.calibrate(raw)
    confidence = calibrated
    if self_assessment is not None:
        factor = min(1.0, max(0.0, float(self_assessment)))
        confidence *= factor
        breakdown["self_assessment"] = {
            "value": round(factor, 4),
            "weight": 1.0,
            "contribution": round(confidence - calibrated, 4),
            "note": "LLM's structured self-assessment and citation validity (multiplier)",
        }
    if not grounded:
        # A gate, not a probability: the grounding may well be the right issue, there is just nothing to send.
        breakdown["coverage"] = {
            "value": 0.0,
            "weight": 0.0,
            "contribution": 0.0,
            "note": "no past resolution or KB passage with reply text: nothing to send (escalates)",
        }
    return Score(
        confidence=round(min(1.0, max(0.0, confidence)), 4),
        raw_score=round(raw, 4),
        calibrated=round(calibrated, 4),
        breakdown=breakdown,
    )


def calibration_from_json(mapping: Mapping[str, Any], *, version: int) -> Calibration:
    """A calibration stored as a version in the database (`calibration_versions.mapping`)."""
    models = {name: CalibrationModel.from_json(mapping.get(name) or _DEFAULT[name]) for name in MODELS}
    return Calibration(
        with_intents=models["with_intents"],
        without_intents=models["without_intents"],
        knowledge=models["knowledge"],
        meta={"source": f"database version {version}", "version": version},
    )


def calibration_to_json(calibration: Calibration) -> dict[str, Any]:
    return {name: calibration.named(name).to_json() for name in MODELS}


async def active_calibration(conn: Any) -> Calibration | None:
    """The activated refit (its `meta["version"]` is what an attempt records), or None: the shipped one."""
    row = await conn.fetchrow("SELECT version, mapping FROM calibration_versions WHERE active")
    if row is None:
        return None
    return calibration_from_json(row["mapping"], version=row["version"])
