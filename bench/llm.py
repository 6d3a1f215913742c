"""LLM drafter benchmark: one ticket through DeskPilot's LLM drafter next to a bare chat-completions call to the same
server with the same request body, in the same run.

    python bench/llm.py [--base-url URL] [--model NAME] [--rounds 4] [--quick]
    python bench/llm.py --server PATH/llama-server --gguf PATH/model.gguf [--threads 1] [--ctx 4096]

The server is the one `OPENAI_BASE_URL` (or `--base-url`) names, or a `llama-server` this script starts on a free
loopback port from `--server` and `--gguf` (found under ~/.cache/deskpilot/llm and /tmp/models when not given) and
stops at the end. The ticket is `dep-005` of the demo deployment set (two questions, one help-centre article),
with the reader's evidence built from `examples/kb` in memory: no database, no embedding model.

Each round runs `LLMDrafter.write` (prompt building within the token budget, counting with the server's tokenizer
when it has one, the langchain-openai client, parsing the structured verdict, the per-sentence support check and
the output guard) and a bare `POST /v1/chat/completions` with the very body DeskPilot sent (taken from the chat
model's own request builder: same messages, tools or response format, temperature and token limit), in
alternating order. Before each timed call a one-token request with an unrelated prompt evicts the server's
cached prompt prefix, so both calls process the whole prompt. The structured-output probe and the tokenizer
discovery run once before the rounds (per process, not per ticket) and are reported apart, and so does one
untimed warm-up of each path (the server's first structured request of a process compiles its grammar and
fills its caches: measured, the first call took twice as long as every later one, whichever path made it).

`overhead_vs_bare` = median over rounds of (DeskPilot's time - the bare call's time) / the bare call's time;
target ≤ 0.10. The model's decode time varies between calls on a shared machine by more than DeskPilot's own
cost, so the CPU this process spends per DeskPilot draft beyond the bare call (`cpu_overhead_ms`) is reported
too: that part is DeskPilot's alone. Prints one JSON line; exits non-zero when the target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from agent.drafting.llm import LLMDrafter, input_budget  # noqa: E402
from agent.drafting.prompts import build_messages, build_quote_messages  # noqa: E402
from agent.drafting.questions import Question, split_questions  # noqa: E402
from agent.drafting.reader import Candidate, Evidence  # noqa: E402
from agent.drafting.request import DraftRequest  # noqa: E402
from agent.triage.specialists import SPECIALISTS  # noqa: E402
from core.settings import Settings  # noqa: E402
from knowledge.retrieval import RetrievedItem  # noqa: E402

TICKETS = REPO / "examples" / "deployment" / "tickets.jsonl"
KB = REPO / "examples" / "kb"
TICKET_ID = "dep-005"
TARGET = 0.10
CACHE = Path.home() / ".cache" / "deskpilot" / "llm"
FLUSH = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 1, "temperature": 0}


def find_server() -> str | None:
    found = sorted(glob.glob(str(CACHE / "build-*" / "bin" / "llama-server")))
    return found[-1] if found else None


def find_gguf() -> str | None:
    """The smallest Qwen model at hand (the 0.5B before the 1.5B), else any GGUF file."""
    candidates = [Path(p) for p in glob.glob(str(CACHE / "**" / "*.gguf"), recursive=True)]
    candidates += [Path(p) for p in glob.glob("/tmp/models/*.gguf")]
    qwen = [p for p in candidates if "qwen" in p.name.lower()]
    pool = qwen or candidates
    return str(min(pool, key=lambda p: p.stat().st_size)) if pool else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(binary: str, gguf: str, threads: int, ctx: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    command = [binary, "--jinja", "-m", gguf, "--host", "127.0.0.1", "--port", str(port), "-t", str(threads)]
    command += ["-c", str(ctx), "--alias", Path(gguf).stem]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"llama-server exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, f"{url}/v1"
        except httpx.HTTPError:
            pass
        time.sleep(1)
    process.kill()
    raise SystemExit("llama-server did not become ready within 300 s")


def section(article: Path, fact: str) -> tuple[str, str]:
    """(title, text) of the article's section that states `fact`."""
    text = article.read_text(encoding="utf-8")
    title = next((line[2:].strip() for line in text.splitlines() if line.startswith("# ")), article.stem)
    for part in text.split("\n## "):
        if fact.lower() in part.lower():
            heading, _, body = part.partition("\n")
            return f"{title} › {heading.strip('# ').strip()}", body.strip()
    return title, text


def ticket_request() -> DraftRequest:
    record = next(json.loads(line) for line in TICKETS.read_text(encoding="utf-8").splitlines() if TICKET_ID in line)
    expect = record["expect"]
    title, text = section(KB / expect["articles"][0], expect["answer_facts"][0])
    passage = RetrievedItem(
        kind="kb_chunk",
        id="5e1f0c2a-0000-4000-8000-000000000005",  # type: ignore[arg-type]
        title=title,
        text=text,
        resolution=None,
        category="technical",
        intent=None,
        source="bench",
        similarity=0.8,
        text_rank=1,
        vector_rank=1,
        score=0.8,
    )
    questions = split_questions(record["subject"], record["body"]) or [Question(record["body"])]
    units = [s.strip() + "." for s in text.replace("\n", " ").split(". ") if s.strip()]
    return DraftRequest(
        ticket={"subject": record["subject"], "body": record["body"], "channel": record.get("channel") or "email"},
        category="technical",
        priority="normal",
        specialist=SPECIALISTS["technical"],
        customer_name=record.get("customer_name"),
        grounding=None,
        resolutions=[],
        passages=[passage],
        context={},
        risks=[],
        evidence=[
            Evidence(
                q,
                passage,
                units=units,
                score=0.8,
                best_unit=0.8,
                candidates=[Candidate(passage, 0.8, tuple(enumerate(units)))],
            )
            for q in questions
        ],
    )


async def bare_body(drafter: LLMDrafter, request: DraftRequest) -> dict[str, Any]:
    """The body DeskPilot's client sends for `request`: its messages, bound as its structured-output method binds
    them, through langchain-openai's own request builder."""
    method = await drafter._current_method()
    # The reply mode the drafter is configured with (DESKPILOT_LLM_REPLY; quote by default) builds the prompt.
    quote = drafter._quotes(request)
    build = build_quote_messages if quote else build_messages
    built = build(request, max_input_tokens=input_budget(drafter.settings), counter=drafter._counter, method=method)
    runnable = drafter._quote_runnable(method, built) if quote else drafter._runnable(method)
    chat = drafter._loop_state().chat
    kwargs = dict(getattr(runnable, "kwargs", {}) or {})
    return dict(chat._get_request_payload(built.messages, **kwargs))  # type: ignore[attr-defined]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings.from_mapping(
        {
            **os.environ,
            "OPENAI_BASE_URL": args.base_url,
            "DESKPILOT_LLM_MODEL": args.model,
            "DESKPILOT_LLM_TIMEOUT": str(args.timeout),
            "DESKPILOT_LLM_MAX_RETRIES": "0",
            **({"DESKPILOT_LLM_MAX_OUTPUT_TOKENS": str(args.max_output_tokens)} if args.max_output_tokens else {}),
        }
    )
    drafter = LLMDrafter(settings)
    request = ticket_request()
    client = httpx.AsyncClient(base_url=args.base_url.rstrip("/"), timeout=args.timeout)
    flush = {**FLUSH, "model": args.model}
    try:
        t0 = time.perf_counter()
        await drafter.find_tokenizer()
        probe = await drafter.probe()
        setup_s = time.perf_counter() - t0
        body = await bare_body(drafter, request)
        t0 = time.perf_counter()
        await drafter.write(request)
        await client.post("/chat/completions", json=body)
        warmup_s = time.perf_counter() - t0
        rounds: list[dict[str, Any]] = []
        for n in range(args.rounds):
            order = ("deskpilot", "bare") if n % 2 == 0 else ("bare", "deskpilot")
            row: dict[str, Any] = {}
            for which in order:
                await client.post("/chat/completions", json=flush)
                cpu0, t0 = time.process_time(), time.perf_counter()
                if which == "deskpilot":
                    result = await drafter.write(request)
                    row["deskpilot_s"] = time.perf_counter() - t0
                    row["deskpilot_cpu_s"] = time.process_time() - cpu0
                    row["deskpilot_tokens_out"] = result.usage.get("completion_tokens", 0)
                    row["deskpilot_tokens_in"] = result.usage.get("prompt_tokens", 0)
                    row["deskpilot_ok"] = result.ok
                    row["deskpilot_error"] = result.error
                    row["sendable"] = result.sendable
                else:
                    response = await client.post("/chat/completions", json=body)
                    data = response.json()
                    row["bare_s"] = time.perf_counter() - t0
                    row["bare_cpu_s"] = time.process_time() - cpu0
                    row["bare_status"] = response.status_code
                    row["bare_tokens_out"] = (data.get("usage") or {}).get("completion_tokens", 0)
                    row["bare_tokens_in"] = (data.get("usage") or {}).get("prompt_tokens", 0)
            row["overhead"] = (row["deskpilot_s"] - row["bare_s"]) / row["bare_s"]
            rounds.append(row)
            print(json.dumps({"round": n + 1, **{k: _r(v) for k, v in row.items()}}), file=sys.stderr, flush=True)
    finally:
        await client.aclose()
        await drafter.aclose()
    same_work = all(r["deskpilot_tokens_out"] == r["bare_tokens_out"] for r in rounds)
    cpu_overhead = statistics.median(r["deskpilot_cpu_s"] - r["bare_cpu_s"] for r in rounds)
    bare = statistics.median(r["bare_s"] for r in rounds)
    return {
        "benchmark": "llm",
        "model": args.model,
        "base_url": args.base_url,
        "ticket": TICKET_ID,
        "rounds": args.rounds,
        "structured_output": probe.method,
        "reply_mode": drafter.settings.llm_reply,
        "token_counter": drafter.describe()["token_counter"],
        "setup_probe_s": round(setup_s, 3),
        "warmup_s": round(warmup_s, 3),
        "deskpilot_s_p50": round(statistics.median(r["deskpilot_s"] for r in rounds), 3),
        "bare_s_p50": round(bare, 3),
        "overhead_vs_bare": round(statistics.median(r["overhead"] for r in rounds), 4),
        "ratio": round(statistics.median(r["deskpilot_s"] / r["bare_s"] for r in rounds), 4),
        "cpu_overhead_ms": round(cpu_overhead * 1000, 1),
        "cpu_overhead_vs_bare": round(cpu_overhead / bare, 4) if bare else None,
        "tokens_in": rounds[-1]["deskpilot_tokens_in"],
        "tokens_out_deskpilot": [r["deskpilot_tokens_out"] for r in rounds],
        "tokens_out_bare": [r["bare_tokens_out"] for r in rounds],
        "same_output_length": same_work,
        "deskpilot_ok": all(r["deskpilot_ok"] for r in rounds),
        "deskpilot_errors": [r["deskpilot_error"] for r in rounds if r["deskpilot_error"]],
        "per_round": [{k: _r(v) for k, v in r.items()} for r in rounds],
        "target_overhead": TARGET,
    }


def _r(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", default=os.environ.get("OPENAI_BASE_URL"))
    parser.add_argument("--model", default=os.environ.get("DESKPILOT_LLM_MODEL"))
    parser.add_argument("--server", help="llama-server binary to start when no --base-url is given")
    parser.add_argument("--gguf", help="model file for --server")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ctx", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--max-output-tokens", type=int, help="DESKPILOT_LLM_MAX_OUTPUT_TOKENS for both calls")
    parser.add_argument("--quick", action="store_true", help="two rounds")
    args = parser.parse_args()
    # A stopped run still stops the server it started (the finally below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.quick:
        args.rounds = min(args.rounds, 2)
    process = None
    if not args.base_url:
        binary, gguf = args.server or find_server(), args.gguf or find_gguf()
        if not binary or not gguf:
            print(json.dumps({"benchmark": "llm", "error": "no model server: set OPENAI_BASE_URL or --server/--gguf"}))
            return 2
        process, args.base_url = start_server(binary, gguf, args.threads, args.ctx)
        args.model = args.model or Path(gguf).stem
    args.model = args.model or "local"
    try:
        result = asyncio.run(run(args))
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=30)
    print(json.dumps(result))
    return 0 if result["overhead_vs_bare"] <= TARGET and result["deskpilot_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
