"""core.metrics: the latency middleware records each request under its method, route template and status."""

from __future__ import annotations

from typing import Any

from core.metrics import Metrics, latency_middleware_factory


def answering(status: int) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    return app


async def test_requests_are_counted_by_method_route_and_status() -> None:
    metrics = Metrics()
    middleware = latency_middleware_factory(metrics)
    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> Any:
        return {"type": "http.request", "body": b""}

    for status, template in ((201, "/api/tickets/{id}"), (201, "/api/tickets/{id}"), (404, None)):
        scope = {"type": "http", "method": "POST", "path_template": template}
        await middleware(answering(status))(scope, receive, send)

    def count(route: str, status: str) -> float | None:
        return metrics.registry.get_sample_value(
            "deskpilot_http_request_duration_seconds_count", {"method": "POST", "route": route, "status": status}
        )

    assert count("/api/tickets/{id}", "201") == 2
    assert count("unmatched", "404") == 1
    assert count("/api/tickets/{id}", "404") is None
    assert [message["type"] for message in sent].count("http.response.start") == 3  # answers pass through
