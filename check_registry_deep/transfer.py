"""The resumable GET of one blob: stream it through verify.py, resume a broken transfer with Range.

A transfer cut mid-blob resumes from where it broke (or starts over once where the server ignores Range),
each time only after progress, a few times, inside the deadline; each resume is a caveat (judged WARNING).
A body that ends early at the same byte again is what the registry serves: Truncated, not a hiccup.

A body that stops delivering bytes (a cache keeping the connection open after a short cached body) is cut
by a stall timeout of its own, then resumed like a body that ended early; stalling at the same byte again
is truncated content too.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import List, Optional, Tuple

from .client import RegistryClient
from .deadline import Deadline
from .errors import ShortBody, Stalled, TransportError, Truncated
from .manifests import Descriptor
from .verify import CHUNK_SIZE, StreamVerifier, check_content_range, read_limit, verify_body

log = logging.getLogger(__name__)

#: A transfer cut mid-blob is resumed with Range at most this often (each time only after it made progress).
MAX_RESUMES = 5
#: Caveats: facts that are not failures but deserve a look (judged WARNING).
RETRIED = "verified only after {n} retr{ies}"
RESUMED = "resumed with Range after the connection broke at byte {offsets} of {size}"
RESTARTED = "transfer broke at byte {offset} and the server ignores Range: fetched again from the start"


def stall_timeout(deadline: Deadline) -> float:
    """How long one read of a blob may bring no byte at all: a tenth of the run, 2 to 30 s.

    Any byte starts it again, so a transfer that still moves is never cut; 2 s outlasts TCP's resend of a lost
    packet (1 s); a tenth leaves most of the run after a stall, its resume and a second stall (the verdict)."""
    return min(30.0, max(2.0, deadline.seconds / 10))


def retried(n: int) -> str:
    return RETRIED.format(n=n, ies="y" if n == 1 else "ies")


class BlobTransfer:
    """One blob from one repository: GET, verify while streaming, resume; `run` returns (caveats, bytes read).

    Errors that are not transport faults end a run at once; check.judge decides what they mean. A transient
    error ends it too, for retry.py to run it again from the start: `repeated` counts across runs, so the
    blob's retries add up whichever way they happened.
    """

    def __init__(self, client: RegistryClient, repository: str, descriptor: Descriptor, *,
                 cancelled: threading.Event, deadline: Deadline, chunk_size: int = CHUNK_SIZE):
        self.client, self.repository, self.descriptor = client, repository, descriptor
        self.cancelled, self.deadline, self.chunk_size = cancelled, deadline, chunk_size
        self.repeated = 0  # whole-blob requests again after a body that ended early with nothing kept
        self.verifier: Optional[StreamVerifier] = None
        self.resumed: List[int] = []  # offsets a 206 continued from
        self.restarted: List[int] = []  # offsets after which the server ignored Range and sent it all again
        self.reached = 0  # the furthest byte any response got to, lost partial reads included
        self.read = 0
        self.requests = 0  # in this run, answered or not: each run decides on its own tries
        self.asked_again = 0  # across runs: resumes and repeats are bounded per blob, not per run
        self.stall = stall_timeout(deadline)

    def run(self) -> Tuple[Tuple[str, ...], int]:
        started = time.monotonic()
        self.verifier, self.resumed, self.restarted, self.reached, self.read, self.requests = None, [], [], 0, 0, 0
        while True:
            offset = self.verifier.raw_length if self.verifier is not None else 0
            try:
                caveats = self._attempt(offset)
                break
            except TransportError as exc:
                self._may_resume(exc, offset)
        if self.resumed:
            caveats += (RESUMED.format(offsets=", ".join(map(str, self.resumed)), size=self.descriptor.size),)
        if self.restarted:
            caveats += (RESTARTED.format(offset=", ".join(map(str, self.restarted))),)
        log.info("verified %s %s in %s: %d bytes in %.2fs", self.descriptor.kind, self.descriptor.digest,
                 self.repository, self.read, time.monotonic() - started)
        return caveats, self.read

    def _attempt(self, offset: int) -> Tuple[str, ...]:
        """One request: the whole blob, or the rest of it from `offset`."""
        size = self.descriptor.size
        self.requests += 1
        with self.client.open_blob(self.repository, self.descriptor.digest, read_limit(size, None),
                                   offset=offset, stall=self.stall) as body:
            if offset and body.status == 416:  # the blob ends at or before `offset`
                if size is not None and offset < size:
                    raise Truncated(f"the registry says the blob ends before byte {offset} of {size} (416 to a Range)")
                assert self.verifier is not None
                self.resumed.append(offset)
                return self.verifier.finish()
            if offset and body.status != 206:  # 200: the whole blob again; start over
                self.restarted.append(offset)
                self.verifier = None
            elif offset:
                check_content_range(body.content_range, offset, size)
                self.resumed.append(offset)
            if self.verifier is None:
                self.verifier = StreamVerifier(self.descriptor.digest, size, body.content_encoding)
            try:
                return verify_body(body, self.descriptor, self.cancelled, self.deadline, self.chunk_size,
                                   self.verifier)
            finally:
                self.read += body.received

    def _may_resume(self, exc: TransportError, offset: int) -> None:
        """Decide after a broken transfer: ask for the rest (return), or give up (raise)."""
        size = self.descriptor.size
        verifier = self.verifier
        short = isinstance(exc, ShortBody)
        if isinstance(exc, ShortBody):
            self.reached = max(self.reached, offset + exc.reached)
        tries = self.requests - 1  # asked again in this run already; a Range never answered counts too
        progress = verifier is not None and verifier.raw_length > offset
        if short and size is not None and not progress and tries:
            # ending early at the same place again is what the registry serves, not a hiccup: a verdict
            if isinstance(exc, Stalled):
                raise Truncated(f"stalled at byte {self.reached} of {size} bytes (nothing more for "
                                f"{self.stall:g}s, {tries + 1} times)") from None
            raise Truncated(f"got {self.reached} of {size} bytes (the body ends before its Content-Length, "
                            f"{tries + 1} times)") from None
        # resume only what can be resumed: identity bytes of known size, after progress (or once after a
        # body that ended early), a few times, before the deadline
        if (verifier is None or verifier.encoding or size is None or not (progress or short)
                or self.asked_again >= MAX_RESUMES or self.deadline.remaining() < 0.1):
            raise exc
        self.asked_again += 1
        if not progress and not offset:
            self.repeated += 1  # nothing to resume from: ask for the whole blob once more
        self.client.retrier.note(f"transfer of {self.descriptor.digest}",
                                 f"broke at byte {verifier.raw_length} of {size}; asking for the rest")
