"""--origin: the origin's answer on a failure, as wording.py words it, and when origin.py does not ask at all."""

from __future__ import annotations

import json
import threading

import pytest

from check_registry_deep import check, report
from check_registry_deep.deadline import Deadline
from check_registry_deep.errors import (
    BlobUnknown,
    DeadlineExceeded,
    DigestMismatch,
    ManifestInvalid,
    TLSError,
    Truncated,
    UnsupportedDigest,
)
from check_registry_deep.model import Finding, Kind, OriginCheck, ScanResult, Target
from check_registry_deep.origin import NO_BYTES, NO_TIME, OriginChecker, worth_asking
from check_registry_deep.reference import Digest, ImageRef

REGISTRY = "https://registry.example.org"
ORIGIN = "10.0.0.5:5000"
APP, DB = ImageRef.parse("team/app:1"), ImageRef.parse("team/db:2")
D = [Digest.of(f"blob {i}".encode()) for i in range(3)]


def failure(i: int, origin: OriginCheck, image: ImageRef = APP) -> Finding:
    return Finding(Kind.LAYER, (Target(image, REGISTRY),), digest=D[i], error=DigestMismatch("digest mismatch: got x"),
                   size=100, repository=image.repository, origin=origin)


@pytest.mark.parametrize("origin, verdict", [
    (OriginCheck(ORIGIN), "intact (the cache in front serves bad bytes)"),
    (OriginCheck(ORIGIN, error=Truncated("got 5 of 100 bytes")), "also broken"),
    (OriginCheck(ORIGIN, error=BlobUnknown("404 BLOB_UNKNOWN", 404, "BLOB_UNKNOWN")), "also broken"),
    (OriginCheck(ORIGIN, error=ManifestInvalid("not JSON")), "also broken"),
    (OriginCheck(ORIGIN, error=TLSError("TLS failure talking to https://10.0.0.5:5000: certificate verify failed")),
     "not verified (TLS failure talking to https://10.0.0.5:5000: certificate verify failed)"),
    (OriginCheck(ORIGIN, skipped=NO_TIME), "not verified (no time left before the deadline)"),
])
def test_each_origin_answer_ends_the_line_and_the_state_stays_critical(origin, verdict):
    scan = ScanResult((APP,), (), (failure(0, origin),), 1.0, 0)
    plugin = check.build_check(lambda: scan)
    plugin()
    lines = check.rendered(plugin).text.splitlines()
    assert plugin.exitcode == 2
    assert lines[1] == f"CRITICAL: layer {D[0]}: digest mismatch: got x - breaks team/app:1; origin {ORIGIN}: {verdict}"
    assert ("all cache-only" in lines[0]) == (verdict.startswith("intact")), lines[0]


def test_summary_says_cache_only_only_when_every_failure_is():
    intact, broken = OriginCheck(ORIGIN), OriginCheck(ORIGIN, error=Truncated("got 5 of 100 bytes"))
    for origins, cache_only in (((intact, intact), True), ((intact, broken), False)):
        scan = ScanResult((APP, DB), (), (failure(0, origins[0]), failure(1, origins[1], DB)), 1.0, 0)
        plugin = check.build_check(lambda: scan)  # noqa: B023 (called right here)
        plugin()
        first = check.rendered(plugin).text.splitlines()[0]
        expected = "REGISTRY_DEEP CRITICAL - 2 broken blobs, breaking 2 of 2 images" + (
            f", all cache-only (origin {ORIGIN} intact): " if cache_only else ": ")
        assert first.startswith(expected), first


def test_json_carries_the_origin_verdict_and_the_line():
    scan = ScanResult((APP,), (), (failure(0, OriginCheck(ORIGIN)),), 1.0, 0)
    document = json.loads(report.to_json(scan, "critical", "summary"))
    assert document["content"][0]["origin"] == f"origin {ORIGIN}: intact (the cache in front serves bad bytes)"
    assert document["broken"][0]["line"].endswith(f"; origin {ORIGIN}: intact (the cache in front serves bad bytes)")


def test_only_content_that_fails_is_worth_asking():
    target = (Target(APP, REGISTRY),)
    assert worth_asking(Finding(Kind.LAYER, target, digest=D[0], error=DigestMismatch("x")))
    assert worth_asking(Finding(Kind.MANIFEST, target, image=APP, error=BlobUnknown("404", 404)))
    assert not worth_asking(Finding(Kind.LAYER, target, digest=D[0]))  # verified
    assert not worth_asking(Finding(Kind.LAYER, target, digest=D[0], caveats=("resumed",)))
    assert not worth_asking(Finding(Kind.LAYER, target, digest=D[0], error=DeadlineExceeded("x")))
    assert not worth_asking(Finding(Kind.LAYER, target, digest=D[0], error=UnsupportedDigest("md5")))  # not judged
    # a registry that failed, or a bug of ours, is a RunProblem: not content, never asked (see test_scan.py)


class Unused:
    """A client the checker must not touch: it decides without asking."""

    def __init__(self, seconds: float):
        self.deadline = Deadline(seconds)

    def __getattr__(self, name):
        raise AssertionError(f"the origin was asked ({name})")


def test_no_time_or_no_bytes_left_is_skipped_without_asking():
    cancelled = threading.Event()
    late = OriginChecker(REGISTRY, ORIGIN, Unused(1.0))  # type: ignore[arg-type]
    assert late.check(failure(0, OriginCheck(ORIGIN)), cancelled) == OriginCheck(ORIGIN, skipped=NO_TIME)
    spent = OriginChecker(REGISTRY, ORIGIN, Unused(50.0), max_bytes=150)  # type: ignore[arg-type]
    spent.charge(100)  # what the run downloaded before: 50 left, the blob is 100
    assert spent.check(failure(0, OriginCheck(ORIGIN)), cancelled) == OriginCheck(ORIGIN, skipped=NO_BYTES)
