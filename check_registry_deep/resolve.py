"""Resolving: an image reference, through its manifest and any indexes, into targets (image, platform, blobs).

Every manifest is checked against the digest it was requested by (or the registry's Docker-Content-Digest),
every index child against its descriptor's size. What fails becomes a manifest Finding for the image and
platform it breaks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Set, Tuple

from .client import RegistryClient
from .deadline import Deadline
from .errors import CheckError, ManifestInvalid, RegistryError, SizeMismatch
from .manifests import ImageManifest, IndexManifest, Manifest, parse_manifest
from .model import Finding, Kind, Target, TargetResult
from .reference import Digest, ImageRef, Platform
from .verify import check_manifest_digest

MAX_INDEX_DEPTH = 8
#: A caveat (judged WARNING).
SCHEMA1 = "registry answered a schema 2 request with a deprecated schema 1 manifest"

Walked = Tuple[List[TargetResult], List[Finding]]


@dataclass(frozen=True)
class Resolution:
    """What one reference resolved to: its manifest's digest (None if it did not), its targets, what failed."""

    digest: Optional[Digest]
    targets: Tuple[TargetResult, ...]
    findings: Tuple[Finding, ...]


class Resolver:
    def __init__(self, deadline: Deadline, platforms: Sequence[Platform] = ()):
        self.deadline = deadline
        self.platforms = tuple(platforms)

    def resolve(self, client: RegistryClient, ref: ImageRef, registry: str) -> Resolution:
        try:
            manifest, digest = self.fetch(client, ref, ref.reference, ref.digest)
        except CheckError as exc:
            return Resolution(None, (), (Finding(Kind.MANIFEST, (Target(ref, registry),), digest=ref.digest, image=ref,
                                                 error=exc, repository=ref.repository),))
        targets, findings = self._walk(client, ref, registry, manifest, digest, None, 0, set())
        return Resolution(digest, tuple(targets), tuple(findings))

    @staticmethod
    def fetch(client: RegistryClient, ref: ImageRef, reference: str, expected: Optional[Digest],
              size: Optional[int] = None) -> Tuple[Manifest, Digest]:
        """One manifest of `ref`'s repository, checked against `expected` (or Docker-Content-Digest) and `size`."""
        fetched = client.get_manifest(ref.repository, reference)
        if size is not None and len(fetched.body) != size:
            raise SizeMismatch(f"index child is {len(fetched.body)} bytes, descriptor says {size}")
        digest = check_manifest_digest(fetched.body, fetched.declared_digest, expected)
        return parse_manifest(fetched.body, fetched.content_type), digest

    def _walk(self, client: RegistryClient, ref: ImageRef, registry: str, manifest: Manifest, digest: Digest,
              platform: Optional[Platform], depth: int, seen: Set[Tuple[Digest, Optional[Platform]]]) -> Walked:
        """Walk an index into its image manifests. Each (child, platform) is walked once per image: an index
        listing the same child many times at every level would otherwise fetch children**depth manifests."""
        target = Target(ref, registry, platform)
        if isinstance(manifest, ImageManifest):
            blobs = tuple({d.digest: d for d in manifest.blobs}.values())
            caveats = [Finding(Kind.MANIFEST, (target,), digest=digest, image=ref, caveats=(SCHEMA1,),
                                repository=ref.repository)] if manifest.schema1 else []
            return [TargetResult(target, digest, blobs, manifest.artifact)], caveats
        assert isinstance(manifest, IndexManifest)
        if depth >= MAX_INDEX_DEPTH:
            return [], [Finding(Kind.MANIFEST, (target,), digest=digest, image=ref, repository=ref.repository, error=(
                ManifestInvalid(f"indexes nested deeper than {MAX_INDEX_DEPTH} levels")))]
        targets: List[TargetResult] = []
        findings: List[Finding] = []
        for child in manifest.manifests:
            if self.platforms and child.platform is not None and not any(
                    p.matches(child.platform) for p in self.platforms):
                continue
            child_platform = child.platform or platform
            if (child.digest, child_platform) in seen:
                continue
            seen.add((child.digest, child_platform))
            try:
                self.deadline.check(f"resolving {ref}")
                child_manifest, child_digest = self.fetch(client, ref, str(child.digest), child.digest, child.size)
            except RegistryError as exc:
                findings.append(Finding(Kind.MANIFEST, (Target(ref, registry, child_platform),),
                                        digest=child.digest, image=ref, error=exc, size=child.size,
                                        repository=ref.repository))
                continue
            more_targets, more_findings = self._walk(client, ref, registry, child_manifest, child_digest,
                                                     child_platform, depth + 1, seen)
            targets += more_targets
            findings += more_findings
        return targets, findings
