"""End to end: --referrers, --require-signature and --cosign-key against a real docker-registry (distribution 2.8),
its own garbage collector, and (for the referrers API, which no packaged registry has) the lab's stand-in front.

The signatures here are made by registry_lab.signing (a stand-in signer of ours, cosign's formats); the real
signer and verifier (trixie's skopeo and podman) are in test_e2e_sigstore.py.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Iterator

import pytest
from conftest import ROOT, run_command

from registry_lab import LocalRegistry
from registry_lab.artifacts import (
    SPDX,
    AttachedSet,
    ReferrersFront,
    fallback_tag,
    garbage_collect,
    push_artifact_manifest,
    push_fallback_index,
    push_referrer,
    seed_attached,
    write_fallback_index,
)
from registry_lab.images import Image, Layer, random_bytes
from registry_lab.signing import KeyPair

pytestmark = pytest.mark.e2e


def masked(line: str) -> str:
    """Timings, and sizes that carry the lab registry's port (a signature names it) or a signature's length."""
    return re.sub(r"bytes=\d+B", "bytes=<n>B", re.sub(r"[0-9.]+ kB|\d+ B\b", "<size>", re.sub(
        r"verified in [0-9.]+s|time=[0-9.]+s", "<time>", line)))


class Attached:
    """The seeded template, its key files, and private registries on copies of it."""

    def __init__(self, workdir: Path, registry: LocalRegistry, seeded: AttachedSet, key: Path, other_key: Path):
        self.workdir, self.template, self.seeded, self.key, self.other_key = workdir, registry, seeded, key, other_key

    def registry(self, tmp: Path) -> LocalRegistry:
        return self.template.clone(tmp).start()


@pytest.fixture(scope="module")
def attached(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Attached]:
    workdir = tmp_path_factory.mktemp("attached")
    keys = KeyPair.generate()
    key = keys.write_public(workdir / "cosign.pub")
    other = KeyPair.generate().write_public(workdir / "other.pub")
    with LocalRegistry(workdir / "template") as registry:
        seeded = seed_attached(registry, keys)
    yield Attached(workdir, registry, seeded, key, other)


@pytest.fixture
def registry(attached: Attached, tmp_path: Path) -> Iterator[LocalRegistry]:
    registry = attached.registry(tmp_path)
    yield registry
    registry.stop()


def test_referrers_found_by_fallback_tag_and_cosign_tag_are_verified(plugin, attached, registry):
    run = plugin("-R", registry.url, "-i", attached.seeded.ref("app"), "--referrers", "-v")
    assert run.code == 0, run.stdout
    assert masked(run.first) == ("REGISTRY_DEEP OK - 1 image, 6 blobs, <size> <time> | artifacts=2;;;0 "
                                 "blobs=6;;;0 bytes=<n>B;;;0 failed=0;;;0 images=1;;;0 retries=0;;;0 <time>;;;0")
    sbom, sig = attached.seeded.artifacts["sbom"], attached.seeded.artifacts["sig"]
    app = attached.seeded.images["app"].digest
    assert masked(run.lines[2]) == (f"artifact {sbom.digest[:19]}… (application/spdx+json) of lab/app:1.0 "
                                    f"(subject {app[:19]}…, referrers-tag): 2 blobs, <size>: OK")
    assert masked(run.lines[3]) == (f"artifact {sig.digest[:19]}… (cosign tag {fallback_tag(app)[:19]}….sig) of "
                                    f"lab/app:1.0 (subject {app[:19]}…, cosign-tag): 2 blobs, <size>: OK")


def test_gc_deletes_the_listed_sbom_critical_naming_it_unchanged_without_referrers(plugin, attached, registry):
    ref = attached.seeded.ref("app")
    before = plugin("-R", registry.url, "-i", ref)
    output = garbage_collect(registry)
    sbom = attached.seeded.artifacts["sbom"]
    assert f"manifest eligible for deletion: {sbom.digest}" in output
    assert registry.session.get(f"{registry.url}/v2/lab/app/manifests/{sbom.digest}").status_code == 404
    after = plugin("-R", registry.url, "-i", ref)
    assert (after.code, masked(after.stdout)) == (before.code, masked(before.stdout)) == (
        0, masked(before.stdout))
    run = plugin("-R", registry.url, "-i", ref, "--referrers")
    assert run.code == 2, run.stdout
    assert masked(run.first) == (
        f"REGISTRY_DEEP CRITICAL - 1 broken manifest, breaking 1 of 1 image: manifest {sbom.digest[:19]}… "
        f"(application/spdx+json) 404 MANIFEST_UNKNOWN (manifest unknown) | artifacts=1;;;0 blobs=4;;;0 "
        f"bytes=<n>B;;;0 failed=1;;;0 images=1;;;0 retries=0;;;0 <time>;;;0")
    assert run.lines[1] == (f"CRITICAL: manifest {sbom.digest}: 404 MANIFEST_UNKNOWN (manifest unknown) - breaks "
                            f"artifact {sbom.digest[:19]}… (application/spdx+json) of lab/app:1.0")


def test_json_has_artifact_rows_and_signed_on_image_rows(plugin, attached, registry):
    run = plugin("-R", registry.url, "-i", attached.seeded.ref("app"), "-i", attached.seeded.ref("plain"),
                 "--referrers", "--require-signature", "--json", "-")
    assert run.code == 2, run.stdout
    document = json.loads(run.stdout)
    assert {(r["image"], r["signed"], r["state"]) for r in document["images"]} == {
        ("lab/app:1.0", True, "OK"), ("lab/plain:1.0", False, "CRITICAL")}
    app = attached.seeded.images["app"].digest
    assert document["artifacts"] == [
        {"image": "lab/app:1.0", "platform": "", "subject": app, "digest": attached.seeded.artifacts["sbom"].digest,
         "artifact_type": SPDX, "found_by": "referrers-tag", "state": "OK", "error": None},
        {"image": "lab/app:1.0", "platform": "", "subject": app, "digest": attached.seeded.artifacts["sig"].digest,
         "artifact_type": "application/vnd.oci.image.config.v1+json", "found_by": "cosign-tag", "state": "OK",
         "error": None}]
    plain = attached.seeded.images["plain"].digest
    assert document["broken"][0]["line"] == f"image lab/plain:1.0: not signed (manifest {plain})"


def test_cosign_key_verdicts(plugin, attached, registry):
    seeded = attached.seeded
    for name, key, first in (
            ("app", attached.key, "REGISTRY_DEEP OK - 1 image, 4 blobs"),
            ("bundled", attached.key, "REGISTRY_DEEP OK - 1 image, 4 blobs"),
            ("multi", attached.key, "REGISTRY_DEEP OK - 1 image, 6 blobs"),
            ("plain", attached.key, "REGISTRY_DEEP CRITICAL - 1 signature problem, breaking 1 of 1 image: "
                                    "image {ref}: not signed"),
            ("app", attached.other_key, "REGISTRY_DEEP CRITICAL - 1 signature problem, breaking 1 of 1 image: "
                                        "image {ref}: signature does not verify with /"),
            ("copied", attached.key, "REGISTRY_DEEP CRITICAL - 1 signature problem, breaking 1 of 1 image: "
                                     "image {ref}: signature is for {app:.19}")):
        run = plugin("-R", registry.url, "-i", seeded.ref(name), "--cosign-key", str(key))
        expected = first.format(ref=seeded.ref(name), key=key, app=seeded.images["app"].digest)
        assert run.first.startswith(expected), (name, key, run.first)
        assert run.code == (0 if "OK" in expected else 2), run.stdout
        if key == attached.other_key:
            assert run.lines[1] == (f"CRITICAL: image lab/app:1.0: signature does not verify with {key} (manifest "
                                    f"{seeded.images['app'].digest})")


def test_signature_mismatch_line_names_both_digests(plugin, attached, registry):
    seeded = attached.seeded
    run = plugin("-R", registry.url, "-i", seeded.ref("copied"), "--cosign-key", str(attached.key))
    copied, app = seeded.images["copied"].digest, seeded.images["app"].digest
    assert run.lines[1] == f"CRITICAL: image lab/copied:1.0: signature is for {app}, not {copied} (manifest {copied})"


def test_require_signature_alone_finds_signatures_and_nothing_else(plugin, attached, registry):
    run = plugin("-R", registry.url, "-i", attached.seeded.ref("app"), "--require-signature", "-v")
    assert run.code == 0, run.stdout
    assert masked(run.first).endswith("| artifacts=1;;;0 blobs=4;;;0 bytes=<n>B;;;0 failed=0;;;0 images=1;;;0 "
                                      "retries=0;;;0 <time>;;;0")
    paths = [e["path"] for e in registry.access_log()]
    assert not any(path.endswith((".att", ".sbom")) for path in paths)


def test_referrers_api_stand_in_pages_and_no_fallback_asked(plugin, attached, registry):
    app = attached.seeded.images["app"]
    extra = push_referrer(registry, app, "application/vnd.example.unknown+json", b"{\"who\": \"knows\"}")
    with ReferrersFront(registry, page_size=1) as front:
        run = plugin("-R", front.url, "-i", attached.seeded.ref("app"), "--referrers", "--json", "-")
        paths = [r["path"] for r in front.requests]
    document = json.loads(run.stdout)
    assert run.code == 0, run.stdout
    rows = {r["digest"]: r for r in document["artifacts"]}
    assert rows[extra.digest]["found_by"] == "referrers-api"
    assert rows[extra.digest]["artifact_type"] == "application/vnd.example.unknown+json"  # reported as itself
    assert rows[attached.seeded.artifacts["sbom"].digest]["found_by"] == "referrers-api"
    assert f"/v2/lab/app/referrers/{app.digest}?n=1&last=1" in paths  # the second page, by its Link
    assert f"/v2/lab/app/manifests/{fallback_tag(app.digest)}" not in paths  # the API answered: no fallback tag


def test_no_flags_no_change_in_requests(plugin, attached, registry):
    """Without the flags, a registry full of artifacts gets exactly the requests it got before."""
    seeded = attached.seeded
    with ReferrersFront(registry) as front:
        run = plugin("-R", front.url, "-i", seeded.ref("app"), "-i", seeded.ref("multi"))
        requests = sorted((r["method"], r["path"]) for r in front.requests)
    assert run.code == 0, run.stdout
    app, multi = seeded.images["app"], seeded.images["multi"]
    expected = [("GET", "/v2/"), ("GET", "/v2/lab/app/manifests/1.0"), ("GET", "/v2/lab/multi/manifests/1.0")]
    expected += [("GET", f"/v2/lab/multi/manifests/{child}") for child in multi.children.values()]
    expected += [("GET", f"/v2/lab/app/blobs/{blob}") for blob in app.blobs]
    expected += [("GET", f"/v2/lab/multi/blobs/{blob}") for blob in multi.blobs]
    assert requests == sorted(expected)


# -- hostile input, bounded ----------------------------------------------------------------------------------

def test_fallback_index_of_thousands_of_entries_ends_with_a_verdict(plugin, attached, registry):
    app = attached.seeded.images["app"]
    entries = [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 500, "artifactType": SPDX,
                "digest": f"sha256:{i:064x}"} for i in range(5000)]
    registry.delete_tag("lab/app", fallback_tag(app.digest))
    write_fallback_index(registry, "lab/app", app.digest, entries)
    run = run_command(["/usr/bin/time", "-f", "maxrss %M", sys.executable, "-m", "check_registry_deep", "-R",
                       registry.url, "-i", app.ref, "--referrers", "-t", "20"], timeout=60,
                      env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert int(run.stderr.split("maxrss ")[-1]) < 100 * 1024, run.stderr  # kB: the list is read, not hoarded
    assert run.code == 2, run.stdout
    assert run.first.startswith("REGISTRY_DEEP CRITICAL - 64 broken manifests, breaking 1 of 1 image: manifest "
                                "sha256:000000000000… (application/spdx+json) 404 MANIFEST_UNKNOWN"), run.first
    assert run.lines[-1].startswith("… and ") and len(run.stdout.encode()) < 8192
    assert len(registry.access_log()) < 100  # 64 manifests, the discovery requests: no retry storm
    bound = [f for f in json.loads(plugin("-R", registry.url, "-i", app.ref, "--referrers", "--json", "-").stdout
                                   )["content"] if f["caveats"]]
    assert [(f["subject"], f["state"], f["caveats"]) for f in bound] == [
        (app.digest, "WARNING", ["4936 referrers not verified: bound reached"])]


def test_link_pointing_back_at_the_same_page_is_a_warning(plugin, attached, registry):
    with ReferrersFront(registry, page_size=1, link_loop=True) as front:
        run = plugin("-R", front.url, "-i", attached.seeded.ref("app"), "--referrers", "-t", "20")
        referrer_requests = [r for r in front.requests if "/referrers/" in r["path"]]
    app = attached.seeded.images["app"].digest
    assert run.code == 1, run.stdout
    assert run.first.startswith(f"REGISTRY_DEEP WARNING - 3 warnings: referrers {app[:19]}… referrers API: its Link "
                                "header points back"), run.first  # the image's and its two artifacts' lists
    assert run.lines[1] == (f"WARNING: referrers {app}: referrers API: its Link header points back at a page already "
                            f"read; the rest not read - affects lab/app:1.0")
    assert len(referrer_requests) <= 2 * 4  # the image's page twice, then its artifacts': bounded


def test_two_artifacts_referring_to_each_other_end(plugin, attached, registry):
    """A refers to the image, B to A (its subject), and B's referrers list names A: the walk sees each once."""
    app = attached.seeded.images["app"]
    first = push_referrer(registry, app, SPDX, b"{\"first\": 1}")
    second = push_referrer(registry, Image("lab/app", None, first.digest, first.media_type), SPDX, b"{\"second\": 2}")
    write_fallback_index(registry, "lab/app", first.digest, [second.descriptor()])
    write_fallback_index(registry, "lab/app", second.digest, [first.descriptor()])
    registry.delete_tag("lab/app", fallback_tag(app.digest))
    write_fallback_index(registry, "lab/app", app.digest, [first.descriptor()])
    run = plugin("-R", registry.url, "-i", app.ref, "--referrers", "--json", "-", "-t", "20")
    assert run.code == 0, run.stdout
    found = [(r["digest"], r["subject"]) for r in json.loads(run.stdout)["artifacts"]]
    assert found == [(first.digest, app.digest), (attached.seeded.artifacts["sig"].digest, app.digest),
                     (second.digest, first.digest)], found  # breadth first: the image's own referrers come first


def test_referrers_page_over_4_mib_is_refused_not_read_on(plugin, attached, registry):
    """The stand-in front pads its page past 4 MiB; the real registry itself refuses to serve a manifest that big
    (`storage: read exceeds limit`, 500), which the next test shows."""
    with ReferrersFront(registry, filler=5 << 20) as front:
        run = plugin("-R", front.url, "-i", attached.seeded.ref("app"), "--referrers", "-t", "20")
    app = attached.seeded.images["app"].digest
    assert run.code == 2, run.stdout
    assert run.lines[1] == f"CRITICAL: referrers {app}: referrers page /v2/lab/app/referrers/{app} " \
                           f"exceeds the 4 MiB cap - breaks lab/app:1.0", run.stdout


def test_fallback_index_over_4_mib_the_registry_will_not_serve(plugin, attached, registry):
    app = attached.seeded.images["app"]
    entries = [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 500, "artifactType": SPDX,
                "digest": f"sha256:{i:064x}", "annotations": {"pad": "x" * 400}} for i in range(10000)]
    registry.delete_tag("lab/app", fallback_tag(app.digest))
    write_fallback_index(registry, "lab/app", app.digest, entries)
    run = plugin("-R", registry.url, "-i", app.ref, "--referrers", "-t", "20")
    assert run.code == 2, run.stdout
    assert run.lines[1] == f"CRITICAL: referrers {app.digest}: 500 UNKNOWN (unknown error) - " \
                           f"breaks lab/app:1.0", run.stdout


def test_embedded_data_that_does_not_match_is_critical(plugin, attached, registry):
    app = attached.seeded.images["app"]
    artifact = push_artifact_manifest(registry, "lab/app", [Layer(random_bytes("embedded", 64), SPDX)],
                                      artifact_type=SPDX, subject=app, config=b"{\"a\":1}",
                                      config_media_type="application/vnd.example.config+json", embed=True)
    body = registry.blob_path(artifact.digest).read_bytes()
    assert b'"data"' in body
    # the registry stores what it was given; a wrong copy is written on disk under the same descriptor
    tampered = body.replace(b'"data": "eyJhIjoxfQ=="', b'"data": "eyJhIjoyfQ=="')
    assert tampered != body
    registry.delete_tag("lab/app", fallback_tag(app.digest))
    digest = registry.write_manifest_on_disk("lab/app", "tampered", tampered)
    write_fallback_index(registry, "lab/app", app.digest, [
        {"mediaType": artifact.media_type, "digest": digest, "size": len(tampered), "artifactType": SPDX}])
    run = plugin("-R", registry.url, "-i", app.ref, "--referrers")
    assert run.code == 2, run.stdout
    assert "config sha256:" in run.lines[1] and "embedded data hashes to sha256:" in run.lines[1], run.stdout


def test_metrics_say_which_image_is_signed_and_how_many_artifacts_verified(plugin, attached, registry, tmp_path):
    metrics = tmp_path / "signed.prom"
    run = plugin("-R", registry.url, "-i", attached.seeded.ref("app"), "-i", attached.seeded.ref("plain"),
                 "--referrers", "--cosign-key", str(attached.key), "--metrics-file", str(metrics))
    assert run.code == 2, run.stdout
    samples = {line.rsplit(" ", 1)[0]: line.rsplit(" ", 1)[1] for line in metrics.read_text().splitlines()
               if line.startswith(("registry_deep_image_signed", "registry_deep_verified_artifacts"))}
    url = registry.url
    assert samples == {
        f'registry_deep_image_signed{{check="signed",image="lab/app:1.0",platform="",registry="{url}"}}': "1.0",
        f'registry_deep_image_signed{{check="signed",image="lab/plain:1.0",platform="",registry="{url}"}}': "0.0",
        'registry_deep_verified_artifacts{check="signed"}': "2.0"}


def test_without_the_flags_no_artifact_metrics(plugin, attached, registry, tmp_path):
    metrics = tmp_path / "plain.prom"
    plugin("-R", registry.url, "-i", attached.seeded.ref("app"), "--metrics-file", str(metrics))
    assert "registry_deep_image_signed" not in metrics.read_text()
    assert "registry_deep_verified_artifacts" not in metrics.read_text()


def test_a_notary_signature_counts_as_a_signature_but_not_for_a_cosign_key(plugin, attached, registry):
    plain = attached.seeded.images["plain"]
    notary = push_referrer(registry, plain, "application/vnd.cncf.notary.signature", b"not really a JWS",
                           layer_media_type="application/jose+json")
    push_fallback_index(registry, plain, [notary])
    required = plugin("-R", registry.url, "-i", plain.ref, "--require-signature")
    assert (required.code, masked(required.first)) == (0, (
        "REGISTRY_DEEP OK - 1 image, 4 blobs, <size> <time> | artifacts=1;;;0 blobs=4;;;0 bytes=<n>B;;;0 "
        "failed=0;;;0 images=1;;;0 retries=0;;;0 <time>;;;0"))
    keyed = plugin("-R", registry.url, "-i", plain.ref, "--cosign-key", str(attached.key))
    assert keyed.code == 2, keyed.stdout
    assert keyed.lines[1] == f"CRITICAL: image lab/plain:1.0: not signed (manifest {plain.digest})"


def test_referrers_below_the_depth_bound_are_counted_not_verified(plugin, attached, registry):
    """image <- A <- B <- C <- D (each the subject of the next), through the API stand-in: A, B and C are
    verified (depth 3), D is looked up and said."""
    chain = [attached.seeded.images["app"]]
    for name in "ABCD":
        pushed = push_referrer(registry, chain[-1], SPDX, f'{{"level": "{name}"}}'.encode())
        chain.append(Image("lab/app", None, pushed.digest, pushed.media_type))
    with ReferrersFront(registry) as front:
        run = plugin("-R", front.url, "-i", attached.seeded.ref("app"), "--referrers", "--json", "-")
    document = json.loads(run.stdout)
    assert run.code == 1, run.stdout
    verified = [row["digest"] for row in document["artifacts"]]
    assert [image.digest in verified for image in chain[1:]] == [True, True, True, False]
    assert [(f["subject"], f["caveats"]) for f in document["content"] if f["caveats"]] == [
        (chain[0].digest, ["1 referrers not verified: bound reached"])]


def test_a_bad_cosign_key_file_is_one_unknown_line(plugin, tmp_path):
    missing = plugin("-R", "http://127.0.0.1:9", "-i", "lab/app:1.0", "--cosign-key", str(tmp_path / "none.pub"))
    assert (missing.code, missing.stdout) == (3, f"REGISTRY_DEEP UNKNOWN - cannot read cosign key "
                                                 f"{tmp_path / 'none.pub'}: No such file or directory\n")
    (tmp_path / "junk.pub").write_text("not a key\n")
    junk = plugin("-R", "http://127.0.0.1:9", "-i", "lab/app:1.0", "--cosign-key", str(tmp_path / "junk.pub"))
    assert junk.code == 3 and len(junk.lines) == 1, junk.stdout
    assert junk.first.startswith(f"REGISTRY_DEEP UNKNOWN - cosign key {tmp_path / 'junk.pub'}: expected a PEM public "
                                 "key"), junk.first
