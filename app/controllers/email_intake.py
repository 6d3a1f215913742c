"""What every inbound-email door of the API shares (raw MIME on the ingest webhook, the providers' webhooks):
reading a body under a limit, turning parser errors into problem+json, and storing a parsed message."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from litestar import Request

from app.runtime import Runtime
from core.errors import DeskPilotError, InvalidInput, MalformedRequest, PayloadTooLarge
from ingest.inbound import normalized_ticket, store_email
from ingest.mime import IgnoredEmail, InboundEmail, ParsedEmail
from ingest.schemas import PayloadError
from ingest.store import IngestResult

T = TypeVar("T")

# Bodies above this are parsed in a thread: a large message (or hostile HTML in it) takes the parser a
# noticeable fraction of a second, which must not stall the event loop's other requests.
INLINE_PARSE_BYTES = 64 * 1024


async def read_body(request: Request[Any, Any, Any], limit: int, what: str) -> bytes:
    """The request body, refused with 413 as soon as it is known to be over `limit` (the declared length, or
    the bytes received so far): an oversized upload is never held in memory whole."""
    too_large = f"the {what} is over the {limit}-byte limit"
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise PayloadTooLarge(too_large, field="body")
    chunks: list[bytes] = []
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise PayloadTooLarge(too_large, field="body")
        chunks.append(chunk)
    return b"".join(chunks)


def http_error(exc: PayloadError) -> DeskPilotError:
    """A parser's PayloadError as the API's error: 400, 413 or 422, naming the field."""
    if exc.status == 400:
        return MalformedRequest(exc.detail, field=exc.field)
    if exc.status == 413:
        return PayloadTooLarge(exc.detail, field=exc.field)
    return InvalidInput(exc.detail, field=exc.field)


async def parse_off_loop(parse: Callable[[], T], size: int) -> T:
    """Run a parser (and its normalization) inline for small inputs, in a thread for large ones; parser errors
    become problem+json."""
    try:
        if size > INLINE_PARSE_BYTES:
            return await asyncio.to_thread(parse)
        return parse()
    except PayloadError as exc:
        raise http_error(exc) from None


async def accept_email(runtime: Runtime, parsed: ParsedEmail, size: int) -> IngestResult | IgnoredEmail:
    """Store a parsed message (new ticket or follow-up, attachments in the same transaction), or pass an
    auto-reply or bounce through untouched: it never becomes a ticket.

    Email is never `customer_verified`: whoever delivers it, the From header is the sender's own claim."""
    if isinstance(parsed, IgnoredEmail):
        runtime.metrics.ingest_rejects.labels("IgnoredEmail").inc()
        return parsed
    email: InboundEmail = parsed
    ticket = await parse_off_loop(lambda: normalized_ticket(email), size)
    async with runtime.require_pool().acquire() as conn:
        result = await store_email(conn, email, ticket, settings=runtime.settings, customer_verified=False)
    if result.duplicate:
        runtime.metrics.ingest_duplicates.inc()
        return result
    runtime.wake_workers()  # after the commit
    if result.followup:
        runtime.metrics.followups_ingested.inc()
    else:
        runtime.metrics.tickets_ingested.labels(ticket.channel).inc()
    return result
