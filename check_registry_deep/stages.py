"""A lane's stages and their jobs: one job builder per stage, each job a call into the module that does the
work (resolve.py, blobs.py, replicas.py, discovery.py, origin.py), its answer handed back as a JobResult.

scan.py schedules the jobs; nothing here waits on another job or knows Nagios states.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import threading
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .blobs import BlobChecker, BlobWork, Chooser, plan
from .client import RegistryClient
from .deadline import Deadline
from .discovery import empty_selections, repositories, tags
from .errors import RegistryError
from .model import ArtifactResult, EmptySelection, Finding, OriginCheck, RunProblem, Target, TargetResult, Trouble
from .options import DiscoveryOptions
from .origin import NO_TIME, OriginChecker, worth_asking
from .reference import Digest, ImageRef, Platform
from .referrers import Policy, ReferrerWalker
from .replicas import compare_replica
from .resolve import Resolver
from .verify import CHUNK_SIZE


class Stage(enum.Enum):
    """A lane's stages, in the order they can run; each value is what the output says the run was doing."""

    PING = "checking the registry API"
    DISCOVER = "listing repositories and tags"
    TAGS = "listing tags"
    RESOLVE = "resolving manifests"
    REFERRERS = "looking for referrers"
    BLOBS = "verifying blobs"
    REPLICAS = "comparing replicas"
    ORIGIN = "asking the origin"

    def __str__(self) -> str:
        return str(self.value)


@dataclass(frozen=True)
class JobResult:
    """What one job hands back: the images it resolved, the findings it reached, the problems that stopped it."""

    targets: Tuple[TargetResult, ...] = ()
    findings: Tuple[Finding, ...] = ()
    problems: Tuple[RunProblem, ...] = ()
    answered: Tuple[Finding, ...] = ()  # failures found earlier in the run, now with the origin's answer
    empty: Tuple[EmptySelection, ...] = ()  # selections that matched nothing


NOTHING = JobResult()


@dataclass(frozen=True)
class Job:
    label: str  # what the run is waiting on, in a deadline's message
    run: Callable[[], JobResult]
    unanswered: JobResult = NOTHING  # stands for its result when it gives none (the deadline cut it, or a bug)


@dataclass
class Lane:
    """One registry's way through its stages; lanes move independently, so a stalled registry holds up only
    its own images."""

    registry: str
    images: List[ImageRef]
    stages: List[Stage] = field(default_factory=lambda: [Stage.PING, Stage.RESOLVE, Stage.BLOBS])
    stage: int = -1
    total: int = 0
    done: int = 0
    pending: set = field(default_factory=set)
    in_flight: Dict[int, str] = field(default_factory=dict)
    targets: List[TargetResult] = field(default_factory=list)
    top_digests: Dict[ImageRef, Digest] = field(default_factory=dict)  # what each image's reference resolved to
    listed: Dict[str, object] = field(default_factory=dict)  # discovery: repository -> its images, or the error
    stopped: bool = False  # its registry failed (unreachable, or its listing): nothing more to learn there
    unasked: List[Finding] = field(default_factory=list)  # with --origin: failures waiting for its stage
    artifacts: List[ArtifactResult] = field(default_factory=list)  # --referrers, --require-signature
    artifact_targets: List[TargetResult] = field(default_factory=list)  # their blobs, for the blob plan
    signed: List[Tuple[Target, bool]] = field(default_factory=list)
    empty: List[EmptySelection] = field(default_factory=list)  # its selections that matched nothing

    @property
    def current(self) -> Stage:
        return self.stages[self.stage]

    def hold_for_origin(self, found: List[Finding]) -> List[Finding]:
        """With an origin stage ahead, the failures of manifests and blobs worth asking wait for it (in
        `unasked`); returns the rest."""
        if Stage.ORIGIN not in self.stages or self.current not in (Stage.RESOLVE, Stage.BLOBS):
            return found
        self.unasked += [f for f in found if worth_asking(f)]
        return [f for f in found if not worth_asking(f)]

    def brief(self, named: bool) -> str:
        return str(self.current) + (f" at {self.registry}" if named else "")

    def describe(self, named: bool, finished: str = "") -> str:
        """Where the lane is, and what it waits on (`finished`: a job that just ended, when nothing else is)."""
        text = self.brief(named) + f" ({self.done} of {self.total} done)"
        waiting = sorted(self.in_flight.values()) or ([finished] if finished else [])
        if waiting:
            text += "; waiting on " + ", ".join(waiting[:3]) + (
                f" and {len(waiting) - 3} more" if len(waiting) > 3 else "")
        return text


class StageJobs:
    """The jobs of each stage, for one lane at a time."""

    def __init__(self, clients: Callable[[str], RegistryClient], deadline: Deadline, cancelled: threading.Event, *,
                 platforms: Sequence[Platform] = (), chunk_size: int = CHUNK_SIZE,
                 discovery: Optional[Tuple[str, DiscoveryOptions]] = None, replicas: Sequence[str] = (),
                 choose_deep: Optional[Chooser] = None, origin: Optional[OriginChecker] = None,
                 attachments: Policy = Policy()):
        self.client_for = clients
        self.cancelled = cancelled
        self.discovery = discovery
        self.replicas = tuple(replicas)
        self.choose_deep = choose_deep
        self.origin = origin
        self.resolver = Resolver(deadline, platforms)
        self.blobs = BlobChecker(deadline, cancelled, chunk_size)
        self.walker = ReferrerWalker(attachments, deadline, self.resolver)
        self.lock = threading.Lock()  # over the lanes: the jobs write to them, the scan reads them
        self._builders: Dict[Stage, Callable[[Lane], List[Job]]] = {
            Stage.PING: self._ping_jobs, Stage.DISCOVER: self._discover_jobs, Stage.TAGS: self._tags_jobs,
            Stage.RESOLVE: self._resolve_jobs, Stage.REFERRERS: self._referrer_jobs, Stage.BLOBS: self._blob_jobs,
            Stage.REPLICAS: self._replica_jobs, Stage.ORIGIN: self._origin_jobs}

    def of(self, lane: Lane) -> List[Job]:
        """The jobs of the lane's current stage."""
        return self._builders[lane.current](lane)

    # -- one job builder per stage --

    def _ping_jobs(self, lane: Lane) -> List[Job]:
        return [Job(f"{lane.registry}/v2/", functools.partial(self._ping, lane.registry, lane.images))]

    def _discover_jobs(self, lane: Lane) -> List[Job]:
        return [Job(f"{lane.registry}/v2/_catalog", functools.partial(self._discover, lane))]

    def _tags_jobs(self, lane: Lane) -> List[Job]:
        return [Job(f"{lane.registry}/v2/{repository}/tags/list", functools.partial(self._tags, lane, repository))
                for repository in lane.listed]

    def _resolve_jobs(self, lane: Lane) -> List[Job]:
        return [Job(f"manifest of {ref}", functools.partial(self._resolve, ref, lane))
                for ref in dict.fromkeys(lane.images)]

    def _referrer_jobs(self, lane: Lane) -> List[Job]:
        return [Job(f"referrers of {ref}", functools.partial(self._referrers, ref, lane)) for ref in lane.top_digests]

    def _blob_jobs(self, lane: Lane) -> List[Job]:
        return [Job(work.label(), functools.partial(self._check_blob, work))
                for work in plan(lane.targets + lane.artifact_targets, self.choose_deep)]

    def _replica_jobs(self, lane: Lane) -> List[Job]:
        return [Job(f"{ref} on {replica}", functools.partial(self._compare_replica, lane, ref, replica))
                for replica in self.replicas for ref in lane.top_digests]

    def _origin_jobs(self, lane: Lane) -> List[Job]:
        """Each failure of the lane, asked of the origin; one the origin never answers is marked so."""
        assert self.origin is not None
        asked, lane.unasked = lane.unasked, []
        return [Job(f"{finding.kind} {finding.label} at {self.origin.address}",
                    functools.partial(self._ask_origin, finding),
                    JobResult(answered=(self.not_asked(finding),))) for finding in asked]

    def not_asked(self, finding: Finding) -> Finding:
        assert self.origin is not None
        return dataclasses.replace(finding, origin=OriginCheck(self.origin.address, skipped=NO_TIME))

    # -- the jobs: each a call into the module that does it, its answer handed back as values --

    def _ping(self, registry: str, images: Sequence[ImageRef]) -> JobResult:
        """Is the registry there at all?"""
        try:
            self.client_for(registry).ping()
        except RegistryError as exc:
            affected = tuple(Target(ref, registry) for ref in images)
            return JobResult(problems=(RunProblem(Trouble.REGISTRY, exc, registry, affected),))
        return NOTHING

    def _discover(self, lane: Lane) -> JobResult:
        """The catalog's repositories under the prefixes; the next stage lists their tags, concurrently."""
        assert self.discovery is not None
        try:
            found = repositories(self.discovery[1], self.client_for(lane.registry))
        except RegistryError as exc:
            return JobResult(problems=(RunProblem(Trouble.REGISTRY, exc, lane.registry),))
        lane.listed = dict.fromkeys(found)
        return NOTHING

    def _tags(self, lane: Lane, repository: str) -> JobResult:
        assert self.discovery is not None
        try:
            found: object = tags(self.discovery[1], self.client_for(lane.registry), repository)
        except RegistryError as exc:
            found = exc
        with self.lock:
            lane.listed[repository] = found
        return NOTHING

    def listed(self, lane: Lane) -> JobResult:
        """The listed images join the lane in catalog order; or the first listing that failed is reported, and the
        lane stops there (as when one job listed everything, one repository after another)."""
        for found in lane.listed.values():
            if isinstance(found, RegistryError):
                return JobResult(problems=(RunProblem(Trouble.REGISTRY, found, lane.registry),))
        known = set(lane.images)
        for found in lane.listed.values():
            for ref in found if isinstance(found, list) else ():  # not a list: its job failed, and said so
                if ref not in known:
                    known.add(ref)
                    lane.images.append(ref)
        assert self.discovery is not None
        listed = {repository: found if isinstance(found, list) else [] for repository, found in lane.listed.items()}
        return JobResult(empty=tuple(empty_selections(self.discovery[1], lane.registry, listed)))

    def _resolve(self, ref: ImageRef, lane: Lane) -> JobResult:
        resolution = self.resolver.resolve(self.client_for(lane.registry), ref, lane.registry)
        if resolution.digest is not None:
            with self.lock:
                lane.top_digests[ref] = resolution.digest
        return JobResult(resolution.targets, resolution.findings, empty=resolution.empty)

    def _referrers(self, ref: ImageRef, lane: Lane) -> JobResult:
        targets = [t for t in lane.targets if t.target.image == ref]
        walk = self.walker.walk(self.client_for(lane.registry), ref, lane.top_digests[ref], targets)
        with self.lock:
            lane.artifacts += walk.artifacts
            lane.artifact_targets += walk.targets
            lane.signed += walk.signed
        return JobResult(findings=tuple(walk.findings))

    def _check_blob(self, work: BlobWork) -> JobResult:
        return JobResult(findings=tuple(self.blobs.check(self.client_for(work.registry), work)))

    def _ask_origin(self, finding: Finding) -> JobResult:
        assert self.origin is not None
        return JobResult(answered=(dataclasses.replace(finding, origin=self.origin.check(finding, self.cancelled)),))

    def _compare_replica(self, lane: Lane, ref: ImageRef, replica: str) -> JobResult:
        resolved = [t for t in lane.targets if t.target.image == ref]
        return JobResult(findings=tuple(compare_replica(self.client_for(replica), ref, lane.top_digests[ref],
                                                        lane.registry, resolved)))
