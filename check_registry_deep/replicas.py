"""Replica comparison: does another registry (a datacenter's copy, a mirror) serve the same manifest for an
image, and every blob of it? Container sync, for one, silently loses on one side what the other has."""

from __future__ import annotations

from typing import List, Sequence

from .client import RegistryClient
from .errors import CheckError, RegistryError
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
    except CheckError as exc:
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
