"""Storing inbound email: every door (raw MIME, the providers' webhooks, the IMAP connector) hands its parsed
`InboundEmail` to `store_email`, which writes the ticket or follow-up and its attachments in one transaction,
exactly once per Message-ID (the ingest idempotency key). Also the database store of Mailgun's single-use tokens.
"""

from __future__ import annotations

from uuid import UUID

from core.db import Connection
from core.settings import Settings
from ingest.mime import Attachment, InboundEmail, MimeLimits
from ingest.schemas import NormalizedTicket, normalize_payload
from ingest.store import IngestResult, ingest_once


def mime_limits(settings: Settings) -> MimeLimits:
    """What one inbound message may hold, from the settings."""
    return MimeLimits(
        max_email_bytes=settings.max_email_bytes,
        max_attachment_bytes=settings.max_attachment_bytes,
        max_attachments=settings.max_attachments,
    )


def normalized_ticket(email: InboundEmail) -> NormalizedTicket:
    """The ticket the message becomes (ingest normalization: HTML to text, quoted history trimmed, ...).
    CPU-bound for a large HTML body: callers run it in a thread for large messages."""
    return normalize_payload(email.payload)


async def store_email(
    conn: Connection,
    email: InboundEmail,
    ticket: NormalizedTicket,
    *,
    settings: Settings,
    customer_verified: bool,
) -> IngestResult:
    """Store the message as a new ticket or a follow-up, with its attachments, in one transaction; a replay of
    the same Message-ID is a duplicate and writes nothing. Raises what `ingest_once` raises (409, 422, 429)."""
    if not email.attachments:  # nothing to add to the ticket: ingest_once commits on its own, in fewer round trips
        return await ingest_once(conn, ticket, email.raw_object, settings=settings, customer_verified=customer_verified)
    async with conn.transaction():
        result = await ingest_once(
            conn, ticket, email.raw_object, settings=settings, customer_verified=customer_verified
        )
        if not result.duplicate:
            message_id = result.message_id
            if message_id is None:  # a new ticket: its first message
                message_id = await conn.fetchval(
                    "SELECT id FROM ticket_messages WHERE ticket_id = $1 AND external_id = $2",
                    result.ticket_id,
                    ticket.external_id,
                )
            await _insert_attachments(conn, result.ticket_id, message_id, email.attachments)
    return result


async def _insert_attachments(
    conn: Connection, ticket_id: UUID, message_id: UUID, attachments: tuple[Attachment, ...]
) -> None:
    await conn.executemany(
        """INSERT INTO ticket_attachments (ticket_id, message_id, position, filename, content_type, size, sha256,
                                           content_id, inline, content)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)""",
        [
            (
                ticket_id,
                message_id,
                position,
                attachment.filename,
                attachment.content_type,
                attachment.size,
                attachment.sha256,
                attachment.content_id,
                attachment.inline,
                attachment.content,
            )
            for position, attachment in enumerate(attachments)
        ],
    )


async def token_seen(conn: Connection, token: str, fingerprint: str, *, window_s: int) -> bool:
    """Mailgun's `seen(token, fingerprint)` (see `ingest.providers.SeenToken`), atomic across processes: True
    when the token was recorded before for a request with other content. Tokens older than twice the replay
    window are deleted on the way."""
    recorded: str = await conn.fetchval(
        """WITH expired AS (
               DELETE FROM inbound_tokens WHERE seen_at < now() - make_interval(secs => $3)
           )
           INSERT INTO inbound_tokens (token, fingerprint) VALUES ($1, $2)
           ON CONFLICT (token) DO UPDATE SET token = EXCLUDED.token
           RETURNING fingerprint""",
        token,
        fingerprint,
        float(2 * window_s),
    )
    return recorded != fingerprint
