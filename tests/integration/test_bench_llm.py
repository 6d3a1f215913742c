"""bench/llm.py in quick mode against a scripted server: the bare call sends the very body DeskPilot sent, and the
result line carries the figures bench/report.py reads."""

from __future__ import annotations

import json
import subprocess
import sys

from core.settings import PROJECT_ROOT
from tests.support.fake_openai import FakeOpenAI, reply_json

# Quote mode (the default reply mode): the sentences chosen by id, for every question of the bench ticket.
VERDICT = {
    "answers": {"Q1": ["1.1"], "Q2": ["1.2"], "Q3": ["1.1"]},
    "opening": "",
    "confidence": 0.8,
    "reasons": ["the passage lists the expiry periods"],
    "needs_human": False,
}


def test_bench_llm_quick_compares_the_same_request_body() -> None:
    with FakeOpenAI("llama_server") as server:
        server.default = reply_json(VERDICT)
        done = subprocess.run(
            [sys.executable, "bench/llm.py", "--quick", "--base-url", server.base_url, "--model", "fake"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        bodies = [r.json for r in server.requests if r.json.get("max_tokens") != 1]
    assert done.returncode in (0, 1), done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["rounds"] == 2 and result["deskpilot_ok"]
    assert result["structured_output"] == "json_schema" and result["reply_mode"] == "quote"
    assert result["token_counter"] == "server tokenizer (llama-server /tokenize)"
    for key in ("overhead_vs_bare", "ratio", "deskpilot_s_p50", "bare_s_p50", "cpu_overhead_ms"):
        assert isinstance(result[key], int | float), key
    # An untimed warm-up of each path, then two DeskPilot drafts and two bare calls: all six the same body.
    assert len(bodies) == 6
    assert isinstance(result["warmup_s"], float)
    assert all(body == bodies[0] for body in bodies)
    assert bodies[0]["response_format"]["type"] == "json_schema"
