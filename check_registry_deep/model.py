"""The facts a scan gathers: images and the findings on their content, with the blast radius of each.

Immutable values, shared by the gathering (scan), judging (check) and presenting (report) layers.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Tuple

from .errors import CheckError, DeadlineExceeded
from .reference import Digest, ImageRef, Platform

if TYPE_CHECKING:
    from .manifests import Descriptor


class _Word(str, enum.Enum):
    """An enum whose members are their words, in f-strings and JSON alike."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class Kind(_Word):
    """What a finding is about."""

    LAYER = "layer"
    CONFIG = "config"
    MANIFEST = "manifest"
    REGISTRY = "registry"  # the registry itself: unreachable, refused us, or its listing failed
    INTERNAL = "internal"  # a bug of ours in one job
    DEADLINE = "deadline"  # the run's -t deadline

    @property
    def blob(self) -> bool:
        return self in (Kind.LAYER, Kind.CONFIG)

    @property
    def about_content(self) -> bool:
        """Whether the finding names content (a blob or manifest), rather than the run or the registry."""
        return self in (Kind.LAYER, Kind.CONFIG, Kind.MANIFEST)


class Mode(_Word):
    """How a blob was checked this run."""

    VERIFIED = "verified"  # bytes fetched and hashed
    PRESENT = "present"  # HEAD only: its deep check rotated to a later run
    SKIPPED = "skipped"  # foreign: clients fetch it from its urls


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
class OriginCheck:
    """A failing blob or manifest fetched again from the origin behind --registry (--origin) and verified the
    same way: what the origin served wrong (`error`), or why it was not asked (`skipped`); neither: intact."""

    address: str  # HOST:PORT
    error: Optional[CheckError] = None
    skipped: str = ""


@dataclass(frozen=True)
class Finding:
    """What the run learned about one piece of content (a blob, a manifest, a tag, the registry itself).

    An `error` is a failure, `caveats` deserve a look, `notes` are said; check.judge turns them into a state.
    """

    subject: str  # a digest, an image reference, or a registry URL
    kind: Kind
    affected: Tuple[Target, ...]
    error: Optional[CheckError] = None
    caveats: Tuple[str, ...] = ()
    notes: Tuple[str, ...] = ()
    size: Optional[int] = None
    bytes_read: int = 0
    retries: int = 0
    repository: str = ""
    mode: Mode = Mode.VERIFIED
    finished: float = 0.0  # seconds into the run
    origin: Optional[OriginCheck] = None  # with --origin, on a failure: the same content at the origin

    @property
    def problem(self) -> bool:
        return self.error is not None or bool(self.caveats)


@dataclass(frozen=True)
class Freshness:
    """With --state-file: how long ago (seconds) each blob of this run was last deep-verified; a blob never
    verified counts from the state file's creation."""

    ages: Tuple[float, ...]
    never_verified: int = 0
    new_state: bool = False  # this run created the state file: a never-verified blob has waited for no time yet

    @property
    def oldest(self) -> Optional[float]:
        """The stalest verification's age; None while it would read 0 s only because the state file is new."""
        if not self.ages or (self.never_verified and self.new_state):
            return None
        return max(self.ages)

    def older_than(self, seconds: float) -> int:
        return sum(1 for age in self.ages if age > seconds)


@dataclass(frozen=True)
class ScanResult:
    images: Tuple[ImageRef, ...]
    targets: Tuple[TargetResult, ...]
    findings: Tuple[Finding, ...]
    elapsed: float
    retries: int
    interrupted: Optional[DeadlineExceeded] = None
    notes: Tuple[str, ...] = ()  # about the whole run, e.g. TLS not verified
    freshness: Optional[Freshness] = None  # with --state-file

    @property
    def oldest_verification(self) -> Optional[float]:
        return self.freshness.oldest if self.freshness else None

    @property
    def problems(self) -> Tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.problem)

    @property
    def verified_blobs(self) -> Tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.kind.blob and f.error is None and f.mode == Mode.VERIFIED)

    @property
    def present_blobs(self) -> Tuple[Finding, ...]:
        """Blobs only confirmed present this run: their deep verification rotated to a later run."""
        return tuple(f for f in self.findings if f.error is None and f.mode == Mode.PRESENT)


class Selection(_Word):
    """The option whose selection matched nothing."""

    REPOSITORY = "--repository"
    ALL_TAGS = "--all-tags"
    TAG_PATTERN = "--tag-pattern"
    PLATFORM = "--platform"


@dataclass(frozen=True)
class EmptySelection:
    """A selection that matched nothing: a --repository prefix without repositories in the catalog, repositories
    without a tag that --all-tags or --tag-pattern selects, an index without a child for --platform. Judged
    UNKNOWN, unless --allow-empty says it is fine."""

    option: Selection
    value: str  # the prefix, the pattern, the platforms
    where: str  # the registry whose catalog was listed; the prefix whose tags were; the image whose index was read
    found: Tuple[str, ...] = ()  # what there was instead: the repositories under the prefix, the index's platforms
    target: Optional[Target] = None  # the image (--platform), for its own row
