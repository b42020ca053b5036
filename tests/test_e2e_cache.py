"""End to end: the 2025 incident on real parts. Debian's nginx caches blobs in front of a real docker-registry,
and the cache, not the storage, serves bad bytes with the right length; `--origin` tells the two apart.

nginx is configured as a site would (registry_lab/nginx.py): blob GETs by digest cached, manifests not. What
nginx does with a cached entry cut short on disk (found by experiment, nginx 1.22.1 of bookworm): it answers
200 with the full stored Content-Length, sends the bytes the file still has, and keeps the connection open in
silence (it logs the request as complete); a `Range` starting at or past the cut gets no answer at all, not
even headers. Only a stall timeout on the client's side ends either.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import pytest

from registry_lab.faults import Drip, FaultProxy
from registry_lab.nginx import CachingProxy, nginx_available

pytestmark = pytest.mark.e2e

GOLDEN_SIZE = 1 << 20  # the lab's golden layer
KEEP = 300000  # what a full filesystem left of the cached golden layer
INTACT = "(the cache in front serves bad bytes)"


@pytest.fixture
def cache(damaged, tmp_path: Path) -> Iterator[CachingProxy]:
    """nginx caching the blobs of a private registry (the `damaged` one: the origin a test may break)."""
    problem = nginx_available()
    if problem:
        pytest.fail(f"the cache lab cannot run here: {problem}")
    with CachingProxy(tmp_path / "nginx", damaged) as proxy:
        yield proxy


def image_args(refs):
    return [arg for ref in refs for arg in ("-i", ref)]


def through_cache(plugin, cache, lab, *extra):
    return plugin("-R", cache.url, *image_args(lab.images.refs()), *extra)


def golden_line(run, lab):
    golden = lab.images.golden.digest
    lines = [line for line in run.lines[1:] if line.startswith(f"CRITICAL: layer {golden}: ")]
    assert len(lines) == 1, run.stdout
    line = lines[0]
    for ref in lab.images.referencing(golden):  # every image built on it, every platform of the indexes
        assert ref in line, (ref, line)
    for platform in ("apps/multi:1.0 (linux/amd64)", "apps/multi:1.0 (linux/arm64/v8)",
                     "apps/legacy:2.0 (linux/amd64)", "apps/legacy:2.0 (linux/386)"):
        assert platform in line, (platform, line)
    return line


def warm(plugin, cache, lab):
    run = through_cache(plugin, cache, lab)
    assert run.code == 0, run.stdout
    assert cache.cache_statuses(lab.images.golden.digest) == ["MISS"]


def test_healthy_warm_cache_is_ok_and_the_second_run_is_served_from_the_cache(plugin, cache, damaged, lab):
    first = through_cache(plugin, cache, lab)
    origin_requests = len(damaged.access_log())
    logged = len(cache.access_log())
    second = through_cache(plugin, cache, lab)
    for run in (first, second):
        assert run.code == 0, run.stdout
        assert re.match(r"REGISTRY_DEEP OK - 9 images, 22 blobs, 3\.4 MB verified in [0-9.]+s, "
                        r"1 foreign layer skipped \| ", run.first), run.first
    golden = lab.images.golden.digest
    assert cache.cache_statuses(golden) == ["MISS", "HIT"]
    blobs = [e for e in cache.access_log()[logged:] if "/blobs/" in e["path"]]
    assert len(blobs) >= 22 and {e["cache"] for e in blobs} == {"HIT"}, blobs  # every blob from the cache
    # ... and the origin saw no blob request at all, only the uncached manifests
    second_at_origin = damaged.access_log()[origin_requests:]
    assert second_at_origin and not [e for e in second_at_origin if "/blobs/" in e["path"]], second_at_origin


def test_cached_golden_layer_altered_is_a_digest_mismatch_and_the_origin_is_intact(plugin, cache, damaged, lab):
    warm(plugin, cache, lab)
    golden = lab.images.golden.digest
    cache.alter_cached(golden, GOLDEN_SIZE, 4096)  # same size, same headers, one byte changed
    run = through_cache(plugin, cache, lab)
    assert run.code == 2, run.stdout
    assert run.first.startswith(f"REGISTRY_DEEP CRITICAL - 1 broken blob, breaking 8 of 9 images: layer "
                                f"{golden[:19]}… digest mismatch: got sha256:"), run.first
    assert re.match(rf"CRITICAL: layer {golden}: digest mismatch: got sha256:[0-9a-f]{{64}} - breaks "
                    r"apps/api:1\.0, apps/foreign:1\.0, ", golden_line(run, lab))

    origin = through_cache(plugin, cache, lab, "--origin", damaged.host)
    assert origin.code == 2, origin.stdout  # pulls through the cache fail all the same
    assert origin.first.startswith(f"REGISTRY_DEEP CRITICAL - 1 broken blob, breaking 8 of 9 images, all cache-only "
                                   f"(origin {damaged.host} intact): layer {golden[:19]}… digest mismatch: got "
                                   "sha256:"), origin.first
    line = golden_line(origin, lab)
    assert re.match(rf"CRITICAL: layer {golden}: digest mismatch: got sha256:[0-9a-f]{{64}} - breaks ", line), line
    assert line.endswith(f"; origin {damaged.host}: intact {INTACT}"), line
    # the origin was asked for the golden layer with the registry's Host header, as --connect-to does
    at_origin = [e for e in damaged.access_log() if e["path"].endswith(f"/blobs/{golden}") and e["method"] == "GET"]
    assert len(at_origin) == 2, at_origin  # nginx's fill on the first run, then --origin's own GET


def test_cached_copy_cut_short_stalls_and_is_truncated_well_inside_the_deadline(plugin, cache, damaged, lab):
    warm(plugin, cache, lab)
    golden = lab.images.golden.digest
    cache.cut_cached(golden, GOLDEN_SIZE, KEEP)  # the header still says 1048576 bytes
    run = through_cache(plugin, cache, lab, "--origin", damaged.host)  # the default deadline, 50 s
    assert run.code == 2, run.stdout
    assert run.seconds < 20, run.seconds  # two stalls of 5 s (a tenth of -t), not the deadline
    assert run.first.startswith(f"REGISTRY_DEEP CRITICAL - 1 broken blob, breaking 8 of 9 images, all cache-only "
                                f"(origin {damaged.host} intact): layer {golden[:19]}… truncated: stalled at byte "
                                f"{KEEP} of {GOLDEN_SIZE}"), run.first
    line = golden_line(run, lab)
    assert line.startswith(f"CRITICAL: layer {golden}: truncated: stalled at byte {KEEP} of {GOLDEN_SIZE} bytes "
                           "(nothing more for 5s, 2 times) - breaks apps/api:1.0, "), line
    assert line.endswith(f"; origin {damaged.host}: intact {INTACT}"), line
    assert "UNKNOWN" not in run.stdout and "deadline" not in run.stdout
    assert cache.cache_statuses(golden) == ["MISS", "HIT", "HIT"]  # the stalled GET and its Range resume


def test_origin_storage_truncated_under_a_cold_cache_is_also_broken_at_the_origin(plugin, cache, damaged, lab):
    golden = lab.images.golden.digest
    damaged.truncate_blob(golden, 4096)
    run = through_cache(plugin, cache, lab, "--origin", damaged.host)
    assert run.code == 2, run.stdout
    assert run.first.startswith(f"REGISTRY_DEEP CRITICAL - 1 broken blob, breaking 8 of 9 images: layer "
                                f"{golden[:19]}… truncated: Content-Length says 4096 of {GOLDEN_SIZE} bytes"), run.first
    line = golden_line(run, lab)
    assert line.startswith(f"CRITICAL: layer {golden}: truncated: Content-Length says 4096 of {GOLDEN_SIZE} bytes - "
                           "breaks "), line
    assert line.endswith(f"; origin {damaged.host}: also broken"), line
    assert cache.cache_statuses(golden) == ["MISS"]


def test_origin_verdict_is_skipped_with_a_note_when_the_time_is_not_there(plugin, cache, damaged, lab):
    warm(plugin, cache, lab)
    golden = lab.images.golden.digest
    cache.alter_cached(golden, GOLDEN_SIZE, 0)
    with FaultProxy(damaged.url) as slow_origin:  # an origin that sends the golden layer a byte at a time
        slow_origin.add(rf"^GET /v2/[^ ]+/blobs/{golden}", Drip(0.05), times=None)
        run = through_cache(plugin, cache, lab, "--origin", f"127.0.0.1:{slow_origin.port}", "-t", "6")
    assert run.code == 2, run.stdout  # the failure found through the cache stands; no UNKNOWN for the origin
    assert run.first.startswith("REGISTRY_DEEP CRITICAL - 1 broken blob, breaking 8 of 9 images: layer "), run.first
    line = golden_line(run, lab)
    assert line.endswith(f"; origin 127.0.0.1:{slow_origin.port}: not verified (no time left before the deadline)"), \
        line
    assert "UNKNOWN" not in run.stdout
    assert run.seconds < 7, run.seconds


def test_manifest_broken_at_the_origin_is_also_broken_there(plugin, cache, damaged, lab):
    web = lab.images.images["web"]  # manifests pass through the cache: what the origin stores is what is served
    path = damaged.blob_path(web.digest)
    path.write_bytes(path.read_bytes().replace(b'"schemaVersion": 2', b'"schemaVersion":  2'))
    run = plugin("-R", cache.url, "-i", "apps/web:1.0", "--origin", damaged.host)
    assert run.code == 2, run.stdout
    assert re.match(r"CRITICAL: manifest apps/web:1\.0: registry declares sha256:[0-9a-f]{64} "
                    r"\(Docker-Content-Digest\), bytes hash to sha256:[0-9a-f]{64} - breaks apps/web:1\.0; "
                    rf"origin {damaged.host}: also broken$", run.lines[1]), run.stdout


@pytest.mark.parametrize("args, message", [
    (["-R", "http://127.0.0.1:1", "--origin", "no address"], "invalid --origin 'no address': expected HOST:PORT"),
    (["-R", "http://127.0.0.1:1", "--origin", "origin.example.org"],
     "invalid --origin 'origin.example.org': expected HOST:PORT"),
    (["--origin", "127.0.0.1:2"], "--origin needs --registry"),
])
def test_bad_origin_is_one_unknown_line(plugin, args, message):
    run = plugin("-i", "127.0.0.1:1/apps/web:1.0", *args)
    assert run.code == 3 and run.lines == [f"REGISTRY_DEEP UNKNOWN - {message}"], run.stdout
