"""A tiny scripted HTTP/1.1 receiver on asyncio streams: records every request, answers from a script.

`on_request` runs once a request has fully arrived (recorded, not answered yet); `on_replied` runs right after its
answer was written. Fault tests use them to kill the sender at those two moments.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class ReceivedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    delay_s: float = 0.0


class HttpReceiver:
    """Answers each request with the next scripted Reply (200 once the script runs out)."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.requests: list[ReceivedRequest] = []
        self.script: list[Reply] = []
        self.on_request: Callable[[ReceivedRequest], None] | None = None
        self.on_replied: Callable[[ReceivedRequest], None] | None = None
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self, port: int = 0) -> HttpReceiver:
        self._server = await asyncio.start_server(self._handle, self.host, port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    def url(self, path: str = "/hook") -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{path}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _version = lines[0].split(" ", 2)
            headers: dict[str, str] = {}
            for line in lines[1:]:
                if ":" in line:
                    name, value = line.split(":", 1)
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            request = ReceivedRequest(method, path, headers, body)
            self.requests.append(request)
            if self.on_request is not None:
                self.on_request(request)
            reply = self.script.pop(0) if self.script else Reply()
            if reply.delay_s:
                await asyncio.sleep(reply.delay_s)
            fields = {"content-length": str(len(reply.body)), "connection": "close", **reply.headers}
            head_out = f"HTTP/1.1 {reply.status} X\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
            writer.write((head_out + "\r\n").encode("latin-1") + reply.body)
            await writer.drain()
            if self.on_replied is not None:
                self.on_replied(request)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
