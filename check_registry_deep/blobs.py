"""One verdict per blob across every repository that references it: verify its bytes once, confirm the rest.

A blob is GET and hashed once per registry, through the first repository that serves it; in every other
repository a HEAD confirms its link (a per-repository link can vanish on its own). A blob not chosen for a
deep check this run (rotation) is only HEADed everywhere.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

from .client import RegistryClient
from .deadline import Deadline
from .errors import BlobUnknown, RegistryError, SizeMismatch
from .model import Descriptor, Finding, Mode, Target, TargetResult
from .reference import Digest
from .transfer import BlobTransfer, retried
from .verify import CHUNK_SIZE

#: A note: said in the output, judged OK.
FOREIGN_SKIPPED = "foreign layer skipped (clients fetch it from its urls)"

BlobKey = Tuple[str, Digest]  # (registry, digest): a blob is verified once per registry
Chooser = Callable[[List[Tuple[BlobKey, int]]], Set[BlobKey]]  # (key, size) candidates -> the ones to GET


@dataclass(frozen=True)
class BlobWork:
    """One blob of one registry, every image that references it by repository, and whether to GET it."""

    registry: str
    descriptor: Descriptor
    by_repository: Dict[str, Tuple[Target, ...]]
    deep: bool

    @property
    def everyone(self) -> Tuple[Target, ...]:
        return tuple(dict.fromkeys(t for targets in self.by_repository.values() for t in targets))

    def label(self) -> str:
        first = next(iter(self.by_repository.values()))[0]
        return f"{self.descriptor.kind} {self.descriptor.digest.short()}… of {first}"


def plan(targets: Sequence[TargetResult], choose_deep: Optional[Chooser] = None) -> List[BlobWork]:
    """The blobs of `targets`, once per (registry, digest), largest first: the long transfers start early and
    the small ones fill in around them. `choose_deep` picks those to GET (default: all)."""
    uses: Dict[BlobKey, Dict[str, List[Target]]] = {}
    descriptors: Dict[BlobKey, Descriptor] = {}
    for result in targets:
        for descriptor in result.blobs:
            key = (result.target.registry, descriptor.digest)
            descriptors.setdefault(key, descriptor)
            uses.setdefault(key, {}).setdefault(result.target.image.repository, []).append(result.target)
    candidates = [(key, d.size or 0) for key, d in descriptors.items() if not d.foreign]
    deep = choose_deep(candidates) if choose_deep else {key for key, _ in candidates}
    work = [BlobWork(key[0], descriptors[key], {r: tuple(t) for r, t in by_repository.items()}, key in deep)
            for key, by_repository in uses.items()]
    return sorted(work, key=lambda w: -(w.descriptor.size or 0))


class BlobChecker:
    def __init__(self, deadline: Deadline, cancelled: threading.Event, chunk_size: int = CHUNK_SIZE):
        self.deadline = deadline
        self.cancelled = cancelled
        self.chunk_size = chunk_size

    def check(self, client: RegistryClient, work: BlobWork) -> List[Finding]:
        descriptor = work.descriptor
        if descriptor.foreign:
            return [Finding(descriptor.kind, work.everyone, digest=descriptor.digest, notes=(FOREIGN_SKIPPED,),
                            size=descriptor.size, mode=Mode.SKIPPED)]
        repositories = list(work.by_repository)
        if not work.deep:
            findings, missing = self._confirm_presence(client, work, repositories)
            if not findings and len(missing) < len(repositories):
                findings.append(Finding(descriptor.kind, work.everyone, digest=descriptor.digest, size=descriptor.size,
                                        mode=Mode.PRESENT))
            return findings + [self._link_lost(work, repository, gone, None) for repository, gone in missing]
        missing = []
        for position, repository in enumerate(repositories):
            transfer = BlobTransfer(client, repository, descriptor, cancelled=self.cancelled, deadline=self.deadline,
                                    chunk_size=self.chunk_size)
            try:
                (caveats, read), retries = client.retrier.run(transfer.run, f"blob {descriptor.digest.short()}")
            except BlobUnknown as exc:
                missing.append((repository, exc))
                continue
            except RegistryError as exc:
                return [Finding(descriptor.kind, work.everyone, digest=descriptor.digest, error=exc,
                                size=descriptor.size, repository=repository)]
            retries += transfer.repeated
            if retries:
                caveats += (retried(retries),)
            verified = Finding(descriptor.kind, work.everyone, digest=descriptor.digest, caveats=caveats,
                               size=descriptor.size, bytes_read=read, retries=retries, repository=repository)
            findings, more_missing = self._confirm_presence(client, work, repositories[position + 1:])
            return [verified] + findings + [self._link_lost(work, r, gone, repository)
                                            for r, gone in missing + more_missing]
        code = missing[0][1].code or "BLOB_UNKNOWN"
        return [Finding(descriptor.kind, work.everyone, digest=descriptor.digest, size=descriptor.size,
                        error=BlobUnknown(f"404 {code} in every repository that references it "
                                          f"({', '.join(repositories)})", 404, code))]

    @staticmethod
    def _confirm_presence(client: RegistryClient, work: BlobWork, repositories: Sequence[str]
                          ) -> Tuple[List[Finding], List[Tuple[str, BlobUnknown]]]:
        """HEAD the blob in each repository: cheap proof that its link is still there (not of its bytes).
        Returns the failures, and the repositories that answered 404."""
        descriptor = work.descriptor
        findings: List[Finding] = []
        missing: List[Tuple[str, BlobUnknown]] = []
        for repository in repositories:
            try:
                length = client.head_blob(repository, descriptor.digest)
                if length is not None and descriptor.size is not None and length != descriptor.size:
                    raise SizeMismatch(f"HEAD in {repository} declares {length} bytes, descriptor says "
                                       f"{descriptor.size}")
            except BlobUnknown as exc:
                missing.append((repository, exc))
            except RegistryError as exc:
                findings.append(Finding(descriptor.kind, tuple(dict.fromkeys(work.by_repository[repository])),
                                        digest=descriptor.digest, error=exc, size=descriptor.size,
                                        repository=repository))
        return findings, missing

    @staticmethod
    def _link_lost(work: BlobWork, repository: str, gone: BlobUnknown, verified_in: Optional[str]) -> Finding:
        where = f"the blob itself verified in {verified_in}" if verified_in else "HEAD only this run"
        descriptor = work.descriptor
        return Finding(
            descriptor.kind, tuple(dict.fromkeys(work.by_repository[repository])), digest=descriptor.digest,
            error=BlobUnknown(f"404 {gone.code or 'BLOB_UNKNOWN'} in {repository} (the repository's link is gone; "
                              f"{where})", 404, gone.code), size=descriptor.size, repository=repository)
