"""`POST /api/webhooks/support/ingest`: authenticate, validate, normalize, store once, answer after commit."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import asyncpg
import msgspec
from litestar import Controller, Request, Response, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example, OpenAPIMediaType, Operation, RequestBody, Schema
from litestar.openapi.spec.enums import OpenAPIType
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from app.plugin import Runtime
from core.errors import (
    DeskPilotError,
    InvalidInput,
    MalformedRequest,
    PayloadTooLarge,
    Unauthorized,
    UnsupportedMediaType,
    problem_responses,
)
from ingest.schemas import IngestPayload, NormalizedTicket, PayloadError, normalize_payload, parse_payload
from ingest.signatures import SignatureError, verify_webhook
from ingest.store import ingest_once

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
                description="external id or ticket id of the ticket this follows up on",
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
                )
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
            200: ResponseSpec(data_container=IngestAccepted, description="Duplicate: the original ticket"),
            **problem_responses(400, 401, 409, 413, 415, 422, 503),
        },
        summary="Receive a support ticket or a follow-up message",
        operation_class=IngestOperation,
        status_code=HTTP_201_CREATED,
    )
    async def ingest(self, request: Request[Any, Any, Any], runtime: Runtime) -> Response[IngestAccepted]:
        metrics = runtime.metrics
        try:
            response = await self._ingest(request, runtime)
        except DeskPilotError as exc:
            metrics.ingest_rejects.labels(type(exc).__name__).inc()
            raise
        return response

    async def _ingest(self, request: Request[Any, Any, Any], runtime: Runtime) -> Response[IngestAccepted]:
        settings = runtime.settings
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > settings.max_body_bytes:
            raise PayloadTooLarge(f"the request body is over the {settings.max_body_bytes}-byte limit")
        raw = await request.body()
        if len(raw) > settings.max_body_bytes:
            raise PayloadTooLarge(f"the request body is over the {settings.max_body_bytes}-byte limit")
        if settings.webhook_secret:
            # Authenticate before parsing anything: unsigned input is not even looked at.
            try:
                verify_webhook(settings.webhook_secret, request.headers, raw)
            except SignatureError as exc:
                raise Unauthorized(f"webhook signature rejected: {exc.reason}") from None
        if not _content_type_is_json(request.headers.get("content-type", "")):
            raise UnsupportedMediaType("send the ticket as application/json (UTF-8)", field="content-type")
        try:
            if len(raw) > _INLINE_PARSE_BYTES:
                # Hostile HTML can take a parser a noticeable fraction of a second: keep the event loop free.
                _, raw_object, ticket = await asyncio.to_thread(_parse_and_normalize, raw)
            else:
                _, raw_object, ticket = _parse_and_normalize(raw)
        except PayloadError as exc:
            error_type = MalformedRequest if exc.status == 400 else InvalidInput
            raise error_type(exc.detail, field=exc.field) from None
        pool: asyncpg.Pool = runtime.require_pool()
        async with pool.acquire() as conn:
            result = await ingest_once(conn, ticket, raw_object)
        if result.duplicate:
            runtime.metrics.ingest_duplicates.inc()
            return Response(IngestAccepted(**result.to_json()), status_code=HTTP_200_OK)
        if result.followup:
            runtime.metrics.followups_ingested.inc()
        else:
            runtime.metrics.tickets_ingested.labels(ticket.channel).inc()
        return Response(IngestAccepted(**result.to_json()), status_code=HTTP_201_CREATED)
