"""manifests.py: every manifest kind parses into the right descriptors; anything malformed is ManifestInvalid."""

from __future__ import annotations

import base64
import json

import pytest

from check_registry_deep import manifests
from check_registry_deep.errors import ManifestInvalid, UnsupportedDigest
from check_registry_deep.manifests import (
    CONFIG,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    LAYER,
    MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    SCHEMA1,
    SCHEMA1_SIGNED,
    Descriptor,
    ImageManifest,
    IndexManifest,
    parse_manifest,
    schema1_payload,
)
from check_registry_deep.reference import Digest, Platform

D = [Digest.of(f"blob {i}".encode()) for i in range(6)]
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def desc(media_type: str, digest: Digest, size: int, **extra) -> dict:
    return {"mediaType": media_type, "digest": str(digest), "size": size, **extra}


def dump(doc: object) -> bytes:
    return json.dumps(doc).encode()


def docker_v2(**overrides) -> dict:
    doc = {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
           "config": desc(DOCKER_CONFIG, D[0], 1469),
           "layers": [desc(DOCKER_LAYER, D[1], 2811969), desc(DOCKER_LAYER, D[2], 0)]}
    doc.update(overrides)
    return doc


# -- image manifests -------------------------------------------------------------------------------------

def test_docker_schema2():
    manifest = parse_manifest(dump(docker_v2()), DOCKER_MANIFEST)
    assert manifest == ImageManifest(DOCKER_MANIFEST,
                                     Descriptor(DOCKER_CONFIG, D[0], 1469, CONFIG),
                                     (Descriptor(DOCKER_LAYER, D[1], 2811969, LAYER),
                                      Descriptor(DOCKER_LAYER, D[2], 0, LAYER)))
    assert [b.digest for b in manifest.blobs] == [D[0], D[1], D[2]]
    assert [b.kind for b in manifest.blobs] == [CONFIG, LAYER, LAYER]
    assert not manifest.schema1
    assert not manifest.artifact
    assert not any(b.foreign for b in manifest.blobs)


def test_oci_manifest_without_media_type_field_uses_content_type():
    doc = {"schemaVersion": 2, "config": desc(OCI_CONFIG, D[0], 10), "layers": [desc(OCI_LAYER, D[1], 20)]}
    manifest = parse_manifest(dump(doc), f"{OCI_MANIFEST}; charset=utf-8")
    assert isinstance(manifest, ImageManifest)
    assert manifest.media_type == OCI_MANIFEST
    assert manifest.config == Descriptor(OCI_CONFIG, D[0], 10, CONFIG)
    assert manifest.layers == (Descriptor(OCI_LAYER, D[1], 20, LAYER),)
    assert not manifest.artifact


def test_oci_manifest_without_any_media_type_defaults_to_oci():
    doc = {"schemaVersion": 2, "config": desc(OCI_CONFIG, D[0], 10), "layers": []}
    manifest = parse_manifest(dump(doc))
    assert manifest.media_type == OCI_MANIFEST
    assert manifest.layers == ()


def test_json_media_type_wins_over_content_type():
    manifest = parse_manifest(dump(docker_v2()), OCI_MANIFEST)
    assert manifest.media_type == DOCKER_MANIFEST


def test_artifact_detected_by_config_media_type():
    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
           "config": desc("application/vnd.cncf.helm.config.v1+json", D[0], 5),
           "layers": [desc("application/vnd.cncf.helm.chart.content.v1.tar+gzip", D[1], 3000)]}
    manifest = parse_manifest(dump(doc))
    assert manifest.artifact
    assert manifest.config is not None and manifest.config.kind == CONFIG
    empty_config = dict(doc, config=desc("application/vnd.oci.empty.v1+json", D[3], 2))
    assert parse_manifest(dump(empty_config)).artifact


def test_manifest_without_config_is_no_artifact():
    manifest = parse_manifest(dump({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []}))
    assert manifest.config is None
    assert manifest.blobs == ()
    assert not manifest.artifact


def test_foreign_layers():
    urls = ["https://go.microsoft.com/fwlink/?linkid=837858"]
    doc = docker_v2(layers=[
        desc("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", D[1], 100, urls=urls),
        desc("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", D[2], 200),
        desc(OCI_LAYER, D[3], 300, urls=["https://mirror.example/x"]),
        desc(OCI_LAYER, D[4], 400),
    ])
    manifest = parse_manifest(dump(doc))
    assert [layer.foreign for layer in manifest.layers] == [True, True, True, False]
    assert manifest.layers[0].urls == tuple(urls)
    assert manifest.layers[3].urls == ()


# -- indexes ---------------------------------------------------------------------------------------------

def test_oci_index():
    doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        desc(OCI_MANIFEST, D[0], 500, platform={"os": "linux", "architecture": "amd64"}),
        desc(OCI_MANIFEST, D[1], 501, platform={"os": "linux", "architecture": "arm64", "variant": "v8"}),
        desc(OCI_MANIFEST, D[2], 502),
    ]}
    index = parse_manifest(dump(doc))
    assert index == IndexManifest(OCI_INDEX, (
        Descriptor(OCI_MANIFEST, D[0], 500, MANIFEST, platform=Platform("linux", "amd64", "")),
        Descriptor(OCI_MANIFEST, D[1], 501, MANIFEST, platform=Platform("linux", "arm64", "v8")),
        Descriptor(OCI_MANIFEST, D[2], 502, MANIFEST, platform=None),
    ))


def test_docker_manifest_list():
    doc = {"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": [
        desc(DOCKER_MANIFEST, D[0], 428, platform={"os": "linux", "architecture": "arm", "variant": None}),
    ]}
    index = parse_manifest(dump(doc))
    assert isinstance(index, IndexManifest)
    assert index.media_type == DOCKER_LIST
    assert index.manifests[0].platform == Platform("linux", "arm", "")
    assert index.manifests[0].kind == MANIFEST


def test_index_without_media_type_is_oci_index():
    index = parse_manifest(dump({"schemaVersion": 2, "manifests": []}))
    assert index == IndexManifest(OCI_INDEX, ())


# -- schema 1 --------------------------------------------------------------------------------------------

def schema1_doc(blob_sums) -> dict:
    return {"schemaVersion": 1, "name": "legacy/app", "tag": "1", "architecture": "amd64",
            "fsLayers": [{"blobSum": str(d)} for d in blob_sums],
            "history": [{"v1Compatibility": "{}"} for _ in blob_sums]}


def test_schema1_dedups_fs_layers_in_order_and_has_no_sizes():
    manifest = parse_manifest(dump(schema1_doc([D[1], D[5], D[1], D[2], D[5]])), SCHEMA1_SIGNED)
    assert [layer.digest for layer in manifest.layers] == [D[1], D[5], D[2]]
    assert all(layer.size is None and layer.kind == LAYER for layer in manifest.layers)
    assert manifest.config is None
    assert manifest.schema1
    assert manifest.media_type == SCHEMA1_SIGNED
    assert not manifest.artifact


def test_schema1_media_type_from_header_or_signed_by_default():
    body = dump(schema1_doc([D[1]]))
    assert parse_manifest(body, SCHEMA1).media_type == SCHEMA1
    assert parse_manifest(body, "application/json").media_type == SCHEMA1_SIGNED
    assert parse_manifest(body).media_type == SCHEMA1_SIGNED


@pytest.mark.parametrize("doc, message", [
    ({"schemaVersion": 1}, "schema 1 manifest: expected 'fsLayers' to be list, got NoneType"),
    ({"schemaVersion": 1, "fsLayers": {}}, "schema 1 manifest: expected 'fsLayers' to be list, got dict"),
    ({"schemaVersion": 1, "fsLayers": ["x"]}, "schema 1 fsLayers[0]: expected an object"),
    ({"schemaVersion": 1, "fsLayers": [{"blobSum": "sha256:../../x"}]},
     "invalid digest: expected algorithm:hex, got 'sha256:../../x'"),
])
def test_schema1_invalid(doc, message):
    with pytest.raises(ManifestInvalid) as caught:
        parse_manifest(dump(doc))
    assert str(caught.value) == message


def _signed(payload: bytes) -> bytes:
    """A libtrust-style signed schema 1 manifest whose JWS payload is `payload`."""
    format_length = len(payload) - 2  # cut before the closing "\n}"
    tail = payload[format_length:]

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode().rstrip("=")

    protected = b64(json.dumps({"formatLength": format_length, "formatTail": b64(tail),
                                "time": "2024-01-01T00:00:00Z"}).encode())
    signatures = (',\n   "signatures": [{"header": {"alg": "ES256"}, "signature": "c2ln", '
                  f'"protected": "{protected}"}}]').encode()
    return payload[:format_length] + signatures + tail


def test_schema1_payload_cuts_the_signatures_out():
    payload = json.dumps(schema1_doc([D[1], D[2]]), indent=3).encode()
    signed = _signed(payload)
    assert signed != payload
    assert schema1_payload(signed) == payload
    assert parse_manifest(signed).layers == parse_manifest(payload).layers


@pytest.mark.parametrize("body", [
    b'{"schemaVersion": 1, "fsLayers": []}',
    b"not json",
    b'{"signatures": []}',
    b'{"signatures": [{"protected": "!!!"}]}',
    b'{"signatures": [{"protected": "e30"}]}',  # "{}": no formatLength
])
def test_schema1_payload_of_unsigned_or_broken_is_the_body_itself(body):
    assert schema1_payload(body) is body


# -- invalid input ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("body, message", [
    (b"", "manifest is not valid JSON: "),
    (b"<html>502 Bad Gateway</html>", "manifest is not valid JSON: "),
    (b"\xff\xfe\x00garbage", "manifest is not valid JSON: "),
    (b"[]", "manifest: expected a JSON object, got list"),
    (b'"manifest"', "manifest: expected a JSON object, got str"),
    (b"null", "manifest: expected a JSON object, got NoneType"),
    (b"42", "manifest: expected a JSON object, got int"),
])
def test_not_json_or_not_an_object(body, message):
    with pytest.raises(ManifestInvalid) as caught:
        parse_manifest(body, DOCKER_MANIFEST)
    assert str(caught.value).startswith(message)
    if message.endswith(": "):
        assert len(str(caught.value)) > len(message)  # the parser's reason follows


@pytest.mark.parametrize("doc, message", [
    (docker_v2(layers={}), "manifest: expected 'layers' to be list, got dict"),
    (docker_v2(layers="sha256:x"), "manifest: expected 'layers' to be list, got str"),
    (docker_v2(config=[]), "config: expected an object, got list"),
    (docker_v2(layers=[42]), "layer 0: expected an object, got int"),
    (docker_v2(layers=[desc(DOCKER_LAYER, D[1], 1), desc(DOCKER_LAYER, D[2], -1)]),
     "layer 1: expected a size >= 0, got -1"),
    (docker_v2(layers=[desc(DOCKER_LAYER, D[1], True)]), "layer 0: expected 'size' to be int, got bool"),
    (docker_v2(layers=[desc(DOCKER_LAYER, D[1], False)]), "layer 0: expected 'size' to be int, got bool"),
    (docker_v2(layers=[desc(DOCKER_LAYER, D[1], 1.5)]), "layer 0: expected 'size' to be int, got float"),
    (docker_v2(layers=[desc(DOCKER_LAYER, D[1], "12")]), "layer 0: expected 'size' to be int, got str"),
    (docker_v2(layers=[{"mediaType": DOCKER_LAYER, "digest": str(D[1])}]),
     "layer 0: expected 'size' to be int, got NoneType"),
    (docker_v2(config={"digest": str(D[0]), "size": 1}), "config: expected 'mediaType' to be str, got NoneType"),
    (docker_v2(layers=[desc(DOCKER_LAYER, D[1], 1, urls="https://x")]),
     "layer 0: expected 'urls' to be list, got str"),
    (docker_v2(layers=[desc(DOCKER_LAYER, D[1], 1, urls=[1])]), "layer 0: expected urls to be strings"),
    (docker_v2(layers=[desc(DOCKER_LAYER, D[1], 1, platform="linux")]),
     "layer 0: expected 'platform' to be dict, got str"),
    (docker_v2(layers=[{"mediaType": DOCKER_LAYER, "size": 1, "digest": "sha256:../../../v2/x/blobs/y"}]),
     "invalid digest: expected algorithm:hex, got 'sha256:../../../v2/x/blobs/y'"),
    (docker_v2(layers=[{"mediaType": DOCKER_LAYER, "size": 1}]), "invalid digest: expected algorithm:hex, got None"),
    ({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": {}}, "index: expected 'manifests' to be list, got dict"),
    ({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [desc(OCI_MANIFEST, D[0], -5)]},
     "index child 0: expected a size >= 0, got -5"),
    ({"schemaVersion": 2, "mediaType": 7, "layers": []}, "manifest: expected mediaType to be str, got int"),
    ({"schemaVersion": 2}, "unsupported manifest: mediaType '', schemaVersion 2"),
    ({"schemaVersion": 3, "mediaType": "application/vnd.example+json"},
     "unsupported manifest: mediaType 'application/vnd.example+json', schemaVersion 3"),
])
def test_wrong_types_are_manifest_invalid_with_a_clear_message(doc, message):
    with pytest.raises(ManifestInvalid) as caught:
        parse_manifest(dump(doc))
    assert str(caught.value) == message


def test_unsupported_layer_digest_algorithm_is_reported_as_such():
    doc = docker_v2(layers=[{"mediaType": DOCKER_LAYER, "size": 1, "digest": "md5:" + "0" * 32}])
    with pytest.raises(UnsupportedDigest, match="unsupported digest algorithm 'md5'"):
        parse_manifest(dump(doc))


def test_accept_lists_every_type_with_schema1_last():
    accepted = [part.split(";")[0].strip() for part in manifests.ACCEPT.split(",")]
    assert accepted[:4] == [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST]
    assert set(accepted[4:]) == {SCHEMA1_SIGNED, SCHEMA1}
    assert manifests.MAX_MANIFEST_BYTES == 4 * 1024 * 1024
