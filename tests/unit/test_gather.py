"""resolve.py, replicas.py and pool.py on their own: the real RegistryClient against mocked HTTP (responses)."""

from __future__ import annotations

import json
import threading
from typing import Iterator

import pytest
import responses

from check_registry_deep.client import RegistryClient
from check_registry_deep.deadline import Deadline
from check_registry_deep.errors import BlobUnknown, DigestMismatch, ManifestInvalid
from check_registry_deep.manifests import OCI_INDEX, OCI_MANIFEST
from check_registry_deep.model import Target
from check_registry_deep.pool import WorkerPool
from check_registry_deep.reference import Digest, ImageRef, Platform
from check_registry_deep.replicas import compare_replica
from check_registry_deep.resolve import MAX_INDEX_DEPTH, Resolver
from check_registry_deep.retry import RetryPolicy

PRIMARY, REPLICA = "http://127.0.0.1:5000", "http://127.0.0.2:5000"
ONCE = RetryPolicy(attempts=1)
LAYER_BYTES = b"layer"
CONFIG_BYTES = b"{}"


def image_manifest(layer: bytes = LAYER_BYTES) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {
        "mediaType": "application/vnd.oci.image.config.v1+json", "digest": str(Digest.of(CONFIG_BYTES)),
        "size": len(CONFIG_BYTES)}, "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                                                "digest": str(Digest.of(layer)), "size": len(layer)}]}).encode()


def index(*children: tuple) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": media_type, "digest": str(Digest.of(body)), "size": len(body),
         "platform": {"os": "linux", "architecture": arch}} for body, media_type, arch in children]}).encode()


@pytest.fixture
def mock() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


def serve_manifest(mock: responses.RequestsMock, base: str, reference: str, body: bytes, media_type: str) -> None:
    mock.add(responses.GET, f"{base}/v2/team/app/manifests/{reference}", body=body, content_type=media_type,
             headers={"Docker-Content-Digest": str(Digest.of(body))})


def client(base: str = PRIMARY) -> RegistryClient:
    return RegistryClient(base, Deadline(10), retry=ONCE)


# -- resolve.py --------------------------------------------------------------------------------------------

def test_an_image_manifest_resolves_to_one_target_with_its_blobs(mock):
    body = image_manifest()
    serve_manifest(mock, PRIMARY, "1", body, OCI_MANIFEST)
    ref = ImageRef.parse("team/app:1")
    resolution = Resolver(Deadline(10)).resolve(client(), ref, PRIMARY)
    assert resolution.digest == Digest.of(body) and resolution.findings == ()
    [target] = resolution.targets
    assert target.target == Target(ref, PRIMARY)
    assert [d.digest for d in target.blobs] == [Digest.of(CONFIG_BYTES), Digest.of(LAYER_BYTES)]


def test_an_index_resolves_to_the_platforms_asked_for(mock):
    amd64, arm64 = image_manifest(b"amd64"), image_manifest(b"arm64")
    top = index((amd64, OCI_MANIFEST, "amd64"), (arm64, OCI_MANIFEST, "arm64"))
    serve_manifest(mock, PRIMARY, "1", top, OCI_INDEX)
    for body in (amd64, arm64):
        serve_manifest(mock, PRIMARY, str(Digest.of(body)), body, OCI_MANIFEST)
    resolution = Resolver(Deadline(10), [Platform.parse("linux/arm64")]).resolve(
        client(), ImageRef.parse("team/app:1"), PRIMARY)
    assert [(t.target.platform, t.manifest_digest) for t in resolution.targets] == [
        (Platform.parse("linux/arm64"), Digest.of(arm64))]
    assert [c.request.url.rsplit("/", 1)[-1] for c in mock.calls] == ["1", str(Digest.of(arm64))]


def test_a_child_that_hashes_to_another_digest_is_a_finding_for_its_platform_only(mock):
    amd64, arm64 = image_manifest(b"amd64"), image_manifest(b"arm64")
    serve_manifest(mock, PRIMARY, "1", index((amd64, OCI_MANIFEST, "amd64"), (arm64, OCI_MANIFEST, "arm64")), OCI_INDEX)
    serve_manifest(mock, PRIMARY, str(Digest.of(amd64)), amd64, OCI_MANIFEST)
    serve_manifest(mock, PRIMARY, str(Digest.of(arm64)), amd64[:-1] + b" ", OCI_MANIFEST)  # same size, other bytes
    resolution = Resolver(Deadline(10)).resolve(client(), ImageRef.parse("team/app:1"), PRIMARY)
    assert [t.target.platform for t in resolution.targets] == [Platform.parse("linux/amd64")]
    [finding] = resolution.findings
    assert isinstance(finding.error, DigestMismatch)
    assert [t.platform for t in finding.affected] == [Platform.parse("linux/arm64")]


def test_indexes_nested_too_deep_are_invalid(mock):
    body = image_manifest()
    for _ in range(MAX_INDEX_DEPTH + 1):
        serve_manifest(mock, PRIMARY, str(Digest.of(body)), body, OCI_INDEX if b"manifests" in body else OCI_MANIFEST)
        body = index((body, OCI_INDEX if b"manifests" in body else OCI_MANIFEST, "amd64"))
    serve_manifest(mock, PRIMARY, "1", body, OCI_INDEX)
    resolution = Resolver(Deadline(10)).resolve(client(), ImageRef.parse("team/app:1"), PRIMARY)
    assert resolution.targets == ()
    [finding] = resolution.findings
    assert isinstance(finding.error, ManifestInvalid)
    assert str(finding.error) == f"indexes nested deeper than {MAX_INDEX_DEPTH} levels"


# -- replicas.py -------------------------------------------------------------------------------------------

def resolved_on_primary(mock):
    body = image_manifest()
    serve_manifest(mock, PRIMARY, "1", body, OCI_MANIFEST)
    ref = ImageRef.parse("team/app:1")
    return ref, body, Resolver(Deadline(10)).resolve(client(), ref, PRIMARY)


def test_a_replica_serving_the_same_manifest_and_blobs_has_no_finding(mock):
    ref, body, resolution = resolved_on_primary(mock)
    serve_manifest(mock, REPLICA, "1", body, OCI_MANIFEST)
    for blob in (CONFIG_BYTES, LAYER_BYTES):
        mock.add(responses.HEAD, f"{REPLICA}/v2/team/app/blobs/{Digest.of(blob)}", headers={
            "Content-Length": str(len(blob))})
    assert compare_replica(client(REPLICA), ref, Digest.of(body), PRIMARY, resolution.targets) == []


def test_a_replica_serving_another_manifest_is_a_caveat(mock):
    ref, body, resolution = resolved_on_primary(mock)
    other = image_manifest(b"older")
    serve_manifest(mock, REPLICA, "1", other, OCI_MANIFEST)
    [finding] = compare_replica(client(REPLICA), ref, Digest.of(body), PRIMARY, resolution.targets)
    assert finding.error is None
    assert finding.caveats == (f"replica serves {Digest.of(other)} where {PRIMARY} serves {Digest.of(body)}",)


def test_a_blob_the_replica_lost_is_a_finding_for_the_images_it_breaks(mock):
    ref, body, resolution = resolved_on_primary(mock)
    serve_manifest(mock, REPLICA, "1", body, OCI_MANIFEST)
    mock.add(responses.HEAD, f"{REPLICA}/v2/team/app/blobs/{Digest.of(CONFIG_BYTES)}",
             headers={"Content-Length": "2"})
    mock.add(responses.HEAD, f"{REPLICA}/v2/team/app/blobs/{Digest.of(LAYER_BYTES)}", status=404)
    [finding] = compare_replica(client(REPLICA), ref, Digest.of(body), PRIMARY, resolution.targets)
    assert isinstance(finding.error, BlobUnknown)
    assert finding.affected == (Target(ref, PRIMARY),)


# -- pool.py -----------------------------------------------------------------------------------------------

def test_the_pool_runs_work_on_its_threads_and_hands_back_results_and_errors():
    pool = WorkerPool(2)
    try:
        done = pool.submit(lambda: threading.current_thread().name)
        failed = pool.submit(lambda: 1 // 0)
        assert done.result(5).startswith("verify-")
        with pytest.raises(ZeroDivisionError):
            failed.result(5)
    finally:
        pool.shutdown()


def test_shutdown_cancels_queued_work_and_lets_running_work_finish():
    pool = WorkerPool(1)
    running, release = threading.Event(), threading.Event()
    busy = pool.submit(lambda: (running.set(), release.wait(5))[1])
    queued = [pool.submit(lambda: "never") for _ in range(100)]
    assert running.wait(5)
    pool.shutdown()
    release.set()
    assert busy.result(5) is True
    assert all(future.cancelled() for future in queued)
