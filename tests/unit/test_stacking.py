"""The classifier's per-ticket TF-IDF rows are sklearn's rows: the lean transform must not change a prediction."""

from __future__ import annotations

import random

import numpy as np
import pytest

from agent.triage.stacking import TextFeatures

VOCABULARY = (
    "invoice refund password login export csv api token webhook billing plan upgrade cancel charged twice "
    "error timeout slow dashboard team invite seat rechnung passwort zurücksetzen facture problème naïve café"
)


def texts(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    words = VOCABULARY.split()
    return [
        " ".join(rng.choice(words) for _ in range(rng.randint(3, 60))).capitalize() + rng.choice([".", "?", "!"])
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def features() -> TextFeatures:
    fitted, _, _ = TextFeatures.fit(texts(0, 600))
    return fitted


QUERIES = [
    *texts(1, 40),
    "",
    "   ",
    "words the history never saw: zyzzyva quixotic",
    "Invoice  INVOICE\tinvoice\n\ninvoice — refund refund",
    "a",
    "✓ 😀 ünïcödé",
    "x" * 5000,
]


@pytest.mark.parametrize("kind", ["word", "char"])
def test_the_lean_transform_gives_sklearns_rows(features: TextFeatures, kind: str) -> None:
    vectorizer = getattr(features, kind)
    expected = vectorizer.transform(QUERIES)
    word, char = features.transform(QUERIES)
    actual = word if kind == "word" else char
    assert actual.shape == expected.shape
    assert actual.dtype == np.float32
    np.testing.assert_allclose(actual.toarray(), expected.toarray(), rtol=1e-6, atol=1e-7)
    # Same sparsity and column order: scipy's sparse products rely on sorted indices.
    expected.sort_indices()
    assert actual.has_sorted_indices
    np.testing.assert_array_equal(actual.indptr, expected.indptr)
    np.testing.assert_array_equal(actual.indices, expected.indices)


def test_one_text_at_a_time_equals_the_batch(features: TextFeatures) -> None:
    batch_word, batch_char = features.transform(QUERIES)
    for i, text in enumerate(QUERIES):
        word, char = features.transform([text])
        np.testing.assert_array_equal(word.toarray(), batch_word[i].toarray())
        np.testing.assert_array_equal(char.toarray(), batch_char[i].toarray())
