"""Category accuracy per language by cross-validation (`agent/quality/languages.py`): every labelled ticket is
predicted once, by models that never saw it, and the report's gap is English minus the rest with its error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.quality.evaluation import LabelledTicket
from agent.quality.languages import cross_validate, main, summarize

TEXTS = {
    "billing": [
        ("en", "I was charged twice for the invoice this month, please check the payment."),
        ("de", "Die Rechnung wurde diesen Monat doppelt abgebucht, bitte prüfen Sie die Zahlung."),
    ],
    "technical": [
        ("en", "The app crashes when I open the settings page after the update."),
        ("de", "Die App stürzt ab, wenn ich nach dem Update die Einstellungen öffne."),
    ],
}


def labelled_set(per_language: int = 12) -> tuple[list[LabelledTicket], dict[str, np.ndarray]]:
    """Two categories in English and German; each ticket's vector sits near its category's direction."""
    rng = np.random.default_rng(7)
    centres = {"billing": np.eye(16)[0], "technical": np.eye(16)[1]}
    tickets, vectors = [], {}
    for category, texts in TEXTS.items():
        for language, text in texts:
            for n in range(per_language):
                tid = f"{category}-{language}-{n}"
                tickets.append(
                    LabelledTicket(tid, "", f"{text} ({n})", f"answer {tid}", category, "normal", None, language)
                )
                v = centres[category] + rng.normal(0, 0.2, 16)
                vectors[tid] = (v / np.linalg.norm(v)).astype(np.float32)
    return tickets, vectors


def test_every_labelled_ticket_is_predicted_once_by_models_that_never_saw_it() -> None:
    tickets, vectors = labelled_set()
    rows = cross_validate(tickets, vectors, folds=4)

    assert len(rows) == len(tickets)
    assert {lang for lang, _, _ in rows} == {"en", "de"}
    report = summarize(rows)
    assert report["all"]["n"] == 48 and report["english"]["n"] == 24 and report["non_english"]["n"] == 24
    assert report["all"]["category_accuracy"] >= 0.9  # the vectors separate the categories


def test_the_gap_is_english_minus_the_rest_with_its_standard_error() -> None:
    rows = [("en", "a", "a")] * 8 + [("en", "a", "b")] * 2 + [("de", "a", "a")] * 3 + [("fr", "a", "b")] * 2
    report = summarize(rows)

    assert report["english"] == {"n": 10, "category_accuracy": 0.8}
    assert report["non_english"] == {"n": 5, "category_accuracy": 0.6}
    assert report["by_language"]["fr"] == {"n": 2, "category_accuracy": 0.0}
    assert report["gap_points"] == pytest.approx(20.0)
    assert report["gap_standard_error_points"] == pytest.approx(100 * np.sqrt(0.8 * 0.2 / 10 + 0.6 * 0.4 / 5), abs=0.01)


def test_bad_arguments_stop_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main([str(tmp_path / "missing.jsonl")])
    assert stopped.value.code == 2 and "dataset: no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(tmp_path / "missing.jsonl"), "--folds", "1"])
    assert "--folds must be at least 2" in capsys.readouterr().err
