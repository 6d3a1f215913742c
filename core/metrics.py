"""Prometheus metrics: one registry per app instance, so several apps in one process (tests) never collide."""

from __future__ import annotations

import time
from typing import Any

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Litestar appends the charset to text types itself.
CONTENT_TYPE = "text/plain; version=0.0.4"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.tickets_ingested = Counter(
            "deskpilot_tickets_ingested_total",
            "Tickets accepted by the ingest webhook",
            ["channel"],
            registry=r,
        )
        self.followups_ingested = Counter(
            "deskpilot_followups_ingested_total",
            "Follow-up messages appended to existing tickets",
            registry=r,
        )
        self.ingest_duplicates = Counter(
            "deskpilot_ingest_duplicates_total", "Replays of an already accepted external_id", registry=r
        )
        self.ingest_rejects = Counter(
            "deskpilot_ingest_rejects_total", "Ingest requests refused, by reason", ["reason"], registry=r
        )
        self.request_latency = Histogram(
            "deskpilot_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route", "status"],
            buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.attempts = Counter(
            "deskpilot_resolution_attempts_total", "Resolution attempts by decision", ["decision"], registry=r
        )
        self.attempt_errors = Counter(
            "deskpilot_resolution_errors_total", "Resolution attempts that failed with an error", registry=r
        )
        self.worker_claims = Counter(
            "deskpilot_worker_claims_total",
            "Tickets claimed by workers, by how the claim ended (completed, failed, parked, lease_lost, released)",
            ["outcome"],
            registry=r,
        )
        self.node_latency = Histogram(
            "deskpilot_node_duration_seconds",
            "Agent graph node latency",
            ["node"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.llm_calls = Counter("deskpilot_llm_calls_total", "LLM calls by outcome", ["outcome"], registry=r)
        self.llm_tokens = Counter("deskpilot_llm_tokens_total", "LLM tokens used", ["kind"], registry=r)
        self.llm_latency = Histogram(
            "deskpilot_llm_latency_seconds",
            "LLM call latency",
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60),
            registry=r,
        )
        self.deliveries = Counter(
            "deskpilot_deliveries_total", "Delivery outcomes by channel", ["channel", "outcome"], registry=r
        )
        # Filled from the database at scrape time.
        self.tickets_by_status = Gauge("deskpilot_tickets", "Tickets by status", ["status"], registry=r)
        self.queue_depth = Gauge("deskpilot_queue_depth", "Tickets waiting for a worker", registry=r)
        self.outbox_pending = Gauge("deskpilot_outbox_pending", "Deliveries waiting to be sent", registry=r)
        self.tier_gauges: dict[str, Gauge] = {}

    def tier_gauge(self, name: str, documentation: str) -> Gauge:
        """A per-tier gauge created on first use (support-health figures aggregated by tier)."""
        gauge = self.tier_gauges.get(name)
        if gauge is None:
            gauge = Gauge(name, documentation, ["tier"], registry=self.registry)
            self.tier_gauges[name] = gauge
        return gauge

    def render(self) -> bytes:
        return generate_latest(self.registry)


def latency_middleware_factory(metrics: Metrics) -> Any:
    """ASGI middleware recording request latency by route template (not raw path: ids would explode labels)."""

    # The histogram's child per (method, route, status), looked up once: `labels()` takes a lock and builds a key
    # on every call. Bounded as the histogram's own children are.
    children: dict[tuple[str, str, int], Any] = {}

    def observe(method: str, route: str, status: int, seconds: float) -> None:
        child = children.get((method, route, status))
        if child is None:
            child = children[(method, route, status)] = metrics.request_latency.labels(method, route, str(status))
        child.observe(seconds)

    def middleware(app: ASGIApp) -> ASGIApp:
        async def record(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP:
                await app(scope, receive, send)
                return
            started = time.perf_counter()
            status = 500

            async def send_wrapper(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await app(scope, receive, send_wrapper)
            finally:
                route = scope.get("path_template") or "unmatched"
                observe(scope.get("method", "?"), route, status, time.perf_counter() - started)

        return record

    return middleware
