"""Delivery retry timing: exponential backoff with jitter, and the receiver's Retry-After."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

from delivery.outbox import BACKOFF_BASE_S, BACKOFF_CAP_S, RETRY_AFTER_CAP_S, delivery_backoff_s
from delivery.webhook import parse_retry_after


def test_backoff_grows_exponentially_with_jitter() -> None:
    for tries in range(1, 12):
        ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (tries - 1))
        delays = {delivery_backoff_s(tries) for _ in range(50)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(delays) > 1  # jittered


def test_retry_after_wins_when_longer_and_is_capped() -> None:
    assert delivery_backoff_s(1, 900) == 900
    assert delivery_backoff_s(1, 1) >= BACKOFF_BASE_S / 2
    assert delivery_backoff_s(1, 10 * RETRY_AFTER_CAP_S) == RETRY_AFTER_CAP_S


def test_parse_retry_after() -> None:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    assert parse_retry_after("120", now) == 120
    assert parse_retry_after(format_datetime(now + timedelta(minutes=5), usegmt=True), now) == 300
    assert parse_retry_after(format_datetime(now - timedelta(minutes=5), usegmt=True), now) == 0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None
