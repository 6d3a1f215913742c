"""Maintenance hooks come from whatever part of the pipeline is installed; a broken module is not "not installed"."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from app.maintenance import _installed, maintenance_hooks
from app.settings import Settings


def test_the_hooks_of_this_installation() -> None:
    assert sorted(maintenance_hooks()) == ["close_quiet_tickets", "refresh_term_stats", "requeue_on_knowledge_change"]


def test_a_module_that_is_not_there_gives_no_hook() -> None:
    assert _installed("deskpilot_not_installed", "anything") is None
    assert _installed("app.deskpilot_not_installed.sub", "anything") is None


def test_a_module_that_fails_to_import_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "deskpilot_broken_hook.py").write_text("import deskpilot_missing_dependency\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="deskpilot_missing_dependency"):
        _installed("deskpilot_broken_hook", "run")
    sys.modules.pop("deskpilot_broken_hook", None)


async def test_the_hook_passes_the_settings_only_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "deskpilot_probe_hook.py").write_text(
        "async def conn_only(conn):\n    return ('conn', conn)\n\n"
        "async def with_settings(conn, settings):\n    return ('both', conn, settings)\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    settings = Settings()
    conn: Any = object()
    conn_only = _installed("deskpilot_probe_hook", "conn_only")
    both = _installed("deskpilot_probe_hook", "with_settings", with_settings=True)
    assert conn_only is not None and both is not None
    assert await conn_only(conn, settings) == ("conn", conn)
    assert await both(conn, settings) == ("both", conn, settings)
    sys.modules.pop("deskpilot_probe_hook", None)
