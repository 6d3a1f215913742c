"""Query embeddings for the graph: each ticket's text encoded on its own, off the event loop, and the reader that
scores retrieved passages against the ticket's questions with the same model.

No batching across tickets: on a CPU a ticket-length text encodes as fast alone as inside a batch, and a batch
would pad every text to its longest. Parallelism comes from the embedder's replicas (`knowledge.embedder`):
tickets processed concurrently are encoded at the same time, as many as there are replicas.
"""

from __future__ import annotations

import numpy as np

from agent.drafting.crosslingual import MODEL as MULTILINGUAL_MODEL
from agent.drafting.crosslingual import MULTILINGUAL_MODELS, CrossLingualReader
from agent.drafting.reader import Reader
from knowledge.embedder import Embedder, LazyEmbedder, embed


class QueryEmbedder:
    def __init__(self, embedder: Embedder, *, crosslingual: bool = False) -> None:
        self.embedder = embedder
        # One per process: its cache of passage units is shared by every ticket.
        self.reader = Reader(embedder)
        # Beside a model that reads English only, the packaged multilingual one, loaded on first need: the risk
        # detector reads every ticket with it too (`agent.scoring.risk_model`), and a ticket in another language
        # than the help centre's is read with both (`crosslingual`).
        english_only = embedder.name not in MULTILINGUAL_MODELS
        self.multilingual = LazyEmbedder(MULTILINGUAL_MODEL) if english_only else None
        self.crosslingual = (
            CrossLingualReader(self.reader, self.multilingual) if crosslingual and self.multilingual else None
        )

    async def encode(self, text: str) -> np.ndarray:
        vectors = await embed(self.embedder, [text])
        vector: np.ndarray = vectors[0]
        return vector
