"""Embedding runtime benchmark: the int8 ONNX runtime's texts/s next to the stock torch fp32 encode of the same
ticket-length texts, in the same run, and how close its vectors are to the stock ones.

    python bench/embedding.py [--texts 400] [--rounds 3] [--quick] [--cache DIR]

The texts are tobi-bueck support tickets (subject and body; examples/resolutions.jsonl when ../shared/data is
absent). The bare limit is sentence-transformers' own `SentenceTransformer.encode` with its defaults (torch fp32,
batch size 32, torch's default thread count) on the packaged MiniLM. The runtime is what DeskPilot serves with
`DESKPILOT_EMBEDDING_RUNTIME=onnx-int8` (`knowledge.embedder.sentence_transformer_embedder`): built into the
cache first if needed (`built_in_this_run`, `load_s`), checked at load. The two alternate for `--rounds` rounds
and the best of each is kept, so a machine that slows down mid-run favours neither. `cosine_min` and
`cosine_mean` compare each text's runtime vector with its stock vector. CPU milliseconds per text (the process's
threads) are given for both: on a busy machine stock torch's two intra-op threads wait for each other whenever
one is descheduled, so its texts/s fall further than its CPU cost rises. For context,
`runtime_beside_python_thread_texts_per_s` is the runtime's rate while another thread of the process runs Python
code (holding the GIL), as a worker's event loop does.

Prints one JSON line; exits non-zero when the ratio is under 1.2 or a vector is under cosine 0.99, or when the
runtime fell back to torch (`fallback_reason`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from core.settings import ONNX_INT8_RUNTIME, Settings  # noqa: E402
from knowledge.embedder import packaged_model_path, sentence_transformer_embedder  # noqa: E402
from knowledge.onnx_embedder import build_dir_for, verify_build  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "tobi-bueck-tickets" / "dev.jsonl"
EXAMPLES = REPO / "examples" / "resolutions.jsonl"
TARGET_RATIO = 1.2
TARGET_COSINE = 0.99
SEED = 11


def ticket_texts(n: int) -> list[str]:
    source = DATA if DATA.is_file() else EXAMPLES
    rows = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    texts = [f"{row.get('subject') or ''}\n{row.get('body') or ''}".strip() for row in rows]
    random.Random(SEED).shuffle(texts)
    return texts[:n]


def rate(encode: Any, texts: list[str]) -> tuple[float, float, np.ndarray]:
    """Texts/s, CPU milliseconds per text (every thread of the process) and the vectors."""
    started, cpu = time.perf_counter(), time.process_time()
    vectors = np.asarray(encode(texts), dtype=np.float32)
    cpu_ms = (time.process_time() - cpu) * 1000 / len(texts)
    return len(texts) / (time.perf_counter() - started), cpu_ms, vectors


def beside_python_thread(encode: Any, texts: list[str]) -> float:
    """Texts/s while another thread runs pure Python (it takes the GIL whenever the runtime lets go of it)."""
    stop = threading.Event()

    def spin() -> None:
        counter = 0
        while not stop.is_set():
            counter += sum(range(200))

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    try:
        texts_per_s, _, _ = rate(encode, texts)
    finally:
        stop.set()
        thread.join()
    return texts_per_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="120 texts, 2 rounds")
    parser.add_argument("--cache", type=Path, help="build cache (default DESKPILOT_EMBEDDING_CACHE)")
    args = parser.parse_args()
    if args.quick:
        args.texts, args.rounds = 120, 2
    texts = ticket_texts(args.texts)
    cache = args.cache or Settings.from_env().embedding_cache

    from sentence_transformers import SentenceTransformer

    built = verify_build(build_dir_for(packaged_model_path(), "all-MiniLM-L6-v2", cache)) is not None
    started = time.perf_counter()
    runtime = sentence_transformer_embedder(None, ONNX_INT8_RUNTIME, cache)
    load_s = time.perf_counter() - started
    stock = SentenceTransformer(packaged_model_path(), device="cpu")

    def stock_encode(batch: list[str]) -> Any:
        return stock.encode(batch, show_progress_bar=False)

    # Warm-up: the first calls pay for allocations and (torch) kernel selection.
    stock_encode(texts[:32])
    runtime.encode(texts[:32])
    stock_rates, runtime_rates, stock_cpu, runtime_cpu = [], [], [], []
    stock_vectors = runtime_vectors = np.zeros((0, 0), dtype=np.float32)
    for _ in range(args.rounds):
        texts_per_s, cpu_ms, stock_vectors = rate(stock_encode, texts)
        stock_rates.append(texts_per_s)
        stock_cpu.append(cpu_ms)
        texts_per_s, cpu_ms, runtime_vectors = rate(runtime.encode, texts)
        runtime_rates.append(texts_per_s)
        runtime_cpu.append(cpu_ms)
    stock_vectors /= np.linalg.norm(stock_vectors, axis=1, keepdims=True)
    cosines = np.sum(stock_vectors * runtime_vectors, axis=1)
    busy = beside_python_thread(runtime.encode, texts[: max(40, len(texts) // 4)])

    ratio = max(runtime_rates) / max(stock_rates)
    result = {
        "bench": "embedding",
        "texts": len(texts),
        "rounds": args.rounds,
        "mean_chars": round(float(np.mean([len(t) for t in texts])), 1),
        "runtime": runtime.name,
        "fallback_reason": getattr(runtime, "fallback_reason", None),
        "runtime_texts_per_s": round(max(runtime_rates), 1),
        "stock_fp32_texts_per_s": round(max(stock_rates), 1),
        "runtime_rounds": [round(r, 1) for r in runtime_rates],
        "stock_rounds": [round(r, 1) for r in stock_rates],
        "ratio_vs_stock_fp32": round(ratio, 3),
        # CPU per text moves less with the machine's load than texts/s: their ratio is the speed-up on idle cores.
        "runtime_cpu_ms_per_text": round(min(runtime_cpu), 1),
        "stock_cpu_ms_per_text": round(min(stock_cpu), 1),
        "cpu_ratio_vs_stock_fp32": round(min(stock_cpu) / min(runtime_cpu), 3),
        "cosine_min": round(float(cosines.min()), 4),
        "cosine_mean": round(float(cosines.mean()), 4),
        "runtime_beside_python_thread_texts_per_s": round(busy, 1),
        "load_s": round(load_s, 1),
        "built_in_this_run": built,
        "replicas": getattr(runtime, "replicas", None),
        "threads_per_replica": getattr(runtime, "threads", None),
        "cores": os.cpu_count(),
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(result))
    if result["fallback_reason"] or ratio < TARGET_RATIO or result["cosine_min"] < TARGET_COSINE:
        sys.exit(1)


if __name__ == "__main__":
    main()
