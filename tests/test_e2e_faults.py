"""End to end hardening: faults injected by a proxy in front of a real docker-registry, hostile registries,
load, and secrets. Whatever the registry or the network does, the plugin answers within -t + 1 s with a true
state on one readable line, leaks nothing, and sends only GET and HEAD.

docs/guards.md tabulates what these tests assert.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import pytest
from conftest import assert_answered_in_time, own_time

from check_registry_deep.deadline import Deadline
from check_registry_deep.transfer import stall_timeout
from check_registry_deep.verify import CHUNK_SIZE
from registry_lab.faults import (
    ClaimEncoding,
    CutAt,
    Drip,
    FaultProxy,
    Gzip,
    GzipBomb,
    Overlong,
    Redirect,
    ResetAfter,
    Respond,
    Silence,
    StallAfter,
    error_body,
    gzip_bomb,
    unavailable,
)
from registry_lab.images import DOCKER_CONFIG, Layer, push_image, random_bytes
from registry_lab.registry import sha256
from registry_lab.secure import CertificateAuthority, htpasswd

pytestmark = pytest.mark.e2e

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTPUT_LIMIT = 8192
RSS_LIMIT_KB = 100 * 1024
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
#: Big enough that a reset after two reads leaves something to resume, whatever the read size is.
BIG_SIZE = 4 * CHUNK_SIZE + 777
RESET_AT = 2 * CHUNK_SIZE + 12345


@dataclass(frozen=True)
class Measured:
    code: int
    stdout: str
    stderr: str
    seconds: float
    max_rss_kb: int

    @property
    def lines(self):
        return self.stdout.splitlines()

    @property
    def first(self) -> str:
        return self.lines[0] if self.lines else ""


#: Runs the plugin's entry point and reports the process's peak RSS at exit. VmHWM, not ru_maxrss: a child's
#: ru_maxrss keeps the high-water mark of the fork from this (big) test process across exec; VmHWM starts anew.
MEASURING = """
import atexit, re, runpy, sys
def peak():
    with open("/proc/self/status") as status:
        sys.stderr.write("\\n" + re.search(r"VmHWM:\\s*\\d+ kB", status.read()).group(0) + "\\n")
atexit.register(peak)
sys.argv[0] = "check_registry_deep"
runpy.run_module("check_registry_deep", run_name="__main__", alter_sys=True)
"""


def measured(*args: str, env: dict | None = None, timeout: float = 120) -> Measured:
    """The plugin as Icinga runs it (a fresh process), with its peak RSS."""
    environment = {**os.environ, "PYTHONPATH": ROOT, **(env or {})}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", MEASURING, *args], capture_output=True, text=True, timeout=timeout,
                          env=environment, stdin=subprocess.DEVNULL)
    seconds = time.monotonic() - started
    peak = re.search(r"\nVmHWM:\s*(\d+) kB\n$", done.stderr)
    assert peak, done.stderr[-2000:]
    return Measured(done.returncode, done.stdout, done.stderr[:peak.start()], seconds, int(peak.group(1)))


def assert_readable(run, seconds: float | None = None) -> None:
    """One status line with a state word, no traceback, under Nagios' 8 KiB, within -t (as
    conftest.assert_answered_in_time counts it)."""
    assert re.match(r"REGISTRY_DEEP (OK|WARNING|CRITICAL|UNKNOWN) - \S", run.first), run.stdout[:2000]
    assert "Traceback" not in run.stdout + run.stderr, run.stderr[-2000:]
    assert len(run.stdout.encode()) < OUTPUT_LIMIT
    if seconds is not None:
        assert_answered_in_time(run, seconds)


# -- the lab: a private registry with the sentinels and one bigger image, a proxy in front -----------------

@pytest.fixture(scope="module")
def registry(lab, tmp_path_factory):
    registry = lab.registry(tmp_path_factory.mktemp("faults"))
    big = Layer(random_bytes("faults-big", BIG_SIZE))
    push_image(registry, "big/blob", "1", [big])
    registry.big = big.digest
    yield registry
    registry.stop()
    ours = [e for e in registry.access_log() if "check_registry_deep/" in e["agent"]]
    assert ours and {e["method"] for e in ours} <= {"GET", "HEAD"}, "the plugin changed the registry"


@pytest.fixture(scope="module")
def shared_proxy(registry):
    with FaultProxy(registry.url) as proxy:
        yield proxy


@pytest.fixture
def proxy(shared_proxy):
    """The proxy with no rules; afterwards, proof that only GET and HEAD went through it."""
    shared_proxy.clear()
    shared_proxy.strip_range = False
    yield shared_proxy
    methods = shared_proxy.methods()
    shared_proxy.clear()
    shared_proxy.strip_range = False
    assert methods <= {"GET", "HEAD"}, methods


def blob_path(repository: str, digest: str) -> str:
    return rf"^GET /v2/{re.escape(repository)}/blobs/{digest}$"


def golden(lab) -> str:
    return lab.images.golden.digest


# -- 1. faults ---------------------------------------------------------------------------------------------

def test_reset_mid_blob_resumes_with_range_and_warns(plugin, proxy, registry):
    proxy.add(blob_path("big/blob", registry.big), ResetAfter(RESET_AT))
    run = plugin("-R", proxy.url, "-i", "big/blob:1")
    assert run.code == 1, run.stdout
    assert run.first.startswith("REGISTRY_DEEP WARNING - 1 warning: layer sha256:"), run.first
    assert "resumed with Range" in run.first
    ranges = [r.get("Range") for r in proxy.requests if registry.big in r["path"]]
    assert ranges[0] is None and ranges[1].startswith("bytes=") and len(ranges) == 2, ranges
    offset = int(ranges[1][len("bytes="):-1])
    assert 0 < offset <= RESET_AT
    assert f"resumed with Range after the connection broke at byte {offset} of {BIG_SIZE} - affects big/blob:1" \
        in run.stdout
    assert "retries=1;" in run.first
    assert "blobs=2;" in run.first  # the resumed blob counts as verified


def test_reset_where_range_is_ignored_starts_over_and_warns(plugin, proxy, registry):
    proxy.strip_range = True  # a server without Range support answers 200 with the whole blob
    proxy.add(blob_path("big/blob", registry.big), ResetAfter(RESET_AT))
    run = plugin("-R", proxy.url, "-i", "big/blob:1")
    assert run.code == 1, run.stdout
    assert "the server ignores Range: fetched again from the start" in run.stdout, run.stdout


def test_reset_before_any_byte_is_retried_and_warns(plugin, proxy, lab):
    proxy.add(blob_path("base/golden", golden(lab)), ResetAfter(0))
    run = plugin("-R", proxy.url, "-i", "base/golden:1")
    assert run.code == 1, run.stdout
    assert run.first.startswith("REGISTRY_DEEP WARNING - 1 warning: layer sha256:"), run.first
    assert "verified only after 1 retry" in run.first


def test_reset_on_every_attempt_is_critical(plugin, proxy, registry):
    proxy.add(blob_path("big/blob", registry.big), ResetAfter(100), times=None)
    run = plugin("-R", proxy.url, "-i", "big/blob:1", "-t", "10")
    assert run.code == 2, run.stdout
    # every byte that arrived counts (resumed from, a few times), and the verdict says how far each got, and who
    # reset it, in plain words (was: `connection broken after 100 bytes: Connection reset by peer`)
    assert f"connection reset by 127.0.0.1:{proxy.port} after 100 bytes | " in run.first, run.first
    assert own_time(run) < 10, run.first  # it gave up before its deadline, by its own clock
    assert_answered_in_time(run, 10)


def test_body_cut_short_once_is_resumed_and_warns(plugin, proxy, registry):
    proxy.add(blob_path("big/blob", registry.big), CutAt(RESET_AT))
    run = plugin("-R", proxy.url, "-i", "big/blob:1")
    assert run.code == 1, run.stdout
    assert f"resumed with Range after the connection broke at byte {RESET_AT} of {BIG_SIZE}" in run.stdout, \
        run.stdout


def test_body_always_cut_at_the_same_byte_is_truncated_not_a_network_fault(plugin, proxy, registry):
    """A warm cache answers 200 with the old Content-Length and fewer bytes, every time: a verdict on the
    content (CRITICAL, how many bytes arrived), reached without waiting for the retries to run out."""
    proxy.add(blob_path("big/blob", registry.big), CutAt(RESET_AT), times=None)
    run = plugin("-R", proxy.url, "-i", "big/blob:1")
    assert run.code == 2, run.stdout
    assert run.first.startswith("REGISTRY_DEEP CRITICAL - 1 broken blob, breaking 1 of 1 image: layer "), run.first
    assert f"truncated: got {RESET_AT} of {BIG_SIZE} bytes (the body ends before its Content-Length, 2 times)" \
        in run.stdout, run.stdout
    assert len([r for r in proxy.requests if registry.big in r["path"]]) == 2


def test_503_then_success_warns_verified_after_one_retry(plugin, proxy, lab):
    proxy.add(blob_path("base/golden", golden(lab)), unavailable(503))
    run = plugin("-R", proxy.url, "-i", "base/golden:1")
    assert run.code == 1, run.stdout
    assert run.first.startswith("REGISTRY_DEEP WARNING - 1 warning: layer sha256:"), run.first
    assert "verified only after 1 retry" in run.first and "retries=1;" in run.first


def test_503_every_time_is_critical_after_retries(plugin, proxy, lab):
    proxy.add(blob_path("base/golden", golden(lab)), unavailable(503), times=None)
    run = plugin("-R", proxy.url, "-i", "base/golden:1")
    assert run.code == 2, run.stdout
    assert "503 UNAVAILABLE" in run.first, run.first
    assert sum(1 for r in proxy.requests if golden(lab) in r["path"]) == 3  # the attempts are bounded


def test_429_retry_after_is_honoured(plugin, proxy, lab):
    proxy.add(blob_path("base/golden", golden(lab)), unavailable(429, "2"))
    run = plugin("-R", proxy.url, "-i", "base/golden:1")
    assert run.code == 1, run.stdout
    assert "verified only after 1 retry" in run.first
    assert run.seconds >= 2.0  # it waited as asked (backoff alone would be 0.5 s)


def test_429_retry_after_beyond_the_deadline_is_not_slept_through(plugin, proxy, lab):
    proxy.add(blob_path("base/golden", golden(lab)), unavailable(429, "120"), times=None)
    run = plugin("-R", proxy.url, "-i", "base/golden:1", "-t", "10")
    assert run.code == 2, run.stdout
    assert "429 TOOMANYREQUESTS" in run.stdout and "Retry-After 120s reaches past the deadline" in run.stdout
    assert run.seconds < 5


def test_stall_mid_body_once_is_cut_by_the_stall_timeout_and_resumed(plugin, proxy, registry):
    proxy.add(blob_path("big/blob", registry.big), StallAfter(256 << 10))
    run = plugin("-R", proxy.url, "-i", "big/blob:1", "-t", "5")
    assert run.code == 1, run.stdout
    assert "resumed with Range after the connection broke at byte 262144 of " in run.stdout, run.stdout
    # the stall timeout (waited out in full, so on the wall clock too), not the deadline (counted from main())
    assert run.seconds >= stall_timeout(Deadline(5)) == 2.0, run.seconds
    assert own_time(run) < 5, run.first


@pytest.mark.parametrize("timeout, code, word", [("4", 3, "UNKNOWN"), ("4:critical", 2, "CRITICAL")])
def test_stall_mid_body_every_time_but_moving_on_ends_at_the_deadline(plugin, proxy, registry, timeout, code, word):
    # 256 KiB, a stall of 2 s, resumed: 256 KiB more, a stall again... each time further: only -t ends it
    proxy.add(blob_path("big/blob", registry.big), StallAfter(256 << 10), times=None)
    run = plugin("-R", proxy.url, "-i", "big/blob:1", "-t", timeout)
    assert run.code == code, run.stdout
    assert run.first.startswith(f"REGISTRY_DEEP {word} - 1 image not checked: deadline of 4s passed while verifying "
                                "blobs"), run.first
    assert_readable(run, 4)


def test_slow_but_moving_transfer_is_never_cut_by_the_stall_timeout(plugin, proxy, registry):
    proxy.add(blob_path("big/blob", registry.big), Drip(1.0), times=None)  # a byte a second; stall timeout 2 s
    run = plugin("-R", proxy.url, "-i", "big/blob:1", "-t", "4")
    assert run.code == 3, run.stdout
    assert run.first.startswith("REGISTRY_DEEP UNKNOWN - 1 image not checked: deadline of 4s passed while verifying "
                                "blobs"), run.first
    assert " retries=0;" in run.first  # never cut, never resumed
    assert sum(1 for r in proxy.requests if registry.big in r["path"]) == 1


def test_content_encoding_label_over_unchanged_bytes_is_ok(plugin, proxy, lab):
    proxy.add(blob_path("base/golden", golden(lab)), ClaimEncoding("gzip"))
    run = plugin("-R", proxy.url, "-i", "base/golden:1")
    assert run.code == 0, run.stdout
    assert run.first.startswith("REGISTRY_DEEP OK - 1 image, 2 blobs, "), run.first


def test_hop_that_really_gzips_despite_identity_warns(plugin, proxy, lab):
    proxy.add(blob_path("base/golden", golden(lab)), Gzip())
    run = plugin("-R", proxy.url, "-i", "base/golden:1")
    assert run.code == 1, run.stdout
    assert "served with Content-Encoding gzip despite Accept-Encoding: identity; only the decoded bytes match" \
        in run.stdout
    request = next(r for r in proxy.requests if golden(lab) in r["path"])
    assert request["Accept-Encoding"] == "identity"


def test_gzip_bomb_is_critical_and_bounded(proxy, lab):
    gzip_bomb(256 << 20)  # built before the run, so the run times the plugin, not the bomb factory
    proxy.add(blob_path("base/golden", golden(lab)), GzipBomb(256 << 20))
    run = measured("-R", proxy.url, "-i", "base/golden:1", "-t", "20")
    assert run.code == 2, run.stdout
    assert "Content-Encoding gzip: neither the raw bytes" in run.stdout, run.stdout
    assert run.seconds < 5 and run.max_rss_kb < RSS_LIMIT_KB, (run.seconds, run.max_rss_kb)


def test_more_bytes_than_declared_is_critical_at_once(plugin, proxy, lab):
    # no Content-Length, the blob, 4 MiB more, then silence: reading must stop at size + 1
    proxy.add(blob_path("base/golden", golden(lab)), Overlong(4 << 20))
    run = plugin("-R", proxy.url, "-i", "base/golden:1", "-t", "20")
    assert run.code == 2, run.stdout
    assert f"too long: got more than the {1 << 20} bytes declared" in run.stdout, run.stdout
    assert run.seconds < 5


def test_redirect_loop_and_endless_redirects_are_critical(plugin, proxy, lab):
    proxy.add(blob_path("base/golden", golden(lab)), Redirect(lambda path: path), times=None)
    run = plugin("-R", proxy.url, "-i", "base/golden:1")
    assert run.code == 2 and "redirect loop at 127.0.0.1:" in run.stdout, run.stdout
    proxy.clear()
    proxy.add(rf"^GET /v2/base/golden/blobs/{golden(lab)}", Redirect(lambda path: path + "x"), times=None)
    run = plugin("-R", proxy.url, "-i", "base/golden:1")
    assert run.code == 2 and "more than 5 redirects" in run.stdout, run.stdout
    assert sum(1 for r in proxy.requests if golden(lab) in r["path"]) <= 6


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return CertificateAuthority(tmp_path_factory.mktemp("faults-ca"))


def test_https_to_http_downgrade_is_never_ok(plugin, proxy, registry, lab, ca):
    cert, key = ca.issue("front")
    with FaultProxy(registry.url, tls=(cert, key)) as front:
        assert front.url.startswith("https://")
        fine = plugin("-R", front.url, "-i", "base/golden:1", "--ca-bundle", str(ca.cert))
        default = plugin("-R", front.url, "-i", "base/golden:1")  # TLS verification is on by default
        front.add(blob_path("base/golden", golden(lab)), Redirect(lambda path: proxy.url + path))
        downgraded = plugin("-R", front.url, "-i", "base/golden:1", "--ca-bundle", str(ca.cert))
        assert front.methods() <= {"GET", "HEAD"}
    assert fine.code == 0, fine.stdout
    assert default.code == 2 and "certificate verify failed" in default.first, default.first
    assert downgraded.code == 2, downgraded.stdout
    assert f"refused a redirect from https to http://127.0.0.1:{proxy.port}: a downgrade" in downgraded.stdout
    assert not any(golden(lab) in r["path"] for r in proxy.requests)  # nothing was fetched over http
    # a registry given without a scheme is https: a plain-http server is a TLS failure, never a fallback
    plain = plugin("-R", f"127.0.0.1:{proxy.port}", "-i", "base/golden:1")
    assert plain.code == 2 and plain.first.startswith("REGISTRY_DEEP CRITICAL - "), plain.first
    assert "TLS failure" in plain.first, plain.first


# -- 3. every run ends within -t and the watchdog's grace, whatever the registry does -------------------------

@pytest.mark.parametrize("pattern, fault", [
    (r"^GET /v2/$", Silence()),
    (r"^GET /v2/base/golden/manifests/", StallAfter(10)),
    (r"^GET /v2/base/golden/blobs/sha256:", Drip(0.3)),
    (r"^GET /v2/base/golden/blobs/sha256:", Silence()),
    (r"^GET /v2/base/golden/blobs/sha256:", unavailable(503, "1")),
], ids=["silent-api", "stalled-manifest", "dripping-blob", "silent-blob", "503-forever"])
def test_every_run_ends_within_the_deadline(plugin, proxy, pattern, fault):
    proxy.add(pattern, fault, times=None)
    run = plugin("-R", proxy.url, "-i", "base/golden:1", "-t", "2")
    assert run.code in (2, 3), run.stdout
    assert_readable(run, 2)


# -- 2. hostile registries ----------------------------------------------------------------------------------

def manifest(layers, config=None) -> bytes:
    config = config or {"mediaType": DOCKER_CONFIG, "size": 2, "digest": sha256(b"{}")}
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": layers}).encode()


def layer(digest, size=1):
    return {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "size": size, "digest": digest}


def serve_manifest(proxy, repository: str, body, reference: str = "1", media_type: str = OCI_MANIFEST) -> None:
    proxy.add(rf"^GET /v2/{re.escape(repository)}/manifests/{re.escape(reference)}$",
              Respond(200, body, {"Content-Type": media_type}), times=None)


def endless_spaces():
    for _ in range(1024):  # 64 MiB at most
        yield b" " * (64 << 10)


HOSTILE = [
    ("huge", endless_spaces, 2, "manifest exceeds the 4 MiB cap"),
    ("badjson", b'{"schemaVersion": 2, "layers": [', 2, "manifest is not valid JSON"),
    ("notobject", b'[1, 2, 3]', 2, "expected a JSON object, got list"),
    ("wrongtypes", json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": "x", "layers": {}}).encode(),
     2, "expected 'layers' to be list, got dict"),
    ("sizetype", manifest([layer(sha256(b"a"), "12")]), 2, "expected 'size' to be int, got str"),
    ("negative", manifest([layer(sha256(b"a"), -5)]), 2, "expected a size >= 0, got -5"),
    ("md5", manifest([layer("md5:" + "0" * 32)]), 3, "unsupported digest algorithm 'md5'"),
    ("malformed", manifest([layer("sha256:XYZ")]), 2, "invalid sha256 digest"),
    ("shortdigest", manifest([layer("sha256:abcd")]), 2, "invalid sha256 digest: expected 64 lowercase hex"),
    ("traversal", manifest([layer("sha256:../../../../v2/base/golden/manifests/1")]), 2, "invalid digest"),
    ("schema7", json.dumps({"schemaVersion": 7}).encode(), 2, "unsupported manifest: mediaType "
     f"'{OCI_MANIFEST}', schemaVersion 7"),
]


@pytest.mark.parametrize("name, body, code, message", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_manifest_is_one_clear_line(plugin, proxy, name, body, code, message):
    serve_manifest(proxy, f"hostile/{name}", body)
    run = plugin("-R", proxy.url, "-i", f"hostile/{name}:1", "-t", "10")
    assert run.code == code, run.stdout
    assert message in run.stdout and "hostile/" in run.first, run.stdout  # line 1 may cut it at 200 characters
    assert_readable(run, 10)
    assert all(r["path"].startswith(("/v2/hostile/", "/v2/")) and ".." not in r["path"] for r in proxy.requests)


@pytest.mark.parametrize("ref", ["../../etc/passwd:1", "hostile/../../x:1", "hostile/%2e%2e/x:1",
                                 "hostile/x@sha256:../../../v2/x"])
def test_path_traversal_in_names_never_reaches_the_registry(plugin, proxy, ref):
    run = plugin("-R", proxy.url, "-i", ref)
    assert run.code == 3 and "invalid image reference" in run.first, run.first
    assert_readable(run)
    assert proxy.requests == []


def test_deeply_nested_indexes_are_bounded(plugin, proxy):
    # a chain of 12 indexes, each listing the one below 40 times: 40**8 walks without dedup, a few with it
    body = manifest([])
    serve_manifest(proxy, "hostile/nested", body, sha256(body))
    for _ in range(12):
        child = {"mediaType": OCI_INDEX, "size": len(body), "digest": sha256(body)}
        body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [child] * 40}).encode()
        serve_manifest(proxy, "hostile/nested", body, sha256(body), OCI_INDEX)
    serve_manifest(proxy, "hostile/nested", body, "1", OCI_INDEX)
    run = plugin("-R", proxy.url, "-i", "hostile/nested:1", "-t", "10")
    assert run.code == 2, run.stdout
    assert "indexes nested deeper than 8 levels" in run.first, run.first
    assert_readable(run, 10)
    assert len(proxy.requests) < 20, len(proxy.requests)


def test_manifest_with_10000_layers_is_bounded(proxy):
    layers = [layer(sha256(b"%d" % i), 1) for i in range(10_000)]
    serve_manifest(proxy, "hostile/many", manifest(layers))
    proxy.add(r"^(GET|HEAD) /v2/hostile/many/blobs/", Respond(404, error_body("BLOB_UNKNOWN"),
                                                            {"Content-Type": "application/json"}), times=None)
    run = measured("-R", proxy.url, "-i", "hostile/many:1", "-t", "6", "-j", "2")
    assert run.code == 2, run.stdout[:2000]
    assert run.first.startswith("REGISTRY_DEEP CRITICAL - "), run.first
    assert re.search(r"… and \d+ more$", run.stdout.rstrip()), run.stdout[-300:]
    assert_readable(run, 6)
    assert run.max_rss_kb < RSS_LIMIT_KB, run.max_rss_kb


# -- 3. load --------------------------------------------------------------------------------------------------

def test_ten_runs_at_once_agree(registry, lab):
    refs = [arg for ref in lab.images.refs() for arg in ("-i", ref)]
    runs = []

    def one():
        runs.append(measured("-R", registry.url, *refs, "-j", "2", "-t", "40"))

    threads = [threading.Thread(target=one) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(runs) == 10
    assert {run.code for run in runs} == {0}, [run.first for run in runs if run.code]
    firsts = {re.sub(r"[0-9.]+s\b", "Ns", run.first) for run in runs}
    assert firsts == {"REGISTRY_DEEP OK - 9 images, 22 blobs, 3.4 MB verified in Ns, 1 foreign layer skipped | "
                      "blobs=22;;;0 bytes=3410649B;;;0 failed=0;;;0 images=9;;;0 retries=0;;;0 time=Ns;;;0"}, firsts


def test_one_gib_blob_verifies_within_the_memory_bound(registry):
    size = 1 << 30
    zeros, hasher = bytes(1 << 20), hashlib.sha256()
    for _ in range(size >> 20):
        hasher.update(zeros)
    digest = "sha256:" + hasher.hexdigest()
    path = registry.blob_path(digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        handle.truncate(size)  # sparse: a GiB of zeros that takes no disk
    link = registry.layer_link("big/gib", digest)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.write_text(digest)
    config = b"{}"
    registry.push_blob("big/gib", config)
    body = manifest([layer(digest, size)], {"mediaType": DOCKER_CONFIG, "size": 2, "digest": sha256(config)})
    registry.write_manifest_on_disk("big/gib", "1", body)
    try:
        run = measured("-R", registry.url, "-i", "big/gib:1", "-t", "60")
    finally:
        path.unlink()
    assert run.code == 0, run.stdout
    assert run.first.startswith("REGISTRY_DEEP OK - 1 image, 2 blobs, 1.1 GB verified in "), run.first
    assert run.max_rss_kb < RSS_LIMIT_KB, run.max_rss_kb
    print(f"1 GiB blob: {run.seconds:.1f}s, peak RSS {run.max_rss_kb / 1024:.1f} MiB")


# -- 4. secrets and hosts -------------------------------------------------------------------------------------

PASSWORD = "faults-Pa55-never-printed"


@pytest.fixture(scope="module")
def basic_registry(lab, tmp_path_factory):
    directory = tmp_path_factory.mktemp("faults-basic")
    users = htpasswd(directory / "htpasswd", {"alice": PASSWORD})
    registry = lab.registry(directory / "registry", config={"auth": {"htpasswd": {"realm": "lab",
                                                                                   "path": str(users)}}})
    yield registry
    registry.stop()


def test_no_secret_at_vvv_and_no_credentials_across_hosts_under_faults(plugin, basic_registry, registry, lab, ca,
                                                                      tmp_path):
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD + "\n")
    secrets = (PASSWORD, base64.b64encode(f"alice:{PASSWORD}".encode()).decode())
    env = {"HOME": str(tmp_path), "DOCKER_CONFIG": str(tmp_path)}
    cert, key = ca.issue("other")
    # `front` needs credentials; `other` (another origin: a storage backend, or a registry of its own) does not
    with FaultProxy(basic_registry.url) as front, FaultProxy(registry.url, tls=(cert, key)) as other:
        front.add(blob_path("base/golden", golden(lab)), Redirect(lambda path: other.url + path), times=None)
        other.add(blob_path("base/golden", golden(lab)), ResetAfter(0))  # then 503, then the blob
        other.add(blob_path("base/golden", golden(lab)), unavailable(503))
        run = plugin("-R", front.url, "-i", "base/golden:1", "--username", "alice", "--password-file",
                     str(password_file), "--ca-bundle", str(ca.cert), "-vvv", env=env)
        # an image on a host of its own never gets the --registry's credentials either
        elsewhere = plugin("-R", front.url, "-i", f"127.0.0.1:{other.port}/base/golden:1", "--username", "alice",
                           "--password-file", str(password_file), "--ca-bundle", str(ca.cert), "-vvv", env=env)
        assert front.methods() | other.methods() <= {"GET", "HEAD"}
    assert run.code == 1, run.stdout
    assert "verified only after 2 retries" in run.first, run.first
    assert elsewhere.code == 0, elsewhere.stdout
    for output in (run.stdout + run.stderr, elsewhere.stdout + elsewhere.stderr):
        assert not any(secret in output for secret in secrets)
    assert any("Authorization" in r for r in front.requests)
    assert other.requests and not any("Authorization" in r for r in other.requests)
