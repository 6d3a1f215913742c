"""ASGI entry point: `create_app()` builds the Litestar app; everything else is wired by the init plugin."""

from __future__ import annotations

from litestar import Litestar

from app.plugin import DeskPilotPlugin
from core.settings import Settings


def create_app(
    settings: Settings | None = None, *, database_url: str | None = None, run_worker: bool = False
) -> Litestar:
    settings = settings or Settings.from_env()
    return Litestar(
        plugins=[DeskPilotPlugin(settings, database_url=database_url, run_worker=run_worker)],
    )
