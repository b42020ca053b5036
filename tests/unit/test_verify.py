"""verify.py: one blob's stream (raw bytes, encodings, bombs) and manifest digests."""

from __future__ import annotations

import gzip
import hashlib
import struct
import threading
import time
import zlib
from typing import Iterator, List, Optional, Tuple

import pytest

from check_registry_deep.deadline import Deadline
from check_registry_deep.errors import DeadlineExceeded, DigestMismatch, ManifestInvalid, SizeMismatch
from check_registry_deep.manifests import DOCKER_MANIFEST, LAYER, Descriptor
from check_registry_deep.reference import Digest
from check_registry_deep.verify import (
    DECODED_ONLY,
    StreamVerifier,
    check_manifest_digest,
    read_limit,
    verify_body,
)


def pseudo_random(n: int, seed: bytes = b"seed") -> bytes:
    """Deterministic, incompressible bytes."""
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha512(seed + counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:n])


def chunks(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


def feed_all(verifier: StreamVerifier, data: bytes, size: int = 4096) -> StreamVerifier:
    for chunk in chunks(data, size):
        verifier.feed(chunk)
    return verifier


BLOB = pseudo_random(100_000)
BLOB_DIGEST = Digest.of(BLOB)
GZIPPED = gzip.compress(BLOB, mtime=0)


# -- raw bytes -------------------------------------------------------------------------------------------

def test_raw_match_is_ok_without_caveats():
    verifier = feed_all(StreamVerifier(BLOB_DIGEST, len(BLOB), None), BLOB)
    assert verifier.finish() == ()
    assert verifier.raw_length == len(BLOB)


def test_raw_match_with_unknown_size_is_ok():
    assert feed_all(StreamVerifier(BLOB_DIGEST, None, None), BLOB).finish() == ()


def test_empty_blob():
    assert StreamVerifier(Digest.of(b""), 0, None).finish() == ()


def test_truncated_is_size_mismatch_with_got_of():
    verifier = feed_all(StreamVerifier(BLOB_DIGEST, len(BLOB), None), BLOB[:60_000])
    with pytest.raises(SizeMismatch) as caught:
        verifier.finish()
    assert str(caught.value) == f"truncated: got 60000 of {len(BLOB)} bytes"


def test_overlong_is_size_mismatch():
    verifier = feed_all(StreamVerifier(BLOB_DIGEST, len(BLOB), None), BLOB + b"x")
    with pytest.raises(SizeMismatch) as caught:
        verifier.finish()
    assert str(caught.value) == f"too long: got more than the {len(BLOB)} bytes declared"


def test_same_length_garbage_is_digest_mismatch():
    garbage = pseudo_random(len(BLOB), b"other")
    verifier = feed_all(StreamVerifier(BLOB_DIGEST, len(BLOB), None), garbage)
    with pytest.raises(DigestMismatch) as caught:
        verifier.finish()
    assert str(caught.value) == f"digest mismatch: got sha256:{hashlib.sha256(garbage).hexdigest()}"


def test_one_flipped_byte_is_digest_mismatch():
    altered = bytearray(BLOB)
    altered[50_000] ^= 1
    verifier = feed_all(StreamVerifier(BLOB_DIGEST, len(BLOB), None), bytes(altered))
    with pytest.raises(DigestMismatch, match="^digest mismatch: got sha256:"):
        verifier.finish()


def test_sha512_digests():
    digest = Digest.of(BLOB, "sha512")
    assert feed_all(StreamVerifier(digest, len(BLOB), None), BLOB).finish() == ()
    garbage = pseudo_random(len(BLOB), b"other")
    with pytest.raises(DigestMismatch) as caught:
        feed_all(StreamVerifier(digest, len(BLOB), None), garbage).finish()
    assert str(caught.value) == f"digest mismatch: got sha512:{hashlib.sha512(garbage).hexdigest()}"
    with pytest.raises(SizeMismatch, match=f"^truncated: got 10 of {len(BLOB)} bytes$"):
        feed_all(StreamVerifier(digest, len(BLOB), None), BLOB[:10]).finish()


def test_chunking_does_not_matter():
    for size in (1, 7, 65536, len(BLOB)):
        verifier = feed_all(StreamVerifier(BLOB_DIGEST, len(BLOB), None), BLOB, size)
        assert verifier.raw_length == len(BLOB)
        assert verifier.finish() == ()


# -- content encodings -----------------------------------------------------------------------------------

def test_gzip_where_only_decoded_bytes_match_is_a_caveat():
    verifier = feed_all(StreamVerifier(BLOB_DIGEST, len(BLOB), "gzip"), GZIPPED, 1000)
    assert verifier.finish() == (DECODED_ONLY.format(encoding="gzip"),)
    assert verifier.finish() == ("served with Content-Encoding gzip despite Accept-Encoding: identity; "
                                 "only the decoded bytes match",)
    assert verifier.decoded_length == len(BLOB)


def test_deflate_where_only_decoded_bytes_match_is_a_caveat():
    deflated = zlib.compress(BLOB)
    verifier = feed_all(StreamVerifier(BLOB_DIGEST, len(BLOB), "deflate"), deflated)
    assert verifier.finish() == (DECODED_ONLY.format(encoding="deflate"),)


def test_gzip_header_but_raw_bytes_match_has_no_caveat():
    """A gzipped layer served as is, with a Content-Encoding: gzip header: the raw bytes are the blob."""
    digest = Digest.of(GZIPPED)
    verifier = feed_all(StreamVerifier(digest, len(GZIPPED), "gzip"), GZIPPED)
    assert verifier.finish() == ()
    assert verifier.decoded_length <= len(GZIPPED) + 1  # decoding stopped at the cap


def test_gzip_neither_raw_nor_decoded_match_is_digest_mismatch():
    other = gzip.compress(pseudo_random(len(BLOB), b"other"), mtime=0)
    verifier = feed_all(StreamVerifier(BLOB_DIGEST, len(BLOB), "gzip"), other)
    with pytest.raises(DigestMismatch) as caught:
        verifier.finish()
    message = str(caught.value)
    assert message.startswith(f"Content-Encoding gzip: neither the raw bytes ({len(other)} B, sha256:")
    assert message.endswith(f"nor the decoded bytes hash to {BLOB_DIGEST.short()}…")


def test_gzip_truncated_stream_is_digest_mismatch():
    verifier = feed_all(StreamVerifier(BLOB_DIGEST, len(BLOB), "gzip"), GZIPPED[: len(GZIPPED) // 2])
    with pytest.raises(DigestMismatch, match="^Content-Encoding gzip: neither the raw bytes"):
        verifier.finish()


def test_corrupt_gzip_stops_decoding_and_is_digest_mismatch():
    verifier = feed_all(StreamVerifier(BLOB_DIGEST, len(BLOB), "gzip"), b"\x1f\x8b\x08\x00garbage" * 100)
    assert verifier.decoded is None
    with pytest.raises(DigestMismatch, match="neither the raw bytes"):
        verifier.finish()


def test_gzip_decoded_bytes_one_too_many_do_not_match():
    verifier = feed_all(StreamVerifier(BLOB_DIGEST, len(BLOB), "gzip"), gzip.compress(BLOB + b"!", mtime=0))
    with pytest.raises(DigestMismatch):
        verifier.finish()
    assert verifier.decoded_length == len(BLOB) + 1


def test_sha512_gzip_decoded_only():
    digest = Digest.of(BLOB, "sha512")
    assert feed_all(StreamVerifier(digest, len(BLOB), "gzip"), GZIPPED).finish() == (
        DECODED_ONLY.format(encoding="gzip"),)


GIB = 1 << 30
#: zlib.crc32 of 1 GiB of zero bytes, precomputed (computing it takes a second). The verifier stops long before
#: the trailer; test_gzip_bomb_builder_makes_valid_gzip checks the builder, trailer included, on 4 MiB.
CRC32_OF_GIB_ZEROS = 0x5B64C2B0


def crc32_of_zeros(total: int) -> int:
    if total == GIB:
        return CRC32_OF_GIB_ZEROS
    return zlib.crc32(bytes(total))


def gzip_bomb(total: int = GIB) -> bytes:
    """`total` zero bytes (a multiple of 1 MiB), gzipped: about 1 MB for 1 GiB, built without compressing them.

    After a full flush a deflate stream is independent of what came before, so every further MiB of zeros
    compresses to the same bytes.
    """
    mib = bytes(1 << 20)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = compressor.compress(mib) + compressor.flush(zlib.Z_FULL_FLUSH)
    repeat = compressor.compress(mib) + compressor.flush(zlib.Z_FULL_FLUSH)
    last = compressor.compress(mib) + compressor.flush(zlib.Z_FINISH)
    count = total // len(mib)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    trailer = struct.pack("<II", crc32_of_zeros(total), total & 0xFFFFFFFF)
    return header + first + repeat * (count - 2) + last + trailer


def test_gzip_bomb_builder_makes_valid_gzip():
    assert gzip.decompress(gzip_bomb(4 << 20)) == bytes(4 << 20)


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return gzip_bomb()


def test_gzip_bomb_is_a_real_bomb(bomb):
    assert len(bomb) < 2 * 1024 * 1024
    decoder = zlib.decompressobj(31)
    assert decoder.decompress(bomb[:100_000], 16 << 20) == bytes(16 << 20)
    assert decoder.unconsumed_tail  # and there is much more where that came from


def test_gzip_bomb_stays_bounded_and_fast(bomb):
    size = 10_000_000
    digest = Digest.of(bytes(size))  # even the right bytes, decoded, would only match at exactly `size`
    started = time.monotonic()
    verifier = StreamVerifier(digest, size, "gzip")
    for chunk in chunks(bomb, 1 << 16):
        verifier.feed(chunk)
    elapsed = time.monotonic() - started
    assert verifier.decoded_length <= size + 1
    assert verifier.raw_length == len(bomb)
    with pytest.raises(DigestMismatch):
        verifier.finish()
    assert elapsed < 2.0


def test_gzip_bomb_bounded_for_small_declared_size(bomb):
    verifier = StreamVerifier(Digest.of(b"tiny"), 4, "gzip")
    started = time.monotonic()
    for chunk in chunks(bomb, 1 << 20):
        verifier.feed(chunk)
    assert verifier.decoded_length <= 5
    assert time.monotonic() - started < 2.0


def test_gzip_bomb_with_unknown_size_decodes_in_bounded_pieces():
    bomb = gzip_bomb(32 << 20)
    outputs: List[int] = []

    class Recording:
        """Stands in for the hasher to record the size of every decoded piece it is handed."""

        def __init__(self) -> None:
            self.inner = hashlib.sha256()

        def update(self, data: bytes) -> None:
            outputs.append(len(data))
            self.inner.update(data)

        def hexdigest(self) -> str:
            return self.inner.hexdigest()

    verifier = StreamVerifier(Digest.of(b"x"), None, "gzip")
    verifier.decoded = Recording()  # type: ignore[assignment]
    verifier.feed(bomb)  # about 32 KiB of input, 32 MiB of output
    assert outputs, "the decoder produced nothing"
    assert max(outputs) <= 4 << 20


# -- verify_body: sizes before bytes ---------------------------------------------------------------------

class FakeBody:
    """A BlobResponse stand-in: honours `limit` the way the real one does."""

    def __init__(self, data: bytes, content_length: Optional[int] = None, encoding: Optional[str] = None):
        self.data, self.content_length, self.content_encoding = data, content_length, encoding
        self.limit: Optional[int] = None
        self.received = 0

    def read(self, size: int) -> bytes:
        if self.limit is not None:
            size = min(size, self.limit - self.received)
        chunk = self.data[self.received:self.received + max(0, size)]
        self.received += len(chunk)
        return chunk


def descriptor(data: bytes, size: Optional[int] = None) -> Descriptor:
    return Descriptor("application/vnd.oci.image.layer.v1.tar+gzip", Digest.of(data),
                      len(data) if size is None else size, LAYER)


def test_verify_body_ok():
    body = FakeBody(BLOB, len(BLOB))
    assert verify_body(body, descriptor(BLOB), threading.Event(), Deadline(10), chunk_size=8192) == ()
    assert body.received == len(BLOB)


def test_verify_body_rejects_content_length_before_reading():
    body = FakeBody(BLOB[:10], 10)
    with pytest.raises(SizeMismatch) as caught:
        verify_body(body, descriptor(BLOB), threading.Event(), Deadline(10))
    message = str(caught.value)
    assert message.startswith("truncated: ")
    assert "Content-Length" in message and " 10 " in message and str(len(BLOB)) in message
    assert body.received == 0
    body = FakeBody(BLOB + b"xx", len(BLOB) + 2)
    with pytest.raises(SizeMismatch, match=f"^too long: .*Content-Length.*{len(BLOB) + 2}"):
        verify_body(body, descriptor(BLOB), threading.Event(), Deadline(10))


def test_verify_body_never_reads_more_than_size_plus_one():
    body = FakeBody(BLOB + bytes(1_000_000))
    with pytest.raises(SizeMismatch, match="^too long"):
        verify_body(body, descriptor(BLOB), threading.Event(), Deadline(10))
    assert body.received == len(BLOB) + 1


def test_verify_body_truncated_without_content_length():
    body = FakeBody(BLOB[:1234])
    with pytest.raises(SizeMismatch) as caught:
        verify_body(body, descriptor(BLOB), threading.Event(), Deadline(10))
    assert str(caught.value) == f"truncated: got 1234 of {len(BLOB)} bytes"


def test_verify_body_cancelled_raises_deadline():
    cancelled = threading.Event()
    cancelled.set()
    with pytest.raises(DeadlineExceeded):
        verify_body(FakeBody(BLOB), descriptor(BLOB), cancelled, Deadline(10))


def test_read_limit():
    assert read_limit(100, None) == 101
    assert read_limit(None, None) is None
    assert read_limit(6400, "gzip") == 6400 + 100 + 65536


# -- manifests' digests ----------------------------------------------------------------------------------

MANIFEST_BODY = b'{"schemaVersion": 2, "mediaType": "' + DOCKER_MANIFEST.encode() + b'", "layers": []}'
MANIFEST_DIGEST = Digest.of(MANIFEST_BODY)


def fetched(body: bytes = MANIFEST_BODY, declared: Optional[str] = None) -> Tuple[bytes, Optional[str]]:
    """A manifest's bytes and the Docker-Content-Digest a registry sent with them."""
    return body, declared


def test_manifest_by_digest_matches():
    assert check_manifest_digest(*fetched(), MANIFEST_DIGEST) == MANIFEST_DIGEST


def test_manifest_by_digest_mismatch():
    other = Digest.of(b"something else")
    with pytest.raises(DigestMismatch) as caught:
        check_manifest_digest(*fetched(), other)
    assert str(caught.value) == f"requested by {other}, got bytes hashing to {MANIFEST_DIGEST}"


def test_manifest_by_digest_ignores_a_lying_header_only_if_bytes_match():
    lying = str(Digest.of(b"lie"))
    assert check_manifest_digest(*fetched(declared=lying), MANIFEST_DIGEST) == MANIFEST_DIGEST


def test_manifest_by_sha512_digest():
    expected = Digest.of(MANIFEST_BODY, "sha512")
    assert check_manifest_digest(*fetched(), expected) == expected
    with pytest.raises(DigestMismatch, match="^requested by sha512:"):
        check_manifest_digest(*fetched(MANIFEST_BODY + b" "), expected)


def test_manifest_by_tag_matches_declared_digest():
    assert check_manifest_digest(*fetched(declared=str(MANIFEST_DIGEST)), None) == MANIFEST_DIGEST


def test_manifest_by_tag_declared_digest_mismatch():
    declared = Digest.of(b"what the registry stored")
    with pytest.raises(DigestMismatch) as caught:
        check_manifest_digest(*fetched(declared=str(declared)), None)
    assert str(caught.value) == (f"registry declares {declared} (Docker-Content-Digest), "
                                 f"bytes hash to {MANIFEST_DIGEST}")


def test_manifest_by_tag_without_header_is_its_own_sha256():
    assert check_manifest_digest(*fetched(declared=None), None) == MANIFEST_DIGEST
    assert check_manifest_digest(*fetched(declared=""), None) == MANIFEST_DIGEST


def test_manifest_by_tag_invalid_header():
    with pytest.raises(ManifestInvalid) as caught:
        check_manifest_digest(*fetched(declared="sha256:../../x"), None)
    assert str(caught.value) == "invalid Docker-Content-Digest header 'sha256:../../x'"


def test_manifest_by_tag_sha512_header():
    declared = Digest.of(MANIFEST_BODY, "sha512")
    assert check_manifest_digest(*fetched(declared=str(declared)), None) == declared
