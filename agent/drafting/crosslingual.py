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

The stored vectors are MiniLM's, so this reader searches for itself: the passages closest to the ticket and to each
of its questions by the joint vectors join those the database search found, and all are read like any others, on
the joint vectors and token by token on MiniLM's tokens. Only the multilingual model runs for it: the English half
of a joint vector is the ticket's and questions' MiniLM vectors, the English reader's cached reading of a passage
(`JointReader`), or a passage's stored vector. The joint reader's scores are put on the English reader's scale
(`SCALE`), on which the reader's margins and floors and the knowledge calibration are set.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence

import numpy as np

from agent.drafting.reader import CosineScale, Reader, ReadPassage, passage_key, plain, reading_texts
from knowledge.embedder import Embedder, LazyEmbedder, TokenEmbedder, TokenRows, embed
from knowledge.embedding_models import E5_SMALL, MULTILINGUAL_USE
from knowledge.retrieval import RetrievedItem

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
        return self.join(self.first.encode(texts), self.second.encode(texts))

    def join(self, first_vectors: np.ndarray, second_vectors: np.ndarray) -> np.ndarray:
        """Joint vectors from each model's vectors of the same texts (one row each)."""
        a, b = self._weights
        return np.hstack([a * np.asarray(first_vectors), b * np.asarray(second_vectors)]).astype(np.float32)


class _JointTokenEmbedder(JointEmbedder):
    def encode_tokens(self, texts: Sequence[str]) -> list[TokenRows]:
        assert isinstance(self.first, TokenEmbedder)
        return self.first.encode_tokens(texts)


def joint(first: Embedder, second: Embedder, first_weight: float) -> JointEmbedder:
    """`JointEmbedder`, reading token by token when the first model gives token vectors."""
    kind = _JointTokenEmbedder if isinstance(first, TokenEmbedder) else JointEmbedder
    return kind(first, second, first_weight)


class JointReader(Reader):
    """A `Reader` on joint vectors whose English half comes from the English reader's own reading of the same
    passage (its units, their vectors and token vectors, cached there): only the multilingual model runs on a
    passage the English reader has read."""

    def __init__(self, embedder: JointEmbedder, english: Reader) -> None:
        super().__init__(embedder, scale=SCALE)
        self.joint = embedder
        self.english = english

    async def read_passages(self, items: Sequence[RetrievedItem]) -> list[ReadPassage]:
        english = await self.english.passages(items)
        texts = [text for item, read in zip(items, english, strict=True) for text in reading_texts(item, read.units)]
        second = await embed(self.joint.second, texts)
        out: list[ReadPassage] = []
        at = 0
        for read in english:
            rows = self.joint.join(np.vstack([read.vector, read.unit_vectors]), second[at : at + 1 + len(read.units)])
            at += 1 + len(read.units)
            out.append(
                ReadPassage(
                    read.units, rows[1:], rows[0], read.unit_kinds, read.unit_tokens, read.unit_token_ids, self.scale
                )
            )
        return out


class CrossLingualReader:
    """The multilingual model (`model`, loaded on first need and shared with the risk detector); a `JointReader`
    on the joint vectors of it and the English reader's model; and the help centre's passages' multilingual
    vectors, kept by content."""

    def __init__(self, english: Reader, model: LazyEmbedder | None = None) -> None:
        self._english = english
        self.model = model or LazyEmbedder(MODEL)
        self._reader: JointReader | None = None
        # The multilingual vectors of the help centre's passages by `passage_key`: those of the last search, so
        # no more than the help centre holds.
        self._index: dict[str, np.ndarray] = {}
        self._lock = asyncio.Lock()

    async def reader(self) -> JointReader | None:
        """The joint reader; None when the multilingual model cannot be loaded (logged once): the ticket is then
        read as any other, with the English model alone."""
        if self._reader is None:
            multilingual = await self.model.get()
            if multilingual is not None and self._reader is None:
                self._reader = self._joint(multilingual)
        return self._reader

    def _joint(self, multilingual: Embedder) -> JointReader:
        return JointReader(joint(self._english.embedder, multilingual, ENGLISH_WEIGHT), self._english)

    async def encode(self, texts: Sequence[str], english: np.ndarray, first: np.ndarray | None = None) -> np.ndarray:
        """Joint vectors of `texts` given their English model's vectors (a ticket's and its questions' are
        computed already): only the multilingual model runs, and not on the first text when its multilingual
        vector is given (`first`: the ticket's, which the risk detector computed). The reader must have loaded."""
        assert self._reader is not None, "encode before the joint reader loaded"
        model = self._reader.joint.second
        if first is None:
            return self._reader.joint.join(english, await embed(model, list(texts)))
        rest = await embed(model, list(texts[1:])) if len(texts) > 1 else np.zeros((0, len(first)), np.float32)
        return self._reader.joint.join(english, np.vstack([np.asarray(first)[None, :], rest]))

    async def nearest(
        self, passages: Sequence[RetrievedItem], english: np.ndarray, queries: np.ndarray, k: int
    ) -> list[RetrievedItem]:
        """Of `passages` (the whole help centre, with `english`, their stored vectors, one row each), the `k`
        closest to each joint query vector (one row per query), without repeats, closest first. Only the
        multilingual model runs, once per passage; the vectors of passages no longer in the help centre are
        let go."""
        if not len(passages) or not len(queries):
            return []
        assert self._reader is not None, "search before the joint reader loaded"
        embedder = self._reader.joint
        keys = [passage_key(p) for p in passages]
        async with self._lock:
            missing = {key: p for key, p in zip(keys, passages, strict=True) if key not in self._index}
        texts = [f"{p.title}\n\n{plain(p.text)}" for p in missing.values()]
        vectors = list(await embed(embedder.second, texts)) if texts else []
        async with self._lock:
            known = {**self._index, **dict(zip(missing, vectors, strict=True))}
            self._index = {key: known[key] for key in keys}
            matrix = embedder.join(english, np.stack([self._index[key] for key in keys]))
        best: dict[int, float] = {}
        for row in queries @ matrix.T:
            for n in np.argsort(-row)[:k]:
                best[int(n)] = max(best.get(int(n), -1.0), float(row[n]))
        return [passages[n] for n in sorted(best, key=lambda n: -best[n])]
