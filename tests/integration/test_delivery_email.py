"""Email delivery through the outbox against a real SMTP server (aiosmtpd), and the mail spool."""

from __future__ import annotations

import asyncio
import email
import email.policy
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from core.metrics import Metrics
from core.settings import Settings
from delivery import outbox
from tests.support.delivery import delivery_row, seed_agent_reply, seed_attempt, seed_ticket
from tests.support.server import free_port

BODY = (
    "Hello Ada,\n\nReset your password from the sign-in page. <script>alert('x')</script>\n"
    "See https://evil.example/phish and <img src=https://evil.example/pixel.png>.\n\nThe support team"
)


@dataclass
class RecordingHandler:
    """Accepts mail and keeps it, or answers DATA with `reply` when that is set (e.g. 451 / 550)."""

    reply: str | None = None
    messages: list[EmailMessage] = field(default_factory=list)
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        if self.reply is not None:
            return self.reply
        raw = envelope.original_content or envelope.content
        assert isinstance(raw, bytes)
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self.messages.append(parsed)
        self.envelopes.append((str(envelope.mail_from), list(envelope.rcpt_tos)))
        return "250 Message accepted for delivery"


@dataclass
class SmtpServer:
    handler: RecordingHandler
    port: int

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"


def _start(handler: RecordingHandler, **kwargs: Any) -> tuple[Controller, int]:
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    return controller, port


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    handler = RecordingHandler()
    controller, port = _start(handler)
    yield SmtpServer(handler, port)
    controller.stop()


FROM = "DeskPilot Support <support@deskpilot.test>"


@pytest.fixture
def mail_settings(make_settings: Callable[..., Settings]) -> Callable[..., Settings]:
    """Settings with an explicit From address (see test_default_from_address_is_text)."""

    def build(**env: str) -> Settings:
        return make_settings(**{"DESKPILOT_SMTP_FROM": FROM, **env})

    return build


def test_default_from_address_is_text() -> None:
    assert Settings.from_mapping({}).smtp_from == "DeskPilot Support <support@deskpilot.local>"


def in_seconds(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


async def queued_email_reply(pool: asyncpg.Pool, *, subject: str = "Re: RE: Cannot log in") -> tuple[Any, Any, Any]:
    ticket_id = await seed_ticket(
        pool,
        subject=subject,
        email_message_ids=("<first-mail@customer.example>", "<second-mail@customer.example>"),
    )
    attempt_id = await seed_attempt(pool, ticket_id, draft=BODY, decision="deliver", confidence=0.93)
    delivery_id = await seed_agent_reply(pool, ticket_id, attempt_id)
    return ticket_id, attempt_id, delivery_id


async def test_one_message_per_reply_with_threading_headers_and_escaped_html(
    clean_db: asyncpg.Pool, mail_settings: Callable[..., Settings], smtp_server: SmtpServer
) -> None:
    settings = mail_settings(DESKPILOT_SMTP_URL=smtp_server.url, DESKPILOT_SMTP_FROM="Help <help@deskpilot.test>")
    metrics = Metrics()
    _ticket_id, attempt_id, delivery_id = await queued_email_reply(clean_db)

    assert await outbox.drain_outbox(clean_db, settings, metrics, "w-1") == 1
    assert await outbox.drain_outbox(clean_db, settings, metrics, "w-1") == 0  # nothing left: no second send

    assert len(smtp_server.handler.messages) == 1
    message = smtp_server.handler.messages[0]
    assert message["Message-ID"] == f"<{attempt_id}@deskpilot>"
    assert message["Subject"] == "Re: Cannot log in"
    assert message["From"] == "Help <help@deskpilot.test>"
    assert message["To"] == "ada@example.com"
    assert message["In-Reply-To"] == "<second-mail@customer.example>"
    assert message["References"] == "<first-mail@customer.example> <second-mail@customer.example>"
    assert message["Auto-Submitted"] == "auto-replied"
    assert smtp_server.handler.envelopes[0] == ("help@deskpilot.test", ["ada@example.com"])

    plain = message.get_body(preferencelist=("plain",))
    html_part = message.get_body(preferencelist=("html",))
    assert plain is not None
    assert html_part is not None
    assert "<script>alert('x')</script>" in plain.get_content()
    html = html_part.get_content()
    assert "<script" not in html
    assert "<img" not in html
    assert "&lt;script&gt;" in html
    assert "<a " not in html
    assert "href" not in html
    assert "src=" not in html.replace("src=https", "")

    row = await delivery_row(clean_db, delivery_id)
    assert row["status"] == "sent"
    assert row["sent_at"] is not None
    assert row["tries"] == 1
    assert row["lease_owner"] is None
    sample = metrics.registry.get_sample_value("deskpilot_deliveries_total", {"channel": "email", "outcome": "sent"})
    assert sample == 1.0


async def test_crash_after_accept_resends_with_the_same_message_id(
    clean_db: asyncpg.Pool,
    mail_settings: Callable[..., Settings],
    smtp_server: SmtpServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = mail_settings(DESKPILOT_SMTP_URL=smtp_server.url)
    _ticket_id, attempt_id, delivery_id = await queued_email_reply(clean_db)
    real_record = outbox.record_outcome
    calls = 0

    async def crash_once(*args: Any, **kwargs: Any) -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionResetError("simulated crash between the SMTP accept and our commit")
        return await real_record(*args, **kwargs)

    monkeypatch.setattr(outbox, "record_outcome", crash_once)

    assert await outbox.drain_outbox(clean_db, settings, None, "w-1") == 0
    assert len(smtp_server.handler.messages) == 1
    row = await delivery_row(clean_db, delivery_id)
    assert row["status"] == "pending"
    assert row["lease_owner"] == "w-1"

    # The lease is still live: nobody else sends it meanwhile.
    assert await outbox.drain_outbox(clean_db, settings, None, "w-2") == 0
    assert len(smtp_server.handler.messages) == 1

    later = in_seconds(outbox.delivery_lease_s(settings) + 5)
    assert await outbox.drain_outbox(clean_db, settings, None, "w-2", now=later) == 1
    ids = [m["Message-ID"] for m in smtp_server.handler.messages]
    assert ids == [f"<{attempt_id}@deskpilot>"] * 2  # the tolerated duplicate carries the same key
    row = await delivery_row(clean_db, delivery_id)
    assert row["status"] == "sent"
    assert row["tries"] == 2


@dataclass
class SlowHandler(RecordingHandler):
    """Holds DATA for `delay_s` before accepting: a receiver slower than the lease."""

    delay_s: float = 0.0

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        await asyncio.sleep(self.delay_s)
        return await super().handle_DATA(server, session, envelope)


async def test_a_send_slower_than_the_lease_keeps_its_lease_and_is_sent_once(
    clean_db: asyncpg.Pool, mail_settings: Callable[..., Settings]
) -> None:
    handler = SlowHandler(delay_s=4.0)
    controller, port = _start(handler)
    try:
        settings = mail_settings(DESKPILOT_SMTP_URL=f"smtp://127.0.0.1:{port}", DESKPILOT_LEASE_SECONDS="1.5")
        _ticket_id, _attempt_id, delivery_id = await queued_email_reply(clean_db)
        sending = asyncio.create_task(outbox.drain_outbox(clean_db, settings, None, "w-1"))
        # Well past the 1.5 s lease the send is still in flight, and its renewed lease keeps another worker out.
        await asyncio.sleep(2.5)
        assert not sending.done()
        assert await outbox.drain_outbox(clean_db, settings, None, "w-2") == 0
        row = await delivery_row(clean_db, delivery_id)
        assert (row["status"], row["lease_owner"], row["tries"]) == ("pending", "w-1", 1)
        assert await sending == 1
    finally:
        controller.stop()
    assert len(handler.messages) == 1
    row = await delivery_row(clean_db, delivery_id)
    assert (row["status"], row["tries"]) == ("sent", 1)


async def test_temporary_refusal_backs_off_then_fails_visibly(
    clean_db: asyncpg.Pool, mail_settings: Callable[..., Settings], smtp_server: SmtpServer
) -> None:
    smtp_server.handler.reply = "451 4.3.0 Mailbox temporarily unavailable"
    settings = mail_settings(DESKPILOT_SMTP_URL=smtp_server.url, DESKPILOT_DELIVERY_MAX_TRIES="3")
    metrics = Metrics()
    ticket_id, _attempt_id, delivery_id = await queued_email_reply(clean_db)

    start = datetime.now(UTC)
    assert await outbox.drain_outbox(clean_db, settings, metrics, "w-1", now=start) == 1
    row = await delivery_row(clean_db, delivery_id)
    assert row["status"] == "pending"
    assert row["tries"] == 1
    assert "451" in row["last_error"]
    first_delay = (row["next_attempt_at"] - start).total_seconds()
    assert outbox.BACKOFF_BASE_S / 2 <= first_delay <= outbox.BACKOFF_BASE_S + 1
    # Not due yet: nothing is sent before the backoff has passed.
    assert await outbox.drain_outbox(clean_db, settings, metrics, "w-1", now=start + timedelta(seconds=5)) == 0

    second = start + timedelta(hours=1)
    assert await outbox.drain_outbox(clean_db, settings, metrics, "w-1", now=second) == 1
    row = await delivery_row(clean_db, delivery_id)
    assert row["status"] == "pending"
    assert row["tries"] == 2
    second_delay = (row["next_attempt_at"] - second).total_seconds()
    assert outbox.BACKOFF_BASE_S <= second_delay <= 2 * outbox.BACKOFF_BASE_S + 1  # exponential

    assert await outbox.drain_outbox(clean_db, settings, metrics, "w-1", now=second + timedelta(hours=1)) == 1
    row = await delivery_row(clean_db, delivery_id)
    assert row["status"] == "failed"
    assert row["tries"] == 3
    assert "gave up after 3 tries" in row["last_error"]
    assert "451" in row["last_error"]
    assert smtp_server.handler.messages == []

    ticket = await clean_db.fetchrow("SELECT status, needs_review, last_error FROM tickets WHERE id = $1", ticket_id)
    assert ticket["needs_review"] is True
    assert "email delivery failed" in ticket["last_error"]
    reasons = await clean_db.fetchval(
        "SELECT array_agg(reason) FROM ticket_status_history WHERE ticket_id = $1", ticket_id
    )
    assert any("delivery failed" in r for r in reasons)
    assert (
        metrics.registry.get_sample_value("deskpilot_deliveries_total", {"channel": "email", "outcome": "retry"}) == 2.0
    )
    assert await outbox.drain_outbox(clean_db, settings, metrics, "w-1", now=second + timedelta(days=1)) == 0


async def test_permanent_refusal_fails_at_once(
    clean_db: asyncpg.Pool, mail_settings: Callable[..., Settings], smtp_server: SmtpServer
) -> None:
    smtp_server.handler.reply = "550 5.1.1 No such user"
    settings = mail_settings(DESKPILOT_SMTP_URL=smtp_server.url)
    ticket_id, _attempt_id, delivery_id = await queued_email_reply(clean_db)
    assert await outbox.drain_outbox(clean_db, settings, None, "w-1") == 1
    row = await delivery_row(clean_db, delivery_id)
    assert row["status"] == "failed"
    assert row["tries"] == 1
    assert "550" in row["last_error"]
    assert await clean_db.fetchval("SELECT needs_review FROM tickets WHERE id = $1", ticket_id) is True


async def test_header_injection_is_refused_not_sent(
    clean_db: asyncpg.Pool, mail_settings: Callable[..., Settings], smtp_server: SmtpServer
) -> None:
    settings = mail_settings(DESKPILOT_SMTP_URL=smtp_server.url)
    ticket_id = await seed_ticket(clean_db, subject="Help\r\nBcc: victim@example.com")
    attempt_id = await seed_attempt(clean_db, ticket_id, decision="deliver")
    delivery_id = await seed_agent_reply(clean_db, ticket_id, attempt_id)
    assert await outbox.drain_outbox(clean_db, settings, None, "w-1") == 1
    row = await delivery_row(clean_db, delivery_id)
    assert row["status"] == "failed"
    assert "Subject header" in row["last_error"]
    assert smtp_server.handler.messages == []


# A self-signed certificate for 127.0.0.1 (valid until 2126), trusted by the client through SSL_CERT_FILE.
TLS_DIR = Path(__file__).resolve().parents[1] / "data" / "tls"


def _recording_authenticator(seen: list[tuple[str, str]]) -> Callable[..., AuthResult]:
    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        assert isinstance(data, LoginPassword)
        seen.append((data.login.decode(), data.password.decode()))
        ok = data.login == b"mailer" and data.password == b"p@ss:word"
        return AuthResult(success=ok)

    return authenticator


async def test_smtp_auth_credentials_from_the_url_over_starttls(
    clean_db: asyncpg.Pool, mail_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(TLS_DIR / "loopback-cert.pem", TLS_DIR / "loopback-key.pem")
    monkeypatch.setenv("SSL_CERT_FILE", str(TLS_DIR / "loopback-cert.pem"))
    seen: list[tuple[str, str]] = []
    handler = RecordingHandler()
    controller, port = _start(
        handler,
        authenticator=_recording_authenticator(seen),
        auth_required=True,
        tls_context=server_tls,
        require_starttls=True,
    )
    try:
        settings = mail_settings(DESKPILOT_SMTP_URL=f"smtp://mailer:p%40ss%3Aword@127.0.0.1:{port}")
        _ticket_id, _attempt_id, delivery_id = await queued_email_reply(clean_db)
        assert await outbox.drain_outbox(clean_db, settings, None, "w-1") == 1
    finally:
        controller.stop()
    assert seen == [("mailer", "p@ss:word")]
    assert len(handler.messages) == 1
    assert (await delivery_row(clean_db, delivery_id))["status"] == "sent"


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
async def test_smtp_credentials_are_never_sent_without_starttls(
    clean_db: asyncpg.Pool, mail_settings: Callable[..., Settings]
) -> None:
    """A server (or a man in the middle stripping the offer) without STARTTLS gets no AUTH in clear: the reply is
    not sent and the delivery says why; opportunistic STARTTLS would have logged in in clear and sent it."""
    seen: list[tuple[str, str]] = []
    handler = RecordingHandler()
    controller, port = _start(
        handler, authenticator=_recording_authenticator(seen), auth_require_tls=False, auth_required=True
    )
    try:
        settings = mail_settings(DESKPILOT_SMTP_URL=f"smtp://mailer:p%40ss%3Aword@127.0.0.1:{port}")
        _ticket_id, _attempt_id, delivery_id = await queued_email_reply(clean_db)
        assert await outbox.drain_outbox(clean_db, settings, None, "w-1") == 1
    finally:
        controller.stop()
    assert seen == []  # the credentials never left
    assert handler.messages == []
    row = await delivery_row(clean_db, delivery_id)
    assert row["status"] == "pending" and row["sent_at"] is None
    assert "STARTTLS" in row["last_error"]


async def test_an_email_reply_goes_only_to_the_tickets_customer(
    clean_db: asyncpg.Pool, mail_settings: Callable[..., Settings], smtp_server: SmtpServer
) -> None:
    """Whatever address a delivery row came to carry, the email goes to the ticket's own customer or nowhere."""
    settings = mail_settings(DESKPILOT_SMTP_URL=smtp_server.url)
    _ticket_id, _attempt_id, delivery_id = await queued_email_reply(clean_db)
    await clean_db.execute("UPDATE deliveries SET recipient = 'mallory@evil.example' WHERE id = $1", delivery_id)
    assert await outbox.drain_outbox(clean_db, settings, None, "w-1") == 1
    row = await delivery_row(clean_db, delivery_id)
    assert row["status"] == "failed"
    assert "not the ticket's customer" in row["last_error"]
    assert smtp_server.handler.messages == []


async def test_spool_writes_one_eml_per_key_even_when_resent(
    clean_db: asyncpg.Pool, mail_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = mail_settings()  # no SMTP URL: the spool
    assert settings.smtp_url is None
    _ticket_id, attempt_id, delivery_id = await queued_email_reply(clean_db)
    real_record = outbox.record_outcome
    calls = 0

    async def crash_once(*args: Any, **kwargs: Any) -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("simulated crash after the spool write")
        return await real_record(*args, **kwargs)

    monkeypatch.setattr(outbox, "record_outcome", crash_once)
    assert await outbox.drain_outbox(clean_db, settings, None, "w-1") == 0
    later = in_seconds(outbox.delivery_lease_s(settings) + 5)
    assert await outbox.drain_outbox(clean_db, settings, None, "w-1", now=later) == 1

    files = sorted(await asyncio.to_thread(lambda: list(Path(settings.spool_dir).iterdir())))
    assert [f.suffix for f in files] == [".eml"], files  # one file, no temporary leftovers
    assert str(attempt_id) in files[0].name
    parsed = email.message_from_bytes(files[0].read_bytes(), policy=email.policy.default)
    assert parsed["Message-ID"] == f"<{attempt_id}@deskpilot>"
    assert parsed["Subject"] == "Re: Cannot log in"
    assert (await delivery_row(clean_db, delivery_id))["status"] == "sent"
