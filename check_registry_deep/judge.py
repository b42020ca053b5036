"""Judging: findings and run problems become states. No HTTP, no wording.

`judge` is the only place that maps a finding (or a run problem, the deadline included) to a state; the run's
judgement, the per-image verdicts, the long output, the table and the JSON all derive from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Set, Tuple, Union

from .errors import DeadlineExceeded, IntegrityError, ManifestInvalid, NotFound
from .model import (
    ArtifactResult,
    EmptySelection,
    Finding,
    OriginCheck,
    RunProblem,
    ScanResult,
    Target,
    TargetResult,
    Trouble,
)
from .reference import Digest
from .states import OK, SEVERITY, UNKNOWN, WARNING, worst

#: What the run judges: a finding on content, or a problem of the run.
Judged = Union[Finding, RunProblem]


def judge(item: Judged, timeout_state: str = UNKNOWN) -> str:
    """The state `item` leads to: its error's (the -t state for the deadline), WARNING for caveats, else OK."""
    if item.error is not None:
        return timeout_state if item.error.state is None else item.error.state
    return WARNING if isinstance(item, Finding) and item.caveats else OK


def judge_empty(allow_empty: bool) -> str:
    """A selection that matched nothing: UNKNOWN (a typo would otherwise read OK forever), unless --allow-empty."""
    return OK if allow_empty else UNKNOWN


def not_reached(item: Judged) -> bool:
    """A finding whose content the run did not get to before the deadline: not checked, never broken."""
    return isinstance(item, Finding) and isinstance(item.error, DeadlineExceeded)


@dataclass(frozen=True)
class Judgement:
    """The run judged, with the -t state and --allow-empty: what the summary and the long output speak of."""

    scan: ScanResult
    timeout_state: str = UNKNOWN
    allow_empty: bool = False

    def state(self, item: Judged) -> str:
        return judge(item, self.timeout_state)

    @property
    def empty_state(self) -> str:
        return judge_empty(self.allow_empty)

    @property
    def not_checked(self) -> Tuple[Target, ...]:
        return not_checked(self.scan)

    @property
    def deadline(self) -> Optional[RunProblem]:
        return None if self.scan.interrupted is None else RunProblem(Trouble.DEADLINE, self.scan.interrupted)

    @property
    def listed(self) -> Tuple[Judged, ...]:
        """Everything worth a line of its own, in the order the run met it: the run's problems, the findings that
        are problems, the deadline last."""
        deadline = self.deadline
        return self.scan.run_problems + self.scan.problems + ((deadline,) if deadline else ())

    @property
    def failures(self) -> Tuple[Judged, ...]:
        """What the run found broken (the deadline aside): every error not judged OK."""
        items: Tuple[Judged, ...] = self.scan.run_problems + self.scan.problems
        return tuple(item for item in items
                     if item.error is not None and self.state(item) != OK and not not_reached(item))

    @property
    def warnings(self) -> Tuple[Finding, ...]:
        """Findings that deserve a look and are not broken."""
        return tuple(f for f in self.scan.problems if f.error is None and self.state(f) != OK)

    def worst_first(self) -> List[Judged]:
        """The listed items, worst first, otherwise in the order the run met them."""
        return sorted(self.listed, key=lambda item: -SEVERITY[self.state(item)])


@dataclass(frozen=True)
class ImageVerdict:
    """One image (and platform): the worst state of the findings that affect it; UNKNOWN, with `unjudged` saying
    why, when the run did not judge it (the deadline came first, or --platform selected none of its children)."""

    target: Target
    resolved: Optional[TargetResult]  # None: its manifest could not be resolved
    state: str
    bytes: int
    seconds: float  # into the run, when its last finding came in
    unjudged: Optional[Union[DeadlineExceeded, EmptySelection]] = None


def not_checked(scan: ScanResult) -> Tuple[Target, ...]:
    """The images (and platforms) the deadline left unfinished: a blob, or the manifest itself, never reached.
    One with a failure already found is judged by it (it stays broken); once the run finished, there are none."""
    if scan.interrupted is None:
        return ()
    items: Tuple[Judged, ...] = scan.run_problems + scan.findings
    judged = {t for item in items if item.error is not None and not not_reached(item) for t in item.affected}
    covered = {(t, f.digest) for f in scan.findings if f.kind.blob and not not_reached(f) for t in f.affected}
    unfinished = [r.target for r in scan.targets
                  if r.target not in judged and any((r.target, d.digest) not in covered for d in r.blobs)]
    reached = {(t.image, t.registry) for t in judged} | {(r.target.image, r.target.registry) for r in scan.targets} \
        | {(e.target.image, e.target.registry) for e in scan.empty if e.target is not None}
    unfinished += [t for t in scan.selected if (t.image, t.registry) not in reached]
    return tuple(dict.fromkeys(unfinished))


def image_verdicts(scan: ScanResult) -> List[ImageVerdict]:
    """Every resolved image and platform, then every one that did not resolve (a tag gone, an index child
    missing, the registry down), every one the deadline left unfinished and every index --platform selected no
    child of: the one per-image verdict that -v lines, the table and JSON show."""
    states: Dict[Target, str] = {}
    finished: Dict[Target, float] = {}
    items: Tuple[Judged, ...] = scan.run_problems + scan.findings
    for item in items:
        if not_reached(item):
            continue
        for target in owners_of(scan, item.affected):
            states[target] = worst((states.get(target, OK), judge(item)))
            finished[target] = max(finished.get(target, 0.0), item.finished)
    in_order = not_checked(scan)
    unfinished = set(in_order)
    verdicts = [ImageVerdict(r.target, r, UNKNOWN if r.target in unfinished else states.get(r.target, OK),
                             sum(d.size or 0 for d in r.blobs), finished.get(r.target, 0.0),
                             scan.interrupted if r.target in unfinished else None) for r in scan.targets]
    resolved = {r.target for r in scan.targets}
    verdicts += [ImageVerdict(target, None, state, 0, finished[target])
                 for target, state in states.items() if target not in resolved]
    verdicts += [ImageVerdict(target, None, UNKNOWN, 0, 0.0, scan.interrupted)
                 for target in in_order if target not in resolved and target not in states]
    verdicts += [ImageVerdict(e.target, None, UNKNOWN, 0, 0.0, e) for e in scan.empty if e.target is not None]
    return verdicts


def owners_of(scan: ScanResult, affected: Tuple[Target, ...]) -> Tuple[Target, ...]:
    """The image targets `affected` stands for: an attached artifact's breakage is its images' (the blast radius)."""
    if not scan.artifacts:
        return affected
    owners = {a.target: a.owners for a in scan.artifacts}
    return tuple(dict.fromkeys(t for target in affected for t in owners.get(target, (target,))))


@dataclass(frozen=True)
class ArtifactVerdict:
    """One attached artifact: the worst state of the findings about it, and its first failure."""

    artifact: ArtifactResult
    state: str
    failure: Optional[Finding]
    bytes: int


def artifact_verdicts(scan: ScanResult) -> List[ArtifactVerdict]:
    """Every attached artifact (--referrers, --require-signature) in the order found, judged like an image."""
    states: Dict[Target, str] = {}
    failures: Dict[Target, Finding] = {}
    for finding in scan.findings:
        for target in finding.affected:
            if target.artifact is not None:
                states[target] = worst((states.get(target, OK), judge(finding)))
                if finding.error is not None:
                    failures.setdefault(target, finding)
    return [ArtifactVerdict(a, states.get(a.target, OK), failures.get(a.target), sum(d.size or 0 for d in a.blobs))
            for a in scan.artifacts]


def verified_artifacts(scan: ScanResult) -> Set[Tuple[str, Digest]]:
    """Distinct artifacts (registry, digest) whose manifest and blobs all verified."""
    return {(v.artifact.target.registry, v.artifact.artifact.digest) for v in artifact_verdicts(scan)
            if v.artifact.resolved and v.failure is None}


#: What the origin's own failure says about the storage: it served the content wrong, or does not have it.
BROKEN_AT_ORIGIN = (IntegrityError, NotFound, ManifestInvalid)


def broken_at_origin(origin: OriginCheck) -> bool:
    return isinstance(origin.error, BROKEN_AT_ORIGIN)


def cache_only(finding: Finding) -> Optional[str]:
    """The origin's address when it does not have this failure (only the cache in front serves it), else None."""
    origin = finding.origin
    return origin.address if origin is not None and not origin.skipped and origin.error is None else None
