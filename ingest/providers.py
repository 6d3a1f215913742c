"""Mail providers' inbound webhooks as ingest payloads, and each provider's own authentication.

Parsing takes what the HTTP layer already decoded (the JSON document, the form fields and uploaded files) and
returns what `ingest.mime.parse_mime` returns: an `InboundEmail` (validated `IngestPayload`, audit record,
attachments, Reply-To) or an `IgnoredEmail` for auto-replies and bounces. Same rules as raw MIME: the customer is
the From mailbox, the Message-ID is the idempotency key, threading headers are kept, attachments are refused
above the limits with `ContentTooLarge` (413), and every other client mistake is a `PayloadError` (422) naming
the provider's own field (`FromFull.Email`, `charsets`, `attachment-2` ...). Fields a provider adds that are not
read here are ignored: providers add fields over time, and refusing them would bounce mail.

- **Postmark** (`parse_postmark`): the inbound JSON (`FromFull`, `Subject`, `TextBody`, `HtmlBody`, `Headers`,
  `Attachments` with base64 `Content` ...). Without a Message-ID header, Postmark's own `MessageID` is the key.
- **SendGrid Inbound Parse** (`parse_sendgrid`): the *parsed* form (`headers`, `from`, `subject`, `text`, `html`,
  `envelope`, `charsets`, `attachment-info`, files `attachment1`..) or, with "POST the raw, full MIME message"
  enabled, the *raw* form whose `email` field is the whole message (parsed by `parse_mime`). `text` and `html`
  arrive in the charset `charsets` names: pass them as bytes and they are decoded strictly here.
- **Mailgun routes** (`parse_mailgun`): the parsed form of a `forward()` route (`from`, `subject`, `body-plain`,
  `body-html`, `message-headers`, `Message-Id`, `In-Reply-To`, `References`, `attachment-count`, files
  `attachment-1`..), or the MIME form (`body-mime`, a route URL ending in "mime").

Authentication, checked before parsing (`SignatureError` -> 401):
- Postmark signs nothing; its documented protection is HTTP basic auth in the webhook URL
  (`https://user:password@host/...`): `verify_basic_auth` (constant-time).
- SendGrid: a shared secret, either as the password of basic auth in the Parse URL or as a secret segment of the
  URL path: `verify_sendgrid_secret` (constant-time). SendGrid can also sign Parse requests (ECDSA P-256, through
  a "security policy"); verifying that needs an ECDSA implementation this project does not ship yet.
- Mailgun: `HMAC-SHA256(signing key, timestamp + token)` in hex, the timestamp within a window, and the token
  single-use: `verify_mailgun` / `verify_mailgun_async` with a `seen(token, fingerprint)` callable the controller
  backs with the database. The signature covers only timestamp and token, not the message, so a token may carry
  one content only: a second use with the *same* fields is a provider retry (ingest answers it as a duplicate),
  with different fields it is a forgery and refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from email import policy
from email.headerregistry import Address
from email.parser import HeaderParser
from typing import Any

from ingest.mime import (
    DEFAULT_LIMITS,
    Attachment,
    ContentTooLarge,
    EmailFields,
    IgnoredEmail,
    MimeLimits,
    ParsedEmail,
    build_inbound,
    check_attachment_count,
    decode_subject,
    decode_text,
    detect_automatic,
    external_id_for,
    make_attachment,
    message_ids,
    parse_mailboxes,
    parse_mime,
    reply_addresses,
)
from ingest.normalize import clean_text
from ingest.schemas import PayloadError, strict_json_loads
from ingest.signatures import SignatureError

FormValue = str | bytes
FormFields = Mapping[str, FormValue | Sequence[FormValue]]

DEFAULT_MAILGUN_TOLERANCE_S = 300
_JSON_FIELD_MAX = 1024 * 1024  # message-headers, attachment-info, charsets, envelope: never near this
_METADATA_ADDRESSES_MAX = 20


@dataclass(frozen=True, slots=True)
class FormFile:
    """One uploaded file of a multipart/form-data request, as the controller read it."""

    data: bytes
    filename: str | None = None
    content_type: str | None = None


# --- reading form fields ------------------------------------------------------------------------------------


def _lookup(fields: FormFields, name: str) -> FormValue | Sequence[FormValue] | None:
    if name in fields:
        return fields[name]
    lowered = name.lower()
    for key, value in fields.items():  # Mailgun posts headers as fields in their own capitalisation
        if key.lower() == lowered:
            return value
    return None


def _form_values(fields: FormFields, name: str) -> list[FormValue]:
    value = _lookup(fields, name)
    if value is None:
        return []
    if isinstance(value, str | bytes):
        return [value]
    if isinstance(value, Sequence):
        items: list[FormValue] = [item for item in value if isinstance(item, str | bytes)]
        if len(items) == len(value):
            return items
    raise PayloadError(422, f"{name} must be a text field", field=name)


def _text(value: FormValue, name: str, charset: str | None = "utf-8") -> str:
    if isinstance(value, str):
        return value
    return decode_text(value, charset, field=name, what=f"the {name} field")


def _form_text(fields: FormFields, name: str, *, charset: str | None = "utf-8") -> str | None:
    values = _form_values(fields, name)
    return _text(values[0], name, charset) if values else None


def _json_field(fields: FormFields, name: str, kind: type) -> Any:
    raw = _form_text(fields, name)
    if raw is None or not raw.strip():
        return None
    if len(raw) > _JSON_FIELD_MAX:
        raise PayloadError(422, f"{name} is longer than {_JSON_FIELD_MAX} characters", field=name)
    try:
        value = strict_json_loads(raw)
    except (ValueError, RecursionError):
        raise PayloadError(422, f"{name} is not valid JSON", field=name) from None
    if not isinstance(value, kind):
        raise PayloadError(422, f"{name} must be a JSON {kind.__name__}", field=name)
    return value


def _count(fields: FormFields, name: str) -> int:
    raw = _form_text(fields, name)
    if raw is None or not raw.strip():
        return 0
    if not (raw.strip().isascii() and raw.strip().isdigit() and len(raw.strip()) <= 6):
        raise PayloadError(422, f"{name} must be a whole number", field=name)
    return int(raw)


def _fingerprint(fields: FormFields, files: Mapping[str, FormFile], skip: frozenset[str]) -> str:
    digest = hashlib.sha256()
    for key in sorted(fields):
        if key.lower() in skip:
            continue
        for value in _form_values(fields, key):
            data = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
            digest.update(f"{key}\x00{len(data)}\x00".encode("utf-8", "surrogatepass") + data)
    for key in sorted(files):
        digest.update(f"file\x00{key}\x00".encode("utf-8", "surrogatepass") + hashlib.sha256(files[key].data).digest())
    return digest.hexdigest()


def _first_header(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    lowered = name.lower()
    for key, value in headers:
        if key.strip().lower() == lowered:
            return value
    return None


def _report_type(headers: Sequence[tuple[str, str]]) -> str | None:
    """report-type of a multipart/report, from the Content-Type header a provider passed on."""
    content_type = _first_header(headers, "Content-Type")
    if not content_type or "multipart/report" not in content_type.lower():
        return None
    found = re.search(r'report-type\s*=\s*"?([A-Za-z-]+)', content_type)
    return found.group(1).lower() if found else None


def _sender(headers: Sequence[tuple[str, str]], from_field: str | None, field: str) -> Address:
    """The From mailbox: from the raw From header when the provider passed one on (its encoded words keep a
    display name like "Müller, Hans" in one piece), else from the provider's decoded field."""
    raw_from = _first_header(headers, "From")
    if raw_from:
        try:
            mailboxes = parse_mailboxes(raw_from, "From")
        except PayloadError:
            mailboxes = []
        if mailboxes:
            return mailboxes[0]
    mailboxes = parse_mailboxes(from_field, field)
    if not mailboxes:
        raise PayloadError(422, f"{field} has no valid sender address", field=field)
    return mailboxes[0]


def _lenient_sender(headers: Sequence[tuple[str, str]], from_field: str | None) -> str | None:
    try:
        return _sender(headers, from_field, "from").addr_spec
    except PayloadError:
        return from_field


def _addresses(raw: str | None) -> list[str]:
    """Addresses for metadata only; unreadable ones are left out."""
    try:
        found = [a.addr_spec.lower() for a in parse_mailboxes(raw, "To") if a.username and a.domain]
    except PayloadError:
        return []
    return [clean_text(a) for a in found[:_METADATA_ADDRESSES_MAX]]


def _id_material(*parts: str | None) -> bytes:
    return "\x00".join(part or "" for part in parts).encode("utf-8", "surrogatepass")


def _ignored(
    source: str,
    reason: tuple[str, str],
    message_id: str | None,
    id_material: bytes,
    fallback: str | None = None,
) -> IgnoredEmail:
    return IgnoredEmail(
        reason=reason[0],
        detail=reason[1],
        external_id=external_id_for(message_id, id_material, fallback),
        source=source,
    )


def _raw_message(value: FormValue) -> bytes:
    # A MIME message is ASCII or UTF-8 on the wire; a controller that decoded it with surrogateescape gets it back.
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")


# --- Postmark -----------------------------------------------------------------------------------------------

_POSTMARK_FIELDS = {
    "customer_email": "FromFull.Email",
    "customer_name": "FromName",
    "subject": "Subject",
    "body": "TextBody",
    "external_id": "MessageID",
    "message_id": "Headers.Message-ID",
    "in_reply_to": "Headers.In-Reply-To",
    "references": "Headers.References",
    "metadata": "metadata",
}


def _postmark_document(document: Mapping[str, Any] | bytes) -> Mapping[str, Any]:
    if isinstance(document, Mapping):
        return document
    try:
        text = bytes(document).decode("utf-8").removeprefix("\ufeff")
        value = strict_json_loads(text)
    except UnicodeDecodeError:
        raise PayloadError(400, "body is not valid UTF-8") from None
    except (ValueError, RecursionError):
        raise PayloadError(400, "malformed JSON") from None
    if not isinstance(value, dict):
        raise PayloadError(422, f"the payload must be a JSON object, not {type(value).__name__}")
    return value


def _pm_str(data: Mapping[str, Any], key: str, label: str | None = None) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise PayloadError(422, f"{label or key} must be a string", field=label or key)
    return value


def _pm_list(data: Mapping[str, Any], key: str) -> list[Any]:
    value = data.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise PayloadError(422, f"{key} must be an array", field=key)
    return value


def _pm_headers(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    headers = []
    for index, item in enumerate(_pm_list(data, "Headers")):
        if not isinstance(item, dict):
            raise PayloadError(422, f"Headers[{index}] must be an object with Name and Value", field="Headers")
        name, value = item.get("Name"), item.get("Value")
        if not isinstance(name, str) or not isinstance(value, str):
            raise PayloadError(422, f"Headers[{index}] must have string Name and Value", field="Headers")
        headers.append((name, value))
    return headers


def _pm_recipients(data: Mapping[str, Any], key: str) -> list[str]:
    found = []
    for item in _pm_list(data, key):
        if isinstance(item, dict) and isinstance(item.get("Email"), str) and "@" in item["Email"]:
            found.append(clean_text(item["Email"]).lower())
    return found[:_METADATA_ADDRESSES_MAX]


def _pm_sender(data: Mapping[str, Any]) -> Address:
    from_full = data.get("FromFull")
    if from_full is not None and not isinstance(from_full, dict):
        raise PayloadError(422, "FromFull must be an object", field="FromFull")
    if from_full and from_full.get("Email"):
        email = _pm_str(from_full, "Email", "FromFull.Email") or ""
        name = _pm_str(from_full, "Name", "FromFull.Name") or _pm_str(data, "FromName") or ""
        if "@" not in email:
            raise PayloadError(422, "FromFull.Email has no valid sender address", field="FromFull.Email")
        username, _, domain = email.strip().rpartition("@")
        try:
            return Address(display_name=clean_text(name).replace("\n", " "), username=username, domain=domain)
        except (ValueError, TypeError, IndexError):
            raise PayloadError(422, "FromFull.Email has no valid sender address", field="FromFull.Email") from None
    return _sender([], _pm_str(data, "From"), "From")


def _pm_attachments(data: Mapping[str, Any], limits: MimeLimits) -> list[Attachment]:
    items = _pm_list(data, "Attachments")
    check_attachment_count(len(items), limits, "Attachments")
    attachments = []
    for index, item in enumerate(items):
        label = f"Attachments[{index}]"
        if not isinstance(item, dict):
            raise PayloadError(422, f"{label} must be an object", field="Attachments")
        declared = item.get("ContentLength")
        if isinstance(declared, int) and declared > limits.max_attachment_bytes:
            raise ContentTooLarge(
                f"{label} ({item.get('Name')!s:.100}) is {declared} bytes; the limit is {limits.max_attachment_bytes}",
                field="Attachments",
            )
        content = item.get("Content") or ""
        if not isinstance(content, str):
            raise PayloadError(422, f"{label}.Content must be a base64 string", field="Attachments")
        if len(content) > 4 * (limits.max_attachment_bytes // 3 + 2) + content.count("\n") + content.count("\r"):
            raise ContentTooLarge(
                f"{label} is over the {limits.max_attachment_bytes}-byte attachment limit", field="Attachments"
            )
        try:
            payload = base64.b64decode("".join(content.split()), validate=True)
        except (binascii.Error, ValueError):
            raise PayloadError(422, f"{label}.Content is not valid base64", field="Attachments") from None
        attachments.append(
            make_attachment(
                payload,
                filename=_pm_str(item, "Name", f"{label}.Name"),
                content_type=_pm_str(item, "ContentType", f"{label}.ContentType"),
                index=index,
                limits=limits,
                field="Attachments",
                content_id=_pm_str(item, "ContentID", f"{label}.ContentID"),
            )
        )
    return attachments


def parse_postmark(document: Mapping[str, Any] | bytes, *, limits: MimeLimits = DEFAULT_LIMITS) -> ParsedEmail:
    """Postmark's inbound webhook JSON (decoded, or the raw request body) as an ingest payload or an ignored
    auto-reply/bounce. Raises PayloadError (400 for a body that is not JSON, 413, 422)."""
    data = _postmark_document(document)
    headers = _pm_headers(data)
    message_id = next(iter(message_ids(_first_header(headers, "Message-ID"))), None)
    postmark_id = _pm_str(data, "MessageID")
    fallback = f"postmark:{postmark_id}" if postmark_id and postmark_id.strip() else None
    text = _pm_str(data, "TextBody")
    html = _pm_str(data, "HtmlBody")
    subject_raw = _pm_str(data, "Subject") or ""
    material = _id_material(_pm_str(data, "From"), _pm_str(data, "To"), _pm_str(data, "Date"), subject_raw, text, html)

    try:
        lenient_sender: str | None = _pm_sender(data).addr_spec
    except PayloadError:
        lenient_sender = _pm_str(data, "From") if isinstance(data.get("From"), str) else None
    return_path = _first_header(headers, "Return-Path")
    automatic = detect_automatic(
        headers,
        sender=lenient_sender,
        envelope_sender=None if return_path is None else return_path.strip().strip("<>").strip(),
        report_type=_report_type(headers),
    )
    if automatic is not None:
        return _ignored("postmark", automatic, message_id, material, fallback)

    sender = _pm_sender(data)
    reply_to = reply_addresses(parse_mailboxes(_pm_str(data, "ReplyTo"), "ReplyTo"))
    metadata: dict[str, Any] = {}
    to = _pm_recipients(data, "ToFull")
    cc = _pm_recipients(data, "CcFull")
    if to:
        metadata["to"] = to
    if cc:
        metadata["cc"] = cc
    for key, meta_key in (("Date", "date"), ("OriginalRecipient", "recipient"), ("MailboxHash", "mailbox_hash")):
        value = _pm_str(data, key)
        if value and value.strip():
            metadata[meta_key] = clean_text(value)[:200]
    fields = EmailFields(
        source="postmark",
        sender=sender,
        subject=subject_raw,  # decoded by Postmark; ingest normalization cleans it
        text=text,
        html=html,
        message_id=message_id,
        in_reply_to=message_ids(_first_header(headers, "In-Reply-To")),
        references=message_ids(_first_header(headers, "References")),
        reply_to=reply_to,
        attachments=_pm_attachments(data, limits),
        id_material=material,
        field_names=_POSTMARK_FIELDS,
        audit_headers=headers,
        email_metadata=metadata,
        fallback_external_id=fallback,
    )
    return build_inbound(fields)


# --- SendGrid Inbound Parse ---------------------------------------------------------------------------------

_SENDGRID_FIELDS = {
    "customer_email": "from",
    "customer_name": "from",
    "subject": "subject",
    "body": "text",
    "external_id": "headers",
    "message_id": "headers",
    "in_reply_to": "headers",
    "references": "headers",
    "metadata": "metadata",
}
_HEADER_PARSER = HeaderParser(policy=policy.default)


def _sendgrid_envelope(fields: FormFields) -> tuple[str | None, list[str]]:
    envelope = _json_field(fields, "envelope", dict) or {}
    sender = envelope.get("from")
    recipients = envelope.get("to")
    return (
        sender if isinstance(sender, str) else None,
        [clean_text(r).lower() for r in recipients[:_METADATA_ADDRESSES_MAX] if isinstance(r, str)]
        if isinstance(recipients, list)
        else [],
    )


def _sendgrid_charsets(fields: FormFields) -> dict[str, str]:
    charsets = _json_field(fields, "charsets", dict) or {}
    return {str(key): value for key, value in charsets.items() if isinstance(value, str)}


def _sendgrid_attachments(fields: FormFields, files: Mapping[str, FormFile], limits: MimeLimits) -> list[Attachment]:
    count = _count(fields, "attachments")
    check_attachment_count(count, limits)
    info = _json_field(fields, "attachment-info", dict) or {}
    content_ids = _json_field(fields, "content-ids", dict) or {}
    inline_keys = {value for value in content_ids.values() if isinstance(value, str)}
    cid_of = {value: key for key, value in content_ids.items() if isinstance(value, str)}
    attachments = []
    for index in range(count):
        key = f"attachment{index + 1}"
        upload = files.get(key)
        if upload is None:
            raise PayloadError(422, f"attachments says {count} but the file {key} is missing", field=key)
        entry = info.get(key)
        described: dict[str, Any] = entry if isinstance(entry, dict) else {}
        filename = described.get("filename") or described.get("name") or upload.filename
        content_type = described.get("type") or upload.content_type
        content_id = described.get("content-id") or cid_of.get(key)
        attachments.append(
            make_attachment(
                upload.data,
                filename=filename if isinstance(filename, str) else None,
                content_type=content_type if isinstance(content_type, str) else None,
                index=index,
                limits=limits,
                field=key,
                content_id=content_id if isinstance(content_id, str) else None,
                inline=key in inline_keys,
            )
        )
    return attachments


def parse_sendgrid(
    fields: FormFields,
    files: Mapping[str, FormFile] | None = None,
    *,
    limits: MimeLimits = DEFAULT_LIMITS,
) -> ParsedEmail:
    """SendGrid Inbound Parse form fields (parsed or raw variant) as an ingest payload or an ignored
    auto-reply/bounce. Pass `text` and `html` as the bytes received when possible: they are in the charset the
    `charsets` field names. Raises PayloadError (413, 422)."""
    files = files or {}
    envelope_sender, envelope_to = _sendgrid_envelope(fields)
    extras: dict[str, Any] = {"recipient": envelope_to[0]} if envelope_to else {}
    raw_email = _form_values(fields, "email")
    if raw_email:
        return parse_mime(
            _raw_message(raw_email[0]),
            limits=limits,
            source="sendgrid",
            envelope_sender=envelope_sender,
            email_metadata=extras,
        )

    charsets = _sendgrid_charsets(fields)
    header_values = _form_values(fields, "headers")
    header_text = ""
    if header_values:
        value = header_values[0]
        header_text = value if isinstance(value, str) else value.decode("utf-8", "surrogateescape")
    header_message = _HEADER_PARSER.parsestr(header_text) if header_text.strip() else None
    headers = [(str(k), str(v)) for k, v in header_message.raw_items()] if header_message is not None else []
    message_id = next(iter(message_ids(_first_header(headers, "Message-ID"))), None)
    text = _form_text(fields, "text", charset=charsets.get("text"))
    html = _form_text(fields, "html", charset=charsets.get("html"))
    subject_field = _form_text(fields, "subject", charset=charsets.get("subject", "utf-8"))
    from_field = _form_text(fields, "from", charset=charsets.get("from", "utf-8"))
    material = _id_material(header_text, text, html)

    automatic = detect_automatic(
        headers,
        sender=_lenient_sender(headers, from_field),
        envelope_sender=envelope_sender,
        report_type=_report_type(headers),
    )
    if automatic is not None:
        return _ignored("sendgrid", automatic, message_id, material)

    sender = _sender(headers, from_field, "from")
    subject = subject_field if subject_field is not None else decode_subject(_first_header(headers, "Subject"))
    metadata: dict[str, Any] = dict(extras)
    to = _addresses(_form_text(fields, "to", charset=charsets.get("to", "utf-8")))
    cc = _addresses(_form_text(fields, "cc", charset=charsets.get("cc", "utf-8")))
    if to:
        metadata["to"] = to
    if cc:
        metadata["cc"] = cc
    date = _first_header(headers, "Date")
    if date:
        metadata["date"] = clean_text(date)[:100]
    fields_out = EmailFields(
        source="sendgrid",
        sender=sender,
        subject=subject,  # decoded by SendGrid; ingest normalization cleans it
        text=text,
        html=html,
        message_id=message_id,
        in_reply_to=message_ids(_first_header(headers, "In-Reply-To")),
        references=message_ids(_first_header(headers, "References")),
        reply_to=reply_addresses(parse_mailboxes(_first_header(headers, "Reply-To"), "Reply-To")),
        attachments=_sendgrid_attachments(fields, files, limits),
        id_material=material,
        field_names=_SENDGRID_FIELDS,
        audit_headers=headers,
        email_metadata=metadata,
    )
    return build_inbound(fields_out)


# --- Mailgun routes -----------------------------------------------------------------------------------------

_MAILGUN_FIELDS = {
    "customer_email": "from",
    "customer_name": "from",
    "subject": "subject",
    "body": "body-plain",
    "external_id": "Message-Id",
    "message_id": "Message-Id",
    "in_reply_to": "In-Reply-To",
    "references": "References",
    "metadata": "metadata",
}
_MAILGUN_SIGNATURE_FIELDS = frozenset({"timestamp", "token", "signature"})
_AUTOMATIC_HEADERS = ("Auto-Submitted", "Precedence", "X-Autoreply", "X-Autorespond", "Content-Type")


def _mailgun_headers(fields: FormFields) -> list[tuple[str, str]]:
    pairs = _json_field(fields, "message-headers", list) or []
    headers = []
    for index, pair in enumerate(pairs):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(item, str) for item in pair)):
            raise PayloadError(422, f"message-headers[{index}] must be a [name, value] pair", field="message-headers")
        headers.append((pair[0], pair[1]))
    return headers


def _mailgun_header(fields: FormFields, headers: Sequence[tuple[str, str]], name: str) -> str | None:
    value = _form_text(fields, name)
    return value if value is not None else _first_header(headers, name)


def _mailgun_attachments(fields: FormFields, files: Mapping[str, FormFile], limits: MimeLimits) -> list[Attachment]:
    count = _count(fields, "attachment-count")
    check_attachment_count(count, limits, "attachment-count")
    content_ids = _json_field(fields, "content-id-map", dict) or {}
    cid_of = {value: key for key, value in content_ids.items() if isinstance(value, str)}
    attachments = []
    for index in range(count):
        key = f"attachment-{index + 1}"
        upload = files.get(key)
        if upload is None:
            raise PayloadError(422, f"attachment-count says {count} but the file {key} is missing", field=key)
        attachments.append(
            make_attachment(
                upload.data,
                filename=upload.filename,
                content_type=upload.content_type,
                index=index,
                limits=limits,
                field=key,
                content_id=cid_of.get(key),
                inline=key in cid_of,
            )
        )
    return attachments


def parse_mailgun(
    fields: FormFields,
    files: Mapping[str, FormFile] | None = None,
    *,
    limits: MimeLimits = DEFAULT_LIMITS,
) -> ParsedEmail:
    """A Mailgun route's POST (parsed fields, or `body-mime`) as an ingest payload or an ignored
    auto-reply/bounce. Verify the signature first (`verify_mailgun`). Raises PayloadError (413, 422)."""
    files = files or {}
    envelope_sender = _form_text(fields, "sender")
    recipient = _form_text(fields, "recipient")
    extras: dict[str, Any] = {"recipient": clean_text(recipient).lower()[:254]} if recipient else {}
    body_mime = _form_values(fields, "body-mime")
    if body_mime:
        return parse_mime(
            _raw_message(body_mime[0]),
            limits=limits,
            source="mailgun",
            envelope_sender=envelope_sender,
            email_metadata=extras,
        )

    headers = _mailgun_headers(fields)
    message_id = next(iter(message_ids(_mailgun_header(fields, headers, "Message-Id"))), None)
    from_field = _form_text(fields, "from") or _first_header(headers, "From")
    subject = _form_text(fields, "subject")
    text = _form_text(fields, "body-plain")
    html_parts = [_text(value, "body-html") for value in _form_values(fields, "body-html")]
    html = "\n".join(html_parts) if html_parts else None
    date = _mailgun_header(fields, headers, "Date")
    material = _id_material(from_field, recipient, date, subject, text)

    # Without message-headers, the headers Mailgun also posts as fields of their own.
    detection_headers = headers or [
        (name, value) for name in _AUTOMATIC_HEADERS if (value := _form_text(fields, name)) is not None
    ]
    automatic = detect_automatic(
        detection_headers,
        sender=_lenient_sender(headers, from_field or envelope_sender),
        envelope_sender=envelope_sender,
        report_type=_report_type(detection_headers),
    )
    if automatic is not None:
        return _ignored("mailgun", automatic, message_id, material)

    sender = _sender(headers, from_field or envelope_sender, "from")
    metadata: dict[str, Any] = dict(extras)
    to = _addresses(_mailgun_header(fields, headers, "To"))
    cc = _addresses(_mailgun_header(fields, headers, "Cc"))
    if to:
        metadata["to"] = to
    if cc:
        metadata["cc"] = cc
    if date:
        metadata["date"] = clean_text(date)[:100]
    fields_out = EmailFields(
        source="mailgun",
        sender=sender,
        subject=subject or "",  # decoded by Mailgun; ingest normalization cleans it
        text=text,
        html=html,
        message_id=message_id,
        in_reply_to=message_ids(_mailgun_header(fields, headers, "In-Reply-To")),
        references=message_ids(_mailgun_header(fields, headers, "References")),
        reply_to=reply_addresses(parse_mailboxes(_mailgun_header(fields, headers, "Reply-To"), "Reply-To")),
        attachments=_mailgun_attachments(fields, files, limits),
        id_material=material,
        field_names=_MAILGUN_FIELDS,
        audit_headers=headers,
        email_metadata=metadata,
    )
    return build_inbound(fields_out)


# --- authentication -----------------------------------------------------------------------------------------


def _same_secret(provided: bytes, expected: bytes) -> bool:
    # Digests first: compare_digest is constant-time only for equal lengths, and the length is secret too.
    return hmac.compare_digest(hashlib.sha256(provided).digest(), hashlib.sha256(expected).digest())


def _basic_credentials(authorization: str | None) -> bytes:
    if not authorization or not authorization.strip():
        raise SignatureError("missing Authorization header (HTTP basic auth)")
    scheme, _, encoded = authorization.strip().partition(" ")
    if scheme.lower() != "basic" or not encoded.strip():
        raise SignatureError("the Authorization header is not HTTP basic auth")
    try:
        return base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("malformed HTTP basic auth credentials") from None


def verify_basic_auth(authorization: str | None, expected: str) -> None:
    """Check an `Authorization: Basic ...` header against `expected`, constant-time.

    `expected` is `user:password` (both must match) or a bare password (any user name), as configured in the
    provider's webhook URL `https://user:password@host/...`. Raises SignatureError; ValueError for an empty
    `expected` (a configuration mistake).
    """
    if not expected:
        raise ValueError("the expected basic auth credentials are empty")
    credentials = _basic_credentials(authorization)
    if ":" in expected:
        matched = _same_secret(credentials, expected.encode("utf-8"))
    else:
        matched = _same_secret(credentials.partition(b":")[2], expected.encode("utf-8"))
    if not matched:
        raise SignatureError("wrong basic auth credentials")


def verify_postmark_auth(authorization: str | None, credentials: str) -> None:
    """Postmark inbound: HTTP basic auth set in the webhook URL (Postmark signs nothing). See verify_basic_auth."""
    verify_basic_auth(authorization, credentials)


def verify_shared_secret(provided: str | None, expected: str) -> None:
    """A secret the request carries (a URL path segment or query value), compared constant-time."""
    if not expected:
        raise ValueError("the expected secret is empty")
    if not provided:
        raise SignatureError("missing inbound secret")
    if not _same_secret(provided.encode("utf-8", "surrogatepass"), expected.encode("utf-8")):
        raise SignatureError("wrong inbound secret")


def verify_sendgrid_secret(expected: str, *, url_secret: str | None = None, authorization: str | None = None) -> None:
    """SendGrid Inbound Parse: the Parse URL carries `expected` as the basic auth password
    (`https://inbound:SECRET@host/...`) or as a path segment (`.../inbound/sendgrid/SECRET`). Either matching is
    enough; both are compared in constant time. Raises SignatureError."""
    if not expected:
        raise ValueError("the expected secret is empty")
    url_ok = url_secret is not None and _same_secret(url_secret.encode("utf-8", "surrogatepass"), expected.encode())
    auth_ok = False
    if authorization:
        try:
            verify_basic_auth(authorization, expected)
            auth_ok = True
        except SignatureError:
            auth_ok = False
    if not (url_ok or auth_ok):
        if url_secret is None and not authorization:
            raise SignatureError("missing inbound secret (basic auth or URL)")
        raise SignatureError("wrong inbound secret")


def mailgun_signature(signing_key: str, timestamp: str, token: str) -> str:
    """Mailgun's signature: hex HMAC-SHA256 of timestamp + token under the webhook signing key."""
    message = f"{timestamp}{token}".encode("utf-8", "surrogatepass")
    return hmac.new(signing_key.encode("utf-8"), message, hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class MailgunToken:
    """A verified Mailgun request: its single-use token, timestamp, and a fingerprint of what it carried."""

    token: str
    timestamp: int
    fingerprint: str


_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{1,200}")
_HEX_SIGNATURE = re.compile(r"[0-9a-fA-F]{64}")


def _signature_fields(fields: FormFields) -> tuple[str | None, str | None, str | None]:
    nested = fields.get("signature")
    if isinstance(nested, Mapping):  # Mailgun's event webhooks nest them: {"signature": {...}, "event-data": ...}
        timestamp, token, signature = (nested.get(name) for name in ("timestamp", "token", "signature"))
        return (
            str(timestamp) if isinstance(timestamp, str | int) else None,
            token if isinstance(token, str) else None,
            signature if isinstance(signature, str) else None,
        )
    try:
        return (_form_text(fields, "timestamp"), _form_text(fields, "token"), _form_text(fields, "signature"))
    except PayloadError:
        return None, None, None


def verify_mailgun_signature(
    signing_key: str,
    fields: FormFields,
    files: Mapping[str, FormFile] | None = None,
    *,
    now: float | None = None,
    tolerance_s: int = DEFAULT_MAILGUN_TOLERANCE_S,
) -> MailgunToken:
    """Check `signature` = HMAC-SHA256(signing_key, timestamp + token) and the timestamp within ±tolerance_s.

    Does not check that the token is new: `verify_mailgun` does, with the caller's store. Raises SignatureError.
    """
    if not signing_key:
        raise ValueError("the Mailgun signing key is empty")
    timestamp, token, signature = _signature_fields(fields)
    if not timestamp or not token or not signature:
        raise SignatureError("missing Mailgun timestamp, token or signature")
    timestamp = timestamp.strip()
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
        raise SignatureError("the Mailgun timestamp is not a unix time in seconds")
    if not _TOKEN_SHAPE.fullmatch(token):
        raise SignatureError("malformed Mailgun token")
    expected = mailgun_signature(signing_key, timestamp, token)
    provided = signature.strip().lower()
    if not _HEX_SIGNATURE.fullmatch(provided) or not hmac.compare_digest(provided, expected):
        raise SignatureError("wrong Mailgun signature")
    current = time.time() if now is None else now
    if abs(current - int(timestamp)) > tolerance_s:
        raise SignatureError("the Mailgun timestamp is outside the replay window")
    return MailgunToken(token, int(timestamp), _fingerprint(fields, files or {}, _MAILGUN_SIGNATURE_FIELDS))


SeenToken = Callable[[str, str], bool]
"""`seen(token, fingerprint)`: record the token with the fingerprint of the request that first carried it, and
return True when it was recorded before with a *different* fingerprint (a replayed signature on other content).
The same token with the same fingerprint is a provider retry: return False. Must be atomic across processes,
e.g. `INSERT ... ON CONFLICT (token) DO UPDATE SET token = EXCLUDED.token RETURNING fingerprint` and compare.
Tokens only need keeping for twice the replay window: older timestamps are refused before the lookup."""


def verify_mailgun(
    signing_key: str,
    fields: FormFields,
    files: Mapping[str, FormFile] | None = None,
    *,
    seen: SeenToken,
    now: float | None = None,
    tolerance_s: int = DEFAULT_MAILGUN_TOLERANCE_S,
) -> MailgunToken:
    """The whole Mailgun check: signature, replay window, single-use token. Raises SignatureError."""
    verified = verify_mailgun_signature(signing_key, fields, files, now=now, tolerance_s=tolerance_s)
    if seen(verified.token, verified.fingerprint):
        raise SignatureError("the Mailgun token was already used for another request (replay)")
    return verified


async def verify_mailgun_async(
    signing_key: str,
    fields: FormFields,
    files: Mapping[str, FormFile] | None = None,
    *,
    seen: Callable[[str, str], Awaitable[bool]],
    now: float | None = None,
    tolerance_s: int = DEFAULT_MAILGUN_TOLERANCE_S,
) -> MailgunToken:
    """`verify_mailgun` with an async `seen` (a database round trip)."""
    verified = verify_mailgun_signature(signing_key, fields, files, now=now, tolerance_s=tolerance_s)
    if await seen(verified.token, verified.fingerprint):
        raise SignatureError("the Mailgun token was already used for another request (replay)")
    return verified


class TokenCache:
    """An in-process `seen(token, fingerprint)` store with expiry: for tests and a single API process. Several
    processes or replicas need a shared store (the database) instead."""

    def __init__(self, ttl_s: float = 2 * DEFAULT_MAILGUN_TOLERANCE_S, max_entries: int = 100_000) -> None:
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._entries: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, token: str, fingerprint: str, *, now: float | None = None) -> bool:
        current = time.monotonic() if now is None else now
        with self._lock:
            while self._entries:
                oldest, (_, recorded) = next(iter(self._entries.items()))
                if current - recorded <= self._ttl_s and len(self._entries) < self._max_entries:
                    break
                del self._entries[oldest]
            previous = self._entries.get(token)
            if previous is not None:
                return previous[0] != fingerprint
            self._entries[token] = (fingerprint, current)
            return False
