"""Gathering: resolve every image into its blobs, verify each unique blob once, confirm every link.

Produces a ScanResult of facts (errors and caveats with their blast radius); knows nothing of Nagios states.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import queue
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .client import BlobResponse, FetchedManifest, RegistryClient
from .deadline import Deadline
from .errors import (
    BlobUnknown,
    CheckError,
    DeadlineExceeded,
    DigestMismatch,
    InternalError,
    ManifestInvalid,
    RegistryError,
    SizeMismatch,
    UnsupportedDigest,
)
from .manifests import (
    CONFIG,
    LAYER,
    MANIFEST,
    Descriptor,
    ImageManifest,
    IndexManifest,
    parse_manifest,
    schema1_payload,
)
from .reference import Digest, ImageRef, Platform

log = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20
MAX_INDEX_DEPTH = 8
#: Caveats: facts that are not failures but deserve a look (judged WARNING).
RETRIED = "verified only after {n} retr{ies}"
DECODED_ONLY = "served with Content-Encoding {encoding} despite Accept-Encoding: identity; only the decoded bytes match"
SCHEMA1 = "registry answered a schema 2 request with a deprecated schema 1 manifest"
#: Notes: said in the output, judged OK.
FOREIGN_SKIPPED = "foreign layer skipped (clients fetch it from its urls)"


@dataclass(frozen=True)
class Target:
    """An image, and the platform when it came from an index: what a broken blob breaks."""

    image: ImageRef
    registry: str
    platform: Optional[Platform] = None

    def __str__(self) -> str:
        return f"{self.image} ({self.platform})" if self.platform else str(self.image)


@dataclass(frozen=True)
class TargetResult:
    """A resolved image manifest and the blobs it references."""

    target: Target
    manifest_digest: Digest
    blobs: Tuple[Descriptor, ...]
    artifact: bool = False


@dataclass(frozen=True)
class ContentResult:
    """The verdict on one piece of content (a blob, a manifest, a tag, the registry itself)."""

    subject: str  # a digest, an image reference, or a registry URL
    kind: str  # layer, config, manifest, registry
    affected: Tuple[Target, ...]
    error: Optional[CheckError] = None
    caveats: Tuple[str, ...] = ()
    notes: Tuple[str, ...] = ()
    size: Optional[int] = None
    bytes_read: int = 0
    retries: int = 0
    repository: str = ""

    @property
    def problem(self) -> bool:
        return self.error is not None or bool(self.caveats)


@dataclass(frozen=True)
class ScanResult:
    images: Tuple[ImageRef, ...]
    targets: Tuple[TargetResult, ...]
    content: Tuple[ContentResult, ...]
    elapsed: float
    retries: int
    interrupted: Optional[DeadlineExceeded] = None
    notes: Tuple[str, ...] = ()  # about the whole run, e.g. TLS not verified

    @property
    def problems(self) -> Tuple[ContentResult, ...]:
        return tuple(c for c in self.content if c.problem)

    @property
    def verified_blobs(self) -> Tuple[ContentResult, ...]:
        return tuple(c for c in self.content if c.kind in (LAYER, CONFIG) and c.error is None and not c.notes)


#: What each job of the scan returns: the images it resolved and the verdicts it reached.
JobResult = Tuple[List[TargetResult], List[ContentResult]]
Job = Tuple[str, Callable[[], JobResult]]


# -- one blob's stream -----------------------------------------------------------------------------------

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
            raise SizeMismatch(f"truncated: got {self.raw_length} of {self.size} bytes")
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


def verify_body(body: BlobResponse, descriptor: Descriptor, cancelled: threading.Event,
                deadline: Deadline, chunk_size: int = CHUNK_SIZE) -> Tuple[str, ...]:
    """Verify one open blob body against its descriptor: sizes first, then every byte."""
    size, encoding = descriptor.size, body.content_encoding
    if size is not None and not encoding and body.content_length is not None and body.content_length != size:
        if body.content_length < size:
            raise SizeMismatch(f"truncated: Content-Length says {body.content_length} of {size} bytes")
        raise SizeMismatch(f"too long: Content-Length says {body.content_length} bytes, descriptor {size}")
    body.limit = read_limit(size, encoding)
    verifier = StreamVerifier(descriptor.digest, size, encoding)
    while True:
        if cancelled.is_set():
            raise DeadlineExceeded(f"deadline passed after {verifier.raw_length} of {size} bytes")
        deadline.check(f"reading {descriptor.digest.short()}")
        chunk = body.read(chunk_size)
        if not chunk:
            break
        verifier.feed(chunk)
    return verifier.finish()


# -- manifests -------------------------------------------------------------------------------------------

def check_manifest_digest(fetched: FetchedManifest, expected: Optional[Digest]) -> Digest:
    """The manifest's digest; DigestMismatch if it differs from what was asked for or what the registry says."""
    algorithm = expected.algorithm if expected else "sha256"
    candidates = [fetched.body]
    payload = schema1_payload(fetched.body)
    if payload is not fetched.body:
        candidates.append(payload)
    actual = [Digest.of(body, algorithm) for body in candidates]
    if expected is not None:
        if expected not in actual:
            raise DigestMismatch(f"requested by {expected}, got bytes hashing to {actual[0]}")
        return expected
    declared = fetched.declared_digest
    if declared:
        try:
            declared_digest = Digest.parse(declared)
        except (ManifestInvalid, UnsupportedDigest):
            raise ManifestInvalid(f"invalid Docker-Content-Digest header {declared[:80]!r}") from None
        computed = [Digest.of(body, declared_digest.algorithm) for body in candidates]
        if declared_digest not in computed:
            raise DigestMismatch(f"registry declares {declared_digest} (Docker-Content-Digest), "
                                 f"bytes hash to {computed[-1]}")
        return declared_digest
    return actual[-1]


# -- a small pool of daemon threads: queued work can be cancelled, and no worker ever blocks exit ---------

class WorkerPool:
    def __init__(self, workers: int):
        self._queue: queue.Queue[Optional[Tuple[concurrent.futures.Future, Callable]]] = queue.Queue()
        self._threads = [threading.Thread(target=self._work, name=f"verify-{i}", daemon=True)
                         for i in range(workers)]
        for thread in self._threads:
            thread.start()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            future, fn = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to the waiting thread, which decides
                future.set_exception(exc)

    def submit(self, fn: Callable) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put((future, fn))
        return future

    def shutdown(self) -> None:
        """Cancel whatever has not started; running work notices the cancel event and stops on its own."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[0].cancel()
        for _ in self._threads:
            self._queue.put(None)


# -- the scan --------------------------------------------------------------------------------------------

STAGES = ("checking the registry API", "resolving manifests", "verifying blobs")


@dataclass
class _Lane:
    """One registry's way through the stages; lanes move independently, so a stalled registry holds up only
    its own images."""

    registry: str
    images: List[ImageRef]
    stage: int = -1
    total: int = 0
    done: int = 0
    pending: set = field(default_factory=set)
    in_flight: Dict[int, str] = field(default_factory=dict)
    targets: List[TargetResult] = field(default_factory=list)

    def describe(self, named: bool) -> str:
        text = STAGES[self.stage] + (f" at {self.registry}" if named else "") + f" ({self.done} of {self.total} done)"
        waiting = sorted(self.in_flight.values())
        if waiting:
            text += "; waiting on " + ", ".join(waiting[:3]) + (
                f" and {len(waiting) - 3} more" if len(waiting) > 3 else "")
        return text


@dataclass(frozen=True)
class _BlobUse:
    repository: str
    target: Target
    descriptor: Descriptor


class Scanner:
    """Resolves images into blobs and verifies them, within one deadline, on a pool of workers."""

    def __init__(self, clients: Callable[[str], RegistryClient], deadline: Deadline, *, workers: int = 4,
                 platforms: Sequence[Platform] = (), chunk_size: int = CHUNK_SIZE):
        self.client_for = clients
        self.deadline = deadline
        self.workers = workers
        self.platforms = tuple(platforms)
        self.chunk_size = chunk_size
        self.cancelled = threading.Event()
        self._lock = threading.Lock()
        self._flight_ids = iter(range(1 << 62))

    def scan(self, images: Sequence[Tuple[ImageRef, str]]) -> ScanResult:
        """`images` pairs each reference with the base URL of the registry that serves it."""
        targets: List[TargetResult] = []
        content: List[ContentResult] = []
        lanes: Dict[str, _Lane] = {}
        for ref, registry in images:
            lanes.setdefault(registry, _Lane(registry, [])).images.append(ref)
        pool = WorkerPool(self.workers)
        owner: Dict[concurrent.futures.Future, Tuple[_Lane, str]] = {}
        interrupted = None
        try:
            for lane in lanes.values():
                self._advance(lane, pool, owner, content)
            while any(lane.pending for lane in lanes.values()):
                pending = set().union(*(lane.pending for lane in lanes.values()))
                done, _ = concurrent.futures.wait(pending, timeout=self.deadline.remaining(),
                                                  return_when=concurrent.futures.FIRST_COMPLETED)
                for future in done:
                    lane, label = owner.pop(future)
                    lane.pending.discard(future)
                    found_targets, found_content = self._collect(future, label)
                    lane.targets.extend(found_targets)
                    targets.extend(found_targets)
                    content.extend(found_content)
                    if not lane.pending:
                        self._advance(lane, pool, owner, content)
                if self.deadline.expired() and any(lane.pending for lane in lanes.values()):
                    with self._lock:
                        waiting = "; ".join(lane.describe(len(lanes) > 1) for lane in lanes.values() if lane.pending)
                    raise DeadlineExceeded(f"deadline of {self.deadline.seconds:g}s passed while {waiting}")
        except DeadlineExceeded as exc:
            interrupted = exc
        finally:
            self.cancelled.set()
            pool.shutdown()
        retries = sum(self.client_for(registry).retries for registry in lanes)
        return ScanResult(tuple(ref for ref, _ in images), tuple(targets), tuple(content),
                          self.deadline.elapsed(), retries, interrupted)

    def _advance(self, lane: _Lane, pool: WorkerPool, owner: Dict[concurrent.futures.Future, Tuple[_Lane, str]],
                 content: List[ContentResult]) -> None:
        """Start the lane's next stage that has work; a registry that failed its API check stops there."""
        while not lane.pending and lane.stage + 1 < len(STAGES):
            if lane.stage == 0 and any(c.kind == "registry" and c.subject == lane.registry for c in content):
                return
            lane.stage += 1
            jobs = self._jobs_for(lane)
            with self._lock:
                lane.total, lane.done = len(jobs), 0
            for label, job in jobs:
                future = pool.submit(self._tracked(lane, label, job))
                owner[future] = (lane, label)
                lane.pending.add(future)

    def _jobs_for(self, lane: _Lane) -> List[Job]:
        if lane.stage == 0:
            return [(f"{lane.registry}/v2/", functools.partial(self._ping, lane.registry, lane.images))]
        if lane.stage == 1:
            return [(f"manifest of {ref}", functools.partial(self._resolve, ref, lane.registry))
                    for ref in lane.images]
        return self._blob_jobs(lane.targets)

    @staticmethod
    def _collect(future: concurrent.futures.Future, label: str) -> JobResult:
        try:
            return future.result()
        except DeadlineExceeded:
            return [], []  # the scan loop names the stage
        except Exception as exc:  # a bug in one job must not hide what the others found
            log.debug("internal error in %s", label, exc_info=exc)
            return [], [ContentResult(label, "internal", (), error=InternalError(
                f"internal error while checking {label}: {type(exc).__name__}: {exc}"))]

    def _tracked(self, lane: _Lane, label: str, job: Callable[[], JobResult]) -> Callable[[], JobResult]:
        def run() -> JobResult:
            flight = next(self._flight_ids)
            with self._lock:
                lane.in_flight[flight] = label
            try:
                return job()
            finally:
                with self._lock:
                    del lane.in_flight[flight]
                    lane.done += 1
        return run

    # -- stage 0: is each registry there at all? --

    def _ping(self, registry: str, images: Sequence[ImageRef]) -> JobResult:
        try:
            self.client_for(registry).with_retries(self.client_for(registry).ping, f"{registry}/v2/")
        except RegistryError as exc:
            affected = tuple(Target(ref, registry) for ref in images)
            return [], [ContentResult(registry, "registry", affected, error=exc)]
        return [], []

    # -- stage 1: manifests --

    def _resolve(self, ref: ImageRef, registry: str) -> JobResult:
        client = self.client_for(registry)
        top = Target(ref, registry)
        try:
            fetched = client.get_manifest(ref.repository, ref.reference)
            digest = check_manifest_digest(fetched, ref.digest)
            manifest = parse_manifest(fetched.body, fetched.content_type)
        except CheckError as exc:
            return [], [ContentResult(str(ref.digest) if ref.digest else str(ref), MANIFEST, (top,), error=exc,
                                      repository=ref.repository)]
        targets: List[TargetResult] = []
        content: List[ContentResult] = []
        self._walk(client, ref, registry, manifest, digest, None, 0, targets, content)
        return targets, content

    def _walk(self, client: RegistryClient, ref: ImageRef, registry: str, manifest, digest: Digest,
              platform: Optional[Platform], depth: int, targets: List[TargetResult],
              content: List[ContentResult]) -> None:
        target = Target(ref, registry, platform)
        if isinstance(manifest, ImageManifest):
            blobs = tuple({d.digest: d for d in manifest.blobs}.values())
            targets.append(TargetResult(target, digest, blobs, manifest.artifact))
            if manifest.schema1:
                content.append(ContentResult(str(digest), MANIFEST, (target,), caveats=(SCHEMA1,),
                                             repository=ref.repository))
            return
        assert isinstance(manifest, IndexManifest)
        if depth >= MAX_INDEX_DEPTH:
            content.append(ContentResult(str(digest), MANIFEST, (target,), repository=ref.repository, error=(
                ManifestInvalid(f"indexes nested deeper than {MAX_INDEX_DEPTH} levels"))))
            return
        for child in manifest.manifests:
            if self.platforms and child.platform is not None and not any(
                    p.matches(child.platform) for p in self.platforms):
                continue
            child_platform = child.platform or platform
            child_target = Target(ref, registry, child_platform)
            try:
                self.deadline.check(f"resolving {ref}")
                fetched = client.get_manifest(ref.repository, str(child.digest))
                if child.size is not None and len(fetched.body) != child.size:
                    raise SizeMismatch(f"index child is {len(fetched.body)} bytes, descriptor says {child.size}")
                child_digest = check_manifest_digest(fetched, child.digest)
                child_manifest = parse_manifest(fetched.body, fetched.content_type)
            except DeadlineExceeded:
                raise
            except CheckError as exc:
                content.append(ContentResult(str(child.digest), MANIFEST, (child_target,), error=exc,
                                             size=child.size, repository=ref.repository))
                continue
            self._walk(client, ref, registry, child_manifest, child_digest, child_platform, depth + 1,
                       targets, content)

    # -- stage 2: blobs --

    def _blob_jobs(self, targets: Sequence[TargetResult]) -> List[Job]:
        uses: Dict[Tuple[str, Digest], List[_BlobUse]] = {}
        for result in targets:
            for descriptor in result.blobs:
                uses.setdefault((result.target.registry, descriptor.digest), []).append(
                    _BlobUse(result.target.image.repository, result.target, descriptor))
        jobs: List[Job] = []
        # largest first: the long transfers start early and the small ones fill in around them
        for (registry, digest), blob_uses in sorted(uses.items(), key=lambda kv: -(kv[1][0].descriptor.size or 0)):
            descriptor = blob_uses[0].descriptor
            label = f"{descriptor.kind} {digest.short()}… of {blob_uses[0].target}"
            jobs.append((label, functools.partial(self._verify_blob, registry, blob_uses)))
        return jobs

    def _verify_blob(self, registry: str, uses: List[_BlobUse]) -> JobResult:
        """Verify one blob's bytes once, through the first repository that has it; HEAD it in the others."""
        client = self.client_for(registry)
        descriptor = uses[0].descriptor
        everyone = tuple(dict.fromkeys(use.target for use in uses))
        by_repository: Dict[str, List[Target]] = {}
        for use in uses:
            by_repository.setdefault(use.repository, []).append(use.target)
        if descriptor.foreign:
            return [], [ContentResult(str(descriptor.digest), descriptor.kind, everyone, notes=(FOREIGN_SKIPPED,),
                                      size=descriptor.size)]
        results: List[ContentResult] = []
        missing: List[Tuple[str, BlobUnknown]] = []
        verified_in = None
        repositories = list(by_repository)
        for repository in repositories:
            try:
                (caveats, read), retries = client.with_retries(
                    functools.partial(self._transfer, client, repository, descriptor),
                    f"blob {descriptor.digest.short()}")
            except BlobUnknown as exc:
                missing.append((repository, exc))
                continue
            except DeadlineExceeded:
                raise
            except CheckError as exc:
                return [], [ContentResult(str(descriptor.digest), descriptor.kind, everyone, error=exc,
                                          size=descriptor.size, repository=repository)]
            if retries:
                caveats += (RETRIED.format(n=retries, ies="y" if retries == 1 else "ies"),)
            results.append(ContentResult(str(descriptor.digest), descriptor.kind, everyone, caveats=caveats,
                                         size=descriptor.size, bytes_read=read, retries=retries,
                                         repository=repository))
            verified_in = repository
            break
        if verified_in is None:
            code = missing[0][1].code or "BLOB_UNKNOWN"
            return [], [ContentResult(str(descriptor.digest), descriptor.kind, everyone, size=descriptor.size,
                                      error=BlobUnknown(f"404 {code} in every repository that references it "
                                                        f"({', '.join(by_repository)})", 404, code))]
        for repository in repositories[repositories.index(verified_in) + 1:]:
            try:
                length = client.head_blob(repository, descriptor.digest)
                if length is not None and descriptor.size is not None and length != descriptor.size:
                    raise SizeMismatch(f"HEAD in {repository} declares {length} bytes, descriptor says "
                                       f"{descriptor.size}")
            except BlobUnknown as exc:
                missing.append((repository, exc))
            except DeadlineExceeded:
                raise
            except CheckError as exc:
                results.append(ContentResult(str(descriptor.digest), descriptor.kind,
                                             tuple(by_repository[repository]), error=exc, size=descriptor.size,
                                             repository=repository))
        for repository, gone in missing:
            results.append(ContentResult(
                str(descriptor.digest), descriptor.kind, tuple(dict.fromkeys(by_repository[repository])),
                error=BlobUnknown(f"404 {gone.code or 'BLOB_UNKNOWN'} in {repository} (the repository's link "
                                  f"is gone; the blob itself verified in {verified_in})", 404, gone.code),
                size=descriptor.size, repository=repository))
        return [], results

    def _transfer(self, client: RegistryClient, repository: str, descriptor: Descriptor
                  ) -> Tuple[Tuple[str, ...], int]:
        started = time.monotonic()
        with client.open_blob(repository, descriptor.digest, read_limit(descriptor.size, None)) as body:
            caveats = verify_body(body, descriptor, self.cancelled, self.deadline, self.chunk_size)
            read = body.received
        log.info("verified %s %s in %s: %d bytes in %.2fs", descriptor.kind, descriptor.digest, repository, read,
                 time.monotonic() - started)
        return caveats, read
