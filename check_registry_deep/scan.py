"""Gathering: the schedule. Lanes and stages under one deadline, over a pool of workers; returns a ScanResult.

Per registry a lane of stages (API check, discovery, manifests, blobs, replicas, the origin behind a cache)
runs on a pool of daemon threads. Lanes move independently, so a stalled registry holds up only its own
images. The stages and their jobs live in stages.py, the work itself in resolve.py, blobs.py, replicas.py,
discovery.py and origin.py. Knows nothing of Nagios states.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import queue
import threading
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .blobs import Chooser
from .client import RegistryClient
from .deadline import Deadline
from .errors import DeadlineExceeded, InternalError
from .model import Finding, RunProblem, ScanResult, Target, TargetResult, Trouble
from .options import DiscoveryOptions
from .origin import OriginChecker
from .pool import WorkerPool
from .reference import ImageRef, Platform
from .referrers import Policy
from .replicas import merge_by_blob
from .resolve import registry_failures
from .stages import Job, JobResult, Lane, Stage, StageJobs
from .verify import CHUNK_SIZE

log = logging.getLogger(__name__)


class Scanner:
    """Resolves images into blobs and verifies them, within one deadline, on a pool of workers."""

    def __init__(self, clients: Callable[[str], RegistryClient], deadline: Deadline, *, workers: int = 4,
                 platforms: Sequence[Platform] = (), chunk_size: int = CHUNK_SIZE,
                 discovery: Optional[Tuple[str, DiscoveryOptions]] = None, replicas: Sequence[str] = (),
                 choose_deep: Optional[Chooser] = None, origin: Optional[OriginChecker] = None,
                 progress: Optional[Callable[[Stage, int, int, int], None]] = None, attachments: Policy = Policy()):
        """`discovery` (registry, what) lists more images there; `replicas` are compared with the first registry;
        `choose_deep` picks the blobs to GET and hash (the others are only HEADed); `origin` asks the origin behind
        its registry about every failure there; `progress(stage, done, total, bytes)` hears about every finished
        job. `attachments` says whether to look for referrers and signatures."""
        self.client_for = clients
        self.deadline = deadline
        self.workers = workers
        self.discovery = discovery
        self.replicas = tuple(replicas)
        self.progress = progress
        self.origin = origin
        self.attachments = attachments
        self.cancelled = threading.Event()
        self.jobs = StageJobs(clients, deadline, self.cancelled, platforms=platforms, chunk_size=chunk_size,
                              discovery=discovery, replicas=replicas, choose_deep=choose_deep, origin=origin,
                              attachments=attachments)
        self._completed: queue.Queue[concurrent.futures.Future] = queue.Queue()
        self._lock = self.jobs.lock  # one lock over the lanes, for the jobs that write to them and for us
        self._flight_ids = iter(range(1 << 62))

    def scan(self, images: Sequence[Tuple[ImageRef, str]]) -> ScanResult:
        """`images` pairs each reference with the base URL of the registry that serves it."""
        targets: List[TargetResult] = []
        findings: List[Finding] = []
        problems: List[RunProblem] = []
        lanes: Dict[str, Lane] = {}
        if self.discovery:
            lanes[self.discovery[0]] = Lane(self.discovery[0], [], [Stage.PING, Stage.DISCOVER, Stage.TAGS,
                                                                     Stage.RESOLVE, Stage.BLOBS])
        for ref, registry in images:
            lanes.setdefault(registry, Lane(registry, [])).images.append(ref)
        if self.attachments.enabled:
            for lane in lanes.values():
                lane.stages.insert(lane.stages.index(Stage.BLOBS), Stage.REFERRERS)
        if self.replicas:
            next(iter(lanes.values())).stages.append(Stage.REPLICAS)
        if self.origin and self.origin.registry in lanes:
            lanes[self.origin.registry].stages.append(Stage.ORIGIN)
        named = len(lanes) > 1
        pool = WorkerPool(self.workers)
        owner: Dict[concurrent.futures.Future, Tuple[Lane, Job]] = {}
        interrupted = None
        late: Optional[DeadlineExceeded] = None  # a job that itself ran into the deadline
        try:
            for lane in lanes.values():
                self._advance(lane, pool, owner, problems)
            while any(lane.pending for lane in lanes.values()):
                # finished futures arrive on a queue, so each completion costs the same however many are pending
                try:
                    done = [self._completed.get(timeout=self.deadline.remaining())]
                except queue.Empty:
                    done = []
                while not self._completed.empty() and len(done) < 1000:
                    done.append(self._completed.get_nowait())
                for future in done:
                    if future not in owner:
                        continue
                    lane, job = owner.pop(future)
                    lane.pending.discard(future)
                    if late is None and isinstance(future.exception(), DeadlineExceeded):
                        # it finished (by giving up) just before this loop saw the deadline: still a timeout,
                        # never a silently missing blob in an OK
                        with self._lock:
                            where, brief = lane.describe(named, finished=job.label), lane.brief(named)
                        late = self._passed(where, brief)
                    result = self._collect(future, job)
                    self._take(lane, result, findings, problems)
                    targets.extend(result.targets)
                    if self.progress:
                        self.progress(lane.current, lane.done, lane.total, sum(f.bytes_read for f in result.findings))
                    if not lane.pending:
                        self._advance(lane, pool, owner, problems)
                if self.deadline.expired() and any(lane.pending for lane in lanes.values()):
                    with self._lock:
                        waiting = [lane for lane in lanes.values() if lane.pending]
                        # a job between its worker and this loop is in flight no more, but still waited on
                        where = "; ".join(lane.describe(named, finished=next(
                            job.label for owned, job in owner.values() if owned is lane)) for lane in waiting)
                        brief = waiting[0].brief(named)
                    raise self._passed(where, brief)
            interrupted = late
        except DeadlineExceeded as exc:
            interrupted = late or exc  # a job that ran into it first says best where the run was
        finally:
            self.cancelled.set()
            pool.shutdown()
        for lane, job in owner.values():  # cut short by the deadline: what stands for their results
            self._take(lane, job.unanswered, findings, problems)
        for lane in lanes.values():  # the origin's stage never came: the time ran out
            findings += [self.jobs.not_asked(f) for f in lane.unasked]
        retries = sum(self.client_for(registry).retries for registry in (*lanes, *self.replicas))
        if self.origin is not None:
            retries += self.origin.client.retries
        findings.sort(key=lambda f: f.finished)  # in the order they were found, the origin's answers included
        findings, failing = registry_failures(merge_by_blob(findings), self._via)
        problems += failing
        return ScanResult(tuple(ref for lane in lanes.values() for ref in lane.images), tuple(targets),
                          tuple(findings), self.deadline.elapsed(), retries, interrupted, tuple(problems),
                          artifacts=tuple(a for lane in lanes.values() for a in lane.artifacts),
                          attachments=self.attachments.enabled,
                          signed=tuple(s for lane in lanes.values() for s in lane.signed)
                          if self.attachments.require_signature else None,
                          selected=tuple(Target(ref, lane.registry) for lane in lanes.values() for ref in lane.images),
                          empty=tuple(e for lane in lanes.values() for e in lane.empty))

    def _via(self, registry: str) -> str:
        """` via HOST:PORT` when --connect-to sends `registry`'s requests to one backend: the one that answered."""
        connect_to = self.client_for(registry).transport.connect_to
        return f" via {connect_to}" if connect_to else ""

    def _passed(self, where: str, brief: str) -> DeadlineExceeded:
        passed = f"deadline of {self.deadline.seconds:g}s passed while "
        return DeadlineExceeded(passed + where, brief=passed + brief)

    def _take(self, lane: Lane, result: JobResult, findings: List[Finding], problems: List[RunProblem]) -> None:
        """One job's result into the run's; with an origin stage ahead, the lane's failures wait for it."""
        now = self.deadline.elapsed()
        lane.targets.extend(result.targets)
        lane.empty.extend(result.empty)
        findings += lane.hold_for_origin([dataclasses.replace(f, finished=now) for f in result.findings])
        findings += result.answered
        if self.origin is not None:  # what the run downloads counts against --max-bytes before the origin's own
            self.origin.charge(sum(f.bytes_read for f in result.findings))
        problems += [dataclasses.replace(p, finished=now) for p in result.problems]
        lane.stopped = lane.stopped or any(p.kind is Trouble.REGISTRY for p in result.problems)

    def _advance(self, lane: Lane, pool: WorkerPool, owner: Dict[concurrent.futures.Future, Tuple[Lane, Job]],
                 problems: List[RunProblem]) -> None:
        """Start the lane's next stage that has work; a registry that failed its API check stops there."""
        while not lane.pending and lane.stage + 1 < len(lane.stages):
            if lane.stage >= 0 and lane.current is Stage.TAGS:
                self._take(lane, self.jobs.listed(lane), [], problems)
            if lane.stopped:
                return  # unreachable, or its listing failed: nothing more to learn there
            lane.stage += 1
            jobs = self.jobs.of(lane)
            with self._lock:
                lane.total, lane.done = len(jobs), 0
            for job in jobs:
                future = pool.submit(self._tracked(lane, job))
                owner[future] = (lane, job)
                lane.pending.add(future)
                future.add_done_callback(self._completed.put)

    @staticmethod
    def _collect(future: concurrent.futures.Future, job: Job) -> JobResult:
        try:
            return future.result()
        except DeadlineExceeded:
            return job.unanswered  # the scan loop names the stage
        except Exception as exc:  # a bug in one job must not hide what the others found
            log.debug("internal error in %s", job.label, exc_info=exc)
            bug = RunProblem(Trouble.INTERNAL, InternalError(
                f"internal error while checking {job.label}: {type(exc).__name__}: {exc}"), where=job.label)
            return dataclasses.replace(job.unanswered, problems=job.unanswered.problems + (bug,))

    def _tracked(self, lane: Lane, job: Job) -> Callable[[], JobResult]:
        def run() -> JobResult:
            flight = next(self._flight_ids)
            with self._lock:
                lane.in_flight[flight] = job.label
            cut = False  # by the deadline: not done, but what the run was waiting on when it passed
            try:
                return job.run()
            except DeadlineExceeded:
                cut = True
                raise
            finally:
                with self._lock:
                    del lane.in_flight[flight]
                    lane.done += not cut
        return run
