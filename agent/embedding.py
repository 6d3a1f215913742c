"""Micro-batching of query embeddings: tickets processed concurrently share one model call.

MiniLM encodes a batch of 16 in little more than the time of 2 single texts, so while one batch runs the next
requests queue up and go together; with one ticket in flight this is a plain single encode. A batch is padded to
its longest text, so the queued texts are sorted by length and encoded in groups of `SUB_BATCH`: similar lengths
together waste little on padding, and the short ones are answered first.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np

from knowledge.embedder import Embedder, embed

MAX_BATCH = 32
SUB_BATCH = 8


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
            batch.sort(key=lambda r: len(r.text))
            for start in range(0, len(batch), SUB_BATCH):
                await self._encode(batch[start : start + SUB_BATCH])

    async def _encode(self, group: list[_Request]) -> None:
        try:
            vectors = await embed(self.embedder, [r.text for r in group])
        except Exception as exc:  # every waiter of this group gets the error
            for request in group:
                if not request.future.done():
                    request.future.set_exception(exc)
            return
        for request, vector in zip(group, vectors, strict=True):
            if not request.future.done():
                request.future.set_result(vector)
