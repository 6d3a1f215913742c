"""`deskpilot eval` on a small labelled slice: every report key, sane values, no scratch database left behind."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from click.testing import CliRunner

from app.cli import main
from core.settings import PROJECT_ROOT

BITEXT = PROJECT_ROOT.parent / "shared" / "data" / "bitext-customer-support" / "dev.jsonl"
EXAMPLES = PROJECT_ROOT / "examples" / "resolutions.jsonl"
KEYS = (
    "n",
    "category_accuracy",
    "category_macro_f1",
    "priority_accuracy",
    "auto_resolve_rate",
    "auto_resolve_precision",
    "flag_rate",
    "flag_precision",
    "escalate_rate",
    "ece",
    "tickets_per_second",
    "confusion_matrix",
    "baseline_category_accuracy",
)


@pytest.mark.slow
def test_eval_command_reports_every_key(pg_admin_url: str, embedder: Any, tmp_path: Path) -> None:
    dataset = BITEXT if BITEXT.is_file() else EXAMPLES
    out = tmp_path / "report.json"
    result = CliRunner().invoke(
        main,
        ["eval", str(dataset), "--limit", "300", "--holdout", "0.2", "--seed", "0", "--json", str(out)],
        env={"DESKPILOT_DATABASE_URL": pg_admin_url, "DESKPILOT_DATA_DIR": str(tmp_path)},
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "category accuracy" in result.output
    report = json.loads(out.read_text())
    for key in KEYS:
        assert key in report, key
    assert report["n"] >= 20
    for key in ("category_accuracy", "auto_resolve_rate", "flag_rate", "escalate_rate", "ece"):
        assert 0.0 <= report[key] <= 1.0, key
    assert report["auto_resolve_rate"] + report["flag_rate"] + report["escalate_rate"] == pytest.approx(1.0)
    assert report["priority_accuracy"] is None  # bitext has no priorities
    assert report["tickets_per_second"] > 0
    # Learned from 240 examples, the router must still not fall behind the TF-IDF baseline by much.
    assert report["category_accuracy"] >= report["baseline_category_accuracy"] - 0.05
    assert sum(sum(row.values()) for row in report["confusion_matrix"].values()) == report["n"]


@pytest.mark.slow
async def test_eval_drops_its_scratch_database(pg_admin_url: str) -> None:
    # Runs after the command above (same module, file order): nothing named deskpilot_eval_* survives.
    conn = await asyncpg.connect(pg_admin_url)
    try:
        left = await conn.fetchval("SELECT count(*) FROM pg_database WHERE datname LIKE 'deskpilot_eval_%'")
    finally:
        await conn.close()
    assert left == 0


@pytest.mark.slow
def test_eval_runs_the_llm_path_when_a_model_is_configured(pg_admin_url: str, embedder: Any, tmp_path: Path) -> None:
    from tests.support.fake_openai import FakeOpenAI, reply_json

    verdict = {
        "reply": "Hello, here is how.",
        "cited_ids": ["R1"],
        "confidence": 0.9,
        "reasons": [],
        "needs_human": False,
    }
    with FakeOpenAI() as server:
        server.default = reply_json(verdict)
        out = tmp_path / "report.json"
        result = CliRunner().invoke(
            main,
            ["eval", str(EXAMPLES), "--holdout", "0.2", "--seed", "0", "--json", str(out)],
            env={
                "DESKPILOT_DATABASE_URL": pg_admin_url,
                "DESKPILOT_DATA_DIR": str(tmp_path),
                "OPENAI_BASE_URL": server.base_url,
                "OPENAI_API_KEY": "test-key",
            },
            catch_exceptions=False,
        )
        assert result.exit_code == 0, result.output
        assert server.requests, "the configured model was never asked"
    report = json.loads(out.read_text())
    assert report["n"] >= 5
