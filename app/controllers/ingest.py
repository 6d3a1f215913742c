"""`POST /api/webhooks/support/ingest`: authenticate, validate, normalize, store once, answer after commit."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import msgspec
from litestar import Controller, Request, Response, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example, OpenAPIMediaType, Operation, RequestBody, Schema
from litestar.openapi.spec.enums import OpenAPIType
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from app.controllers.email_intake import accept_email, http_error, parse_off_loop, read_body
from app.runtime import Runtime
from core.errors import (
    DeskPilotError,
    Unauthorized,
    UnsupportedMediaType,
    problem_responses,
)
from core.settings import Settings
from ingest.inbound import mime_limits
from ingest.mime import IgnoredEmail, parse_mime
from ingest.schemas import IngestPayload, NormalizedTicket, PayloadError, normalize_payload, parse_payload
from ingest.signatures import SignatureError, verify_webhook
from ingest.store import IngestResult

_STRING = Schema(type=OpenAPIType.STRING)


def _payload_schema() -> Schema:
    return Schema(
        type=OpenAPIType.OBJECT,
        required=["external_id", "customer_email", "body"],
        properties={
            "external_id": Schema(
                type=OpenAPIType.STRING,
                min_length=1,
                max_length=255,
                description="The caller's idempotency key",
            ),
            "channel": Schema(type=OpenAPIType.STRING, enum=["email", "in_app", "webhook"]),
            "customer_email": Schema(type=OpenAPIType.STRING, format="email"),  # type: ignore[arg-type]
            "subject": _STRING,
            "body": Schema(type=OpenAPIType.STRING, min_length=1),
            "customer_name": Schema(one_of=[_STRING, Schema(type=OpenAPIType.NULL)]),
            "metadata": Schema(type=OpenAPIType.OBJECT),
            "thread_ref": Schema(
                one_of=[_STRING, Schema(type=OpenAPIType.NULL)],
                description="external id or ticket id of the same customer's ticket this follows up on "
                "(another customer's ticket is never joined: the message becomes a new ticket)",
            ),
            "message_id": Schema(
                one_of=[_STRING, Schema(type=OpenAPIType.NULL)], description="email Message-ID (email bridge)"
            ),
            "in_reply_to": Schema(one_of=[_STRING, Schema(type=OpenAPIType.NULL)]),
            "references": Schema(type=OpenAPIType.ARRAY, items=_STRING),
        },
    )


@dataclass
class IngestOperation(Operation):
    """The handler reads the raw body itself (signatures cover the exact bytes), so describe it by hand."""

    def __post_init__(self) -> None:
        self.request_body = RequestBody(
            required=True,
            content={
                "application/json": OpenAPIMediaType(
                    schema=_payload_schema(),
                    examples={
                        "ticket": Example(
                            value={
                                "external_id": "form-1842",
                                "channel": "in_app",
                                "customer_email": "ada@example.com",
                                "subject": "Where do I download invoices?",
                                "body": "Hi, where can I find the PDF invoices for last year?",
                            }
                        )
                    },
                ),
                "message/rfc822": OpenAPIMediaType(
                    schema=Schema(
                        type=OpenAPIType.STRING,
                        format="binary",  # type: ignore[arg-type]
                        description="A whole RFC 5322 email; its Message-ID is the idempotency key. Auto-replies "
                        "and bounces are answered 200 {ignored: true, reason} and never become tickets.",
                    )
                ),
            },
        )


def _content_type_is_json(value: str) -> bool:
    media_type, _, params = value.partition(";")
    media_type = media_type.strip().lower()
    if media_type != "application/json" and not (
        media_type.startswith("application/") and media_type.endswith("+json")
    ):
        return False
    for param in params.split(";"):
        key, _, charset = param.partition("=")
        if key.strip().lower() == "charset" and charset.strip().strip('"').lower() not in ("utf-8", "utf8"):
            return False
    return True


_INLINE_PARSE_BYTES = 16 * 1024


class IngestAccepted(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The answer to an accepted request: 201 for a new ticket or follow-up, 200 for a replay."""

    ticket_id: str
    status: str
    created_at: str
    duplicate: bool | None = None
    followup: bool | None = None
    message_id: str | None = None


class EmailIgnored(msgspec.Struct, kw_only=True):
    """An auto-reply or bounce: answered 200 so the sender does not retry, and never a ticket."""

    ignored: bool
    reason: str
    detail: str


# What an email door answers with 200: a duplicate's original ticket, or an ignored auto-reply (for OpenAPI).
EMAIL_ANSWER: Any = IngestAccepted | EmailIgnored


def _parse_and_normalize(raw: bytes) -> tuple[IngestPayload, dict[str, Any], NormalizedTicket]:
    payload, raw_object = parse_payload(raw)
    return payload, raw_object, normalize_payload(payload)


class IngestController(Controller):
    path = "/api/webhooks/support"
    tags = ["ingest"]

    @post(
        "/ingest",
        operation_id="ingestTicket",
        responses={
            200: ResponseSpec(
                data_container=EMAIL_ANSWER,
                generate_examples=False,
                description="Duplicate: the original ticket; or an email that is an auto-reply or bounce (ignored)",
            ),
            **problem_responses(400, 401, 409, 413, 415, 422, 429, 503),
        },
        summary="Receive a support ticket or a follow-up message",
        operation_class=IngestOperation,
        status_code=HTTP_201_CREATED,
        # The limit depends on the content type (JSON or a whole email): `read_body` enforces it.
        request_max_body_size=None,
    )
    async def ingest(self, request: Request[Any, Any, Any]) -> Response[Any]:
        # Read from the app state rather than injected: the busiest endpoint skips Litestar's dependency
        # resolution, about 5 % of the API process's CPU per request (py-spy under bench/ingest.py).
        runtime: Runtime = request.app.state.runtime
        metrics = runtime.metrics
        try:
            response = await self._ingest(request, runtime)
        except DeskPilotError as exc:
            metrics.ingest_rejects.labels(type(exc).__name__).inc()
            raise
        return response

    async def _ingest(self, request: Request[Any, Any, Any], runtime: Runtime) -> Response[Any]:
        settings = runtime.settings
        if _content_type_is_rfc822(request.headers.get("content-type", "")):
            return await _ingest_rfc822(request, runtime)
        raw = await read_body(request, settings.max_body_bytes, "request body")  # 413 above the limit
        _authenticate(settings, request, raw)
        if not _content_type_is_json(request.headers.get("content-type", "")):
            raise UnsupportedMediaType(
                "send the ticket as application/json (UTF-8), or an email as message/rfc822", field="content-type"
            )
        try:
            if len(raw) > _INLINE_PARSE_BYTES:
                # Hostile HTML can take a parser a noticeable fraction of a second: keep the event loop free.
                _, raw_object, ticket = await asyncio.to_thread(_parse_and_normalize, raw)
            else:
                _, raw_object, ticket = _parse_and_normalize(raw)
        except PayloadError as exc:
            raise http_error(exc) from None
        # Stored with the new tickets of concurrent requests, in one round trip and one commit (`ingest.store`).
        # Signed: the integration that holds the secret vouches for the customer it names.
        result = await runtime.require_ticket_batcher().ingest(
            ticket, raw_object, customer_verified=bool(settings.webhook_secret)
        )
        if result.duplicate:  # nothing written, nothing to wake the workers for
            runtime.metrics.ingest_duplicates.inc()
            return Response(IngestAccepted(**result.to_json()), status_code=HTTP_200_OK)
        runtime.wake_workers()  # committed: the ticket is there for whichever worker the NOTIFY wakes
        if result.followup:
            runtime.metrics.followups_ingested.inc()
        else:
            runtime.metrics.tickets_ingested.labels(ticket.channel).inc()
        return Response(IngestAccepted(**result.to_json()), status_code=HTTP_201_CREATED)


# --- raw email (message/rfc822) -----------------------------------------------------------------------------


def _authenticate(settings: Settings, request: Request[Any, Any, Any], raw: bytes) -> None:
    if settings.webhook_secret:
        # Authenticate before parsing anything: unsigned input is not even looked at.
        try:
            verify_webhook(settings.webhook_secret, request.headers, raw)
        except SignatureError as exc:
            raise Unauthorized(f"webhook signature rejected: {exc.reason}") from None


def _content_type_is_rfc822(value: str) -> bool:
    return value.partition(";")[0].strip().lower() == "message/rfc822"


def email_response(outcome: IngestResult | IgnoredEmail) -> Response[Any]:
    """The answer to an inbound email, whichever door it came through: 201 a new ticket or follow-up, 200 a
    duplicate (the original ticket), 200 `{"ignored": true, "reason"}` for an auto-reply or bounce."""
    if isinstance(outcome, IgnoredEmail):
        return Response(EmailIgnored(ignored=True, reason=outcome.reason, detail=outcome.detail), status_code=200)
    status = HTTP_200_OK if outcome.duplicate else HTTP_201_CREATED
    return Response(IngestAccepted(**outcome.to_json()), status_code=status)


async def _ingest_rfc822(request: Request[Any, Any, Any], runtime: Runtime) -> Response[Any]:
    """A whole RFC 5322 message (Cloudflare Email Workers, SES via SNS, Mailgun's MIME routes): the same
    signature rules as JSON, its own size limit (DESKPILOT_MAX_EMAIL_BYTES); the Message-ID is the idempotency
    key."""
    settings = runtime.settings
    raw = await read_body(request, settings.max_email_bytes, "message")
    _authenticate(settings, request, raw)
    limits = mime_limits(settings)
    parsed = await parse_off_loop(lambda: parse_mime(raw, limits=limits), len(raw))
    return email_response(await accept_email(runtime, parsed, len(raw)))
