"""The mailbox connector against a real IMAP server (Dovecot, started by the tests as an unprivileged process):
new mail becomes tickets, a message is marked only after its ticket is committed, a crash in between neither
loses nor doubles a ticket, refused mail is flagged for a person, IDLE wakes the watcher, and the reply to a
mailed ticket threads back over SMTP."""

from __future__ import annotations

import asyncio
import email
import email.policy
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiosmtpd.controller import Controller as SmtpController
from aiosmtpd.smtp import Envelope, Session

from app.worker.wiring import mailbox_job
from core.metrics import Metrics
from core.settings import Settings
from delivery import outbox
from ingest.mailbox import REFUSED_KEYWORD, MailboxConfig, MailboxError, poll_mailbox, watch_mailbox
from tests.support.delivery import seed_agent_reply, seed_attempt
from tests.support.imap import PASSWORD, Dovecot, dovecot, dovecot_missing
from tests.support.server import REPO, free_port

pytestmark = pytest.mark.skipif(dovecot_missing() is not None, reason=dovecot_missing() or "")

DATA = Path(__file__).resolve().parent.parent / "data" / "inbound"


def mail(n: int, *, subject: str = "Cannot export my reports", extra: str = "", body: str | None = None) -> bytes:
    return (
        f"From: Grace Hopper <grace@customer.example>\r\nTo: support@example.net\r\nSubject: {subject}\r\n"
        f"Message-ID: <imap-{n}@customer.example>\r\nDate: Tue, 3 Nov 2026 09:13:58 +0000\r\n{extra}"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        f"{body or f'Hello, the report export number {n} fails with an error.'}\r\n"
    ).encode()


@pytest.fixture
def imap() -> Iterator[Dovecot]:
    with dovecot() as server:
        yield server


@pytest.fixture
def imap_settings(make_settings: Callable[..., Settings], imap: Dovecot) -> Callable[..., Settings]:
    def build(**env: str) -> Settings:
        return make_settings(DESKPILOT_IMAP_URL=imap.url, **env)

    return build


async def wait_for_a_ticket(pool: asyncpg.Pool, timeout_s: float = 30.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not await tickets(pool):  # noqa: ASYNC110 - the ticket is written by another task's transaction
            await asyncio.sleep(0.2)


async def tickets(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT t.id, t.subject, t.email_message_id, c.email FROM tickets t "
        "JOIN customers c ON c.id = t.customer_id ORDER BY t.created_at"
    )


async def test_new_mail_becomes_tickets_and_is_marked_seen_after_the_commit(
    clean_db: asyncpg.Pool, imap: Dovecot, imap_settings: Callable[..., Settings]
) -> None:
    imap.deliver(mail(1))
    imap.deliver((DATA / "html-attachments.eml").read_bytes())
    imap.deliver((DATA / "auto-reply.eml").read_bytes())
    settings = imap_settings()
    report = await poll_mailbox(clean_db, settings, MailboxConfig.from_settings(settings))
    assert (report.created, report.ignored, report.refused) == (2, 1, [])
    rows = await tickets(clean_db)
    assert [r["email_message_id"] for r in rows] == [
        "<imap-1@customer.example>",
        "<b7d94a1e-52c4-4f0e-9a51-html.0003@analytical.example.com>",
    ]
    assert rows[0]["email"] == "grace@customer.example"
    assert await clean_db.fetchval("SELECT count(*) FROM ticket_attachments") == 3
    assert all("\\Seen" in flags for flags in imap.flags())
    again = await poll_mailbox(clean_db, settings, MailboxConfig.from_settings(settings))
    assert again.handled == 0
    assert len(await tickets(clean_db)) == 2


async def test_a_crash_between_ingest_and_marking_neither_loses_nor_doubles_the_ticket(
    clean_db: asyncpg.Pool, imap: Dovecot, imap_settings: Callable[..., Settings]
) -> None:
    imap.deliver(mail(2))
    settings = imap_settings()
    config = MailboxConfig.from_settings(settings)

    def crash(uid: int, outcome: Any) -> None:
        raise SystemExit("killed after the commit, before \\Seen")

    with pytest.raises(SystemExit):
        await poll_mailbox(clean_db, settings, config, on_ingested=crash)
    assert len(await tickets(clean_db)) == 1  # committed
    assert imap.flags() == [set()]  # not marked: it will be read again

    report = await poll_mailbox(clean_db, settings, config)
    assert (report.created, report.duplicates) == (0, 1)
    assert len(await tickets(clean_db)) == 1
    assert "\\Seen" in imap.flags()[0]


async def test_ingested_mail_is_moved_to_the_configured_folder(
    clean_db: asyncpg.Pool, imap: Dovecot, imap_settings: Callable[..., Settings]
) -> None:
    imap.create_folder("Processed")
    imap.deliver(mail(3))
    settings = imap_settings(DESKPILOT_IMAP_MOVE_TO="Processed")
    report = await poll_mailbox(clean_db, settings, MailboxConfig.from_settings(settings))
    assert report.created == 1
    assert imap.flags("INBOX") == []
    [moved] = imap.flags("Processed")
    assert "\\Seen" in moved


async def test_refused_mail_is_flagged_for_a_person_and_the_rest_still_flows(
    clean_db: asyncpg.Pool, imap: Dovecot, imap_settings: Callable[..., Settings]
) -> None:
    imap.deliver((DATA / "broken-charset.eml").read_bytes())
    imap.deliver(mail(4))
    settings = imap_settings()
    report = await poll_mailbox(clean_db, settings, MailboxConfig.from_settings(settings))
    assert report.created == 1
    assert len(report.refused) == 1 and "body" in report.refused[0]
    first, second = imap.flags()
    assert first == {"\\Seen", REFUSED_KEYWORD}
    assert "\\Seen" in second and REFUSED_KEYWORD not in second
    assert [r["email_message_id"] for r in await tickets(clean_db)] == ["<imap-4@customer.example>"]


async def test_wrong_credentials_fail_without_showing_the_password(
    clean_db: asyncpg.Pool, imap: Dovecot, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(DESKPILOT_IMAP_URL=imap.url.replace(PASSWORD, "not-the-password-123"))
    with pytest.raises(MailboxError) as failure:
        await poll_mailbox(clean_db, settings, MailboxConfig.from_settings(settings))
    assert "not-the-password-123" not in str(failure.value)
    assert "support@127.0.0.1" in str(failure.value)


async def test_idle_wakes_the_watcher_as_soon_as_mail_arrives(
    clean_db: asyncpg.Pool, imap: Dovecot, imap_settings: Callable[..., Settings]
) -> None:
    settings = imap_settings(DESKPILOT_IMAP_POLL_SECONDS="3600")  # only IDLE can make it read in time
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch_mailbox(clean_db, settings, MailboxConfig.from_settings(settings), stop))
    try:
        await asyncio.sleep(1.0)  # connected, first (empty) poll done, idling
        imap.deliver(mail(5))
        await wait_for_a_ticket(clean_db)
    finally:
        stop.set()
        async with asyncio.timeout(10):  # the IDLE ends within a second of the stop
            await watcher
    assert "\\Seen" in imap.flags()[0]


async def test_the_worker_reads_the_mailbox_when_configured(
    clean_db: asyncpg.Pool, imap: Dovecot, imap_settings: Callable[..., Settings]
) -> None:
    settings = imap_settings(DESKPILOT_IMAP_POLL_SECONDS="1")
    stop = asyncio.Event()
    job = mailbox_job(clean_db, settings, stop)
    imap.deliver(mail(6))
    running = asyncio.create_task(job.run())
    try:
        await wait_for_a_ticket(clean_db)
    finally:
        stop.set()
        async with asyncio.timeout(10):
            await running


@dataclass
class Recorder:
    messages: list[EmailMessage] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        parsed = email.message_from_bytes(envelope.original_content or envelope.content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self.messages.append(parsed)
        return "250 accepted"


async def test_end_to_end_mail_in_the_mailbox_and_the_threaded_reply_over_smtp(
    clean_db: asyncpg.Pool, imap: Dovecot, imap_settings: Callable[..., Settings]
) -> None:
    imap.deliver(mail(7))
    imap.deliver(
        mail(
            8,
            subject="Re: Cannot export my reports",
            extra="In-Reply-To: <imap-7@customer.example>\r\nReferences: <imap-7@customer.example>\r\n",
            body="Still failing this morning.",
        )
    )
    recorder = Recorder()
    port = free_port()
    smtp = SmtpController(recorder, hostname="127.0.0.1", port=port)
    smtp.start()
    try:
        settings = imap_settings(DESKPILOT_SMTP_URL=f"smtp://127.0.0.1:{port}")
        report = await poll_mailbox(clean_db, settings, MailboxConfig.from_settings(settings))
        assert (report.created, report.followups) == (1, 1)
        [ticket] = await tickets(clean_db)
        attempt_id = await seed_attempt(clean_db, ticket["id"], draft="Fixed, please retry.", decision="deliver")
        await seed_agent_reply(clean_db, ticket["id"], attempt_id)
        assert await outbox.drain_outbox(clean_db, settings, Metrics(), "w-1") == 1
    finally:
        smtp.stop()
    [reply] = recorder.messages
    assert reply["To"] == "grace@customer.example"
    assert reply["In-Reply-To"] == "<imap-8@customer.example>"
    assert reply["References"] == "<imap-7@customer.example> <imap-8@customer.example>"


def test_cli_poll_ingests_and_never_prints_the_password(database_url: str, imap: Dovecot, tmp_path: Path) -> None:
    imap.deliver(mail(9))
    env = {
        **os.environ,
        "DESKPILOT_DATABASE_URL": database_url,
        "DESKPILOT_DATA_DIR": str(tmp_path),
        "DESKPILOT_IMAP_URL": imap.url,
    }
    done = subprocess.run(
        [str(Path(sys.executable).parent / "deskpilot"), "mailbox", "poll"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "1 new tickets" in done.stdout
    assert PASSWORD not in done.stdout + done.stderr
    assert "\\Seen" in imap.flags()[0]
