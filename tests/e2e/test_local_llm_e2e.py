"""The local model, for real: llama.cpp's two servers with SmolLM2-135M (one thread), the drafter's probe against
each, a ticket drafted through `deskpilot serve` by the real langchain-openai client, a model server killed in the
middle of a reply, and `deskpilot llm serve` itself.

They need the runtime `make llm-test-runtime` builds (`make test` does it first) and skip, saying so, without it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.drafting.llm import WORKS, LLMDrafter
from app.local_llm import MODELS, LLMHome, ModelServer, Runtime, built_runtime, fetched_model, served_models
from app.local_llm import start_model_server as start_server
from core.settings import Settings, default_llm_home
from tests.support.server import REPO, ServerProcess, example_ticket, free_port, serving, wait_for_decision

pytestmark = pytest.mark.e2e

MODEL = MODELS["smollm2-135m"]
CONTEXT = 4096  # the server's
PROMPT_CONTEXT = 1536  # what the drafter fits its prompt and answer into: small prompts, quick tests
# SmolLM2-135M under a json_schema grammar writes until the limit whatever it is (400 measured): the verdict is
# cut off and the offline reply goes out. The protocol is what is tested here, so the limit is kept small.
MAX_OUTPUT = 96
PROBE_TOKENS = 32  # agent.drafting.llm.PROBE_MAX_TOKENS: a request asking for more is a draft


@pytest.fixture(scope="module")
def local() -> tuple[LLMHome, Runtime]:
    home = LLMHome(default_llm_home(os.environ))
    runtime = built_runtime(home)
    if runtime is None:
        pytest.skip(f"the llama.cpp runtime is not built in {home.root}: `make llm-test-runtime` builds it")
    if fetched_model(home, MODEL) is None:
        pytest.skip(f"{MODEL.name} is not fetched in {home.root}: `make llm-test-runtime` fetches it")
    return home, runtime


def start(local: tuple[LLMHome, Runtime], kind: Any, port: int, log: Path) -> ModelServer:
    home, runtime = local
    return start_server(home, runtime, MODEL, server=kind, port=port, threads=1, ctx=CONTEXT, log_path=log)


@pytest.fixture(scope="module")
def python_server(local: tuple[LLMHome, Runtime], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServer]:
    server = start(local, "python", free_port(), tmp_path_factory.mktemp("llm") / "llama_cpp_server.log")
    yield server
    server.stop()


class ModelSlot:
    """`llama-server` on one port for the module: the `deskpilot serve` under test keeps pointing at it while a
    test kills the process and starts it again."""

    def __init__(self, local: tuple[LLMHome, Runtime], log_dir: Path) -> None:
        self.local = local
        self.port = free_port()
        self.log_dir = log_dir
        self.server: ModelServer | None = None
        self.starts = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> ModelServer:
        self.starts += 1
        self.server = start(self.local, "llama-server", self.port, self.log_dir / f"llama-server-{self.starts}.log")
        return self.server

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


@pytest.fixture(scope="module")
def llama_server(local: tuple[LLMHome, Runtime], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelSlot]:
    slot = ModelSlot(local, tmp_path_factory.mktemp("llm"))
    slot.start()
    yield slot
    slot.stop()


@pytest.fixture(scope="module")
def deskpilot(llama_server: ModelSlot, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {
        # Only the local switch: no key, no base URL, no model name.
        "DESKPILOT_LLM": "local",
        "DESKPILOT_LLM_LOCAL_MODEL": MODEL.name,
        "DESKPILOT_LLM_LOCAL_PORT": str(llama_server.port),
        "OPENAI_BASE_URL": "",
        "OPENAI_API_KEY": "",
        "DESKPILOT_LLM_MODEL": "",
        "DESKPILOT_LLM_CONTEXT_TOKENS": str(PROMPT_CONTEXT),
        "DESKPILOT_LLM_MAX_OUTPUT_TOKENS": str(MAX_OUTPUT),
        "DESKPILOT_LLM_TIMEOUT": "60",
        "DESKPILOT_LLM_MAX_RETRIES": "1",
        "DESKPILOT_LLM_FALLBACK": "offline",
        "DESKPILOT_POLL_INTERVAL": "0.5",
    }
    log_path = tmp_path_factory.mktemp("logs") / "serve.log"
    with serving(env, log_path, "--demo", data_prefix="deskpilot-e2e-local-llm-") as server:
        yield server


async def probe(base_url: str) -> Any:
    drafter = LLMDrafter(Settings.from_mapping({"OPENAI_BASE_URL": base_url, "DESKPILOT_LLM_MODEL": MODEL.name}))
    try:
        return await drafter.probe()
    finally:
        await drafter.aclose()


async def test_the_probe_picks_json_schema_on_llama_server(llama_server: ModelSlot) -> None:
    report = await probe(llama_server.base_url)
    assert report.reachable, report.results
    assert report.method == "json_schema", report.results
    assert report.results["function_calling"] != WORKS  # the forced tool is ignored there


async def test_the_probe_picks_function_calling_on_llama_cpp_python(python_server: ModelServer) -> None:
    report = await probe(python_server.base_url)
    assert report.reachable, report.results
    assert report.method == "function_calling", report.results


def draft_step(http: httpx.Client, ticket_id: str) -> dict[str, Any]:
    trace = http.get(f"/api/tickets/{ticket_id}/trace").json()
    step: dict[str, Any] = next(s for s in trace["attempts"][-1]["steps"] if s["node"] == "draft")
    return step


def test_a_ticket_through_serve_asks_the_local_model_by_the_probed_method(deskpilot: ServerProcess) -> None:
    with httpx.Client(base_url=deskpilot.base_url, timeout=10) as http:
        health = http.get("/health").json()
        assert health["llm"]["enabled"] is True
        assert health["llm"]["model"] == MODEL.name
        posted = http.post("/api/webhooks/support/ingest", json=example_ticket("howto-invoice"))
        ticket = wait_for_decision(http, posted.json()["ticket_id"], timeout_s=180)
        output = draft_step(http, ticket["id"])["output"]
    # The trace names the method the probe chose on this server, and the model answered with it.
    if output["drafter"] == "llm":
        detail = output["llm"]
        assert detail["structured_output"] == "json_schema", detail
        assert detail["probe"]["method"] == "json_schema", detail["probe"]
        assert [a["method"] for a in detail["attempt_log"]][:1] == ["json_schema"], detail["attempt_log"]
        assert detail["usage"]["completion_tokens"] > 0
    else:  # the small model's verdict was cut off: the offline reply went out, the trace says how it was asked
        failed = output["model"]["llm"]
        assert failed["structured_output"] == "json_schema", output
        assert failed["attempts"] >= 1
        assert any(note.startswith("LLM failed (invalid_output") for note in output["notes"]), output["notes"]


def replying(port: int) -> bool:
    """Whether llama-server is writing a draft's answer: tokens decoded in a slot asked for more than a probe's
    PROBE_TOKENS (`GET /slots`)."""
    try:
        slots = httpx.get(f"http://127.0.0.1:{port}/slots", timeout=1).json()
    except (httpx.HTTPError, ValueError):
        return False
    return any(
        s.get("is_processing")
        and s.get("params", {}).get("n_predict") != PROBE_TOKENS
        and any(t.get("n_decoded", 0) > 0 for t in s.get("next_token", []))
        for s in slots
    )


def test_a_model_server_killed_mid_reply_falls_back_and_the_ticket_is_answered_once(
    llama_server: ModelSlot, deskpilot: ServerProcess
) -> None:
    payload = {**example_ticket("howto-invoice"), "external_id": "e2e-local-llm-killed-1"}
    try:
        with httpx.Client(base_url=deskpilot.base_url, timeout=10) as http:
            ticket_id = http.post("/api/webhooks/support/ingest", json=payload).json()["ticket_id"]
            deadline = time.monotonic() + 120
            while not replying(llama_server.port):
                assert time.monotonic() < deadline, "the model server never started drafting the reply"
                time.sleep(0.05)
            assert llama_server.server is not None
            llama_server.server.kill()
            ticket = wait_for_decision(http, ticket_id, timeout_s=120)
            output = draft_step(http, ticket_id)["output"]
            assert output["drafter"] == "offline", output
            assert any("LLM failed" in note for note in output.get("notes", [])), output
            assert ticket["attempts"][-1]["decision"] in {"deliver", "flag_for_review"}, ticket["attempts"]
            deadline = time.monotonic() + 30
            while not ticket["deliveries"] and time.monotonic() < deadline:
                time.sleep(0.3)
                ticket = http.get(f"/api/tickets/{ticket_id}").json()
            time.sleep(2)  # time enough for a second reply, were one coming
            ticket = http.get(f"/api/tickets/{ticket_id}").json()
        assert len(ticket["deliveries"]) == 1, ticket["deliveries"]
        assert len([m for m in ticket["messages"] if m["direction"] == "outbound"]) == 1
        assert len(ticket["attempts"]) == 1
    finally:
        llama_server.start()


def test_llm_serve_serves_the_model_and_stops_on_sigterm(local: tuple[LLMHome, Runtime], tmp_path: Path) -> None:
    home, _ = local
    port = free_port()
    out = tmp_path / "llm-serve.out"
    command = [sys.executable, "-m", "app.cli", "llm", "serve", "--model", MODEL.name, "--port", str(port)]
    env = {**os.environ, "DESKPILOT_LLM_HOME": str(home.root)}
    with out.open("wb") as sink:
        process = subprocess.Popen(
            [*command, "--threads", "1", "--ctx", "1024"], cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 120
        while "Ctrl-C stops it" not in out.read_text(errors="replace"):
            assert process.poll() is None, out.read_text(errors="replace")
            assert time.monotonic() < deadline, out.read_text(errors="replace")
            time.sleep(0.2)
        printed = out.read_text()
        assert f"OPENAI_BASE_URL=http://127.0.0.1:{port}/v1 DESKPILOT_LLM_MODEL={MODEL.name}" in printed
        assert "DESKPILOT_LLM=local" in printed
        assert served_models(f"http://127.0.0.1:{port}/v1") == [MODEL.name]
        assert (home.run / f"serve-{port}.json").is_file()
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, out.read_text(errors="replace")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        (home.run / f"llama-server-{port}.log").unlink(missing_ok=True)  # the operator's folder: leave nothing
    assert served_models(f"http://127.0.0.1:{port}/v1", timeout_s=1) is None
    assert not (home.run / f"serve-{port}.json").exists()
