"""Knowledge-base test helpers: a memoizing and a counting wrapper around the real embedder, and data paths.

Encoding is the slow part of every KB test on a 2-core machine; the memo lets many tests reload the same
texts while each text still goes through the real model once.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.settings import PROJECT_ROOT
from knowledge.embedder import Embedder

EXAMPLES_DIR = PROJECT_ROOT / "examples"
# CI lays shared/ beside the clone, as on a developer's machine.
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"


class MemoEmbedder:
    """The real embedder, with each distinct text encoded once per test session."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.name = inner.name
        self.dimension = inner.dimension
        self._memo: dict[str, np.ndarray] = {}

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        missing = list(dict.fromkeys(text for text in texts if text not in self._memo))
        if missing:
            for text, vector in zip(missing, self.inner.encode(missing), strict=True):
                self._memo[text] = vector
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.stack([self._memo[text] for text in texts])


_memo_embedders: dict[int, MemoEmbedder] = {}


def memo_embedder(inner: Embedder) -> MemoEmbedder:
    """One memo per real embedder for the whole session, shared by every KB test module."""
    return _memo_embedders.setdefault(id(inner), MemoEmbedder(inner))


class CountingEmbedder:
    """Counts encode calls and texts, to prove unchanged input computes no embeddings."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.name = inner.name
        self.dimension = inner.dimension
        self.calls = 0
        self.texts = 0

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        self.texts += len(texts)
        return self.inner.encode(texts)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def base_id(record_id: str) -> str:
    """Bitext marks repeated texts with a `-dupN` suffix; the base id groups them."""
    return record_id.split("-dup")[0]


def bitext_split(
    n_loaded: int, n_queries: int, seed: int = 20240611
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A fixed random sample of bitext dev rows to store, and held-out queries from text groups not stored."""
    rows = read_jsonl(SHARED_DATA / "bitext-customer-support" / "dev.jsonl")
    rng = random.Random(seed)
    rng.shuffle(rows)
    loaded = rows[:n_loaded]
    loaded_groups = {base_id(row["id"]) for row in loaded}
    queries = [row for row in rows[n_loaded:] if base_id(row["id"]) not in loaded_groups][:n_queries]
    return loaded, queries
