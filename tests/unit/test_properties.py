"""Property-based tests (hypothesis): whatever text or bytes come in, the reference parser, the manifest parser
and the index walker raise only the project's own exception types (errors.CheckError subclasses)."""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from typing import Dict, Iterator, Optional

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from check_registry_deep.client import FetchedManifest
from check_registry_deep.deadline import Deadline
from check_registry_deep.errors import BlobUnknown, CheckError, InternalError, ManifestUnknown, UsageError
from check_registry_deep.manifests import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    SCHEMA1_SIGNED,
    parse_manifest,
)
from check_registry_deep.reference import Digest, ImageRef
from check_registry_deep.retry import Retrier, RetryPolicy
from check_registry_deep.scan import Scanner

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- ImageRef.parse ------------------------------------------------------------------------------------------

REF_ALPHABET = st.sampled_from(list("abcz09AZ-_.:/@%+ ~\\\n\x00é") + ["sha256:", "sha512:", "..", "localhost"])


@SETTINGS
@given(st.one_of(st.text(max_size=300), st.lists(REF_ALPHABET, max_size=40).map("".join)))
def test_image_ref_parse_raises_only_usage_errors(text):
    try:
        ref = ImageRef.parse(text)
    except UsageError:
        return
    # what parses is safe in a URL path and reads back the same
    assert ".." not in ref.repository and "%" not in ref.repository and "\\" not in ref.repository
    assert ImageRef.parse(str(ref)) == ref


@SETTINGS
@given(st.one_of(st.none(), st.integers(), st.text(max_size=200), st.binary(max_size=50)))
def test_digest_parse_raises_only_check_errors(value):
    try:
        digest = Digest.parse(value)
    except CheckError:
        return
    assert str(digest) == value and "/" not in str(digest) and ".." not in str(digest)


# -- parse_manifest ------------------------------------------------------------------------------------------

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children,
                                                                                       max_size=4), max_leaves=20)
MEDIA_TYPES = st.sampled_from([OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST, SCHEMA1_SIGNED, "", "x/y"])
DIGESTS = st.one_of(st.sampled_from(["sha256:" + "a" * 64, "sha512:" + "b" * 128, "md5:" + "0" * 32,
                                     "sha256:../../x", "sha256:ABC", "", "sha256:" + "a" * 63]), JSON)


def descriptors():
    return st.fixed_dictionaries({}, optional={"mediaType": st.one_of(MEDIA_TYPES, JSON), "digest": DIGESTS,
                                               "size": st.one_of(st.integers(-5, 1 << 40), JSON),
                                               "urls": st.one_of(st.lists(st.text(max_size=10), max_size=2), JSON),
                                               "platform": st.one_of(st.fixed_dictionaries(
                                                   {"os": st.text(max_size=5), "architecture": st.text(max_size=5)}),
                                                   JSON)})


MANIFESTS = st.fixed_dictionaries({}, optional={
    "schemaVersion": st.one_of(st.sampled_from([1, 2]), JSON), "mediaType": st.one_of(MEDIA_TYPES, JSON),
    "config": st.one_of(descriptors(), JSON), "layers": st.one_of(st.lists(descriptors(), max_size=3), JSON),
    "manifests": st.one_of(st.lists(descriptors(), max_size=3), JSON),
    "fsLayers": st.one_of(st.lists(st.fixed_dictionaries({"blobSum": DIGESTS}), max_size=3), JSON),
    "signatures": JSON})


@SETTINGS
@given(st.binary(max_size=500), st.one_of(MEDIA_TYPES, st.text(max_size=30)))
def test_parse_manifest_of_any_bytes_raises_only_check_errors(body, content_type):
    try:
        parse_manifest(body, content_type)
    except CheckError:
        pass


@SETTINGS
@given(MANIFESTS, MEDIA_TYPES)
def test_parse_manifest_of_manifest_shaped_json_raises_only_check_errors(doc, content_type):
    try:
        manifest = parse_manifest(json.dumps(doc).encode(), content_type)
    except CheckError:
        return
    for descriptor in getattr(manifest, "layers", ()) + getattr(manifest, "manifests", ()):
        assert descriptor.size is None or descriptor.size >= 0
        assert "/" not in str(descriptor.digest)


# -- the walker: Scanner resolving an index over hostile children ------------------------------------------

class FakeClient:
    """Serves manifests from a dict by reference; every blob is unknown (a 404 on GET and HEAD), so a walk that
    reaches an image manifest runs the blob stage too. Every request the scan can make is answered: a missing
    method would be an AttributeError, i.e. an internal error the test would blame on the walker."""

    base_url = "http://hostile.invalid"

    def __init__(self, manifests: Dict[str, bytes]):
        self.manifests = manifests
        self.retrier = Retrier(RetryPolicy(attempts=1), Deadline(30))

    @property
    def retries(self) -> int:
        return self.retrier.count

    def get_manifest(self, repository: str, reference: str) -> FetchedManifest:
        if reference not in self.manifests:
            raise ManifestUnknown(f"404 MANIFEST_UNKNOWN {reference}", 404, "MANIFEST_UNKNOWN")
        return FetchedManifest(self.manifests[reference], "", None)

    @contextmanager
    def open_blob(self, repository: str, digest: Digest, limit, offset: int = 0, stall: float = 30.0
                  ) -> Iterator[None]:
        raise BlobUnknown(f"404 BLOB_UNKNOWN {digest}", 404, "BLOB_UNKNOWN")
        yield  # pragma: no cover (a generator, as the real one is)

    def head_blob(self, repository: str, digest: Digest) -> Optional[int]:
        raise BlobUnknown(f"HEAD in {repository}: 404 BLOB_UNKNOWN", 404, "BLOB_UNKNOWN")

    def ping(self) -> None:
        pass


#: Well-formed image manifests too: the hostile ones alone reach the blob stage about once in twenty runs, so
#: most runs would never call FakeClient's blob methods.
SHA256 = st.sampled_from(["sha256:" + c * 64 for c in "0abf"])
IMAGE_MANIFESTS = st.fixed_dictionaries({
    "schemaVersion": st.just(2), "mediaType": st.sampled_from([OCI_MANIFEST, DOCKER_MANIFEST]),
    "config": st.fixed_dictionaries({"mediaType": st.just("application/vnd.oci.image.config.v1+json"),
                                     "digest": SHA256, "size": st.integers(0, 1 << 20)}),
    "layers": st.lists(st.fixed_dictionaries({"mediaType": st.just("application/vnd.oci.image.layer.v1.tar+gzip"),
                                              "digest": SHA256, "size": st.integers(0, 1 << 20)}), max_size=3)})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(MANIFESTS, IMAGE_MANIFESTS), min_size=1, max_size=4), st.data())
def test_walker_over_hostile_indexes_never_hits_an_internal_error(docs, data):
    # children refer to one another by their real digests, so the walker goes as deep as the documents let it
    bodies = [json.dumps(doc).encode() for doc in docs]
    manifests = {str(Digest.of(body)): body for body in bodies}
    for _ in range(len(bodies)):
        children = data.draw(st.lists(st.sampled_from(sorted(manifests)), max_size=3))
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": child, "size": len(manifests[child])} for child in children]}
        body = json.dumps(index).encode()
        manifests[str(Digest.of(body))] = body
    manifests["1"] = body
    scanner = Scanner(lambda registry: FakeClient(manifests), Deadline(30), workers=2)  # type: ignore
    scanner.cancelled = threading.Event()
    ref = ImageRef.parse("hostile/walk:1")
    result = _scan(scanner, ref)
    assert not any(isinstance(c.error, InternalError) for c in result), [c.error for c in result]
    assert all(c.error is None or isinstance(c.error, CheckError) for c in result)


def _scan(scanner: Scanner, ref: ImageRef):
    """Run a whole scan (every blob is unknown to FakeClient) and return what it found but the registry check."""
    result = scanner.scan([(ref, "http://hostile.invalid")])
    return [*result.findings, *(p for p in result.run_problems if p.kind != "registry")]
