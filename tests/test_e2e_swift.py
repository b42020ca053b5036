"""The incident on real parts: docker-registry on OpenStack Swift (Debian's), damaged the way Swift damages it.

One Swift cluster (one node, one replica, tempauth, memcached) for the session, seeded once through a registry
into a template container; every test gets a fresh copy of that container and its own registry, in one of three
modes (plain; in-memory blob-descriptor cache; temp-URL redirects to Swift). Blobs are Swift dynamic large
objects cut into CHUNK-sized segments; the shared golden layer spans three of them.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List

import pytest
import requests

from registry_lab import ImageSet, seed_sentinels
from registry_lab.runbook import Runbook
from registry_lab.swift import SwiftCluster, SwiftLab, SwiftRegistry, swift_available

pytestmark = [pytest.mark.e2e, pytest.mark.swift]

CHUNK = 1 << 20  # the swift driver's smallest chunksize: small blobs, several segments, a quick seed
GOLDEN = CHUNK * 5 // 2  # segments of 1 MiB, 1 MiB, 0.5 MiB
PERFDATA = re.compile(r" \| blobs=(\d+);;;0 bytes=(\d+)B;;;0 failed=(\d+);;;0 images=(\d+);;;0 retries=(\d+);;;0 ")


@dataclass
class SwiftSetup:
    lab: SwiftLab
    images: ImageSet

    @property
    def cluster(self) -> SwiftCluster:
        return self.lab.cluster


@pytest.fixture(scope="session")
def swift(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SwiftSetup]:
    """Swift started once per session and always stopped (the context manager), the sentinels seeded once."""
    problem = swift_available()
    if problem:
        pytest.fail(f"the Swift lab cannot run here: {problem}")
    workdir = tmp_path_factory.mktemp("swift")
    with SwiftCluster(workdir / "cluster") as cluster:
        lab = SwiftLab(cluster, workdir, chunksize=CHUNK)
        images = lab.seed(lambda registry: seed_sentinels(registry, golden_size=GOLDEN))
        yield SwiftSetup(lab, images)


@pytest.fixture
def start_registry(swift: SwiftSetup, tmp_path: Path) -> Iterator:
    """start_registry(mode): a registry on a fresh copy of the seeded container; stopped after the test."""
    started: List[SwiftRegistry] = []

    def start(mode: str) -> SwiftRegistry:
        registry = swift.lab.registry(mode, workdir=tmp_path / f"registry-{len(started)}")
        started.append(registry)
        return registry

    yield start
    for registry in started:
        registry.stop()


def image_args(refs):
    return [arg for ref in refs for arg in ("-i", ref)]


def sentinel_run(plugin, registry, swift, *extra):
    return plugin("-R", registry.url, *image_args(swift.images.refs()), *extra)


def broken_line(run, digest):
    lines = [line for line in run.lines[1:] if line.startswith("CRITICAL: ") and digest in line]
    assert lines, run.stdout
    return lines[0]


def assert_ok(run):
    assert run.code == 0, run.stdout
    assert run.first.startswith("REGISTRY_DEEP OK - 9 images, 22 blobs, 5.0 MB verified in "), run.first


def assert_breaks_exactly(line, swift, digest):
    """The broken blob's line names every image (and platform) built on it, and no other."""
    breaks = line.split(" - breaks ", 1)[1].split(", ")
    expected = []
    for image in swift.images.images.values():
        if image.children:
            expected += [f"{image.ref} ({platform})" for platform, blobs in image.child_blobs.items()
                         if digest in blobs]
        elif digest in image.blobs:
            expected.append(image.ref)
    assert sorted(breaks) == sorted(expected), line
    assert {ref for ref in swift.images.referencing(digest)} == {ref.split(" (")[0] for ref in breaks}


def assert_redirected(registry, digest):
    """Blob GETs were answered with a redirect to Swift, and Swift served them through a temp URL."""
    log = registry.log_path.read_text(errors="replace")
    assert re.search(rf'"GET /v2/[a-z/]+/blobs/{digest} HTTP/1\.1" 307 .*check_registry_deep/', log), \
        "no redirected blob GET in the registry's access log"
    proxy_log = (registry.cluster.logs / "proxy.log").read_text(errors="replace")
    hexpart = digest.split(":")[1]
    assert re.search(rf"GET /v1/AUTH_test/{registry.container}/files/docker/registry/v2/blobs/sha256/"
                     rf"{hexpart[:2]}/{hexpart}/data%3Ftemp_url_sig%3D", proxy_log), "Swift served no temp URL GET"


GOLDEN_BREAKS_8 = "REGISTRY_DEEP CRITICAL - 1 broken blob, breaking 8 of 9 images: layer {short}… "


def short(digest):
    return digest[:19]


# -- (a) the incident: container sync between the registry's container and a mirror ---------------------

@pytest.mark.parametrize("mode", ["plain", "cache", "redirect"])
def test_incident_container_sync_propagates_the_mirrors_deletes(plugin, swift, start_registry, mode):
    """The registry's container and a mirror sync both ways (Swift's own container-sync daemon, through a
    realm on 127.0.0.1). The mirror is deleted: its deletion had reached the segments of the shared golden
    layer (all but the first) when the sync daemon ran, and the daemon carried those deletes into the
    registry's container. The layer's manifest object survives: tags and manifests still resolve."""
    cluster, golden = swift.cluster, swift.images.golden.digest
    registry = start_registry(mode)
    assert_ok(sentinel_run(plugin, registry, swift))  # (and in cache mode, the cache is warm now)

    incident = registry.replay_sync_incident(golden, keep=1)
    # the first pass mirrored every object; the second deleted two of them here as well
    assert incident.mirrored == len(cluster.list_objects(registry.container)) + len(incident.deleted)
    assert [size for _, size in incident.segments] == [CHUNK, CHUNK, CHUNK // 2]
    assert "deletes: 2" in incident.second_pass, incident.second_pass[-2000:]  # carried over by the daemon
    assert incident.left == incident.segments[:1]  # the registry's container lost them too

    run = sentinel_run(plugin, registry, swift)
    assert run.code == 2, run.stdout
    assert run.first.startswith(GOLDEN_BREAKS_8.format(short=short(golden))), run.first
    line = broken_line(run, golden)
    if mode == "cache":  # the cache still says 2.5 MiB: 200, the old Content-Length, then 1 MiB and a cut
        assert line.startswith(f"CRITICAL: layer {golden}: "), line
    else:  # Swift's DLO length (the listing's sum) is what the registry, or Swift itself, declares
        assert line.startswith(f"CRITICAL: layer {golden}: truncated: Content-Length says {CHUNK} of {GOLDEN} "
                               "bytes - breaks "), line
    assert_breaks_exactly(line, swift, golden)
    assert PERFDATA.search(run.first).group(3) == "1"
    if mode == "redirect":
        assert_redirected(registry, golden)


# -- (b), (c), (d): one object damaged in Swift -----------------------------------------------------------

@pytest.mark.parametrize("mode", ["plain", "redirect"])
def test_one_segment_of_the_golden_layer_truncated(plugin, swift, start_registry, mode):
    golden = swift.images.golden.digest
    registry = start_registry(mode)
    registry.truncate_segment(golden, 1, 1000)  # the middle segment: 1 MiB -> 1000 bytes
    run = sentinel_run(plugin, registry, swift)
    assert run.code == 2, run.stdout
    expected = GOLDEN - CHUNK + 1000
    assert run.first.startswith(GOLDEN_BREAKS_8.format(short=short(golden)) +
                                f"truncated: Content-Length says {expected} of {GOLDEN} bytes"), run.first
    line = broken_line(run, golden)
    assert line.startswith(f"CRITICAL: layer {golden}: truncated: Content-Length says {expected} of {GOLDEN} "
                           "bytes - breaks "), line
    assert_breaks_exactly(line, swift, golden)
    if mode == "redirect":
        assert_redirected(registry, golden)


@pytest.mark.parametrize("mode", ["plain", "cache", "redirect"])
def test_same_length_garbage_in_a_segment(plugin, swift, start_registry, mode):
    golden = swift.images.golden.digest
    registry = start_registry(mode)
    if mode == "cache":
        assert_ok(sentinel_run(plugin, registry, swift))
    registry.garble_segment(golden, 1)
    run = sentinel_run(plugin, registry, swift)
    assert run.code == 2, run.stdout
    assert run.first.startswith(GOLDEN_BREAKS_8.format(short=short(golden)) + "digest mismatch: got sha256:"), \
        run.first
    line = broken_line(run, golden)
    assert re.match(rf"CRITICAL: layer {golden}: digest mismatch: got sha256:[0-9a-f]{{64}} - breaks ", line), line
    assert_breaks_exactly(line, swift, golden)
    if mode == "redirect":
        assert_redirected(registry, golden)


@pytest.mark.parametrize("mode", ["plain", "redirect"])
def test_a_blobs_object_deleted(plugin, swift, start_registry, mode):
    golden = swift.images.golden.digest
    registry = start_registry(mode)
    registry.delete_blob(golden)  # the DLO manifest object; its segments stay, orphaned
    run = sentinel_run(plugin, registry, swift)
    assert run.code == 2, run.stdout
    assert run.first.startswith(GOLDEN_BREAKS_8.format(short=short(golden)) + "404 BLOB_UNKNOWN in every "
                                "repository that references it"), run.first
    line = broken_line(run, golden)
    assert line.startswith(f"CRITICAL: layer {golden}: 404 BLOB_UNKNOWN in every repository that references it")
    assert_breaks_exactly(line, swift, golden)


# -- (e) a warm blob-descriptor cache: 200, the old Content-Length, fewer or no bytes ---------------------

def test_warm_cache_serves_old_lengths_with_fewer_or_no_bytes(plugin, swift, start_registry):
    images = swift.images
    golden = images.golden.digest
    web_own = images.images["web"].blobs[-1]
    api_own = images.images["api"].blobs[-1]
    registry = start_registry("cache")
    assert_ok(sentinel_run(plugin, registry, swift))

    registry.truncate_segment(golden, 1, 1000)  # fewer bytes
    registry.delete_segments(web_own)  # no bytes: every segment gone
    registry.delete_blob(api_own)  # no bytes: the object itself gone
    for repository, digest, size in (("base/golden", golden, GOLDEN), ("apps/web", web_own, 256 << 10),
                                     ("apps/api", api_own, 256 << 10)):
        head = requests.head(f"{registry.url}/v2/{repository}/blobs/{digest}", timeout=10)
        assert (head.status_code, head.headers.get("Content-Length")) == (200, str(size))  # HEAD: all is well

    run = sentinel_run(plugin, registry, swift)
    assert run.code == 2, run.stdout
    assert run.first.startswith("REGISTRY_DEEP CRITICAL - 3 broken blobs, breaking 8 of 9 images: "), run.first
    for digest in (golden, web_own, api_own):
        assert_breaks_exactly(broken_line(run, digest), swift, digest)
    assert PERFDATA.search(run.first).group(3) == "3"
    assert run.seconds < 20


def test_warm_cache_short_body_is_reported_as_truncated_with_the_bytes_got(plugin, swift, start_registry):
    golden = swift.images.golden.digest
    registry = start_registry("cache")
    assert_ok(sentinel_run(plugin, registry, swift))
    registry.truncate_segment(golden, 1, 1000)
    run = sentinel_run(plugin, registry, swift)
    assert run.code == 2
    line = broken_line(run, golden)
    assert line.startswith(f"CRITICAL: layer {golden}: truncated: got {GOLDEN - CHUNK + 1000} of {GOLDEN} bytes"), \
        line


# -- stalls: Swift lost every segment of a layer, the registry waits ~13 s before its 500 ------------------

def test_a_stalled_blob_does_not_hold_up_the_others_and_is_named_by_the_stall_timeout(plugin, swift, start_registry):
    """All segments of apps/web's own layer gone: the registry sees a zero-length large object and, reading
    after writing, retries for ~13 s before answering 500, on every HEAD and GET. The golden layer is cut
    short as well. The other blobs must be verified meanwhile; the layer whose GET gets no answer is cut by the
    stall timeout (2 s with -t 16), asked again, and named CRITICAL well before the deadline."""
    images = swift.images
    golden = images.golden.digest
    web_own = images.images["web"].blobs[-1]
    registry = start_registry("plain")
    registry.delete_segments(web_own)
    registry.delete_segments(golden, [1, 2])
    started = time.monotonic()
    run = sentinel_run(plugin, registry, swift, "-t", "16")
    assert run.code == 2, run.stdout
    assert run.first.startswith(GOLDEN_BREAKS_8.format(short=short(golden)).replace("1 broken blob", "2 broken blobs")
                                + f"truncated: Content-Length says {CHUNK} of {GOLDEN} bytes | "), run.first
    assert_breaks_exactly(broken_line(run, golden), swift, golden)
    stalled = broken_line(run, web_own)
    assert stalled == f"CRITICAL: layer {web_own}: {registry.url} sent no answer in 2s - breaks apps/web:1.0", stalled
    blobs, _, failed, images_count, _ = map(int, PERFDATA.search(run.first).groups())
    assert (blobs, failed, images_count) == (20, 2, 9)  # every other blob verified while it stalled
    assert time.monotonic() - started < 16


# -- the README's runbook on Swift -------------------------------------------------------------------------

def test_runbook_repairs_a_truncated_blob_in_swift_by_uploading_a_checked_copy(plugin, swift, start_registry,
                                                                               tmp_path):
    """The repair of the runbook on the incident's own storage: the blob's object (a DLO manifest) deleted, as
    `swift delete` does (its segments stay, for the post-mortem), then the runbook's own blocks: a good copy from
    a healthy registry (one that redirects blob GETs to Swift: the block must follow), checked with sha256sum,
    uploaded through the registry's API."""
    golden = swift.images.golden.digest
    registry, healthy = start_registry("plain"), start_registry("redirect")
    registry.truncate_blob(golden, 4096)
    run = sentinel_run(plugin, registry, swift)
    assert run.code == 2, run.stdout
    assert run.first.startswith(GOLDEN_BREAKS_8.format(short=short(golden)) +
                                f"truncated: Content-Length says 4096 of {GOLDEN} bytes | "), run.first

    segments = registry.segments(golden)
    registry.cluster.delete_object(registry.container, registry.data_object(golden))
    runbook = Runbook(tmp_path / "runbook", {"registry": registry.url, "good": healthy.url, "digest": golden,
                                              "repo": "base/golden"})
    done = runbook.run("good-copy", "upload")
    assert done.stdout == f"{runbook.workdir}/blob: OK\n", done.stdout
    assert re.search(rf'"GET /v2/base/golden/blobs/{golden} HTTP/1\.1" 307 .*"curl/',
                     healthy.log_path.read_text(errors="replace")), "the good copy came without a redirect"
    assert_ok(sentinel_run(plugin, registry, swift))
    assert registry.segments(golden) != segments  # the upload's own segments; the damaged ones left aside
