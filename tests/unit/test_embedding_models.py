"""Embedding models by name: the packaged models `DESKPILOT_EMBEDDING_MODEL` can name, folders, and bad names."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from app.cli import main
from core.settings import PROJECT_ROOT, SettingsError
from knowledge.embedder import get_embedder, load_embedder, packaged_model_path
from knowledge.embedding_models import MODEL_NAMES, E5SmallEmbedder, MultilingualUseEmbedder, resolve_embedding_model

TRANSLATED = PROJECT_ROOT / "tests" / "data" / "translated_tickets.jsonl"
PRINTER = ["My printer does not print anything", "Mein Drucker druckt überhaupt nichts", "I was charged twice"]


def test_names_resolve_to_the_packaged_models(tmp_path: Path) -> None:
    assert MODEL_NAMES == ("all-MiniLM-L6-v2", "multilingual-e5-small", "multilingual-use")
    assert resolve_embedding_model(None).key == resolve_embedding_model("").key == "all-MiniLM-L6-v2"
    assert resolve_embedding_model("all-MiniLM-L6-v2").load is None  # sentence-transformers, packaged folder
    assert resolve_embedding_model("multilingual-e5-small").load is E5SmallEmbedder
    assert resolve_embedding_model("multilingual-use").load is MultilingualUseEmbedder
    folder = resolve_embedding_model(str(tmp_path))
    assert (folder.key, folder.folder, folder.load) == (str(tmp_path), str(tmp_path), None)


@pytest.mark.parametrize("value", ["multilingual-e5-large", "minilm", "/no/such/folder"])
def test_an_unknown_name_is_a_settings_error_naming_the_variable_and_the_choices(value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        resolve_embedding_model(value)
    message = str(caught.value)
    assert "DESKPILOT_EMBEDDING_MODEL" in message
    assert all(name in message for name in MODEL_NAMES)
    assert repr(value) in message
    with pytest.raises(SettingsError, match="DESKPILOT_EMBEDDING_MODEL"):
        get_embedder(value)


async def test_load_embedder_rejects_an_unknown_name_before_loading_anything() -> None:
    with pytest.raises(SettingsError, match="multilingual-use"):
        await load_embedder("e5")


def test_the_cli_refuses_an_unknown_model_with_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DESKPILOT_EMBEDDING_MODEL", "bert-base")
    result = CliRunner().invoke(main, ["kb", "reembed"])
    assert result.exit_code == 2
    assert "DESKPILOT_EMBEDDING_MODEL must be one of all-MiniLM-L6-v2" in result.output


def test_minilm_by_name_and_by_folder_is_one_instance(embedder: Any) -> None:
    assert get_embedder("all-MiniLM-L6-v2") is embedder
    assert get_embedder(packaged_model_path()) is embedder
    assert embedder.name.startswith("all-MiniLM-L6-v2")  # "+onnx-int8" when that runtime is in use


@pytest.mark.parametrize(("name", "dimension"), [("multilingual-e5-small", 384), ("multilingual-use", 512)])
def test_the_multilingual_models_match_a_translation_across_languages(name: str, dimension: int) -> None:
    model = get_embedder(name)
    assert get_embedder(name) is model
    assert (model.name, model.dimension) == (name, dimension)
    vectors = model.encode(PRINTER)
    assert vectors.shape == (3, dimension)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    english, german, billing = vectors
    assert float(english @ german) > float(german @ billing) + 0.1
    # One text alone is the same vector as inside a batch, and nothing in gives nothing out.
    np.testing.assert_allclose(model.encode(PRINTER[1:2])[0], german, atol=1e-4)
    assert model.encode([]).shape == (0, dimension)


def translation_hits(model: Any) -> int:
    """How many of the German, Spanish, French and Portuguese tickets find their English original among 12."""
    rows = [json.loads(line) for line in TRANSLATED.read_text(encoding="utf-8").splitlines() if line.strip()]
    english = model.encode([row["en"] for row in rows])
    hits = 0
    for language in ("de", "es", "fr", "pt"):
        translated = model.encode([row[language] for row in rows])
        hits += int(np.sum(np.argmax(translated @ english.T, axis=1) == np.arange(len(rows))))
    return hits


def test_a_translated_ticket_finds_its_english_original_with_the_multilingual_models(embedder: Any) -> None:
    minilm = translation_hits(embedder)  # 27 of 48 measured: MiniLM-L6 is English
    for name in ("multilingual-e5-small", "multilingual-use"):
        hits = translation_hits(get_embedder(name))  # 48 of 48 measured for both
        assert hits >= 46, name
        assert hits > minilm + 10, name
