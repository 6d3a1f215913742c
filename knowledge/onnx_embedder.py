"""The embedding model as an int8 ONNX graph on onnxruntime: built offline from the model's own files at first
start, cached by content, and checked against the fp32 vectors every time it is loaded.

The build exports the sentence-transformers folder's transformer with `torch.onnx.export`, quantizes its weight
matrices to int8 (`onnxruntime.quantization.quantize_dynamic`), and stores next to it the fp32 vectors of
`CHECK_TEXTS` computed by the torch model. The encoder then runs the same fast tokenizer (the folder's
`tokenizer.json`, same input limit), the int8 graph, and the same mean pooling and L2 normalization in numpy.
Loading rejects a build whose vectors are under `CHECK_COSINE` on any check text (`OnnxCheckError`), so a CPU
whose int8 kernels round differently, or a damaged file, never serves vectors the stored ones cannot be compared
with. `knowledge.embedder.sentence_transformer_embedder` picks this runtime or torch fp32.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from knowledge.embedder import MAX_REPLICAS, ReplicaPool, TokenRows, continuations, word_pieces

log = logging.getLogger(__name__)

RUNTIME = "onnx-int8"
# Part of the cache key: a change to the export or the quantization below makes a new folder, never reuses one.
RECIPE = "onnx-int8/1: opset 17, QInt8 per-channel weights, MatMul only, FFN output projections fp32"
OPSET = 17
# The least cosine to the fp32 vector the int8 runtime must reach on every check text. Measured on 200
# tobi-bueck tickets: 0.994 at worst, 0.997 on average.
CHECK_COSINE = 0.99
ONNX_FILE = "model.int8.onnx"
TOKENIZER_FILE = "tokenizer.json"
REFERENCE_FILE = "reference.npy"
MANIFEST_FILE = "manifest.json"
# The files of a build; the manifest holds their SHA-256, so a truncated or altered one is found at load.
BUILD_FILES = (ONNX_FILE, TOKENIZER_FILE, REFERENCE_FILE)
# Fixed texts the build is checked on: support-ticket lengths, a one-liner, three languages, and one past the
# model's input limit (truncation), encoded together so padding is exercised too.
CHECK_TEXTS = (
    "How do I reset my password?",
    "Login page is blank",
    "I was charged twice for my subscription this month. Please refund the second charge and tell me why it "
    "happened; our finance team needs an explanation for the audit.",
    "Our whole team cannot log in since this morning; the SSO page loops back to the start. We tried other "
    "browsers and clearing cookies. This blocks 40 people, please treat it as urgent.",
    "The export to CSV fails with a timeout after the upload finishes, every time, on files over 20 MB.",
    "Guten Tag, seit dem letzten Update stürzt die Anwendung beim Öffnen großer Projekte ab. Können Sie helfen?",
    "Hola, no puedo descargar mis facturas desde el panel de control. ¿Podrían enviármelas por correo?",
    " ".join(f"word{i}" for i in range(600)),
)
# GELU outputs have a long tail, so one int8 scale per tensor for the FFN's second matrix costs the most accuracy
# (this CPU has AVX2 and no VNNI, where u8 x s8 products also saturate): kept in fp32, every check text stays
# above 0.99 (all weight matrices int8: 0.984 at worst), for a third less speed-up.
_FP32_MATMULS = re.compile(r"layer\.\d+/output/dense/MatMul$")


class OnnxBuildError(RuntimeError):
    """The model cannot be built for this runtime (unsupported architecture, onnxruntime missing, export failed)."""


class OnnxCheckError(RuntimeError):
    """The built runtime's vectors differ from the fp32 vectors of the same texts."""


def load_onnx_embedder(folder: str, name: str, cache_root: Path, *, replicas: int | None = None) -> OnnxEmbedder:
    """The int8 runtime of the sentence-transformers model in `folder`, built into `cache_root` unless a valid
    build of the same files is there already. A build that does not load (damaged, or made by an onnxruntime
    that reads it differently) is built again once. Raises `OnnxBuildError` or `OnnxCheckError`."""
    _require_onnxruntime()
    spec = _model_spec(folder)
    target = build_dir_for(folder, name, cache_root)
    cache_root.mkdir(parents=True, exist_ok=True)
    with _build_lock(cache_root / f"{target.name}.lock"):
        problem = verify_build(target)
        if problem is None:
            try:
                return OnnxEmbedder(target, name, replicas=replicas)
            except OnnxCheckError:
                raise
            except Exception as exc:  # an unreadable graph or tokenizer: rebuilt below
                problem = f"does not load: {exc}"
        if target.exists():
            log.warning("embedding runtime %s: rebuilding %s (%s)", RUNTIME, target, problem)
        build(folder, spec, target)
        return OnnxEmbedder(target, name, replicas=replicas)


class OnnxEmbedder:
    """An int8 ONNX build (`load_onnx_embedder`) run by `replicas` threads on one onnxruntime session, each call
    of a replica on `cores // replicas` threads (like `SentenceTransformerEmbedder`), one text per call.
    onnxruntime and the tokenizer release the GIL, so a busy event loop in the same process does not starve
    them."""

    def __init__(self, build_dir: Path, name: str, *, replicas: int | None = None) -> None:
        import onnxruntime
        from tokenizers import Tokenizer

        manifest = json.loads((build_dir / MANIFEST_FILE).read_text())
        cores = max(1, os.cpu_count() or 1)
        self.replicas = max(1, replicas or min(cores, MAX_REPLICAS))
        self.threads = max(1, cores // self.replicas)
        self.name = f"{name}+{RUNTIME}"
        self.runtime = RUNTIME
        self.build_dir = build_dir
        self.dimension = int(manifest["dimension"])
        self.max_length = int(manifest["max_seq_length"])
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        # Idle pool threads spinning for work would take CPU from the event loop and the other replicas.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        # One session for every replica: concurrent `run` calls are safe and share the weights.
        self._session = onnxruntime.InferenceSession(
            str(build_dir / ONNX_FILE), options, providers=["CPUExecutionProvider"]
        )
        self._inputs = {i.name for i in self._session.get_inputs()}
        tokenizer_json = (build_dir / TOKENIZER_FILE).read_text()
        encoders = [self._encoder(Tokenizer.from_str(tokenizer_json)) for _ in range(self.replicas)]
        # Token vectors are read one text at a time, unpadded, by one more tokenizer, one caller at a time.
        self._token_tokenizer = Tokenizer.from_str(tokenizer_json)
        self._token_tokenizer.enable_truncation(self.max_length)
        self._token_tokenizer.no_padding()
        self._token_lock = threading.Lock()
        # One text per run: int8 activations are scaled per tensor, so in a batch a text's vector would depend on
        # the texts (and padding) beside it (cosine 0.996 to itself alone). Alone, a text always gets one vector,
        # and no slower: 17 texts/s against 13 in groups, 200 against 155 for one-line texts (2 replicas).
        self._pool = ReplicaPool(encoders, self.dimension, batch_size=1)
        self.check(np.load(build_dir / REFERENCE_FILE))

    def encode(self, texts: Any) -> np.ndarray:
        return self._pool.encode(texts)

    def encode_tokens(self, texts: Sequence[str]) -> list[TokenRows]:
        """Each text alone (as `encode` runs them), its token ids and last hidden state without [CLS]/[SEP]."""
        return self.encode_with_tokens(texts)[1]

    def encode_with_tokens(self, texts: Sequence[str]) -> tuple[np.ndarray, list[TokenRows]]:
        """`encode` and `encode_tokens` from one pass of the model per text: the same vectors as `encode`, which
        also runs each text alone."""
        vectors = np.zeros((len(texts), self.dimension), dtype=np.float32)
        rows = []
        for n, text in enumerate(texts):
            with self._token_lock:
                encoding = self._token_tokenizer.encode(text)
            ids = np.array([encoding.ids], dtype=np.int64)
            mask = np.ones_like(ids)
            feed = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self._inputs:
                feed["token_type_ids"] = np.zeros_like(ids)
            hidden = self._run(feed)
            vectors[n] = mean_pooled_unit_rows(hidden, mask)[0]
            tokens = encoding.tokens[1:-1]
            rows.append(
                TokenRows(ids[0, 1:-1].astype(np.int32), hidden[0, 1:-1], word_pieces(tokens), continuations(tokens))
            )
        return vectors, rows

    def check(self, reference: np.ndarray) -> None:
        """Raise `OnnxCheckError` unless every check text's vector is within `CHECK_COSINE` of `reference`."""
        cosines = np.sum(self.encode(list(CHECK_TEXTS)) * reference, axis=1)
        self.check_cosine = float(np.min(cosines))
        if not self.check_cosine >= CHECK_COSINE:
            worst = int(np.argmin(cosines))
            raise OnnxCheckError(
                f"the {RUNTIME} vectors differ from fp32: cosine {self.check_cosine:.4f} < {CHECK_COSINE} on "
                f"check text {worst} ({CHECK_TEXTS[worst][:40]!r})"
            )

    def _encoder(self, tokenizer: Any) -> Any:
        # Each replica owns its tokenizer: padding and truncation are settings of the object.
        tokenizer.enable_truncation(self.max_length)
        tokenizer.enable_padding(pad_id=tokenizer.token_to_id("[PAD]") or 0)

        def encode(texts: list[str]) -> np.ndarray:
            encodings = tokenizer.encode_batch(texts)
            ids = np.array([e.ids for e in encodings], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
            feed = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self._inputs:
                feed["token_type_ids"] = np.zeros_like(ids)
            hidden = self._run(feed)
            return mean_pooled_unit_rows(hidden, mask)

        return encode

    def _run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(self._session.run(None, feed)[0], dtype=np.float32)

    def __repr__(self) -> str:
        return (
            f"OnnxEmbedder(name={self.name!r}, dimension={self.dimension}, replicas={self.replicas}, "
            f"threads={self.threads})"
        )


def mean_pooled_unit_rows(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """sentence-transformers' mean pooling (padding masked out) followed by L2 normalization."""
    weights = mask[..., None].astype(np.float32)
    summed = np.sum(hidden * weights, axis=1)
    pooled = summed / np.clip(np.sum(weights, axis=1), 1e-9, None)
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    unit: np.ndarray = (pooled / np.clip(norms, 1e-12, None)).astype(np.float32)
    return unit


def build_dir_for(folder: str, name: str, cache_root: Path) -> Path:
    """Where the build of the model in `folder` lives: `<cache>/<name>-<content hash>`."""
    return cache_root / f"{_safe(name)}-{content_hash(folder)[:16]}"


def content_hash(folder: str) -> str:
    """SHA-256 of the model folder's files (names and bytes) and of `RECIPE`: the identity of a build."""
    digest = hashlib.sha256(RECIPE.encode())
    root = Path(folder)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(_file_hash(path).encode())
    return digest.hexdigest()


def verify_build(build_dir: Path) -> str | None:
    """None when `build_dir` holds a complete build whose files match its manifest, else what is wrong."""
    try:
        manifest = json.loads((build_dir / MANIFEST_FILE).read_text())
    except FileNotFoundError:
        return "not built"
    except (OSError, ValueError) as exc:
        return f"unreadable manifest: {exc}"
    if manifest.get("recipe") != RECIPE:
        return "made by another recipe"
    for file in BUILD_FILES:
        path = build_dir / file
        if not path.is_file():
            return f"{file} is missing"
        if _file_hash(path) != manifest.get("sha256", {}).get(file):
            return f"{file} does not match its checksum"
    return None


def build(folder: str, spec: dict[str, Any], target: Path) -> None:
    """Export, quantize and store the fp32 reference vectors into `target`, replacing what is there. Files are
    written to a sibling folder first and moved into place once complete."""
    try:
        import torch
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:  # onnxruntime's quantization tools or torch: a runtime without them is not built
        raise OnnxBuildError(f"cannot build the {RUNTIME} runtime: {exc}") from exc

    log.info("embedding runtime %s: building %s from %s", RUNTIME, target.name, folder)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model = SentenceTransformer(folder, device="cpu")
        transformer: Any = model[0]
        fp32_file = staging / "model.fp32.onnx"
        _export(torch, transformer.auto_model.eval(), transformer.tokenizer, fp32_file)
        with _quantizer_quiet():
            quantize_dynamic(
                fp32_file,
                staging / ONNX_FILE,
                weight_type=QuantType.QInt8,
                per_channel=True,
                op_types_to_quantize=["MatMul"],
                nodes_to_exclude=_fp32_matmuls(fp32_file),
            )
        fp32_file.unlink()
        reference = model.encode(
            list(CHECK_TEXTS), normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        np.save(staging / REFERENCE_FILE, np.asarray(reference, dtype=np.float32))
        shutil.copyfile(Path(folder) / TOKENIZER_FILE, staging / TOKENIZER_FILE)
        manifest = {
            "recipe": RECIPE,
            "source": os.path.abspath(folder),
            "dimension": int(np.asarray(reference).shape[1]),
            "max_seq_length": int(spec["max_seq_length"]),
            "versions": _versions(),
            "sha256": {file: _file_hash(staging / file) for file in BUILD_FILES},
        }
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except OnnxBuildError:
        raise
    except Exception as exc:  # whatever the exporter or quantizer cannot handle: torch fp32 serves instead
        raise OnnxBuildError(f"building the {RUNTIME} runtime failed: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _export(torch: Any, auto_model: Any, tokenizer: Any, path: Path) -> None:
    class LastHiddenState(torch.nn.Module):  # type: ignore[misc]
        """The transformer with positional inputs and one output, as the ONNX graph takes and gives them."""

        def __init__(self) -> None:
            super().__init__()
            self.model = auto_model

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    # Two texts of different lengths: the traced graph keeps the padding-mask path.
    example = tokenizer(
        ["Billing question", "The export fails after the upload, every time."], padding=True, return_tensors="pt"
    )
    axes = {0: "batch", 1: "tokens"}
    transformers_log = logging.getLogger("transformers")
    level = transformers_log.level
    transformers_log.setLevel(logging.ERROR)  # tracer notes on Python branches: the load check decides
    try:
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                LastHiddenState(),
                (example["input_ids"], example["attention_mask"]),
                str(path),
                input_names=["input_ids", "attention_mask"],
                output_names=["last_hidden_state"],
                dynamic_axes={"input_ids": axes, "attention_mask": axes, "last_hidden_state": axes},
                opset_version=OPSET,
                dynamo=False,  # the TorchScript exporter: no onnxscript, seconds for MiniLM
            )
    finally:
        transformers_log.setLevel(level)


@contextlib.contextmanager
def _quantizer_quiet() -> Iterator[None]:
    """The quantizer logs a line per tensor, and advice, on the root logger: not for service logs."""

    def keep(record: logging.LogRecord) -> bool:
        return "onnxruntime" not in record.pathname

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def _fp32_matmuls(path: Path) -> list[str]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return [node.name for node in graph.node if node.op_type == "MatMul" and _FP32_MATMULS.search(node.name)]


def _model_spec(folder: str) -> dict[str, Any]:
    """What the runtime needs from a sentence-transformers folder; `OnnxBuildError` for one it cannot reproduce
    (another pooling, extra modules, no fast tokenizer)."""
    root = Path(folder)
    try:
        modules = json.loads((root / "modules.json").read_text())
        config = json.loads((root / "sentence_bert_config.json").read_text())
    except (OSError, ValueError) as exc:
        raise OnnxBuildError(
            f"{folder} is not a sentence-transformers folder the {RUNTIME} runtime reads: {exc}"
        ) from exc
    kinds = [module.get("type", "").rsplit(".", 1)[-1] for module in modules]
    if kinds[:2] != ["Transformer", "Pooling"] or any(kind != "Normalize" for kind in kinds[2:]):
        raise OnnxBuildError(f"the {RUNTIME} runtime runs Transformer + Pooling (+ Normalize) models, not {kinds}")
    pooling = json.loads((root / modules[1]["path"] / "config.json").read_text())
    modes = [key for key, value in pooling.items() if key.startswith("pooling_mode_") and value is True]
    if modes != ["pooling_mode_mean_tokens"]:
        raise OnnxBuildError(f"the {RUNTIME} runtime does mean pooling only, the model uses {modes}")
    if not (root / TOKENIZER_FILE).is_file():
        raise OnnxBuildError(f"the {RUNTIME} runtime needs the fast tokenizer's {TOKENIZER_FILE} in {folder}")
    return {"max_seq_length": int(config.get("max_seq_length") or 512)}


def _require_onnxruntime() -> None:
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise OnnxBuildError(f"onnxruntime is not installed ({exc})") from exc


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("torch", "onnx", "onnxruntime", "transformers", "sentence-transformers"):
        with contextlib.suppress(PackageNotFoundError):
            found[package] = version(package)
    return found


@contextlib.contextmanager
def _build_lock(path: Path) -> Iterator[None]:
    """One builder per cache folder across processes: a worker started next to another waits for its build."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)
