"""Images built from deterministic bytes and pushed over the registry HTTP API, and the sentinel set.

The sentinel set covers every media type the plugin must handle and shares one "golden" base layer across
several repositories, as real fleets do: the layer whose truncation broke almost everything in 2019.
"""

from __future__ import annotations

import gzip
import io
import json
import random
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from .registry import LocalRegistry, sha256

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"


def random_bytes(seed: str, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


@dataclass(frozen=True)
class Layer:
    data: bytes
    media_type: str = DOCKER_LAYER

    @property
    def digest(self) -> str:
        return sha256(self.data)

    def descriptor(self) -> dict:
        return {"mediaType": self.media_type, "size": len(self.data), "digest": self.digest}


#: The gzip of an empty tar (1024 zero bytes): what `docker build` stores for a layer that adds no files.
EMPTY_LAYER = Layer(gzip.compress(b"\0" * 1024, mtime=0))


@dataclass
class Image:
    """What was pushed: its reference, manifest digest, and the blobs (with platforms) it references."""

    repository: str
    tag: Optional[str]
    digest: str
    media_type: str
    blobs: Tuple[str, ...] = ()  # config and layer digests, every child's included
    children: Dict[str, str] = field(default_factory=dict)  # platform -> child manifest digest
    child_blobs: Dict[str, Tuple[str, ...]] = field(default_factory=dict)  # platform -> its blobs

    @property
    def ref(self) -> str:
        return f"{self.repository}:{self.tag}" if self.tag else f"{self.repository}@{self.digest}"


def push_image(registry: LocalRegistry, repository: str, tag: Optional[str], layers: Sequence[Layer], *,
               oci: bool = False, config: Optional[bytes] = None, config_media_type: Optional[str] = None,
               extra: Optional[dict] = None, foreign: Sequence[Layer] = (), foreign_urls: Sequence[str] = (),
               prebuilt: Sequence[Layer] = ()) -> Image:
    """Push blobs and a single-platform manifest; `tag=None` pushes by digest only. `prebuilt` layers come first
    and are already in the repository (mounted), so they are not uploaded again."""
    if config is None:
        config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                             "rootfs": {"type": "layers", "diff_ids": [layer.digest for layer in layers]},
                             "comment": f"{repository} sentinel"}, sort_keys=True).encode()
    config_type = config_media_type or (OCI_CONFIG if oci else DOCKER_CONFIG)
    registry.push_blob(repository, config)
    for layer in layers:
        registry.push_blob(repository, layer.data)
    layers = [*prebuilt, *layers]
    layer_descriptors = [layer.descriptor() for layer in layers]
    for layer in foreign:  # never pushed: clients fetch foreign layers from their urls
        layer_descriptors.append({**layer.descriptor(), "mediaType": DOCKER_FOREIGN, "urls": list(foreign_urls)})
    media_type = OCI_MANIFEST if oci else DOCKER_MANIFEST
    manifest = {"schemaVersion": 2, "mediaType": media_type,
                "config": {"mediaType": config_type, "size": len(config), "digest": sha256(config)},
                "layers": layer_descriptors, **(extra or {})}
    body = json.dumps(manifest, indent=3).encode()
    digest = sha256(body)
    registry.push_manifest(repository, tag or digest, body, media_type)
    return Image(repository, tag, digest, media_type, (sha256(config),) + tuple(layer.digest for layer in layers))


def push_index(registry: LocalRegistry, repository: str, tag: str, children: Dict[str, Image], *,
               oci: bool = True) -> Image:
    """Push an index (OCI) or manifest list (Docker) over already pushed children, keyed by OS/ARCH[/VARIANT]."""
    entries = []
    for platform, child in children.items():
        parts = platform.split("/")
        body_size = len(_manifest_bytes(registry, child))
        entry_platform = {"os": parts[0], "architecture": parts[1]}
        if len(parts) > 2:
            entry_platform["variant"] = parts[2]
        entries.append({"mediaType": child.media_type, "size": body_size, "digest": child.digest,
                        "platform": entry_platform})
    media_type = OCI_INDEX if oci else DOCKER_LIST
    body = json.dumps({"schemaVersion": 2, "mediaType": media_type, "manifests": entries}, indent=3).encode()
    digest = registry.push_manifest(repository, tag, body, media_type)
    blobs = tuple(dict.fromkeys(b for child in children.values() for b in child.blobs))
    return Image(repository, tag, digest, media_type, blobs, {p: c.digest for p, c in children.items()},
                 {p: c.blobs for p, c in children.items()})


def _manifest_bytes(registry: LocalRegistry, image: Image) -> bytes:
    return registry.blob_path(image.digest).read_bytes()


def write_schema1(registry: LocalRegistry, repository: str, tag: str, layers: Sequence[Layer]) -> Image:
    """A schema 1 manifest, stored on disk because distribution 2.8 refuses schema 1 pushes.

    It is stored unsigned; the registry signs it with its own key on every GET, as 2.8 does, and its digest
    covers the payload without the signatures.
    """
    for layer in layers:
        registry.push_blob(repository, layer.data)
    payload = {"schemaVersion": 1, "name": repository, "tag": tag, "architecture": "amd64",
               "fsLayers": [{"blobSum": layer.digest} for layer in reversed(layers)],
               "history": [{"v1Compatibility": json.dumps({"id": f"{i:064x}"})} for i in range(len(layers))]}
    body = json.dumps(payload, indent=3).encode()
    digest = registry.write_manifest_on_disk(repository, tag, body)
    return Image(repository, tag, digest, SCHEMA1_SIGNED, tuple(layer.digest for layer in layers))


def tar_layer(files: Dict[str, bytes]) -> Tuple[Layer, str]:
    """A gzipped tar of `files` (path -> content, fixed times and owners) and its diff ID (the tar's digest)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(content), 0o644
            tar.addfile(info, io.BytesIO(content))
    return Layer(gzip.compress(buffer.getvalue(), mtime=0)), sha256(buffer.getvalue())


def push_unpackable_image(registry: LocalRegistry, repository: str, tag: str, files: Dict[str, bytes]) -> Image:
    """An image a container engine can pull and unpack (podman checks each layer against the config's diff ID),
    unlike the sentinels, whose layers are random bytes."""
    layer, diff_id = tar_layer(files)
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]}}, sort_keys=True).encode()
    return push_image(registry, repository, tag, [layer], config=config)


@dataclass
class ImageSet:
    """The sentinel images of a registry, and the facts tests and the demo need about them."""

    images: Dict[str, Image]
    golden: Layer

    def refs(self, *names: str) -> List[str]:
        return [self.images[name].ref for name in (names or self.images)]

    def referencing(self, digest: str) -> List[str]:
        """Refs of the images whose blobs include `digest`: the expected blast radius."""
        return [image.ref for image in self.images.values() if digest in image.blobs]


def seed_sentinels(registry: LocalRegistry, *, golden_size: int = 1 << 20, own_size: int = 256 << 10,
                   seed: str = "registry-lab") -> ImageSet:
    """Push the sentinel set: every media type, a shared golden base layer, an empty layer, a digest-only image."""
    golden = Layer(random_bytes(f"{seed}-golden", golden_size))

    def own(name: str, media_type: str = DOCKER_LAYER) -> Layer:
        return Layer(random_bytes(f"{seed}-{name}", own_size), media_type)

    images: Dict[str, Image] = {}
    images["golden"] = push_image(registry, "base/golden", "1", [golden])
    images["web"] = push_image(registry, "apps/web", "1.0", [golden, own("web")])
    images["api"] = push_image(registry, "apps/api", "1.0", [Layer(golden.data, OCI_LAYER), own("api", OCI_LAYER)],
                               oci=True)
    images["multi"] = push_index(registry, "apps/multi", "1.0", {
        "linux/amd64": push_image(registry, "apps/multi", None, [Layer(golden.data, OCI_LAYER),
                                                                 own("multi-amd64", OCI_LAYER)], oci=True),
        "linux/arm64/v8": push_image(registry, "apps/multi", None, [Layer(golden.data, OCI_LAYER),
                                                                    own("multi-arm64", OCI_LAYER)], oci=True),
    }, oci=True)
    images["legacy"] = push_index(registry, "apps/legacy", "2.0", {
        "linux/amd64": push_image(registry, "apps/legacy", None, [golden, own("legacy-amd64")]),
        "linux/386": push_image(registry, "apps/legacy", None, [golden, own("legacy-386")]),
    }, oci=False)
    images["pinned"] = push_image(registry, "apps/pinned", None, [golden, own("pinned")], oci=True)
    images["slim"] = push_image(registry, "apps/slim", "1.0", [golden, EMPTY_LAYER, own("slim")])
    images["sbom"] = push_image(registry, "artifacts/sbom", "1.0", [own("sbom", "application/spdx+json")],
                                oci=True, config=b"{}", config_media_type=OCI_EMPTY,
                                extra={"artifactType": "application/spdx+json"})
    images["foreign"] = push_image(registry, "apps/foreign", "1.0", [golden], foreign=[own("foreign")],
                                   foreign_urls=["https://foreign.invalid/layer.tar.gz"])
    return ImageSet(images, golden)


# -- the benchmark's sets -------------------------------------------------------------------------------

#: Own-layer sizes (MiB) of the gigabyte set's eight images, on top of its 256 MiB golden layer: 1 GiB unique.
GIGABYTE_OWN_MIB = (84, 88, 92, 96, 96, 100, 104, 108)


def big_bytes(seed: str, size: int) -> bytes:
    """Deterministic bytes of any size (randbytes takes less than 256 MiB a call): 64 MiB pieces."""
    piece = 64 << 20
    return b"".join(random_bytes(f"{seed}-{i}", min(piece, size - offset))
                    for i, offset in enumerate(range(0, size, piece)))


def seed_gigabyte_set(registry: LocalRegistry, *, prefix: str = "gigabyte", golden_mib: int = 256,
                      own_mib: Sequence[int] = GIGABYTE_OWN_MIB, seed: str = "gigabyte") -> ImageSet:
    """Eight images sharing one golden layer (256 MiB) plus an own layer each (84-108 MiB): 1 GiB of unique blobs."""
    golden = Layer(big_bytes(f"{seed}-golden", golden_mib << 20))
    images: Dict[str, Image] = {}
    for i, mib in enumerate(own_mib):
        own = Layer(big_bytes(f"{seed}-own-{i}", mib << 20))
        images[f"app-{i}"] = push_image(registry, f"{prefix}/app-{i}", "1", [golden, own])
    return ImageSet(images, golden)


def mount_blob(registry: LocalRegistry, digest: str, source: str, repository: str) -> None:
    """Cross-mount a blob from `source` into `repository`: a new link, no upload."""
    response = registry.session.post(f"{registry.url}/v2/{repository}/blobs/uploads/",
                                     params={"mount": digest, "from": source}, timeout=30)
    if response.status_code != 201:
        raise RuntimeError(f"mounting {digest} into {repository} failed: {response.status_code}")


def seed_fleet(registry: LocalRegistry, *, prefix: str = "fleet", groups: int = 5, per_group: int = 40,
               tags: int = 5, pool: int = 16, workers: int = 8, seed: str = "fleet") -> ImageSet:
    """A namespace of many small images: `groups` x `per_group` repositories (PREFIX/gG/app-NNN) with `tags` tags
    each, every image an own config plus three layers from a small shared pool (4-64 KiB).

    Each repository's images share its base and runtime layer; each tag adds one app layer from the pool, so a
    repository links 7 pool layers and every pool layer is linked from many repositories. The pool layers are
    uploaded once and cross-mounted into each repository; the repositories are pushed `workers` at a time.
    """
    layers = [Layer(random_bytes(f"{seed}-pool-{i}", (4 << 10) << (i % 5))) for i in range(pool)]
    bases, runtimes, apps = layers[:4], layers[4:pool // 2], layers[pool // 2:]
    home = f"{prefix}-pool"  # outside PREFIX/: not one of the images
    for layer in layers:
        registry.push_blob(home, layer.data)

    def repository(number: int) -> List[Image]:
        name = f"{prefix}/g{number // per_group}/app-{number % per_group:03d}"
        chosen = [bases[number % len(bases)], runtimes[number % len(runtimes)]]
        own_apps = [apps[(number + t) % len(apps)] for t in range(tags)]
        for layer in dict.fromkeys(chosen + own_apps):
            mount_blob(registry, layer.digest, home, name)
        pushed = []
        for t in range(tags):
            image_layers = chosen + [own_apps[t]]
            config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Labels": {"tag": f"1.{t}"}},
                                 "rootfs": {"type": "layers", "diff_ids": [x.digest for x in image_layers]},
                                 "comment": f"{name} fleet image"}, sort_keys=True).encode()
            pushed.append(push_image(registry, name, f"1.{t}", [], config=config, prebuilt=image_layers))
        return pushed

    with ThreadPoolExecutor(workers) as executor:
        images = {image.ref: image for batch in executor.map(repository, range(groups * per_group))
                  for image in batch}
    return ImageSet(images, layers[0])
