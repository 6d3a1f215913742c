"""Knowledge test helpers: a memoizing and a counting wrapper around the real embedder, data paths, and the
demo knowledge (examples/: the help centre and its past resolutions) loaded through the real loader.

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
from knowledge.loader import load_paths

EXAMPLES_DIR = PROJECT_ROOT / "examples"
# A small labelled sample of the public data sets ships with the tests (tests/data/README.md: the rows, the licences).
SAMPLE_DATA = PROJECT_ROOT / "tests" / "data" / "public"
# The full dev sets, where CI and a developer's machine lay shared/ beside the clone: only for the large checks.
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"
# What every knowledge search hit carries: retrieval items as JSON, `GET /api/kb/search`, `kb search --json`.
SEARCH_HIT_KEYS = frozenset(
    {"kind", "id", "title", "text", "source", "category", "intent", "similarity", "text_rank", "score"}
)


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


def public_data(name: str) -> dict[str, Path]:
    """Where a public data set can be read: its sample in tests/data/public (`sample`), always, and its full dev
    split (`shared`) when ../shared/data has it, for the checks that need size."""
    paths = {"sample": SAMPLE_DATA / f"{name}.jsonl"}
    full = SHARED_DATA / name / "dev.jsonl"
    if full.is_file():
        paths["shared"] = full
    return paths


def bitext_split(
    rows: list[dict[str, Any]], max_loaded: int = 1500, max_queries: int = 200, seed: int = 20240611
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A fixed random sample of bitext rows to store (four in five, at most `max_loaded`), and held-out queries
    (at most `max_queries`) from text groups not stored."""
    rows = list(rows)
    n_loaded = min(max_loaded, len(rows) * 4 // 5)
    rng = random.Random(seed)
    rng.shuffle(rows)
    loaded = rows[:n_loaded]
    loaded_groups = {base_id(row["id"]) for row in loaded}
    queries = [row for row in rows[n_loaded:] if base_id(row["id"]) not in loaded_groups][:max_queries]
    return loaded, queries


# --- the demo knowledge -------------------------------------------------------------------------------------------


async def load_example_resolutions(conn: Any, embedder: Any) -> int:
    """`examples/resolutions.jsonl` through the real loader (`deskpilot kb load`); returns the rows added."""
    report = await load_paths(conn, [EXAMPLES_DIR / "resolutions.jsonl"], embedder=embedder, kind="resolution")
    assert report.resolutions > 50 and not report.errors, report
    return report.resolutions


async def load_example_articles(conn: Any, embedder: Any) -> int:
    """The example help centre (`examples/kb`) through the real loader; returns the documents added."""
    report = await load_paths(conn, [EXAMPLES_DIR / "kb"], embedder=embedder)
    assert report.errors == [], report
    return report.documents
