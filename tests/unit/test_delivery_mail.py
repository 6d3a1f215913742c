"""Building reply emails: subjects, Message-IDs, threading headers, escaped HTML, refused header injection."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import uuid4

import pytest

from core.settings import Settings
from delivery.mail import (
    HeaderInjection,
    SmtpConfig,
    build_reply,
    html_body,
    message_id_for_key,
    spool_file_name,
)
from delivery.model import Delivery
from tickets.subjects import reply_subject


def delivery(**overrides: object) -> Delivery:
    values: dict[str, object] = {
        "id": uuid4(),
        "ticket_id": uuid4(),
        "channel": "email",
        "idempotency_key": "<abc@deskpilot>",
        "recipient": "ada@example.com",
        "subject": "",
        "body": "Hello",
        "origin": "agent",
        "tries": 1,
        "lease_token": 1,
        "attempt_id": None,
        "message_id": None,
        "created_at": datetime(2026, 1, 5, 9, 30, tzinfo=UTC),
        "ticket_subject": "Invoice missing",
    }
    values.update(overrides)
    return Delivery(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("stored", "ticket_subject", "expected"),
    [
        ("", "Invoice missing", "Re: Invoice missing"),
        ("Re: Invoice missing", "Invoice missing", "Re: Invoice missing"),
        ("", "AW: Fwd: RE[2]: Invoice missing", "Re: Invoice missing"),
        ("", "", "Re: your support request"),
    ],
)
def test_the_email_subject_is_the_one_reply_subject_rule(stored: str, ticket_subject: str, expected: str) -> None:
    """The delivery's own subject (or the ticket's) through `tickets.subjects.reply_subject`, never doubled."""
    message = build_reply(delivery(subject=stored, ticket_subject=ticket_subject), Settings())
    assert message["Subject"] == expected == reply_subject(stored or ticket_subject)


def test_message_id_is_the_key_or_derived_stably() -> None:
    assert message_id_for_key("<abc@deskpilot>") == "<abc@deskpilot>"
    derived = message_id_for_key("attempt 42/x")
    assert derived == message_id_for_key("attempt 42/x")
    assert derived.startswith("<attempt-42-x.")
    assert derived.endswith("@deskpilot>")


def test_threading_headers_skip_unusable_ids() -> None:
    message = build_reply(
        delivery(customer_message_ids=("<a@c.example>", "b@c.example", "<bad id@x>", "<e@c.example>\r\nBcc: x")),
        Settings(),
    )
    assert message["In-Reply-To"] == "<b@c.example>"
    assert message["References"] == "<a@c.example> <b@c.example>"


@pytest.mark.parametrize(
    "overrides",
    [
        {"subject": "Hi\r\nBcc: victim@example.com"},
        {"subject": "Hi\nX-Evil: 1"},
        {"recipient": "ada@example.com\r\nBcc: victim@example.com"},
        {"recipient": "ada@example.com, victim@example.com"},
    ],
)
def test_header_injection_is_refused(overrides: dict[str, str]) -> None:
    with pytest.raises(HeaderInjection):
        build_reply(delivery(**overrides), Settings())


def test_a_key_that_is_no_message_id_never_reaches_the_header_raw() -> None:
    message_id = build_reply(delivery(idempotency_key="<a@b>\r\nX: y"), Settings())["Message-ID"]
    assert "\r" not in message_id
    assert "\n" not in message_id
    assert " " not in message_id


def test_from_with_newline_is_refused() -> None:
    with pytest.raises(HeaderInjection):
        build_reply(delivery(), Settings(smtp_from="x@y.z\r\nBcc: a@b.c"))


def test_html_part_is_escaped_text() -> None:
    rendered = html_body('<a href="javascript:alert(1)">x</a>\n\n<img src="https://t.example/p.gif"> & more')
    assert "<a " not in rendered
    assert "<img" not in rendered
    assert "&lt;a href=&quot;javascript:alert(1)&quot;&gt;" in rendered
    assert "&amp; more" in rendered


def test_reviewer_replies_are_not_marked_auto_submitted() -> None:
    assert build_reply(delivery(origin="reviewer"), Settings())["Auto-Submitted"] is None
    assert build_reply(delivery(), Settings())["Auto-Submitted"] == "auto-replied"


def test_spool_file_names_are_safe_and_stable() -> None:
    name = spool_file_name("<../../etc/passwd@deskpilot>")
    assert "/" not in name
    assert not name.startswith(".")
    assert name.endswith(".eml")
    assert name == spool_file_name("<../../etc/passwd@deskpilot>")
    assert spool_file_name("<a/b@x>") != spool_file_name("<a_b@x>")


def test_smtp_urls() -> None:
    plain = SmtpConfig.from_url("smtp://user:p%40ss@mail.example:2525")
    assert (plain.hostname, plain.port, plain.use_tls, plain.username, plain.password) == (
        "mail.example",
        2525,
        False,
        "user",
        "p@ss",
    )
    implicit = SmtpConfig.from_url("smtps://mail.example")
    assert (implicit.port, implicit.use_tls, implicit.username) == (465, True, None)
    assert SmtpConfig.from_url("smtp://mail.example").port == 25
    with pytest.raises(ValueError, match="smtp://"):
        SmtpConfig.from_url("http://mail.example")
