"""Query embeddings for the graph: each ticket's text encoded on its own, off the event loop.

No batching across tickets: on a CPU a ticket-length text encodes as fast alone as inside a batch, and a batch
would pad every text to its longest. Parallelism comes from the embedder's replicas (`knowledge.embedder`):
tickets processed concurrently are encoded at the same time, as many as there are replicas.
"""

from __future__ import annotations

import numpy as np

from knowledge.embedder import Embedder, embed


class QueryEmbedder:
    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder

    async def encode(self, text: str) -> np.ndarray:
        vectors = await embed(self.embedder, [text])
        vector: np.ndarray = vectors[0]
        return vector
