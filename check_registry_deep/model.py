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
    SIGNATURE = "signature"  # an image's required signature: missing, not verifying with the key, for another digest
    REFERRERS = "referrers"  # a subject's list of referrers (the referrers API, the fallback tag)

    @property
    def blob(self) -> bool:
        return self in (Kind.LAYER, Kind.CONFIG)

    @property
    def about_content(self) -> bool:
        """Whether the finding names content (a blob or manifest), rather than the run or the registry."""
        return self in (Kind.LAYER, Kind.CONFIG, Kind.MANIFEST, Kind.SIGNATURE, Kind.REFERRERS)


class Mode(_Word):
    """How a blob was checked this run."""

    VERIFIED = "verified"  # bytes fetched and hashed
    PRESENT = "present"  # HEAD only: its deep check rotated to a later run
    SKIPPED = "skipped"  # foreign: clients fetch it from its urls


class FoundBy(_Word):
    """How an attached artifact was found (--referrers)."""

    API = "referrers-api"  # the OCI 1.1 referrers API
    TAG = "referrers-tag"  # the fallback tag sha256-<hex>, an index listing the referrers
    COSIGN = "cosign-tag"  # cosign's sha256-<hex>.sig, .att, .sbom


@dataclass(frozen=True)
class ArtifactId:
    """An attached artifact: its manifest's digest, its type (as the referrers API reports it) and how it was found."""

    digest: Digest
    artifact_type: str
    found_by: FoundBy
    tag: str = ""  # the cosign tag it was found by

    def __str__(self) -> str:
        return f"artifact {self.digest.short()}… ({self.what})"

    @property
    def what(self) -> str:
        """Its type, or the cosign tag it was found by (shortened: `cosign tag sha256-1840233422f5….sig`)."""
        if self.tag:
            stem, dot, suffix = self.tag.rpartition(".")
            return f"cosign tag {stem[:19]}…{dot}{suffix}"
        return self.artifact_type or "no artifact type"


@dataclass(frozen=True)
class Target:
    """An image, and the platform when it came from an index: what a broken blob breaks. With `artifact`, an
    artifact attached to that image (and platform): its breakage counts for the image."""

    image: ImageRef
    registry: str
    platform: Optional[Platform] = None
    artifact: Optional[ArtifactId] = None

    def __str__(self) -> str:
        image = f"{self.image} ({self.platform})" if self.platform else str(self.image)
        return f"{self.artifact} of {image}" if self.artifact else image


@dataclass(frozen=True)
class TargetResult:
    """A resolved image manifest and the blobs it references."""

    target: Target
    manifest_digest: Digest
    blobs: Tuple[Descriptor, ...]
    artifact: bool = False


@dataclass(frozen=True)
class ArtifactResult:
    """An attached artifact (--referrers, or a signature looked up for --require-signature): what it refers to,
    the images whose verdicts count it, and its blobs (none when its manifest could not be fetched)."""

    target: Target  # its `artifact` set
    subject: Digest  # the digest it refers to: the image's, a child's, or another artifact's
    owners: Tuple[Target, ...]  # the image targets (image and platform) it belongs to
    blobs: Tuple[Descriptor, ...] = ()
    resolved: bool = False

    @property
    def artifact(self) -> ArtifactId:
        assert self.target.artifact is not None
        return self.target.artifact


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
class ScanResult:
    images: Tuple[ImageRef, ...]
    targets: Tuple[TargetResult, ...]
    findings: Tuple[Finding, ...]
    elapsed: float
    retries: int
    interrupted: Optional[DeadlineExceeded] = None
    notes: Tuple[str, ...] = ()  # about the whole run, e.g. TLS not verified
    oldest_verification: Optional[float] = None  # seconds, with --state-file: the stalest blob's last deep check
    artifacts: Tuple[ArtifactResult, ...] = ()
    attachments: bool = False  # artifacts were looked for (--referrers, --require-signature): perfdata says how many
    signed: Optional[Tuple[Tuple[Target, bool], ...]] = None  # with a signature required: each image target's answer

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
