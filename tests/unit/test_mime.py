"""Raw RFC 5322 messages to ingest payloads: each fixture's sender, subject, body, threading and attachments,
auto-replies and bounces ignored, and every kind of bad input refused with a PayloadError naming the field."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.mime import (
    ContentTooLarge,
    IgnoredEmail,
    InboundEmail,
    MimeLimits,
    decode_text,
    detect_automatic,
    message_ids,
    parse_mime,
)
from ingest.schemas import PayloadError, normalize_payload

DATA = Path(__file__).resolve().parent.parent / "data" / "inbound"


def fixture(name: str) -> bytes:
    return (DATA / name).read_bytes()


def parsed(raw: bytes, **kwargs: object) -> InboundEmail:
    result = parse_mime(raw, **kwargs)  # type: ignore[arg-type]
    assert isinstance(result, InboundEmail), result
    return result


def ignored(raw: bytes, **kwargs: object) -> IgnoredEmail:
    result = parse_mime(raw, **kwargs)  # type: ignore[arg-type]
    assert isinstance(result, IgnoredEmail), result
    return result


def refused(raw: bytes, **kwargs: object) -> PayloadError:
    with pytest.raises(PayloadError) as info:
        parse_mime(raw, **kwargs)  # type: ignore[arg-type]
    return info.value


def message(headers: str, body: str | bytes = "Hello, my invoice is wrong.\n") -> bytes:
    """A message from header lines (LF-separated) and a body."""
    head = headers.strip("\n").replace("\n", "\r\n").encode("utf-8") + b"\r\n\r\n"
    return head + (body.encode("utf-8") if isinstance(body, str) else body)


BASIC = "From: Ada <ada@example.com>\nTo: support@example.net\nSubject: Invoice\nMessage-ID: <m1@example.com>"


# --- the fixtures -------------------------------------------------------------------------------------------


def test_plain_message() -> None:
    result = parsed(fixture("plain.eml"))
    payload = result.payload
    assert payload.channel == "email"
    assert payload.customer_email == "ada.lovelace@analytical.example.com"  # From, lower-cased: the identity
    assert payload.customer_name == "Ada Lovelace"
    assert payload.subject == "Where can I download last year's invoices?"
    assert payload.external_id == payload.message_id == "<CAF7nq3e1=plain.0001@mail.analytical.example.com>"
    assert payload.in_reply_to is None and payload.references == []
    assert result.reply_to == ("billing-desk@analytical.example.com",)  # where replies go, not who the customer is
    ticket = normalize_payload(payload)
    assert ticket.body == (
        "Hello,\n\nI need the PDF invoices for every month of 2025 for our auditors.\n"
        "Where can I download them in one go?"
    )  # "Thanks,\nAda" trimmed as a signature
    email = ticket.metadata["email"]
    assert email["source"] == "rfc822"
    assert email["reply_to"] == ["billing-desk@analytical.example.com"]
    assert email["to"] == ["support@example.net"]
    assert email["cc"] == ["charles@analytical.example.com"]
    assert email["date"] == "Tue, 3 Nov 2026 09:13:58 +0000"
    assert result.attachments == ()
    assert ["Received", result.raw_object["email_headers"][1][1]] == result.raw_object["email_headers"][1]
    json.dumps(result.raw_object)  # jsonb-safe audit record


def test_html_only_message_with_attachments() -> None:
    result = parsed(fixture("html-attachments.eml"))
    payload = result.payload
    assert payload.customer_email == "ada.lovelace@analytical.example.com"
    assert payload.customer_name == "Ada Lovelace – Finance"  # RFC 2047 display name
    assert payload.subject == "CSV export fails – Error 500"  # RFC 2047 base64 subject
    ticket = normalize_payload(payload)
    assert ticket.body.startswith("Hello support team,\n\nSince this morning the CSV export on the Reports page")
    assert "“Error 500”" in ticket.body  # entities decoded by the HTML normalizer
    assert "<" not in ticket.body and "style" not in ticket.body and "Head of Finance" not in ticket.body
    expected = [
        ("image001.png", "image/png", 69, "b1ff9c8ea3a780bad09b346c423d2d0e46815926879b18e841d928376a946640"),
        (
            "INV-2026-0311.pdf",
            "application/pdf",
            136,
            "ecbecf1cd983d89312637d5ed57ff33346fb7d65f5fcb817b921ca699b4637e8",
        ),
        (
            "Rechnungsübersicht 2026.csv",
            "text/csv",
            79,
            "41ada7239f3f97064f1b9bfdff0d2ccf028c5212ca0d666f09b20059b7d4015c",
        ),
    ]
    got = [(a.filename, a.content_type, a.size, a.sha256) for a in result.attachments]
    assert got == expected
    for attachment in result.attachments:
        assert hashlib.sha256(attachment.content).hexdigest() == attachment.sha256
    image, pdf, csv = result.attachments
    assert image.inline and image.content_id == "screenshot-01@analytical.example.com"
    assert not pdf.inline and pdf.content.startswith(b"%PDF-1.4")
    assert csv.content.startswith(b"invoice,amount,currency")
    summaries = ticket.metadata["email"]["attachments"]
    assert [s["filename"] for s in summaries] == [e[0] for e in expected]
    assert "content" not in summaries[0]


def test_reply_threads_and_trims_quoted_history() -> None:
    payload = parsed(fixture("reply.eml")).payload
    assert payload.subject == "Re: Where can I download last year's invoices?"
    assert payload.external_id == "<CAF7nq3e1=reply.0002@mail.analytical.example.com>"
    assert payload.in_reply_to == "<reply.7c1e0a.4b2f@deskpilot>"
    assert payload.references == [
        "<CAF7nq3e1=plain.0001@mail.analytical.example.com>",
        "<reply.7c1e0a.4b2f@deskpilot>",
    ]
    ticket = normalize_payload(payload)
    assert ticket.body == (
        "Thanks, the export worked. One more thing: the March invoice shows the old VAT number. "
        "Can you reissue it with DE-812345678?"
    )
    assert ticket.flags["trimmed_quote"] is True
    assert ticket.in_reply_to == "<reply.7c1e0a.4b2f@deskpilot>"


def test_iso_8859_1_message_decodes() -> None:
    payload = parsed(fixture("latin1.eml")).payload
    assert payload.customer_name == "François Müller"
    assert payload.customer_email == "francois.muller@exemple.example"
    assert payload.subject == "Problème de connexion après la mise à jour"
    body = normalize_payload(payload).body
    assert "Depuis la mise à jour de mardi" in body and "le code reçu par SMS est refusé" in body
    assert "vérifier mon compte ?" in body


def test_windows_1252_labelled_iso_8859_1_keeps_smart_quotes() -> None:
    raw = message(BASIC + "\nContent-Type: text/plain; charset=iso-8859-1", b"It says \x93locked\x94 \x96 why?\n")
    assert normalize_payload(parsed(raw).payload).body == "It says “locked” – why?"


def test_auto_reply_is_ignored() -> None:
    result = ignored(fixture("auto-reply.eml"))
    assert result.reason == "auto_submitted"
    assert result.detail == "Auto-Submitted: auto-replied"
    assert result.external_id == "<ooo.20261104070012.5521@navy.example.org>"
    assert result.to_json() == {"ignored": True, "reason": "auto_submitted", "detail": "Auto-Submitted: auto-replied"}


def test_bounce_is_ignored() -> None:
    result = ignored(fixture("bounce.eml"))
    assert result.reason == "delivery_status"
    assert result.external_id == "<20261104082140.7F3A21C0042@mx.support.example.net>"


def test_broken_charset_is_refused_naming_the_body() -> None:
    error = refused(fixture("broken-charset.eml"))
    assert (error.status, error.field) == (422, "body")
    assert "unknown charset" in error.detail and "x-klingon-piqad" in error.detail


# --- auto-replies and bounces -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ("Auto-Submitted: auto-generated", "auto_submitted"),
        ("Auto-Submitted: Auto-Replied (vacation)", "auto_submitted"),
        ("X-Autoreply: yes", "x_autoreply"),
        ("X-Autorespond: Out of office", "x_autorespond"),
        ("Precedence: bulk", "precedence"),
        ("Precedence: list", "precedence"),
        ("Precedence: JUNK", "precedence"),
        ("Return-Path: <>", "null_sender"),
    ],
)
def test_automatic_headers_are_ignored(extra: str, reason: str) -> None:
    assert ignored(message(BASIC + "\n" + extra)).reason == reason


@pytest.mark.parametrize(
    "extra",
    ["Auto-Submitted: no", "X-Autoreply: no", "Precedence: first-class", "Return-Path: <ada@example.com>", ""],
)
def test_human_messages_are_not_ignored(extra: str) -> None:
    parsed(message(BASIC + ("\n" + extra if extra else "")))


def test_mailer_daemon_sender_is_ignored() -> None:
    raw = message("From: Mail Delivery Subsystem <MAILER-DAEMON@mx.example.com>\nSubject: failure notice")
    assert ignored(raw).reason == "mailer_daemon"


def test_read_receipt_is_ignored() -> None:
    raw = message(
        BASIC + '\nContent-Type: multipart/report; report-type=disposition-notification; boundary="r"',
        "--r\r\nContent-Type: text/plain\r\n\r\nDisplayed\r\n"
        "--r\r\nContent-Type: message/disposition-notification\r\n\r\n"
        "Disposition: manual-action/MDN-sent-manually; displayed\r\n"
        "--r--\r\n",
    )
    assert ignored(raw).reason == "read_receipt"


def test_delivery_status_wrapped_in_mixed_is_ignored() -> None:
    raw = message(
        BASIC + '\nContent-Type: multipart/mixed; boundary="m"',
        "--m\r\nContent-Type: text/plain\r\n\r\nundeliverable\r\n"
        "--m\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.com\r\n\r\n"
        "Final-Recipient: rfc822; gone@example.com\r\nAction: failed\r\nStatus: 5.1.1\r\n--m--\r\n",
    )
    assert ignored(raw).reason == "delivery_status"


def test_bounce_carrying_a_huge_original_is_ignored_not_refused() -> None:
    big = "A" * 5000
    raw = message(
        "From: MAILER-DAEMON@mx.example.com\nSubject: Undelivered\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"',
        f"--b\r\nContent-Type: text/plain\r\n\r\nfailed\r\n"
        f"--b\r\nContent-Type: application/octet-stream\r\n\r\n{big}\r\n--b--\r\n",
    )
    result = parse_mime(raw, limits=MimeLimits(max_attachment_bytes=100, max_attachments=0))
    assert isinstance(result, IgnoredEmail) and result.reason == "delivery_status"


def test_detect_automatic_directly() -> None:
    assert detect_automatic([("auto-submitted", "auto-notified")], sender="a@example.com") is not None
    assert detect_automatic([("Precedence", "bulk; comment")], sender=None) == ("precedence", "Precedence: bulk")
    assert detect_automatic([], sender="a@example.com", envelope_sender="") == detect_automatic(
        [], sender=None, envelope_sender="<>"
    )
    assert detect_automatic([], sender="a@example.com", envelope_sender=None) is None


# --- body selection and content -----------------------------------------------------------------------------


def test_empty_text_part_falls_back_to_html() -> None:
    raw = message(
        BASIC + '\nContent-Type: multipart/alternative; boundary="a"',
        "--a\r\nContent-Type: text/plain\r\n\r\n\r\n"
        "--a\r\nContent-Type: text/html\r\n\r\n"
        "<p>The <b>export</b> button does nothing &amp; no error shows.</p>\r\n--a--\r\n",
    )
    assert normalize_payload(parsed(raw).payload).body == "The export button does nothing & no error shows."


def test_html_part_without_recognisable_markup_is_still_rendered() -> None:
    raw = message(BASIC + "\nContent-Type: text/html; charset=utf-8", "Tom &amp; Jerry cannot log in")
    assert normalize_payload(parsed(raw).payload).body == "Tom & Jerry cannot log in"


def test_attachment_only_message_gets_a_body_naming_the_files() -> None:
    raw = message(
        BASIC + '\nContent-Type: multipart/mixed; boundary="x"',
        '--x\r\nContent-Type: image/png\r\nContent-Disposition: attachment; filename="error.png"\r\n'
        "Content-Transfer-Encoding: base64\r\n\r\niVBORw0KGgo=\r\n--x--\r\n",
    )
    result = parsed(raw)
    assert result.payload.body == "(no message text; attached: error.png)"
    assert result.attachments[0].content == b"\x89PNG\r\n\x1a\n"


def test_forwarded_message_is_one_attachment() -> None:
    inner = "From: someone@example.org\r\nSubject: original\r\n\r\nOriginal text\r\n"
    raw = message(
        BASIC + '\nContent-Type: multipart/mixed; boundary="f"',
        f"--f\r\nContent-Type: text/plain\r\n\r\nSee the forwarded mail.\r\n"
        f"--f\r\nContent-Type: message/rfc822\r\n\r\n{inner}--f--\r\n",
    )
    result = parsed(raw)
    assert normalize_payload(result.payload).body == "See the forwarded mail."
    (forwarded,) = result.attachments
    assert forwarded.filename == "forwarded-message.eml" and forwarded.content_type == "message/rfc822"
    assert b"Subject: original" in forwarded.content


def test_attachment_file_names_are_cleaned() -> None:
    raw = message(
        BASIC + '\nContent-Type: multipart/mixed; boundary="x"',
        "--x\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
        "--x\r\nContent-Type: application/octet-stream\r\n"
        'Content-Disposition: attachment; filename="../../etc/\u202epasswd"\r\n\r\nx\r\n'
        "--x\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment\r\n\r\ny\r\n--x--\r\n",
    )
    first, second = parsed(raw).attachments
    assert "/" not in first.filename and "\u202e" not in first.filename and first.filename.endswith("passwd")
    assert second.filename == "attachment-2.pdf"


def test_message_without_message_id_gets_a_stable_content_id() -> None:
    headers = "From: ada@example.com\nTo: support@example.net\nSubject: Hi\nDate: Tue, 3 Nov 2026 09:00:00 +0000"
    first = parsed(message("Received: from a by b; Tue, 3 Nov 2026 09:00:01 +0000\n" + headers)).payload
    relayed = parsed(message("Received: from c by d; Tue, 3 Nov 2026 09:07:00 +0000\n" + headers)).payload
    other = parsed(message(headers, "A different question.\n")).payload
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", first.external_id)
    assert first.external_id == relayed.external_id  # trace headers added by relays do not change it
    assert first.external_id != other.external_id
    assert first.message_id is None


def test_overlong_message_id_is_hashed_for_the_external_id() -> None:
    long_id = "<" + "x" * 400 + "@example.com>"
    payload = parsed(message(BASIC.replace("<m1@example.com>", long_id))).payload
    assert payload.message_id == long_id
    assert re.fullmatch(r"message-id-sha256:[0-9a-f]{64}", payload.external_id)


def test_garbage_threading_headers_are_dropped_not_refused() -> None:
    raw = message(BASIC + "\nIn-Reply-To: (no id here) garbage\nReferences: <ok@example.com> <bad\x01id@x> <also ok@x>")
    payload = parsed(raw).payload
    assert payload.in_reply_to is None
    assert payload.references == ["<ok@example.com>"]


def test_message_ids_helper() -> None:
    assert message_ids("<a@b> <c@d> <a@b>") == ["<a@b>", "<c@d>"]
    assert message_ids("bare@example.com") == ["<bare@example.com>"]
    assert message_ids("two words") == []
    assert message_ids(None) == []


def test_undeclared_charset_utf8_is_accepted() -> None:
    raw = message(BASIC, "Grüße, das Passwort geht nicht\n".encode())
    assert normalize_payload(parsed(raw).payload).body == "Grüße, das Passwort geht nicht"


def test_utf8_headers_rfc6532_are_accepted() -> None:
    raw = message("From: Jérôme Dupont <jerome@example.com>\nSubject: Problème de facture\nMessage-ID: <u@x>")
    payload = parsed(raw).payload
    assert (payload.customer_name, payload.subject) == ("Jérôme Dupont", "Problème de facture")


def test_decode_text_rules() -> None:
    assert decode_text("é".encode("cp1252"), "windows-1252", field="f", what="w") == "é"
    assert decode_text(b"plain", None, field="f", what="w") == "plain"
    for charset in ("base64", "rot13", "unicode_escape", "idna", "no-such-charset"):
        with pytest.raises(PayloadError) as info:
            decode_text(b"abc", charset, field="text", what="the text field")
        assert info.value.field == "text"


def test_same_message_gives_the_same_content_hash() -> None:
    first = normalize_payload(parsed(fixture("reply.eml")).payload)
    again = normalize_payload(parsed(fixture("reply.eml")).payload)
    assert first.content_hash == again.content_hash


# --- bad input ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [b"", b"\r\n\r\n", b"just some text without any header\n\nmore"])
def test_not_a_message(raw: bytes) -> None:
    error = refused(raw)
    assert (error.status, error.field) == (400, "message")


@pytest.mark.parametrize(
    ("headers", "field"),
    [
        ("To: support@example.net\nSubject: no sender", "From"),
        ("From: not an address\nSubject: x", "From"),
        ("From: <>\nSubject: x", "From"),
        ("From: Ada <\nSubject: x", "From"),  # crashes the standard library's address parser (IndexError)
        ("From: =?x-unknown-cs?Q?J=E9r=F4me?= <j@example.com>\nSubject: x", "From"),
        ("From: ada@example.com\nSubject: =?x-unknown-cs?Q?caf=E9?=", "Subject"),
        ("From: ada@example.com\nSubject: =?utf-8?B?/////w==?=", "Subject"),
        ("From: ada@example.com\nReply-To: =?utf-8?Q?=FF?= <r@example.com>", "Reply-To"),
    ],
)
def test_bad_headers_are_refused_naming_the_header(headers: str, field: str) -> None:
    error = refused(message(headers))
    assert (error.status, error.field) == (422, field), error.detail


def test_8bit_header_that_is_not_utf8_is_refused() -> None:
    raw = b"From: ada@example.com\r\nSubject: Probl\xe8me\r\n\r\nhello\r\n"
    error = refused(raw)
    assert (error.status, error.field) == (422, "Subject")
    assert "not UTF-8" in error.detail


def test_invalid_sender_domain_is_refused_naming_from() -> None:
    error = refused(message("From: ada@localhost\nSubject: x"))
    assert (error.status, error.field) == (422, "From")
    assert error.detail.startswith("From: customer_email is not a valid address")


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/plain; charset=utf-8", b"caf\xe9 \xff\xfe"),
        ("text/plain", b"caf\xe9"),  # no charset, and not UTF-8
        ("text/plain; charset=us-ascii", b"caf\xe9"),
        ("text/plain; charset=shift_jis", b"\x82\xa0\x82"),
        ("text/html; charset=x-nonexistent", b"<p>hi</p>"),
    ],
)
def test_undecodable_body_is_refused_naming_the_body(content_type: str, body: bytes) -> None:
    error = refused(message(BASIC + f"\nContent-Type: {content_type}", body))
    assert (error.status, error.field) == (422, "body"), error.detail


def test_empty_body_is_refused() -> None:
    error = refused(message(BASIC, "\r\n \u200b\u2060 \r\n"))  # only invisible characters
    assert (error.status, error.field) == (422, "body")


def test_multipart_without_boundary() -> None:
    error = refused(message(BASIC + "\nContent-Type: multipart/mixed", "--x\r\nhello\r\n"))
    assert (error.status, error.field) == (422, "Content-Type")


def test_multipart_whose_boundary_never_appears() -> None:
    error = refused(message(BASIC + '\nContent-Type: multipart/mixed; boundary="zz"', "no parts here\r\n"))
    assert (error.status, error.field) == (422, "Content-Type")


def _nested(depth: int) -> bytes:
    head = BASIC + '\nContent-Type: multipart/mixed; boundary="b0"'
    body = ""
    for level in range(1, depth):
        body += f'--b{level - 1}\r\nContent-Type: multipart/mixed; boundary="b{level}"\r\n\r\n'
    body += f"--b{depth - 1}\r\nContent-Type: text/plain\r\n\r\ndeep\r\n"
    for level in range(depth - 1, -1, -1):
        body += f"--b{level}--\r\n"
    return message(head, body)


def test_nesting_within_the_limit_is_fine() -> None:
    assert normalize_payload(parsed(_nested(5)).payload).body == "deep"


def test_multipart_bomb_deep_nesting() -> None:
    error = refused(_nested(30))
    assert (error.status, error.field) == (422, "Content-Type")
    assert "nested deeper" in error.detail


def test_multipart_bomb_many_parts() -> None:
    parts = "".join("--w\r\nContent-Type: text/plain\r\n\r\nx\r\n" for _ in range(5000))
    error = refused(message(BASIC + '\nContent-Type: multipart/mixed; boundary="w"', parts + "--w--\r\n"))
    assert (error.status, error.field) == (422, "Content-Type")
    assert "MIME parts" in error.detail


def test_multipart_bomb_nested_messages() -> None:
    raw = message(BASIC + "\nContent-Type: message/rfc822", "Content-Type: message/rfc822\r\n\r\n" * 20_000)
    error = refused(raw)
    assert (error.status, error.field) == (422, "Content-Type")


def test_parts_under_the_limit_but_deeper_than_allowed_by_limits() -> None:
    error = refused(_nested(4), limits=MimeLimits(max_depth=2))
    assert "nested deeper than 2" in error.detail


def test_attachment_over_the_limit_is_413() -> None:
    raw = message(
        BASIC + '\nContent-Type: multipart/mixed; boundary="x"',
        "--x\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
        '--x\r\nContent-Type: application/zip\r\nContent-Disposition: attachment; filename="logs.zip"\r\n\r\n'
        + "z" * 2000
        + "\r\n--x--\r\n",
    )
    with pytest.raises(ContentTooLarge) as info:
        parse_mime(raw, limits=MimeLimits(max_attachment_bytes=1000))
    assert (info.value.status, info.value.field) == (413, "attachments")
    assert "logs.zip" in info.value.detail
    assert parsed(raw, limits=MimeLimits(max_attachment_bytes=4000)).attachments[0].size == 2000


def test_too_many_attachments_is_413() -> None:
    parts = "".join(
        f'--x\r\nContent-Type: text/csv\r\nContent-Disposition: attachment; filename="f{i}.csv"\r\n\r\na,b\r\n'
        for i in range(4)
    )
    raw = message(
        BASIC + '\nContent-Type: multipart/mixed; boundary="x"', "--x\r\n\r\nsee files\r\n" + parts + "--x--\r\n"
    )
    error = refused(raw, limits=MimeLimits(max_attachments=3))
    assert isinstance(error, ContentTooLarge) and (error.status, error.field) == (413, "attachments")
    assert len(parsed(raw, limits=MimeLimits(max_attachments=4)).attachments) == 4


def test_message_over_the_size_limit_is_413() -> None:
    error = refused(fixture("plain.eml"), limits=MimeLimits(max_email_bytes=100))
    assert isinstance(error, ContentTooLarge) and (error.status, error.field) == (413, "message")


# --- never anything but a PayloadError ----------------------------------------------------------------------

FIXTURES = [fixture(p.name) for p in sorted(DATA.glob("*.eml"))]
FRAGMENTS = [
    b"From: a@example.com\r\n",
    b"From: =?utf-8?q?=FF?= <a@b.example>\r\n",
    b"Subject: =?iso-8859-1?b?////?=\r\n",
    b"Content-Type: multipart/mixed; boundary=b\r\n",
    b"Content-Type: message/rfc822\r\n",
    b"Content-Type: text/plain; charset=\xff\r\n",
    b"Content-Type: text/html; charset=utf-16\r\n",
    b"Content-Transfer-Encoding: base64\r\n",
    b"Content-Transfer-Encoding: quoted-printable\r\n",
    b"Content-Transfer-Encoding: x-uuencode\r\n",
    b"Content-Disposition: attachment; filename*=bogus''%ff%fe\r\n",
    b"Message-ID: <\x00@\xff>\r\n",
    b"References: <<<>>> <a@b>\r\n",
    b"Auto-Submitted: no\r\n",
    b"\r\n",
    b"--b\r\n",
    b"--b--\r\n",
    b"=?utf-8?q?",
    b"\xc3\xa9\xff\x00",
    b"<html><body><p>hi</p>",
]


def _check(raw: bytes) -> None:
    try:
        result = parse_mime(raw, limits=MimeLimits(max_attachment_bytes=10_000, max_attachments=5))
    except PayloadError as exc:
        status = exc.status
        assert status in (400, 413, 422)
        return
    assert isinstance(result, InboundEmail | IgnoredEmail)
    if isinstance(result, InboundEmail):
        normalize_payload(result.payload)
        json.dumps(result.raw_object)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=3000))
def test_arbitrary_bytes_raise_only_payload_errors(raw: bytes) -> None:
    _check(raw)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(FIXTURES), st.integers(0, 10_000), st.integers(0, 200), st.binary(max_size=200))
def test_mutated_fixtures_raise_only_payload_errors(raw: bytes, at: int, cut: int, insert: bytes) -> None:
    at %= len(raw) + 1
    _check(raw[:at] + insert + raw[at + cut :])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(FRAGMENTS) | st.binary(max_size=40), max_size=25))
def test_assembled_fragments_raise_only_payload_errors(pieces: list[bytes]) -> None:
    _check(b"".join(pieces))
