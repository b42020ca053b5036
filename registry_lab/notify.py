"""Where a page lands in the notification tests: an SMTP server that keeps every message, the private msmtp
configuration that makes Debian's sendmail (msmtp-mta) deliver to it, and a webhook receiver for Alertmanager.

The SMTP server is aiosmtpd's own command line (`python -m aiosmtpd`, its Mailbox handler writing a Maildir), a
real SMTP implementation run as a process on 127.0.0.1 and stopped by its PID; the test reads the Maildir.
"""

from __future__ import annotations

import email
import email.policy
import json
import mailbox
import os
import shutil
import socket
import subprocess
import sys
import time
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Callable, List, Optional

from .icinga import poll
from .registry import free_port, stop_process
from .secure import LoopbackServer

#: The tests' mail path: `mail` hands the message to /usr/sbin/sendmail, which must be msmtp (msmtp-mta) reading
#: the test's ~/.msmtprc. Another MTA there (exim4, postfix) would try to deliver to the example's real domain.
MAIL_PATH_READY = shutil.which("mail") is not None and os.path.realpath("/usr/sbin/sendmail").endswith("/msmtp")
MAIL_PATH_MISSING = "mail (bsd-mailx) or msmtp-mta as /usr/sbin/sendmail is not installed (tools/debian-packages.txt)"


class MailSink:
    """aiosmtpd on 127.0.0.1:<free port>, storing each message it accepts in `workdir/Maildir`."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.maildir = self.workdir / "Maildir"
        self.port = free_port()
        self.log_path = self.workdir / "smtp.log"
        self.process: Optional[subprocess.Popen] = None

    def start(self, wait: float = 15.0) -> MailSink:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "aiosmtpd", "--nosetuid", "--listen", f"127.0.0.1:{self.port}",
                 "--class", "aiosmtpd.handlers.Mailbox", str(self.maildir)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        until = time.monotonic() + wait
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"aiosmtpd exited with {self.process.returncode}: {self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    if sock.recv(512).startswith(b"220 "):
                        return self
            except OSError:
                pass
            if time.monotonic() > until:
                self.stop()
                raise RuntimeError(f"aiosmtpd did not greet on port {self.port} within {wait}s: {self.log()}")
            time.sleep(0.05)

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None

    def __enter__(self) -> MailSink:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""

    def messages(self, to: str) -> List[EmailMessage]:
        """The messages for `to` so far (the daemons' own example objects may mail someone else meanwhile)."""
        if not self.maildir.exists():
            return []
        box = mailbox.Maildir(self.maildir, factory=None, create=False)
        found = [email.message_from_bytes(box.get_bytes(key), policy=email.policy.default)  # type: ignore[misc]
                 for key in sorted(box.keys())]
        return [message for message in found if message["To"] == to]

    def wait_for_message(self, to: str, wait: float = 30.0, log: Callable[[], str] = lambda: "") -> EmailMessage:
        """The first message for `to`, once one has arrived (the notification runs after the check result)."""
        return poll(lambda: next(iter(self.messages(to)), None), f"a mail to {to}", wait,
                    lambda: f"SMTP server: {self.log()}\n{log()}")

    def msmtp_home(self, home: Path, sender: str) -> Path:
        """`home`/.msmtprc sending everything to this server: the HOME of a daemon whose `mail` calls Debian's
        sendmail (msmtp-mta), which reads ~/.msmtprc, so the system's /etc/msmtprc is never touched."""
        home.mkdir(parents=True, exist_ok=True)
        config = home / ".msmtprc"
        config.write_text(f"account default\nhost 127.0.0.1\nport {self.port}\nfrom {sender}\nauth off\ntls off\n"
                          f"logfile {home / 'msmtp.log'}\n")
        config.chmod(0o600)
        return home


def mail_text(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None, message.as_string()
    return part.get_content()  # type: ignore[attr-defined]


class WebhookReceiver(LoopbackServer):
    """Alertmanager's webhook receiver on 127.0.0.1: keeps every JSON payload POSTed to it, answers 200."""

    def __init__(self) -> None:
        self.payloads: List[dict] = []
        super().__init__(self._handle)

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        self.payloads.append(json.loads(handler.rfile.read(length)))
        handler.send_response(200)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    def wait_for_alert(self, name: str, wait: float = 30.0, log: Callable[[], str] = lambda: "",
                       **labels: str) -> dict:
        """The first firing alert `name` whose labels include `labels`, from any payload received."""
        def firing() -> Optional[dict]:
            return next((alert for payload in list(self.payloads) for alert in payload.get("alerts", [])
                         if alert["labels"].get("alertname") == name and alert["status"] == "firing"
                         and labels.items() <= alert["labels"].items()), None)

        return poll(firing, f"a firing {name} {labels} at the webhook", wait,
                    lambda: f"received: {self.payloads}\n{log()}")
