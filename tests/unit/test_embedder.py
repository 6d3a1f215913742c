"""The embedder: real MiniLM vectors (shape, norm, batching), the per-model cache, and the dimension check."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest

from knowledge import embedder as embedder_module
from knowledge.embedder import (
    BATCH_SIZE,
    EmbeddingDimensionError,
    SentenceTransformerEmbedder,
    check_dimension,
    embed,
    get_embedder,
    length_groups,
    packaged_model_path,
)

TEXTS = [
    "I was charged twice for my subscription this month",
    "How do I reset my password?",
    "The API returns 429 Too Many Requests",
    "Can I export my data before deleting the account?",
]


def test_vectors_are_normalized_float32_rows_of_384(embedder: Any) -> None:
    vectors = embedder.encode(TEXTS)

    assert embedder.dimension == 384
    assert vectors.shape == (len(TEXTS), 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.encode([]).shape == (0, 384)


def test_the_torch_runtime_gives_vectors_and_token_rows_from_one_pass(embedder: Any) -> None:
    torch_embedder = SentenceTransformerEmbedder()

    vectors, rows = torch_embedder.encode_with_tokens(TEXTS)

    np.testing.assert_allclose(vectors, torch_embedder.encode(TEXTS), atol=1e-5)
    tokenizer = torch_embedder._model.tokenizer
    for text, row in zip(TEXTS, rows, strict=True):
        assert row.ids.tolist() == tokenizer(text)["input_ids"][1:-1]
        assert row.vectors.shape == (len(row.ids), 384)
        pieces = tokenizer.convert_ids_to_tokens(row.ids.tolist())
        assert row.continues is not None and row.continues.tolist() == [p.startswith("##") for p in pieces]
    assert [r.ids.tolist() for r in torch_embedder.encode_tokens(TEXTS)] == [r.ids.tolist() for r in rows]


def test_similar_texts_are_closer_than_unrelated_ones(embedder: Any) -> None:
    double_charge, password, *_ = embedder.encode(TEXTS)
    paraphrase = embedder.encode(["my card got billed two times for the plan"])[0]

    assert float(paraphrase @ double_charge) > float(paraphrase @ password) + 0.2


def test_batching_does_not_change_the_vectors(embedder: Any) -> None:
    # More texts than one batch, of mixed lengths, so padding differs between batches.
    texts = [f"{TEXTS[i % len(TEXTS)]} (variant {i})" + " please" * (i % 7) for i in range(BATCH_SIZE + 9)]
    together = embedder.encode(texts)
    one_by_one = np.stack([embedder.encode([text])[0] for text in texts[:6]])

    assert isinstance(embedder, SentenceTransformerEmbedder)
    assert embedder.batch_size == BATCH_SIZE == 32
    assert together.shape == (len(texts), 384)
    np.testing.assert_allclose(together[:6], one_by_one, atol=1e-5)


def test_a_call_that_fits_one_group_returns_each_texts_own_vector_in_order(embedder: Any) -> None:
    # One group, encoded shortest first: the vectors must still come back in the caller's order.
    texts = [
        "All the time entries from last Tuesday have vanished from my week view.",
        "Where can I see who changed or deleted an entry in the timesheet?",
    ]
    assert len(length_groups([len(t) for t in texts], embedder.batch_size)) == 1
    together = embedder.encode(texts)
    np.testing.assert_allclose(together, np.stack([embedder.encode([t])[0] for t in texts]), atol=1e-5)


def test_groups_keep_padding_small_and_cover_every_text_once() -> None:
    lengths = [600, 20, 21, 580, 22, 1500, 20, 610, 19]
    groups = length_groups(lengths, max_size=32)

    assert sorted(i for group in groups for i in group) == list(range(len(lengths)))
    for group in groups:
        sizes = [lengths[i] for i in group]
        assert sizes == sorted(sizes)
        assert len(group) * max(sizes) <= 1.2 * sum(sizes) or len(group) == 1
    assert [lengths[i] for i in groups[0]] == [19, 20, 20, 21, 22]  # the short ones together
    assert [[lengths[i] for i in g] for g in groups[-1:]] == [[1500]]  # a long one alone
    assert len(length_groups([100] * 100, max_size=32)) == 4  # at most max_size per group
    assert all(len(g) <= 4 for g in length_groups([1000] * 10, max_size=32, max_chars=4096))
    assert length_groups([0, 0], max_size=32) == [[0, 1]]


def test_concurrent_callers_get_the_same_vectors_as_one_caller(embedder: Any) -> None:
    # Replicas run in parallel threads, each with its own tokenizer; callers from many threads share them.
    texts = [f"{TEXTS[i % len(TEXTS)]} " + "and more detail " * (i % 9) for i in range(24)]
    alone = embedder.encode(texts)
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def call(n: int) -> None:
        try:
            results[n] = embedder.encode(texts[n::3]) if n < 3 else embedder.encode([texts[n]])
        except BaseException as exc:  # the assertion below reports it
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(n,)) for n in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert embedder.replicas >= 1
    for n in range(3):
        np.testing.assert_allclose(results[n], alone[n::3], atol=1e-5)
    for n in range(3, 12):
        np.testing.assert_allclose(results[n][0], alone[n], atol=1e-5)


# Mixed lengths (a padded batch), a text past the model's 256-token input limit, and a single text.
COMPILED_CHECK = [
    *TEXTS,
    "Our whole team cannot log in since this morning; the SSO page loops back to the start. " * 2,
    " ".join(f"token{i}" for i in range(700)),
]


def eager_vectors(texts: list[str]) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(packaged_model_path(), device="cpu")
    return np.asarray(model.encode(texts, normalize_embeddings=True, convert_to_numpy=True), dtype=np.float32)


def test_the_compiled_model_gives_the_eager_models_vectors(embedder: Any) -> None:
    assert isinstance(embedder, SentenceTransformerEmbedder)
    assert embedder.compiled  # the packaged MiniLM traces: the worker relies on it for its throughput
    expected = eager_vectors(COMPILED_CHECK)

    np.testing.assert_allclose(embedder.encode(COMPILED_CHECK), expected, atol=1e-5)
    np.testing.assert_allclose(embedder.encode(COMPILED_CHECK[-1:]), expected[-1:], atol=1e-5)
    np.testing.assert_allclose(embedder.encode(COMPILED_CHECK[:1]), expected[:1], atol=1e-5)


@pytest.mark.parametrize("failure", ["the tracer raises", "the traced vectors differ"])
def test_a_model_that_cannot_be_compiled_runs_eagerly(
    failure: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import torch

    if failure == "the tracer raises":

        def refuse(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("cannot trace this model")

        monkeypatch.setattr(torch.jit, "trace", refuse)
    else:
        monkeypatch.setattr(embedder_module, "TRACE_TOLERANCE", -1.0)  # no difference is small enough
    with caplog.at_level("WARNING", logger="knowledge.embedder"):
        eager = SentenceTransformerEmbedder(replicas=2)

    assert not eager.compiled
    assert "embedding model not compiled" in caplog.text
    np.testing.assert_allclose(eager.encode(COMPILED_CHECK), eager_vectors(COMPILED_CHECK), atol=1e-5)


def test_one_instance_per_model(embedder: Any) -> None:
    assert get_embedder() is embedder
    assert get_embedder(packaged_model_path()) is embedder


def test_concurrent_first_calls_load_the_model_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    constructed: list[str | None] = []

    class SlowModel:
        name = "slow"
        dimension = 384

        def __init__(self, model: str | None = None) -> None:
            constructed.append(model)
            time.sleep(0.2)  # a real load takes seconds: every thread arrives while it is in progress

        def encode(self, texts: Sequence[str]) -> np.ndarray:
            return np.zeros((len(texts), 384), dtype=np.float32)

    monkeypatch.setattr(embedder_module, "SentenceTransformerEmbedder", SlowModel)
    monkeypatch.setattr(embedder_module, "_embedders", {})
    results: list[Any] = []
    folder = str(tmp_path / "slow")
    os.mkdir(folder)
    threads = [threading.Thread(target=lambda: results.append(get_embedder(folder))) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert constructed == [folder]
    assert len(results) == 6
    assert all(result is results[0] for result in results)


async def test_embed_runs_off_the_event_loop_thread(embedder: Any) -> None:
    threads: list[int] = []

    class RecordingEmbedder:
        name = embedder.name
        dimension = embedder.dimension

        def encode(self, texts: Sequence[str]) -> np.ndarray:
            threads.append(threading.get_ident())
            result: np.ndarray = embedder.encode(texts)
            return result

    vectors = await embed(RecordingEmbedder(), TEXTS[:2])

    assert vectors.shape == (2, 384)
    assert threads
    assert threads[0] != threading.get_ident()


class FakeEmbedder:
    def __init__(self, dimension: int) -> None:
        self.name = f"fake-{dimension}"
        self.dimension = dimension

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return np.zeros((len(texts), self.dimension), dtype=np.float32)


async def test_dimension_check_accepts_minilm_and_names_a_mismatch(pool: asyncpg.Pool, embedder: Any) -> None:
    async with pool.acquire() as conn:
        await check_dimension(conn, embedder)
        with pytest.raises(EmbeddingDimensionError) as caught:
            await check_dimension(conn, FakeEmbedder(768))

    message = str(caught.value)
    assert "768-d" in message
    assert "kb_chunks.embedding is vector(384)" in message
    assert "past_resolutions.embedding is vector(384)" in message
    assert "DESKPILOT_EMBEDDING_MODEL" in message
    assert "deskpilot kb reembed" in message
