"""The ingest payload: its msgspec schema, validation that names the offending field, and the normalized
ticket (with a content hash that tells an identical replay from a conflicting one) that the store writes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
from email_validator import validate_email

from ingest.normalize import (
    NormalizedBody,
    normalize_body,
    normalize_email,
    normalize_name,
    normalize_subject,
)

Channel = Literal["email", "in_app", "webhook"]

MAX_NESTING = 32
IDENTIFIER_MAX = 255  # external_id and thread_ref
SUBJECT_RAW_MAX = 5_000
NAME_RAW_MAX = 1_000
METADATA_KEYS_MAX = 100
METADATA_BYTES_MAX = 32 * 1024
MESSAGE_ID_MAX = 998  # RFC 5322 line length
REFERENCES_MAX = 100


class IngestPayload(msgspec.Struct, forbid_unknown_fields=False, kw_only=True):
    """One inbound ticket or follow-up as the caller sends it.

    Unknown fields are ignored: a caller cannot set what the pipeline decides (status, priority, category).
    """

    external_id: str
    channel: Channel = "in_app"
    customer_email: str
    subject: str = ""
    body: str
    customer_name: str | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    thread_ref: str | None = None
    # Email bridge headers, used to thread replies onto their ticket.
    message_id: str | None = None
    in_reply_to: str | None = None
    references: list[str] = msgspec.field(default_factory=list)


class PayloadError(Exception):
    """A client mistake in the payload: 400 when it is not JSON at all, 422 when it is the wrong JSON."""

    def __init__(self, status: int, detail: str, *, field: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.field = field


# --- decoding -----------------------------------------------------------------------------------------------

# A string, or one character of structure. The string alternative cannot fail once it has its opening quote:
# possessive, escapes skipped, and an unterminated string runs to the end of the text (as it does for a
# decoder). So the scan never backtracks or restarts inside a string and reads each character once; the old
# pattern required the closing quote and, without one, was retried at every escaped quote: quadratic.
_JSON_STRUCTURE = re.compile(r'"[^"\\]*+(?:\\[\s\S][^"\\]*+)*+"?|[\[\]{}:]')
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_JSONB_UNSAFE = re.compile("[\x00\ud800-\udfff]")


def _scan_nesting(text: str) -> tuple[bool, str | None]:
    """(deeper than MAX_NESTING, the top-level key it happens under): one left-to-right pass, linear in the
    text whatever the text, that stops at the first bracket too deep."""
    if text.count("[") + text.count("{") <= MAX_NESTING:
        return False, None  # no deeper than its opening brackets (those inside strings included)
    depth = 0
    key: tuple[int, int] | None = None  # where the key is, decoded only if the scan refuses
    last_string = (0, 0)
    for token in _JSON_STRUCTURE.finditer(text):
        first = text[token.start()]
        if first == '"':
            last_string = token.span()
        elif first in "[{":
            depth += 1
            if depth > MAX_NESTING:
                return True, None if key is None else _json_string_value(text[key[0] : key[1]])
        elif first in "]}":
            depth -= 1
        elif depth == 1:  # a ':' in the top-level object: the string before it was a key
            key = last_string
    return False, None


def _check_nesting(text: str) -> None:
    """Reject JSON nested deeper than MAX_NESTING, naming the top-level key it happens under.

    Scanned on the text, before decoding, so a pathological document never reaches a recursive decoder.
    """
    too_deep, top_level_key = _scan_nesting(text)
    if too_deep:
        raise PayloadError(422, f"JSON is nested deeper than {MAX_NESTING} levels", field=top_level_key)


def _json_string_value(lexeme: str) -> str:
    try:
        value = json.loads(lexeme)
    except ValueError:
        return lexeme[1:-1]
    return value if isinstance(value, str) else lexeme[1:-1]


def strict_json_loads(text: str) -> Any:
    """`json.loads` that refuses what JSON's grammar does not have or a float cannot hold: NaN, Infinity, 1e999.

    Raises ValueError (json.JSONDecodeError for malformed text) or RecursionError for nesting deeper than
    MAX_NESTING, refused by a linear scan before the recursive decoder sees it.
    """
    if _scan_nesting(text)[0]:
        raise RecursionError(f"JSON is nested deeper than {MAX_NESTING} levels")
    return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is out of range")
    return value


def _decode_json(text: str) -> Any:
    try:
        return msgspec.json.decode(text)
    except msgspec.ValidationError as exc:  # valid JSON msgspec cannot represent, e.g. 1e999
        raise PayloadError(422, f"unsupported JSON value: {exc}") from None
    except msgspec.DecodeError as exc:
        if not _SURROGATE_ESCAPE.search(text):
            raise PayloadError(400, f"malformed JSON: {exc}") from None
        msgspec_error = exc
    # JSON's grammar allows lone UTF-16 surrogate escapes ("\ud800") and msgspec refuses them. The standard
    # library decodes them; normalization and sanitize_for_jsonb then drop them from every string kept.
    try:
        return strict_json_loads(text)
    except (ValueError, RecursionError):
        raise PayloadError(400, f"malformed JSON: {msgspec_error}") from None


def sanitize_for_jsonb(value: Any) -> Any:
    """A copy of decoded JSON that Postgres jsonb accepts: NUL and lone surrogates removed from every string
    (keys included), non-finite floats as null. Recursive: callers bound the depth (parse_payload does)."""
    if isinstance(value, str):
        return _JSONB_UNSAFE.sub("", value)
    if isinstance(value, dict):
        return {_JSONB_UNSAFE.sub("", str(key)): sanitize_for_jsonb(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [sanitize_for_jsonb(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# --- validation ---------------------------------------------------------------------------------------------

_ERROR_PATH = re.compile(r"at `\$\.([^`.\[]+)")
_MISSING_FIELD = re.compile(r"missing required field `([^`]+)`")


def _field_of(error: msgspec.ValidationError) -> str | None:
    message = str(error)
    found = _ERROR_PATH.search(message) or _MISSING_FIELD.search(message)
    return found.group(1) if found else None


def _require_identifier(value: str, field: str) -> None:
    if not 1 <= len(value) <= IDENTIFIER_MAX:
        raise PayloadError(422, f"{field} must be 1 to {IDENTIFIER_MAX} characters", field=field)
    if not value.isprintable() or not value.strip():
        raise PayloadError(422, f"{field} must be printable characters, no control or invisible ones", field=field)


@functools.lru_cache(maxsize=16384)
def _email_address(raw: str) -> str:
    # Cached: the same customers write again and again, and validation is the costliest check per request
    # (~25 µs, next to ~3 µs for the rest of parsing and validation). Sized for the senders of a busy day (16k
    # addresses, ~4 MB): with fewer entries than active senders an LRU cache misses on every request.
    addr = raw.strip()
    if not addr:
        raise PayloadError(422, "customer_email is required", field="customer_email")
    try:
        # test_environment admits the reserved .test TLD: harmless without a deliverability check, and what
        # staging rigs use. Other special-use names (localhost, .local, .invalid) stay invalid.
        validated = validate_email(addr, check_deliverability=False, test_environment=True)
    except ValueError as exc:  # EmailNotValidError, and any codec error underneath
        detail = f"customer_email is not a valid address: {exc}"
        raise PayloadError(422, detail, field="customer_email") from None
    return normalize_email(validated.normalized)


def _message_id(raw: str | None, field: str) -> str | None:
    if raw is None or not raw.strip():
        return None
    value = raw.strip()
    if len(value) > MESSAGE_ID_MAX or not value.isprintable():
        raise PayloadError(
            422, f"{field} must be a printable message id of at most {MESSAGE_ID_MAX} characters", field=field
        )
    return value


def _references(raw: list[str]) -> list[str]:
    # A bridge may pass the References header as one string; message ids never contain whitespace.
    ids = [part for item in raw for part in item.split()]
    for value in ids:
        _message_id(value, "references")
    if len(ids) > REFERENCES_MAX:
        # Keep the thread root and the most recent ancestors, as mail clients do when trimming References.
        ids = ids[:1] + ids[-(REFERENCES_MAX - 1) :]
    return ids


def _check_metadata(metadata: dict[str, Any]) -> None:
    if len(metadata) > METADATA_KEYS_MAX:
        raise PayloadError(422, f"metadata may have at most {METADATA_KEYS_MAX} keys", field="metadata")
    size = len(msgspec.json.encode(sanitize_for_jsonb(metadata)))
    if size > METADATA_BYTES_MAX:
        raise PayloadError(
            422, f"metadata is {size} bytes as JSON; the limit is {METADATA_BYTES_MAX}", field="metadata"
        )


def _validated(payload: IngestPayload) -> IngestPayload:
    _require_identifier(payload.external_id, "external_id")
    customer_email = _email_address(payload.customer_email)
    if len(payload.subject) > SUBJECT_RAW_MAX:
        raise PayloadError(422, f"subject is longer than {SUBJECT_RAW_MAX} characters", field="subject")
    if payload.customer_name is not None and len(payload.customer_name) > NAME_RAW_MAX:
        detail = f"customer_name is longer than {NAME_RAW_MAX} characters"
        raise PayloadError(422, detail, field="customer_name")
    if not _normalized_body(payload.body, payload.channel).text:
        raise PayloadError(
            422,
            "body is empty after normalization (markup, quoted history, invisible characters removed)",
            field="body",
        )
    _check_metadata(payload.metadata)
    if payload.thread_ref is not None:
        _require_identifier(payload.thread_ref, "thread_ref")
    return msgspec.structs.replace(
        payload,
        customer_email=customer_email,
        message_id=_message_id(payload.message_id, "message_id"),
        in_reply_to=_message_id(payload.in_reply_to, "in_reply_to"),
        references=_references(payload.references),
    )


@functools.lru_cache(maxsize=32)
def _normalized_body(body: str, channel: str) -> NormalizedBody:
    """Validation and normalization both need the normalized body; compute it once per request."""
    return normalize_body(body, channel=channel)


def parse_payload(raw: bytes) -> tuple[IngestPayload, dict[str, Any]]:
    """Decode and validate a request body; returns the payload and the decoded object, jsonb-safe, for audit.

    Raises PayloadError only: 400 for bytes that are not UTF-8 JSON, 422 (naming the field) for the rest.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PayloadError(400, "body is not valid UTF-8") from None
    text = text.removeprefix("\ufeff")  # a BOM some clients still prepend
    _check_nesting(text)
    decoded = _decode_json(text)
    if not isinstance(decoded, dict):
        raise PayloadError(422, f"the payload must be a JSON object, not {type(decoded).__name__}")
    try:
        payload = msgspec.convert(decoded, IngestPayload)
    except msgspec.ValidationError as exc:
        raise PayloadError(422, str(exc), field=_field_of(exc)) from None
    except UnicodeEncodeError:
        # A lone UTF-16 surrogate in a key or an enum value: msgspec cannot even compare it.
        raise PayloadError(422, "a field name or the channel contains a lone UTF-16 surrogate") from None
    # NUL and lone surrogates reach a decoded string only through a \u escape (JSON has no raw control
    # characters, UTF-8 no surrogates), and msgspec refuses non-finite numbers: without one the copy is the same.
    raw_object = sanitize_for_jsonb(decoded) if "\\u" in text else decoded
    return _validated(payload), raw_object


# --- the normalized ticket ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NormalizedTicket:
    external_id: str
    channel: Channel
    customer_email: str
    customer_name: str | None
    subject: str
    body: str
    metadata: dict[str, Any]
    thread_ref: str | None
    message_id: str | None
    in_reply_to: str | None
    references: tuple[str, ...]
    content_hash: str  # sha256 of the normalized content: equal for an identical replay, different otherwise
    flags: dict[str, int | bool]  # what normalization removed, kept for reviewers


def normalize_payload(payload: IngestPayload) -> NormalizedTicket:
    """The ticket as stored: every text normalized, metadata jsonb-safe, and the content hash over both."""
    body = _normalized_body(payload.body, payload.channel)
    customer_name = normalize_name(payload.customer_name) if payload.customer_name is not None else ""
    content: dict[str, Any] = {
        "external_id": payload.external_id,
        "channel": payload.channel,
        "customer_email": normalize_email(payload.customer_email),
        "subject": normalize_subject(payload.subject),
        "body": body.text,
        "customer_name": customer_name or None,
        "metadata": sanitize_for_jsonb(payload.metadata),
        "thread_ref": payload.thread_ref,
    }
    # Sorted keys at every level make the encoding canonical: same content, same bytes, same hash.
    content_hash = hashlib.sha256(msgspec.json.encode(content, order="sorted")).hexdigest()
    return NormalizedTicket(
        external_id=content["external_id"],
        channel=payload.channel,
        customer_email=content["customer_email"],
        customer_name=content["customer_name"],
        subject=content["subject"],
        body=content["body"],
        metadata=content["metadata"],
        thread_ref=content["thread_ref"],
        message_id=payload.message_id,
        in_reply_to=payload.in_reply_to,
        references=tuple(payload.references),
        content_hash=content_hash,
        flags={
            "removed_invisible": body.removed_invisible,
            "removed_hidden_html": body.removed_hidden_html,
            "trimmed_quote": body.trimmed_quote,
            "truncated": body.truncated,
        },
    )
