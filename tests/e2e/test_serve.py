"""`deskpilot serve` as a real process with a fresh data dir (embedded PostgreSQL), driven over HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import httpx
import pytest

from app.cli.startup import is_loopback_host, require_secrets_off_loopback
from core.settings import Settings
from tests.support.pg import stop_embedded_postgres
from tests.support.server import REPO, ServerProcess

pytestmark = pytest.mark.e2e

EXPORT_QUESTION = {
    "external_id": "e2e-1",
    "channel": "in_app",
    "customer_email": "e2e@example.com",
    "subject": "How do I export my data?",
    "body": "Where is the export button?",
}


@pytest.mark.parametrize("processes", [1, 2], ids=["one API process", "two API processes"])
def test_serve_embedded_ingests_over_http_and_shuts_down_cleanly(
    tmp_path: Path, pg_data_root: Path, processes: int
) -> None:
    data = pg_data_root / f"data-{processes}"
    env = {"DESKPILOT_DATA_DIR": str(data)}
    server = ServerProcess.serve(env, tmp_path / "serve.log", "--no-worker", "--processes", str(processes))
    try:
        server.wait_ready()
        assert "UNSIGNED" in server.log()  # the loud start-up warning without a webhook secret
        # No admin token: open, with a warning, which loopback allows.
        assert "DESKPILOT_ADMIN_TOKEN is not set" in server.log()
        with httpx.Client(base_url=server.base_url, timeout=10) as http:
            created = http.post("/api/webhooks/support/ingest", json=EXPORT_QUESTION)
            assert created.status_code == 201, created.text
            ticket_id = created.json()["ticket_id"]
            again = http.post("/api/webhooks/support/ingest", json=EXPORT_QUESTION)
            assert again.status_code == 200 and again.json()["ticket_id"] == ticket_id
            detail = http.get(f"/api/tickets/{ticket_id}")
            assert detail.status_code == 200
            assert detail.json()["messages"][0]["body"] == "Where is the export button?"
            assert http.get("/schema/openapi.json").json()["paths"]["/api/webhooks/support/ingest"]
    finally:
        code = server.stop()
    assert code == 0, server.log()
    assert "Traceback" not in server.log()
    # The embedded server the service started is stopped with it.
    assert not (data / "pgdata" / "postmaster.pid").exists()
    # The embedded server's data survives the restart of the service.
    assert (data / "pgdata" / "PG_VERSION").exists()


def test_several_api_processes_need_the_worker_elsewhere(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", "--processes", "2"],
        cwd=REPO,
        env={**os.environ, "DESKPILOT_DATA_DIR": str(tmp_path / "unused")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--processes needs --no-worker" in result.stderr
    assert not (tmp_path / "unused").exists()  # refused before any database was started


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10"])
def test_serving_off_loopback_without_an_admin_token_is_refused(tmp_path: Path, host: str) -> None:
    """Without DESKPILOT_ADMIN_TOKEN the admin API and console are open: acceptable on loopback (`make run`),
    refused on an address others can reach, before a database is started or a port bound."""
    env = {k: v for k, v in os.environ.items() if k != "DESKPILOT_ADMIN_TOKEN"}
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", "--host", host, "--port", "0"],
        cwd=tmp_path,  # no stray .env with a token
        env={**env, "DESKPILOT_DATA_DIR": str(tmp_path / "unused")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert f"refusing to serve on {host} without DESKPILOT_ADMIN_TOKEN" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "unused").exists()  # refused before any database was started


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("localhost", True),
        ("LocalHost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("deskpilot.example", False),
        ("", False),
    ],
)
def test_only_loopback_may_serve_without_an_admin_token_or_a_webhook_secret(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback
    token = {"DESKPILOT_ADMIN_TOKEN": "s3cret-admin-token-0123456789"}
    secret = {"DESKPILOT_WEBHOOK_SECRET": "whsec_c2VjcmV0LXdlYmhvb2s="}
    for env, missing in [
        ({}, ["DESKPILOT_ADMIN_TOKEN", "DESKPILOT_WEBHOOK_SECRET"]),
        (token, ["DESKPILOT_WEBHOOK_SECRET"]),
        (secret, ["DESKPILOT_ADMIN_TOKEN"]),
    ]:
        settings = Settings.from_mapping(env)
        if loopback:
            require_secrets_off_loopback(host, settings)
            continue
        with pytest.raises(click.ClickException) as refused:
            require_secrets_off_loopback(host, settings)
        named = [name for name in secret | token if name in refused.value.message]
        assert sorted(named) == missing, refused.value.message  # each missing variable named, no other
    require_secrets_off_loopback(host, Settings.from_mapping(token | secret))


def test_db_url_and_migrate_commands(pg_data_root: Path) -> None:
    env = {"DESKPILOT_DATA_DIR": str(pg_data_root / "data"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    migrate = subprocess.run(
        [sys.executable, "-m", "app.cli", "migrate"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert migrate.returncode == 0, migrate.stderr
    assert "0001_extensions.sql" in migrate.stdout
    again = subprocess.run(
        [sys.executable, "-m", "app.cli", "migrate"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.stdout.strip() == "schema is up to date"
    url = subprocess.run(
        [sys.executable, "-m", "app.cli", "db-url"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert url.returncode == 0
    assert url.stdout.strip().startswith("postgresql://")
    bad = subprocess.run(
        [sys.executable, "-m", "app.cli", "migrate"],
        cwd=REPO,
        env={**env, "DESKPILOT_AUTO_RESOLVE_THRESHOLD": "2"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode != 0
    assert "DESKPILOT_AUTO_RESOLVE_THRESHOLD" in bad.stderr
    # db-url left the embedded server running; stop it so nothing outlives the test.
    stop_embedded_postgres(pg_data_root / "data" / "pgdata")
