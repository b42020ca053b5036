"""Replica comparison: does another registry (a datacenter's copy, a mirror) serve the same manifest for an
image, and every blob of it? Container sync, for one, silently loses on one side what the other has."""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Sequence, Tuple, Union

from .client import RegistryClient
from .errors import CheckError, HTTPStatusError, RegistryError, StorageError
from .model import Finding, Kind, Target, TargetResult
from .reference import Digest, ImageRef
from .verify import check_manifest_digest


def compare_replica(client: RegistryClient, ref: ImageRef, ours: Digest, primary: str,
                    resolved: Sequence[TargetResult]) -> List[Finding]:
    """`resolved`: what `ref` resolved to on `primary` (digest `ours`); `client` talks to the replica."""
    replica = client.base_url
    targets = tuple(t.target for t in resolved) or (Target(ref, primary),)
    try:
        fetched = client.get_manifest(ref.repository, ref.reference)
        theirs = check_manifest_digest(fetched.body, fetched.declared_digest, ref.digest)
    except RegistryError as exc:  # a DeadlineExceeded goes on: not compared is never a broken replica
        return [Finding(Kind.MANIFEST, targets, image=ref, replica=replica, error=exc, repository=ref.repository)]
    if theirs != ours:
        return [Finding(Kind.MANIFEST, targets, image=ref, replica=replica, repository=ref.repository, caveats=(
            f"replica serves {theirs} where {primary} serves {ours}",))]
    findings: List[Finding] = []
    blobs = {d.digest: d for t in resolved for d in t.blobs if not d.foreign}
    for descriptor in blobs.values():
        try:
            client.head_blob(ref.repository, descriptor.digest)
        except RegistryError as exc:
            affected = tuple(t.target for t in resolved if descriptor in t.blobs)
            findings.append(Finding(descriptor.kind, affected, digest=descriptor.digest, replica=replica, error=exc,
                                    size=descriptor.size, repository=ref.repository))
    return findings


def merge_by_blob(findings: Sequence[Finding]) -> List[Finding]:
    """One finding per blob and replica: a blob's HEADs that failed on a replica in several repositories (each
    image's job asked its own) are one lost blob, counted once, naming every repository where it failed. Other
    findings pass unchanged, in their order; a merged one takes the place of its first."""
    groups: Dict[Tuple[str, str], List[Finding]] = {}
    order: List[Union[Finding, Tuple[str, str]]] = []
    for finding in findings:
        if finding.replica and finding.kind.blob and finding.digest is not None and finding.error is not None:
            key = (finding.replica, str(finding.digest))
            if key not in groups:
                order.append(key)
            groups.setdefault(key, []).append(finding)
        else:
            order.append(finding)
    return [_merged(groups[item]) if isinstance(item, tuple) else item for item in order]


def _answer(error: CheckError) -> str:
    """What a repository's HEAD got, without the repository: `404 BLOB_UNKNOWN`; else the error's own words."""
    if isinstance(error, HTTPStatusError) and not isinstance(error, StorageError):
        return f"{error.status} {error.code}".strip()
    return str(error)


def _merged(same: List[Finding]) -> Finding:
    by_answer: Dict[str, List[str]] = {}
    for finding in same:
        assert finding.error is not None
        by_answer.setdefault(_answer(finding.error), []).append(finding.repository)
    parts = []
    for answer, repositories in by_answer.items():
        names = sorted(set(repositories))
        where = names[0] if len(names) == 1 else f"{len(names)} repositories ({', '.join(names)})"
        parts.append(f"{answer} in {where}")
    first = same[0].error
    message = "; ".join(parts)
    if len(by_answer) == 1 and isinstance(first, HTTPStatusError) and not isinstance(first, StorageError):
        error: CheckError = type(first)(message, first.status, first.code)
    elif len(same) == 1 and first is not None:
        error = first
    else:
        error = RegistryError(message)
    affected = tuple(dict.fromkeys(t for f in same for t in f.affected))
    return dataclasses.replace(same[0], error=error, affected=affected)
