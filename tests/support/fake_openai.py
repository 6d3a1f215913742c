"""A scripted OpenAI Chat Completions server for tests: real HTTP on 127.0.0.1, replies from a queue of steps.

The real `ChatOpenAI` client talks to it over a socket, so timeouts, resets, status codes and headers take the
same code path they would against a real provider. Every request is recorded for assertions on the prompt.

Structured output: when a request forces a tool (`tools` + `tool_choice`) a JSON step is answered as that
tool's call; with `response_format` (`json_schema` / `json_object`) or no tools, the JSON is the message content.
`flavor` makes the server behave like one that supports less (issue 17, measured on real servers):

- "openai" (default): forced tool calls, json_schema and json_object response formats all work.
- "llama_cpp_python" (`python -m llama_cpp.server`): a forced tool call works; a json_schema response format is
  answered 500.
- "llama_server" (`llama-server --jinja`): json_schema works; a forced tool is ignored and the JSON comes back as
  plain text.
- "plain_text": every request is answered as plain text, tools and response formats ignored.

DeskPilot's structured-output probes (a request carrying `PROBE_MARKER`) are answered `{"ok": true}` as the
flavor allows, recorded in `probes` rather than `requests`, and never take a scripted step: a test scripts the
drafts only.

    with FakeOpenAI() as server:
        server.script(status(429, headers={"Retry-After": "1"}), reply_json({...}), slow(20, reply_json({...})))
        ...  # OPENAI_BASE_URL=server.base_url
        assert len(server.requests) == 2
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

from agent.drafting.llm import PROBE_MARKER

Flavor = Literal["openai", "llama_cpp_python", "llama_server", "plain_text"]
StepKind = Literal["json", "text", "status", "hang", "reset", "invalid_json", "refusal", "computed"]


@dataclass(frozen=True)
class Step:
    kind: StepKind
    payload: Any = None
    code: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    usage: dict[str, int] | None = None
    finish_reason: str | None = None
    delay_s: float = 0.0


def reply_json(obj: Any, *, usage: dict[str, int] | None = None) -> Step:
    """A structured answer: the forced tool's call with `obj` as arguments (or JSON content without tools)."""
    return Step("json", payload=obj, usage=usage)


def write_answer(
    reply: str, cited_ids: list[str], *, confidence: float = 0.9, reasons: tuple[str, ...] = ("cited",)
) -> Step:
    """A write-mode verdict: the model's reply, the labels it cites and its self-assessment (no person needed)."""
    return reply_json(
        {
            "reply": reply,
            "cited_ids": cited_ids,
            "confidence": confidence,
            "reasons": list(reasons),
            "needs_human": False,
        }
    )


def reply_text(text: str, *, usage: dict[str, int] | None = None, finish_reason: str = "stop") -> Step:
    """A plain assistant message, no tool call: what a server that ignores `tool_choice` sends."""
    return Step("text", payload=text, usage=usage, finish_reason=finish_reason)


def computed(answer: Callable[[RecordedRequest], Step]) -> Step:
    """The step `answer` returns for the request: a reply built from what the model was shown (its labels, say)."""
    return Step("computed", payload=answer)


def status(code: int, *, headers: dict[str, str] | None = None, message: str | None = None) -> Step:
    """An error status with an OpenAI-style error body."""
    return Step("status", code=code, headers=dict(headers or {}), payload=message)


def hang(seconds: float) -> Step:
    """Accept the request, say nothing for `seconds`, then drop the connection."""
    return Step("hang", seconds=seconds)


def slow(seconds: float, step: Step) -> Step:
    """`step`, answered only after `seconds` (a slow but working model)."""
    return replace(step, delay_s=seconds)


def reset() -> Step:
    """Close the socket (RST) without answering."""
    return Step("reset")


def invalid_json(raw: str = '{"reply": "Hello, thanks for writing') -> Step:
    """A tool call (or content) whose arguments are not valid JSON."""
    return Step("invalid_json", payload=raw)


def refusal(text: str = "I'm sorry, I can't help with that.") -> Step:
    """`message.refusal` set and no content, as OpenAI's structured-output refusals look."""
    return Step("refusal", payload=text)


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    received_at: float

    @property
    def json(self) -> dict[str, Any]:
        try:
            value = json.loads(self.body)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.json.get("messages") or [])

    def message_text(self, role: str | None = None) -> str:
        """The text of every message (of one role), joined: what the model was shown."""
        parts: list[str] = []
        for message in self.messages:
            if role is not None and message.get("role") != role:
                continue
            content = message.get("content")
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts.extend(str(block.get("text", "")) for block in content if isinstance(block, dict))
        return "\n".join(parts)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    owner: FakeOpenAI


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        return

    def do_GET(self) -> None:
        if self.path.rstrip("/").endswith("/models"):
            self._send_json(200, {"object": "list", "data": [{"id": "fake-model", "object": "model"}]})
        else:
            self._send_json(404, _error_body("not found", "invalid_request_error"))

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        owner = self.server.owner
        request = RecordedRequest(
            method="POST",
            path=self.path,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            received_at=time.monotonic(),
        )
        tokenize = _TOKENIZE.get(owner.flavor)
        if tokenize is not None and self.path.rstrip("/") == tokenize[0]:
            # The server's own tokenizer, as llama-server and llama_cpp.server offer it: one token per word here.
            with owner._lock:
                owner.tokenized.append(request)
            text = str(request.json.get(tokenize[1]) or "")
            self._send_json(200, {"tokens": list(range(len(text.split())))})
            return
        if PROBE_MARKER in request.message_text():
            with owner._lock:
                owner.probes.append(request)
            self._answer(Step("json", payload={"ok": True}), request.json, probe=True)
            return
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._send_json(404, _error_body(f"unknown path {self.path}", "invalid_request_error"))
            return
        step = owner._record_and_next(request)
        if step is None:
            problem = _error_body("fake_openai: the test scripted no reply for this request", "server_error")
            self._send_json(500, problem)
            return
        if step.kind == "computed":
            step = step.payload(request)
        self._answer(step, request.json)

    def _answer(self, step: Step, req: dict[str, Any], *, probe: bool = False) -> None:
        if step.delay_s and self.server.owner._stopping.wait(step.delay_s):
            return
        flavor = self.server.owner.flavor
        response_format = (req.get("response_format") or {}).get("type")
        if flavor == "llama_cpp_python" and response_format == "json_schema":
            # What `python -m llama_cpp.server` does with a json_schema response format.
            self._send_json(500, _error_body("Internal Server Error", "server_error"))
            return
        if probe and flavor == "plain_text":
            step = Step("text", payload="Sure! ok is true.")
        if step.kind == "status":
            kind = "invalid_request_error"
            if step.code == 429:
                kind = "rate_limit_exceeded"
            elif step.code >= 500:
                kind = "server_error"
            message = step.payload or f"scripted status {step.code}"
            self._send_json(step.code, _error_body(message, kind), step.headers)
        elif step.kind == "hang":
            self.server.owner._stopping.wait(step.seconds)
            self._drop()
        elif step.kind == "reset":
            self._drop()
        elif step.kind == "refusal":
            message = {"role": "assistant", "content": None, "refusal": step.payload}
            self._send_json(200, _completion(req, message, "stop", step.usage))
        elif step.kind == "text":
            message = {"role": "assistant", "content": step.payload, "refusal": None}
            self._send_json(200, _completion(req, message, step.finish_reason or "stop", step.usage))
        else:
            raw = json.dumps(step.payload) if step.kind == "json" else str(step.payload)
            # llama-server --jinja ignores a forced tool and writes the JSON as the message.
            tool = _forced_tool(req) if flavor in ("openai", "llama_cpp_python") else None
            if tool is not None:
                function = {"name": tool, "arguments": raw}
                call = {"id": f"call_{uuid.uuid4().hex[:12]}", "type": "function", "function": function}
                message = {"role": "assistant", "content": None, "refusal": None, "tool_calls": [call]}
                self._send_json(200, _completion(req, message, "tool_calls", step.usage))
            else:
                message = {"role": "assistant", "content": raw, "refusal": None}
                self._send_json(200, _completion(req, message, "stop", step.usage))

    def _send_json(self, code: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
        except OSError:
            self.close_connection = True

    def _drop(self) -> None:
        # SO_LINGER 0: close() sends a RST instead of a polite FIN, like a crashed proxy.
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True


# Where each flavor offers its tokenizer (path, the request's text field); the others answer 404 there.
_TOKENIZE: dict[str, tuple[str, str]] = {
    "llama_server": ("/tokenize", "content"),
    "llama_cpp_python": ("/extras/tokenize", "input"),
}


def _error_body(message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": kind}}


def _forced_tool(req: dict[str, Any]) -> str | None:
    tools = req.get("tools") or []
    if not tools:
        return None
    choice = req.get("tool_choice")
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        if name:
            return str(name)
    first = tools[0]
    return str((first.get("function") or {}).get("name") or "tool")


def _completion(
    req: dict[str, Any], message: dict[str, Any], finish_reason: str, usage: dict[str, int] | None
) -> dict[str, Any]:
    if usage is None:
        prompt_chars = sum(len(str(m.get("content") or "")) for m in req.get("messages") or [])
        completion_chars = len(json.dumps(message))
        usage = {"prompt_tokens": max(1, prompt_chars // 4), "completion_tokens": max(1, completion_chars // 4)}
    usage = {**usage, "total_tokens": usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)}
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:16]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": req.get("model") or "fake-model",
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}],
        "usage": usage,
    }


class FakeOpenAI:
    """The server; `script(...)` queues replies, `requests` lists the drafts that arrived, `probes` the probes."""

    def __init__(self, flavor: Flavor = "openai") -> None:
        self.flavor: Flavor = flavor
        self.requests: list[RecordedRequest] = []
        # DeskPilot's structured-output probes, answered apart from the script.
        self.probes: list[RecordedRequest] = []
        # Requests to the flavor's tokenize endpoint, answered apart from the script.
        self.tokenized: list[RecordedRequest] = []
        self._steps: deque[Step] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        # Answers every request once the script has run out (e.g. for load tests); None means a 500.
        self.default: Step | None = None

    def start(self) -> FakeOpenAI:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.owner = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "start() the server first"
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def script(self, *steps: Step) -> FakeOpenAI:
        with self._lock:
            self._steps.extend(steps)
        return self

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._steps)

    def _record_and_next(self, request: RecordedRequest) -> Step | None:
        with self._lock:
            self.requests.append(request)
            return self._steps.popleft() if self._steps else self.default
