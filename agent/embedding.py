"""Micro-batching of query embeddings: tickets processed concurrently share one model call.

MiniLM encodes a batch of 16 in little more than the time of 2 single texts, so while one batch runs the next
requests queue up and go together; with one ticket in flight this is a plain single encode.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np

from knowledge.embedder import Embedder, embed

MAX_BATCH = 32


@dataclass
class _Request:
    text: str
    future: asyncio.Future[np.ndarray]


class EmbeddingBatcher:
    def __init__(self, embedder: Embedder, *, max_batch: int = MAX_BATCH) -> None:
        self.embedder = embedder
        self.max_batch = max_batch
        self._queue: list[_Request] = []
        self._running: asyncio.Task[None] | None = None

    async def encode(self, text: str) -> np.ndarray:
        loop = asyncio.get_running_loop()
        request = _Request(text, loop.create_future())
        self._queue.append(request)
        if self._running is None or self._running.done():
            self._running = loop.create_task(self._drain())
        return await request.future

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
            try:
                vectors = await embed(self.embedder, [r.text for r in batch])
            except Exception as exc:  # every waiter of this batch gets the error
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(exc)
                continue
            for request, vector in zip(batch, vectors, strict=True):
                if not request.future.done():
                    request.future.set_result(vector)
