"""bench/bare_ingest.py, the bare limit of bench/ingest.py: served as its own process, it stores what is posted with
one statement, answers a replayed external_id as a duplicate, and takes the benchmark's load generator."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
import uuid
from pathlib import Path
from types import ModuleType

import asyncpg
import httpx
import pytest

from core import db

REPO = Path(__file__).resolve().parents[2]


def _load_bench_ingest() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_ingest", REPO / "bench" / "ingest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench_ingest = _load_bench_ingest()
BareEndpoint, run_load = bench_ingest.BareEndpoint, bench_ingest.run_load
BARE_URL_VARIABLE, BARE_NOTIFY_VARIABLE = bench_ingest.BARE_URL_VARIABLE, bench_ingest.BARE_NOTIFY_VARIABLE


def test_bare_endpoint_stores_each_payload_once_and_takes_the_load(pg_admin_url: str, tmp_path: Path) -> None:
    name = f"bench_bare_{uuid.uuid4().hex[:8]}"
    db._ensure_database(pg_admin_url, name)
    url = pg_admin_url.replace("/postgres?", f"/{name}?")
    endpoint = BareEndpoint({BARE_URL_VARIABLE: url, "DESKPILOT_DB_POOL_MAX": "4"}, tmp_path / "bare.log", 1)
    try:
        endpoint.wait_ready()
        payload = {"external_id": "smoke-1", "channel": "in_app", "subject": "Hi", "body": "where is my invoice?"}
        posted = [
            httpx.post(f"http://127.0.0.1:{endpoint.port}/api/webhooks/support/ingest", json=payload, timeout=10)
            for _ in range(2)
        ]
        assert [response.status_code for response in posted] == [201, 200]
        assert posted[1].json() == {"duplicate": True}
        load = asyncio.run(run_load(endpoint.port, 2, 1.0, None, "smoke"))
    finally:
        endpoint.stop()

    assert load["requests"] > 0
    assert set(load["statuses"]) <= {201, 200}, load["statuses"]

    async def stored() -> tuple[int, dict[str, str]]:
        conn = await asyncpg.connect(url)
        try:
            count = await conn.fetchval("SELECT count(*) FROM bench_bare_endpoint")
            first = await conn.fetchval("SELECT payload FROM bench_bare_endpoint WHERE external_id = 'smoke-1'")
        finally:
            await conn.close()
        return count, json.loads(first)

    count, first = asyncio.run(stored())
    assert first == payload
    # Every new external_id the load posted is one row: nothing lost, replays not stored twice.
    assert count == 1 + load["statuses"].get(201, 0)


def test_the_notifying_variant_sends_a_notify_with_each_stored_payload(pg_admin_url: str, tmp_path: Path) -> None:
    """The context phase of bench/ingest.py: the same insert with a NOTIFY, as the webhook's statement sends."""
    name = f"bench_bare_{uuid.uuid4().hex[:8]}"
    db._ensure_database(pg_admin_url, name)
    url = pg_admin_url.replace("/postgres?", f"/{name}?")
    env = {BARE_URL_VARIABLE: url, BARE_NOTIFY_VARIABLE: "1", "DESKPILOT_DB_POOL_MAX": "2"}
    endpoint = BareEndpoint(env, tmp_path / "bare.log", 1)

    async def post_and_listen() -> tuple[list[int], list[str]]:
        heard: list[str] = []
        conn = await asyncpg.connect(url)
        await conn.add_listener("bench_bare", lambda *args: heard.append(args[2]))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{endpoint.port}", timeout=10) as http:
            statuses = [
                (await http.post("/api/webhooks/support/ingest", json={"external_id": "n-1", "body": "x"})).status_code
                for _ in range(2)
            ]
        for _ in range(50):
            if heard:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # time for a second NOTIFY, had the replay sent one
        await conn.close()
        return statuses, heard

    try:
        endpoint.wait_ready()
        statuses, heard = asyncio.run(post_and_listen())
    finally:
        endpoint.stop()
    assert statuses == [201, 200]
    assert heard == ["bench_bare"]  # one NOTIFY for the stored payload, none for the replay


def test_a_measured_phase_reports_the_cpu_per_request_of_each_party(pg_admin_url: str, tmp_path: Path) -> None:
    """bench/ingest.py's CPU accounting: the server's process tree, all of PostgreSQL and the load process."""
    name = f"bench_bare_{uuid.uuid4().hex[:8]}"
    db._ensure_database(pg_admin_url, name)
    url = pg_admin_url.replace("/postgres?", f"/{name}?")

    async def data_directory() -> str:
        conn = await asyncpg.connect(url)
        try:
            directory: str = await conn.fetchval("SHOW data_directory")
        finally:
            await conn.close()
        return directory

    postmaster = bench_ingest.postmaster_pid(Path(asyncio.run(data_directory())))
    assert postmaster is not None
    endpoint = BareEndpoint({BARE_URL_VARIABLE: url, "DESKPILOT_DB_POOL_MAX": "4"}, tmp_path / "bare.log", 1)
    try:
        endpoint.wait_ready()
        assert bench_ingest.process_tree(postmaster)[0] == postmaster
        phase = bench_ingest.measured_load(endpoint.process.pid, postmaster, endpoint.port, 2, 1.0, None, "cpu")
    finally:
        endpoint.stop()

    assert phase["requests"] > 0
    cpu = phase["cpu_ms"]
    assert cpu["server"] > 0 and cpu["postgres"] > 0 and cpu["load"] > 0, cpu
    assert cpu["total"] == pytest.approx(cpu["server"] + cpu["postgres"] + cpu["load"], abs=0.002)
