"""The learned risk detector (`agent.scoring.risk_model`): its shipped examples, the threshold cross-validation
chooses, paraphrased reports in five languages, how-to questions, and the held-out reports of tests/data."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from agent.scoring.risk import ACTIONS, URGENT, detect_risks, strongest_action
from agent.scoring.risk_model import (
    KIND_OF_LABEL,
    MULTILINGUAL_RECALL_TARGET,
    NONE,
    RECALL_TARGET,
    RiskModel,
    _load_stored,
    _stored_vectors,
    load_examples,
    reference_name,
    risk_model,
    translation_groups,
)

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="module")
def model(embedder: Any) -> RiskModel:
    return risk_model(embedder)


@pytest.fixture(scope="module")
def multilingual() -> Any:
    from knowledge.embedder import get_embedder

    return get_embedder("multilingual-use")


@pytest.fixture(scope="module")
def with_multilingual(embedder: Any, multilingual: Any) -> RiskModel:
    """The detector as the graph runs it beside an English-only model: with a head over the multilingual
    model's vectors."""
    return risk_model(embedder, multilingual=multilingual)


def detect(model: RiskModel, embedder: Any, text: str, multilingual: Any = None) -> set[str]:
    beside = multilingual.encode([text])[0] if multilingual is not None else None
    return {r.kind for r in model.detect(text, embedder.encode([text])[0], beside)}


def test_the_examples_ship_with_the_package_and_cover_every_kind_in_five_languages() -> None:
    examples = load_examples()
    assert len(examples) >= 400
    labels = Counter(e.label for e in examples)
    assert set(labels) == {*KIND_OF_LABEL, NONE}
    assert labels[NONE] >= len(examples) // 3  # benign look-alikes, many
    for label in KIND_OF_LABEL:
        assert {e.lang for e in examples if e.label == label} == {"en", "de", "es", "fr", "pt"}, label
    held_out = {json.loads(line)["text"] for line in (DATA / "risk_reports.jsonl").read_text().splitlines() if line}
    assert not held_out & {e.text for e in examples}  # the test set is never trained on


def test_the_stored_vectors_are_those_of_the_shipped_examples(embedder: Any) -> None:
    """After editing risk_examples.jsonl, run `python -m agent.scoring.risk_model` (else every worker encodes the
    examples before its first ticket)."""
    examples = load_examples()
    stored = _stored_vectors(embedder, examples)
    assert stored is not None
    fresh = embedder.encode([examples[0].text, examples[-1].text])
    assert np.abs(fresh - stored[[0, -1]]).max() < 0.01


def test_the_int8_runtime_has_its_own_stored_vectors() -> None:
    """The default runtime (`DESKPILOT_EMBEDDING_RUNTIME=auto`) is the int8 build: its workers, too, fit the
    detector without encoding the examples, and never with another runtime's vectors."""
    from knowledge.embedder import sentence_transformer_embedder

    int8 = sentence_transformer_embedder(None, "onnx-int8")
    assert int8.name.endswith("+onnx-int8")
    examples = load_examples()
    stored = _stored_vectors(int8, examples)
    assert stored is not None
    fresh = int8.encode([examples[1].text, examples[-2].text])
    assert np.abs(fresh - stored[[1, -2]]).max() < 0.01

    class Renamed:
        name, dimension = "another-model", int8.dimension

        def encode(self, texts: Any) -> np.ndarray:
            return int8.encode(texts)

    assert _stored_vectors(Renamed(), examples) is None


def test_a_runtime_is_told_from_the_reference_by_its_name() -> None:
    class Named:
        dimension = 384

        def __init__(self, name: str, runtime: str | None) -> None:
            self.name, self.runtime = name, runtime

        def encode(self, texts: Any) -> np.ndarray:
            raise AssertionError("not encoded")

    assert reference_name(Named("all-MiniLM-L6-v2+onnx-int8", "onnx-int8")) == "all-MiniLM-L6-v2"
    assert reference_name(Named("all-MiniLM-L6-v2", "torch")) is None
    assert reference_name(Named("multilingual-use", None)) is None


def test_the_int8_runtime_serves_the_reference_detector_with_its_threshold_moved() -> None:
    """Fitted on its own int8 vectors the detector flagged 30 more of 5,549 tobi-bueck tickets than torch's did
    (their scores ran 0.002 higher): now it is torch's detector, its threshold moved by the median change the int8
    vectors make to the examples' scores, and both runtimes flag the same share."""
    from knowledge.embedder import sentence_transformer_embedder

    int8 = sentence_transformer_embedder(None, "onnx-int8")
    examples = load_examples()
    texts = [e.text for e in examples]
    own = _stored_vectors(int8, examples)
    reference_vectors = _load_stored("all-MiniLM-L6-v2", examples, int8.dimension)
    assert own is not None and reference_vectors is not None
    with threadpool_limits(1):  # as `risk_model` fits it: the solver's result depends on the BLAS threads
        reference = RiskModel.fit(examples, reference_vectors)
    served = risk_model(int8)
    assert served.runtime_shift is not None
    np.testing.assert_allclose(served.heads.embedding.coef_, reference.heads.embedding.coef_)
    assert 0 < abs(served.runtime_shift.median) < 0.01
    assert served.threshold == pytest.approx(reference.threshold + served.runtime_shift.median)
    # Scored with the runtime's own vectors, the examples' median score change is what the threshold absorbed.
    before = np.array([s.probability for s in reference.score_texts(texts, reference_vectors)])
    after = np.array([s.probability for s in served.score_texts(texts, own)])
    assert float(np.median(after - before)) == pytest.approx(served.runtime_shift.median)


def test_the_threshold_is_the_highest_that_keeps_the_cross_validated_recall(model: RiskModel) -> None:
    cv = model.cross_validation
    assert cv["threshold"] == model.threshold
    assert cv["recall"] >= RECALL_TARGET
    assert 0.05 <= model.threshold <= 0.95
    # Recall is favoured, but not by flagging everything.
    assert cv["false_positive_rate"] < 0.25


def test_the_kinds_map_to_the_actions_of_the_brief() -> None:
    for label in ("data_loss", "outage", "security", "account_takeover"):
        assert ACTIONS[KIND_OF_LABEL[label]] == "escalate_urgent" and KIND_OF_LABEL[label] in URGENT
    for label in ("refund_demand", "legal_threat"):
        assert ACTIONS[KIND_OF_LABEL[label]] == "escalate"


# Written for this test: not in the examples, not in tests/data, and no pattern of agent.scoring.risk matches them.
PARAPHRASED = [
    ("This morning all of September is blank in our reports although we had over 800 hours in there.", "data_loss"),
    (
        "Somebody I have never heard of is now listed as owner of our workspace and I was made a plain member.",
        "account_takeover",
    ),
    ("Our developer put the workspace API key on a public website by accident last night.", "security_incident"),
    ("Since nine o'clock not one of our forty people can get the app to open, it just hangs.", "outage"),
    ("Seit dem Update sind die Einträge meines ganzen Teams vom letzten Monat einfach weg.", "data_loss"),
    ("Alguien entró en mi cuenta, cambió la contraseña y ahora ya no puedo acceder.", "account_takeover"),
    (
        "Des personnes extérieures à notre société peuvent consulter nos rapports sans se connecter.",
        "security_incident",
    ),
    ("Todos os lançamentos da semana passada sumiram e ninguém aqui apagou nada.", "data_loss"),
    ("You took the renewal after we had cancelled. Put that money back on our card this week.", "refund_demand"),
    ("One more week without an answer and we will let a judge decide who pays for this.", "legal_threat"),
]


@pytest.mark.parametrize(("text", "kind"), PARAPHRASED)
def test_paraphrased_reports_are_caught_with_their_action(
    model: RiskModel, embedder: Any, text: str, kind: str
) -> None:
    assert kind not in {r.kind for r in detect_risks(text)}  # words no pattern lists
    risks = model.detect(text, embedder.encode([text])[0])
    assert risks, text
    # The action is what matters (urgent escalation or escalation); the exact kind is reported in the trace.
    assert strongest_action(risks) == ACTIONS[kind], (text, [r.describe() for r in risks])


def test_a_learned_risk_says_why_in_the_trace(model: RiskModel, embedder: Any) -> None:
    text = PARAPHRASED[0][0]
    (risk,) = model.detect(text, embedder.encode([text])[0])
    assert risk.score is not None and risk.score >= model.threshold
    assert risk.threshold == model.threshold
    assert f"learned detector {risk.score:.2f}" in risk.describe()
    assert "September" in risk.describe()


EVERYDAY_QUESTIONS = [
    "How do I export last month's timesheets as a PDF for our accountant?",
    "Where can I change the hourly rate of a single project?",
    "Wie lade ich neue Kolleginnen in unseren Arbeitsbereich ein?",
    "¿Cómo cambio la moneda en la que se emiten las facturas?",
    "Comment ajouter un nouveau client à un projet existant ?",
    "Como defino o dia em que a semana começa nos relatórios?",
]


@pytest.mark.parametrize("text", EVERYDAY_QUESTIONS)
def test_everyday_questions_are_not_flagged(model: RiskModel, embedder: Any, text: str) -> None:
    assert detect(model, embedder, text) == set()


# Everyday problems every help desk sees, written for this test (not in the examples): the detector flagged each
# of them before the examples held such problems as benign (0.41 and 0.71 against a threshold of 0.40).
EVERYDAY_PROBLEMS = [
    "I asked for a new password an hour ago and the email still hasn't come. Can you send the link again?",
    "Our Outlook calendar integration has stopped syncing and shows an error since Tuesday.",
]


@pytest.mark.parametrize("text", EVERYDAY_PROBLEMS)
def test_everyday_support_problems_are_not_flagged(model: RiskModel, embedder: Any, text: str) -> None:
    assert text not in {e.text for e in load_examples()}
    assert detect(model, embedder, text) == set()


def test_a_reset_email_not_arriving_is_not_flagged(model: RiskModel, embedder: Any) -> None:
    """examples/tickets/password-reset.json, as the graph reads it (subject, blank line, body): scored 0.69 as an
    account takeover before."""
    ticket = json.loads((DATA.parents[1] / "examples" / "tickets" / "password-reset.json").read_text())
    text = f"{ticket['subject'].strip()}\n\n{ticket['body'].strip()}"
    assert detect(model, embedder, text) == set()


def test_nothing_is_flagged_without_an_embedding_or_text(model: RiskModel) -> None:
    assert model.detect("All our data is gone.", None) == []
    assert model.detect("   ", np.zeros(384, dtype=np.float32)) == []


def test_held_out_reports_are_caught_and_their_look_alikes_mostly_not(model: RiskModel, embedder: Any) -> None:
    """tests/data/risk_reports.jsonl, written by someone else and never trained on (see its README). Measured
    when written: 95 of 96 reports caught (one English legal threat missed), 2 of 66 look-alikes flagged; after the
    everyday problems joined the examples (794): 95 of 96 (one Spanish data loss missed), 4 of 66 flagged; after
    requests for billing exceptions joined (817): 96 of 96, 5 of 66 flagged; after takeovers noticed as sessions
    from unknown places joined (830): the same; after ticket-length examples joined (965): 95 of 96 (the Spanish
    data loss again), 3 of 66 flagged."""
    rows = [json.loads(line) for line in (DATA / "risk_reports.jsonl").read_text().splitlines() if line.strip()]
    vectors = embedder.encode([r["text"] for r in rows])
    flagged = [bool(model.detect(r["text"], v)) for r, v in zip(rows, vectors, strict=True)]
    caught: Counter[str] = Counter()
    total: Counter[str] = Counter()
    false_alarms = 0
    for row, hit in zip(rows, flagged, strict=True):
        if row["label"] == NONE:
            false_alarms += hit
            continue
        for key in (row["label"], row["lang"]):
            total[key] += 1
            caught[key] += hit
    assert sum(caught[label] for label in KIND_OF_LABEL) >= 0.9 * sum(total[label] for label in KIND_OF_LABEL)
    for key in total:
        assert caught[key] >= 0.8 * total[key], (key, caught[key], total[key])
    assert false_alarms <= 0.15 * sum(1 for r in rows if r["label"] == NONE)


def test_a_text_and_its_translation_are_one_group_in_the_multilingual_cross_validation(multilingual: Any) -> None:
    texts = [
        "All of last week's time entries have disappeared from our reports.",
        "Alle Zeiteinträge der letzten Woche sind aus unseren Berichten verschwunden.",
        "How do I add a new client to a project?",
    ]
    groups = translation_groups(np.asarray(multilingual.encode(texts)))
    assert groups[0] == groups[1] != groups[2]


def test_with_the_multilingual_head_the_threshold_keeps_its_recall_out_of_fold(
    model: RiskModel, with_multilingual: RiskModel
) -> None:
    cv = with_multilingual.multilingual_cross_validation
    assert cv is not None and cv["threshold"] == with_multilingual.multilingual_threshold
    assert cv["recall"] >= MULTILINGUAL_RECALL_TARGET
    assert cv["false_positive_rate"] < model.cross_validation["false_positive_rate"]
    # A text read without a multilingual vector is held to the detector's own threshold, as before.
    assert with_multilingual.threshold == model.threshold


@pytest.mark.parametrize(("text", "kind"), PARAPHRASED)
def test_paraphrased_reports_are_caught_with_the_multilingual_head_too(
    with_multilingual: RiskModel, embedder: Any, multilingual: Any, text: str, kind: str
) -> None:
    risks = with_multilingual.detect(text, embedder.encode([text])[0], multilingual.encode([text])[0])
    assert risks, text
    assert strongest_action(risks) == ACTIONS[kind], (text, [r.describe() for r in risks])
    assert all(r.threshold == with_multilingual.multilingual_threshold for r in risks)


@pytest.mark.parametrize("text", [*EVERYDAY_QUESTIONS, *EVERYDAY_PROBLEMS])
def test_everyday_questions_and_problems_are_not_flagged_with_the_multilingual_head(
    with_multilingual: RiskModel, embedder: Any, multilingual: Any, text: str
) -> None:
    assert detect(with_multilingual, embedder, text, multilingual) == set()


def test_the_multilingual_head_raises_fewer_false_alarms_on_the_held_out_reports(
    model: RiskModel, with_multilingual: RiskModel, embedder: Any, multilingual: Any
) -> None:
    """tests/data/risk_reports.jsonl again. Measured when the head was added: without it 95 of 96 reports
    caught and 3 of 66 look-alikes flagged; with it 94 of 96 and 1 of 66 (the detector alone: the patterns catch
    the Portuguese demand it misses)."""
    rows = [json.loads(line) for line in (DATA / "risk_reports.jsonl").read_text().splitlines() if line.strip()]
    texts = [r["text"] for r in rows]
    vectors, beside = embedder.encode(texts), multilingual.encode(texts)
    positive = np.array([r["label"] != NONE for r in rows])
    plain = np.array([bool(model.detect(t, v)) for t, v in zip(texts, vectors, strict=True)])
    both = np.array([bool(with_multilingual.detect(t, v, b)) for t, v, b in zip(texts, vectors, beside, strict=True)])
    assert (both & positive).sum() >= 0.95 * positive.sum()
    assert (both & ~positive).sum() <= 0.05 * (~positive).sum()
    assert (both & ~positive).sum() < (plain & ~positive).sum()


def _gated(model: RiskModel, embedder: Any, multilingual: Any, name: str) -> tuple[int, int]:
    """(reports caught, look-alikes flagged) on a labelled file of tests/data, read as the graph reads a ticket:
    the patterns, then the detector beside the multilingual model."""
    rows = [json.loads(line) for line in (DATA / name).read_text().splitlines() if line]
    assert len(rows) == 120 and sum(r["label"] == NONE for r in rows) == 60
    texts = [r["text"] for r in rows]
    vectors, beside = embedder.encode(texts), multilingual.encode(texts)
    caught = false_alarms = 0
    for row, vector, other in zip(rows, vectors, beside, strict=True):
        gates = {r.kind for r in detect_risks(row["text"]) if r.action != "review"}
        gates |= {r.kind for r in model.detect(row["text"], vector, other)}
        if row["label"] == NONE:
            false_alarms += bool(gates)
        else:
            caught += bool(gates)
    return caught, false_alarms


def test_reports_about_other_products_are_caught_and_their_look_alikes_mostly_not(
    with_multilingual: RiskModel, embedder: Any, multilingual: Any
) -> None:
    """Two files of 120 messages each to five products unlike the demo, written on 2026-12-07 by writers who saw
    none of the examples, never trained on: tests/data/risk_other_products.jsonl (email marketing, payroll, video
    hosting, bookings, forms) and risk_fresh_products.jsonl (parking, restaurant orders, documents, tutoring,
    rentals). Measured when written, with the examples then shipped: 54 and 55 of 60 reports caught (outages told
    by their effects, a formal notice of breach, an import that overwrote every lease), 3 and 3 of 60 look-alikes
    flagged; with the formal words of a claim among the patterns since, the first file's notice of breach too (55)."""
    for name in ("risk_other_products.jsonl", "risk_fresh_products.jsonl"):
        caught, false_alarms = _gated(with_multilingual, embedder, multilingual, name)
        assert caught >= 51, name  # of 60
        assert false_alarms <= 6, name  # of 60
