"""Gathering: lanes and stages under one deadline, over a pool of workers; returns a ScanResult of facts.

Per registry a lane of stages (API check, discovery, manifests, blobs, replicas, the origin behind a cache)
runs on a pool of daemon threads. Lanes move independently, so a stalled registry holds up only its own
images. The jobs themselves live apart: resolve.py (manifests), blobs.py and transfer.py (blobs), replicas.py,
discovery.py, origin.py. Knows nothing of Nagios states.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .blobs import BlobChecker, BlobWork, Chooser, plan
from .client import RegistryClient
from .deadline import Deadline
from .discovery import repositories, tags
from .errors import DeadlineExceeded, InternalError, RegistryError
from .model import ArtifactResult, Finding, Kind, OriginCheck, ScanResult, Target, TargetResult
from .options import DiscoveryOptions
from .origin import NO_TIME, OriginChecker, worth_asking
from .pool import WorkerPool
from .reference import Digest, ImageRef, Platform
from .referrers import Policy, ReferrerWalker
from .replicas import compare_replica
from .resolve import Resolver
from .verify import CHUNK_SIZE

log = logging.getLogger(__name__)

#: What each job of the scan returns: the images it resolved and the findings it reached.
JobResult = Tuple[List[TargetResult], List[Finding]]
Job = Tuple[str, Callable[[], JobResult]]


# -- the scan --------------------------------------------------------------------------------------------

PING, DISCOVER, TAGS, RESOLVE, BLOBS, REPLICAS = (
    "checking the registry API", "listing repositories and tags", "listing tags", "resolving manifests",
    "verifying blobs", "comparing replicas")
REFERRERS = "looking for referrers"
ORIGIN = "asking the origin"


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
    listed: Dict[str, object] = field(default_factory=dict)  # discovery: repository -> its images, or the error
    failures: List[int] = field(default_factory=list)  # with --origin: where its failures are in the findings
    artifacts: List[ArtifactResult] = field(default_factory=list)  # --referrers, --require-signature
    artifact_targets: List[TargetResult] = field(default_factory=list)  # their blobs, for the blob plan
    signed: List[Tuple[Target, bool]] = field(default_factory=list)

    def describe(self, named: bool) -> str:
        text = self.stages[self.stage] + (f" at {self.registry}" if named else "") + \
            f" ({self.done} of {self.total} done)"
        waiting = sorted(self.in_flight.values())
        if waiting:
            text += "; waiting on " + ", ".join(waiting[:3]) + (
                f" and {len(waiting) - 3} more" if len(waiting) > 3 else "")
        return text


class Scanner:
    """Resolves images into blobs and verifies them, within one deadline, on a pool of workers."""

    def __init__(self, clients: Callable[[str], RegistryClient], deadline: Deadline, *, workers: int = 4,
                 platforms: Sequence[Platform] = (), chunk_size: int = CHUNK_SIZE,
                 discovery: Optional[Tuple[str, DiscoveryOptions]] = None, replicas: Sequence[str] = (),
                 choose_deep: Optional[Chooser] = None, origin: Optional[OriginChecker] = None,
                 progress: Optional[Callable[[str, int, int, int], None]] = None, attachments: Policy = Policy()):
        """`discovery` (registry, what) lists more images there; `replicas` are compared with the first registry;
        `choose_deep` picks the blobs to GET and hash (the others are only HEADed); `origin` asks the origin behind
        its registry about every failure there; `progress(stage, done, total, bytes)` hears about every finished
        job. `attachments` says whether to look for referrers and signatures."""
        self.client_for = clients
        self.deadline = deadline
        self.workers = workers
        self.discovery = discovery
        self.replicas = tuple(replicas)
        self.choose_deep = choose_deep
        self.progress = progress
        self.origin = origin
        self.origin_checks: Dict[int, OriginCheck] = {}  # position in the findings -> the origin's answer
        self.cancelled = threading.Event()
        self.resolver = Resolver(deadline, platforms)
        self.attachments = attachments
        self.walker = ReferrerWalker(attachments, deadline, self.resolver)
        self.blobs = BlobChecker(deadline, self.cancelled, chunk_size)
        self._completed: queue.Queue[concurrent.futures.Future] = queue.Queue()
        self._lock = threading.Lock()
        self._flight_ids = iter(range(1 << 62))

    def scan(self, images: Sequence[Tuple[ImageRef, str]]) -> ScanResult:
        """`images` pairs each reference with the base URL of the registry that serves it."""
        targets: List[TargetResult] = []
        findings: List[Finding] = []
        lanes: Dict[str, _Lane] = {}
        if self.discovery:
            lanes[self.discovery[0]] = _Lane(self.discovery[0], [], [PING, DISCOVER, TAGS, RESOLVE, BLOBS])
        for ref, registry in images:
            lanes.setdefault(registry, _Lane(registry, [])).images.append(ref)
        if self.attachments.enabled:
            for lane in lanes.values():
                lane.stages.insert(lane.stages.index(BLOBS), REFERRERS)
        if self.replicas:
            next(iter(lanes.values())).stages.append(REPLICAS)
        if self.origin and self.origin.registry in lanes:
            lanes[self.origin.registry].stages.append(ORIGIN)
        pool = WorkerPool(self.workers)
        owner: Dict[concurrent.futures.Future, Tuple[_Lane, str]] = {}
        interrupted = None
        late: Optional[DeadlineExceeded] = None  # a job that itself ran into the deadline
        try:
            for lane in lanes.values():
                self._advance(lane, pool, owner, findings)
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
                    found_targets, found = self._collect(future, label)
                    lane.targets.extend(found_targets)
                    targets.extend(found_targets)
                    now = self.deadline.elapsed()
                    if ORIGIN in lane.stages and lane.stages[lane.stage] in (RESOLVE, BLOBS):
                        lane.failures += [len(findings) + i for i, f in enumerate(found) if worth_asking(f)]
                    findings.extend(dataclasses.replace(f, finished=now) for f in found)
                    if self.progress:
                        self.progress(lane.stages[lane.stage], lane.done, lane.total,
                                      sum(f.bytes_read for f in found))
                    if not lane.pending:
                        self._advance(lane, pool, owner, findings)
                if self.deadline.expired() and any(lane.pending for lane in lanes.values()):
                    with self._lock:
                        waiting = "; ".join(lane.describe(len(lanes) > 1) for lane in lanes.values() if lane.pending)
                    raise DeadlineExceeded(f"deadline of {self.deadline.seconds:g}s passed while {waiting}")
            interrupted = late
        except DeadlineExceeded as exc:
            interrupted = late or exc  # a job that ran into it first says best where the run was
        finally:
            self.cancelled.set()
            pool.shutdown()
        retries = sum(self.client_for(registry).retries for registry in (*lanes, *self.replicas))
        if self.origin is not None:
            origin = self.origin
            retries += origin.client.retries
            for position in (p for lane in lanes.values() for p in lane.failures):  # unasked: the time ran out
                check = self.origin_checks.get(position, OriginCheck(origin.address, skipped=NO_TIME))
                findings[position] = dataclasses.replace(findings[position], origin=check)
        return ScanResult(tuple(ref for lane in lanes.values() for ref in lane.images), tuple(targets),
                          tuple(findings), self.deadline.elapsed(), retries, interrupted,
                          artifacts=tuple(a for lane in lanes.values() for a in lane.artifacts),
                          attachments=self.attachments.enabled,
                          signed=tuple(s for lane in lanes.values() for s in lane.signed)
                          if self.attachments.require_signature else None)

    def _advance(self, lane: _Lane, pool: WorkerPool, owner: Dict[concurrent.futures.Future, Tuple[_Lane, str]],
                 findings: List[Finding]) -> None:
        """Start the lane's next stage that has work; a registry that failed its API check stops there."""
        while not lane.pending and lane.stage + 1 < len(lane.stages):
            if lane.stage >= 0 and lane.stages[lane.stage] == TAGS:
                findings.extend(self._listed(lane))
            if lane.stage >= 0 and any(f.kind == Kind.REGISTRY and f.subject == lane.registry for f in findings):
                return  # unreachable, or its listing failed: nothing more to learn there
            lane.stage += 1
            jobs = self._jobs_for(lane, findings)
            with self._lock:
                lane.total, lane.done = len(jobs), 0
            for label, job in jobs:
                future = pool.submit(self._tracked(lane, label, job))
                owner[future] = (lane, label)
                lane.pending.add(future)
                future.add_done_callback(self._completed.put)

    def _jobs_for(self, lane: _Lane, findings: List[Finding]) -> List[Job]:
        stage = lane.stages[lane.stage]
        if stage == PING:
            return [(f"{lane.registry}/v2/", functools.partial(self._ping, lane.registry, lane.images))]
        if stage == DISCOVER:
            return [(f"{lane.registry}/v2/_catalog", functools.partial(self._discover, lane))]
        if stage == TAGS:
            return [(f"{lane.registry}/v2/{repository}/tags/list", functools.partial(self._tags, lane, repository))
                    for repository in lane.listed]
        if stage == RESOLVE:
            return [(f"manifest of {ref}", functools.partial(self._resolve, ref, lane))
                    for ref in dict.fromkeys(lane.images)]
        if stage == REFERRERS:
            return [(f"referrers of {ref}", functools.partial(self._referrers, ref, lane)) for ref in lane.top_digests]
        if stage == BLOBS:
            return [(work.label(), functools.partial(self._check_blob, work))
                    for work in plan(lane.targets + lane.artifact_targets, self.choose_deep)]
        if stage == ORIGIN:
            assert self.origin is not None
            self.origin.charge(sum(f.bytes_read for f in findings))
            return [(f"{findings[p].kind} {findings[p].subject} at {self.origin.address}",
                     functools.partial(self._ask_origin, p, findings[p])) for p in lane.failures]
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
            return [], [Finding(label, Kind.INTERNAL, (), error=InternalError(
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

    # -- the jobs: each a call into the module that does it, its answer handed back as values --

    def _ping(self, registry: str, images: Sequence[ImageRef]) -> JobResult:
        """Is the registry there at all?"""
        try:
            self.client_for(registry).ping()
        except RegistryError as exc:
            affected = tuple(Target(ref, registry) for ref in images)
            return [], [Finding(registry, Kind.REGISTRY, affected, error=exc)]
        return [], []

    def _discover(self, lane: _Lane) -> JobResult:
        """The catalog's repositories under the prefixes; the next stage lists their tags, concurrently."""
        assert self.discovery is not None
        try:
            found = repositories(self.discovery[1], self.client_for(lane.registry))
        except RegistryError as exc:
            return [], [Finding(lane.registry, Kind.REGISTRY, (), error=exc)]
        lane.listed = dict.fromkeys(found)
        return [], []

    def _tags(self, lane: _Lane, repository: str) -> JobResult:
        assert self.discovery is not None
        try:
            found: object = tags(self.discovery[1], self.client_for(lane.registry), repository)
        except RegistryError as exc:
            found = exc
        with self._lock:
            lane.listed[repository] = found
        return [], []

    def _listed(self, lane: _Lane) -> List[Finding]:
        """The listed images join the lane in catalog order; or the first listing that failed is reported, and the
        lane stops there (as when one job listed everything, one repository after another)."""
        for found in lane.listed.values():
            if isinstance(found, RegistryError):
                return [Finding(lane.registry, Kind.REGISTRY, (), error=found, finished=self.deadline.elapsed())]
        known = set(lane.images)
        for found in lane.listed.values():
            for ref in found if isinstance(found, list) else ():  # not a list: its job failed, and said so
                if ref not in known:
                    known.add(ref)
                    lane.images.append(ref)
        return []

    def _resolve(self, ref: ImageRef, lane: _Lane) -> JobResult:
        resolution = self.resolver.resolve(self.client_for(lane.registry), ref, lane.registry)
        if resolution.digest is not None:
            with self._lock:
                lane.top_digests[ref] = resolution.digest
        return list(resolution.targets), list(resolution.findings)

    def _referrers(self, ref: ImageRef, lane: _Lane) -> JobResult:
        targets = [t for t in lane.targets if t.target.image == ref]
        walk = self.walker.walk(self.client_for(lane.registry), ref, lane.top_digests[ref], targets)
        with self._lock:
            lane.artifacts += walk.artifacts
            lane.artifact_targets += walk.targets
            lane.signed += walk.signed
        return [], walk.findings

    def _check_blob(self, work: BlobWork) -> JobResult:
        return [], self.blobs.check(self.client_for(work.registry), work)

    def _ask_origin(self, position: int, finding: Finding) -> JobResult:
        assert self.origin is not None
        check = self.origin.check(finding, self.cancelled)
        with self._lock:
            self.origin_checks[position] = check
        return [], []

    def _compare_replica(self, lane: _Lane, ref: ImageRef, replica: str) -> JobResult:
        resolved = [t for t in lane.targets if t.target.image == ref]
        return [], compare_replica(self.client_for(replica), ref, lane.top_digests[ref], lane.registry, resolved)
