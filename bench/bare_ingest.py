"""The bare limit of bench/ingest.py: a Litestar + asyncpg endpoint on the webhook's path that stores the posted
body with one durable statement, with no validation, no normalization and no middleware.

    python bench/bare_ingest.py --port PORT [--processes N]     # BENCH_BARE_DATABASE_URL names the database

It is served the way `deskpilot serve` serves DeskPilot (app/cli/__init__.py): uvicorn with the same options
(`loop` and `http` "auto", so uvloop and httptools where installed, lifespan on, no access log), one process, or
N uvicorn worker processes sharing the port. Its pool has as many connections as `DESKPILOT_DB_POOL_MAX` gives
the webhook. Each request is one `INSERT … ON CONFLICT DO NOTHING` (synchronous commit): 201 with the new row's
id, or 200 `{"duplicate": true}` when the payload's `external_id` was stored before, as the webhook answers a
replay. With `BENCH_BARE_NOTIFY=1` the statement also sends a NOTIFY, as the webhook's does (context).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
from litestar import Litestar, Request, Response, get, post

BENCH = Path(__file__).resolve().parent
URL_VARIABLE = "BENCH_BARE_DATABASE_URL"

CREATE_TABLE = """CREATE TABLE IF NOT EXISTS bench_bare_endpoint (
    id bigserial PRIMARY KEY,
    external_id text UNIQUE,
    payload jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
)"""
INSERT = """INSERT INTO bench_bare_endpoint (external_id, payload)
            SELECT p ->> 'external_id', p FROM (SELECT $1::jsonb AS p) AS posted
            ON CONFLICT (external_id) DO NOTHING
            RETURNING id, created_at"""
# With BENCH_BARE_NOTIFY=1 (context, not the limit): the same insert and a NOTIFY in the same statement, as the
# webhook wakes the workers. PostgreSQL takes a cluster-wide lock from a notifying transaction's pre-commit until
# its commit is done, so notifying commits cannot share a WAL flush (no group commit).
NOTIFY_VARIABLE = "BENCH_BARE_NOTIFY"
INSERT_AND_NOTIFY = f"""WITH stored AS ({INSERT})
                        SELECT id, created_at, pg_notify('bench_bare', '') FROM stored"""

# The options `deskpilot serve` gives uvicorn (app/cli/__init__.py, `serve`).
UVICORN_OPTIONS: dict[str, Any] = {
    "loop": "auto",
    "http": "auto",
    "lifespan": "on",
    "log_level": "warning",
    "access_log": False,
    "timeout_graceful_shutdown": 30,
}


def create_app() -> Litestar:
    url = os.environ[URL_VARIABLE]
    pool_max = int(os.environ.get("DESKPILOT_DB_POOL_MAX", "10"))
    statement = INSERT_AND_NOTIFY if os.environ.get(NOTIFY_VARIABLE) == "1" else INSERT
    pools: list[asyncpg.Pool] = []

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        pool = await asyncpg.create_pool(url, min_size=2, max_size=pool_max)
        assert pool is not None
        async with pool.acquire() as conn, conn.transaction():
            # Every server process runs this at start: IF NOT EXISTS alone races on the catalog's unique index.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('bench_bare_endpoint'))")
            await conn.execute(CREATE_TABLE)
        pools.append(pool)
        try:
            yield
        finally:
            await pool.close()

    @post("/api/webhooks/support/ingest")
    async def ingest(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
        body = await request.body()
        row = await pools[0].fetchrow(statement, body.decode())
        if row is None:
            return Response({"duplicate": True}, status_code=200)
        return Response({"ticket_id": row["id"], "created_at": row["created_at"].isoformat()}, status_code=201)

    @get("/health")  # what tests.support.server.ServerProcess waits for
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return Litestar([ingest, health], lifespan=[lifespan], openapi_config=None)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--processes", type=int, default=1)
    args = parser.parse_args(argv)
    options = {**UVICORN_OPTIONS, "host": args.host, "port": args.port}
    if args.processes > 1:
        uvicorn.run("bare_ingest:create_app", factory=True, workers=args.processes, app_dir=str(BENCH), **options)
    else:
        uvicorn.run(create_app(), **options)


if __name__ == "__main__":
    sys.exit(main())
