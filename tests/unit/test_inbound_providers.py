"""Mail providers' inbound webhooks: each documented payload shape (fixtures) to an ingest payload, auto-replies
and bounces ignored, bad input refused naming the provider's field, and each provider's authentication."""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.mime import ContentTooLarge, IgnoredEmail, InboundEmail, MimeLimits
from ingest.providers import (
    FormFile,
    TokenCache,
    mailgun_signature,
    parse_mailgun,
    parse_postmark,
    parse_sendgrid,
    verify_basic_auth,
    verify_mailgun,
    verify_mailgun_async,
    verify_mailgun_signature,
    verify_postmark_auth,
    verify_sendgrid_secret,
    verify_shared_secret,
)
from ingest.schemas import PayloadError, normalize_payload
from ingest.signatures import SignatureError

DATA = Path(__file__).resolve().parent.parent / "data" / "inbound"
MAILGUN_KEY = "key-deskpilot-fixture-signing-key-0000"
MAILGUN_TIME = 1794391200


def load(name: str) -> dict[str, Any]:
    return json.loads((DATA / name).read_text(encoding="utf-8"))


def form(name: str) -> tuple[dict[str, Any], dict[str, FormFile]]:
    """A form-post fixture as (fields, files)."""
    document = load(name)
    files = {
        key: FormFile(base64.b64decode(item["content_base64"]), item["filename"], item["content_type"])
        for key, item in document.pop("_files", {}).items()
    }
    return document, files


def sendgrid_wire() -> tuple[dict[str, Any], dict[str, FormFile]]:
    """The parsed SendGrid fixture with `text` and `html` as the bytes SendGrid sends (in `charsets`)."""
    fields, files = form("sendgrid-parsed.json")
    charsets = json.loads(fields["charsets"])
    fields["text"] = fields["text"].encode(charsets["text"])
    fields["html"] = fields["html"].encode(charsets["html"])
    return fields, files


def inbound(result: InboundEmail | IgnoredEmail) -> InboundEmail:
    assert isinstance(result, InboundEmail), result
    return result


def attachment_rows(result: InboundEmail) -> list[tuple[str, str, int, str]]:
    for attachment in result.attachments:
        assert hashlib.sha256(attachment.content).hexdigest() == attachment.sha256
    return [(a.filename, a.content_type, a.size, a.sha256) for a in result.attachments]


# --- Postmark -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("as_bytes", [False, True])
def test_postmark_fixture(as_bytes: bool) -> None:
    document = (DATA / "postmark.json").read_bytes() if as_bytes else load("postmark.json")
    result = inbound(parse_postmark(document))
    payload = result.payload
    assert result.source == "postmark"
    assert (payload.customer_email, payload.customer_name) == ("grace.hopper@navy.example.org", "Grace Hopper")
    assert payload.subject == "Re: SSO login fails after certificate rotation"
    assert payload.external_id == payload.message_id == "<CAH2r5mt+9Zq1pm.0007@mail.navy.example.org>"
    assert payload.in_reply_to == "<reply.2b7e55.91f0@deskpilot>"
    assert payload.references == ["<CAH2r5mt+first.0006@mail.navy.example.org>", "<reply.2b7e55.91f0@deskpilot>"]
    ticket = normalize_payload(payload)
    assert ticket.body == (
        "We rotated the IdP certificate as described, but every SAML login still ends on the error page. "
        "The log line is attached."
    )  # our own trimming of TextBody agrees with Postmark's StrippedTextReply
    assert attachment_rows(result) == [
        ("sso-error.log", "text/plain", 95, "fb9de06242f31014d2fa366af037fa2f8fcceaae2331ca2f56ecfb59acda8321"),
        ("login-page.png", "image/png", 69, "b1ff9c8ea3a780bad09b346c423d2d0e46815926879b18e841d928376a946640"),
    ]
    assert result.attachments[1].content_id == "ii_login01@navy.example.org"
    email = ticket.metadata["email"]
    assert email["source"] == "postmark"
    assert email["mailbox_hash"] == "ticket-4711"
    assert email["recipient"] == "7f3c2a91d0e84b5c9a61f2e0b4d8c713+ticket-4711@inbound.postmarkapp.com"
    assert email["cc"] == ["alan.turing@navy.example.org"]
    assert "reply_to" not in email and result.reply_to == ()
    assert ["X-Spam-Status", "No"] in result.raw_object["email_headers"]


def test_postmark_without_message_id_header_uses_postmarks_id() -> None:
    document = load("postmark.json")
    document["Headers"] = [h for h in document["Headers"] if h["Name"] != "Message-ID"]
    payload = inbound(parse_postmark(document)).payload
    assert payload.external_id == "postmark:5d9a2f61-3c0b-4e8e-8f7a-2a1c9b6d4e10"
    assert payload.message_id is None


def test_postmark_html_only_and_reply_to() -> None:
    document = load("postmark.json")
    document["TextBody"] = ""
    document["ReplyTo"] = "Helpdesk <helpdesk@navy.example.org>"
    result = inbound(parse_postmark(document))
    body = normalize_payload(result.payload).body
    assert body.startswith("We rotated the IdP certificate") and "Settings" not in body  # blockquote trimmed
    assert result.reply_to == ("helpdesk@navy.example.org",)


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ({"Name": "Auto-Submitted", "Value": "auto-replied"}, "auto_submitted"),
        ({"Name": "X-Autorespond", "Value": "vacation"}, "x_autorespond"),
        ({"Name": "Precedence", "Value": "bulk"}, "precedence"),
        (
            {"Name": "Content-Type", "Value": "multipart/report; report-type=delivery-status; boundary=x"},
            "delivery_status",
        ),
        ({"Name": "Return-Path", "Value": "<>"}, "null_sender"),
    ],
)
def test_postmark_automatic_messages_are_ignored(header: dict[str, str], reason: str) -> None:
    document = load("postmark.json")
    document["Headers"] = [h for h in document["Headers"] if h["Name"] != "Return-Path"] + [header]
    result = parse_postmark(document)
    assert isinstance(result, IgnoredEmail) and result.reason == reason
    assert result.external_id == "<CAH2r5mt+9Zq1pm.0007@mail.navy.example.org>"


def test_postmark_mailer_daemon_is_ignored() -> None:
    document = load("postmark.json")
    document["FromFull"] = {"Email": "MAILER-DAEMON@inbound.postmarkapp.com", "Name": "Mail Delivery System"}
    assert parse_postmark(document).reason == "mailer_daemon"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("change", "status", "field"),
    [
        (lambda d: d.update(FromFull="grace@example.org"), 422, "FromFull"),
        (lambda d: d.update(FromFull={"Email": "not-an-address", "Name": ""}), 422, "FromFull.Email"),
        (lambda d: d.update(FromFull={"Email": "grace@localhost", "Name": ""}), 422, "FromFull.Email"),
        (lambda d: d.update(FromFull=None, From=""), 422, "From"),
        (lambda d: d.update(Subject=42), 422, "Subject"),
        (lambda d: d.update(TextBody="", HtmlBody="", Attachments=[]), 422, "TextBody"),
        (lambda d: d.update(Headers={"Message-ID": "<x@y>"}), 422, "Headers"),
        (lambda d: d.update(Headers=[{"Name": "X", "Value": 1}]), 422, "Headers"),
        (lambda d: d.update(Attachments="none"), 422, "Attachments"),
        (lambda d: d["Attachments"][0].update(Content="not base64!!"), 422, "Attachments"),
        (lambda d: d["Attachments"][0].update(Content=["x"]), 422, "Attachments"),
        (lambda d: d["Attachments"][0].update(ContentLength=50_000_000), 413, "Attachments"),
    ],
)
def test_postmark_bad_input_names_the_field(change: Any, status: int, field: str) -> None:
    document = load("postmark.json")
    change(document)
    with pytest.raises(PayloadError) as info:
        parse_postmark(document)
    assert (info.value.status, info.value.field) == (status, field), info.value.detail


def test_postmark_attachment_limits() -> None:
    document = load("postmark.json")
    with pytest.raises(ContentTooLarge) as info:
        parse_postmark(document, limits=MimeLimits(max_attachment_bytes=80))  # the 95-byte log; ContentLength honest
    assert (info.value.status, info.value.field) == (413, "Attachments")
    document["Attachments"][0]["ContentLength"] = 1  # a lying ContentLength is caught on the decoded size
    with pytest.raises(ContentTooLarge):
        parse_postmark(document, limits=MimeLimits(max_attachment_bytes=80))
    with pytest.raises(ContentTooLarge) as info:
        parse_postmark(load("postmark.json"), limits=MimeLimits(max_attachments=1))
    assert "2 attachments" in info.value.detail


@pytest.mark.parametrize(("body", "status"), [(b"{not json", 400), (b"\xff\xfe", 400), (b"[1, 2]", 422)])
def test_postmark_body_that_is_not_a_json_object(body: bytes, status: int) -> None:
    with pytest.raises(PayloadError) as info:
        parse_postmark(body)
    assert info.value.status == status


def test_postmark_unknown_fields_are_ignored() -> None:
    document = load("postmark.json")
    document["SomeFieldPostmarkAddsLater"] = {"nested": [1, 2, 3]}
    assert isinstance(parse_postmark(document), InboundEmail)


# --- SendGrid -----------------------------------------------------------------------------------------------


def test_sendgrid_parsed_fixture() -> None:
    fields, files = sendgrid_wire()
    result = inbound(parse_sendgrid(fields, files))
    payload = result.payload
    assert result.source == "sendgrid"
    assert (payload.customer_email, payload.customer_name) == ("juergen.weiss@kaufhaus.example.de", "Jürgen Weiß")
    assert payload.subject == "Rückerstattung für Rechnung 2026-118"
    assert payload.external_id == "<6f1c0a7e-sendgrid.0008@kaufhaus.example.de>"
    body = normalize_payload(payload).body
    assert "doppelt abgebucht (2 × 348,00 €)" in body  # decoded from ISO-8859-15 as `charsets` says
    assert attachment_rows(result) == [
        (
            "Erstattungsformular.pdf",
            "application/pdf",
            50,
            "b4d4b45312f930a49b96a83d43afc47d56f8f94aa05a2b4a2e0e517088ea5307",
        )
    ]
    email = normalize_payload(payload).metadata["email"]
    assert email["recipient"] == "support@parse.example.net"
    assert email["to"] == ["support@parse.example.net"]


def test_sendgrid_fields_already_decoded_as_text_are_accepted() -> None:
    fields, files = form("sendgrid-parsed.json")
    assert "2 × 348,00 €" in normalize_payload(inbound(parse_sendgrid(fields, files)).payload).body


def test_sendgrid_display_name_with_comma_comes_from_the_raw_header() -> None:
    fields, files = sendgrid_wire()
    fields["headers"] = fields["headers"].replace(
        "From: =?ISO-8859-1?Q?J=FCrgen_Wei=DF?=", "From: =?ISO-8859-1?Q?Wei=DF=2C_J=FCrgen?="
    )
    fields["from"] = "Weiß, Jürgen <juergen.weiss@kaufhaus.example.de>"  # SendGrid's decoded form, unquoted
    payload = inbound(parse_sendgrid(fields, files)).payload
    assert (payload.customer_email, payload.customer_name) == ("juergen.weiss@kaufhaus.example.de", "Weiß, Jürgen")


def test_sendgrid_raw_fixture() -> None:
    result = inbound(parse_sendgrid(load("sendgrid-raw.json")))
    payload = result.payload
    assert result.source == "sendgrid"
    assert payload.customer_email == "linus@startup.example.io"
    assert payload.subject == "API returns 429 although we are under the rate limit"
    assert payload.external_id == "<20261110164009.raw.0009@startup.example.io>"
    assert normalize_payload(payload).body.startswith("Since 15:00 UTC every call to /v2/reports answers 429")
    assert normalize_payload(payload).metadata["email"]["recipient"] == "support@parse.example.net"


def test_sendgrid_raw_as_bytes_and_null_envelope_sender() -> None:
    fields = load("sendgrid-raw.json")
    fields["email"] = fields["email"].encode()
    assert isinstance(parse_sendgrid(fields), InboundEmail)
    fields["envelope"] = json.dumps({"to": ["support@parse.example.net"], "from": ""})
    result = parse_sendgrid(fields)
    assert isinstance(result, IgnoredEmail) and result.reason == "null_sender"


def test_sendgrid_raw_bounce_is_ignored() -> None:
    fields = load("sendgrid-raw.json")
    fields["email"] = (DATA / "bounce.eml").read_text()
    assert parse_sendgrid(fields).reason == "delivery_status"  # type: ignore[union-attr]


def test_sendgrid_parsed_auto_reply_is_ignored() -> None:
    fields, files = sendgrid_wire()
    fields["headers"] += "Auto-Submitted: auto-replied\nX-Autoreply: yes\n"
    result = parse_sendgrid(fields, files)
    assert isinstance(result, IgnoredEmail) and result.reason == "auto_submitted"
    assert result.external_id == "<6f1c0a7e-sendgrid.0008@kaufhaus.example.de>"


@pytest.mark.parametrize(
    ("change", "status", "field"),
    [
        (lambda f, _: f.update(charsets="{broken"), 422, "charsets"),
        (lambda f, _: f.update(charsets='["utf-8"]'), 422, "charsets"),
        (lambda f, _: f.update(envelope="nope"), 422, "envelope"),
        (lambda f, _: f.update(text="ä".encode() + b"\xff", charsets='{"text": "utf-8"}'), 422, "text"),
        (lambda f, _: f.update(charsets='{"text": "x-mac-klingon", "html": "UTF-8"}'), 422, "text"),
        (lambda f, _: f.update(html=b"<p>\xff</p>", charsets='{"text": "iso-8859-15", "html": "UTF-8"}'), 422, "html"),
        (lambda f, _: f.update({"attachment-info": "{{"}), 422, "attachment-info"),
        (lambda f, _: f.update(attachments="two"), 422, "attachments"),
        (lambda f, files: files.clear(), 422, "attachment1"),
        (lambda f, _: f.update(attachments="99"), 413, "attachments"),
        (lambda f, _: f.update({"from": "nobody", "headers": "Subject: x\n"}), 422, "from"),
        (lambda f, _: f.update(text=b"", html=b"", attachments="0"), 422, "text"),
    ],
)
def test_sendgrid_bad_input_names_the_field(change: Any, status: int, field: str) -> None:
    fields, files = sendgrid_wire()
    change(fields, files)
    with pytest.raises(PayloadError) as info:
        parse_sendgrid(fields, files)
    assert (info.value.status, info.value.field) == (status, field), info.value.detail


def test_sendgrid_attachment_over_the_limit() -> None:
    fields, files = sendgrid_wire()
    with pytest.raises(ContentTooLarge) as info:
        parse_sendgrid(fields, files, limits=MimeLimits(max_attachment_bytes=10))
    assert (info.value.status, info.value.field) == (413, "attachment1")


def test_sendgrid_raw_bad_mime_is_refused() -> None:
    fields = load("sendgrid-raw.json")
    fields["email"] = fields["email"].replace("text/plain; charset=utf-8", "text/plain; charset=x-unknown-cs")
    with pytest.raises(PayloadError) as info:
        parse_sendgrid(fields)
    assert (info.value.status, info.value.field) == (422, "body")


# --- Mailgun ------------------------------------------------------------------------------------------------


def test_mailgun_fixture() -> None:
    fields, files = form("mailgun.json")
    result = inbound(parse_mailgun(fields, files))
    payload = result.payload
    assert result.source == "mailgun"
    assert (payload.customer_email, payload.customer_name) == (
        "margaret.hamilton@shop.example.com",
        "Margaret Hamilton",
    )
    assert payload.subject == "Re: Seat count on the November invoice"
    assert payload.external_id == payload.message_id == "<0f6e2c1a-mailgun.0010@shop.example.com>"
    assert payload.in_reply_to == "<reply.c4d5e6.1a2b@deskpilot>"
    assert payload.references == ["<7a8b9c.first.0003@shop.example.com>", "<reply.c4d5e6.1a2b@deskpilot>"]
    ticket = normalize_payload(payload)
    assert ticket.body == "The invoice bills 60 seats but we only had 55 in November, see the attached export."
    assert attachment_rows(result) == [
        ("seat-history.csv", "text/csv", 39, "f541ee2a2b86ded242f21ffb348fb3e57ce8614620878ca2b4e55a92362c89e5")
    ]
    assert ticket.metadata["email"]["recipient"] == "support@mg.example.net"


def test_mailgun_without_message_headers_reads_the_header_fields() -> None:
    fields, files = form("mailgun.json")
    del fields["message-headers"]
    payload = inbound(parse_mailgun(fields, files)).payload
    assert payload.in_reply_to == "<reply.c4d5e6.1a2b@deskpilot>"
    fields["Auto-Submitted"] = "auto-replied"
    assert parse_mailgun(fields, files).reason == "auto_submitted"  # type: ignore[union-attr]


def test_mailgun_mime_variant() -> None:
    fields, _ = form("mailgun.json")
    for key in ("body-plain", "body-html", "stripped-text", "message-headers", "attachment-count"):
        del fields[key]
    fields["body-mime"] = (DATA / "reply.eml").read_bytes()
    payload = inbound(parse_mailgun(fields)).payload
    assert payload.external_id == "<CAF7nq3e1=reply.0002@mail.analytical.example.com>"
    assert payload.in_reply_to == "<reply.7c1e0a.4b2f@deskpilot>"
    fields["body-mime"] = (DATA / "auto-reply.eml").read_text()
    assert parse_mailgun(fields).reason == "auto_submitted"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (["Auto-Submitted", "auto-generated"], "auto_submitted"),
        (["X-Autoreply", "yes"], "x_autoreply"),
        (["Precedence", "list"], "precedence"),
        (["Content-Type", 'multipart/report; report-type="delivery-status"; boundary=b'], "delivery_status"),
    ],
)
def test_mailgun_automatic_messages_are_ignored(header: list[str], reason: str) -> None:
    fields, files = form("mailgun.json")
    headers = [pair for pair in json.loads(fields["message-headers"]) if pair[0] != header[0]]
    fields["message-headers"] = json.dumps([*headers, header])
    assert parse_mailgun(fields, files).reason == reason  # type: ignore[union-attr]


def test_mailgun_bounce_from_mailer_daemon_with_empty_sender() -> None:
    fields, files = form("mailgun.json")
    fields["sender"] = ""
    assert parse_mailgun(fields, files).reason == "null_sender"  # type: ignore[union-attr]
    fields, files = form("mailgun.json")
    fields["from"] = "Mail Delivery Subsystem <mailer-daemon@googlemail.example.com>"
    fields["message-headers"] = "[]"
    assert parse_mailgun(fields, files).reason == "mailer_daemon"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("change", "status", "field"),
    [
        (lambda f, _: f.update({"message-headers": "{}"}), 422, "message-headers"),
        (lambda f, _: f.update({"message-headers": '[["From"]]'}), 422, "message-headers"),
        (lambda f, _: f.update({"message-headers": "[[1, 2]"}), 422, "message-headers"),
        (lambda f, files: files.clear(), 422, "attachment-1"),
        (lambda f, _: f.update({"attachment-count": "-1"}), 422, "attachment-count"),
        (lambda f, _: f.update({"attachment-count": "500"}), 413, "attachment-count"),
        (lambda f, _: f.update({"body-plain": b"caf\xe9"}), 422, "body-plain"),
        (lambda f, _: f.update({"content-id-map": "[]"}), 422, "content-id-map"),
        (lambda f, _: f.update({"from": "nobody", "sender": "nobody-either", "message-headers": "[]"}), 422, "from"),
        (lambda f, _: f.update({"subject": ["a", b"\xff"]}) or f.update({"subject": 7}), 422, "subject"),
    ],
)
def test_mailgun_bad_input_names_the_field(change: Any, status: int, field: str) -> None:
    fields, files = form("mailgun.json")
    change(fields, files)
    with pytest.raises(PayloadError) as info:
        parse_mailgun(fields, files)
    assert (info.value.status, info.value.field) == (status, field), info.value.detail


def test_mailgun_attachment_over_the_limit() -> None:
    fields, files = form("mailgun.json")
    with pytest.raises(ContentTooLarge) as info:
        parse_mailgun(fields, files, limits=MimeLimits(max_attachment_bytes=10))
    assert (info.value.status, info.value.field) == (413, "attachment-1")


# --- Mailgun signatures -------------------------------------------------------------------------------------


def test_mailgun_fixture_signature_is_good() -> None:
    fields, files = form("mailgun.json")
    verified = verify_mailgun(MAILGUN_KEY, fields, files, seen=TokenCache(), now=MAILGUN_TIME + 30)
    assert verified.token == fields["token"] and verified.timestamp == MAILGUN_TIME
    assert mailgun_signature(MAILGUN_KEY, fields["timestamp"], fields["token"]) == fields["signature"]


@pytest.mark.parametrize(
    "change",
    [
        lambda f: f.update(signature="0" * 64),
        lambda f: f.update(signature=f["signature"][:-1]),
        lambda f: f.update(signature="not hex"),
        lambda f: f.update(token=f["token"][:-1] + "0"),
        lambda f: f.update(timestamp=str(MAILGUN_TIME + 1)),
        lambda f: f.pop("signature"),
        lambda f: f.pop("token"),
        lambda f: f.pop("timestamp"),
        lambda f: f.update(timestamp="17943912OO"),
        lambda f: f.update(token="spaces in token"),
    ],
)
def test_mailgun_bad_signature(change: Any) -> None:
    fields, files = form("mailgun.json")
    change(fields)
    with pytest.raises(SignatureError):
        verify_mailgun(MAILGUN_KEY, fields, files, seen=TokenCache(), now=MAILGUN_TIME)


def test_mailgun_wrong_key() -> None:
    fields, files = form("mailgun.json")
    with pytest.raises(SignatureError, match="wrong Mailgun signature"):
        verify_mailgun("key-someone-else", fields, files, seen=TokenCache(), now=MAILGUN_TIME)


@pytest.mark.parametrize("offset", [301, -301, 86_400])
def test_mailgun_stale_or_future_timestamp(offset: int) -> None:
    fields, files = form("mailgun.json")
    with pytest.raises(SignatureError, match="replay window"):
        verify_mailgun(MAILGUN_KEY, fields, files, seen=TokenCache(), now=MAILGUN_TIME + offset)
    # A wider window (an operator covering Mailgun's 8-hour retry schedule) accepts it.
    verify_mailgun(MAILGUN_KEY, fields, files, seen=TokenCache(), now=MAILGUN_TIME + offset, tolerance_s=90_000)


def test_mailgun_replayed_token_on_other_content_is_refused() -> None:
    fields, files = form("mailgun.json")
    seen = TokenCache()
    verify_mailgun(MAILGUN_KEY, fields, files, seen=seen, now=MAILGUN_TIME)
    forged = copy.deepcopy(fields)
    forged["body-plain"] = "Please refund everything to my new account."
    with pytest.raises(SignatureError, match="replay"):
        verify_mailgun(MAILGUN_KEY, forged, files, seen=seen, now=MAILGUN_TIME + 1)
    other_file = {"attachment-1": FormFile(b"evil", "seat-history.csv", "text/csv")}
    with pytest.raises(SignatureError, match="replay"):
        verify_mailgun(MAILGUN_KEY, fields, other_file, seen=seen, now=MAILGUN_TIME + 1)


def test_mailgun_retry_of_the_same_request_is_not_a_replay() -> None:
    fields, files = form("mailgun.json")
    seen = TokenCache()
    first = verify_mailgun(MAILGUN_KEY, fields, files, seen=seen, now=MAILGUN_TIME)
    again = verify_mailgun(MAILGUN_KEY, copy.deepcopy(fields), files, seen=seen, now=MAILGUN_TIME + 60)
    assert first.fingerprint == again.fingerprint  # ingest then answers it as a duplicate


def test_mailgun_seen_is_consulted_only_after_the_signature() -> None:
    calls: list[str] = []

    def seen(token: str, fingerprint: str) -> bool:
        calls.append(token)
        return False

    fields, files = form("mailgun.json")
    fields["signature"] = "0" * 64
    with pytest.raises(SignatureError):
        verify_mailgun(MAILGUN_KEY, fields, files, seen=seen, now=MAILGUN_TIME)
    assert calls == []  # forged requests cannot fill the token store


def test_mailgun_async_seen() -> None:
    store: dict[str, str] = {}

    async def seen(token: str, fingerprint: str) -> bool:
        return store.setdefault(token, fingerprint) != fingerprint

    fields, files = form("mailgun.json")
    asyncio.run(verify_mailgun_async(MAILGUN_KEY, fields, files, seen=seen, now=MAILGUN_TIME))
    fields["subject"] = "changed"
    with pytest.raises(SignatureError, match="replay"):
        asyncio.run(verify_mailgun_async(MAILGUN_KEY, fields, files, seen=seen, now=MAILGUN_TIME))


def test_mailgun_event_webhook_nested_signature() -> None:
    token = "a" * 50
    body = {
        "signature": {
            "timestamp": str(MAILGUN_TIME),
            "token": token,
            "signature": mailgun_signature(MAILGUN_KEY, str(MAILGUN_TIME), token),
        }
    }
    assert verify_mailgun_signature(MAILGUN_KEY, body, now=MAILGUN_TIME).token == token  # type: ignore[arg-type]


def test_token_cache_expires_and_is_bounded() -> None:
    cache = TokenCache(ttl_s=10, max_entries=2)
    assert cache("t1", "f", now=0) is False
    assert cache("t1", "g", now=5) is True
    assert cache("t1", "g", now=11) is False  # expired, recorded again
    cache("t2", "f", now=11)
    cache("t3", "f", now=11)  # evicts the oldest
    assert cache("t1", "other", now=11) is False


def test_empty_signing_key_is_a_configuration_error() -> None:
    fields, files = form("mailgun.json")
    with pytest.raises(ValueError, match="signing key is empty"):
        verify_mailgun("", fields, files, seen=TokenCache(), now=MAILGUN_TIME)


# --- Postmark and SendGrid authentication -------------------------------------------------------------------


def basic(credentials: str) -> str:
    return "Basic " + base64.b64encode(credentials.encode()).decode()


def test_postmark_auth_good() -> None:
    verify_postmark_auth(basic("postmark:s3cret-Pa55"), "postmark:s3cret-Pa55")
    verify_postmark_auth("basic   " + base64.b64encode(b"postmark:s3cret-Pa55").decode(), "postmark:s3cret-Pa55")


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        basic("postmark:wrong"),
        basic("someone:s3cret-Pa55"),
        basic("postmark:s3cret-Pa55x"),
        basic("postmark"),
        "Bearer s3cret-Pa55",
        "Basic",
        "Basic !!!not-base64!!!",
        "Basic " + base64.b64encode(b"\xff\xfe:\x00").decode(),
    ],
)
def test_postmark_auth_bad(authorization: str | None) -> None:
    with pytest.raises(SignatureError):
        verify_postmark_auth(authorization, "postmark:s3cret-Pa55")


def test_basic_auth_with_a_bare_password_accepts_any_user() -> None:
    verify_basic_auth(basic("actionmailbox:s3cret"), "s3cret")
    verify_basic_auth(basic(":s3cret"), "s3cret")
    with pytest.raises(SignatureError):
        verify_basic_auth(basic("actionmailbox:other"), "s3cret")
    with pytest.raises(ValueError, match="empty"):
        verify_basic_auth(basic("a:b"), "")


def test_sendgrid_secret_in_the_url_or_basic_auth() -> None:
    verify_sendgrid_secret("parse-5ecret", url_secret="parse-5ecret")
    verify_sendgrid_secret("parse-5ecret", authorization=basic("inbound:parse-5ecret"))
    verify_sendgrid_secret("parse-5ecret", url_secret="wrong", authorization=basic("inbound:parse-5ecret"))
    for kwargs in (
        {},
        {"url_secret": "parse-5ecreT"},
        {"url_secret": ""},
        {"authorization": basic("inbound:nope")},
        {"authorization": "Bearer parse-5ecret"},
    ):
        with pytest.raises(SignatureError):
            verify_sendgrid_secret("parse-5ecret", **kwargs)  # type: ignore[arg-type]


def test_shared_secret() -> None:
    verify_shared_secret("abc", "abc")
    for provided in (None, "", "abd", "abc "):
        with pytest.raises(SignatureError):
            verify_shared_secret(provided, "abc")
    with pytest.raises(ValueError, match="empty"):
        verify_shared_secret("abc", "")


# --- never anything but a PayloadError ----------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=8,
)
POSTMARK_KEYS = ["From", "FromFull", "FromName", "Subject", "TextBody", "HtmlBody", "Headers", "Attachments",
                 "ReplyTo", "MessageID", "ToFull", "Date", "MailboxHash"]  # fmt: skip
FORM_VALUES = st.text(max_size=60) | st.binary(max_size=60) | st.lists(st.text(max_size=20), max_size=2)


def _only_payload_errors(call: Any) -> None:
    try:
        result = call()
    except PayloadError as exc:
        status = exc.status
        assert status in (400, 413, 422)
        return
    if isinstance(result, InboundEmail):
        normalize_payload(result.payload)
        json.dumps(result.raw_object)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(POSTMARK_KEYS), JSON_VALUES, max_size=6))
def test_postmark_arbitrary_values_raise_only_payload_errors(overrides: dict[str, Any]) -> None:
    document = load("postmark.json")
    document.update(overrides)
    _only_payload_errors(lambda: parse_postmark(document))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["headers", "from", "subject", "text", "html", "envelope", "charsets",
                                        "attachments", "attachment-info", "content-ids", "email"]),
                       FORM_VALUES, max_size=5))  # fmt: skip
def test_sendgrid_arbitrary_fields_raise_only_payload_errors(overrides: dict[str, Any]) -> None:
    fields, files = sendgrid_wire()
    fields.update(overrides)
    _only_payload_errors(lambda: parse_sendgrid(fields, files))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["from", "sender", "subject", "body-plain", "body-html", "message-headers",
                                        "Message-Id", "In-Reply-To", "References", "attachment-count",
                                        "content-id-map", "body-mime"]),
                       FORM_VALUES, max_size=5))  # fmt: skip
def test_mailgun_arbitrary_fields_raise_only_payload_errors(overrides: dict[str, Any]) -> None:
    fields, files = form("mailgun.json")
    fields.update(overrides)
    _only_payload_errors(lambda: parse_mailgun(fields, files))
