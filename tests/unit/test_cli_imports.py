"""`deskpilot` starts without the evaluation and reporting code (the whole agent: scikit-learn, LangChain), which
only `eval`, `calibrate` and `report` need: a command that exits early, `migrate` or `llm serve` do not wait
seconds for it. The commands are still all there, listed by --help and run by name."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("app.cli.quality", "app.cli.report", "agent.quality.evaluation", "agent.scoring.confidence", "sklearn")


def run_in_order(*invocations: list[str]) -> list[tuple[str, list[str]]]:
    """Each `deskpilot ARGS` in turn in one fresh interpreter: its output, and which of HEAVY were imported by then."""
    code = (
        "import json, sys\n"
        "from click.testing import CliRunner\n"
        "from app.cli import main\n"
        f"for args in {list(invocations)!r}:\n"
        "    result = CliRunner().invoke(main, args)\n"
        "    assert result.exit_code == 0, result.output\n"
        f"    print(json.dumps([result.output, [m for m in {HEAVY!r} if m in sys.modules]]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return [tuple(json.loads(line)) for line in done.stdout.splitlines()]


def test_a_command_that_needs_no_agent_starts_without_it() -> None:
    [(output, heavy)] = run_in_order(["llm", "--help"])
    assert "serve" in output
    assert heavy == []


def test_help_lists_every_command_and_the_lazy_ones_run_by_name() -> None:
    report, top, evaluate, calibrate = run_in_order(
        ["report", "--help"], ["--help"], ["eval", "--help"], ["calibrate", "--help"]
    )
    assert "go-live" in report[0]
    assert "app.cli.report" in report[1] and "app.cli.quality" not in report[1]
    listed = top[0].split("Commands:")[1].split()
    for command in ("serve", "worker", "migrate", "kb", "llm", "mailbox", "eval", "calibrate", "report"):
        assert command in listed, top[0]
    assert "--demo" in evaluate[0]
    assert "--from-reviews" in calibrate[0]
