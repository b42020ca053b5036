"""check.py, judge.py, wording.py: hand-made ScanResults judged and rendered: states, line 1, long output,
perfdata, 8 KiB cap."""

from __future__ import annotations

import re
from typing import Optional, Sequence

import nagiosplugin
import pytest

from check_registry_deep import check, wording
from check_registry_deep.blobs import FOREIGN_SKIPPED
from check_registry_deep.errors import (
    BlobUnknown,
    DeadlineExceeded,
    DigestMismatch,
    InternalError,
    ManifestUnknown,
    SizeMismatch,
    TransportError,
    UnsupportedDigest,
)
from check_registry_deep.manifests import LAYER, Descriptor
from check_registry_deep.model import Finding, Kind, Mode, RunProblem, ScanResult, Target, TargetResult, Trouble
from check_registry_deep.reference import Digest, ImageRef, Platform

REGISTRY = "http://127.0.0.1:5000"
APP = ImageRef.parse("team/app:1")
DB = ImageRef.parse("team/db:2")
T_APP = Target(APP, REGISTRY)
T_DB = Target(DB, REGISTRY, Platform("linux", "arm64", "v8"))
D = [Digest.of(f"blob {i}".encode()) for i in range(10)]
PERF = "blobs=3;;;0 bytes=1200000B;;;0 failed={failed};;;0 images=2;;;0 retries={retries};;;0 time=0.5s;;;0"

GOOD = (
    Finding(Kind.LAYER, digest=D[0], affected=(T_APP,), size=1_000_000, bytes_read=1_000_000, repository="team/app"),
    Finding(Kind.LAYER, digest=D[1], affected=(T_APP, T_DB), size=150_000, bytes_read=150_000, repository="team/app"),
    Finding(Kind.CONFIG, digest=D[2], affected=(T_DB,), size=50_000, bytes_read=50_000, repository="team/db"),
)


def scan_of(*extra: Finding, interrupted: Optional[DeadlineExceeded] = None, retries: int = 0,
            images: Sequence[ImageRef] = (APP, DB), elapsed: float = 0.5, targets=(),
            problems: Sequence[RunProblem] = ()) -> ScanResult:
    return ScanResult(tuple(images), tuple(targets), GOOD + extra, elapsed, retries, interrupted, tuple(problems))


def run(scan: ScanResult, **options) -> tuple:
    plugin = check.build_check(lambda: scan, **options)
    plugin()
    output = check.rendered(plugin).text
    return output, plugin.exitcode, plugin.state


def broken(digest: Digest, error, *affected: Target, kind: Kind = LAYER) -> Finding:
    return Finding(kind, affected, digest=digest, error=error, size=100, repository="team/app")


# -- OK --------------------------------------------------------------------------------------------------

def test_ok_first_line_exactly():
    output, code, state = run(scan_of())
    assert output == ("REGISTRY_DEEP OK - 2 images, 3 blobs, 1.2 MB verified in 0.5s | "
                      + PERF.format(failed=0, retries=0) + "\n")
    assert code == 0
    assert state == nagiosplugin.Ok


def test_ok_singular_and_retries_perfdata():
    scan = ScanResult((APP,), (), GOOD[:1], 3.21, 2)
    output, code, _ = run(scan)
    assert output.splitlines()[0] == ("REGISTRY_DEEP OK - 1 image, 1 blob, 1.0 MB verified in 3.2s | blobs=1;;;0 "
                                      "bytes=1000000B;;;0 failed=0;;;0 images=1;;;0 retries=2;;;0 time=3.21s;;;0")
    assert code == 0


def test_ok_with_foreign_layer_note():
    foreign = Finding(Kind.LAYER, digest=D[3], affected=(T_DB,), notes=(FOREIGN_SKIPPED,), size=7, mode=Mode.SKIPPED)
    output, code, _ = run(scan_of(foreign))
    lines = output.splitlines()
    assert lines[0].startswith("REGISTRY_DEEP OK - 2 images, 3 blobs, 1.2 MB verified in 0.5s, "
                               "1 foreign layer skipped | ")
    assert lines[1] == (f"note: layer {D[3]}: foreign layer skipped (clients fetch it from its urls) - "
                        "in team/db:2 (linux/arm64/v8)")
    assert code == 0


def test_human_bytes():
    assert wording.human_bytes(0) == "0 B"
    assert wording.human_bytes(999) == "999 B"
    assert wording.human_bytes(1000) == "1.0 kB"
    assert wording.human_bytes(1_200_000) == "1.2 MB"
    assert wording.human_bytes(412_300_000) == "412.3 MB"
    assert wording.human_bytes(5_000_000_000_000) == "5000.0 GB"


# -- CRITICAL --------------------------------------------------------------------------------------------

def test_critical_truncated_blob_with_blast_radius():
    output, code, state = run(scan_of(broken(D[5], SizeMismatch("truncated: got 5 of 100 bytes"), T_APP, T_DB)))
    lines = output.splitlines()
    assert lines[0] == ("REGISTRY_DEEP CRITICAL - 1 broken blob, breaking 2 of 2 images: layer "
                        f"{D[5].short()}… truncated: got 5 of 100 bytes | " + PERF.format(failed=1, retries=0))
    assert lines[1] == (f"CRITICAL: layer {D[5]}: truncated: got 5 of 100 bytes - "
                        "breaks team/app:1, team/db:2 (linux/arm64/v8)")
    assert len(lines) == 2
    assert code == 2
    assert state == nagiosplugin.Critical


def test_critical_lists_every_broken_blob_and_counts_images():
    scan = scan_of(broken(D[5], DigestMismatch(f"digest mismatch: got {D[9]}"), T_APP),
                   broken(D[6], BlobUnknown("404 BLOB_UNKNOWN", 404, "BLOB_UNKNOWN"), T_APP),
                   broken(D[7], BlobUnknown("404 BLOB_UNKNOWN", 404, "BLOB_UNKNOWN"), T_APP, kind=Kind.CONFIG))
    output, code, _ = run(scan)
    lines = output.splitlines()
    assert lines[0].startswith(f"REGISTRY_DEEP CRITICAL - 3 broken blobs, breaking 1 of 2 images: layer "
                               f"{D[5].short()}… digest mismatch: got ")
    assert " failed=3;;;0 " in lines[0]
    assert lines[1:] == [f"CRITICAL: layer {D[5]}: digest mismatch: got {D[9]} - breaks team/app:1",
                         f"CRITICAL: layer {D[6]}: 404 BLOB_UNKNOWN - breaks team/app:1",
                         f"CRITICAL: config {D[7]}: 404 BLOB_UNKNOWN - breaks team/app:1"]
    assert code == 2


def test_critical_registry_unreachable():
    problem = RunProblem(Trouble.REGISTRY, TransportError(f"{REGISTRY} unreachable: connection refused"), REGISTRY,
                         (T_APP, T_DB))
    output, code, _ = run(scan_of(problems=[problem]))
    lines = output.splitlines()
    assert lines[0].startswith(f"REGISTRY_DEEP CRITICAL - 1 problem, breaking 2 of 2 images: {REGISTRY} "
                               "unreachable: connection refused | ")
    assert lines[1] == f"CRITICAL: {REGISTRY} unreachable: connection refused"
    assert code == 2


def test_a_registry_answering_5xx_for_manifests_is_the_registry_failing_not_broken_manifests():
    """The scan folds a registry's 5xx manifest answers into one run problem (resolve.registry_failures); line 1
    says it first, and counts what else broke after it."""
    from check_registry_deep.errors import HTTPStatusError
    from check_registry_deep.resolve import registry_failures
    failing = HTTPStatusError("500 UNKNOWN (unknown error)", 500, "UNKNOWN")
    manifests = [Finding(Kind.MANIFEST, (target,), image=target.image, repository=target.image.repository,
                         error=failing) for target in (T_APP, T_DB)]
    findings, problems = registry_failures(manifests)
    assert findings == [] and [str(p.error) for p in problems] == ["the registry answers 500 UNKNOWN for 2 manifests"]
    _, backend = registry_failures(manifests, lambda registry: " via 10.0.0.5:443")  # --connect-to: who answered
    assert str(backend[0].error) == "the registry via 10.0.0.5:443 answers 500 UNKNOWN for 2 manifests"
    output, code, _ = run(scan_of(broken(D[5], DigestMismatch("digest mismatch: got sha256:abc"), T_APP),
                                  problems=problems))
    lines = output.splitlines()
    assert lines[0].startswith("REGISTRY_DEEP CRITICAL - the registry answers 500 UNKNOWN for 2 manifests and 1 "
                               f"broken blob, breaking 2 of 2 images: layer {D[5].short()}… digest mismatch: ")
    assert lines[1] == (f"CRITICAL: the registry answers 500 UNKNOWN for 2 manifests - breaks {APP}, "
                        f"{DB} (linux/arm64/v8)")
    assert code == 2


def test_critical_beats_unknown():
    scan = scan_of(broken(D[5], UnsupportedDigest("unsupported digest algorithm 'md5'"), T_APP),
                   broken(D[6], SizeMismatch("truncated: got 5 of 100 bytes"), T_DB))
    output, code, state = run(scan)
    assert output.startswith("REGISTRY_DEEP CRITICAL - 2 broken blobs")
    assert code == 2
    assert state == nagiosplugin.Critical
    lines = output.splitlines()
    assert lines[1].startswith("CRITICAL: ")  # worst first in the long output
    assert lines[2].startswith("UNKNOWN: ")


def test_a_manifest_named_by_its_image_is_never_cut_like_a_digest():
    """Only a digest is shortened on line 1; an image reference is said whole, whatever its shape."""
    ref = ImageRef.parse("averyveryverylongname-of-an-image:with-a-long-tag")
    finding = Finding(Kind.MANIFEST, (Target(ref, REGISTRY),), image=ref,
                      error=ManifestUnknown("404 MANIFEST_UNKNOWN", 404, "MANIFEST_UNKNOWN"))
    output, code, _ = run(scan_of(finding, images=(ref,)))
    assert output.splitlines()[0] == (f"REGISTRY_DEEP CRITICAL - 1 broken manifest, breaking 1 of 1 image: manifest "
                                      f"{ref} 404 MANIFEST_UNKNOWN | " + PERF.format(failed=1, retries=0)
                                      .replace("images=2", "images=1"))
    assert code == 2


def test_image_problems_name_the_first_by_kind_and_label_whatever_order_they_were_found_in():
    unreachable = RunProblem(Trouble.REGISTRY, TransportError(f"{REGISTRY} unreachable: connection refused"),
                             REGISTRY, (T_DB,))
    scan = scan_of(broken(D[6], SizeMismatch("truncated: got 5 of 100 bytes"), T_APP),
                   broken(D[5], BlobUnknown("404 BLOB_UNKNOWN", 404, "BLOB_UNKNOWN"), T_APP, kind=Kind.CONFIG),
                   problems=[unreachable])
    assert wording.image_problems(scan) == {
        T_APP: f"config {D[5].short()}… 404 BLOB_UNKNOWN and 1 more",
        T_DB: f"{REGISTRY} unreachable: connection refused"}


# -- WARNING ---------------------------------------------------------------------------------------------

def test_warning_for_caveats():
    caveat = Finding(Kind.LAYER, digest=D[5], affected=(T_APP,), caveats=("verified only after 1 retry",), size=100,
                           bytes_read=100)
    output, code, state = run(scan_of(caveat, retries=1))
    lines = output.splitlines()
    assert lines[0].startswith(f"REGISTRY_DEEP WARNING - 1 warning: layer {D[5].short()}… verified only after "
                               "1 retry; 2 images, 4 blobs, 1.2 MB verified in 0.5s | ")
    assert " failed=0;;;0 " in lines[0] and " retries=1;;;0 " in lines[0]
    assert lines[1] == f"WARNING: layer {D[5]}: verified only after 1 retry - affects team/app:1"
    assert code == 1
    assert state == nagiosplugin.Warn


def test_critical_beats_warning():
    caveat = Finding(Kind.LAYER, digest=D[5], affected=(T_APP,), caveats=("verified only after 1 retry",))
    output, code, _ = run(scan_of(caveat, broken(D[6], SizeMismatch("truncated: got 5 of 100 bytes"), T_DB)))
    assert output.startswith("REGISTRY_DEEP CRITICAL - 1 broken blob, breaking 1 of 2 images: ")
    assert "1 warning: " in output.splitlines()[0]
    assert code == 2


def test_time_thresholds():
    output, code, _ = run(scan_of(), warning="0.1")
    first = output.splitlines()[0]
    assert first.startswith("REGISTRY_DEEP WARNING - run took 0.5s (outside range 0:0.1); 2 images, 3 blobs, ")
    assert first.endswith(" time=0.5s;0.1;;0")
    assert code == 1
    output, code, _ = run(scan_of(), warning="0.1", critical="0.3")
    assert output.startswith("REGISTRY_DEEP CRITICAL - run took 0.5s")
    assert output.splitlines()[0].endswith(" time=0.5s;0.1;0.3;0")
    assert code == 2
    assert run(scan_of(), warning="10", critical="20")[1] == 0


# -- UNKNOWN ---------------------------------------------------------------------------------------------

def test_unknown_for_unsupported_digest():
    error = UnsupportedDigest("unsupported digest algorithm 'md5' in 'md5:00': expected one of sha256, sha512")
    output, code, state = run(scan_of(broken(D[5], error, T_APP)))
    lines = output.splitlines()
    assert lines[0].startswith("REGISTRY_DEEP UNKNOWN - ")
    assert "unsupported digest algorithm 'md5'" in lines[0]
    assert lines[1].startswith(f"UNKNOWN: layer {D[5]}: unsupported digest algorithm 'md5'")
    assert code == 3
    assert state == nagiosplugin.Unknown


def test_unknown_for_internal_error():
    problem = RunProblem(Trouble.INTERNAL, InternalError("internal error while checking x: KeyError: 'a'"),
                         "manifest of team/app:1")
    output, code, _ = run(scan_of(problems=[problem]))
    assert output.splitlines()[0].startswith("REGISTRY_DEEP UNKNOWN - 1 problem: internal error while checking x: "
                                             "KeyError: 'a' | ")
    assert code == 3


# -- the deadline ----------------------------------------------------------------------------------------

DEADLINE = "deadline of 5s passed while verifying blobs (1 of 3 done)"


@pytest.mark.parametrize("timeout_state, word, code", [
    ("unknown", "UNKNOWN", 3), ("critical", "CRITICAL", 2), ("warning", "WARNING", 1),
    ("ok", "OK", 0)])
def test_timeout_state(timeout_state, word, code):
    output, exitcode, _ = run(scan_of(interrupted=DeadlineExceeded(DEADLINE)), timeout_state=timeout_state)
    lines = output.splitlines()
    assert lines[0] == f"REGISTRY_DEEP {word} - {DEADLINE} | " + PERF.format(failed=0, retries=0)
    assert lines[1] == f"{word}: {DEADLINE}"
    assert exitcode == code


def test_timeout_default_is_unknown():
    assert run(scan_of(interrupted=DeadlineExceeded(DEADLINE)))[1] == 3


def test_failures_found_before_the_deadline_stay_critical():
    scan = scan_of(broken(D[5], SizeMismatch("truncated: got 5 of 100 bytes"), T_APP, T_DB),
                   interrupted=DeadlineExceeded(DEADLINE))
    output, code, _ = run(scan, timeout_state="unknown")
    lines = output.splitlines()
    assert lines[0].startswith("REGISTRY_DEEP CRITICAL - 1 broken blob, breaking 2 of 2 images: layer ")
    assert f"; {DEADLINE} | " in lines[0]
    assert lines[1].startswith(f"CRITICAL: layer {D[5]}: truncated: got 5 of 100 bytes")
    assert lines[2] == f"UNKNOWN: {DEADLINE}"
    assert code == 2


def test_deadline_in_a_finding_takes_the_timeout_state():
    finding = broken(D[5], DeadlineExceeded("deadline passed after 10 of 100 bytes"), T_APP)
    assert run(scan_of(finding), timeout_state="critical")[1] == 2
    assert run(scan_of(finding), timeout_state="unknown")[1] == 3


def test_long_deadline_text_is_cut_to_its_stage_on_line_1():
    long = "deadline of 5s passed while verifying blobs (1 of 300 done); waiting on " + ", ".join(
        f"layer sha256:{'a' * 12}… of team/app{i}:1" for i in range(10))
    scan = scan_of(broken(D[5], SizeMismatch("truncated: got 5 of 100 bytes"), T_APP),
                   interrupted=DeadlineExceeded(long, brief="deadline of 5s passed while verifying blobs"))
    output, _, _ = run(scan)
    first = output.splitlines()[0]
    summary = first.split(" - ", 1)[1].split(" | ")[0]
    assert summary.endswith("; deadline of 5s passed while verifying blobs")
    assert len(summary) <= wording.MAX_SUMMARY
    assert f"UNKNOWN: {long}" in output.splitlines()


# -- -v --------------------------------------------------------------------------------------------------

def test_verbose_lines_per_image():
    blob = Descriptor("application/vnd.oci.image.layer.v1.tar+gzip", D[0], 1_000_000, LAYER)
    config = Descriptor("application/vnd.oci.image.config.v1+json", D[4], 100, "config")
    targets = (TargetResult(T_APP, D[8], (blob,)), TargetResult(T_DB, D[9], (config, blob), artifact=True))
    scan = scan_of(broken(D[4], SizeMismatch("truncated: got 5 of 100 bytes"), T_DB, kind=Kind.CONFIG), targets=targets)
    output, _, _ = run(scan, verbose=1)
    lines = output.splitlines()
    assert f"image team/app:1: manifest {D[8].short()}…, 1 blobs, 1.0 MB: OK" in lines
    assert f"image team/db:2 (linux/arm64/v8): manifest {D[9].short()}…, 2 blobs, 1.0 MB (artifact): BROKEN" in lines
    quiet, _, _ = run(scan, verbose=0)
    assert not any(line.startswith("image ") for line in quiet.splitlines())


def test_verbose_lines_come_in_name_order_and_name_what_did_not_resolve():
    """Whatever order the manifests came in; an index child that could not be fetched gets its line too, the same
    verdict as in the table and JSON (judge.image_verdicts)."""
    blob = Descriptor("application/vnd.oci.image.layer.v1.tar+gzip", D[0], 1_000_000, LAYER)
    lost = Target(DB, REGISTRY, Platform("linux", "amd64"))
    targets = (TargetResult(T_DB, D[9], (blob,)), TargetResult(T_APP, D[8], (blob,)))
    scan = scan_of(broken(D[7], ManifestUnknown("404 MANIFEST_UNKNOWN", 404, "MANIFEST_UNKNOWN"), lost,
                          kind=Kind.MANIFEST), targets=targets)
    output, code, _ = run(scan, verbose=1)
    assert code == 2
    assert [line for line in output.splitlines() if line.startswith("image ")] == [
        f"image team/app:1: manifest {D[8].short()}…, 1 blobs, 1.0 MB: OK",
        "image team/db:2 (linux/amd64): not resolved: BROKEN",
        f"image team/db:2 (linux/arm64/v8): manifest {D[9].short()}…, 1 blobs, 1.0 MB: OK"]
    assert output.startswith("REGISTRY_DEEP CRITICAL - 1 broken manifest, breaking 1 of 2 images: manifest ")


# -- text hygiene and the 8 KiB cap ----------------------------------------------------------------------

def test_pipe_and_newline_are_removed_from_text():
    output, _, _ = run(scan_of(broken(D[5], DigestMismatch("got a|b\nthen c"), T_APP)))
    lines = output.splitlines()
    assert lines[0].count("|") == 1  # only the perfdata separator
    assert "got a/b then c" in lines[0].split(" | ")[0]
    assert lines[1] == f"CRITICAL: layer {D[5]}: got a/b then c - breaks team/app:1"
    assert all("|" not in line for line in lines[1:])
    assert len(lines) == 2


def test_summary_is_short():
    output, _, _ = run(scan_of(broken(D[5], DigestMismatch("x" * 1000), T_APP)))
    summary = output.splitlines()[0].split(" | ")[0][len("REGISTRY_DEEP CRITICAL - "):]
    assert len(summary) <= wording.MAX_SUMMARY


def fitted(lines, **limit):
    """The fitted lines as the plugin prints them."""
    return "".join(line + "\n" for line in wording.fit(lines, **limit))


def test_fit_cuts_with_and_n_more():
    lines = ["REGISTRY_DEEP CRITICAL - first"] + [f"CRITICAL: line {i:03d} " + "x" * 90 for i in range(200)]
    text = fitted(lines)
    assert len(text.encode()) <= 8000
    out = text.splitlines()
    assert out[0] == lines[0]
    shown = len(out) - 2
    assert out[1:-1] == lines[1:1 + shown]
    assert out[-1] == f"… and {200 - shown} more"
    assert shown > 50


def test_fit_counts_bytes_not_characters():
    lines = ["REGISTRY_DEEP CRITICAL - first"] + ["é" * 100 for _ in range(100)]
    text = fitted(lines)
    assert len(text.encode()) <= 8000
    assert re.fullmatch(r"… and \d+ more", text.splitlines()[-1])


def test_fit_keeps_short_output_whole():
    lines = ["REGISTRY_DEEP OK - fine", "a", "b"]
    assert fitted(lines) == "REGISTRY_DEEP OK - fine\na\nb\n"
    assert fitted(lines, limit=30) == "REGISTRY_DEEP OK - fine\n… and 2 more\n"


def test_many_broken_blobs_stay_under_8_kib():
    images = [ImageRef.parse(f"team/app{i}:1") for i in range(40)]
    targets = [Target(image, REGISTRY) for image in images]
    findings = [broken(Digest.of(f"broken {i}".encode()), SizeMismatch(f"truncated: got {i} of 100 bytes"),
                       *targets) for i in range(300)]
    output, code, _ = run(scan_of(*findings, images=images))
    assert len(output.encode()) <= 8000
    lines = output.splitlines()
    assert lines[0].startswith("REGISTRY_DEEP CRITICAL - 300 broken blobs, breaking 40 of 40 images: ")
    assert " failed=300;;;0 " in lines[0]
    assert re.fullmatch(r"… and \d+ more", lines[-1])
    assert code == 2


def test_one_blob_breaking_many_images_is_cut_within_its_line():
    images = [ImageRef.parse(f"team/application-number-{i}:v1.2.3") for i in range(200)]
    targets = [Target(image, REGISTRY) for image in images]
    output, _, _ = run(scan_of(broken(D[5], SizeMismatch("truncated: got 5 of 100 bytes"), *targets),
                               images=images))
    line = output.splitlines()[1]
    assert len(line) <= wording.MAX_LINE + 40
    assert re.search(r" … and \d+ more$", line)
    assert "team/application-number-0:v1.2.3" in line
