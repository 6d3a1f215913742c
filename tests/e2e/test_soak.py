"""The short soak in the test suite: `bench/soak.py --quick` (ingest into two real worker processes, one worker
SIGKILLed, one immediate PostgreSQL restart) must lose nothing and duplicate nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Any

import pytest

from tests.support.server import REPO

# About a minute and a half on an idle 2-core machine; the bounds leave room for a busy one.
SOAK_TIMEOUT_S = 360
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(SOAK_TIMEOUT_S + 60)]


def run_quick_soak() -> tuple[int, str, str]:
    process = subprocess.Popen(
        [sys.executable, str(REPO / "bench" / "soak.py"), "--quick"],
        cwd=REPO,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = process.communicate(timeout=SOAK_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        # SIGTERM lets the soak stop its servers and PostgreSQL and delete its files before it exits.
        process.send_signal(signal.SIGTERM)
        try:
            out, err = process.communicate(timeout=45)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
        pytest.fail(f"the quick soak did not finish within {SOAK_TIMEOUT_S}s:\n{err[-5000:]}")
    return process.returncode, out, err


def test_quick_soak_loses_and_duplicates_nothing_under_worker_kills_and_a_database_restart() -> None:
    code, out, err = run_quick_soak()
    lines = out.strip().splitlines()
    assert lines, f"no JSON line on stdout (exit {code}):\n{err[-5000:]}"
    result: dict[str, Any] = json.loads(lines[-1])
    assert code == 0, f"exit {code}:\n{err[-5000:]}"
    assert result["benchmark"] == "soak"
    assert result["accepted"] > 0
    assert result["lost"] == 0, err[-3000:]
    assert result["duplicated"] == 0, err[-3000:]
    assert result["replies_duplicated"] == 0, err[-3000:]
    assert result["replies_missing"] == 0, err[-3000:]
    assert result["worker_kills"] >= 1
    assert result["postgres_restarts"] >= 1
    assert result["crashes"] == []
