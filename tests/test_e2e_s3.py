"""Blob GETs redirected to object storage: docker-registry's `s3` driver on moto's S3 server (registry_lab/s3.py).

moto is started once per session and seeded once through a registry into a template bucket; every test gets a
fresh copy of that bucket and its own registry. The registry redirects blob GETs (and HEADs) to presigned URLs
at the lab's front, a stand-in of ours that enforces what real S3 enforces on them and moto does not. Damages go
straight into the bucket, as a failing storage, a lifecycle rule or an operator would make them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List

import pytest
import requests

from registry_lab import ImageSet, seed_sentinels
from registry_lab.s3 import ONE_AUTH, S3Front, S3Lab, S3Registry, s3_available

pytestmark = [pytest.mark.e2e, pytest.mark.s3]


@dataclass
class S3Setup:
    lab: S3Lab
    images: ImageSet

    @property
    def front(self) -> S3Front:
        return self.lab.started[1]


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Setup]:
    """moto and the front started once per session and always stopped; the sentinels seeded once."""
    problem = s3_available()
    if problem:
        pytest.fail(f"the S3 lab cannot run here: {problem}")
    with S3Lab(tmp_path_factory.mktemp("s3")) as lab:
        yield S3Setup(lab, lab.seed(seed_sentinels))


@pytest.fixture
def start_registry(s3: S3Setup, tmp_path: Path) -> Iterator:
    """start_registry(config=None): a registry on a fresh copy of the seeded bucket; stopped after the test."""
    started: List[S3Registry] = []

    def start(config=None) -> S3Registry:
        registry = s3.lab.registry(workdir=tmp_path / f"registry-{len(started)}", config=config)
        started.append(registry)
        return registry

    yield start
    for registry in started:
        registry.stop()
    s3.front.clear()


def presigned_url(registry: S3Registry, s3: S3Setup) -> str:
    response = requests.get(f"{registry.url}/v2/base/golden/blobs/{s3.images.golden.digest}", timeout=10,
                            allow_redirects=False)
    assert response.status_code == 307, response.text
    return response.headers["Location"]


def xml_error(response: requests.Response) -> tuple:
    text = response.text
    return (response.status_code, text.split("<Code>")[1].split("</Code>")[0],
            text.split("<Message>")[1].split("</Message>")[0])


# -- the lab: the front enforces what real S3 enforces on presigned URLs ----------------------------------

def test_the_front_serves_a_valid_presigned_url(s3, start_registry):
    registry = start_registry()
    url = presigned_url(registry, s3)
    assert url.startswith(f"{s3.front.url}/{registry.bucket.name}/docker/registry/v2/blobs/sha256/")
    response = requests.get(url, timeout=10)
    assert response.status_code == 200
    assert response.content == s3.images.golden.data


def test_the_front_refuses_a_wrong_signature(s3, start_registry):
    url = presigned_url(start_registry(), s3)
    signature = url.rsplit("X-Amz-Signature=", 1)[1]
    forged = url.replace(signature, ("0" if signature[0] != "0" else "1") + signature[1:])
    assert xml_error(requests.get(forged, timeout=10)) == (
        403, "SignatureDoesNotMatch", "The request signature we calculated does not match the signature you "
        "provided. Check your key and signing method.")
    # the signature covers the path: the same query for another object does not verify either
    other = url.replace(s3.images.golden.digest.split(":")[1], "0" * 64)
    assert xml_error(requests.get(other, timeout=10))[1] == "SignatureDoesNotMatch"


def test_the_front_refuses_an_expired_url(s3, start_registry):
    url = presigned_url(start_registry(), s3)
    s3.front.clock_offset = 1201  # distribution presigns for 20 minutes
    assert xml_error(requests.get(url, timeout=10)) == (403, "AccessDenied", "Request has expired")


def test_the_front_refuses_a_presigned_request_that_carries_authorization(s3, start_registry):
    url = presigned_url(start_registry(), s3)
    response = requests.get(url, timeout=10, auth=("someone", "secret"))
    assert xml_error(response) == (400, "InvalidArgument", ONE_AUTH)
    assert [code for code, _ in s3.front.refused] == ["InvalidArgument"]


# -- the plugin on the S3 lab ----------------------------------------------------------------------------

GOLDEN_BREAKS_8 = "REGISTRY_DEEP CRITICAL - 1 broken blob, breaking 8 of 9 images: layer {short}… "
OK_LINE = "REGISTRY_DEEP OK - 9 images, 22 blobs, 3.4 MB verified in "


def sentinel_run(plugin, registry, s3, *extra):
    return plugin("-R", registry.url, *[a for ref in s3.images.refs() for a in ("-i", ref)], *extra)


def golden_line(run, s3):
    golden = s3.images.golden.digest
    lines = [line for line in run.lines[1:] if line.startswith(f"CRITICAL: layer {golden}: ")]
    assert len(lines) == 1, run.stdout
    return lines[0][len(f"CRITICAL: layer {golden}: "):].split(" - breaks ")[0]


def storage_host(s3):
    return f"127.0.0.1:{s3.front.port}"


def test_healthy_every_blob_get_is_redirected_to_the_storage(plugin, s3, start_registry):
    registry = start_registry()
    run = sentinel_run(plugin, registry, s3)
    assert run.code == 0, run.stdout
    assert run.first.startswith(OK_LINE), run.first
    ours = [e for e in registry.access_log() if "check_registry_deep/" in e["agent"] and "/blobs/" in e["path"]]
    gets = [e for e in ours if e["method"] == "GET"]
    assert gets and {e["status"] for e in ours} == {"307"}, ours  # every blob GET and HEAD answered by a redirect
    digests = {e["path"].rsplit("/", 1)[1] for e in gets}
    assert len(digests) == 22
    # ... and each was then fetched from the storage with the presigned URL, with no credential
    fetched = {r["path"].split("/data?")[0].rsplit("/", 1)[1] for r in s3.front.presigned() if r["method"] == "GET"}
    assert {d.split(":")[1] for d in digests} <= fetched
    assert not [r for r in s3.front.presigned() if "Authorization" in r], "a credential went to the storage"
    assert s3.front.refused == []


def test_truncated_object(plugin, s3, start_registry):
    registry = start_registry()
    registry.truncate_blob(s3.images.golden.digest, 100)
    run = sentinel_run(plugin, registry, s3)
    assert run.code == 2, run.stdout
    assert run.first.startswith(GOLDEN_BREAKS_8.format(short=s3.images.golden.digest[:19]) +
                                "truncated: Content-Length says 100 of 1048576 bytes | "), run.first
    assert golden_line(run, s3) == "truncated: Content-Length says 100 of 1048576 bytes"


def test_altered_object(plugin, s3, start_registry):
    registry = start_registry()
    registry.flip_byte(s3.images.golden.digest, 5000)
    run = sentinel_run(plugin, registry, s3)
    assert run.code == 2, run.stdout
    assert golden_line(run, s3).startswith("digest mismatch: got sha256:"), run.stdout


def test_deleted_object_behind_a_registry_that_still_lists_it_names_the_storage(plugin, s3, start_registry):
    """The registry's blob-descriptor cache (Debian's default) still knows the blob and redirects; the storage
    answers 404 NoSuchKey. Was: `404 BLOB_UNKNOWN in every repository that references it (…)`: a code the plugin
    filled in, the same words as a blob the registry itself lost."""
    registry = start_registry()
    assert sentinel_run(plugin, registry, s3).code == 0  # the registry has seen every blob
    registry.delete_blob(s3.images.golden.digest)
    run = sentinel_run(plugin, registry, s3)
    assert run.code == 2, run.stdout
    expected = (f"404 NoSuchKey from the storage at {storage_host(s3)}: The specified key does not exist. "
                "(redirected by the registry; the registry still lists the blob)")
    assert golden_line(run, s3) == expected, run.stdout
    assert run.first.startswith(GOLDEN_BREAKS_8.format(short=s3.images.golden.digest[:19]) + "404 NoSuchKey from "
                                f"the storage at {storage_host(s3)}: "), run.first


def test_expired_presigned_url_names_the_storage_and_what_it_said(plugin, s3, start_registry):
    """Was: `layer sha256:…: 403`: S3's XML (AccessDenied, Request has expired) and its host dropped."""
    registry = start_registry()
    s3.front.clock_offset = 1201  # the storage's clock is past the 20 minutes distribution presigns for
    run = sentinel_run(plugin, registry, s3, "-i", "base/golden:1")
    assert run.code == 2, run.stdout
    assert golden_line(run, s3) == (f"403 AccessDenied from the storage at {storage_host(s3)}: Request has expired "
                                    "(redirected by the registry)"), run.stdout
    assert {code for code, _ in s3.front.refused} == {"AccessDenied"}


def test_storage_down_for_the_client_only_resets_name_the_storage(plugin, s3, start_registry):
    """The registry reaches its bucket; the client's connections to the storage are reset (a firewall, a
    dying load balancer on the storage's side). Was: `http://HOST:PORT unreachable: Connection aborted.',
    ConnectionResetError(104, 'Connection reset by peer`."""
    registry = start_registry()
    s3.front.add(r"X-Amz-Signature=", lambda exchange: exchange.reset(), times=None)
    run = plugin("-R", registry.url, "-i", "base/golden:1", "-t", "20")
    assert run.code == 2, run.stdout
    assert golden_line(run, s3) == (f"connection reset by the storage at {storage_host(s3)} (redirected by the "
                                    "registry)"), run.stdout


def test_basic_auth_on_the_registry_sends_no_credential_to_the_storage(plugin, s3, start_registry, tmp_path):
    """Credentials go to the registry only: a presigned request that carried them would be refused (400)."""
    from registry_lab.secure import htpasswd
    users = htpasswd(tmp_path / "htpasswd", {"alice": "s3-lab-password"})
    registry = start_registry(config={"auth": {"htpasswd": {"realm": "lab", "path": str(users)}}})
    password = tmp_path / "password"
    password.write_text("s3-lab-password\n")
    run = sentinel_run(plugin, registry, s3, "--username", "alice", "--password-file", str(password))
    assert run.code == 0, run.stdout
    assert run.first.startswith(OK_LINE), run.first
    presigned = s3.front.presigned()
    assert len([r for r in presigned if r["method"] == "GET"]) >= 22
    assert not [r for r in presigned if "Authorization" in r]
    assert s3.front.refused == []
    assert "s3-lab-password" not in run.stdout + run.stderr


def test_a_transfer_cut_mid_blob_resumes_with_range_at_the_storage(plugin, s3, start_registry):
    from registry_lab.faults import ResetAfter
    golden = s3.images.golden.digest
    registry = start_registry()
    s3.front.add(rf"GET /{registry.bucket.name}/docker/registry/v2/blobs/sha256/../{golden[7:]}/data\?",
                 ResetAfter(256 << 10))
    run = plugin("-R", registry.url, "-i", "base/golden:1")
    assert run.code == 1, run.stdout
    assert run.first.startswith("REGISTRY_DEEP WARNING - 1 warning: layer "), run.first
    assert f"resumed with Range after the connection broke at byte {256 << 10} of 1048576" in run.stdout
    at_storage = [r for r in s3.front.presigned() if golden[7:] in r["path"] and r["method"] == "GET"]
    assert [r.get("Range") for r in at_storage] == [None, f"bytes={256 << 10}-"], at_storage


def test_storage_down_for_the_registry_is_the_registry_failing(plugin, s3, start_registry):
    """The registry cannot reach its bucket (its own requests to the storage are reset): every manifest GET
    answers 500. That is the registry failing, not nine damaged manifests. Was: `9 broken manifests, breaking 9
    of 9 images: manifest base/golden:1 500 UNKNOWN (unknown error)` and nine lines."""
    registry = start_registry()
    s3.front.add(r"^[A-Z]+ /(?!.*X-Amz-Signature)", lambda exchange: exchange.reset(), times=None)
    run = sentinel_run(plugin, registry, s3)
    assert run.code == 2, run.stdout
    assert run.first.startswith("REGISTRY_DEEP CRITICAL - the registry answers 500 UNKNOWN for 9 manifests, "
                                "breaking 9 of 9 images | "), run.first
    critical = [line for line in run.lines[1:] if line.startswith("CRITICAL: ")]
    assert len(critical) == 1, run.stdout
    assert critical[0].startswith("CRITICAL: the registry answers 500 UNKNOWN for 9 manifests - breaks apps/api:1.0, "
                                  "apps/foreign:1.0, apps/legacy:2.0, "), critical[0]
