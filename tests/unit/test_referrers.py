"""referrers.py's decisions against mocked HTTP (responses): which way a list is found, pages, bounds, loops,
an artifact found two ways, signatures only, and the per-image signature verdict."""

from __future__ import annotations

import json
from typing import List, Optional

import pytest
import responses

from check_registry_deep.client import RegistryClient
from check_registry_deep.deadline import Deadline
from check_registry_deep.errors import ManifestInvalid, NotSigned, SignatureInvalid, SignatureMismatch
from check_registry_deep.manifests import OCI_INDEX, OCI_MANIFEST
from check_registry_deep.model import FoundBy, Kind, Target, TargetResult
from check_registry_deep.reference import Digest, ImageRef, Platform
from check_registry_deep.referrers import (
    FILTERED,
    LINK_LOOP,
    MAX_PAGES,
    TOO_MANY_PAGES,
    Evidence,
    Policy,
    ReferrerWalker,
    cosign_tag,
)
from check_registry_deep.resolve import Resolver
from check_registry_deep.retry import RetryPolicy
from check_registry_deep.signatures import COSIGN_SIGNATURE_ARTIFACT_TYPE, NOTARY_SIGNATURE_TYPE

#: Debian's package build sets http_proxy to a dead port: these tests set the proxy they mean themselves
pytestmark = pytest.mark.usefixtures("no_proxy_from_the_environment")

BASE = "http://127.0.0.1:5000"
REF = ImageRef.parse("team/app:1")
IMAGE = Digest.of(b"the image")
SPDX = "application/spdx+json"
FAST = RetryPolicy(attempts=2, backoff=0.01, max_wait=0.05)


def walker(policy: Policy = Policy(follow=True)) -> ReferrerWalker:
    deadline = Deadline(10)
    return ReferrerWalker(policy, deadline, Resolver(deadline))


def client() -> RegistryClient:
    return RegistryClient(BASE, Deadline(10), retry=FAST)


def entry(name: str, artifact_type: str = SPDX) -> dict:
    return {"mediaType": OCI_MANIFEST, "digest": str(Digest.of(name.encode())), "size": 100,
            "artifactType": artifact_type}


def index(*entries: dict) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": list(entries)}).encode()


def api(mock, body: bytes, status: int = 200, headers: Optional[dict] = None, path: str = "",
        content_type: str = OCI_INDEX) -> None:
    mock.add(responses.GET, f"{BASE}{path or f'/v2/team/app/referrers/{IMAGE}'}", body=body, status=status,
             headers=headers or {}, content_type=content_type, match_querystring=bool(path and "?" in path))


def tag(mock, name: str, body: bytes, status: int = 200) -> None:
    headers = {"Docker-Content-Digest": str(Digest.of(body))} if status == 200 else {}
    mock.add(responses.GET, f"{BASE}/v2/team/app/manifests/{name}", body=body, status=status, headers=headers,
             content_type=OCI_INDEX if status == 200 else "application/json")


def tag_list(mock, *names: str) -> None:
    """The repository's tags: only these (and "1") may be asked for."""
    mock.add(responses.GET, f"{BASE}/v2/team/app/tags/list", json={"name": "team/app", "tags": ["1", *names]})


def no_cosign_tags(mock) -> None:
    tag_list(mock)


def asked(mock) -> List[str]:
    return [call.request.url.replace(BASE, "") for call in mock.calls]


def test_api_answering_means_the_fallback_tag_is_not_asked(mock):
    api(mock, index(entry("sbom")))
    no_cosign_tags(mock)
    listed, findings = walker().discover(client(), REF, IMAGE, (), signatures_only=False)
    assert [(item.artifact.found_by, item.artifact.artifact_type) for item in listed] == [(FoundBy.API, SPDX)]
    assert findings == []
    assert f"/v2/team/app/manifests/{cosign_tag(IMAGE)}" not in asked(mock)


@pytest.mark.parametrize("status, body, content_type", [
    (404, b"404 page not found", "text/plain"),  # distribution 2.8: no such route
    (200, b'{"repositories": []}', "application/json"),  # an answer that is not an index
])
def test_api_404_or_not_an_index_falls_back_to_the_tag(mock, status, body, content_type):
    api(mock, body, status, content_type=content_type)
    tag(mock, cosign_tag(IMAGE), index(entry("sbom")))
    tag_list(mock, cosign_tag(IMAGE))
    listed, findings = walker().discover(client(), REF, IMAGE, (), signatures_only=False)
    assert [item.artifact.found_by for item in listed] == [FoundBy.TAG]
    assert findings == []


def test_no_api_and_no_fallback_tag_is_no_referrers(mock):
    api(mock, b"404 page not found", 404, content_type="text/plain")
    no_cosign_tags(mock)
    assert walker().discover(client(), REF, IMAGE, (), signatures_only=False) == ([], [])
    assert not any("/manifests/" in url for url in asked(mock))  # the tag list said: none of them exists


def test_the_tag_list_is_read_once_and_a_listed_tag_that_is_gone_is_none(mock):
    api(mock, b"404 page not found", 404, content_type="text/plain")
    tag_list(mock, cosign_tag(IMAGE), cosign_tag(IMAGE, ".sig"))
    for name in (cosign_tag(IMAGE), cosign_tag(IMAGE, ".sig")):  # deleted since the list was read
        tag(mock, name, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}', 404)
    one = walker()
    for _ in range(2):
        assert one.discover(client(), REF, IMAGE, (), signatures_only=False) == ([], [])
    assert asked(mock).count("/v2/team/app/tags/list") == 1
    assert not any(url.endswith((".att", ".sbom")) for url in asked(mock))


def test_a_tag_list_that_fails_means_each_tag_is_asked_for(mock):
    api(mock, b"404 page not found", 404, content_type="text/plain")
    mock.add(responses.GET, f"{BASE}/v2/team/app/tags/list", body=b"not JSON", content_type="application/json")
    tag(mock, cosign_tag(IMAGE), index(entry("sbom")))
    for suffix in (".sig", ".att", ".sbom"):
        tag(mock, cosign_tag(IMAGE, suffix), b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}', 404)
    listed, findings = walker().discover(client(), REF, IMAGE, (), signatures_only=False)
    assert [item.artifact.found_by for item in listed] == [FoundBy.TAG] and findings == []
    assert sum(1 for url in asked(mock) if "/manifests/sha256-" in url) == 4


def test_link_pages_are_followed_and_a_page_seen_again_ends_the_list(mock):
    first = f"/v2/team/app/referrers/{IMAGE}"
    second = f"{first}?last=1"
    api(mock, index(entry("a")), headers={"Link": f'<{second}>; rel="next"'})
    api(mock, index(entry("b")), headers={"Link": f'<{second}>; rel="next"'}, path=second)
    entries, found_by, caveats = walker().list_referrers(client(), REF, IMAGE)
    assert [e.digest for e in entries] == [Digest.of(b"a"), Digest.of(b"b")]
    assert (found_by, caveats) == (FoundBy.API, (LINK_LOOP,))
    assert asked(mock) == [first, second]


def test_pages_are_bounded(mock):
    base = f"/v2/team/app/referrers/{IMAGE}"
    api(mock, index(), headers={"Link": f'<{base}?page=1>; rel="next"'})
    for page in range(1, MAX_PAGES + 2):
        api(mock, index(), headers={"Link": f'<{base}?page={page + 1}>; rel="next"'}, path=f"{base}?page={page}")
    _, _, caveats = walker().list_referrers(client(), REF, IMAGE)
    assert caveats == (TOO_MANY_PAGES,)
    assert len(mock.calls) == MAX_PAGES


def test_a_link_to_another_host_is_refused(mock):
    api(mock, index(entry("a")), headers={"Link": '<http://elsewhere.invalid/v2/x>; rel="next"'})
    with pytest.raises(ManifestInvalid, match="Link to another place refused"):
        walker().list_referrers(client(), REF, IMAGE)


def test_filters_nobody_asked_for_are_said(mock):
    api(mock, index(entry("a")), headers={"OCI-Filters-Applied": "artifactType"})
    _, _, caveats = walker().list_referrers(client(), REF, IMAGE)
    assert caveats == (FILTERED.format(filters="artifactType"),)


def test_signatures_only_keeps_signature_types_and_asks_only_the_sig_tag(mock):
    api(mock, index(entry("sbom"), entry("notary", NOTARY_SIGNATURE_TYPE),
                    entry("sig", COSIGN_SIGNATURE_ARTIFACT_TYPE)))
    tag_list(mock, *(cosign_tag(IMAGE, suffix) for suffix in (".sig", ".att", ".sbom")))
    tag(mock, cosign_tag(IMAGE, ".sig"), b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}', 404)
    listed, _ = walker(Policy(require_signature=True)).discover(client(), REF, IMAGE, (), signatures_only=True)
    assert [item.artifact.artifact_type for item in listed] == [NOTARY_SIGNATURE_TYPE, COSIGN_SIGNATURE_ARTIFACT_TYPE]
    assert not any(url.endswith((".att", ".sbom")) for url in asked(mock))


def test_an_artifact_found_two_ways_is_verified_once_and_reported_with_the_first(mock):
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": SPDX, "layers": [],
                           "config": {"mediaType": "application/vnd.oci.empty.v1+json", "size": 2,
                                      "digest": str(Digest.of(b"{}"))}}).encode()
    digest = Digest.of(manifest)
    api(mock, index({"mediaType": OCI_MANIFEST, "digest": str(digest), "size": len(manifest), "artifactType": SPDX}))
    tag_list(mock, cosign_tag(IMAGE, ".sbom"))
    tag(mock, cosign_tag(IMAGE, ".sbom"), manifest)  # the same manifest, by cosign's tag
    mock.add(responses.GET, f"{BASE}/v2/team/app/manifests/{digest}", body=manifest, content_type=OCI_MANIFEST)
    mock.add(responses.GET, f"{BASE}/v2/team/app/referrers/{digest}", body=index(), content_type=OCI_INDEX)
    target = TargetResult(Target(REF, BASE), IMAGE, ())
    walk = walker().walk(client(), REF, IMAGE, [target])
    assert [(a.artifact.digest, a.artifact.found_by) for a in walk.artifacts] == [(digest, FoundBy.API)]
    assert asked(mock).count(f"/v2/team/app/manifests/{digest}") == 1


class FakeKey:
    path = "/etc/cosign.pub"


def signed_verdicts(policy: Policy, evidence: dict, platforms: int = 1):
    top = IMAGE
    if platforms == 1:
        targets = [TargetResult(Target(REF, BASE), top, ())]
    else:
        targets = [TargetResult(Target(REF, BASE, Platform("linux", arch)), Digest.of(arch.encode()), ())
                   for arch in ("amd64", "arm64")]
    return walker(policy).judge_signatures(top, targets, evidence)


def test_no_signature_is_not_signed():
    signed, findings = signed_verdicts(Policy(require_signature=True), {})
    assert [s for _, s in signed] == [False]
    assert [(f.kind, type(f.error), str(f.error)) for f in findings] == [(Kind.SIGNATURE, NotSigned, "not signed")]


def test_a_signature_of_the_index_covers_its_children():
    signed, findings = signed_verdicts(Policy(require_signature=True, key=FakeKey()),
                                       {IMAGE: [Evidence(True, (IMAGE,))]}, platforms=2)
    assert [s for _, s in signed] == [True, True] and findings == []


def test_with_a_key_a_signature_that_does_not_verify_or_names_another_digest_fails():
    other = Digest.of(b"another image")
    policy = Policy(require_signature=True, key=FakeKey())
    _, findings = signed_verdicts(policy, {IMAGE: [Evidence(False)]})
    assert [(type(f.error), str(f.error)) for f in findings] == [
        (SignatureInvalid, "signature does not verify with /etc/cosign.pub")]
    _, findings = signed_verdicts(policy, {IMAGE: [Evidence(False), Evidence(True, (other,))]})
    assert [(type(f.error), str(f.error)) for f in findings] == [
        (SignatureMismatch, f"signature is for {other}, not {IMAGE}")]


def test_without_a_key_a_signature_found_is_enough():
    signed, findings = signed_verdicts(Policy(require_signature=True), {IMAGE: [Evidence(None)]})
    assert [s for _, s in signed] == [True] and findings == []


def test_a_registry_whose_api_answered_404_is_not_asked_again(mock):
    other = Digest.of(b"another subject")
    api(mock, b"404 page not found", 404, content_type="text/plain")
    tag_list(mock)
    one = walker()
    for subject in (IMAGE, other):
        assert one.list_referrers(client(), REF, subject) == ((), FoundBy.TAG, ())
    assert [url for url in asked(mock) if "/referrers/" in url] == [f"/v2/team/app/referrers/{IMAGE}"]
