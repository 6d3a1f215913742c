"""`deskpilot mailbox poll`: read the IMAP/IMAPS mailbox of DESKPILOT_IMAP_URL and ingest each new message."""

from __future__ import annotations

import asyncio
import signal
import sys

import click

from app.cli.startup import database_url_or_exit, load_settings, migrate_or_exit
from core import db
from core.settings import Settings
from ingest.mailbox import MailboxConfig, MailboxError, PollReport, keep_watching, poll_mailbox


@click.group()
def mailbox() -> None:
    """The mailbox connector (DESKPILOT_IMAP_URL)."""


@mailbox.command("poll")
@click.option(
    "--watch",
    is_flag=True,
    help="Keep going: wait for new mail with IDLE where the server offers it, else poll every "
    "DESKPILOT_IMAP_POLL_SECONDS; stop with Ctrl-C or SIGTERM.",
)
def poll(watch: bool) -> None:
    """Ingest every unseen message, marking each \\Seen (or moving it to DESKPILOT_IMAP_MOVE_TO) only after its
    ticket is committed. Exits 1 when a message was refused or the mailbox could not be read."""
    settings = load_settings()
    if not settings.imap_url:
        raise click.UsageError("DESKPILOT_IMAP_URL is not set (imaps://user:password@host:993/INBOX)")
    config = MailboxConfig.from_settings(settings)
    url = database_url_or_exit(settings)
    migrate_or_exit(url)
    try:
        if watch:
            asyncio.run(_watch(url, settings, config))
            return
        report = asyncio.run(_poll_once(url, settings, config))
    except MailboxError as exc:
        raise click.ClickException(f"mailbox: {exc}") from None
    click.echo(f"{config.describe()}: {report.summary()}")
    for refused in report.refused:
        click.echo(f"  refused {refused}", err=True)
    if report.refused or report.deferred:
        sys.exit(1)


async def _poll_once(url: str, settings: Settings, config: MailboxConfig) -> PollReport:
    pool = await db.create_pool(url, settings)
    try:
        return await poll_mailbox(pool, settings, config)
    finally:
        await pool.close()


async def _watch(url: str, settings: Settings, config: MailboxConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    pool = await db.create_pool(url, settings)
    try:
        await keep_watching(pool, settings, config, stop)
    finally:
        await pool.close()
