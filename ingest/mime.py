"""Inbound email as ingest payloads: a raw RFC 5322 message (`Content-Type: message/rfc822`), parsed with the
standard library's `email` package (`policy.default`), becomes the same validated `IngestPayload` the JSON
webhook takes, plus the attachments it carried. The mail providers' webhooks (`ingest.providers`) reuse the
pieces here, so every door applies the same rules.

What a message becomes:
- `customer_email` / `customer_name`: the **From** mailbox (the author; `Sender` when From is missing). Reply-To is
  *not* the customer's identity: anyone can set it, and lists, forms and "on behalf of" senders point it
  elsewhere. As mail clients and helpdesks do, replies should go to Reply-To when present: it is returned in
  `InboundEmail.reply_to` and kept in `metadata.email.reply_to` for delivery to honour.
- `subject`: RFC 2047 encoded words decoded.
- `body`: the text/plain body; without a non-empty one, the text/html body, which ingest normalization renders
  to text. Quoted history and signatures are trimmed by that same normalization (channel `email`). A message
  with attachments but no text at all gets a one-line body naming them, so it is not refused.
- `external_id` = the Message-ID (the idempotency key: a provider's retry or a re-delivered message is a
  duplicate). Without a usable one: a stable `sha256:` id over the content (From, To, Cc, Date, Subject and the
  raw body, not the trace headers relays add).
- `message_id`, `in_reply_to`, `references`: the threading headers ingest matches against earlier tickets.
  Malformed ids in them are dropped, never a reason to refuse the mail.
- attachments: every leaf part that is not the body (alternative renderings of the body are skipped), with
  name, type, size, sha256 and the content, refused above `max_attachment_bytes` (`ContentTooLarge`, 413).

Auto-replies and bounces (RFC 3834 Auto-Submitted, X-Autoreply / X-Autorespond, Precedence bulk|list|junk,
delivery-status and read-receipt reports, MAILER-DAEMON senders, an empty Return-Path) are returned as
`IgnoredEmail(reason, detail)`: never a ticket, so no reply loop can start. They are recognised from the headers
and structure before anything else is checked, so a bounce carrying a huge original is still just ignored.

Errors: `PayloadError` only (the ingest schema's error), naming the header or part at fault: 400 when the bytes are
not a message at all, 413 (`ContentTooLarge`) for size and count limits, 422 for the rest: a multipart bomb (depth
or part count), a multipart without its boundary, an unknown or undecodable charset, a missing or invalid From.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import email.charset
import email.errors
import hashlib
import mimetypes
import quopri
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage, Message
from email.parser import BytesParser
from typing import Any

import msgspec

from ingest.normalize import clean_text, looks_like_html, normalize_body
from ingest.schemas import (
    IDENTIFIER_MAX,
    MESSAGE_ID_MAX,
    IngestPayload,
    PayloadError,
    parse_payload,
    sanitize_for_jsonb,
)

DEFAULT_MAX_EMAIL_BYTES = 25 * 1024 * 1024  # the whole message (Mailgun's inbound limit; SendGrid's is 30 MB)
DEFAULT_MAX_ATTACHMENT_BYTES = 10 * 1024 * 1024  # one decoded attachment
DEFAULT_MAX_ATTACHMENTS = 20
DEFAULT_MAX_DEPTH = 8  # nesting of multiparts and attached messages; real mail rarely goes past 4
DEFAULT_MAX_PARTS = 100  # MIME parts of every kind, containers included


@dataclass(frozen=True, slots=True)
class MimeLimits:
    """What one inbound message may hold. The controller builds it from settings."""

    max_email_bytes: int = DEFAULT_MAX_EMAIL_BYTES
    max_attachment_bytes: int = DEFAULT_MAX_ATTACHMENT_BYTES
    max_attachments: int = DEFAULT_MAX_ATTACHMENTS
    max_depth: int = DEFAULT_MAX_DEPTH
    max_parts: int = DEFAULT_MAX_PARTS


DEFAULT_LIMITS = MimeLimits()


class ContentTooLarge(PayloadError):
    """The message, one attachment or the number of attachments is over its limit: answer 413."""

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        super().__init__(413, detail, field=field)


@dataclass(frozen=True, slots=True)
class Attachment:
    filename: str  # cleaned: no path separators or control characters; synthesized when the part had none
    content_type: str  # lower-case type/subtype
    size: int  # decoded bytes
    sha256: str  # hex digest of the decoded content
    content: bytes = field(repr=False)
    content_id: str | None = None  # without the angle brackets, for cid: references in the HTML body
    inline: bool = False

    def summary(self) -> dict[str, Any]:
        """Everything but the content: what the ticket's metadata records."""
        info: dict[str, Any] = {
            "filename": self.filename,
            "content_type": self.content_type,
            "size": self.size,
            "sha256": self.sha256,
        }
        if self.content_id:
            info["content_id"] = self.content_id
        if self.inline:
            info["inline"] = True
        return info


@dataclass(frozen=True, slots=True)
class InboundEmail:
    """A message that becomes a ticket (or a follow-up): the validated payload, what to keep for audit (the
    store's `raw_payload`), the attachments, and where replies should go."""

    payload: IngestPayload
    raw_object: dict[str, Any]
    attachments: tuple[Attachment, ...]
    reply_to: tuple[str, ...]
    source: str  # rfc822 | postmark | sendgrid | mailgun


@dataclass(frozen=True, slots=True)
class IgnoredEmail:
    """An auto-reply or bounce: answered 200 with the reason, never a ticket."""

    reason: str  # auto_submitted | x_autoreply | x_autorespond | precedence | delivery_status | read_receipt
    #              | mailer_daemon | null_sender
    detail: str
    external_id: str | None
    source: str

    def to_json(self) -> dict[str, Any]:
        return {"ignored": True, "reason": self.reason, "detail": self.detail}


ParsedEmail = InboundEmail | IgnoredEmail

# --- limits on what is parsed strictly ----------------------------------------------------------------------

_ADDRESS_HEADER_MAX = 4 * 1024  # From, Sender, Reply-To
_SUBJECT_HEADER_MAX = 16 * 1024  # encoded words make a 5,000-character subject longer
_LIST_HEADER_MAX = 64 * 1024  # To, Cc, References: only read when shorter, never a reason to refuse
_METADATA_ADDRESSES_MAX = 20
_FILENAME_MAX = 200
_CONTENT_ID_MAX = 200
_AUDIT_HEADERS_MAX = 100
_AUDIT_HEADER_VALUE_MAX = 1000
_IDS_MAX = 200  # message ids read from one In-Reply-To / References header

# --- errors from the standard library -----------------------------------------------------------------------

# What the email package raises on hostile input (it has known crashes on odd headers). Turned into a 422 naming
# the message, so a client mistake is never a 500; our own PayloadErrors pass through untouched.
_STDLIB_ERRORS = (
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    AttributeError,
    LookupError,
    AssertionError,
    RecursionError,
    email.errors.MessageError,
)


def _reraise(source_field: str, exc: BaseException) -> PayloadError:
    what = "the message" if source_field == "message" else f"the {source_field} header"
    return PayloadError(422, f"{what} could not be parsed ({type(exc).__name__} while reading it)", field=source_field)


# --- charsets -----------------------------------------------------------------------------------------------

# Python codecs that are not character sets a mail client would declare: refused like unknown names.
_NOT_CHARSETS = frozenset(
    {"idna", "punycode", "raw-unicode-escape", "unicode-escape", "undefined", "mbcs", "oem", "palmos"}
)


def _codec(charset: str) -> codecs.CodecInfo | None:
    name = email.charset.ALIASES.get(charset, charset)
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError, TypeError):
        return None
    if not getattr(info, "_is_text_encoding", True):  # base64, zlib, rot13 ...: bytes-to-bytes codecs
        return None
    if info.name.replace("_", "-") in _NOT_CHARSETS:
        return None
    return info


def decode_text(data: bytes, charset: str | None, *, field: str, what: str) -> str:
    """Bytes of a text part (or a provider's text field) as declared by `charset`, strictly.

    No charset (or US-ASCII) with 8-bit bytes is read as UTF-8, the common mislabel; ISO-8859-1 is read as
    Windows-1252 where that decodes, as browsers and mail clients do. An unknown charset, or bytes that are not
    valid in the declared one, is a 422 naming `field`.
    """
    label = (charset or "").strip().lower()
    if label in ("", "us-ascii", "ascii", "ansi_x3.4-1968", "unknown-8bit", "x-unknown"):
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            shown = f"charset {charset!r}" if label else "no charset"
            raise PayloadError(422, f"{what} declares {shown} but its 8-bit bytes are not UTF-8", field=field) from None
    info = _codec(label)
    if info is None:
        raise PayloadError(422, f"{what} declares the unknown charset {charset!r}", field=field)
    if info.name == "iso8859-1":
        try:
            return data.decode("cp1252")
        except UnicodeDecodeError:
            return data.decode("latin-1")
    try:
        return data.decode(info.name)
    except (UnicodeError, ValueError, TypeError, LookupError):
        raise PayloadError(422, f"{what} is not valid {charset} text", field=field) from None


# --- headers ------------------------------------------------------------------------------------------------

_SURROGATES = re.compile("[\udc80-\udcff]")
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([QqBb])\?([^?\s]*)\?=")
_BETWEEN_WORDS = re.compile(r"[ \t\r\n]*")


def _word_bytes(encoding: str, text: str) -> bytes | None:
    if encoding in "Bb":
        try:
            return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError):
            return None
    return quopri.decodestring(text.replace("_", " ").encode("ascii", "replace"), header=True)


def _check_encoded_words(value: str, field: str) -> None:
    """Every RFC 2047 encoded word must name a known charset and decode in it. Adjacent words in one charset
    are decoded together: senders split multi-byte characters across them."""
    words = list(_ENCODED_WORD.finditer(value))
    i = 0
    while i < len(words):
        charset = words[i].group(1).split("*", 1)[0]
        chunks: list[bytes] = []
        j = i
        while j < len(words):
            word = words[j]
            if j > i and (
                word.group(1).split("*", 1)[0].lower() != charset.lower()
                or _BETWEEN_WORDS.fullmatch(value, words[j - 1].end(), word.start()) is None
            ):
                break
            decoded = _word_bytes(word.group(2), word.group(3))
            if decoded is None:
                raise PayloadError(422, f"the {field} header has a malformed base64 encoded word", field=field)
            chunks.append(decoded)
            j += 1
        decode_text(b"".join(chunks), charset, field=field, what=f"an encoded word in the {field} header")
        i = j


def header_value(raw: str, field: str, *, limit: int) -> str:
    """A raw header value made safe for the standard library's parser: 8-bit bytes read as UTF-8 (RFC 6532),
    folding removed, encoded words checked. Raises PayloadError naming `field` when it cannot be decoded."""
    if len(raw) > limit:
        raise PayloadError(422, f"the {field} header is longer than {limit} characters", field=field)
    if _SURROGATES.search(raw):
        try:
            raw = raw.encode("ascii", "surrogateescape").decode("utf-8")
        except UnicodeError:
            raise PayloadError(
                422, f"the {field} header has 8-bit bytes that are not UTF-8 and no declared charset", field=field
            ) from None
    raw = _FOLD.sub("", raw)
    _check_encoded_words(raw, field)
    return raw


def _raw_headers(msg: Message) -> list[tuple[str, str]]:
    return [(str(name), value if isinstance(value, str) else str(value)) for name, value in msg.raw_items()]


def _first(headers: Sequence[tuple[str, str]], name: str) -> str | None:
    lowered = name.lower()
    for key, value in headers:
        if key.strip().lower() == lowered:
            return value
    return None


def decode_subject(raw: str | None, field: str = "Subject") -> str:
    if raw is None:
        return ""
    value = header_value(raw, field, limit=_SUBJECT_HEADER_MAX)
    try:
        return str(policy.default.header_factory("subject", value))
    except _STDLIB_ERRORS as exc:
        raise _reraise(field, exc) from None


def parse_mailboxes(raw: str | None, field: str) -> list[Address]:
    """The mailboxes of an address header (From, Reply-To, a provider's `from` field), strictly decoded."""
    if raw is None or not raw.strip():
        return []
    value = header_value(raw, field, limit=_ADDRESS_HEADER_MAX)
    try:
        header = policy.default.header_factory("to", value)  # an address-list header, whatever `field` is named
        addresses = header.addresses
    except _STDLIB_ERRORS as exc:  # the standard library's address parser has crashes on odd input
        raise _reraise(field, exc) from None
    return [address for address in addresses if address.username and address.domain]


def _lenient_addresses(raw: str | None, limit: int = _LIST_HEADER_MAX) -> list[str]:
    """Addresses for metadata only (To, Cc): anything unreadable is simply left out."""
    if not raw or len(raw) > limit:
        return []
    try:
        value = header_value(raw, "To", limit=limit)
        header = policy.default.header_factory("to", value)
        found = [address.addr_spec.lower() for address in header.addresses if address.username and address.domain]
    except (PayloadError, *_STDLIB_ERRORS):
        return []
    return [clean_text(addr) for addr in found[:_METADATA_ADDRESSES_MAX]]


_MESSAGE_ID_TOKEN = re.compile(r"<([^<>\s]{1,996})>")


def message_ids(raw: str | None) -> list[str]:
    """The `<id>` tokens of a Message-ID / In-Reply-To / References value, in order, duplicates and unusable
    ones (non-ASCII, control characters, too long) dropped. A bare id without brackets is accepted alone."""
    if not raw or len(raw) > _LIST_HEADER_MAX:
        return []
    found = [f"<{token}>" for token in _MESSAGE_ID_TOKEN.findall(raw)]
    if not found:
        bare = raw.strip()
        if bare and len(bare.split()) == 1 and "@" in bare:
            found = [f"<{bare.strip('<>')}>"]
    usable = [mid for mid in found if mid.isascii() and mid.isprintable() and len(mid) <= MESSAGE_ID_MAX]
    return list(dict.fromkeys(usable))[:_IDS_MAX]


# --- auto-replies and bounces -------------------------------------------------------------------------------

_BULK_PRECEDENCE = frozenset({"bulk", "list", "junk"})
_NEGATIVE = frozenset({"no", "false", "0", "off"})


def detect_automatic(
    headers: Iterable[tuple[str, str]],
    *,
    sender: str | None,
    envelope_sender: str | None = None,
    report_type: str | None = None,
) -> tuple[str, str] | None:
    """(reason, detail) when the message was sent by a machine that must not be answered, else None.

    `envelope_sender` is the SMTP MAIL FROM (Return-Path); "" means the null reverse path of bounces and
    RFC 3834 auto-replies, None that it is not known. `report_type` is a multipart/report's report-type.
    """
    if report_type == "delivery-status":
        return "delivery_status", "a delivery status notification (bounce)"
    if report_type == "disposition-notification":
        return "read_receipt", "a message disposition notification (read receipt)"
    for name, value in headers:
        key = name.strip().lower()
        lowered = " ".join(str(value).split()).lower()
        if key == "auto-submitted":
            token = lowered.split(";", 1)[0].split("(", 1)[0].strip()
            if token and token != "no":
                return "auto_submitted", f"Auto-Submitted: {token[:60]}"
        elif key in ("x-autoreply", "x-autorespond"):
            if lowered not in _NEGATIVE:
                return key.replace("-", "_"), f"{name.strip()} header present"
        elif key == "precedence":
            token = lowered.split(";", 1)[0].strip()
            if token in _BULK_PRECEDENCE:
                return "precedence", f"Precedence: {token}"
    if sender and sender.rpartition("@")[0].strip().strip('"').lower() == "mailer-daemon":
        return "mailer_daemon", "sent by a MAILER-DAEMON"
    if envelope_sender is not None and envelope_sender.strip().strip("<>").strip() == "":
        return "null_sender", "empty envelope sender (Return-Path: <>), as bounces and auto-replies use"
    return None


# --- attachments --------------------------------------------------------------------------------------------

_PATH_SEPARATORS = re.compile(r"[/\\]+")


def clean_filename(raw: str | None, content_type: str, index: int) -> str:
    """A display-safe file name: invisible/control characters and path components removed, length capped;
    `attachment-N.ext` when the part had none."""
    name = ""
    if raw:
        name = clean_text(_SURROGATES.sub("", raw)).replace("\n", " ")
        name = _PATH_SEPARATORS.sub("_", name).strip(" .")
    if not name:
        extension = mimetypes.guess_extension(content_type, strict=False) or ".bin"
        name = f"attachment-{index + 1}{extension}"
    if len(name) > _FILENAME_MAX:
        _, dot, extension = name.rpartition(".")
        keep = extension if dot and len(extension) <= 10 else ""
        name = name[: _FILENAME_MAX - len(keep) - 1].rstrip() + ("." + keep if keep else "")
    return name


def make_attachment(
    data: bytes,
    *,
    filename: str | None,
    content_type: str | None,
    index: int,
    limits: MimeLimits,
    field: str = "attachments",
    content_id: str | None = None,
    inline: bool = False,
) -> Attachment:
    """One attachment, refused (413) above `limits.max_attachment_bytes`."""
    ctype = (content_type or "application/octet-stream").split(";", 1)[0].strip().lower()
    if not re.fullmatch(r"[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*", ctype) or len(ctype) > 127:
        ctype = "application/octet-stream"
    name = clean_filename(filename, ctype, index)
    if len(data) > limits.max_attachment_bytes:
        raise ContentTooLarge(
            f"attachment {index + 1} ({name}) is {len(data)} bytes; the limit is {limits.max_attachment_bytes}",
            field=field,
        )
    cid = None
    if content_id:
        cid = clean_text(_SURROGATES.sub("", content_id)).strip().strip("<>").strip()[:_CONTENT_ID_MAX] or None
    return Attachment(
        filename=name,
        content_type=ctype,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        content=bytes(data),
        content_id=cid,
        inline=inline,
    )


def check_attachment_count(count: int, limits: MimeLimits, field: str = "attachments") -> None:
    if count > limits.max_attachments:
        raise ContentTooLarge(
            f"the message has {count} attachments; at most {limits.max_attachments} are accepted", field=field
        )


# --- assembling the payload ---------------------------------------------------------------------------------


@dataclass(slots=True)
class EmailFields:
    """What every inbound door extracts from its input before the shared rules apply (`build_inbound`)."""

    source: str
    sender: Address | None
    subject: str
    text: str | None
    html: str | None
    message_id: str | None
    in_reply_to: list[str]
    references: list[str]
    reply_to: list[str]
    attachments: list[Attachment]
    id_material: bytes  # hashed into the external_id when there is no usable Message-ID
    field_names: Mapping[str, str]  # payload field -> the input field to name in errors
    audit_headers: list[tuple[str, str]] = field(default_factory=list)
    email_metadata: dict[str, Any] = field(default_factory=dict)
    fallback_external_id: str | None = None  # a provider's own stable id, preferred over the content hash


def external_id_for(message_id: str | None, id_material: bytes, fallback: str | None = None) -> str:
    """The idempotency key: the Message-ID, hashed when longer than an external_id may be; else the provider's
    id; else a hash of the content."""
    if message_id:
        if len(message_id) <= IDENTIFIER_MAX:
            return message_id
        return "message-id-sha256:" + hashlib.sha256(message_id.encode()).hexdigest()
    if fallback and len(fallback) <= IDENTIFIER_MAX and fallback.isprintable():
        return fallback
    return "sha256:" + hashlib.sha256(id_material).hexdigest()


# Normalization reads only the first million characters of a body; handing it one more keeps its `truncated`
# flag right while the stored raw payload stays bounded however large the message's text part was.
_BODY_HANDOVER_MAX = 1_000_001


def _body_text(fields: EmailFields) -> str:
    return _full_body_text(fields)[:_BODY_HANDOVER_MAX]


def _full_body_text(fields: EmailFields) -> str:
    text = fields.text or ""
    if text.strip() and normalize_body(text, channel="email").text:
        return text
    html = fields.html or ""
    if html.strip():
        # HTML without a recognisable tag ("Hi &amp; thanks") would be read as plain text: give it one.
        return html if looks_like_html(html) else f"<div>{html}</div>"
    if fields.attachments:
        names = ", ".join(a.filename for a in fields.attachments[:10])
        more = f" and {len(fields.attachments) - 10} more" if len(fields.attachments) > 10 else ""
        return f"(no message text; attached: {names}{more})"
    return text


def build_inbound(fields: EmailFields) -> InboundEmail:
    """Validate the extracted fields through the ingest schema (the same checks as the JSON webhook) and
    name the input's own field in any error."""
    if fields.sender is None:
        field_name = fields.field_names.get("customer_email", "From")
        raise PayloadError(422, f"{field_name} is missing: no sender address", field=field_name)
    email_meta: dict[str, Any] = {"source": fields.source, "from": fields.sender.addr_spec.lower()}
    if fields.reply_to:
        email_meta["reply_to"] = fields.reply_to
    email_meta.update(fields.email_metadata)
    if fields.attachments:
        email_meta["attachments"] = [a.summary() for a in fields.attachments]
    external_id = external_id_for(fields.message_id, fields.id_material, fields.fallback_external_id)
    in_reply_to = fields.in_reply_to[0] if fields.in_reply_to else None
    references = list(dict.fromkeys([*fields.references, *fields.in_reply_to[1:]]))
    document = sanitize_for_jsonb(
        {
            "external_id": external_id,
            "channel": "email",
            "customer_email": fields.sender.addr_spec,
            "customer_name": fields.sender.display_name or None,
            "subject": fields.subject,
            "body": _body_text(fields),
            "metadata": {"email": email_meta},
            "message_id": fields.message_id,
            "in_reply_to": in_reply_to,
            "references": references,
        }
    )
    try:
        payload, raw_object = parse_payload(msgspec.json.encode(document))
    except PayloadError as exc:
        named = fields.field_names.get(exc.field or "", exc.field)
        detail = exc.detail if named == exc.field else f"{named}: {exc.detail}"
        raise PayloadError(exc.status, detail, field=named) from None
    if fields.audit_headers:
        raw_object["email_headers"] = sanitize_for_jsonb(
            [[name, value[:_AUDIT_HEADER_VALUE_MAX]] for name, value in fields.audit_headers[:_AUDIT_HEADERS_MAX]]
        )
    return InboundEmail(
        payload=payload,
        raw_object=raw_object,
        attachments=tuple(fields.attachments),
        reply_to=tuple(fields.reply_to),
        source=fields.source,
    )


def reply_addresses(mailboxes: Iterable[Address]) -> list[str]:
    found = []
    for address in mailboxes:
        spec = address.addr_spec
        if address.username and address.domain and len(spec) <= 254 and spec.isprintable() and " " not in spec:
            found.append(spec.lower())
    return list(dict.fromkeys(found))[:10]


# --- raw MIME -----------------------------------------------------------------------------------------------

_MIME_FIELDS = {
    "customer_email": "From",
    "customer_name": "From",
    "subject": "Subject",
    "body": "body",
    "external_id": "Message-ID",
    "message_id": "Message-ID",
    "in_reply_to": "In-Reply-To",
    "references": "References",
    "metadata": "metadata",
}
_CONTAINER_TYPE = re.compile(rb"(?im)^content-type:[ \t]*(?:\r?\n[ \t]+)?(?:multipart|message)/")
# `boundary*=` (RFC 2231) too: its charset'language' prefix only makes the counted string longer, so the exact
# count below misses it and the coarse count of "--" lines has to bound such a message instead.
_BOUNDARY_PARAM = re.compile(rb'(?i)boundary(?:\*\d*)?\*?[ \t]*=[ \t]*(?:"([^"\r\n]{1,200})"|([^\s;"]{1,200}))')
_DASH_LINES_MAX = 20_000  # lines starting with "--": a bound on the parts of any boundary, generous for text
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_ID_HEADERS = ("from", "to", "cc", "date", "subject")
_PARSER = BytesParser(policy=policy.default)


def _prescan(raw: bytes, limits: MimeLimits) -> None:
    """Refuse a multipart bomb before the parser builds a Python object for every part.

    Over-counts only when text in a body looks like a Content-Type line or repeats a boundary, which is harmless.
    """
    containers = len(_CONTAINER_TYPE.findall(raw))
    if containers > limits.max_parts:
        raise PayloadError(
            422, f"the message declares {containers} multipart or message containers; at most "
            f"{limits.max_parts} MIME parts are accepted", field="Content-Type",
        )  # fmt: skip
    boundaries = {quoted or bare for quoted, bare in _BOUNDARY_PARAM.findall(raw)}
    if len(boundaries) > limits.max_parts:
        raise PayloadError(422, f"the message has more than {limits.max_parts} MIME parts", field="Content-Type")
    delimiters = sum(raw.count(b"\n--" + boundary) for boundary in boundaries)
    if delimiters > 2 * limits.max_parts + 2 * len(boundaries) or raw.count(b"\n--") > _DASH_LINES_MAX:
        raise PayloadError(422, f"the message has more than {limits.max_parts} MIME parts", field="Content-Type")


@dataclass(slots=True)
class _Leaf:
    part: Message
    in_alternative: bool


def _walk(msg: Message, limits: MimeLimits) -> tuple[list[_Leaf], str | None]:
    """Every leaf part in order (an attached message counts as one leaf), checking depth, part count and the
    multipart structure; and the report type of a delivery-status or disposition report anywhere in it."""
    leaves: list[_Leaf] = []
    report_type: str | None = None
    count = 0
    # (part, depth, inside an attached message, parent is multipart/alternative)
    stack: list[tuple[Message, int, bool, bool]] = [(msg, 0, False, False)]
    while stack:
        part, depth, attached, in_alternative = stack.pop()
        count += 1
        if count > limits.max_parts:
            raise PayloadError(422, f"the message has more than {limits.max_parts} MIME parts", field="Content-Type")
        if depth > limits.max_depth:
            raise PayloadError(
                422, f"the MIME structure is nested deeper than {limits.max_depth} levels", field="Content-Type"
            )
        for defect in part.defects:
            if isinstance(defect, email.errors.NoBoundaryInMultipartDefect):
                raise PayloadError(422, "a multipart part declares no boundary", field="Content-Type")
            if isinstance(defect, email.errors.StartBoundaryNotFoundDefect):
                raise PayloadError(422, "a multipart part's boundary never appears in its body", field="Content-Type")
        ctype = part.get_content_type()
        if ctype in ("message/delivery-status", "message/global-delivery-status"):
            report_type = report_type or "delivery-status"
        elif ctype in ("message/disposition-notification", "message/global-disposition-notification"):
            report_type = report_type or "disposition-notification"
        elif ctype == "multipart/report":
            declared = str(part.get_param("report-type", "") or "").strip().lower()
            if declared in ("delivery-status", "disposition-notification"):
                report_type = report_type or declared
        children = part.get_payload() if part.is_multipart() else None
        if isinstance(children, list):
            is_message = part.get_content_maintype() == "message"
            if is_message and not attached:
                leaves.append(_Leaf(part, in_alternative))
            alternative = ctype == "multipart/alternative"
            for child in reversed(children):
                if isinstance(child, Message):
                    stack.append((child, depth + 1, attached or is_message, alternative))
        elif not attached:
            leaves.append(_Leaf(part, in_alternative))
    return leaves, report_type


def _sender(headers: Sequence[tuple[str, str]], *, strict: bool) -> Address | None:
    for name in ("From", "Sender"):
        raw = _first(headers, name)
        if raw is None or not raw.strip():
            continue
        if not strict:
            try:
                mailboxes = parse_mailboxes(raw, name)
            except (PayloadError, *_STDLIB_ERRORS):
                return None
        else:
            mailboxes = parse_mailboxes(raw, name)
            if not mailboxes:
                raise PayloadError(422, f"the {name} header has no valid address: {raw[:200]!r}", field=name)
        return mailboxes[0] if mailboxes else None
    if strict:
        raise PayloadError(422, "the message has no From header", field="From")
    return None


def _envelope_sender(headers: Sequence[tuple[str, str]]) -> str | None:
    raw = _first(headers, "Return-Path")
    if raw is None:
        return None
    value = raw.strip()
    return "" if value.strip("<> \t") == "" else value.strip("<> \t")


def _decoded_payload(part: Message) -> bytes:
    data = part.get_payload(decode=True)
    return data if isinstance(data, bytes) else b""


def _part_text(part: Message, label: str) -> str:
    return decode_text(_decoded_payload(part), part.get_content_charset(), field="body", what=f"the {label} part")


def _attachment_of(part: Message, index: int, limits: MimeLimits) -> Attachment:
    if part.get_content_maintype() == "message":
        inner = part.get_payload(0)
        data = inner.as_bytes(policy=policy.default.clone(linesep="\r\n")) if isinstance(inner, Message) else b""
    else:
        data = _decoded_payload(part)
    filename = part.get_filename()
    if not filename and part.get_content_type() == "message/rfc822":
        filename = "forwarded-message.eml"
    content_id = part.get("Content-ID")
    return make_attachment(
        data,
        filename=str(filename) if filename else None,
        content_type=part.get_content_type(),
        index=index,
        limits=limits,
        content_id=str(content_id) if content_id else None,
        inline=part.get_content_disposition() == "inline",
    )


def _id_material(raw: bytes, headers: Sequence[tuple[str, str]]) -> bytes:
    """What identifies a message without a Message-ID: its content, not the trace headers relays add."""
    end = _HEADER_END.search(raw)
    body = raw[end.end() :] if end else b""
    parts = [f"{name}:{_first(headers, name) or ''}" for name in _ID_HEADERS]
    return "\n".join(parts).encode("utf-8", "surrogateescape") + b"\n\n" + body


def parse_mime(
    raw: bytes,
    *,
    limits: MimeLimits = DEFAULT_LIMITS,
    source: str = "rfc822",
    envelope_sender: str | None = None,
    email_metadata: Mapping[str, Any] | None = None,
) -> ParsedEmail:
    """An RFC 5322 message as an ingest payload, or the reason it is ignored (auto-reply, bounce).

    `envelope_sender` is the SMTP MAIL FROM when the caller knows it (a provider's envelope); otherwise the
    Return-Path header is used. `email_metadata` is merged into `metadata.email` (provider extras).
    Raises PayloadError only (see the module docstring).
    """
    try:
        return _parse_mime(bytes(raw), limits, source, envelope_sender, email_metadata or {})
    except PayloadError:
        raise
    except _STDLIB_ERRORS as exc:
        raise _reraise("message", exc) from None


def _parse_mime(
    raw: bytes, limits: MimeLimits, source: str, envelope_sender: str | None, email_metadata: Mapping[str, Any]
) -> ParsedEmail:
    if len(raw) > limits.max_email_bytes:
        raise ContentTooLarge(
            f"the message is {len(raw)} bytes; the limit is {limits.max_email_bytes}", field="message"
        )
    _prescan(raw, limits)
    msg = _PARSER.parsebytes(raw)
    headers = _raw_headers(msg)
    if not headers:
        raise PayloadError(400, "not an RFC 5322 message: it has no header fields", field="message")
    leaves, report_type = _walk(msg, limits)

    lenient_sender = _sender(headers, strict=False)
    envelope = envelope_sender if envelope_sender is not None else _envelope_sender(headers)
    message_id = next(iter(message_ids(_first(headers, "Message-ID"))), None)
    automatic = detect_automatic(
        headers,
        sender=lenient_sender.addr_spec if lenient_sender else None,
        envelope_sender=envelope,
        report_type=report_type,
    )
    if automatic is not None:
        reason, detail = automatic
        external_id = external_id_for(message_id, _id_material(raw, headers))
        return IgnoredEmail(reason=reason, detail=detail, external_id=external_id, source=source)

    sender = _sender(headers, strict=True)
    subject = decode_subject(_first(headers, "Subject"))
    reply_to = reply_addresses(parse_mailboxes(_first(headers, "Reply-To"), "Reply-To"))

    email_msg = msg if isinstance(msg, EmailMessage) else None
    plain = email_msg.get_body(preferencelist=("plain",)) if email_msg else None
    html = email_msg.get_body(preferencelist=("html",)) if email_msg else None
    body_parts = {id(part) for part in (plain, html) if part is not None}
    text = _part_text(plain, "text/plain") if plain is not None else None
    html_text = _part_text(html, "text/html") if html is not None else None

    attachment_parts = [
        leaf.part
        for leaf in leaves
        if id(leaf.part) not in body_parts and not (leaf.in_alternative and leaf.part.get_content_maintype() == "text")
    ]
    check_attachment_count(len(attachment_parts), limits)
    attachments = [_attachment_of(part, index, limits) for index, part in enumerate(attachment_parts)]

    metadata: dict[str, Any] = {}
    to = _lenient_addresses(_first(headers, "To"))
    cc = _lenient_addresses(_first(headers, "Cc"))
    if to:
        metadata["to"] = to
    if cc:
        metadata["cc"] = cc
    date = _first(headers, "Date")
    if date:
        metadata["date"] = clean_text(_SURROGATES.sub("", date))[:100]
    metadata.update(email_metadata)

    fields = EmailFields(
        source=source,
        sender=sender,
        subject=subject,
        text=text,
        html=html_text,
        message_id=message_id,
        in_reply_to=message_ids(_first(headers, "In-Reply-To")),
        references=message_ids(_first(headers, "References")),
        reply_to=reply_to,
        attachments=attachments,
        id_material=_id_material(raw, headers),
        field_names=_MIME_FIELDS,
        audit_headers=[(name, _SURROGATES.sub("\ufffd", _FOLD.sub("", value))) for name, value in headers],
        email_metadata=metadata,
    )
    return build_inbound(fields)
