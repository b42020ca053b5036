"""Manifest media types and parsing: bytes in, immutable descriptors out. No HTTP here."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any, Optional, Tuple, Union

from .errors import CheckError, ManifestInvalid
from .model import Descriptor, Kind
from .reference import Digest, Platform, shown

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"

#: What we send as Accept: the modern types first, schema 1 last.
ACCEPT = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST, f"{SCHEMA1_SIGNED};q=0.5",
                    f"{SCHEMA1};q=0.4"])

IMAGE_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
SCHEMA1_TYPES = frozenset({SCHEMA1_SIGNED, SCHEMA1})
IMAGE_CONFIG_TYPES = frozenset({"application/vnd.docker.container.image.v1+json",
                                "application/vnd.oci.image.config.v1+json"})

MAX_MANIFEST_BYTES = 4 * 1024 * 1024
#: Kinds of content, as the output names them.
LAYER, CONFIG, MANIFEST = Kind.LAYER, Kind.CONFIG, Kind.MANIFEST


@dataclass(frozen=True)
class ImageManifest:
    media_type: str
    config: Optional[Descriptor]
    layers: Tuple[Descriptor, ...]
    artifact_type: str = ""  # OCI 1.1 `artifactType`
    subject: Optional[Digest] = None  # OCI 1.1 `subject`: the manifest this one refers to

    @property
    def reported_type(self) -> str:
        """The artifact type as the referrers API reports it: `artifactType`, else the config's media type."""
        return self.artifact_type or (self.config.media_type if self.config else "")

    @property
    def blobs(self) -> Tuple[Descriptor, ...]:
        return ((self.config,) if self.config else ()) + self.layers

    @property
    def schema1(self) -> bool:
        return self.media_type in SCHEMA1_TYPES

    @property
    def artifact(self) -> bool:
        """An OCI artifact: its config is not an image config, so image-only rules do not apply."""
        return self.config is not None and self.config.media_type not in IMAGE_CONFIG_TYPES


@dataclass(frozen=True)
class IndexManifest:
    media_type: str
    manifests: Tuple[Descriptor, ...]
    artifact_type: str = ""
    subject: Optional[Digest] = None

    @property
    def reported_type(self) -> str:
        return self.artifact_type


Manifest = Union[ImageManifest, IndexManifest]


def _field(obj: dict, key: str, kind: type, where: str, required: bool = True) -> Any:
    value = obj.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ManifestInvalid(f"{where}: expected {key!r} to be {kind.__name__}, got {type(value).__name__}")
    return value


def _descriptor(obj: Any, kind: Kind, where: str) -> Descriptor:
    if not isinstance(obj, dict):
        raise ManifestInvalid(f"{where}: expected an object, got {type(obj).__name__}")
    size = _field(obj, "size", int, where)
    if size < 0:
        raise ManifestInvalid(f"{where}: expected a size >= 0, got {size}")
    urls = _field(obj, "urls", list, where, required=False) or []
    if not all(isinstance(u, str) for u in urls):
        raise ManifestInvalid(f"{where}: expected urls to be strings")
    platform = None
    raw_platform = _field(obj, "platform", dict, where, required=False)
    if raw_platform is not None:
        platform = Platform(str(raw_platform.get("os", "")), str(raw_platform.get("architecture", "")),
                            str(raw_platform.get("variant", "") or ""))
    annotations = obj.get("annotations")
    data = obj.get("data")
    return Descriptor(media_type=_field(obj, "mediaType", str, where), digest=Digest.parse(obj.get("digest")),
                      size=size, kind=kind, urls=tuple(urls), platform=platform,
                      artifact_type=_text(obj.get("artifactType")),
                      annotations=tuple((k, v) for k, v in annotations.items() if isinstance(v, str))
                      if isinstance(annotations, dict) else (),
                      data=data if isinstance(data, str) else None)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _subject(doc: dict) -> Optional[Digest]:
    """The `subject` a manifest refers to; one that is not a valid descriptor is none (never a reason to fail
    the manifest: images that carry odd subjects were judged without it before)."""
    subject = doc.get("subject")
    if not isinstance(subject, dict):
        return None
    try:
        return Digest.parse(subject.get("digest"))
    except CheckError:
        return None


def parse_manifest(body: bytes, content_type: str = "") -> Manifest:
    """Parse manifest bytes; the JSON's own mediaType wins over the Content-Type header."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ManifestInvalid(f"manifest is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ManifestInvalid(f"manifest: expected a JSON object, got {type(doc).__name__}")
    header_type = content_type.split(";")[0].strip()
    media_type = doc.get("mediaType") or header_type
    if doc.get("schemaVersion") == 1:
        return _parse_schema1(doc, header_type if header_type in SCHEMA1_TYPES else SCHEMA1_SIGNED)
    if not isinstance(media_type, str):
        raise ManifestInvalid(f"manifest: expected mediaType to be str, got {type(media_type).__name__}")
    if doc.get("schemaVersion") != 2:  # {"schemaVersion": 7} under an image Content-Type: 0 blobs, an empty OK
        raise ManifestInvalid(f"unsupported manifest: mediaType {media_type[:80]!r}, schemaVersion "
                              f"{shown(doc.get('schemaVersion'))}")
    if "manifests" in doc and media_type not in IMAGE_TYPES:
        children = _field(doc, "manifests", list, "index")
        return IndexManifest(media_type or OCI_INDEX, tuple(
            _descriptor(child, MANIFEST, f"index child {i}") for i, child in enumerate(children)),
            _text(doc.get("artifactType")), _subject(doc))
    if "layers" in doc or "config" in doc or media_type in IMAGE_TYPES:
        layers = _field(doc, "layers", list, "manifest", required=False) or []
        raw_config = doc.get("config")
        config = None if raw_config is None else _descriptor(raw_config, CONFIG, "config")
        return ImageManifest(media_type or OCI_MANIFEST, config, tuple(
            _descriptor(layer, LAYER, f"layer {i}") for i, layer in enumerate(layers)),
            _text(doc.get("artifactType")), _subject(doc))
    raise ManifestInvalid(f"unsupported manifest: mediaType {media_type!r}, schemaVersion "
                          f"{doc.get('schemaVersion')!r}")


def _parse_schema1(doc: dict, media_type: str) -> ImageManifest:
    fs_layers = _field(doc, "fsLayers", list, "schema 1 manifest")
    layers = []
    seen = set()
    for i, entry in enumerate(fs_layers):
        if not isinstance(entry, dict):
            raise ManifestInvalid(f"schema 1 fsLayers[{i}]: expected an object")
        digest = Digest.parse(entry.get("blobSum"))
        if digest not in seen:  # schema 1 repeats empty layers; each blob is one blob
            seen.add(digest)
            layers.append(Descriptor(media_type="application/vnd.docker.image.rootfs.diff.tar.gzip",
                                     digest=digest, size=None, kind=LAYER))
    return ImageManifest(media_type, None, tuple(layers))


def schema1_payload(body: bytes) -> bytes:
    """The bytes a signed schema 1 manifest's digest covers: the JWS payload, signatures cut out."""
    try:
        doc = json.loads(body)
        protected = doc["signatures"][0]["protected"]
        header = json.loads(_b64url(protected))
        return body[: int(header["formatLength"])] + _b64url(header["formatTail"])
    except (ValueError, KeyError, IndexError, TypeError, binascii.Error):
        return body


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
