"""Run `deskpilot serve` (or any command) as a real process on a free port and wait until it answers; post the
example tickets to it and wait for their decisions."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.support.pg import server_reachable_dir

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_TICKETS = REPO / "examples" / "tickets"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ServerProcess:
    def __init__(self, args: list[str], env: dict[str, str], *, port: int, log_path: Path) -> None:
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self._log = log_path.open("wb")
        full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **env}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", *args],
            cwd=REPO,
            env=full_env,
            stdout=self._log,
            stderr=self._log,
        )

    @classmethod
    def serve(cls, env: dict[str, str], log_path: Path, *extra: str) -> ServerProcess:
        port = free_port()
        return cls(["serve", "--host", "127.0.0.1", "--port", str(port), *extra], env, port=port, log_path=log_path)

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"server not ready after {timeout_s}s:\n{self.log()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self, timeout_s: float = 35.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


@contextmanager
def serving(env: dict[str, str], log_path: Path, *extra: str, data_prefix: str) -> Iterator[ServerProcess]:
    """`deskpilot serve` (with `extra` arguments) on a data folder of its own, its embedded PostgreSQL inside,
    ready to answer; stopped, and the folder deleted, after the block."""
    with server_reachable_dir(data_prefix) as data:
        server = ServerProcess.serve({"DESKPILOT_DATA_DIR": str(data / "data"), **env}, log_path, *extra)
        try:
            server.wait_ready(timeout_s=240)
            yield server
        finally:
            server.stop()


def example_ticket(name: str) -> dict[str, Any]:
    """An ingest payload from examples/tickets."""
    payload: dict[str, Any] = json.loads((EXAMPLE_TICKETS / f"{name}.json").read_text())
    return payload


def wait_for_decision(http: httpx.Client, ticket_id: str, timeout_s: float = 120.0) -> dict[str, Any]:
    """The ticket (`GET /api/tickets/{id}`) once one of its attempts has a decision."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ticket: dict[str, Any] = http.get(f"/api/tickets/{ticket_id}").json()
        if any(a["decision"] for a in ticket["attempts"]):
            return ticket
        time.sleep(0.3)
    raise AssertionError(f"ticket {ticket_id} reached no decision in {timeout_s}s: {ticket}")
