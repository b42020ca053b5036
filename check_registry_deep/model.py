"""The facts a scan gathers: content (its kind and descriptor), images, the findings on their content with the
blast radius of each, and the problems that kept the run from some content.

Immutable values, shared by the gathering (manifests, scan), judging (judge) and presenting (wording, report)
layers.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional, Tuple

from .errors import CheckError, DeadlineExceeded
from .reference import Digest, ImageRef, Platform


class _Word(enum.StrEnum):
    """An enum whose members are their words, in f-strings and JSON alike."""


class Kind(_Word):
    """What a piece of content is: a blob (a layer, a config) or a manifest; with --referrers and a required
    signature also a subject's list of referrers, and an image's signature."""

    LAYER = "layer"
    CONFIG = "config"
    MANIFEST = "manifest"
    SIGNATURE = "signature"  # an image's required signature: missing, not verifying with the key, for another digest
    REFERRERS = "referrers"  # a subject's list of referrers (the referrers API, the fallback tag)

    @property
    def blob(self) -> bool:
        return self in (Kind.LAYER, Kind.CONFIG)


#: Layers clients fetch from the descriptor's `urls`, not from the registry.
FOREIGN_LAYER_TYPES = frozenset({"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                                 "application/vnd.oci.image.layer.nondistributable.v1.tar",
                                 "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                                 "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"})


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: Optional[int]  # None only for schema 1 layers, which declare no size
    kind: Kind = Kind.LAYER
    urls: Tuple[str, ...] = ()
    platform: Optional[Platform] = None
    artifact_type: str = ""  # an index entry's artifactType (a referrers list names each referrer's type)
    annotations: Tuple[Tuple[str, str], ...] = ()  # string-valued annotations (cosign's signature is one)
    data: Optional[str] = None  # embedded base64 copy of the content (OCI 1.1 `data`), checked for artifacts

    def annotation(self, key: str) -> Optional[str]:
        return dict(self.annotations).get(key)

    @property
    def foreign(self) -> bool:
        """A non-distributable layer, fetched by clients from its `urls`, not from the registry."""
        return bool(self.urls) or self.media_type in FOREIGN_LAYER_TYPES


class Trouble(_Word):
    """What kept the run from learning about content."""

    REGISTRY = "registry"  # the registry itself: unreachable, refused us, or its listing failed
    INTERNAL = "internal"  # a bug of ours in one job
    DEADLINE = "deadline"  # the run's -t deadline


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
    """What the run learned about one piece of content: a blob, or a manifest (an index child, an image's tag).

    The content is named by its `digest`, else (a manifest asked for by tag) by its `image`; `replica` is set when
    the content was looked up on a replica rather than on the image's registry. An `error` is a failure, `caveats`
    deserve a look, `notes` are said; judge.judge turns them into a state.
    """

    kind: Kind
    affected: Tuple[Target, ...]
    digest: Optional[Digest] = None
    image: Optional[ImageRef] = None  # the image whose manifest this is (with a digest: for the origin's lookup)
    replica: str = ""  # a replica's base URL (--compare-registry)
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

    def __post_init__(self) -> None:
        if self.digest is None and self.image is None:
            raise ValueError("a finding names its content by digest or image")

    @property
    def label(self) -> str:
        """The content as the output names it: its digest (else its image), and the replica it was looked up on."""
        what = str(self.digest) if self.digest is not None else str(self.image)
        return f"{what} on {self.replica}" if self.replica else what

    @property
    def problem(self) -> bool:
        return self.error is not None or bool(self.caveats)


@dataclass(frozen=True)
class RunProblem:
    """What kept the run from learning about some content: a registry that failed, a bug of ours in one job, the
    deadline. `where` is the registry's URL or the job's label (empty for the deadline)."""

    kind: Trouble
    error: CheckError
    where: str = ""
    affected: Tuple[Target, ...] = ()
    finished: float = 0.0  # seconds into the run

    @property
    def label(self) -> str:
        return self.where or str(self.error)


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
    findings: Tuple[Finding, ...]  # about content, in the order they were found
    elapsed: float
    retries: int
    interrupted: Optional[DeadlineExceeded] = None
    run_problems: Tuple[RunProblem, ...] = ()  # a registry that failed, a bug of ours (the deadline: `interrupted`)
    notes: Tuple[str, ...] = ()  # about the whole run, e.g. TLS not verified
    artifacts: Tuple[ArtifactResult, ...] = ()
    attachments: bool = False  # artifacts were looked for (--referrers, --require-signature): perfdata says how many
    signed: Optional[Tuple[Tuple[Target, bool], ...]] = None  # with a signature required: each image target's answer
    freshness: Optional[Freshness] = None  # with --state-file
    selected: Tuple[Target, ...] = ()  # every image the run set out to check (given or listed), with its registry
    empty: Tuple[EmptySelection, ...] = ()  # selections that matched nothing

    @property
    def oldest_verification(self) -> Optional[float]:
        return self.freshness.oldest if self.freshness else None

    @property
    def problems(self) -> Tuple[Finding, ...]:
        """The findings that are failures or deserve a look."""
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
