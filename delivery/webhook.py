"""The webhook channel: a Standard Webhooks-signed JSON POST of the reply to the integration's callback URL.

`webhook-id` is the idempotency key, so a re-send after a crash can be dropped by the receiver. The body is
built only from stored values (the delivery row and its ticket), so every send of one reply (a retry, or the
re-send after a crash between the receiver's 2xx and our commit) is byte-identical: a receiver that refuses a
reused key with a different payload (IETF Idempotency-Key) still accepts it. Only the `webhook-timestamp` header
(and so the signature over `id.timestamp.body`) is the time of each send, as Standard Webhooks requires.

The body (`type` "ticket.reply"): `ticket_id`, `external_id`, `customer_email`, `subject`, `body` (the reply
text), `attempt_id` (the agent attempt that wrote it, or the one a reviewer answered; null when none), and
`created_at` (RFC 3339, UTC: when the reply was queued, not when this copy was sent).

The URL passes the SSRF guard and the request goes to the address that was checked; redirects are never followed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from core.settings import Settings
from delivery.model import Delivery, SendOutcome
from delivery.ssrf import CheckedTarget, UnsafeCallback, check_callback_url
from ingest.signatures import standard_webhook_headers

log = logging.getLogger(__name__)

WEBHOOK_TIMEOUT_S = 10.0
EVENT_TYPE = "ticket.reply"
USER_AGENT = "DeskPilot-Webhooks/1.0"


def ticket_callback_url(ticket_metadata: Mapping[str, Any] | None, settings: Settings) -> str | None:
    """The one rule for where a ticket's webhook replies go: its own `metadata.callback_url` (set by its source
    integration) when that is an http(s) URL on a host of DESKPILOT_CALLBACK_HOSTS, else the configured default
    `DESKPILOT_CALLBACK_URL`. A ticket's caller never picks an arbitrary receiver for the reply."""
    own = ticket_metadata.get("callback_url") if isinstance(ticket_metadata, Mapping) else None
    if (
        isinstance(own, str)
        and own.strip().lower().startswith(("https://", "http://"))
        and callback_host_allowed(own.strip(), settings.callback_hosts)
    ):
        return own.strip()
    return settings.callback_url


def callback_host_allowed(url: str, allowed: tuple[str, ...]) -> bool:
    """The URL's host is on the allow-list: exactly, or under an entry `*.example.com` (not that host itself)."""
    try:
        host = (urlsplit(url).hostname or "").lower().rstrip(".")
    except ValueError:
        return False
    if not host:
        return False
    return any(host == entry or (entry.startswith("*.") and host.endswith(entry[1:])) for entry in allowed)


def webhook_payload(delivery: Delivery) -> bytes:
    """The JSON body: only stored values, so every send of the delivery is byte-identical."""
    payload: dict[str, Any] = {
        "type": EVENT_TYPE,
        "ticket_id": str(delivery.ticket_id),
        "external_id": delivery.ticket_external_id,
        "customer_email": delivery.customer_email,
        "subject": delivery.subject or delivery.ticket_subject,
        "body": delivery.body,
        "attempt_id": str(delivery.attempt_id) if delivery.attempt_id else None,
        "created_at": delivery.created_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
    }
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def outcome_for_status(response: httpx.Response, now: datetime) -> SendOutcome:
    """2xx delivered; 410 endpoint gone; 429/5xx retried (Retry-After honoured); else failed."""
    code = response.status_code
    if 200 <= code < 300:
        return SendOutcome.sent(f"HTTP {code}")
    if code == 410:
        return SendOutcome.disabled("HTTP 410: the callback endpoint is disabled")
    if code == 429 or code >= 500:
        return SendOutcome.retry(f"HTTP {code}", parse_retry_after(response.headers.get("retry-after"), now))
    if 300 <= code < 400:
        return SendOutcome.failed(f"HTTP {code}: redirects are not followed")
    return SendOutcome.failed(f"HTTP {code}: the callback refused the delivery")


async def post_pinned(target: CheckedTarget, body: bytes, headers: dict[str, str]) -> httpx.Response:
    """POST to the checked address with the original host in the Host header and TLS SNI/verification."""
    extensions: dict[str, Any] = {}
    if target.scheme == "https":
        extensions["sni_hostname"] = target.host
    auth = httpx.BasicAuth(target.username, target.password or "") if target.username else None
    async with httpx.AsyncClient(
        timeout=WEBHOOK_TIMEOUT_S, follow_redirects=False, trust_env=False, auth=auth
    ) as client:
        request = client.build_request(
            "POST",
            target.pinned_url,
            content=body,
            headers={**headers, "Host": target.host_header},
            extensions=extensions,
        )
        return await client.send(request)


async def send_webhook(delivery: Delivery, settings: Settings) -> SendOutcome:
    """Sign and POST one reply; the outcome says whether it was accepted, should be retried, or is dead.

    The body is the same on every send; the `webhook-timestamp` header is the wall clock of this send (the
    receiver checks it against its own), and the signature covers both.
    """
    url = ticket_callback_url(delivery.ticket_metadata, settings)
    if not url:
        return SendOutcome.failed(
            "no callback URL: set DESKPILOT_CALLBACK_URL (or DESKPILOT_CALLBACK_HOSTS for tickets' own "
            "metadata.callback_url)"
        )
    try:
        target = await check_callback_url(url, allow_private=settings.allow_private_callbacks)
    except UnsafeCallback as exc:
        return SendOutcome.failed(f"callback refused: {exc}")
    sent_at = datetime.now(UTC)
    body = webhook_payload(delivery)
    headers = {"content-type": "application/json", "user-agent": USER_AGENT}
    secret = settings.callback_secret or settings.webhook_secret
    if secret:
        try:
            headers.update(
                standard_webhook_headers(secret, delivery.idempotency_key, body, timestamp=int(sent_at.timestamp()))
            )
        except ValueError as exc:
            return SendOutcome.retry(f"the callback secret is unusable: {exc}")
    else:
        log.warning("webhook delivery %s is sent unsigned: no DESKPILOT_CALLBACK_SECRET configured", delivery.id)
        headers.update({"webhook-id": delivery.idempotency_key, "webhook-timestamp": str(int(sent_at.timestamp()))})
    try:
        response = await post_pinned(target, body, headers)
    except httpx.TimeoutException:
        return SendOutcome.retry(f"callback timed out after {WEBHOOK_TIMEOUT_S:g} s")
    except httpx.HTTPError as exc:
        # The exception text can carry the URL (with tokens in the query): name the error type only.
        return SendOutcome.retry(f"callback connection failed: {type(exc).__name__}")
    return outcome_for_status(response, sent_at)
