"""A real IMAP server for the mailbox connector's tests: Debian's Dovecot (`make test-services` installs it),
started as an unprivileged process with a temporary configuration: users from a file, maildirs under a
temporary folder, plain IMAP on 127.0.0.1 at a free port, no TLS. As root (CI), it runs as `nobody`."""

from __future__ import annotations

import contextlib
import imaplib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.server import free_port

DOVECOT = Path("/usr/sbin/dovecot")
USER = "support"
PASSWORD = "imap-test-password-7c1e"


def dovecot_missing() -> str | None:
    """Why the IMAP tests cannot run here, or None."""
    if not DOVECOT.exists():
        return "Dovecot is not installed (`make test-services` installs Debian's dovecot-imapd)"
    return None


_CONFIG = """\
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
default_login_user = {user}
default_internal_user = {user}
default_internal_group = {group}
first_valid_uid = 1
mail_location = maildir:{root}/mail/%u
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/users
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {root}/users
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = 0
  }}
}}
service submission-login {{
  inet_listener submission {{
    port = 0
  }}
}}
service anvil {{
  chroot =
}}
"""


@dataclass
class Dovecot:
    root: Path
    port: int
    process: subprocess.Popen[bytes]
    uid: int
    gid: int

    @property
    def url(self) -> str:
        return f"imap://{USER}:{PASSWORD}@127.0.0.1:{self.port}/INBOX"

    @property
    def maildir(self) -> Path:
        return self.root / "mail" / USER

    def deliver(self, raw: bytes, folder: str | None = None) -> None:
        """Put a message into the mailbox the way a delivery agent does (maildir: tmp/, then new/)."""
        base = self.maildir if folder is None else self.maildir / f".{folder}"
        base.mkdir(exist_ok=True)
        os.chown(base, self.uid, self.gid)
        for sub in ("tmp", "new", "cur"):
            (base / sub).mkdir(exist_ok=True)
            os.chown(base / sub, self.uid, self.gid)
        name = f"{time.time():.6f}.{uuid.uuid4().hex}.deskpilot-test"
        temporary = base / "tmp" / name
        temporary.write_bytes(raw)
        os.chown(temporary, self.uid, self.gid)
        temporary.rename(base / "new" / name)

    def client(self) -> imaplib.IMAP4:
        imap = imaplib.IMAP4("127.0.0.1", self.port, timeout=10)
        imap.login(USER, PASSWORD)
        return imap

    def flags(self, folder: str = "INBOX") -> list[set[str]]:
        """The flags of every message in a folder, in order."""
        imap = self.client()
        try:
            status, data = imap.select(folder, readonly=True)
            assert status == "OK", folder
            if data[0] == b"0":
                return []
            _, data = imap.fetch("1:*", "(FLAGS)")
            found = []
            for item in data:
                if isinstance(item, bytes) and b"FLAGS" in item:
                    inner = item.split(b"FLAGS (", 1)[1].split(b")", 1)[0].decode()
                    found.append(set(inner.split()))
            return found
        finally:
            with contextlib.suppress(Exception):
                imap.logout()

    def create_folder(self, name: str) -> None:
        imap = self.client()
        try:
            imap.create(name)
        finally:
            imap.logout()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"dovecot exited with {process.returncode}: {log.read_text(errors='replace')[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"dovecot did not listen on {port} within {timeout_s}s")


@contextlib.contextmanager
def dovecot() -> Iterator[Dovecot]:
    """Dovecot on a free loopback port, its whole state in a folder of its own under the system's temporary
    folder (pytest's are private to the test user, and the server's user must reach it), removed afterwards."""
    # As root (CI) the server runs as `nobody`: a test server gets no privilege at all.
    account = pwd.getpwnam("nobody") if os.geteuid() == 0 else pwd.getpwuid(os.geteuid())
    group = _group_name(account.pw_gid)
    root = Path(tempfile.mkdtemp(prefix="deskpilot-imap-"))
    for sub in ("run", "state", "mail", f"mail/{USER}"):
        (root / sub).mkdir(exist_ok=True)
    port = free_port()
    (root / "dovecot.conf").write_text(
        _CONFIG.format(root=root, user=account.pw_name, group=group, port=port), encoding="utf-8"
    )
    (root / "users").write_text(
        f"{USER}:{{PLAIN}}{PASSWORD}:{account.pw_uid}:{account.pw_gid}::{root}/mail/{USER}::\n", encoding="utf-8"
    )
    for path in [root, *root.rglob("*")]:
        os.chown(path, account.pw_uid, account.pw_gid)
    log = root / "dovecot.log"
    process = subprocess.Popen(
        [str(DOVECOT), "-F", "-c", str(root / "dovecot.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        user=account.pw_uid if os.geteuid() == 0 else None,
        group=account.pw_gid if os.geteuid() == 0 else None,
        extra_groups=[] if os.geteuid() == 0 else None,
    )
    server = Dovecot(root, port, process, account.pw_uid, account.pw_gid)
    try:
        _wait_for_port(port, process, log)
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def _group_name(gid: int) -> str:
    import grp

    return grp.getgrgid(gid).gr_name
