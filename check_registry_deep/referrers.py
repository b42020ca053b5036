"""Attached artifacts (--referrers, --require-signature, --cosign-key): what refers to an image's digest, each
verified like an image, and the signatures among them.

Discovery, per subject digest: the OCI 1.1 referrers API (`Link` pages, bounded, loops refused); when it answers
404 or not an index, the fallback tag `sha256-<hex>` (a registry whose API answers is not asked for the tag); and
cosign's tags `sha256-<hex>.sig`, `.att`, `.sbom`. An artifact found two ways is verified once and reported with
the first. Each artifact's manifest is fetched by digest and checked against it, its embedded `data` checked; its
blobs join the run's blob plan (GET and hashed once per run, shared with images). Referrers of referrers are
followed, bounded in depth and count; what a bound leaves out is said (a caveat), never silent.

Gathering only: facts and typed errors, no Nagios states.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Deque, Dict, FrozenSet, List, Optional, Sequence, Set, Tuple

from .client import RegistryClient
from .deadline import Deadline
from .discovery import tags
from .errors import (
    CheckError,
    DeadlineExceeded,
    DigestMismatch,
    ManifestInvalid,
    NotFound,
    NotSigned,
    SignatureInvalid,
    SignatureMismatch,
    SignatureProblem,
    SizeMismatch,
    Truncated,
)
from .manifests import MAX_MANIFEST_BYTES, OCI_INDEX, Descriptor, ImageManifest, IndexManifest, Manifest, parse_manifest
from .model import ArtifactId, ArtifactResult, Finding, FoundBy, Kind, Mode, Target, TargetResult
from .options import DiscoveryOptions
from .reference import Digest, ImageRef
from .resolve import Resolver
from .signatures import (
    COSIGN_SIGNATURE_ANNOTATION,
    SIGNATURE_ARTIFACT_TYPES,
    SIGSTORE_BUNDLE_TYPE,
    SIMPLE_SIGNING_MEDIA_TYPE,
)

#: Referrers of referrers of ...: how deep the walk verifies below an image (1: only the image's own referrers);
#: the level below is looked up and counted, so that what the bound leaves out is said.
MAX_DEPTH = 3
#: Artifacts from referrers lists verified per image; the rest are counted and said (`N referrers not verified:
#: bound reached`). Cosign's tags come on top (at most three a subject).
MAX_ARTIFACTS = 64
#: Pages of the referrers API read per subject.
MAX_PAGES = 16
COSIGN_SUFFIXES = (".sig", ".att", ".sbom")
#: Caveats (judged WARNING).
BOUND_REACHED = "{count} referrers not verified: bound reached"
LINK_LOOP = "referrers API: its Link header points back at a page already read; the rest not read"
TOO_MANY_PAGES = f"referrers API: more than {MAX_PAGES} pages; the rest not read: bound reached"
FILTERED = "referrers API applied filters nobody asked for ({filters}): its list may leave referrers out"


@dataclass(frozen=True)
class Policy:
    """What to look for: every referrer (--referrers), a signature (--require-signature), and the key a cosign
    signature must verify with (--cosign-key, loaded: signatures.CosignKey)."""

    follow: bool = False
    require_signature: bool = False
    key: Any = None

    @property
    def enabled(self) -> bool:
        return self.follow or self.require_signature


@dataclass(frozen=True)
class Listed:
    """An artifact as discovery found it: from a referrers list (its descriptor) or a cosign tag (its manifest,
    already fetched and checked against the registry's Docker-Content-Digest)."""

    artifact: ArtifactId
    size: Optional[int] = None
    manifest: Optional[Manifest] = None


@dataclass
class Walk:
    """What one image's walk found: artifacts, findings, and for each subject digest the signatures' evidence."""

    artifacts: List[ArtifactResult] = field(default_factory=list)
    targets: List[TargetResult] = field(default_factory=list)  # the artifacts' blobs for the run's blob plan
    findings: List[Finding] = field(default_factory=list)
    signatures: Dict[Digest, List[Evidence]] = field(default_factory=dict)
    signed: List[Tuple[Target, bool]] = field(default_factory=list)


@dataclass
class _TagList:
    """A repository's tags, listed at most once a run (by the first walk that needs them)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    done: bool = False
    tags: Optional[FrozenSet[str]] = None


@dataclass(frozen=True)
class Evidence:
    """One signature found for a subject: whether it verified with the key (None: no key given) and the digests
    it names."""

    verified: Optional[bool]
    names: Tuple[Digest, ...] = ()


def cosign_tag(digest: Digest, suffix: str = "") -> str:
    return f"{digest.algorithm}-{digest.hex}{suffix}"


class ReferrerWalker:
    """Finds and verifies the artifacts attached to one image, within the run's deadline."""

    def __init__(self, policy: Policy, deadline: Deadline, resolver: Resolver):
        self.policy = policy
        self.deadline = deadline
        self.resolver = resolver
        #: Registries whose referrers API answered 404: they have none (a registry with the API must not answer
        #: 404, the distribution spec says), so their other subjects go straight to the fallback tag.
        self.without_api: Set[str] = set()
        self._lock = threading.Lock()
        self._tag_lists: Dict[Tuple[str, str], _TagList] = {}

    def walk(self, client: RegistryClient, ref: ImageRef, top: Digest, targets: Sequence[TargetResult]) -> Walk:
        """`top` is what `ref` resolved to; `targets` its image manifests (one per selected platform). A referrer of
        `top` belongs to every target (a signature of an index covers its children), a child's to that child's."""
        walk = Walk()
        if not targets:
            return walk
        owners_all = tuple(t.target for t in targets)
        subjects: List[Tuple[Digest, Tuple[Target, ...], Target]] = [
            (top, owners_all, Target(ref, owners_all[0].registry) if len(targets) > 1 or
             targets[0].manifest_digest != top else owners_all[0])]
        subjects += [(t.manifest_digest, (t.target,), t.target) for t in targets if t.manifest_digest != top]
        seen: Set[Digest] = {top, *(t.manifest_digest for t in targets)}
        queue: Deque[Tuple[Digest, Tuple[Target, ...], Target, int]] = deque(
            (digest, owners, where, 1) for digest, owners, where in subjects)
        skipped = 0
        while queue:
            self.deadline.check("looking for referrers")
            subject, owners, where, depth = queue.popleft()
            listed, problems = self.discover(client, ref, subject, owners, signatures_only=not self.policy.follow)
            walk.findings += problems
            for item in listed:
                if item.artifact.digest in seen:
                    continue  # found two ways, or a cycle: verified once, reported with the first
                seen.add(item.artifact.digest)
                if depth > MAX_DEPTH or (len(walk.artifacts) >= MAX_ARTIFACTS and
                                         item.artifact.found_by != FoundBy.COSIGN):
                    # below the deepest level, referrers are only counted (a bound reached is said, never silent);
                    # a long list must not crowd out cosign's own tags (three a subject at most): the signature
                    skipped += 1
                    continue
                result, blobs, findings = self.verify(client, ref, item, subject, owners, where)
                walk.artifacts.append(result)
                walk.findings += findings
                if blobs:
                    walk.targets.append(TargetResult(result.target, item.artifact.digest, blobs, artifact=True))
                if result.resolved and self.policy.require_signature and self._is_signature(item, result):
                    evidence = self.evidence(client, ref, result, walk) if self.policy.key is not None else \
                        Evidence(None)
                    if evidence is not None:
                        walk.signatures.setdefault(subject, []).append(evidence)
                if result.resolved and self.policy.follow:
                    queue.append((item.artifact.digest, owners, where, depth + 1))
        if skipped:
            walk.findings.append(Finding(Kind.REFERRERS, owners_all, digest=top, repository=ref.repository,
                                         caveats=(BOUND_REACHED.format(count=skipped),)))
        if self.policy.require_signature:
            walk.signed, missing = self.judge_signatures(top, targets, walk.signatures)
            walk.findings += missing
        return walk

    # -- discovery ---------------------------------------------------------------------------------------

    def discover(self, client: RegistryClient, ref: ImageRef, subject: Digest, owners: Tuple[Target, ...],
                 signatures_only: bool) -> Tuple[List[Listed], List[Finding]]:
        """Every artifact that names `subject`, in the order found: the API (or the fallback tag), then cosign's
        tags. With `signatures_only`, only signatures (and only the `.sig` tag)."""
        listed: List[Listed] = []
        findings: List[Finding] = []
        try:
            entries, found_by, caveats = self.list_referrers(client, ref, subject)
        except DeadlineExceeded:
            raise
        except CheckError as exc:
            entries, found_by, caveats = (), FoundBy.API, ()
            findings.append(Finding(Kind.REFERRERS, owners, digest=subject, error=exc, repository=ref.repository))
        findings += [Finding(Kind.REFERRERS, owners, digest=subject, caveats=(c,), repository=ref.repository)
                     for c in caveats]
        for entry in entries:
            if signatures_only and entry.artifact_type not in SIGNATURE_ARTIFACT_TYPES:
                continue
            listed.append(Listed(ArtifactId(entry.digest, entry.artifact_type, found_by), entry.size))
        for suffix in COSIGN_SUFFIXES[:1] if signatures_only else COSIGN_SUFFIXES:
            tag = cosign_tag(subject, suffix)
            if not self._tagged(client, ref, tag):
                continue
            try:
                manifest, digest = self.resolver.fetch(client, ref, tag, None)
            except NotFound:
                continue
            except DeadlineExceeded:
                raise
            except CheckError as exc:
                findings.append(Finding(Kind.MANIFEST, owners, image=dataclasses.replace(ref, tag=tag, digest=None),
                                        error=exc, repository=ref.repository))
                continue
            listed.append(Listed(ArtifactId(digest, manifest.reported_type, FoundBy.COSIGN, tag),
                                 manifest=manifest))
        return listed, findings

    def list_referrers(self, client: RegistryClient, ref: ImageRef, subject: Digest
                       ) -> Tuple[Tuple[Descriptor, ...], FoundBy, Tuple[str, ...]]:
        """The referrers API's list, page by page; on 404 or an answer that is not an index, the fallback tag's."""
        entries: List[Descriptor] = []
        caveats: Tuple[str, ...] = ()
        path: Optional[str] = client.referrers_path(ref.repository, subject)
        read: Set[str] = set()
        if client.base_url in self.without_api:
            return self.fallback(client, ref, subject), FoundBy.TAG, ()
        while path is not None:
            if path in read:
                caveats += (LINK_LOOP,)
                break
            if len(read) >= MAX_PAGES:
                caveats += (TOO_MANY_PAGES,)
                break
            read.add(path)
            try:
                page = client.get_referrers(path)
            except NotFound:
                if entries:
                    raise
                self.without_api.add(client.base_url)
                return self.fallback(client, ref, subject), FoundBy.TAG, ()
            index = self._index(page.body, page.content_type)
            if index is None:
                if entries:
                    raise ManifestInvalid(f"referrers page {path.split('?')[0]} is not an OCI index")
                return self.fallback(client, ref, subject), FoundBy.TAG, ()
            entries += index.manifests
            if page.filters_applied:  # we ask unfiltered; a list filtered anyway is not the whole list
                caveats = tuple(dict.fromkeys(caveats + (FILTERED.format(filters=", ".join(page.filters_applied)),)))
            path = page.next_path
        return tuple(entries), FoundBy.API, caveats

    def tags_of(self, client: RegistryClient, repository: str) -> Optional[FrozenSet[str]]:
        """The repository's tags, listed once per run: one request (a page) tells which of the fallback and cosign
        tags exist, where asking for each would cost four GETs an image, nearly all 404. None when the listing
        fails: then each tag is asked for itself."""
        with self._lock:
            listing = self._tag_lists.setdefault((client.base_url, repository), _TagList())
        with listing.lock:
            if not listing.done:
                try:
                    listing.tags = frozenset(str(ref.tag) for ref in tags(
                        DiscoveryOptions((repository,)), client, repository))
                except DeadlineExceeded:
                    raise
                except CheckError:
                    listing.tags = None
                listing.done = True
            return listing.tags

    def _tagged(self, client: RegistryClient, ref: ImageRef, tag: str) -> bool:
        """Whether `tag` may exist: not when the repository's tag list, read once, does not have it."""
        listed = self.tags_of(client, ref.repository)
        return listed is None or tag in listed

    def fallback(self, client: RegistryClient, ref: ImageRef, subject: Digest) -> Tuple[Descriptor, ...]:
        """The fallback tag `sha256-<hex>`: an index listing the referrers (none when the tag does not exist)."""
        if not self._tagged(client, ref, cosign_tag(subject)):
            return ()
        try:
            manifest, _ = self.resolver.fetch(client, ref, cosign_tag(subject), None)
        except NotFound:
            return ()
        if not isinstance(manifest, IndexManifest):
            raise ManifestInvalid(f"fallback tag {cosign_tag(subject)} is not an index of referrers")
        return manifest.manifests

    @staticmethod
    def _index(body: bytes, content_type: str) -> Optional[IndexManifest]:
        try:
            manifest = parse_manifest(body, content_type or OCI_INDEX)
        except CheckError:
            return None
        return manifest if isinstance(manifest, IndexManifest) else None

    # -- verification ------------------------------------------------------------------------------------

    def verify(self, client: RegistryClient, ref: ImageRef, item: Listed, subject: Digest,
               owners: Tuple[Target, ...], where: Target) -> Tuple[ArtifactResult, Tuple[Descriptor, ...],
                                                                  List[Finding]]:
        """The artifact's manifest against its digest (and listed size), its embedded data; its blobs for the plan."""
        digest = item.artifact.digest
        manifest = item.manifest
        target = Target(where.image, where.registry, where.platform, item.artifact)
        try:
            if manifest is None:
                manifest, _ = self.resolver.fetch(client, ref, str(digest), digest, item.size)
        except DeadlineExceeded:
            raise
        except CheckError as exc:
            finding = Finding(Kind.MANIFEST, (target,), digest=digest, error=exc, repository=ref.repository)
            return ArtifactResult(target, subject, owners), (), [finding]
        if not item.artifact.artifact_type and manifest.reported_type:  # a list entry that named no type
            target = Target(where.image, where.registry, where.platform,
                            ArtifactId(digest, manifest.reported_type, item.artifact.found_by, item.artifact.tag))
        findings: List[Finding] = []
        blobs: List[Descriptor] = []
        manifests: List[ImageManifest] = []
        if isinstance(manifest, IndexManifest):
            for child in manifest.manifests[:MAX_ARTIFACTS]:
                findings += self._embedded(child, target, ref)
                try:
                    fetched, _ = self.resolver.fetch(client, ref, str(child.digest), child.digest, child.size)
                except DeadlineExceeded:
                    raise
                except CheckError as exc:
                    findings.append(Finding(Kind.MANIFEST, (target,), digest=child.digest, error=exc,
                                            repository=ref.repository))
                    continue
                if isinstance(fetched, ImageManifest):
                    manifests.append(fetched)
        else:
            manifests.append(manifest)
        for image_manifest in manifests:
            for descriptor in image_manifest.blobs:
                findings += self._embedded(descriptor, target, ref)
                blobs.append(descriptor)
        unique = tuple({d.digest: d for d in blobs}.values())
        return ArtifactResult(target, subject, owners, unique, resolved=True), unique, findings

    @staticmethod
    def _embedded(descriptor: Descriptor, target: Target, ref: ImageRef) -> List[Finding]:
        """A descriptor's embedded `data` must be the content its digest and size name."""
        if descriptor.data is None:
            return []
        try:
            data = base64.b64decode(descriptor.data, validate=True)
        except (binascii.Error, ValueError):
            error: CheckError = ManifestInvalid("embedded data is not valid base64")
        else:
            actual = Digest.of(data, descriptor.digest.algorithm)
            if descriptor.size is not None and len(data) != descriptor.size:
                error = SizeMismatch(f"embedded data is {len(data)} bytes, descriptor says {descriptor.size}")
            elif actual != descriptor.digest:
                error = DigestMismatch(f"embedded data hashes to {actual}")
            else:
                return []
        return [Finding(descriptor.kind, (target,), digest=descriptor.digest, error=error, size=descriptor.size,
                        repository=ref.repository)]

    # -- signatures ----------------------------------------------------------------------------------------

    @staticmethod
    def _is_signature(item: Listed, result: ArtifactResult) -> bool:
        if item.artifact.tag.endswith(".sig") or item.artifact.artifact_type in SIGNATURE_ARTIFACT_TYPES:
            return True
        return any(d.media_type in (SIMPLE_SIGNING_MEDIA_TYPE, SIGSTORE_BUNDLE_TYPE) for d in result.blobs)

    def evidence(self, client: RegistryClient, ref: ImageRef, result: ArtifactResult, walk: Walk
                 ) -> Optional[Evidence]:
        """Does any of the signature's layers verify with the key, and which digests does it name? None when it
        has no cosign layer (a Notary signature: not one a cosign key can pass). Its payloads are read here (and
        counted as verified blobs), not again by the blob plan."""
        from . import signatures  # cryptography only with a key

        names: List[Digest] = []
        verified = False
        read: List[Digest] = []
        for layer in result.blobs:
            kind = ("simple" if layer.media_type == SIMPLE_SIGNING_MEDIA_TYPE and
                    layer.annotation(COSIGN_SIGNATURE_ANNOTATION) else
                    "bundle" if layer.media_type == SIGSTORE_BUNDLE_TYPE else "")
            if not kind:
                continue
            payload = self.read_small_blob(client, ref, layer, result.target, walk)
            read.append(layer.digest)
            if payload is None:
                continue
            try:
                if kind == "simple":
                    names.append(signatures.verify_simple_signing(
                        self.policy.key, payload, layer.annotation(COSIGN_SIGNATURE_ANNOTATION) or ""))
                else:
                    names += signatures.verify_sigstore_bundle(self.policy.key, payload)
                verified = True
            except SignatureInvalid:
                continue
        if not read:
            return None
        for position, planned in enumerate(walk.targets):  # the blob plan leaves out what was read here
            if planned.target == result.target:
                walk.targets[position] = TargetResult(planned.target, planned.manifest_digest, tuple(
                    d for d in planned.blobs if d.digest not in read), artifact=True)
        return Evidence(verified, tuple(names))

    def read_small_blob(self, client: RegistryClient, ref: ImageRef, descriptor: Descriptor, target: Target,
                        walk: Walk) -> Optional[bytes]:
        """A signature's payload or bundle, GET once, checked against its descriptor; a finding either way."""
        size = descriptor.size or 0
        try:
            if size > MAX_MANIFEST_BYTES:
                raise SizeMismatch(f"signature payload of {size} bytes exceeds the "
                                   f"{MAX_MANIFEST_BYTES // 1048576} MiB cap")

            def get() -> bytes:
                with client.open_blob(ref.repository, descriptor.digest, size + 1) as body:
                    return b"".join(iter(lambda: body.read(1 << 20), b""))

            data, retries = client.retrier.run(get, f"blob {descriptor.digest.short()}")
            if len(data) < size:
                raise Truncated(f"got {len(data)} of {size} bytes")
            if len(data) > size:
                raise SizeMismatch(f"too long: got more than the {size} bytes declared")
            actual = Digest.of(data, descriptor.digest.algorithm)
            if actual != descriptor.digest:
                raise DigestMismatch(f"digest mismatch: got {actual}")
        except DeadlineExceeded:
            raise
        except CheckError as exc:
            walk.findings.append(Finding(descriptor.kind, (target,), digest=descriptor.digest, error=exc, size=size,
                                         repository=ref.repository))
            return None
        walk.findings.append(Finding(descriptor.kind, (target,), digest=descriptor.digest, size=size, bytes_read=size,
                                     retries=retries, repository=ref.repository, mode=Mode.VERIFIED))
        return data

    def judge_signatures(self, top: Digest, targets: Sequence[TargetResult],
                         evidence: Dict[Digest, List[Evidence]]) -> Tuple[List[Tuple[Target, bool]], List[Finding]]:
        """Each image target is signed when a signature for the image's digest (covering an index's children) or
        its own passes: found, and with a key verified and naming the digest it was found for."""
        signed: List[Tuple[Target, bool]] = []
        findings: List[Finding] = []
        for result in targets:
            subjects = list(dict.fromkeys((top, result.manifest_digest)))
            found = [(subject, e) for subject in subjects for e in evidence.get(subject, [])]
            error: Optional[SignatureProblem] = None
            if not found:
                error = NotSigned("not signed")
            elif self.policy.key is not None and not any(e.verified and s in e.names for s, e in found):
                other = next(((s, e.names) for s, e in found if e.verified and e.names), None)
                error = (SignatureMismatch(other[1], other[0]) if other else
                         SignatureInvalid(f"signature does not verify with {self.policy.key.path}"))
            signed.append((result.target, error is None))
            if error is not None:
                findings.append(Finding(Kind.SIGNATURE, (result.target,), digest=result.manifest_digest, error=error,
                                        repository=result.target.image.repository))
        return signed, findings
