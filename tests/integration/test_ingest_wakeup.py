"""Workers are woken after ingest commits, outside the ticket's transaction (`tickets.wakeup.WorkerWaker`):
every committed ticket reaches a LISTENing connection, and concurrent commits share coalesced NOTIFYs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from ingest.schemas import normalize_payload, parse_payload
from ingest.store import ingest_once
from tests.support.workers import eventually, truthy
from tickets.queue import NOTIFY_CHANNEL
from tickets.wakeup import WorkerWaker

pytestmark = pytest.mark.timeout(60)

INGEST = "/api/webhooks/support/ingest"
INBOUND_EMAIL = Path(__file__).resolve().parent.parent / "data" / "inbound"
# Sent by the test itself right after each commit, on the same queue: notifications arrive in commit order.
COMMITTED_CHANNEL = "test_ingest_committed"


class Heard:
    """A LISTEN connection of its own, recording the channel of every notification in arrival order."""

    def __init__(self) -> None:
        self.channels: list[str] = []

    def on_notify(self, conn: object, pid: int, channel: str, payload: object) -> None:
        self.channels.append(channel)

    def count(self, channel: str = NOTIFY_CHANNEL) -> int:
        return self.channels.count(channel)


@pytest.fixture
async def heard(database_url: str, clean_db: asyncpg.Pool) -> AsyncIterator[Heard]:
    heard = Heard()
    conn = await asyncpg.connect(database_url)
    try:
        await conn.add_listener(NOTIFY_CHANNEL, heard.on_notify)
        await conn.add_listener(COMMITTED_CHANNEL, heard.on_notify)
        yield heard
    finally:
        await conn.close()


def ticket(external_id: str, **overrides: Any) -> dict[str, Any]:
    return {
        "external_id": external_id,
        "channel": "email",
        "customer_email": f"{external_id}@example.com",
        "subject": "Cannot download my invoice",
        "body": "Hello, the invoice download button does nothing. Can you help?",
        **overrides,
    }


async def quiet(heard: Heard, seconds: float = 0.5) -> None:
    """Until no notification arrived for `seconds` (delivery is asynchronous)."""
    while True:
        before = len(heard.channels)
        await asyncio.sleep(seconds)
        if len(heard.channels) == before:
            return


@pytest.mark.parametrize("door", ["json", "rfc822", "followup"])
async def test_a_committed_ticket_wakes_a_listening_connection(
    door: str, client: Any, clean_db: asyncpg.Pool, heard: Heard
) -> None:
    json_headers = {"content-type": "application/json"}
    if door == "followup":
        first = await client.post(INGEST, content=json.dumps(ticket("w-1")).encode(), headers=json_headers)
        assert first.status_code == 201, first.text
        await eventually(lambda: truthy(heard.count() == 1), within_s=5, what="the first ticket's NOTIFY")
        heard.channels.clear()
    if door == "rfc822":
        body = (INBOUND_EMAIL / "plain.eml").read_bytes()
        headers = {"content-type": "message/rfc822"}
    elif door == "followup":  # the same customer as w-1: a follow-up, not a new ticket
        body = json.dumps(ticket("w-2", customer_email="w-1@example.com", thread_ref="w-1")).encode()
        headers = json_headers
    else:
        body = json.dumps(ticket("w-1")).encode()
        headers = json_headers
    response = await client.post(INGEST, content=body, headers=headers)
    assert response.status_code == 201, response.text
    assert response.json().get("followup", False) is (door == "followup")

    await eventually(lambda: truthy(heard.count() >= 1), within_s=5, what="a NOTIFY after the commit")
    # A replay writes nothing, so it wakes nobody.
    await quiet(heard)
    woken = heard.count()
    replay = await client.post(INGEST, content=body, headers=headers)
    assert replay.status_code == 200, replay.text
    await quiet(heard)
    assert heard.count() == woken


async def test_concurrent_ingests_share_coalesced_notifies_the_last_after_the_last_commit(
    clean_db: asyncpg.Pool, heard: Heard
) -> None:
    """Each task commits a ticket, marks its commit on the notification queue, then asks for a wake-up, as the
    controllers do: at most one NOTIFY per commit, and one that follows the last commit's mark."""
    count = 24
    waker = WorkerWaker(clean_db)
    payloads = [parse_payload(json.dumps(ticket(f"c-{n}")).encode()) for n in range(count)]

    async def ingest_and_wake(payload: Any, raw: dict[str, Any]) -> None:
        async with clean_db.acquire() as conn:
            result = await ingest_once(conn, normalize_payload(payload), raw)
            assert not result.duplicate
            await conn.execute(f"NOTIFY {COMMITTED_CHANNEL}")  # after the ticket's commit
        waker.wake()

    await asyncio.gather(*(ingest_and_wake(payload, raw) for payload, raw in payloads))
    await waker.close()  # sends what is still due
    await quiet(heard)

    assert heard.count(COMMITTED_CHANNEL) == count
    notifies = heard.count()
    assert 1 <= notifies <= count
    assert notifies == waker.sent
    last_commit = max(i for i, channel in enumerate(heard.channels) if channel == COMMITTED_CHANNEL)
    assert NOTIFY_CHANNEL in heard.channels[last_commit + 1 :], heard.channels
    assert await clean_db.fetchval("SELECT count(*) FROM tickets") == count


async def test_a_commit_while_a_notify_is_in_flight_gets_one_after_it(
    database_url: str, clean_db: asyncpg.Pool, heard: Heard
) -> None:
    """The case coalescing could lose: the NOTIFY in flight was committed before the ticket was, so it cannot
    stand for it. The waker's pool holds the connection back on release, keeping that NOTIFY in flight."""
    released = asyncio.Event()

    async def held_release(conn: asyncpg.Connection) -> None:
        await released.wait()

    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1, reset=held_release)
    assert pool is not None
    try:
        waker = WorkerWaker(pool)
        waker.wake()
        await eventually(lambda: truthy(heard.count() == 1), within_s=5, what="the first NOTIFY committed")
        assert waker.sent == 0  # still in flight: its connection is not back in the pool
        payload, raw = parse_payload(json.dumps(ticket("late-1")).encode())
        async with clean_db.acquire() as conn:
            await ingest_once(conn, normalize_payload(payload), raw)
            await conn.execute(f"NOTIFY {COMMITTED_CHANNEL}")
        waker.wake()
        released.set()
        await waker.close()
        await quiet(heard)
    finally:
        released.set()
        await pool.close()
    assert heard.channels == [NOTIFY_CHANNEL, COMMITTED_CHANNEL, NOTIFY_CHANNEL]
    assert waker.sent == 2


async def test_wake_ups_asked_for_together_are_one_notify(clean_db: asyncpg.Pool, heard: Heard) -> None:
    async with WorkerWaker(clean_db) as waker:
        for _ in range(10):
            waker.wake()  # no await in between: all ten arrive before the first NOTIFY is sent
    await quiet(heard)
    assert heard.count() == 1
    assert waker.sent == 1


async def test_a_stream_of_wake_ups_costs_one_notify_per_spacing(clean_db: asyncpg.Pool, heard: Heard) -> None:
    """Commits every millisecond for a fifth of a second: the NOTIFYs are spaced, not one per commit, and the
    last commit still gets one after it."""
    waker = WorkerWaker(clean_db, spacing_s=0.05)
    for _ in range(200):
        waker.wake()
        await asyncio.sleep(0.001)
    await conn_notify(clean_db, COMMITTED_CHANNEL)  # the last commit's mark
    waker.wake()
    await waker.close()
    await quiet(heard)
    assert 2 <= waker.sent <= 10  # 0.2 s or so at one per 0.05 s, plus the first and the last
    last_commit = heard.channels.index(COMMITTED_CHANNEL)
    assert NOTIFY_CHANNEL in heard.channels[last_commit + 1 :], heard.channels


async def conn_notify(pool: asyncpg.Pool, channel: str) -> None:
    async with pool.acquire() as conn:
        await conn.execute(f"NOTIFY {channel}")


async def test_a_failed_wake_up_raises_nothing_and_close_does_not_hang(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    pool = await asyncpg.create_pool(database_url, min_size=0, max_size=1)
    assert pool is not None
    await pool.close()
    waker = WorkerWaker(pool)
    waker.wake()  # the pool is closed: the NOTIFY fails in the background
    await asyncio.wait_for(waker.close(), 5)
    assert waker.sent == 0
    assert "could not wake the workers" in caplog.text
    waker.wake()  # after close: nothing, and no error


async def test_the_app_wakes_workers_with_its_own_waker_and_closes_it(
    make_client: Callable[..., Any], clean_db: asyncpg.Pool, heard: Heard
) -> None:
    async with make_client() as client:
        runtime = client.app.state.runtime
        assert isinstance(runtime.waker, WorkerWaker)
        waker = runtime.waker
        response = await client.post(
            INGEST, content=json.dumps(ticket("app-1")).encode(), headers={"content-type": "application/json"}
        )
        assert response.status_code == 201, response.text
        await eventually(lambda: truthy(waker.sent == 1), within_s=5, what="the app's waker sent its NOTIFY")
    assert runtime.waker is None  # closed with the app, before its pool
