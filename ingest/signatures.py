"""Standard Webhooks signatures (https://www.standardwebhooks.com): HMAC-SHA256 over `id.timestamp.body`,
several space-separated `v1,<base64>` signatures allowed for key rotation, a ±5 minute timestamp tolerance.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping

DEFAULT_TOLERANCE_S = 300
_SECRET_PREFIX = "whsec_"
_SIGNATURE_VERSION = "v1"
_TIMESTAMP_DIGITS_MAX = 12  # unix seconds until the year 33658; longer is garbage, not a time


class SignatureError(Exception):
    """The request is not authentically signed; `reason` says why, for logs and the 401 body."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def secret_bytes(secret: str) -> bytes:
    """The HMAC key: base64 after a `whsec_` prefix, otherwise the secret's UTF-8 bytes.

    Raises ValueError for a `whsec_` secret that is not base64: a configuration mistake, not a bad request.
    """
    if secret.startswith(_SECRET_PREFIX):
        try:
            return base64.b64decode(secret[len(_SECRET_PREFIX) :], validate=True)
        except binascii.Error as exc:
            raise ValueError("webhook secret starts with whsec_ but the rest is not valid base64") from exc
    return secret.encode("utf-8", "surrogatepass")


def _digest(key: bytes, msg_id: str, timestamp: str, body: bytes) -> bytes:
    signed = f"{msg_id}.{timestamp}.".encode("utf-8", "surrogatepass") + body
    return hmac.new(key, signed, hashlib.sha256).digest()


def sign_webhook(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `v1,<base64>` signature of one message, as sent in the `webhook-signature` header."""
    digest = _digest(secret_bytes(secret), msg_id, str(timestamp), body)
    return f"{_SIGNATURE_VERSION},{base64.b64encode(digest).decode('ascii')}"


def standard_webhook_headers(secret: str, msg_id: str, body: bytes, *, timestamp: int | None = None) -> dict[str, str]:
    """The three Standard Webhooks headers for an outbound delivery of `body`."""
    sent_at = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(sent_at),
        "webhook-signature": sign_webhook(secret, msg_id, sent_at, body),
    }


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    # Plain dicts are case-sensitive; HTTP header names are not.
    for key, candidate in headers.items():
        if key.lower() == name:
            return candidate
    return None


def _decode_signature(encoded: str) -> bytes | None:
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):  # ValueError: non-ASCII characters
        return None


def verify_webhook(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float | None = None,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
) -> str:
    """Check a Standard Webhooks signature over the exact request bytes and return the `webhook-id`.

    Raises SignatureError for a missing header, a timestamp outside ±tolerance_s, or no matching signature.
    """
    msg_id = _header(headers, "webhook-id")
    timestamp = _header(headers, "webhook-timestamp")
    signatures = _header(headers, "webhook-signature")
    if not msg_id:
        raise SignatureError("missing webhook-id header")
    if not timestamp:
        raise SignatureError("missing webhook-timestamp header")
    if not signatures:
        raise SignatureError("missing webhook-signature header")

    timestamp = timestamp.strip()
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= _TIMESTAMP_DIGITS_MAX):
        raise SignatureError("webhook-timestamp is not a unix time in seconds")
    current = time.time() if now is None else now
    if abs(current - int(timestamp)) > tolerance_s:
        raise SignatureError("timestamp outside tolerance")

    expected = _digest(secret_bytes(secret), msg_id, timestamp, body)
    matched = False
    # Compare against every signature, without stopping early, so timing says nothing about which one matched.
    for entry in signatures.split():
        version, _, encoded = entry.partition(",")
        if version != _SIGNATURE_VERSION:
            continue  # other schemes (v1a asymmetric) may sit alongside ours
        provided = _decode_signature(encoded)
        if provided is not None and hmac.compare_digest(provided, expected):
            matched = True
    if not matched:
        raise SignatureError("no matching signature")
    return msg_id
