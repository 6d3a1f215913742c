"""The mailbox connector: an IMAP/IMAPS mailbox read like an inbound webhook.

Each unseen message is fetched without marking it (`BODY.PEEK[]`), ingested through the same path as raw MIME
(`parse_mime`, then `store_email`: the ticket or follow-up and its attachments in one transaction, the workers
woken after it by a `tickets.wakeup.WorkerWaker`), and only after that commit marked `\\Seen` or moved to
`DESKPILOT_IMAP_MOVE_TO`. A crash between the two leaves the
message unseen: the next poll reads it again, and its Message-ID (the idempotency key) makes it a duplicate,
so nothing is lost and nothing is doubled. Auto-replies and bounces are marked like ingested mail (never a
ticket). A message refused for good (malformed, over a limit, a reused Message-ID with other content) is marked
`\\Seen` with the keyword `$DeskPilotRefused` and left in place for a person; anything transient (the database
away, a quota) leaves it unseen for the next poll.

`watch_mailbox` keeps one connection: it polls, then waits for new mail with IDLE where the server offers it
(RFC 2177), else sleeps, `DESKPILOT_IMAP_POLL_SECONDS` at most between polls. The standard library's `imaplib`
is blocking, so every call runs in a thread. Credentials come from `DESKPILOT_IMAP_URL` and are never logged:
the mailbox is named by `MailboxConfig.describe()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import logging
import re
import select
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import asyncpg

from core.backoff import Backoff
from core.errors import DATABASE_UNAVAILABLE, DeskPilotError, TooManyRequests, Unavailable
from core.settings import Settings
from ingest.inbound import mime_limits, normalized_ticket, store_email
from ingest.mime import IgnoredEmail, parse_mime
from ingest.schemas import PayloadError
from ingest.store import IngestResult
from tickets.wakeup import WorkerWaker

log = logging.getLogger(__name__)

REFUSED_KEYWORD = "$DeskPilotRefused"
IMAP_TIMEOUT_S = 60.0
# A poll fetches at most this many messages; the rest wait for the next one (a backlog drains in steps).
MAX_MESSAGES_PER_POLL = 200
_IDLE_CHECK_S = 1.0
_FETCH_SIZE = re.compile(rb"UID (\d+) RFC822\.SIZE (\d+)|RFC822\.SIZE (\d+) UID (\d+)")


# Errors that leave the message unseen for the next poll: the database away, a quota.
_TRANSIENT: tuple[type[Exception], ...] = (TooManyRequests, Unavailable, *DATABASE_UNAVAILABLE)


class MailboxError(Exception):
    """The server refused a command or the connection failed; the message names the mailbox, not the password."""


@dataclass(frozen=True, slots=True)
class MailboxConfig:
    host: str
    port: int
    tls: bool
    username: str
    password: str = field(repr=False)
    folder: str = "INBOX"
    move_to: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> MailboxConfig:
        if not settings.imap_url:
            raise ValueError("DESKPILOT_IMAP_URL is not set")
        return cls.from_url(settings.imap_url, move_to=settings.imap_move_to)

    @classmethod
    def from_url(cls, url: str, *, move_to: str | None = None) -> MailboxConfig:
        """`imaps://user:password@host[:993][/folder]` (TLS from the first byte) or `imap://...` (STARTTLS when
        the server offers it). User name and password are percent-decoded."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("imap", "imaps") or not parts.hostname:
            raise ValueError("DESKPILOT_IMAP_URL must be imap:// or imaps://user:password@host[:port][/folder]")
        if not parts.username or parts.password is None:
            raise ValueError("DESKPILOT_IMAP_URL must carry the mailbox's user name and password")
        folder = unquote(parts.path.lstrip("/")) or "INBOX"
        return cls(
            host=parts.hostname,
            port=parts.port or (993 if scheme == "imaps" else 143),
            tls=scheme == "imaps",
            username=unquote(parts.username),
            password=unquote(parts.password),
            folder=folder,
            move_to=move_to or None,
        )

    def describe(self) -> str:
        """The mailbox without its password, for logs and messages."""
        return f"{'imaps' if self.tls else 'imap'}://{self.username}@{self.host}:{self.port}/{self.folder}"


def _quoted(name: str) -> str:
    """A mailbox name as an IMAP quoted string."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


class MailboxSession:
    """One logged-in IMAP connection with the folder selected (blocking: call it from a thread)."""

    def __init__(self, config: MailboxConfig, *, timeout_s: float = IMAP_TIMEOUT_S) -> None:
        self.config = config
        try:
            if config.tls:
                self.imap: imaplib.IMAP4 = imaplib.IMAP4_SSL(
                    config.host, config.port, ssl_context=ssl.create_default_context(), timeout=timeout_s
                )
            else:
                self.imap = imaplib.IMAP4(config.host, config.port, timeout=timeout_s)
                if "STARTTLS" in self.imap.capabilities:
                    self.imap.starttls(ssl.create_default_context())
            self.imap.login(config.username, config.password)
            self._ok(self.imap.select(_quoted(config.folder)), f"select {config.folder}")
        except MailboxError:
            self.close()
            raise
        except (OSError, imaplib.IMAP4.error) as exc:
            self.close()
            # imaplib's messages quote the server, never the password; the mailbox is named without it.
            raise MailboxError(f"{config.describe()}: {type(exc).__name__}: {exc}") from None
        self.moves = "MOVE" in self.imap.capabilities

    @property
    def supports_idle(self) -> bool:
        return "IDLE" in self.imap.capabilities

    def _ok(self, answer: tuple[str, list[Any]], what: str) -> list[Any]:
        status, data = answer
        if status != "OK":
            raise MailboxError(f"{self.config.describe()}: {what} failed: {status} {data!r:.200}")
        return data

    def unseen(self) -> list[tuple[int, int]]:
        """(uid, size) of every message not yet seen, oldest first."""
        data = self._ok(self.imap.uid("SEARCH", "UNSEEN"), "search")
        uids = [int(token) for token in (data[0] or b"").split()] if data and isinstance(data[0], bytes) else []
        uids = sorted(uids)[:MAX_MESSAGES_PER_POLL]
        if not uids:
            return []
        fetched = self._ok(self.imap.uid("FETCH", ",".join(map(str, uids)), "(RFC822.SIZE)"), "fetch sizes")
        sizes: dict[int, int] = {}
        for item in fetched:
            line = item[0] if isinstance(item, tuple) else item
            if isinstance(line, bytes) and (found := _FETCH_SIZE.search(line)):
                uid, size = (found.group(1), found.group(2)) if found.group(1) else (found.group(4), found.group(3))
                sizes[int(uid)] = int(size)
        return [(uid, sizes.get(uid, 0)) for uid in uids]

    def fetch(self, uid: int) -> bytes | None:
        """The whole message, without setting \\Seen; None when it is gone (expunged meanwhile)."""
        data = self._ok(self.imap.uid("FETCH", str(uid), "(BODY.PEEK[])"), f"fetch {uid}")
        for item in data:
            if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], bytes):
                return item[1]
        return None

    def mark_done(self, uid: int) -> None:
        """After the commit: \\Seen, then moved when a folder is configured (MOVE, or COPY + delete)."""
        self._ok(self.imap.uid("STORE", str(uid), "+FLAGS.SILENT", "(\\Seen)"), f"mark {uid} seen")
        target = self.config.move_to
        if not target:
            return
        if self.moves:
            self._ok(self.imap.uid("MOVE", str(uid), _quoted(target)), f"move {uid}")
            return
        self._ok(self.imap.uid("COPY", str(uid), _quoted(target)), f"copy {uid}")
        self._ok(self.imap.uid("STORE", str(uid), "+FLAGS.SILENT", "(\\Deleted)"), f"delete {uid}")
        with contextlib.suppress(imaplib.IMAP4.error):  # UIDPLUS: expunge only this one; else at close
            self.imap.uid("EXPUNGE", str(uid))

    def mark_refused(self, uid: int) -> None:
        self._ok(
            self.imap.uid("STORE", str(uid), "+FLAGS.SILENT", f"(\\Seen {REFUSED_KEYWORD})"), f"mark {uid} refused"
        )

    def idle(self, timeout_s: float, stop: threading.Event) -> bool:
        """Wait for new mail with IDLE (RFC 2177), at most `timeout_s` or until `stop` is set. True when the
        server announced a new message. `imaplib` before Python 3.14 has no IDLE: spoken here directly."""
        imap = self.imap
        tag = imap._new_tag()
        imap.send(tag + b" IDLE\r\n")
        if not imap.readline().startswith(b"+"):
            raise MailboxError(f"{self.config.describe()}: the server refused IDLE")
        announced = False
        deadline = time.monotonic() + timeout_s
        sock = imap.sock
        while not stop.is_set() and not announced:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            pending = sock.pending() if isinstance(sock, ssl.SSLSocket) else 0
            if not pending and not select.select([sock], [], [], min(_IDLE_CHECK_S, remaining))[0]:
                continue
            line = imap.readline()
            if not line:
                raise MailboxError(f"{self.config.describe()}: the server closed the connection during IDLE")
            announced = line.startswith(b"*") and (b"EXISTS" in line or b"RECENT" in line)
        imap.send(b"DONE\r\n")
        while True:  # the untagged lines still in flight, then IDLE's own answer
            line = imap.readline()
            if not line:
                raise MailboxError(f"{self.config.describe()}: the server closed the connection during IDLE")
            if line.startswith(tag):
                return announced
            if line.startswith(b"*") and b"EXISTS" in line:
                announced = True

    def close(self) -> None:
        imap = getattr(self, "imap", None)
        if imap is None:
            return
        with contextlib.suppress(Exception):
            if imap.state == "SELECTED":
                imap.close()  # expunges what COPY + delete left
        with contextlib.suppress(Exception):
            imap.logout()


@dataclass(slots=True)
class PollReport:
    created: int = 0
    followups: int = 0
    duplicates: int = 0
    ignored: int = 0
    refused: list[str] = field(default_factory=list)  # "uid 12: <reason>"
    deferred: str | None = None  # why the poll stopped early (transient): the rest waits for the next one

    @property
    def handled(self) -> int:
        return self.created + self.followups + self.duplicates + self.ignored + len(self.refused)

    def summary(self) -> str:
        text = (
            f"{self.created} new tickets, {self.followups} follow-ups, {self.duplicates} duplicates, "
            f"{self.ignored} auto-replies/bounces ignored, {len(self.refused)} refused"
        )
        return f"{text}; stopped early: {self.deferred}" if self.deferred else text


Ingested = Callable[[int, IngestResult | IgnoredEmail], Awaitable[None] | None]


async def ingest_message(
    pool: asyncpg.Pool, settings: Settings, raw: bytes, *, waker: WorkerWaker
) -> IngestResult | IgnoredEmail:
    """One message through the raw MIME path: parsed and normalized in a thread, stored with its attachments
    in one transaction, the workers woken after the commit. Raises PayloadError (refused) or what the store
    raises."""
    limits = mime_limits(settings)
    parsed = await asyncio.to_thread(parse_mime, raw, limits=limits, source="imap")
    if isinstance(parsed, IgnoredEmail):
        return parsed
    ticket = await asyncio.to_thread(normalized_ticket, parsed)
    async with pool.acquire() as conn:
        result = await store_email(conn, parsed, ticket, settings=settings, customer_verified=False)
    if not result.duplicate:
        waker.wake()
    return result


async def poll_session(
    pool: asyncpg.Pool,
    settings: Settings,
    session: MailboxSession,
    *,
    waker: WorkerWaker,
    on_ingested: Ingested | None = None,
) -> PollReport:
    """Ingest every unseen message of an open session, marking each only after its commit.

    `on_ingested(uid, outcome)` runs between the commit and the marking (tests use it to crash right there)."""
    report = PollReport()
    for uid, size in await asyncio.to_thread(session.unseen):
        if size > settings.max_email_bytes:
            await _refuse(session, uid, f"{size} bytes, over DESKPILOT_MAX_EMAIL_BYTES", report)
            continue
        raw = await asyncio.to_thread(session.fetch, uid)
        if raw is None:
            continue
        try:
            outcome = await ingest_message(pool, settings, raw, waker=waker)
        except PayloadError as exc:
            await _refuse(session, uid, f"{exc.status} {exc.field or 'message'}: {exc.detail}", report)
            continue
        except _TRANSIENT as exc:
            report.deferred = f"{type(exc).__name__}: {exc}"
            break
        except DeskPilotError as exc:  # a reused Message-ID with other content (409), a bad thread (422)
            await _refuse(session, uid, f"{exc.status} {exc.field or 'message'}: {exc.detail}", report)
            continue
        if on_ingested is not None:
            maybe = on_ingested(uid, outcome)
            if maybe is not None:
                await maybe
        await asyncio.to_thread(session.mark_done, uid)
        _count(report, outcome)
    return report


def _count(report: PollReport, outcome: IngestResult | IgnoredEmail) -> None:
    if isinstance(outcome, IgnoredEmail):
        report.ignored += 1
    elif outcome.duplicate:
        report.duplicates += 1
    elif outcome.followup:
        report.followups += 1
    else:
        report.created += 1


async def _refuse(session: MailboxSession, uid: int, reason: str, report: PollReport) -> None:
    log.warning("mailbox %s: message uid %d refused (%s); flagged %s", session.config.describe(), uid, reason,
                REFUSED_KEYWORD)  # fmt: skip
    await asyncio.to_thread(session.mark_refused, uid)
    report.refused.append(f"uid {uid}: {reason}")


async def connect(config: MailboxConfig) -> MailboxSession:
    return await asyncio.to_thread(MailboxSession, config)


async def poll_mailbox(
    pool: asyncpg.Pool, settings: Settings, config: MailboxConfig, *, on_ingested: Ingested | None = None
) -> PollReport:
    """Connect, ingest every unseen message, disconnect: `deskpilot mailbox poll`."""
    session = await connect(config)
    try:
        async with WorkerWaker(pool) as waker:
            return await poll_session(pool, settings, session, waker=waker, on_ingested=on_ingested)
    finally:
        await asyncio.to_thread(session.close)


async def watch_mailbox(pool: asyncpg.Pool, settings: Settings, config: MailboxConfig, stop: asyncio.Event) -> None:
    """Poll, then wait for new mail (IDLE where offered, else a sleep) at most `imap_poll_s`, until `stop`.
    Returns when stopped; raises MailboxError (or OSError) when the connection fails, for the caller to retry."""
    session = await connect(config)
    log.info("mailbox %s: connected (%s)", config.describe(), "IDLE" if session.supports_idle else "polling")
    try:
        async with WorkerWaker(pool) as waker:
            while not stop.is_set():
                report = await poll_session(pool, settings, session, waker=waker)
                if report.handled or report.deferred:
                    log.info("mailbox %s: %s", config.describe(), report.summary())
                if report.deferred:
                    await _wait(stop, settings.imap_poll_s)
                elif session.supports_idle:
                    await _idle(session, settings.imap_poll_s, stop)
                else:
                    await _wait(stop, settings.imap_poll_s)
    finally:
        await asyncio.to_thread(session.close)


async def keep_watching(pool: asyncpg.Pool, settings: Settings, config: MailboxConfig, stop: asyncio.Event) -> None:
    """`watch_mailbox` until `stop`, reconnecting with backoff when the server or the network fails: the worker's
    mailbox job and `deskpilot mailbox poll --watch`."""
    backoff = Backoff(base_s=1.0, cap_s=max(settings.imap_poll_s, 5.0))
    while not stop.is_set():
        started = time.monotonic()
        try:
            await watch_mailbox(pool, settings, config, stop)
        except (MailboxError, OSError, imaplib.IMAP4.error) as exc:
            if time.monotonic() - started > settings.imap_poll_s:
                backoff.reset()  # it worked for a while: a fresh failure, not the same one again
            delay = backoff.next_delay()
            # MailboxError names the mailbox without its password; the others carry no credentials.
            log.warning("mailbox %s: %s; reconnecting in %.1fs", config.describe(), exc, delay)
            await _wait(stop, delay)
        except Exception:  # a bug must not end the watch for good: logged, then the same backoff
            delay = backoff.next_delay()
            log.exception("mailbox %s: the watch failed; reconnecting in %.1fs", config.describe(), delay)
            await _wait(stop, delay)


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def _idle(session: MailboxSession, seconds: float, stop: asyncio.Event) -> None:
    thread_stop = threading.Event()
    idling = asyncio.ensure_future(asyncio.to_thread(session.idle, seconds, thread_stop))
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({idling, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        thread_stop.set()  # the IDLE thread notices within a second and ends the command
        stopped.cancel()
        # Even when cancelled: the connection is closed next, and not while the thread still speaks on it.
        await idling
