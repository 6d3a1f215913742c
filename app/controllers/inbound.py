"""`POST /api/webhooks/support/inbound/{postmark|sendgrid|mailgun}`: the mail providers' inbound webhooks.

Each request is authenticated with the provider's own scheme before its email is parsed (Postmark: basic auth in
the webhook URL; SendGrid: a secret as the basic auth password or the URL's last segment; Mailgun: the HMAC of
timestamp + token, within the replay window, the token single-use across processes via the database). A provider
that is not configured answers 404 naming the setting. Then every provider goes the one way raw MIME goes
(`email_intake.accept_email`): same parsing rules, same idempotency by Message-ID, attachments in the ticket's
transaction, auto-replies and bounces answered 200 `{"ignored": true}`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from litestar import Controller, Request, Response, post
from litestar.openapi.datastructures import ResponseSpec
from multipart import MultipartSegment, ParserError, ParserLimitReached, PushMultipartParser, parse_options_header

from app.controllers.email_intake import accept_email, parse_off_loop, read_body
from app.controllers.ingest import EMAIL_ANSWER, email_response
from app.runtime import Runtime
from core.errors import (
    DeskPilotError,
    MalformedRequest,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    UnsupportedMediaType,
    problem_responses,
)
from ingest.inbound import mime_limits, token_seen
from ingest.providers import (
    FormFile,
    parse_mailgun,
    parse_postmark,
    parse_sendgrid,
    verify_mailgun_async,
    verify_postmark_auth,
    verify_sendgrid_secret,
)
from ingest.signatures import SignatureError

# Form fields besides the attachments: Mailgun posts about 30 (headers among them), SendGrid about 15.
MAX_FORM_FIELDS = 200
_MAX_PART_HEADER_BYTES = 8 * 1024


@dataclass(slots=True)
class Form:
    """A form post as the provider parsers take it: text fields as the bytes received (each provider says
    which charset they are in), uploaded files apart."""

    fields: dict[str, list[bytes]] = field(default_factory=dict)
    files: dict[str, FormFile] = field(default_factory=dict)


def read_form(body: bytes, content_type: str, *, max_parts: int) -> Form:
    """multipart/form-data (through the `multipart` parser Litestar uses, with limits on parts and part headers)
    or application/x-www-form-urlencoded. Raises 400, 413 or 415 problem+json naming the field."""
    media_type, options = parse_options_header(content_type or "")
    form = Form()
    if media_type == "application/x-www-form-urlencoded":
        for name, value in parse_qsl(body, keep_blank_values=True, max_num_fields=max_parts):
            form.fields.setdefault(name.decode("utf-8", "replace"), []).append(value)
        return form
    if media_type != "multipart/form-data":
        raise UnsupportedMediaType("send the provider's form as multipart/form-data", field="content-type")
    boundary = options.get("boundary")
    if not boundary:
        raise MalformedRequest("the multipart/form-data Content-Type has no boundary", field="content-type")
    try:
        with PushMultipartParser(
            boundary, max_header_size=_MAX_PART_HEADER_BYTES, max_segment_count=max_parts, strict=True
        ) as parser:
            segment: MultipartSegment | None = None
            data = bytearray()
            for chunk in (body, b""):  # b"": the end of the input (a truncated form raises)
                for event in parser.parse(chunk):
                    if isinstance(event, MultipartSegment):
                        segment, data = event, bytearray()
                    elif event:
                        data += event
                    elif segment is not None:  # None: the end of the current part
                        part_name = segment.name or ""
                        if segment.filename is not None:
                            form.files[part_name] = FormFile(
                                bytes(data), segment.filename or None, segment.content_type
                            )
                        else:
                            form.fields.setdefault(part_name, []).append(bytes(data))
                        segment, data = None, bytearray()
                if parser.closed:
                    break
    except ParserLimitReached:
        raise PayloadTooLarge(f"the form has more than {max_parts} parts", field="body") from None
    except ParserError as exc:
        raise MalformedRequest(f"malformed multipart/form-data: {exc}", field="body") from None
    return form


def _not_configured(provider: str, setting: str) -> NotFound:
    return NotFound(f"the {provider} inbound webhook is not configured on this server: set {setting}", field="provider")


def _responses() -> dict[int, ResponseSpec]:
    return {
        200: ResponseSpec(
            data_container=EMAIL_ANSWER,
            generate_examples=False,
            description="A duplicate (the original ticket), or an auto-reply or bounce (ignored, no ticket)",
        ),
        **problem_responses(400, 401, 404, 409, 413, 415, 422, 429, 503),
    }


class InboundController(Controller):
    path = "/api/webhooks/support/inbound"
    tags = ["ingest"]

    @post(
        "/postmark",
        operation_id="inboundPostmark",
        summary="Postmark inbound webhook (JSON; HTTP basic auth in the webhook URL)",
        responses=_responses(),
        status_code=201,
        request_max_body_size=None,  # read_body enforces DESKPILOT_MAX_EMAIL_BYTES
    )
    async def postmark(self, request: Request[Any, Any, Any], runtime: Runtime) -> Response[Any]:
        async def handle() -> Response[Any]:
            settings = runtime.settings
            if not settings.postmark_inbound_auth:
                raise _not_configured("Postmark", "DESKPILOT_POSTMARK_INBOUND_AUTH")
            _verified(
                lambda: verify_postmark_auth(request.headers.get("authorization"), settings.postmark_inbound_auth or "")
            )
            raw = await read_body(request, settings.max_email_bytes, "request body")
            limits = mime_limits(settings)
            parsed = await parse_off_loop(lambda: parse_postmark(raw, limits=limits), len(raw))
            return email_response(await accept_email(runtime, parsed, len(raw)))

        return await _counted(runtime, handle)

    @post(
        "/sendgrid",
        operation_id="inboundSendgrid",
        summary="SendGrid Inbound Parse (multipart/form-data, parsed or raw; the secret as the basic auth password, "
        "or POST to /sendgrid/{secret})",
        responses=_responses(),
        status_code=201,
        request_max_body_size=None,
    )
    async def sendgrid(self, request: Request[Any, Any, Any], runtime: Runtime) -> Response[Any]:
        return await _counted(runtime, lambda: _sendgrid(request, runtime, None))

    @post(
        "/sendgrid/{secret:str}",
        operation_id="inboundSendgridSecretPath",
        summary="SendGrid Inbound Parse, the secret as the URL's last segment",
        include_in_schema=False,  # the documented /sendgrid, with the secret in the path instead of basic auth
        responses=_responses(),
        status_code=201,
        request_max_body_size=None,
    )
    async def sendgrid_secret_path(
        self, request: Request[Any, Any, Any], runtime: Runtime, secret: str
    ) -> Response[Any]:
        return await _counted(runtime, lambda: _sendgrid(request, runtime, secret))

    @post(
        "/mailgun",
        operation_id="inboundMailgun",
        summary="Mailgun route (multipart/form-data, parsed or MIME; signed with the webhook signing key)",
        responses=_responses(),
        status_code=201,
        request_max_body_size=None,
    )
    async def mailgun(self, request: Request[Any, Any, Any], runtime: Runtime) -> Response[Any]:
        async def handle() -> Response[Any]:
            settings = runtime.settings
            if not settings.mailgun_signing_key:
                raise _not_configured("Mailgun", "DESKPILOT_MAILGUN_SIGNING_KEY")
            raw = await read_body(request, settings.max_email_bytes, "request body")
            limits = mime_limits(settings)
            form = read_form(
                raw, request.headers.get("content-type", ""), max_parts=MAX_FORM_FIELDS + limits.max_attachments
            )

            async def seen(token: str, fingerprint: str) -> bool:
                async with runtime.require_pool().acquire() as conn:
                    return await token_seen(conn, token, fingerprint, window_s=settings.mailgun_replay_window_s)

            # The signature travels in the form: the form is read, the email in it is not parsed before this.
            try:
                await verify_mailgun_async(
                    settings.mailgun_signing_key or "",
                    form.fields,
                    form.files,
                    seen=seen,
                    tolerance_s=settings.mailgun_replay_window_s,
                )
            except SignatureError as exc:
                raise Unauthorized(f"Mailgun signature rejected: {exc.reason}", field="signature") from None
            parsed = await parse_off_loop(lambda: parse_mailgun(form.fields, form.files, limits=limits), len(raw))
            return email_response(await accept_email(runtime, parsed, len(raw)))

        return await _counted(runtime, handle)


async def _sendgrid(request: Request[Any, Any, Any], runtime: Runtime, secret: str | None) -> Response[Any]:
    settings = runtime.settings
    if not settings.sendgrid_inbound_secret:
        raise _not_configured("SendGrid", "DESKPILOT_SENDGRID_INBOUND_SECRET")
    expected = settings.sendgrid_inbound_secret
    _verified(
        lambda: verify_sendgrid_secret(expected, url_secret=secret, authorization=request.headers.get("authorization"))
    )
    raw = await read_body(request, settings.max_email_bytes, "request body")
    limits = mime_limits(settings)
    form = read_form(raw, request.headers.get("content-type", ""), max_parts=MAX_FORM_FIELDS + limits.max_attachments)
    parsed = await parse_off_loop(lambda: parse_sendgrid(form.fields, form.files, limits=limits), len(raw))
    return email_response(await accept_email(runtime, parsed, len(raw)))


def _verified(check: Callable[[], None]) -> None:
    try:
        check()
    except SignatureError as exc:
        raise Unauthorized(
            f"inbound webhook authentication rejected: {exc.reason}",
            field="authorization",
            headers={"WWW-Authenticate": 'Basic realm="deskpilot-inbound"'},
        ) from None


async def _counted(runtime: Runtime, handle: Callable[[], Awaitable[Response[Any]]]) -> Response[Any]:
    try:
        return await handle()
    except DeskPilotError as exc:
        runtime.metrics.ingest_rejects.labels(type(exc).__name__).inc()
        raise
