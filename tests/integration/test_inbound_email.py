"""Inbound email through the real app and database: raw MIME on the ingest webhook, the Postmark / SendGrid /
Mailgun inbound webhooks with their own authentication, attachments stored with the ticket, auto-replies and
bounces answered without a ticket, bad input refused naming the field with nothing written, and the reply
threading back to the customer's mail client over SMTP."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import hashlib
import json
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiosmtpd.controller import Controller as SmtpController
from aiosmtpd.smtp import Envelope, Session

from core.metrics import Metrics
from core.settings import Settings
from delivery import outbox
from ingest.inbound import normalized_ticket, store_email
from ingest.mime import InboundEmail, parse_mime
from ingest.providers import mailgun_signature
from ingest.signatures import sign_webhook
from tests.support.delivery import seed_agent_reply, seed_attempt
from tests.support.server import free_port

DATA = Path(__file__).resolve().parent.parent / "data" / "inbound"
INGEST = "/api/webhooks/support/ingest"
INBOUND = "/api/webhooks/support/inbound"
RFC822 = {"content-type": "message/rfc822"}
POSTMARK_AUTH = "postmark-inbound:pm-secret-0123456789"
SENDGRID_SECRET = "sg-secret-0123456789abcdef"
MAILGUN_KEY = "key-deskpilot-fixture-signing-key-0000"
PROVIDERS = {
    "DESKPILOT_POSTMARK_INBOUND_AUTH": POSTMARK_AUTH,
    "DESKPILOT_SENDGRID_INBOUND_SECRET": SENDGRID_SECRET,
    "DESKPILOT_MAILGUN_SIGNING_KEY": MAILGUN_KEY,
}
WRITTEN = ("tickets", "customers", "ticket_messages", "ingest_keys", "ticket_attachments")


def eml(name: str) -> bytes:
    return (DATA / name).read_bytes()


def fixture_form(name: str) -> tuple[dict[str, Any], dict[str, tuple[str, bytes, str]]]:
    document = json.loads((DATA / name).read_text(encoding="utf-8"))
    files = {
        key: (item["filename"], base64.b64decode(item["content_base64"]), item["content_type"])
        for key, item in document.pop("_files", {}).items()
    }
    return document, files


def basic(credentials: str) -> str:
    return "Basic " + base64.b64encode(credentials.encode()).decode()


def mailgun_form(**changes: Any) -> tuple[dict[str, Any], dict[str, tuple[str, bytes, str]]]:
    """The Mailgun fixture signed now, with a fresh token."""
    fields, files = fixture_form("mailgun.json")
    timestamp = str(int(time.time()))
    token = secrets.token_hex(25)
    fields.update(timestamp=timestamp, token=token, signature=mailgun_signature(MAILGUN_KEY, timestamp, token))
    fields.update(changes)
    return fields, files


async def counts(pool: asyncpg.Pool) -> dict[str, int]:
    return {table: int(await pool.fetchval(f"SELECT count(*) FROM {table}")) for table in WRITTEN}


def assert_problem(response: Any, status: int, field: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    if field is not None:
        assert body["field"] == field, body
    return body


def message(
    *,
    message_id: str = "<m-1@customer.example>",
    extra_headers: str = "",
    body: str = "Hello, my CSV export fails with error 500 since this morning.",
    subject: str = "CSV export fails",
) -> bytes:
    return (
        "From: Ada Lovelace <ada@customer.example>\r\nTo: support@example.net\r\n"
        f"Subject: {subject}\r\nMessage-ID: {message_id}\r\nDate: Tue, 3 Nov 2026 09:13:58 +0000\r\n"
        f"{extra_headers}MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
    ).encode()


def with_attachments(sizes: list[int], *, message_id: str = "<att-1@customer.example>") -> bytes:
    parts = [
        "--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nThe export files are attached.\r\n",
        *(
            f"--b1\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; "
            f'filename="file-{i}.bin"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
            f"{base64.encodebytes(bytes([i % 256]) * size).decode()}\r\n"
            for i, size in enumerate(sizes)
        ),
    ]
    return (
        "From: ada@customer.example\r\nTo: support@example.net\r\nSubject: Export files\r\n"
        f"Message-ID: {message_id}\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b1\r\n\r\n"
        + "".join(parts)
        + "--b1--\r\n"
    ).encode()


# --- raw MIME on the ingest webhook -------------------------------------------------------------------------


async def test_raw_mime_becomes_a_ticket_and_a_redelivery_is_a_duplicate(client: Any, clean_db: asyncpg.Pool) -> None:
    first = await client.post(INGEST, content=eml("plain.eml"), headers=RFC822)
    assert first.status_code == 201, first.text
    row = await clean_db.fetchrow(
        """SELECT t.subject, t.body, t.channel, t.external_id, t.email_message_id, t.metadata, c.email
           FROM tickets t JOIN customers c ON c.id = t.customer_id WHERE t.id = $1::uuid""",
        first.json()["ticket_id"],
    )
    assert row["email"] == "ada.lovelace@analytical.example.com"
    assert row["subject"] == "Where can I download last year's invoices?"
    assert "PDF invoices for every month of 2025" in row["body"]
    assert row["channel"] == "email"
    assert row["external_id"] == row["email_message_id"] == "<CAF7nq3e1=plain.0001@mail.analytical.example.com>"
    assert row["metadata"]["email"]["reply_to"] == ["billing-desk@analytical.example.com"]
    again = await client.post(INGEST, content=eml("plain.eml"), headers=RFC822)
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert again.json()["ticket_id"] == first.json()["ticket_id"]
    assert (await counts(clean_db))["tickets"] == 1


async def test_html_only_message_with_attachments_stores_them_with_the_ticket(
    client: Any, clean_db: asyncpg.Pool
) -> None:
    response = await client.post(INGEST, content=eml("html-attachments.eml"), headers=RFC822)
    assert response.status_code == 201, response.text
    ticket_id = response.json()["ticket_id"]
    body = await clean_db.fetchval("SELECT body FROM tickets WHERE id = $1::uuid", ticket_id)
    assert "CSV export" in body and "<p>" not in body
    rows = await clean_db.fetch(
        """SELECT a.filename, a.content_type, a.size, a.sha256, a.content, a.inline, m.ticket_id
           FROM ticket_attachments a JOIN ticket_messages m ON m.id = a.message_id
           WHERE a.ticket_id = $1::uuid ORDER BY a.position""",
        ticket_id,
    )
    assert len(rows) == 3, rows
    assert [r["content_type"] for r in rows] == ["image/png", "application/pdf", "text/csv"]
    assert rows[0]["inline"] is True
    for row in rows:
        assert hashlib.sha256(row["content"]).hexdigest() == row["sha256"]
        assert len(row["content"]) == row["size"]
        assert str(row["ticket_id"]) == ticket_id


async def test_concurrent_deliveries_of_one_message_make_one_ticket_with_its_attachments_once(
    client: Any, clean_db: asyncpg.Pool
) -> None:
    raw = eml("html-attachments.eml")
    answers = await asyncio.gather(*(client.post(INGEST, content=raw, headers=RFC822) for _ in range(12)))
    assert sorted(a.status_code for a in answers) == [200] * 11 + [201], [a.text for a in answers]
    assert len({a.json()["ticket_id"] for a in answers}) == 1
    written = await counts(clean_db)
    assert (written["tickets"], written["ticket_messages"], written["ticket_attachments"]) == (1, 1, 3)


async def test_a_new_customers_second_message_waits_for_the_first_and_is_stored_with_its_attachments(
    clean_db: asyncpg.Pool,
) -> None:
    """The first message's transaction creates the customer and is still open; the second, inside its own email
    transaction, loses the race to create the customer and tries again (in a savepoint, `ingest.store`): both
    are stored, neither fails."""
    settings = Settings()
    first = parse_mime(with_attachments([10], message_id="<first@customer.example>"))
    second = parse_mime(with_attachments([20], message_id="<second@customer.example>"))
    assert isinstance(first, InboundEmail) and isinstance(second, InboundEmail)
    async with clean_db.acquire() as a, clean_db.acquire() as b:
        open_transaction = a.transaction()
        await open_transaction.start()
        await store_email(a, first, normalized_ticket(first), settings=settings, customer_verified=False)
        racing = asyncio.create_task(
            store_email(b, second, normalized_ticket(second), settings=settings, customer_verified=False)
        )
        await asyncio.sleep(0.5)  # b now waits for a's uncommitted customer row
        await open_transaction.commit()
        result = await racing
    assert not result.duplicate
    written = await counts(clean_db)
    assert (written["customers"], written["tickets"], written["ticket_attachments"]) == (1, 2, 2)


async def test_concurrent_first_messages_of_a_new_customer_each_become_a_ticket(
    client: Any, clean_db: asyncpg.Pool
) -> None:
    answers = await asyncio.gather(
        *(
            client.post(
                INGEST, content=with_attachments([10], message_id=f"<race-{n}@customer.example>"), headers=RFC822
            )
            for n in range(16)
        )
    )
    assert [a.status_code for a in answers] == [201] * 16, [a.text for a in answers if a.status_code != 201]
    written = await counts(clean_db)
    assert (written["customers"], written["tickets"], written["ticket_attachments"]) == (1, 16, 16)


@pytest.mark.parametrize(("name", "reason"), [("auto-reply.eml", "auto_submitted"), ("bounce.eml", None)])
async def test_auto_replies_and_bounces_are_answered_200_and_write_nothing(
    client: Any, clean_db: asyncpg.Pool, name: str, reason: str | None
) -> None:
    response = await client.post(INGEST, content=eml(name), headers=RFC822)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["ignored"] is True and body["reason"]
    if reason:
        assert body["reason"] == reason
    assert set((await counts(clean_db)).values()) == {0}


async def test_raw_mime_follows_the_signature_rules_of_json(
    make_client: Callable[..., Any], clean_db: asyncpg.Pool
) -> None:
    secret = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
    raw = message()
    async with make_client(DESKPILOT_WEBHOOK_SECRET=secret) as client:
        unsigned = await client.post(INGEST, content=raw, headers=RFC822)
        assert_problem(unsigned, 401)
        assert set((await counts(clean_db)).values()) == {0}
        now = int(time.time())
        headers = {
            "webhook-id": "msg-1",
            "webhook-timestamp": str(now),
            "webhook-signature": sign_webhook(secret, "msg-1", now, raw),
        }
        signed = await client.post(INGEST, content=raw, headers={**RFC822, **headers})
        assert signed.status_code == 201, signed.text


async def test_raw_mime_has_its_own_size_limit(make_client: Callable[..., Any], clean_db: asyncpg.Pool) -> None:
    padding = "Some log lines follow.\n" + "x" * 70 + "\n"
    big = message(body=padding * 4000)  # ~300 KiB: over the JSON limit, under the email limit
    async with make_client() as client:
        accepted = await client.post(INGEST, content=big, headers=RFC822)
        assert accepted.status_code == 201, accepted.text
    async with make_client(DESKPILOT_MAX_EMAIL_BYTES="100000") as client:
        refused = await client.post(
            INGEST, content=message(message_id="<big-2@x.example>", body=padding * 4000), headers=RFC822
        )
        assert_problem(refused, 413, "body")
    assert (await counts(clean_db))["tickets"] == 1


@pytest.mark.parametrize(
    ("env", "sizes", "field"),
    [
        ({"DESKPILOT_MAX_ATTACHMENT_BYTES": "2048"}, [100, 5000], "attachments"),
        ({"DESKPILOT_MAX_ATTACHMENTS": "2"}, [10, 10, 10], "attachments"),
    ],
)
async def test_oversized_or_too_many_attachments_are_413_and_nothing_is_written(
    make_client: Callable[..., Any], clean_db: asyncpg.Pool, env: dict[str, str], sizes: list[int], field: str
) -> None:
    async with make_client(**env) as client:
        response = await client.post(INGEST, content=with_attachments(sizes), headers=RFC822)
    body = assert_problem(response, 413)
    assert body["field"], body
    assert set((await counts(clean_db)).values()) == {0}


def multipart_bomb(depth: int) -> bytes:
    head = "From: ada@customer.example\r\nSubject: bomb\r\nMessage-ID: <bomb@x.example>\r\nMIME-Version: 1.0\r\n"
    body = "hello\r\n"
    for level in reversed(range(depth)):
        body = (
            f"--b{level}\r\nContent-Type: multipart/mixed; boundary=b{level + 1}\r\n\r\n{body}--b{level}--\r\n"
            if level < depth - 1
            else f"--b{level}\r\nContent-Type: text/plain\r\n\r\n{body}--b{level}--\r\n"
        )
    return (head + "Content-Type: multipart/mixed; boundary=b0\r\n\r\n" + body).encode()


@pytest.mark.parametrize(
    ("raw", "status", "field"),
    [
        (b"\x00\x01\x02 this is not an email", 400, "message"),
        (multipart_bomb(60), 422, "Content-Type"),
        (
            b"From: ada@customer.example\r\nSubject: x\r\nMessage-ID: <nb@x.example>\r\n"
            b"Content-Type: multipart/mixed\r\n\r\n--zz\r\n\r\nbody\r\n--zz--\r\n",
            422,
            "Content-Type",
        ),
        (eml("broken-charset.eml"), 422, "body"),
        (message(extra_headers="").replace(b"From: Ada Lovelace <ada@customer.example>\r\n", b""), 422, "From"),
        (
            message(subject="=?utf-8?B?/w==?= broken"),
            422,
            "Subject",
        ),
    ],
    ids=["not-a-message", "multipart-bomb", "no-boundary", "unknown-charset", "no-from", "bad-encoded-word"],
)
async def test_bad_mime_is_a_clear_4xx_naming_the_field_and_writes_nothing(
    client: Any, clean_db: asyncpg.Pool, raw: bytes, status: int, field: str
) -> None:
    response = await client.post(INGEST, content=raw, headers=RFC822)
    assert_problem(response, status, field)
    assert set((await counts(clean_db)).values()) == {0}


# --- threading: the reply goes back over SMTP with In-Reply-To / References -----------------------------------


@dataclass
class Recorder:
    messages: list[EmailMessage] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        parsed = email.message_from_bytes(envelope.original_content or envelope.content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self.messages.append(parsed)
        return "250 accepted"


@pytest.fixture
def smtp() -> Iterator[tuple[Recorder, str]]:
    recorder = Recorder()
    port = free_port()
    controller = SmtpController(recorder, hostname="127.0.0.1", port=port)
    controller.start()
    yield recorder, f"smtp://127.0.0.1:{port}"
    controller.stop()


async def test_a_reply_to_an_emailed_ticket_threads_in_the_customers_mail_client(
    client: Any, clean_db: asyncpg.Pool, make_settings: Callable[..., Settings], smtp: tuple[Recorder, str]
) -> None:
    first = await client.post(INGEST, content=message(message_id="<q1@customer.example>"), headers=RFC822)
    followup = await client.post(
        INGEST,
        content=message(
            message_id="<q2@customer.example>",
            subject="Re: CSV export fails",
            extra_headers="In-Reply-To: <q1@customer.example>\r\nReferences: <q1@customer.example>\r\n",
            body="It also fails for the PDF export.",
        ),
        headers=RFC822,
    )
    assert followup.status_code == 201 and followup.json()["followup"] is True
    ticket_id = first.json()["ticket_id"]
    replayed = await client.post(
        INGEST,
        content=message(
            message_id="<q2@customer.example>",
            subject="Re: CSV export fails",
            extra_headers="In-Reply-To: <q1@customer.example>\r\nReferences: <q1@customer.example>\r\n",
            body="It also fails for the PDF export.",
        ),
        headers=RFC822,
    )
    assert replayed.status_code == 200 and replayed.json()["duplicate"] is True
    assert (await counts(clean_db))["ticket_messages"] == 2
    assert followup.json()["ticket_id"] == ticket_id

    recorder, url = smtp
    attempt_id = await seed_attempt(clean_db, ticket_id, draft="Try the export again now.", decision="deliver")
    await seed_agent_reply(clean_db, ticket_id, attempt_id)
    settings = make_settings(DESKPILOT_SMTP_URL=url)
    assert await outbox.drain_outbox(clean_db, settings, Metrics(), "w-1") == 1
    [sent] = recorder.messages
    assert sent["To"] == "ada@customer.example"
    assert sent["Subject"] == "Re: CSV export fails"
    assert sent["In-Reply-To"] == "<q2@customer.example>"
    assert sent["References"] == "<q1@customer.example> <q2@customer.example>"


# --- the providers' inbound webhooks ------------------------------------------------------------------------


@pytest.fixture
async def providers(make_client: Callable[..., Any]) -> Any:
    async with make_client(**PROVIDERS) as client:
        yield client


async def test_postmark_fixture_becomes_a_ticket_with_its_attachments(providers: Any, clean_db: asyncpg.Pool) -> None:
    raw = (DATA / "postmark.json").read_bytes()
    headers = {"content-type": "application/json", "authorization": basic(POSTMARK_AUTH)}
    response = await providers.post(f"{INBOUND}/postmark", content=raw, headers=headers)
    assert response.status_code == 201, response.text
    document = json.loads(raw)
    row = await clean_db.fetchrow(
        """SELECT t.subject, t.body, t.email_message_id, c.email FROM tickets t
           JOIN customers c ON c.id = t.customer_id WHERE t.id = $1::uuid""",
        response.json()["ticket_id"],
    )
    assert row["email"] == document["FromFull"]["Email"].lower()
    assert row["subject"] == document["Subject"]
    assert row["email_message_id"]
    assert (await counts(clean_db))["ticket_attachments"] == len(document["Attachments"])
    again = await providers.post(f"{INBOUND}/postmark", content=raw, headers=headers)
    assert again.status_code == 200 and again.json()["duplicate"] is True


@pytest.mark.parametrize(
    "authorization",
    [None, basic("postmark-inbound:wrong"), "Bearer pm-secret-0123456789"],
    ids=["none", "wrong", "bearer"],
)
async def test_postmark_without_its_basic_auth_is_401_and_nothing_written(
    providers: Any, clean_db: asyncpg.Pool, authorization: str | None
) -> None:
    headers = {"content-type": "application/json"}
    if authorization:
        headers["authorization"] = authorization
    response = await providers.post(
        f"{INBOUND}/postmark", content=(DATA / "postmark.json").read_bytes(), headers=headers
    )
    assert_problem(response, 401, "authorization")
    assert set((await counts(clean_db)).values()) == {0}


async def test_an_unconfigured_provider_is_404_naming_the_setting(client: Any, clean_db: asyncpg.Pool) -> None:
    for provider, setting in (
        ("postmark", "DESKPILOT_POSTMARK_INBOUND_AUTH"),
        ("sendgrid", "DESKPILOT_SENDGRID_INBOUND_SECRET"),
        ("mailgun", "DESKPILOT_MAILGUN_SIGNING_KEY"),
    ):
        response = await client.post(
            f"{INBOUND}/{provider}", content=b"{}", headers={"content-type": "application/json"}
        )
        assert setting in assert_problem(response, 404, "provider")["detail"]


def sendgrid_parsed_wire() -> tuple[dict[str, Any], dict[str, tuple[str, bytes, str]]]:
    fields, files = fixture_form("sendgrid-parsed.json")
    charsets = json.loads(fields["charsets"])
    fields["text"] = fields["text"].encode(charsets["text"])  # as SendGrid sends it: in the declared charset
    fields["html"] = fields["html"].encode(charsets["html"])
    return fields, files


async def test_sendgrid_parsed_and_raw_fixtures_become_tickets(providers: Any, clean_db: asyncpg.Pool) -> None:
    fields, files = sendgrid_parsed_wire()
    parsed = await providers.post(f"{INBOUND}/sendgrid/{SENDGRID_SECRET}", data=fields, files=files)
    assert parsed.status_code == 201, parsed.text
    row = await clean_db.fetchrow(
        """SELECT t.subject, t.body, c.email, c.name FROM tickets t JOIN customers c ON c.id = t.customer_id
           WHERE t.id = $1::uuid""",
        parsed.json()["ticket_id"],
    )
    assert row["email"] == "juergen.weiss@kaufhaus.example.de"
    assert row["subject"] == "Rückerstattung für Rechnung 2026-118"
    assert "2 × 348,00 €" in row["body"]
    assert (
        await clean_db.fetchval(
            "SELECT filename FROM ticket_attachments WHERE ticket_id = $1::uuid", parsed.json()["ticket_id"]
        )
        == "Erstattungsformular.pdf"
    )

    raw_fields, _ = fixture_form("sendgrid-raw.json")
    raw = await providers.post(
        f"{INBOUND}/sendgrid", data=raw_fields, headers={"authorization": basic(f"inbound:{SENDGRID_SECRET}")}
    )
    assert raw.status_code == 201, raw.text
    assert (await counts(clean_db))["tickets"] == 2


@pytest.mark.parametrize("path", ["/sendgrid", "/sendgrid/wrong-secret"])
async def test_sendgrid_without_its_secret_is_401(providers: Any, clean_db: asyncpg.Pool, path: str) -> None:
    fields, files = sendgrid_parsed_wire()
    response = await providers.post(f"{INBOUND}{path}", data=fields, files=files)
    assert_problem(response, 401)
    assert set((await counts(clean_db)).values()) == {0}


async def test_mailgun_signed_post_becomes_a_ticket_and_its_retry_a_duplicate(
    providers: Any, clean_db: asyncpg.Pool
) -> None:
    fields, files = mailgun_form()
    response = await providers.post(f"{INBOUND}/mailgun", data=fields, files=files)
    assert response.status_code == 201, response.text
    row = await clean_db.fetchrow(
        """SELECT t.subject, t.body, t.email_message_id, c.email FROM tickets t
           JOIN customers c ON c.id = t.customer_id WHERE t.id = $1::uuid""",
        response.json()["ticket_id"],
    )
    assert row["email"] == "margaret.hamilton@shop.example.com"
    assert row["subject"] == "Re: Seat count on the November invoice"
    assert row["body"] == "The invoice bills 60 seats but we only had 55 in November, see the attached export."
    assert row["email_message_id"] == "<0f6e2c1a-mailgun.0010@shop.example.com>"
    assert (await counts(clean_db))["ticket_attachments"] == 1
    # Mailgun retries with the same token and content: a duplicate, not a replay.
    retry = await providers.post(f"{INBOUND}/mailgun", data=fields, files=files)
    assert retry.status_code == 200 and retry.json()["duplicate"] is True
    assert await clean_db.fetchval("SELECT count(*) FROM inbound_tokens") == 1


async def test_mailgun_wrong_stale_or_replayed_signatures_are_401(providers: Any, clean_db: asyncpg.Pool) -> None:
    fields, files = mailgun_form()
    wrong = await providers.post(f"{INBOUND}/mailgun", data={**fields, "signature": "0" * 64}, files=files)
    assert_problem(wrong, 401, "signature")
    stale_time = str(int(time.time()) - 3600)
    stale = await providers.post(
        f"{INBOUND}/mailgun",
        data={
            **fields,
            "timestamp": stale_time,
            "signature": mailgun_signature(MAILGUN_KEY, stale_time, fields["token"]),
        },
        files=files,
    )
    assert "replay window" in assert_problem(stale, 401, "signature")["detail"]
    assert set((await counts(clean_db)).values()) == {0}
    first = await providers.post(f"{INBOUND}/mailgun", data=fields, files=files)
    assert first.status_code == 201, first.text
    # The same signed token on other content: a replay.
    forged = await providers.post(f"{INBOUND}/mailgun", data={**fields, "subject": "Please refund me"}, files=files)
    assert "replay" in assert_problem(forged, 401, "signature")["detail"]
    assert (await counts(clean_db))["tickets"] == 1


async def test_mailgun_bad_form_input_names_the_field(providers: Any, clean_db: asyncpg.Pool) -> None:
    fields, files = mailgun_form()
    latin1 = await providers.post(
        f"{INBOUND}/mailgun", data={**fields, "body-plain": "Grüße aus Köln".encode("latin-1")}, files=files
    )
    assert_problem(latin1, 422, "body-plain")
    fields, files = mailgun_form()
    missing = await providers.post(f"{INBOUND}/mailgun", data={**fields, "attachment-count": "2"}, files=files)
    assert_problem(missing, 422, "attachment-2")
    fields, _ = mailgun_form()
    malformed = await providers.post(
        f"{INBOUND}/mailgun",
        content=b'--xyz\r\nContent-Disposition: form-data; name="token"\r\n\r\nabc',
        headers={"content-type": "multipart/form-data; boundary=xyz"},
    )
    assert_problem(malformed, 400, "body")
    assert set((await counts(clean_db)).values()) == {0}


async def test_mailgun_attachment_over_the_limit_is_413_and_nothing_written(
    make_client: Callable[..., Any], clean_db: asyncpg.Pool
) -> None:
    fields, _ = mailgun_form()
    files = {"attachment-1": ("huge.bin", b"\x00" * 4096, "application/octet-stream")}
    async with make_client(**PROVIDERS, DESKPILOT_MAX_ATTACHMENT_BYTES="2048") as client:
        response = await client.post(f"{INBOUND}/mailgun", data=fields, files=files)
    assert_problem(response, 413, "attachment-1")
    assert set((await counts(clean_db)).values()) == {0}
