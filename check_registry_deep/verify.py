"""Verifying bytes: one blob's stream against its descriptor, and a manifest's bytes against its digest.

Streams and bytes in, errors out: no HTTP types, no scheduling and no Nagios here. transfer.py and resolve.py
drive these; judge.py judges what they raise.
"""

from __future__ import annotations

import threading
import zlib
from typing import Optional, Protocol, Tuple

from .deadline import Deadline
from .errors import (
    DeadlineExceeded,
    DigestMismatch,
    ManifestInvalid,
    ShortBody,
    SizeMismatch,
    TransportError,
    Truncated,
    UnsupportedDigest,
)
from .manifests import schema1_payload
from .model import Descriptor
from .reference import Digest

CHUNK_SIZE = 1 << 20
#: A caveat (judged WARNING): a hop encoded the blob although we asked for identity.
DECODED_ONLY = "served with Content-Encoding {encoding} despite Accept-Encoding: identity; only the decoded bytes match"


# -- one blob's stream -----------------------------------------------------------------------------------

class BlobStream(Protocol):
    """An open blob body (client.BlobResponse): raw bytes, at most `limit` of them; what its headers said."""

    limit: Optional[int]
    received: int
    content_length: Optional[int]
    content_encoding: Optional[str]

    def read(self, size: int) -> bytes: ...


class StreamVerifier:
    """Hashes a blob's raw bytes while they stream; if a hop encoded them, the decoded bytes too (capped)."""

    _WBITS = {"gzip": 31, "x-gzip": 31, "deflate": 15}

    def __init__(self, digest: Digest, size: Optional[int], encoding: Optional[str]):
        self.digest, self.size, self.encoding = digest, size, encoding
        self.raw = digest.hasher()
        self.raw_length = 0
        self.decoded = digest.hasher() if encoding else None
        self.decoded_length = 0
        self._decoder = zlib.decompressobj(self._WBITS[encoding]) if encoding in self._WBITS else None
        self._decoded_cap = (size + 1) if size is not None else None

    def feed(self, chunk: bytes) -> None:
        self.raw.update(chunk)
        self.raw_length += len(chunk)
        if self._decoder is not None and self.decoded is not None:
            self._decode(chunk)

    def _decode(self, data: bytes) -> None:
        assert self._decoder is not None and self.decoded is not None
        try:
            while data:
                # inflate in bounded pieces (zlib reads a max_length of 0 as "no limit")
                room = CHUNK_SIZE if self._decoded_cap is None else min(CHUNK_SIZE,
                                                                        self._decoded_cap - self.decoded_length)
                if room <= 0:
                    return  # past size + 1: it cannot match any more; stop inflating (gzip bombs end here)
                out = self._decoder.decompress(data, room)
                self.decoded.update(out)
                self.decoded_length += len(out)
                data = self._decoder.unconsumed_tail
        except zlib.error:
            self._decoder = None
            self.decoded = None

    def finish(self) -> Tuple[str, ...]:
        """Raise IntegrityError unless the bytes are right; return caveats (empty when raw bytes match)."""
        raw_ok = (self.size is None or self.raw_length == self.size) and self.raw.hexdigest() == self.digest.hex
        if raw_ok:
            return ()
        if self.decoded is not None and (self.size is None or self.decoded_length == self.size) \
                and self.decoded.hexdigest() == self.digest.hex:
            return (DECODED_ONLY.format(encoding=self.encoding),)
        if self.encoding:
            raise DigestMismatch(f"Content-Encoding {self.encoding}: neither the raw bytes "
                                 f"({self.raw_length} B, {self.digest.algorithm}:{self.raw.hexdigest()[:12]}…) "
                                 f"nor the decoded bytes hash to {self.digest.short()}…")
        if self.size is not None and self.raw_length < self.size:
            raise Truncated(f"got {self.raw_length} of {self.size} bytes")
        if self.size is not None and self.raw_length > self.size:
            raise SizeMismatch(f"too long: got more than the {self.size} bytes declared")
        raise DigestMismatch(f"digest mismatch: got {self.digest.algorithm}:{self.raw.hexdigest()}")


def read_limit(size: Optional[int], encoding: Optional[str]) -> Optional[int]:
    """How many raw bytes we read at most: size + 1 (to notice overlong bodies), a little more if encoded."""
    if size is None:
        return None
    if encoding:
        return size + size // 64 + 65536  # an encoder's worst-case overhead on incompressible data
    return size + 1


def verify_body(body: BlobStream, descriptor: Descriptor, cancelled: threading.Event,
                deadline: Deadline, chunk_size: int = CHUNK_SIZE, verifier: Optional[StreamVerifier] = None
                ) -> Tuple[str, ...]:
    """Verify one open blob body against its descriptor: sizes first, then every byte.

    With a `verifier` that has already seen bytes, `body` is the rest of the blob (a 206 answering a Range)
    and continues that verifier's hashes. A body that ends before its own Content-Length is a broken
    transfer (TransportError, so it can be resumed), not a verdict on the blob.
    """
    size, encoding = descriptor.size, body.content_encoding
    offset = verifier.raw_length if verifier is not None else 0
    declared = None if body.content_length is None else offset + body.content_length
    if size is not None and not encoding and declared is not None and declared != size:
        if declared < size:
            raise Truncated(f"Content-Length says {declared} of {size} bytes")
        raise SizeMismatch(f"too long: Content-Length says {declared} bytes, descriptor {size}")
    limit = read_limit(size, encoding)
    body.limit = None if limit is None else limit - offset
    if verifier is None:
        verifier = StreamVerifier(descriptor.digest, size, encoding)
    while True:
        if cancelled.is_set():
            raise DeadlineExceeded(f"deadline passed after {verifier.raw_length} of {size} bytes")
        deadline.check(f"reading {descriptor.digest.short()}")
        try:
            chunk = body.read(chunk_size)
        except TransportError:
            if deadline.remaining() < 0.1 or cancelled.is_set():  # the read timed out at the deadline
                raise DeadlineExceeded(f"deadline passed after {verifier.raw_length} of {size} bytes") from None
            raise
        if not chunk:
            break
        verifier.feed(chunk)
    if not encoding and body.content_length is not None and body.received < body.content_length:
        raise ShortBody(f"body ended after {body.received} of its {body.content_length} bytes", body.received)
    return verifier.finish()


def check_content_range(header: Optional[str], offset: int, size: Optional[int]) -> None:
    """A 206 must continue exactly where we stopped (`bytes offset-end/total`), and total must be the size."""
    unit, _, spec = (header or "").partition(" ")
    span, _, total = spec.partition("/")
    first = span.split("-")[0]
    if unit != "bytes" or not first.isdigit() or int(first) != offset:
        raise TransportError(f"resumed at byte {offset}, but the server answered Content-Range {(header or '')[:60]!r}")
    if size is not None and total.isdigit() and int(total) != size:
        raise SizeMismatch(f"Content-Range says the blob is {total} bytes, descriptor {size}")


# -- manifests -------------------------------------------------------------------------------------------

def check_manifest_digest(body: bytes, declared: Optional[str], expected: Optional[Digest]) -> Digest:
    """The digest of manifest `body`; DigestMismatch if it differs from what was asked for (`expected`) or, by
    tag, from what the registry `declared` (its Docker-Content-Digest)."""
    algorithm = expected.algorithm if expected else "sha256"
    candidates = [body]
    payload = schema1_payload(body)
    if payload is not body:
        candidates.append(payload)
    actual = [Digest.of(candidate, algorithm) for candidate in candidates]
    if expected is not None:
        if expected not in actual:
            raise DigestMismatch(f"requested by {expected}, got bytes hashing to {actual[0]}")
        return expected
    if declared:
        try:
            declared_digest = Digest.parse(declared)
        except (ManifestInvalid, UnsupportedDigest):
            raise ManifestInvalid(f"invalid Docker-Content-Digest header {declared[:80]!r}") from None
        computed = [Digest.of(candidate, declared_digest.algorithm) for candidate in candidates]
        if declared_digest not in computed:
            raise DigestMismatch(f"registry declares {declared_digest} (Docker-Content-Digest), "
                                 f"bytes hash to {computed[-1]}")
        return declared_digest
    return actual[-1]
