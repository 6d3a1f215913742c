"""One error tree for DeskPilot and one renderer: every error leaves as `application/problem+json` (RFC 9457)."""

from __future__ import annotations

import logging
import math
from http import HTTPStatus
from typing import Any

import asyncpg
import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


class Problem(msgspec.Struct, kw_only=True):
    """The problem+json body every error response carries (RFC 9457), as documented in the OpenAPI schema."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    field: str | None = None
    errors: list[dict[str, Any]] | None = None


def problem_responses(*statuses: int) -> dict[int, ResponseSpec]:
    """OpenAPI `responses=` for a handler: the error statuses it can answer, each as problem+json."""
    return {
        status: ResponseSpec(
            data_container=Problem,
            media_type=PROBLEM_JSON,
            description=HTTPStatus(status).phrase,
            generate_examples=False,
        )
        for status in statuses
    }


class DeskPilotError(Exception):
    """A domain error with the HTTP status it maps to."""

    status = 400
    title = "Bad request"

    def __init__(
        self, detail: str, *, field: str | None = None, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field
        self.headers = headers or {}
        self.extra = extra


class MalformedRequest(DeskPilotError):
    status = 400
    title = "Malformed request"


class Unauthorized(DeskPilotError):
    status = 401
    title = "Unauthorized"


class NotFound(DeskPilotError):
    status = 404
    title = "Not found"


class Conflict(DeskPilotError):
    status = 409
    title = "Conflict"


class PayloadTooLarge(DeskPilotError):
    status = 413
    title = "Payload too large"


class UnsupportedMediaType(DeskPilotError):
    status = 415
    title = "Unsupported media type"


class InvalidInput(DeskPilotError):
    status = 422
    title = "Invalid input"


class Forbidden(DeskPilotError):
    status = 403
    title = "Forbidden"


class TooManyRequests(DeskPilotError):
    """A quota or rate limit: nothing was done; `Retry-After` says when trying again can succeed."""

    status = 429
    title = "Too many requests"

    def __init__(self, detail: str, *, retry_after_s: float, field: str | None = None) -> None:
        super().__init__(detail, field=field, headers={"Retry-After": str(max(1, math.ceil(retry_after_s)))})


class Unavailable(DeskPilotError):
    status = 503
    title = "Service unavailable"

    def __init__(self, detail: str = "the database is unreachable; retry shortly", retry_after: int = 5) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)})


# Errors that mean "the database is not there right now" (restart, failover, a connection it just killed), by
# class, never by message text: the API answers 503 with Retry-After, the worker backs off and tries again.
DATABASE_UNAVAILABLE: tuple[type[Exception], ...] = (
    OSError,  # ConnectionError, and TimeoutError from pool acquire, connect and statement timeouts
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,  # "connection is closed", "pool is closing", ...
    # "another operation is in progress": a connection the server killed a moment ago, before asyncpg saw EOF.
    asyncpg.exceptions.InternalClientError,
    asyncpg.exceptions.OperatorInterventionError,  # admin or crash shutdown, cannot connect now
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.TransactionRollbackError,  # serialization failures and deadlocks
    asyncpg.exceptions.ReadOnlySQLTransactionError,  # a managed database in the middle of a failover
)


def problem(
    status: int,
    title: str,
    detail: str,
    *,
    field: str | None = None,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Response[dict[str, Any]]:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    if field is not None:
        body["field"] = field
        body["errors"] = [{"field": field, "message": detail}]
    if extra:
        body.update(extra)
    return Response(content=body, status_code=status, media_type=PROBLEM_JSON, headers=headers or {})


def render_deskpilot_error(_: Request[Any, Any, Any], exc: DeskPilotError) -> Response[dict[str, Any]]:
    return problem(exc.status, exc.title, exc.detail, field=exc.field, headers=exc.headers, extra=exc.extra)


def render_validation_error(_: Request[Any, Any, Any], exc: ValidationException) -> Response[dict[str, Any]]:
    """Litestar's own parameter/body validation: name the offending field(s)."""
    errors = exc.extra if isinstance(exc.extra, list) else []
    fields = [str(e.get("key")) for e in errors if isinstance(e, dict) and e.get("key")]
    detail = "; ".join(f"{e.get('key')}: {e.get('message')}" for e in errors if isinstance(e, dict)) or str(exc.detail)
    response = problem(422, "Invalid input", detail, field=fields[0] if fields else None)
    if len(errors) > 1 and isinstance(response.content, dict):
        response.content["errors"] = [
            {"field": e.get("key"), "message": e.get("message")} for e in errors if isinstance(e, dict)
        ]
    return response


def render_http_exception(_: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    title = {
        400: "Malformed request",
        401: "Unauthorized",
        404: "Not found",
        405: "Method not allowed",
        413: "Payload too large",
        415: "Unsupported media type",
    }.get(exc.status_code, "Error")
    return problem(exc.status_code, title, str(exc.detail), headers=dict(exc.headers or {}))


def render_database_unavailable(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    log.warning("database unavailable: %s", type(exc).__name__)
    err = Unavailable()
    return problem(err.status, err.title, err.detail, headers=err.headers)


def render_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    if isinstance(exc, DATABASE_UNAVAILABLE) or _caused_by_unavailable_database(exc):
        return render_database_unavailable(request, exc)
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem(HTTP_500_INTERNAL_SERVER_ERROR, "Internal server error", "an unexpected error occurred")


def _caused_by_unavailable_database(exc: BaseException) -> bool:
    seen = 0
    cause = exc.__cause__ or exc.__context__
    while cause is not None and seen < 5:
        if isinstance(cause, DATABASE_UNAVAILABLE):
            return True
        cause = cause.__cause__ or cause.__context__
        seen += 1
    return False


EXCEPTION_HANDLERS: dict[type[Exception] | int, Any] = {
    DeskPilotError: render_deskpilot_error,
    ValidationException: render_validation_error,
    HTTPException: render_http_exception,
    **dict.fromkeys(DATABASE_UNAVAILABLE, render_database_unavailable),
    Exception: render_unexpected,
}

__all__ = [
    "DATABASE_UNAVAILABLE",
    "EXCEPTION_HANDLERS",
    "PROBLEM_JSON",
    "Conflict",
    "DeskPilotError",
    "Forbidden",
    "InvalidInput",
    "MalformedRequest",
    "NotFound",
    "PayloadTooLarge",
    "TooManyRequests",
    "Unauthorized",
    "Unavailable",
    "UnsupportedMediaType",
]
