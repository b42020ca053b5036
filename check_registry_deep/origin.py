"""--origin: each blob or manifest that failed through --registry, fetched again from the origin behind it (a
cache, CDN or load balancer in front) and verified the same way. Is the storage broken, or only the cache?

The origin is reached with --registry's URL, Host header and TLS name (app.py builds its client like
--connect-to). Its answer is a fact on the finding (model.OriginCheck); judge.py and wording.py say what it
means. It is asked inside the run: its deadline ends a little before the run's, so the run still answers in
time, and its downloads count against --max-bytes; what there is no time or budget for is marked skipped, never
lost.
"""

from __future__ import annotations

import threading
from typing import Optional

from .client import RegistryClient
from .errors import CheckError, DeadlineExceeded, RegistryError, UnsupportedDigest
from .model import Descriptor, Finding, OriginCheck
from .resolve import Resolver
from .transfer import BlobTransfer, stall_timeout

#: Seconds the run keeps for itself after the origin's deadline: to gather, judge and print.
MARGIN = 0.5
NO_TIME = "no time left before the deadline"
NO_BYTES = "--max-bytes spent"


def worth_asking(finding: Finding) -> bool:
    """A blob or manifest that the registry does not serve as it should (not one we cannot judge): the origin
    may tell where it broke."""
    return isinstance(finding.error, RegistryError) and not isinstance(finding.error, UnsupportedDigest)


class OriginChecker:
    def __init__(self, registry: str, address: str, client: RegistryClient, max_bytes: Optional[int] = None):
        """`client` talks to `address` for the `registry` URL, under its own deadline (the run's less MARGIN)."""
        self.registry = registry
        self.address = address
        self.client = client
        self.deadline = client.deadline
        self.budget = max_bytes  # None: no --max-bytes
        self._lock = threading.Lock()

    def charge(self, spent: int) -> None:
        """What the run downloaded before the origin was asked, against --max-bytes."""
        with self._lock:
            if self.budget is not None:
                self.budget -= spent

    def _reserve(self, size: int) -> bool:
        with self._lock:
            if self.budget is not None and size > self.budget:
                return False
            if self.budget is not None:
                self.budget -= size
            return True

    def check(self, finding: Finding, cancelled: threading.Event) -> OriginCheck:
        """The origin's answer on `finding`; `cancelled` is set when the scan ends."""
        # in less than a stall timeout, a silent origin could not even be told from a slow one
        if self.deadline.remaining() < stall_timeout(self.deadline):
            return OriginCheck(self.address, skipped=NO_TIME)
        try:
            if finding.kind.blob:
                if not self._reserve(finding.size or 0):
                    return OriginCheck(self.address, skipped=NO_BYTES)
                self._blob(finding, cancelled)
            else:
                self._manifest(finding)
        except DeadlineExceeded:
            return OriginCheck(self.address, skipped=NO_TIME)
        except CheckError as exc:
            return OriginCheck(self.address, error=exc)
        return OriginCheck(self.address)

    def _blob(self, finding: Finding, cancelled: threading.Event) -> None:
        assert finding.digest is not None  # a blob is always named by its digest
        descriptor = Descriptor("", finding.digest, finding.size, finding.kind)
        repository = finding.repository or finding.affected[0].image.repository
        transfer = BlobTransfer(self.client, repository, descriptor, cancelled=cancelled,
                                deadline=self.deadline)
        self.client.retrier.run(transfer.run, f"blob {descriptor.digest.short()} at {self.address}")

    def _manifest(self, finding: Finding) -> None:
        ref = finding.image or finding.affected[0].image
        digest = finding.digest  # an index child or an image pinned by digest, else the image's tag
        Resolver.fetch(self.client, ref, str(digest) if digest else ref.reference, digest, finding.size)
