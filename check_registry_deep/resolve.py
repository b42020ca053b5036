"""Resolving: an image reference, through its manifest and any indexes, into targets (image, platform, blobs).

Every manifest is checked against the digest it was requested by (or the registry's Docker-Content-Digest),
every index child against its descriptor's size. What fails becomes a manifest Finding for the image and
platform it breaks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

from .client import RegistryClient
from .deadline import Deadline
from .errors import (
    HTTPStatusError,
    ManifestInvalid,
    RegistryError,
    RegistryFailing,
    SizeMismatch,
    StorageError,
)
from .manifests import ImageManifest, IndexManifest, Manifest, parse_manifest
from .model import EmptySelection, Finding, Kind, RunProblem, Selection, Target, TargetResult, Trouble
from .reference import Digest, ImageRef, Platform
from .verify import check_manifest_digest

MAX_INDEX_DEPTH = 8
#: A caveat (judged WARNING).
SCHEMA1 = "registry answered a schema 2 request with a deprecated schema 1 manifest"

Walked = Tuple[List[TargetResult], List[Finding]]


@dataclass(frozen=True)
class Resolution:
    """What one reference resolved to: its manifest's digest (None if it did not), its targets, what failed, and
    each index in it with no child for --platform."""

    digest: Optional[Digest]
    targets: Tuple[TargetResult, ...]
    findings: Tuple[Finding, ...]
    empty: Tuple[EmptySelection, ...] = ()


def registry_failures(findings: Sequence[Finding], via: Callable[[str], str] = lambda registry: ""
                      ) -> Tuple[List[Finding], List[RunProblem]]:
    """Manifests a registry answered with 5xx are the registry failing (its storage, its database), not broken
    content: one run problem per registry and answer (`the registry answers 500 UNKNOWN for 9 manifests`), with
    every image it breaks, in place of a finding per manifest. `via(registry)` names the backend --connect-to
    asked (` via HOST:PORT`). Returns the other findings and those problems."""
    failing: Dict[Tuple[str, str], List[Finding]] = {}
    rest: List[Finding] = []
    for finding in findings:
        error = finding.error
        if (finding.kind is Kind.MANIFEST and not finding.replica and finding.affected
                and isinstance(error, HTTPStatusError) and error.status >= 500 and not isinstance(error, StorageError)):
            answer = f"{error.status} {error.code}".strip()
            failing.setdefault((finding.affected[0].registry, answer), []).append(finding)
        else:
            rest.append(finding)
    problems = []
    for (registry, answer), same in failing.items():
        count = len({f.label for f in same})
        error = RegistryFailing(f"the registry{via(registry)} answers {answer} for {count} "
                                f"manifest{'s' if count != 1 else ''}")
        problems.append(RunProblem(Trouble.REGISTRY, error, registry,
                                   tuple(dict.fromkeys(t for f in same for t in f.affected)),
                                   max(f.finished for f in same)))
    return rest, problems


class Resolver:
    def __init__(self, deadline: Deadline, platforms: Sequence[Platform] = ()):
        self.deadline = deadline
        self.platforms = tuple(platforms)

    def resolve(self, client: RegistryClient, ref: ImageRef, registry: str) -> Resolution:
        try:
            manifest, digest = self.fetch(client, ref, ref.reference, ref.digest)
        except RegistryError as exc:  # a DeadlineExceeded goes on: not reached is not checked, never broken
            return Resolution(None, (), (Finding(Kind.MANIFEST, (Target(ref, registry),), digest=ref.digest, image=ref,
                                                 error=exc, repository=ref.repository),))
        empty: List[EmptySelection] = []
        targets, findings = self._walk(client, ref, registry, manifest, digest, None, 0, set(), empty)
        return Resolution(digest, tuple(targets), tuple(findings), tuple(empty))

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
              platform: Optional[Platform], depth: int, seen: Set[Tuple[Digest, Optional[Platform]]],
              empty: List[EmptySelection]) -> Walked:
        """Walk an index into its image manifests. Each (child, platform) is walked once per image: an index
        listing the same child many times at every level would otherwise fetch children**depth manifests. An index
        none of whose children --platform selects goes into `empty`."""
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
        chosen = [child for child in manifest.manifests if not self.platforms or child.platform is None
                  or any(p.matches(child.platform) for p in self.platforms)]
        if manifest.manifests and not chosen:
            empty.append(EmptySelection(Selection.PLATFORM, ", ".join(str(p) for p in self.platforms), str(ref),
                                        tuple(dict.fromkeys(str(c.platform) for c in manifest.manifests)), target))
        for child in chosen:
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
                                                     child_platform, depth + 1, seen, empty)
            targets += more_targets
            findings += more_findings
        return targets, findings
