"""Artifacts attached to images, pushed over the real registry's HTTP API, its own garbage collector, and the
referrers-API stand-in.

- `push_referrer`: an OCI 1.1 artifact manifest with `subject` (an SBOM, an attestation, a sigstore bundle), pushed
  by digest (untagged, as every referrer is); distribution 2.8 stores `subject` and `artifactType` as they are.
- `push_fallback_index`: the `sha256-<hex>` tag, an OCI index listing the referrers, as clients write it for a
  registry without the referrers API.
- `push_cosign_signature`: cosign's legacy `sha256-<hex>.sig` manifest (simple-signing layers, the signature in
  the `dev.cosignproject.cosign/signature` annotation), signed by registry_lab.signing (a stand-in signer).
- `garbage_collect`: `docker-registry garbage-collect --delete-untagged`, the registry stopped, as an operator runs
  it. It deletes an untagged referrer (its revision link and blobs) while the fallback index still lists it; it
  also deletes the untagged children of multi-platform indexes and aborts on a repository without tags.
- `ReferrersFront`: A STAND-IN OF OURS. No packaged registry implements `GET /v2/<name>/referrers/<digest>`
  (distribution 2.8 and 3.x answer 404), so this small front over the real registry answers it from what the
  registry holds (every manifest revision in the repository whose `subject` names the digest, read from its
  storage), with `Link` pagination, and passes everything else through unchanged.
"""

from __future__ import annotations

import base64
import json
import subprocess
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence
from urllib.parse import parse_qs, urlsplit

from check_registry_deep.signatures import (
    COSIGN_SIGNATURE_ANNOTATION,
    SIGSTORE_BUNDLE_TYPE,
    SIMPLE_SIGNING_MEDIA_TYPE,
)

from .faults import Exchange, FaultProxy
from .images import OCI_EMPTY, OCI_INDEX, OCI_MANIFEST, Image, Layer, push_image, push_index, random_bytes
from .registry import REGISTRY_BINARY, LocalRegistry, sha256

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
SPDX = "application/spdx+json"
IN_TOTO = "application/vnd.in-toto+json"
EMPTY_CONFIG = b"{}"


@dataclass(frozen=True)
class Artifact:
    """What was pushed: the manifest's digest, size and media type, its artifact type, and its blobs."""

    repository: str
    digest: str
    size: int
    media_type: str
    artifact_type: str
    blobs: tuple

    def descriptor(self) -> dict:
        """As a referrers list (the API or the fallback index) names it."""
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size,
                "artifactType": self.artifact_type}


def _subject(registry: LocalRegistry, subject: Image) -> dict:
    body = registry.blob_path(subject.digest).read_bytes()
    return {"mediaType": subject.media_type, "digest": subject.digest, "size": len(body)}


def push_artifact_manifest(registry: LocalRegistry, repository: str, layers: Sequence[Layer], *,
                           artifact_type: Optional[str], subject: Optional[Image] = None,
                           config: bytes = EMPTY_CONFIG, config_media_type: str = OCI_EMPTY,
                           tag: Optional[str] = None, annotations: Sequence[Dict[str, str]] = (),
                           embed: bool = False) -> Artifact:
    """Push blobs and an OCI manifest (by digest, or under `tag`). `annotations` go on the layers in order;
    `embed` copies the config into its descriptor's `data`."""
    registry.push_blob(repository, config)
    for layer in layers:
        registry.push_blob(repository, layer.data)
    config_descriptor: dict = {"mediaType": config_media_type, "size": len(config), "digest": sha256(config)}
    if embed:
        config_descriptor["data"] = base64.b64encode(config).decode()
    layer_descriptors = [layer.descriptor() for layer in layers]
    for descriptor, extra in zip(layer_descriptors, annotations, strict=False):  # annotations: the first layers
        descriptor["annotations"] = dict(extra)
    manifest: dict = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config_descriptor,
                      "layers": layer_descriptors}
    if artifact_type:
        manifest["artifactType"] = artifact_type
    if subject is not None:
        manifest["subject"] = _subject(registry, subject)
    body = json.dumps(manifest, indent=2).encode()
    digest = registry.push_manifest(repository, tag or sha256(body), body, OCI_MANIFEST)
    return Artifact(repository, digest, len(body), OCI_MANIFEST, artifact_type or config_media_type,
                    (sha256(config),) + tuple(layer.digest for layer in layers))


def push_referrer(registry: LocalRegistry, subject: Image, artifact_type: str, content: bytes, *,
                  layer_media_type: Optional[str] = None) -> Artifact:
    """An untagged referrer of `subject` (an SBOM, an attestation, a bundle): one layer of `content`."""
    return push_artifact_manifest(registry, subject.repository, [Layer(content, layer_media_type or artifact_type)],
                                  artifact_type=artifact_type, subject=subject)


def fallback_tag(digest: str, suffix: str = "") -> str:
    algorithm, hexpart = digest.split(":", 1)
    return f"{algorithm}-{hexpart}{suffix}"


def push_fallback_index(registry: LocalRegistry, subject: Image, referrers: Iterable[Artifact]) -> str:
    """The fallback tag `sha256-<hex>` of `subject`: an OCI index listing its referrers (2.8 checks they exist)."""
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                       "manifests": [r.descriptor() for r in referrers]}, indent=2).encode()
    return registry.push_manifest(subject.repository, fallback_tag(subject.digest), body, OCI_INDEX)


def write_fallback_index(registry: LocalRegistry, repository: str, subject_digest: str,
                         entries: List[dict]) -> str:
    """A fallback index written straight into storage, the registry's checks bypassed: for hostile lists (entries
    that do not exist, thousands of them, more than 4 MiB)."""
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()
    return registry.write_manifest_on_disk(repository, fallback_tag(subject_digest), body)


def push_cosign_signature(registry: LocalRegistry, subject: Image, payloads: Sequence[tuple], *,
                          for_digest: Optional[str] = None) -> Artifact:
    """Cosign's `.sig` manifest for `subject`: a simple-signing layer per (payload, base64 signature), tagged
    `sha256-<hex>.sig` (of `for_digest`, default the subject's)."""
    config = json.dumps({"architecture": "", "os": "", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [sha256(p) for p, _ in payloads]}}).encode()
    return push_artifact_manifest(
        registry, subject.repository, [Layer(p, SIMPLE_SIGNING_MEDIA_TYPE) for p, _ in payloads],
        artifact_type=None, config=config, config_media_type=OCI_CONFIG,
        tag=fallback_tag(for_digest or subject.digest, ".sig"),
        annotations=[{COSIGN_SIGNATURE_ANNOTATION: s} for _, s in payloads])


def garbage_collect(registry: LocalRegistry, *, delete_untagged: bool = True) -> str:
    """The registry's own garbage collector on its config, the registry stopped (and started again after);
    returns what it printed."""
    registry.stop()
    command = [REGISTRY_BINARY, "garbage-collect"] + (["--delete-untagged"] if delete_untagged else []) + \
        [str(registry.workdir / "config.yml")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    registry.start()
    if done.returncode != 0:
        raise RuntimeError(f"garbage-collect exited with {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout + done.stderr


class ReferrersFront(FaultProxy):
    """A STAND-IN OF OURS for the OCI 1.1 referrers API in front of a real registry (which has none): answers
    `GET /v2/<name>/referrers/<digest>` from the registry's storage, `page_size` descriptors a page with a `Link`
    to the next; everything else passes through. Hostile on request: `link_loop` makes every page's Link point
    back at itself, `filler` pads each descriptor with an annotation of that many bytes (a page over 4 MiB)."""

    def __init__(self, registry: LocalRegistry, *, page_size: int = 50, link_loop: bool = False, filler: int = 0):
        super().__init__(registry.url)
        self.registry = registry
        self.page_size = page_size
        self.link_loop = link_loop
        self.filler = filler
        self.add(r"^GET /v2/.+/referrers/", self._answer, times=None)

    def referrers(self, repository: str, digest: str) -> List[dict]:
        """Every manifest revision of `repository` whose `subject` names `digest`, as descriptors."""
        found = []
        revisions = self.registry.revision_link(repository, "sha256:" + "0" * 64).parent.parent
        for link in sorted(revisions.glob("*/link")) if revisions.is_dir() else ():
            revision = link.read_text().strip()
            path = self.registry.blob_path(revision)
            if not path.is_file() or path.stat().st_size > (4 << 20):
                continue
            try:
                manifest = json.loads(path.read_bytes())
            except ValueError:
                continue
            if not isinstance(manifest, dict) or (manifest.get("subject") or {}).get("digest") != digest:
                continue
            config = manifest.get("config") or {}
            found.append({"mediaType": manifest.get("mediaType", OCI_MANIFEST), "digest": revision,
                          "size": path.stat().st_size,
                          "artifactType": manifest.get("artifactType") or config.get("mediaType", ""),
                          **({"annotations": manifest["annotations"]} if manifest.get("annotations") else {})})
        return found

    def _answer(self, exchange: Exchange) -> None:
        parts = urlsplit(exchange.path)
        repository, _, digest = parts.path[len("/v2/"):].rpartition("/referrers/")
        start = int(parse_qs(parts.query).get("last", ["0"])[0])
        entries = self.referrers(repository, digest)
        page = entries[start:start + self.page_size]
        if self.filler:
            page = [{**entry, "annotations": {"filler": "x" * self.filler}} for entry in page]
        body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": page}).encode()
        headers = [("Content-Type", OCI_INDEX), ("Content-Length", str(len(body)))]
        following = start if self.link_loop else start + self.page_size
        if self.link_loop or following < len(entries):
            headers.append(("Link", f'</v2/{repository}/referrers/{digest}?n={self.page_size}&last={following}>; '
                                    f'rel="next"'))
        exchange.send_head(200, headers)
        exchange.write(body)


@dataclass
class AttachedSet:
    """The images of `seed_attached` and what hangs off them."""

    images: Dict[str, Image]
    artifacts: Dict[str, Artifact]

    def ref(self, name: str) -> str:
        return self.images[name].ref


def seed_attached(registry: LocalRegistry, keys, *, seed: str = "attached") -> AttachedSet:
    """Images with what a deploy needs besides them (every repository tagged, single-platform images only, so
    the registry's garbage collector runs and touches nothing but untagged referrers):

    - `app`: an SBOM referrer (listed by the fallback tag) and a cosign `.sig` signed by `keys`;
    - `bundled`: a cosign 3 style sigstore-bundle referrer (fallback tag) naming its digest;
    - `plain`: nothing attached;
    - `copied`: a `.sig` copied from `app` (it names app's digest);
    - `multi`: a two-platform index (children tagged too) whose `.sig` signs the index.
    """
    from .signing import sign_simple, sigstore_bundle  # cryptography only where keys are made

    def image(name: str, tag: str = "1.0") -> Image:
        return push_image(registry, f"lab/{name}", tag, [Layer(random_bytes(f"{seed}-{name}-{tag}", 8192))], oci=True)

    images = {name: image(name) for name in ("app", "bundled", "plain", "copied")}
    artifacts: Dict[str, Artifact] = {}
    app = images["app"]
    artifacts["sbom"] = push_referrer(registry, app, SPDX, json.dumps(
        {"spdxVersion": "SPDX-2.3", "name": "lab/app", "packages": []}).encode())
    push_fallback_index(registry, app, [artifacts["sbom"]])
    signature = sign_simple(keys, app.digest, f"{registry.host}/lab/app")
    artifacts["sig"] = push_cosign_signature(registry, app, [signature])
    bundled = images["bundled"]
    artifacts["bundle"] = push_referrer(registry, bundled, SIGSTORE_BUNDLE_TYPE,
                                        sigstore_bundle(keys, (bundled.digest,)))
    push_fallback_index(registry, bundled, [artifacts["bundle"]])
    artifacts["copied"] = push_cosign_signature(registry, images["copied"], [signature])
    children = {platform: image("multi", tag) for platform, tag in (("linux/amd64", "amd64"),
                                                                    ("linux/arm64", "arm64"))}
    images["multi"] = push_index(registry, "lab/multi", "1.0", children)
    artifacts["multi-sig"] = push_cosign_signature(registry, images["multi"], [
        sign_simple(keys, images["multi"].digest, f"{registry.host}/lab/multi")])
    return AttachedSet(images, artifacts)
