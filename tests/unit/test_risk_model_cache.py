"""The fitted risk detector kept on disk (`agent.scoring.risk_model`, DESKPILOT_EMBEDDING_CACHE/risk-detector): a
process that fits what another fitted before loads it instead, the same model; anything the fit depends on that
changes, and a damaged file, mean a new fit; processes starting together fit once."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.scoring import risk_model as rm
from agent.scoring.risk_model import CACHE_FOLDER, Example, RiskModel, RuntimeShift, load_examples


@pytest.fixture(scope="module")
def examples() -> list[Example]:
    """Every sixth shipped example: every kind still has enough for the five folds, and a fit takes a fraction of
    the full one's seconds."""
    return load_examples()[::6]


@pytest.fixture(scope="module")
def vectors(embedder: Any, examples: list[Example]) -> np.ndarray:
    return np.asarray(embedder.encode([e.text for e in examples]), dtype=np.float32)


@pytest.fixture
def fits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the fits `_cached_fit` makes (the real ones)."""
    counted: list[int] = []
    fit = rm._fit

    def counting(*args: Any) -> RiskModel:
        counted.append(1)
        return fit(*args)

    monkeypatch.setattr(rm, "_fit", counting)
    return counted


def stored(cache: Path) -> list[Path]:
    return sorted((cache / CACHE_FOLDER).glob("*.npz"))


def assert_same_model(loaded: RiskModel, fitted: RiskModel, examples: list[Example], vectors: np.ndarray) -> None:
    assert loaded.classes == fitted.classes
    assert loaded.threshold == fitted.threshold
    assert loaded.cross_validation == fitted.cross_validation
    assert loaded.runtime_shift == fitted.runtime_shift
    texts = [e.text for e in examples]
    assert loaded.score_texts(texts, vectors) == fitted.score_texts(texts, vectors)


def test_a_second_fit_on_the_same_inputs_is_loaded_and_is_the_same_model(
    embedder: Any, examples: list[Example], vectors: np.ndarray, fits: list[int], tmp_path: Path
) -> None:
    fitted = rm._cached_fit(embedder, examples, vectors, tmp_path)
    assert len(fits) == 1
    [path] = stored(tmp_path)

    loaded = rm._cached_fit(embedder, examples, vectors, tmp_path)
    assert len(fits) == 1  # loaded, not fitted
    assert stored(tmp_path) == [path]
    assert_same_model(loaded, fitted, examples, vectors)
    text, vector = examples[0].text, vectors[0]
    assert loaded.detect(text, vector) == fitted.detect(text, vector)


@pytest.mark.parametrize("change", ["vectors", "examples", "labels"])
def test_a_changed_input_is_fitted_again(
    embedder: Any, examples: list[Example], vectors: np.ndarray, fits: list[int], tmp_path: Path, change: str
) -> None:
    rm._cached_fit(embedder, examples, vectors, tmp_path)
    changed_examples, changed_vectors = list(examples), vectors
    if change == "vectors":
        changed_vectors = vectors.copy()
        changed_vectors[0, 0] += 0.001
    elif change == "examples":
        changed_examples[0] = dataclasses.replace(examples[0], text=examples[0].text + " Thanks.")
    else:
        [benign] = [n for n, e in enumerate(examples) if e.label == "none"][:1]
        changed_examples[benign] = dataclasses.replace(examples[benign], label="outage")
    refitted = rm._cached_fit(embedder, changed_examples, changed_vectors, tmp_path)
    assert len(fits) == 2
    assert len(stored(tmp_path)) == 2
    assert_same_model(refitted, rm._fit(changed_examples, changed_vectors, None), changed_examples, changed_vectors)


def test_changed_fitting_code_or_another_runtimes_reference_is_fitted_again(
    embedder: Any,
    examples: list[Example],
    vectors: np.ndarray,
    fits: list[int],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = rm._fit_key(examples, vectors, None)
    assert rm._fit_key(examples, vectors, None) == key
    assert rm._fit_key(examples, vectors, vectors) != key  # another runtime's detector, fitted on the reference
    rm._cached_fit(embedder, examples, vectors, tmp_path)
    code = rm._code()
    monkeypatch.setattr(rm, "_code", lambda: code + "\n# an edit\n")
    assert rm._fit_key(examples, vectors, None) != key
    rm._cached_fit(embedder, examples, vectors, tmp_path)
    assert len(fits) == 2
    assert len(stored(tmp_path)) == 2


def test_a_damaged_file_is_fitted_again_and_replaced(
    embedder: Any, examples: list[Example], vectors: np.ndarray, fits: list[int], tmp_path: Path
) -> None:
    fitted = rm._cached_fit(embedder, examples, vectors, tmp_path)
    [path] = stored(tmp_path)
    path.write_bytes(path.read_bytes()[:1000])  # cut short, as by a full disk
    again = rm._cached_fit(embedder, examples, vectors, tmp_path)
    assert len(fits) == 2
    assert_same_model(again, fitted, examples, vectors)
    assert_same_model(rm.load_model(path), fitted, examples, vectors)  # the whole file is back


def test_an_unwritable_cache_still_gives_the_fitted_model(
    embedder: Any, examples: list[Example], vectors: np.ndarray, fits: list[int], tmp_path: Path
) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("a file where the folder would be")
    model = rm._cached_fit(embedder, examples, vectors, blocked)
    assert len(fits) == 1
    assert model.cross_validation["examples"] == len(examples)


def test_processes_starting_together_fit_once(
    embedder: Any, examples: list[Example], vectors: np.ndarray, fits: list[int], tmp_path: Path
) -> None:
    """The lock is on the open file (flock), so two threads contend for it as two processes would."""
    models: list[RiskModel] = []
    threads = [
        threading.Thread(target=lambda: models.append(rm._cached_fit(embedder, examples, vectors, tmp_path)))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(fits) == 1
    assert len(models) == 3
    for model in models[1:]:
        assert_same_model(model, models[0], examples, vectors)
    assert [p.name for p in (tmp_path / CACHE_FOLDER).iterdir() if p.name.startswith(".")] == []  # no leftovers


def test_a_runtime_shift_survives_the_round_trip(
    embedder: Any, examples: list[Example], vectors: np.ndarray, tmp_path: Path
) -> None:
    fitted = dataclasses.replace(
        rm._fit(examples, vectors, None), threshold=0.2631, runtime_shift=RuntimeShift(0.0031, 0.02)
    )
    rm.save_model(fitted, tmp_path / "model.npz")
    assert_same_model(rm.load_model(tmp_path / "model.npz"), fitted, examples, vectors)


def test_a_multilingual_head_survives_the_round_trip_and_its_vectors_are_part_of_the_key(
    embedder: Any, examples: list[Example], vectors: np.ndarray, fits: list[int], tmp_path: Path
) -> None:
    from knowledge.embedder import get_embedder

    beside = np.asarray(get_embedder("multilingual-use").encode([e.text for e in examples]), dtype=np.float32)
    fitted = rm._cached_fit(embedder, examples, vectors, tmp_path, beside)
    assert fitted.heads.multilingual is not None and fitted.multilingual_threshold is not None
    loaded = rm._cached_fit(embedder, examples, vectors, tmp_path, beside)
    assert len(fits) == 1  # loaded, not fitted
    assert loaded.multilingual_threshold == fitted.multilingual_threshold
    assert loaded.multilingual_cross_validation == fitted.multilingual_cross_validation
    texts = [e.text for e in examples]
    assert loaded.score_texts(texts, vectors, beside) == fitted.score_texts(texts, vectors, beside)
    # Without the multilingual vectors the same inputs are another fit, with no head for them.
    plain = rm._cached_fit(embedder, examples, vectors, tmp_path)
    assert len(fits) == 2 and plain.heads.multilingual is None and plain.multilingual_threshold is None
    assert len(stored(tmp_path)) == 2
