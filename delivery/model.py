"""What a channel sender receives (a claimed delivery with its ticket context) and what it reports back."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

Channel = Literal["email", "in_app", "webhook"]
OutcomeKind = Literal["sent", "retry", "failed", "disabled"]


@dataclass(frozen=True, slots=True)
class Delivery:
    """One claimed outbox row plus what the channels need from its ticket."""

    id: UUID
    ticket_id: UUID
    channel: str
    idempotency_key: str
    recipient: str
    subject: str
    body: str
    origin: str
    tries: int
    lease_token: int
    attempt_id: UUID | None
    message_id: UUID | None
    # When the reply was queued (the row's created_at): fixed for the row, unlike the time of a send.
    created_at: datetime
    headers: dict[str, Any] = field(default_factory=dict)
    # Ticket context
    ticket_subject: str = ""
    ticket_external_id: str = ""
    ticket_metadata: dict[str, Any] = field(default_factory=dict)
    customer_email: str = ""
    # Message-IDs of the customer's emails in this thread, oldest first (In-Reply-To is the last one).
    customer_message_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SendOutcome:
    """The result of one send: `retry` may carry the receiver's Retry-After in seconds."""

    kind: OutcomeKind
    detail: str = ""
    retry_after_s: float | None = None

    @classmethod
    def sent(cls, detail: str = "") -> SendOutcome:
        return cls("sent", detail)

    @classmethod
    def retry(cls, detail: str, retry_after_s: float | None = None) -> SendOutcome:
        return cls("retry", detail, retry_after_s)

    @classmethod
    def failed(cls, detail: str) -> SendOutcome:
        return cls("failed", detail)

    @classmethod
    def disabled(cls, detail: str) -> SendOutcome:
        return cls("disabled", detail)
