"""Reading a help centre written in another language than the ticket.

The default embedding model (all-MiniLM-L6-v2) is English: a German question's vector lands nowhere near the
English sentence that answers it, so both the database search and the reader miss. Measured on the two demo
deployment sets (`python -m agent.quality.fact_ranking`, docs/quality.md), ranking the help centre's 710 sentences
by their closeness to the ticket: for the non-English answerable tickets the sentence holding a required fact is
among the 10 closest for 5 of 18 facts with MiniLM and for 14 with the multilingual Universal Sentence Encoder
(`multilingual-use`, packaged, nothing downloads; 0.8 s to load, about 1,700 sentences a second here). On English
tickets MiniLM is the better one (131 of 160 facts against 107), and for foreign tickets it still tells apart the
sentences sharing the ticket's product words and codes, so the two are read jointly (`JointEmbedder`, 0.3 MiniLM
+ 0.7 USE: 11 of 18 facts in the top 3, against 4 and 9 for each alone), and only for tickets whose language
(`questions.language_of`) is not the help centre's, and only when the configured model is not multilingual itself.

The stored vectors are MiniLM's, so this reader searches for itself: every help-centre passage is encoded once
(title and text, joint vectors, kept by content), and the passages closest to the ticket and to each of its
questions join those the database search found; all are read like any others (`reader.Reader` on the joint
vectors, token by token on MiniLM's tokens). The joint reader's scores are put on the English reader's scale
(`SCALE`), on which the reader's margins and floors and the knowledge calibration are set.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence

import numpy as np

from agent.drafting.reader import CosineScale, Reader, passage_key, plain
from knowledge.embedder import Embedder, TokenEmbedder, TokenRows, embed, load_embedder
from knowledge.embedding_models import E5_SMALL, MULTILINGUAL_USE
from knowledge.retrieval import RetrievedItem

log = logging.getLogger(__name__)

MODEL = MULTILINGUAL_USE
# Embedding models that read every language already: with one of them configured this reader is not needed.
MULTILINGUAL_MODELS = frozenset({E5_SMALL, MULTILINGUAL_USE})
# The English model's share of a joint reading (`JointEmbedder`): its cosine still tells sentences sharing the
# ticket's product words, codes and menu labels apart, where the multilingual model sees only the topic.
ENGLISH_WEIGHT = 0.3
# The joint reading's scores on the English reader's scale: the mean and spread of the English reader's scores on
# English questions (182 of them against the demo help centre's 710 sentences) given to the joint reader's on the
# 31 non-English ones (the fit on each question's best sentence alone: factor 1.63, shift 0.083).
SCALE = CosineScale(factor=1.63, shift=0.039)


class JointEmbedder:
    """Two models read as one: a text's vector is its two vectors side by side, weighted so that the dot product
    of two texts' vectors is `first_weight` × the first model's cosine + the rest × the second's. Token vectors,
    for reading token by token, are the first model's."""

    def __init__(self, first: Embedder, second: Embedder, first_weight: float) -> None:
        self.first, self.second = first, second
        self.name = f"{first.name}+{second.name}"
        self.dimension = first.dimension + second.dimension
        self._weights = (math.sqrt(first_weight), math.sqrt(1 - first_weight))

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        a, b = self._weights
        return np.hstack([a * self.first.encode(texts), b * self.second.encode(texts)]).astype(np.float32)


class _JointTokenEmbedder(JointEmbedder):
    def encode_tokens(self, texts: Sequence[str]) -> list[TokenRows]:
        assert isinstance(self.first, TokenEmbedder)
        return self.first.encode_tokens(texts)


def joint(first: Embedder, second: Embedder, first_weight: float) -> JointEmbedder:
    """`JointEmbedder`, reading token by token when the first model gives token vectors."""
    kind = _JointTokenEmbedder if isinstance(first, TokenEmbedder) else JointEmbedder
    return kind(first, second, first_weight)


class CrossLingualReader:
    """The multilingual model, loaded on the first ticket that needs it; a `Reader` on the joint vectors of it and
    the configured (English) model; and the help centre's passage vectors, kept by content."""

    def __init__(self, english: Embedder, multilingual: Embedder | None = None) -> None:
        self._english = english
        self._reader = self._joint(multilingual) if multilingual is not None else None
        # The help centre's passage vectors by `passage_key`: what the last search read, so no more than it holds.
        self._index: dict[str, np.ndarray] = {}
        self._lock = asyncio.Lock()
        self._unavailable = False

    async def reader(self) -> Reader | None:
        """The joint reader; None when the multilingual model cannot be loaded (logged once): the ticket is then
        read as any other, with the English model alone."""
        if self._reader is None and not self._unavailable:
            async with self._lock:
                if self._reader is None and not self._unavailable:
                    try:
                        self._reader = self._joint(await load_embedder(MODEL))
                    except (ImportError, OSError, RuntimeError) as exc:
                        log.warning(
                            "multilingual model %s not loaded (%s): reading with %s alone",
                            MODEL,
                            exc,
                            self._english.name,
                        )
                        self._unavailable = True
        return self._reader

    def _joint(self, multilingual: Embedder) -> Reader:
        return Reader(joint(self._english, multilingual, ENGLISH_WEIGHT), scale=SCALE)

    async def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Joint vectors of `texts` (the reader must have loaded)."""
        assert self._reader is not None, "encode before the joint reader loaded"
        return await embed(self._reader.embedder, list(texts))

    async def nearest(self, passages: Sequence[RetrievedItem], queries: np.ndarray, k: int) -> list[RetrievedItem]:
        """Of `passages` (the whole help centre), the `k` closest to each query vector (one row per query),
        without repeats, closest first. Vectors of passages no longer in the help centre are let go."""
        if not len(passages) or not len(queries):
            return []
        keys = [passage_key(p) for p in passages]
        async with self._lock:
            missing = {key: p for key, p in zip(keys, passages, strict=True) if key not in self._index}
        texts = [f"{p.title}\n\n{plain(p.text)}" for p in missing.values()]
        vectors = list(await self.encode(texts)) if texts else []
        async with self._lock:
            known = {**self._index, **dict(zip(missing, vectors, strict=True))}
            self._index = {key: known[key] for key in keys}
            matrix = np.stack([self._index[key] for key in keys])
        best: dict[int, float] = {}
        for row in queries @ matrix.T:
            for n in np.argsort(-row)[:k]:
                best[int(n)] = max(best.get(int(n), -1.0), float(row[n]))
        return [passages[n] for n in sorted(best, key=lambda n: -best[n])]
