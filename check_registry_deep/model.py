"""The facts a scan gathers: images and the verdicts on their content, with the blast radius of each.

Immutable values, shared by the gathering (scan), judging (check) and presenting (report) layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

from .errors import CheckError, DeadlineExceeded
from .manifests import CONFIG, LAYER, Descriptor
from .reference import Digest, ImageRef, Platform

#: How a blob was checked this run.
VERIFIED, PRESENT, SKIPPED = "verified", "present", "skipped"


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
    mode: str = VERIFIED  # VERIFIED: bytes hashed; PRESENT: HEAD only (rotated to a later run); SKIPPED: foreign
    finished: float = 0.0  # seconds into the run

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
    oldest_verification: Optional[float] = None  # seconds, with --state-file: the stalest blob's last deep check

    @property
    def problems(self) -> Tuple[ContentResult, ...]:
        return tuple(c for c in self.content if c.problem)

    @property
    def verified_blobs(self) -> Tuple[ContentResult, ...]:
        return tuple(c for c in self.content if c.kind in (LAYER, CONFIG) and c.error is None and c.mode == VERIFIED)

    @property
    def present_blobs(self) -> Tuple[ContentResult, ...]:
        """Blobs only confirmed present this run: their deep verification rotated to a later run."""
        return tuple(c for c in self.content if c.error is None and c.mode == PRESENT)
