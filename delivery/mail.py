"""The email channel: a reply built as a MIME message and sent over SMTP, or written to the local mail spool.

The idempotency key is the Message-ID, so a re-send after a crash carries the same id and the receiving side
can drop it. Every header value is checked for line breaks (header injection is refused, not cleaned up), and
the HTML part is the escaped plain text: no links are made from text and nothing remote is referenced.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import formatdate, getaddresses
from pathlib import Path
from urllib.parse import unquote, urlsplit

import aiosmtplib

from core.settings import Settings
from delivery.model import Delivery, SendOutcome
from tickets.subjects import reply_subject

log = logging.getLogger(__name__)

SMTP_TIMEOUT_S = 30.0
# Codes a mail server uses for "your credentials are wrong": an operator can fix those, so they are retried.
_AUTH_CODES = frozenset({530, 534, 535, 538})
_MESSAGE_ID = re.compile(r"^<[^<>\s@]+@[^<>\s@]+>$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029\u0085]")
MAX_REFERENCES = 10


class HeaderInjection(ValueError):
    """A header value carries a line break or another control character."""


def checked_header(name: str, value: str) -> str:
    if _CONTROL.search(value):
        raise HeaderInjection(f"the {name} header contains a line break or control character; refused")
    return value


def message_id_for_key(key: str) -> str:
    """The Message-ID for a key: the key itself when it is one, else a stable id derived from it."""
    if _MESSAGE_ID.match(key):
        return key
    local = re.sub(r"[^A-Za-z0-9.-]+", "-", key).strip(".-")[:120] or "reply"
    return f"<{local}.{hashlib.sha256(key.encode()).hexdigest()[:12]}@deskpilot>"


def normalized_message_id(raw: str) -> str | None:
    """A customer's Message-ID in `<...>` form, or None when it is unusable (from inbound data: never
    trusted).
    """
    value = raw.strip()
    if value and not value.startswith("<"):
        value = f"<{value}>"
    return value if _MESSAGE_ID.match(value) else None


def build_reply(delivery: Delivery, settings: Settings) -> EmailMessage:
    """The reply as a multipart/alternative message (plain text and escaped HTML). Raises HeaderInjection."""
    recipient = checked_header("To", delivery.recipient or delivery.customer_email)
    if len(getaddresses([recipient])) != 1 or "@" not in recipient or "," in recipient:
        raise HeaderInjection("the recipient must be exactly one address")
    address = getaddresses([recipient])[0][1]
    if delivery.customer_email and address.lower() != delivery.customer_email.lower():
        # A reply only ever goes to the ticket's own customer, whatever address a delivery row came to carry.
        raise ValueError("the recipient is not the ticket's customer address")
    message = EmailMessage(policy=SMTP_POLICY)
    message["Message-ID"] = checked_header("Message-ID", message_id_for_key(delivery.idempotency_key))
    message["From"] = checked_header("From", settings.smtp_from)
    message["To"] = recipient
    message["Subject"] = checked_header("Subject", reply_subject(delivery.subject or delivery.ticket_subject))
    message["Date"] = formatdate(usegmt=True)
    thread = [mid for mid in (normalized_message_id(m) for m in delivery.customer_message_ids) if mid]
    if thread:
        message["In-Reply-To"] = thread[-1]
        message["References"] = " ".join(dict.fromkeys(thread[-MAX_REFERENCES:]))
    if delivery.origin == "agent":
        message["Auto-Submitted"] = "auto-replied"  # RFC 3834: auto-responders must not answer it
    message.set_content(delivery.body, subtype="plain", charset="utf-8")
    message.add_alternative(html_body(delivery.body), subtype="html", charset="utf-8")
    return message


def html_body(text: str) -> str:
    """The reply text as HTML: escaped, paragraphs kept, nothing clickable or remote."""
    paragraphs = [p for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]
    rendered = "\n".join(f"<p>{html.escape(p).replace(chr(10), '<br>')}</p>" for p in paragraphs)
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"></head>\n'
        f'<body style="font-family: sans-serif; line-height: 1.4">\n{rendered}\n</body></html>\n'
    )


# --- SMTP ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SmtpConfig:
    hostname: str
    port: int
    use_tls: bool
    username: str | None = None
    password: str | None = None

    @classmethod
    def from_url(cls, url: str) -> SmtpConfig:
        """`smtp://[user:pass@]host[:port]` (STARTTLS: required with a user, used when offered without) or
        `smtps://...` (implicit TLS)."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in {"smtp", "smtps"}:
            raise ValueError("DESKPILOT_SMTP_URL must start with smtp:// or smtps://")
        try:
            port = parts.port
        except ValueError:
            raise ValueError("DESKPILOT_SMTP_URL has an invalid port") from None
        if not parts.hostname:
            raise ValueError("DESKPILOT_SMTP_URL has no host")
        return cls(
            hostname=parts.hostname,
            port=port or (465 if scheme == "smtps" else 25),
            use_tls=scheme == "smtps",
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password is not None else None,
        )


def smtp_failure(exc: aiosmtplib.SMTPException) -> SendOutcome:
    """Map a refusal to an outcome: 4xx (and credential problems) are retried, other 5xx fail for good."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = [r.code for r in exc.recipients]
        detail = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients)
        if codes and all(500 <= c < 600 for c in codes):
            return SendOutcome.failed(f"SMTP recipient refused: {detail}")
        return SendOutcome.retry(f"SMTP recipient deferred: {detail}")
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        detail = f"SMTP {exc.code} {exc.message}".strip()
        if 500 <= exc.code < 600 and exc.code not in _AUTH_CODES:
            return SendOutcome.failed(detail)
        return SendOutcome.retry(detail)
    return SendOutcome.retry(f"SMTP error: {type(exc).__name__}: {exc}")


async def send_smtp(message: EmailMessage, recipient: str, config: SmtpConfig) -> SendOutcome:
    # Credentials only travel encrypted: with a user name STARTTLS is required (a server, or a man in the middle
    # stripping the offer, that does not offer it gets no AUTH in clear: the send fails); without one, it is used
    # when offered. `smtps://` is TLS from the first byte.
    start_tls = False if config.use_tls else (True if config.username else None)
    try:
        await aiosmtplib.send(
            message,
            sender=_envelope_sender(message),
            recipients=[recipient],
            hostname=config.hostname,
            port=config.port,
            username=config.username,
            password=config.password,
            use_tls=config.use_tls,
            start_tls=start_tls,
            timeout=SMTP_TIMEOUT_S,
        )
    except aiosmtplib.SMTPException as exc:
        return smtp_failure(exc)
    except OSError as exc:
        return SendOutcome.retry(f"SMTP connection failed: {type(exc).__name__}: {exc}")
    return SendOutcome.sent(f"accepted by {config.hostname}:{config.port}")


def _envelope_sender(message: EmailMessage) -> str:
    addresses = getaddresses([str(message["From"])])
    return addresses[0][1] if addresses and addresses[0][1] else "postmaster@localhost"


# --- spool --------------------------------------------------------------------------------------------------


def spool_file_name(key: str) -> str:
    """A safe, stable file name for an idempotency key: the same key always lands on the same file."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("._")[:100] or "reply"
    return f"{readable}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.eml"


def write_spool_file(directory: Path, name: str, content: bytes) -> Path:
    """Atomic write: a temporary file in the same folder, fsynced, renamed over the target."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / name
    fd, temp_name = tempfile.mkstemp(prefix=".tmp-", suffix=".eml", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return target


async def send_email(delivery: Delivery, settings: Settings) -> SendOutcome:
    """Send one reply by SMTP, or spool it when no SMTP server is configured."""
    try:
        message = build_reply(delivery, settings)
    except (HeaderInjection, ValueError) as exc:
        return SendOutcome.failed(f"refused to build the email: {exc}")
    recipient = str(message["To"])
    if not settings.smtp_url:
        try:
            path = await asyncio.to_thread(
                write_spool_file,
                settings.spool_dir,
                spool_file_name(delivery.idempotency_key),
                message.as_bytes(),
            )
        except OSError as exc:
            return SendOutcome.retry(f"could not write the mail spool: {type(exc).__name__}: {exc}")
        return SendOutcome.sent(f"spooled to {path.name}")
    try:
        config = SmtpConfig.from_url(settings.smtp_url)
    except ValueError as exc:
        return SendOutcome.retry(str(exc))
    return await send_smtp(message, getaddresses([recipient])[0][1], config)
