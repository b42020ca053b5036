"""Gathering: resolve every image into its blobs, verify each unique blob once, confirm every link.

Per registry a lane of stages (API check, discovery, manifests, blobs, replicas) runs on a pool of daemon
threads under one deadline. Produces a ScanResult of facts (errors and caveats with their blast radius);
knows nothing of Nagios states.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

from .client import RegistryClient
from .deadline import Deadline
from .discovery import Discovery
from .errors import (
    BlobUnknown,
    CheckError,
    DeadlineExceeded,
    InternalError,
    ManifestInvalid,
    RegistryError,
    ShortBody,
    SizeMismatch,
    TransportError,
)
from .manifests import MANIFEST, Descriptor, ImageManifest, IndexManifest, parse_manifest
from .model import PRESENT, SKIPPED, ContentResult, ScanResult, Target, TargetResult
from .reference import Digest, ImageRef, Platform
from .verify import CHUNK_SIZE, StreamVerifier, check_content_range, check_manifest_digest, read_limit, verify_body

log = logging.getLogger(__name__)

MAX_INDEX_DEPTH = 8
#: A transfer cut mid-blob is resumed with Range at most this often (each time only after it made progress).
MAX_RESUMES = 5
#: Caveats: facts that are not failures but deserve a look (judged WARNING).
RETRIED = "verified only after {n} retr{ies}"
RESUMED = "resumed with Range after the connection broke at byte {offsets} of {size}"
RESTARTED = "transfer broke at byte {offset} and the server ignores Range: fetched again from the start"
SCHEMA1 = "registry answered a schema 2 request with a deprecated schema 1 manifest"
#: Notes: said in the output, judged OK.
FOREIGN_SKIPPED = "foreign layer skipped (clients fetch it from its urls)"

#: What each job of the scan returns: the images it resolved and the verdicts it reached.
JobResult = Tuple[List[TargetResult], List[ContentResult]]
Job = Tuple[str, Callable[[], JobResult]]
BlobKey = Tuple[str, Digest]  # (registry, digest): a blob is verified once per registry
Chooser = Callable[[List[Tuple[BlobKey, int]]], Set[BlobKey]]  # (key, size) candidates -> the ones to GET


# -- a small pool of daemon threads: queued work can be cancelled, and no worker ever blocks exit ---------

class WorkerPool:
    def __init__(self, workers: int):
        self._queue: queue.Queue[Optional[Tuple[concurrent.futures.Future, Callable]]] = queue.Queue()
        self._closed = threading.Event()
        self._threads = [threading.Thread(target=self._work, name=f"verify-{i}", daemon=True)
                         for i in range(workers)]
        for thread in self._threads:
            thread.start()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None or self._closed.is_set():
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
        """Cancel whatever has not started; running work notices the cancel event and stops on its own.

        Quick with thousands queued (a manifest with 10,000 layers): workers stop taking work first, and the
        queue is emptied in one go rather than fought over item by item while they run.
        """
        self._closed.set()
        with self._queue.mutex:
            items = list(self._queue.queue)
            self._queue.queue.clear()
        for item in items:
            if item is not None:
                item[0].cancel()
        for _ in self._threads:
            self._queue.put(None)


# -- the scan --------------------------------------------------------------------------------------------

PING, DISCOVER, RESOLVE, BLOBS, REPLICAS = ("checking the registry API", "listing repositories and tags",
                                           "resolving manifests", "verifying blobs", "comparing replicas")


@dataclass
class _Lane:
    """One registry's way through its stages; lanes move independently, so a stalled registry holds up only
    its own images."""

    registry: str
    images: List[ImageRef]
    stages: List[str] = field(default_factory=lambda: [PING, RESOLVE, BLOBS])
    stage: int = -1
    total: int = 0
    done: int = 0
    pending: set = field(default_factory=set)
    in_flight: Dict[int, str] = field(default_factory=dict)
    targets: List[TargetResult] = field(default_factory=list)
    top_digests: Dict[ImageRef, Digest] = field(default_factory=dict)  # what each image's reference resolved to

    def describe(self, named: bool) -> str:
        text = self.stages[self.stage] + (f" at {self.registry}" if named else "") + \
            f" ({self.done} of {self.total} done)"
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
                 platforms: Sequence[Platform] = (), chunk_size: int = CHUNK_SIZE,
                 discovery: Optional[Tuple[str, Discovery]] = None, replicas: Sequence[str] = (),
                 choose_deep: Optional[Chooser] = None,
                 progress: Optional[Callable[[str, int, int, int], None]] = None):
        """`discovery` (registry, what) lists more images there; `replicas` are compared with the first registry;
        `choose_deep` picks the blobs to GET and hash (the others are only HEADed); `progress(stage, done, total,
        bytes)` hears about every finished job."""
        self.client_for = clients
        self.deadline = deadline
        self.workers = workers
        self.platforms = tuple(platforms)
        self.chunk_size = chunk_size
        self.discovery = discovery
        self.replicas = tuple(replicas)
        self.choose_deep = choose_deep
        self.progress = progress
        self.cancelled = threading.Event()
        self._completed: queue.Queue[concurrent.futures.Future] = queue.Queue()
        self._lock = threading.Lock()
        self._flight_ids = iter(range(1 << 62))

    def scan(self, images: Sequence[Tuple[ImageRef, str]]) -> ScanResult:
        """`images` pairs each reference with the base URL of the registry that serves it."""
        targets: List[TargetResult] = []
        content: List[ContentResult] = []
        lanes: Dict[str, _Lane] = {}
        if self.discovery:
            lanes[self.discovery[0]] = _Lane(self.discovery[0], [], [PING, DISCOVER, RESOLVE, BLOBS])
        for ref, registry in images:
            lanes.setdefault(registry, _Lane(registry, [])).images.append(ref)
        if self.replicas:
            next(iter(lanes.values())).stages.append(REPLICAS)
        pool = WorkerPool(self.workers)
        owner: Dict[concurrent.futures.Future, Tuple[_Lane, str]] = {}
        interrupted = None
        late: Optional[DeadlineExceeded] = None  # a job that itself ran into the deadline
        try:
            for lane in lanes.values():
                self._advance(lane, pool, owner, content)
            while any(lane.pending for lane in lanes.values()):
                # finished futures arrive on a queue: waiting on every pending future each time round was
                # O(pending) per completion, minutes for a manifest with 10,000 layers
                try:
                    done = [self._completed.get(timeout=self.deadline.remaining())]
                except queue.Empty:
                    done = []
                while not self._completed.empty() and len(done) < 1000:
                    done.append(self._completed.get_nowait())
                for future in done:
                    if future not in owner:
                        continue
                    lane, label = owner.pop(future)
                    lane.pending.discard(future)
                    if late is None and isinstance(future.exception(), DeadlineExceeded):
                        # it finished (by giving up) just before this loop saw the deadline: still a timeout,
                        # never a silently missing blob in an OK
                        with self._lock:
                            where = lane.describe(len(lanes) > 1)
                        where += "" if "waiting on" in where else f"; waiting on {label}"
                        late = DeadlineExceeded(f"deadline of {self.deadline.seconds:g}s passed while {where}")
                    found_targets, found_content = self._collect(future, label)
                    lane.targets.extend(found_targets)
                    targets.extend(found_targets)
                    now = self.deadline.elapsed()
                    content.extend(dataclasses.replace(c, finished=now) for c in found_content)
                    if self.progress:
                        self.progress(lane.stages[lane.stage], lane.done, lane.total,
                                      sum(c.bytes_read for c in found_content))
                    if not lane.pending:
                        self._advance(lane, pool, owner, content)
                if self.deadline.expired() and any(lane.pending for lane in lanes.values()):
                    with self._lock:
                        waiting = "; ".join(lane.describe(len(lanes) > 1) for lane in lanes.values() if lane.pending)
                    raise DeadlineExceeded(f"deadline of {self.deadline.seconds:g}s passed while {waiting}")
            interrupted = late
        except DeadlineExceeded as exc:
            interrupted = exc
        finally:
            self.cancelled.set()
            pool.shutdown()
        retries = sum(self.client_for(registry).retries for registry in (*lanes, *self.replicas))
        return ScanResult(tuple(ref for lane in lanes.values() for ref in lane.images), tuple(targets),
                          tuple(content), self.deadline.elapsed(), retries, interrupted)

    def _advance(self, lane: _Lane, pool: WorkerPool, owner: Dict[concurrent.futures.Future, Tuple[_Lane, str]],
                 content: List[ContentResult]) -> None:
        """Start the lane's next stage that has work; a registry that failed its API check stops there."""
        while not lane.pending and lane.stage + 1 < len(lane.stages):
            if lane.stage >= 0 and any(c.kind == "registry" and c.subject == lane.registry for c in content):
                return  # unreachable, or its listing failed: nothing more to learn there
            lane.stage += 1
            jobs = self._jobs_for(lane)
            with self._lock:
                lane.total, lane.done = len(jobs), 0
            for label, job in jobs:
                future = pool.submit(self._tracked(lane, label, job))
                owner[future] = (lane, label)
                lane.pending.add(future)
                future.add_done_callback(self._completed.put)

    def _jobs_for(self, lane: _Lane) -> List[Job]:
        stage = lane.stages[lane.stage]
        if stage == PING:
            return [(f"{lane.registry}/v2/", functools.partial(self._ping, lane.registry, lane.images))]
        if stage == DISCOVER:
            return [(f"{lane.registry}/v2/_catalog", functools.partial(self._discover, lane))]
        if stage == RESOLVE:
            return [(f"manifest of {ref}", functools.partial(self._resolve, ref, lane))
                    for ref in dict.fromkeys(lane.images)]
        if stage == BLOBS:
            return self._blob_jobs(lane.targets)
        return [(f"{ref} on {replica}", functools.partial(self._compare_replica, lane, ref, replica))
                for replica in self.replicas for ref in lane.top_digests]

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

    def _discover(self, lane: _Lane) -> JobResult:
        """Add the images the catalog and tags APIs list to the lane (the stage ends before it resolves them)."""
        assert self.discovery is not None
        try:
            found = self.discovery[1].images(self.client_for(lane.registry))
        except RegistryError as exc:
            return [], [ContentResult(lane.registry, "registry", (), error=exc)]
        with self._lock:
            lane.images.extend(ref for ref in found if ref not in lane.images)
        return [], []

    def _resolve(self, ref: ImageRef, lane: _Lane) -> JobResult:
        registry = lane.registry
        client = self.client_for(registry)
        top = Target(ref, registry)
        try:
            fetched = client.get_manifest(ref.repository, ref.reference)
            digest = check_manifest_digest(fetched, ref.digest)
            manifest = parse_manifest(fetched.body, fetched.content_type)
            with self._lock:
                lane.top_digests[ref] = digest
        except CheckError as exc:
            return [], [ContentResult(str(ref.digest) if ref.digest else str(ref), MANIFEST, (top,), error=exc,
                                      repository=ref.repository)]
        targets: List[TargetResult] = []
        content: List[ContentResult] = []
        self._walk(client, ref, registry, manifest, digest, None, 0, targets, content)
        return targets, content

    def _walk(self, client: RegistryClient, ref: ImageRef, registry: str, manifest, digest: Digest,
              platform: Optional[Platform], depth: int, targets: List[TargetResult],
              content: List[ContentResult], seen: Optional[Set[Tuple[Digest, Optional[Platform]]]] = None) -> None:
        """Walk an index into its image manifests. Each (child, platform) is walked once per image: an index
        listing the same child many times at every level would otherwise fetch children**depth manifests."""
        seen = set() if seen is None else seen
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
            if (child.digest, child_platform) in seen:
                continue
            seen.add((child.digest, child_platform))
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
                       targets, content, seen)

    # -- stage 2: blobs --

    def _blob_jobs(self, targets: Sequence[TargetResult]) -> List[Job]:
        uses: Dict[Tuple[str, Digest], List[_BlobUse]] = {}
        for result in targets:
            for descriptor in result.blobs:
                uses.setdefault((result.target.registry, descriptor.digest), []).append(
                    _BlobUse(result.target.image.repository, result.target, descriptor))
        candidates = [(key, blob_uses[0].descriptor.size or 0) for key, blob_uses in uses.items()
                       if not blob_uses[0].descriptor.foreign]
        deep = self.choose_deep(candidates) if self.choose_deep else {key for key, _ in candidates}
        jobs: List[Job] = []
        # largest first: the long transfers start early and the small ones fill in around them
        for (registry, digest), blob_uses in sorted(uses.items(), key=lambda kv: -(kv[1][0].descriptor.size or 0)):
            descriptor = blob_uses[0].descriptor
            label = f"{descriptor.kind} {digest.short()}… of {blob_uses[0].target}"
            jobs.append((label, functools.partial(self._verify_blob, registry, blob_uses,
                                                  (registry, digest) in deep)))
        return jobs

    def _verify_blob(self, registry: str, uses: List[_BlobUse], deep: bool = True) -> JobResult:
        """Verify one blob's bytes once, through the first repository that has it; HEAD it in the others.

        Not `deep`: only HEAD it everywhere (its GET-and-hash was rotated to a later run)."""
        client = self.client_for(registry)
        descriptor = uses[0].descriptor
        everyone = tuple(dict.fromkeys(use.target for use in uses))
        by_repository: Dict[str, List[Target]] = {}
        for use in uses:
            by_repository.setdefault(use.repository, []).append(use.target)
        if descriptor.foreign:
            return [], [ContentResult(str(descriptor.digest), descriptor.kind, everyone, notes=(FOREIGN_SKIPPED,),
                                      size=descriptor.size, mode=SKIPPED)]
        results: List[ContentResult] = []
        missing: List[Tuple[str, BlobUnknown]] = []
        verified_in = None
        repositories = list(by_repository)
        if not deep:
            self._confirm_presence(client, descriptor, repositories, by_repository, missing, results)
            if not results and len(missing) < len(repositories):
                results.append(ContentResult(str(descriptor.digest), descriptor.kind, everyone, size=descriptor.size,
                                             mode=PRESENT))
            return [], results + [self._missing(descriptor, by_repository, repository, gone, None)
                                  for repository, gone in missing]
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
        self._confirm_presence(client, descriptor, repositories[repositories.index(verified_in) + 1:], by_repository,
                               missing, results)
        return [], results + [self._missing(descriptor, by_repository, repository, gone, verified_in)
                              for repository, gone in missing]

    @staticmethod
    def _confirm_presence(client: RegistryClient, descriptor: Descriptor, repositories: Sequence[str],
                          by_repository: Dict[str, List[Target]], missing: List[Tuple[str, BlobUnknown]],
                          results: List[ContentResult]) -> None:
        """HEAD the blob in each repository: cheap proof that its link is still there (not of its bytes)."""
        for repository in repositories:
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
                                             tuple(dict.fromkeys(by_repository[repository])), error=exc,
                                             size=descriptor.size, repository=repository))

    @staticmethod
    def _missing(descriptor: Descriptor, by_repository: Dict[str, List[Target]], repository: str, gone: BlobUnknown,
                 verified_in: Optional[str]) -> ContentResult:
        where = f"the blob itself verified in {verified_in}" if verified_in else "HEAD only this run"
        return ContentResult(
            str(descriptor.digest), descriptor.kind, tuple(dict.fromkeys(by_repository[repository])),
            error=BlobUnknown(f"404 {gone.code or 'BLOB_UNKNOWN'} in {repository} (the repository's link is gone; "
                              f"{where})", 404, gone.code), size=descriptor.size, repository=repository)

    # -- stage 4: replicas --

    def _compare_replica(self, lane: _Lane, ref: ImageRef, replica: str) -> JobResult:
        """Does `replica` serve the same manifest for `ref`, and every blob of it? (Container sync, for one.)"""
        client = self.client_for(replica)
        ours = lane.top_digests[ref]
        targets = tuple(t.target for t in lane.targets if t.target.image == ref) or (Target(ref, lane.registry),)
        try:
            fetched = client.get_manifest(ref.repository, ref.reference)
            theirs = check_manifest_digest(fetched, ref.digest)
        except CheckError as exc:
            return [], [ContentResult(f"{ref} on {replica}", MANIFEST, targets, error=exc, repository=ref.repository)]
        if theirs != ours:
            return [], [ContentResult(f"{ref} on {replica}", MANIFEST, targets, repository=ref.repository, caveats=(
                f"replica serves {theirs} where {lane.registry} serves {ours}",))]
        results: List[ContentResult] = []
        blobs = {d.digest: d for t in lane.targets if t.target.image == ref for d in t.blobs if not d.foreign}
        for descriptor in blobs.values():
            try:
                client.head_blob(ref.repository, descriptor.digest)
            except DeadlineExceeded:
                raise
            except CheckError as exc:
                affected = tuple(t.target for t in lane.targets if t.target.image == ref and descriptor in t.blobs)
                results.append(ContentResult(f"{descriptor.digest} on {replica}", descriptor.kind, affected, error=exc,
                                             size=descriptor.size, repository=ref.repository))
        return [], results

    def _transfer(self, client: RegistryClient, repository: str, descriptor: Descriptor
                  ) -> Tuple[Tuple[str, ...], int]:
        """GET and verify one blob; a transfer cut mid-blob resumes with Range where the server supports it
        (else starts over once), each resume a caveat. Errors that are not transport faults end it at once."""
        started = time.monotonic()
        size = descriptor.size
        verifier: Optional[StreamVerifier] = None
        resumed: List[int] = []  # offsets a 206 continued from
        restarted: List[int] = []  # offsets after which the server ignored Range and sent it all again
        read = 0
        reached = 0  # the furthest byte any response got to, lost partial reads included
        repeated = 0  # whole-blob requests again after a body that ended early with nothing kept
        while True:
            offset = verifier.raw_length if verifier is not None else 0
            try:
                with client.open_blob(repository, descriptor.digest, read_limit(size, None), offset=offset) as body:
                    if offset and body.status == 416:  # the blob ends at or before `offset`
                        if size is not None and offset < size:
                            raise SizeMismatch(f"truncated: the registry says the blob ends before byte {offset} "
                                               f"of {size} (416 to a Range)")
                        assert verifier is not None
                        caveats = verifier.finish()
                        resumed.append(offset)
                        break
                    if offset and body.status != 206:  # 200: the whole blob again; start over
                        restarted.append(offset)
                        verifier = None
                    elif offset:
                        check_content_range(body.content_range, offset, size)
                        resumed.append(offset)
                    if verifier is None:
                        verifier = StreamVerifier(descriptor.digest, size, body.content_encoding)
                    try:
                        caveats = verify_body(body, descriptor, self.cancelled, self.deadline, self.chunk_size,
                                              verifier)
                    finally:
                        read += body.received
                break
            except TransportError as exc:
                short = isinstance(exc, ShortBody)
                if isinstance(exc, ShortBody):
                    reached = max(reached, offset + exc.reached)
                tries = len(resumed) + len(restarted) + repeated
                progress = verifier is not None and verifier.raw_length > offset
                if short and size is not None and not progress and tries:
                    # ending early at the same place again is what the registry serves, not a hiccup: a verdict
                    raise SizeMismatch(f"truncated: got {reached} of {size} bytes (the body ends before its "
                                       f"Content-Length, {tries + 1} times)") from None
                # resume only what can be resumed: identity bytes of known size, after progress (or once after a
                # body that ended early), a few times, before the deadline
                if (verifier is None or verifier.encoding or size is None or not (progress or short)
                        or tries >= MAX_RESUMES or self.deadline.remaining() < 0.1):
                    raise
                if not progress and not offset:
                    repeated += 1  # nothing to resume from: ask for the whole blob once more
                client.note_retry()
                log.info("transfer of %s broke at byte %d of %s; asking for the rest", descriptor.digest,
                         verifier.raw_length, size)
        if resumed:
            caveats += (RESUMED.format(offsets=", ".join(map(str, resumed)), size=size),)
        if restarted:
            caveats += (RESTARTED.format(offset=", ".join(map(str, restarted))),)
        if repeated:
            caveats += (RETRIED.format(n=repeated, ies="y" if repeated == 1 else "ies"),)
        log.info("verified %s %s in %s: %d bytes in %.2fs", descriptor.kind, descriptor.digest, repository, read,
                 time.monotonic() - started)
        return caveats, read
