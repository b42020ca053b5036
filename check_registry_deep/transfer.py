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
from dataclasses import dataclass
from enum import Enum
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


class Step(Enum):
    """What a transfer does next after a request broke (Resumption.after_break)."""

    RESUME = "ask for the rest with Range, from the bytes kept"
    REPEAT = "ask for the whole blob again: nothing was kept (counted as a retry of the blob)"
    GIVE_UP = "raise the fault: retry.py may run the whole transfer again, or it is the finding"
    TRUNCATED = "a verdict: the registry serves the blob truncated"


class Answer(Enum):
    """What the answer to a Range request (from a byte > 0) means (Resumption.answer)."""

    CONTINUES = "206: the rest of the blob, from where it broke"
    RESTART = "200: the server ignores Range and sends the whole blob again; what was hashed is dropped"
    ENDED = "416 at the declared size: the bytes kept are the whole blob"
    TRUNCATED = "416 before the declared size: the registry says the blob ends early"


@dataclass(frozen=True)
class Decision:
    step: Step
    why: str = ""  # the Truncated message, for Step.TRUNCATED


class Resumption:
    """The resume decisions for one blob's transfer, and the counts they rest on. No I/O: BlobTransfer asks.

    After a request from byte `offset` broke with `fault` (`kept`: bytes verified so far, None when no body
    was verified yet; progress: kept > offset), the first row that matches decides:

    ====================  =======================  =====================  ========================  ==========
    fault                 kept                     size, encoding         asked again, deadline     decision
    ====================  =======================  =====================  ========================  ==========
    short body / stalled  no progress              size known             in this run already       TRUNCATED
    any                   None (no body yet)       -                      -                         GIVE_UP
    any                   -                        encoded, size unknown  -                         GIVE_UP
    reset (not short)     no progress              -                      -                         GIVE_UP
    any                   -                        -                      MAX_RESUMES times         GIVE_UP
    any                   -                        -                      < 0.1 s to the deadline   GIVE_UP
    any                   progress                 -                      -                         RESUME
    short body / stalled  no progress, offset > 0  -                      not in this run           RESUME
    short body / stalled  no progress, offset 0    -                      not in this run           REPEAT
    ====================  =======================  =====================  ========================  ==========

    "In this run" counts every request after the run's first, answered or not; "MAX_RESUMES times" counts
    resumes and repeats of this blob across retry.py's runs (the budget is per blob, not per run). A TRUNCATED
    verdict names the furthest byte any response of the run reached, lost partial reads included.

    The answer to a request from `offset` > 0: 206 CONTINUES (its Content-Range is checked by the caller),
    any other (a 200) RESTART, 416 ENDED when `offset` is the declared size, else TRUNCATED.
    """

    def __init__(self, size: Optional[int], stall: float):
        self.size, self.stall = size, stall
        self.asked_again = 0  # per blob, across runs: resumes and repeats
        self.repeated = 0  # per blob, across runs: whole-blob requests again after nothing was kept
        self.requests = 0  # this run's requests, answered or not
        self.reached = 0  # the furthest byte any response of this run got to, lost partial reads included

    def start_run(self) -> None:
        """retry.py runs the transfer again from the start: the per-run counts start over, the budget does not."""
        self.requests, self.reached = 0, 0

    def asking(self) -> None:
        self.requests += 1

    def answer(self, status: int, offset: int) -> Answer:
        if status == 416:
            return Answer.TRUNCATED if self.size is not None and offset < self.size else Answer.ENDED
        return Answer.CONTINUES if status == 206 else Answer.RESTART

    def after_break(self, fault: TransportError, offset: int, kept: Optional[int], encoded: bool,
                    remaining: float) -> Decision:
        """The decision table above; counts the resume or repeat it allows."""
        short = isinstance(fault, ShortBody)
        if isinstance(fault, ShortBody):
            self.reached = max(self.reached, offset + fault.reached)
        tries = self.requests - 1
        progress = kept is not None and kept > offset
        if short and self.size is not None and not progress and tries:
            if isinstance(fault, Stalled):
                return Decision(Step.TRUNCATED, f"stalled at byte {self.reached} of {self.size} bytes (nothing "
                                                f"more for {self.stall:g}s, {tries + 1} times)")
            return Decision(Step.TRUNCATED, f"got {self.reached} of {self.size} bytes (the body ends before its "
                                            f"Content-Length, {tries + 1} times)")
        if (kept is None or encoded or self.size is None or not (progress or short)
                or self.asked_again >= MAX_RESUMES or remaining < 0.1):
            return Decision(Step.GIVE_UP)
        self.asked_again += 1
        if not progress and not offset:
            self.repeated += 1
            return Decision(Step.REPEAT)
        return Decision(Step.RESUME)


class BlobTransfer:
    """One blob from one repository: GET, verify while streaming, resume; `run` returns (caveats, bytes read).

    Errors that are not transport faults end a run at once; check.judge decides what they mean. A transient
    error ends it too, for retry.py to run it again from the start; what to do after a break is Resumption's.
    """

    def __init__(self, client: RegistryClient, repository: str, descriptor: Descriptor, *,
                 cancelled: threading.Event, deadline: Deadline, chunk_size: int = CHUNK_SIZE):
        self.client, self.repository, self.descriptor = client, repository, descriptor
        self.cancelled, self.deadline, self.chunk_size = cancelled, deadline, chunk_size
        self.stall = stall_timeout(deadline)
        self.resumption = Resumption(descriptor.size, self.stall)
        # this run's: the hashes so far, the offsets a 206 continued from or a 200 started over at, bytes read
        self.verifier: Optional[StreamVerifier] = None
        self.resumed: List[int] = []
        self.restarted: List[int] = []
        self.read = 0

    @property
    def repeated(self) -> int:
        """Whole-blob requests made again after a body that ended early with nothing kept (retries too)."""
        return self.resumption.repeated

    def run(self) -> Tuple[Tuple[str, ...], int]:
        started = time.monotonic()
        self.resumption.start_run()
        self.verifier, self.resumed, self.restarted, self.read = None, [], [], 0
        while True:
            offset = self.verifier.raw_length if self.verifier is not None else 0
            try:
                caveats = self._attempt(offset)
                break
            except TransportError as exc:
                self._after_break(exc, offset)
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
        self.resumption.asking()
        with self.client.open_blob(self.repository, self.descriptor.digest, read_limit(size, None),
                                   offset=offset, stall=self.stall) as body:
            if offset:
                answer = self.resumption.answer(body.status, offset)
                if answer is Answer.TRUNCATED:
                    raise Truncated(f"the registry says the blob ends before byte {offset} of {size} "
                                    f"(416 to a Range)")
                if answer is Answer.ENDED:
                    assert self.verifier is not None
                    self.resumed.append(offset)
                    return self.verifier.finish()
                if answer is Answer.RESTART:
                    self.restarted.append(offset)
                    self.verifier = None
                else:
                    check_content_range(body.content_range, offset, size)
                    self.resumed.append(offset)
            if self.verifier is None:
                self.verifier = StreamVerifier(self.descriptor.digest, size, body.content_encoding)
            try:
                return verify_body(body, self.descriptor, self.cancelled, self.deadline, self.chunk_size,
                                   self.verifier)
            finally:
                self.read += body.received

    def _after_break(self, exc: TransportError, offset: int) -> None:
        """Ask for the rest or the whole blob again (return), or end the run (raise)."""
        verifier = self.verifier
        kept = verifier.raw_length if verifier is not None else None
        decision = self.resumption.after_break(exc, offset, kept, bool(verifier and verifier.encoding),
                                               self.deadline.remaining())
        if decision.step is Step.TRUNCATED:
            raise Truncated(decision.why) from None
        if decision.step is Step.GIVE_UP:
            raise exc
        self.client.retrier.note(f"transfer of {self.descriptor.digest}",
                                 f"broke at byte {kept} of {self.descriptor.size}; asking for the rest")
