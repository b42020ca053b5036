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
