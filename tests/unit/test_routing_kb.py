"""The knowledge base teaches routing: its passages are category examples, weighted so a long history dominates,
balanced across categories, and never reported as neighbouring past tickets."""

from __future__ import annotations

import numpy as np
import pytest

from agent.triage.classifier import History, RoutingModels, kb_example_weight, kb_example_weights

TOPICS = {
    "billing": "invoice refund charged card payment receipt plan price",
    "technical": "error api token login crash timeout webhook sync",
    "onboarding": "setup invite teammates first project import getting started",
    "general": "office hours partnership feedback company address contact",
}


def _vectors(rng: np.random.Generator, centre: np.ndarray, n: int) -> np.ndarray:
    out = centre + 0.3 * rng.standard_normal((n, centre.size))
    return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def centres() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {c: rng.standard_normal(384) for c in TOPICS}


def kb_rows(centres: dict[str, np.ndarray], per_category: int = 6) -> list[dict[str, object]]:
    rng = np.random.default_rng(1)
    rows: list[dict[str, object]] = []
    for category, words in TOPICS.items():
        vectors = _vectors(rng, centres[category], per_category)
        for i in range(per_category):
            vocabulary = words.split()
            rows.append(
                {
                    "title": f"{category.title()} guide › {vocabulary[i % len(vocabulary)]}",
                    "content": " ".join(rng.permutation(vocabulary)),
                    "embedding": vectors[i],
                    "category": category,
                }
            )
    return rows


def test_a_knowledge_base_alone_routes_on_day_one(centres: dict[str, np.ndarray]) -> None:
    models = RoutingModels.fit(History.from_rows([], kb_rows(centres)), version=1)
    assert models.category is not None
    assert models.describe()["kb_examples"] == 24
    rng = np.random.default_rng(2)
    for category, words in TOPICS.items():
        query = _vectors(rng, centres[category], 1)[0]
        prediction = models.predict(f"question about {words.split()[0]} and {words.split()[1]}", query)
        assert max(prediction.category_probs, key=prediction.category_probs.__getitem__) == category
        assert prediction.neighbours == []  # passages are not past tickets


def test_neighbours_are_past_tickets_only(centres: dict[str, np.ndarray]) -> None:
    rng = np.random.default_rng(3)
    rows = []
    for i, (category, words) in enumerate(list(TOPICS.items()) * 3):
        rows.append(
            {
                "id": f"r{i}",
                "ticket_text": f"ticket {i}: {words}",
                "embedding": _vectors(rng, centres[category], 1)[0],
                "category": category,
                "intent": None,
                "priority": None,
                "ticket_id": None,
            }
        )
    history = History.from_rows(rows, kb_rows(centres))
    models = RoutingModels.fit(history, version=1)
    assert models.category is not None and models.category.classifier.n_train == 12 + 24
    prediction = models.predict("refund for my invoice", _vectors(rng, centres["billing"], 1)[0])
    assert {n.id for n in prediction.neighbours} <= {r["id"] for r in rows}
    assert len(prediction.neighbours) == 10
    assert prediction.model["history"] == 12 and prediction.model["kb_examples"] == 24


def test_kb_weights_shrink_with_the_history_and_balance_categories() -> None:
    assert kb_example_weight(0) == 1.0
    assert kb_example_weight(56) > 0.85
    assert kb_example_weight(5_000) < 0.1
    # 3 billing passages and 1 general one: each category weighs the same in total, the mean is unchanged.
    weights = kb_example_weights(["billing", "billing", "billing", "general"], history_size=500)
    assert weights[:3].sum() == pytest.approx(weights[3])
    assert weights.mean() == pytest.approx(kb_example_weight(500))
    assert kb_example_weights([], history_size=10).size == 0


def test_a_knowledge_base_of_another_dimension_routes_without_any_history() -> None:
    # The store follows the configured model (multilingual-use: 512-d); an empty history must not assume 384.
    rng = np.random.default_rng(4)
    centres = {c: rng.standard_normal(512) for c in TOPICS}
    models = RoutingModels.fit(History.from_rows([], kb_rows(centres)), version=1)
    assert models.example_embeddings.shape == (24, 512)
    prediction = models.predict("refund for my invoice", _vectors(rng, centres["billing"], 1)[0])
    assert max(prediction.category_probs, key=prediction.category_probs.__getitem__) == "billing"
    empty = RoutingModels.fit(History.from_rows([]), version=1)
    assert empty.predict("anything", _vectors(rng, centres["general"], 1)[0]).neighbours == []
