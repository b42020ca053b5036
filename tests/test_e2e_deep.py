"""End to end: the real plugin process against a real docker-registry, pristine and damaged on disk."""

from __future__ import annotations

import re

import pytest
from conftest import assert_answered_in_time

from registry_lab import SilentServer, free_port

pytestmark = pytest.mark.e2e

PERFDATA = re.compile(r" \| blobs=(\d+);;;0 bytes=(\d+)B;;;0 failed=(\d+);;;0 images=(\d+);;;0 retries=(\d+);;;0 "
                      r"time=[0-9.]+s;[^;]*;[^;]*;0$")


def image_args(refs):
    return [arg for ref in refs for arg in ("-i", ref)]


def sentinel_run(plugin, registry, lab, *extra):
    return plugin("-R", registry.url, *image_args(lab.images.refs()), *extra)


def broken_line(run, digest):
    lines = [line for line in run.lines[1:] if digest in line]
    assert lines, run.stdout
    return lines[0]


def test_pristine_registry_is_ok_with_counts_and_perfdata(plugin, pristine, lab):
    run = sentinel_run(plugin, pristine, lab)
    assert run.code == 0, run.stdout
    assert re.match(r"REGISTRY_DEEP OK - 9 images, 22 blobs, 3\.4 MB verified in [0-9.]+s, 1 foreign layer skipped"
                    r" \| ", run.first), run.first
    blobs, size, failed, images, retries = map(int, PERFDATA.search(run.first).groups())
    assert (blobs, failed, images, retries) == (22, 0, 9, 0)
    assert size == 3410649
    assert run.lines[1].startswith("note: layer sha256:") and "foreign layer skipped" in run.lines[1]


def test_verbose_lists_every_image_and_platform(plugin, pristine, lab):
    run = sentinel_run(plugin, pristine, lab, "-v")
    assert run.code == 0
    image_lines = sorted(line for line in run.lines if line.startswith("image "))
    assert len(image_lines) == 11  # 9 images, two of them with two platforms
    assert any(line.startswith("image apps/multi:1.0 (linux/arm64/v8): manifest sha256:") for line in image_lines)
    assert any(line.startswith("image apps/legacy:2.0 (linux/386): ") for line in image_lines)
    assert any("(artifact): OK" in line and "artifacts/sbom:1.0" in line for line in image_lines)
    assert all(line.endswith(": OK") for line in image_lines)


def test_golden_layer_truncated_names_every_image_built_on_it(plugin, damaged, lab):
    golden = lab.images.golden.digest
    damaged.truncate_blob(golden, 4096)
    run = sentinel_run(plugin, damaged, lab)
    assert run.code == 2
    assert run.first.startswith(f"REGISTRY_DEEP CRITICAL - 1 broken blob, breaking 8 of 9 images: layer "
                                f"{golden[:19]}… truncated: "), run.first
    line = broken_line(run, golden)
    assert line.startswith(f"CRITICAL: layer {golden}: truncated: Content-Length says 4096 of 1048576 bytes - breaks "
                           "apps/api:1.0, apps/foreign:1.0, apps/legacy:2.0 (linux/386), ")
    for ref in lab.images.referencing(golden):
        assert ref in line
    for platform in ("apps/multi:1.0 (linux/amd64)", "apps/multi:1.0 (linux/arm64/v8)",
                     "apps/legacy:2.0 (linux/amd64)", "apps/legacy:2.0 (linux/386)"):
        assert platform in line
    assert "artifacts/sbom" not in line
    assert PERFDATA.search(run.first).group(3) == "1"


def test_one_byte_changed_same_size_is_a_digest_mismatch(plugin, damaged, lab):
    web = lab.images.images["web"]
    own_layer = web.blobs[-1]
    damaged.flip_byte(own_layer, 1000)
    run = sentinel_run(plugin, damaged, lab)
    assert run.code == 2
    assert run.first.startswith("REGISTRY_DEEP CRITICAL - 1 broken blob, breaking 1 of 9 images: layer "), run.first
    line = broken_line(run, own_layer)
    assert re.match(rf"CRITICAL: layer {own_layer}: digest mismatch: got sha256:[0-9a-f]{{64}} - breaks "
                    r"apps/web:1\.0$", line), line


def test_deleted_blob_is_unknown_everywhere(plugin, damaged, lab):
    golden = lab.images.golden.digest
    damaged.delete_blob(golden)
    run = sentinel_run(plugin, damaged, lab)
    assert run.code == 2
    line = broken_line(run, golden)
    assert f"CRITICAL: layer {golden}: 404 BLOB_UNKNOWN in every repository that references it" in line
    assert "apps/web:1.0" in line and "apps/multi:1.0 (linux/arm64/v8)" in line


def test_removed_repository_link_breaks_only_that_repository(plugin, damaged, lab):
    golden = lab.images.golden.digest
    damaged.remove_layer_link("apps/web", golden)
    run = sentinel_run(plugin, damaged, lab)
    assert run.code == 2
    assert run.first.startswith("REGISTRY_DEEP CRITICAL - 1 broken blob, breaking 1 of 9 images: "), run.first
    line = broken_line(run, golden)
    assert line.startswith(f"CRITICAL: layer {golden}: 404 BLOB_UNKNOWN in apps/web (the repository's link is gone")
    assert line.endswith("- breaks apps/web:1.0")


def test_deleted_tag_is_critical(plugin, damaged, lab):
    damaged.delete_tag("apps/web", "1.0")
    run = sentinel_run(plugin, damaged, lab)
    assert run.code == 2
    assert run.first.startswith("REGISTRY_DEEP CRITICAL - 1 broken manifest, breaking 1 of 9 images: manifest "
                                "apps/web:1.0 404 MANIFEST_UNKNOWN"), run.first


def test_missing_index_child_breaks_that_platform(plugin, damaged, lab):
    multi = lab.images.images["multi"]
    child = multi.children["linux/arm64/v8"]
    damaged.remove_manifest_revision("apps/multi", child)
    run = sentinel_run(plugin, damaged, lab)
    assert run.code == 2
    line = broken_line(run, child)
    assert line.startswith(f"CRITICAL: manifest {child}: 404 MANIFEST_UNKNOWN")
    assert line.endswith("- breaks apps/multi:1.0 (linux/arm64/v8)")


def test_manifest_altered_on_disk_is_caught_by_tag_and_by_digest(plugin, damaged, lab):
    for name in ("web", "pinned"):
        image = lab.images.images[name]
        path = damaged.blob_path(image.digest)
        path.write_bytes(path.read_bytes().replace(b'"schemaVersion": 2', b'"schemaVersion":  2'))
    run = sentinel_run(plugin, damaged, lab)
    assert run.code == 2
    web = broken_line(run, "apps/web:1.0:")
    assert re.match(r"CRITICAL: manifest apps/web:1\.0: registry declares sha256:[0-9a-f]{64} "
                    r"\(Docker-Content-Digest\), bytes hash to sha256:[0-9a-f]{64} - breaks apps/web:1\.0$", web), web
    pinned = lab.images.images["pinned"].digest
    line = broken_line(run, f"manifest {pinned}:")
    assert f"requested by {pinned}, got bytes hashing to sha256:" in line


def test_platform_option_narrows_an_index(plugin, pristine, lab):
    run = plugin("-R", pristine.url, "-i", "apps/multi:1.0", "--platform", "linux/arm64", "-v")
    assert run.code == 0
    assert run.first.startswith("REGISTRY_DEEP OK - 1 image, 3 blobs, "), run.first
    assert [line.split(":")[0] for line in run.lines if line.startswith("image ")] == ["image apps/multi"]
    assert "(linux/arm64/v8)" in run.stdout and "linux/amd64" not in run.stdout


def test_schema1_manifest_is_a_warning_and_its_blobs_are_verified(plugin, pristine, lab):
    run = plugin("-R", pristine.url, "-i", lab.schema1_ref)
    assert run.code == 1, run.stdout
    assert run.first.startswith("REGISTRY_DEEP WARNING - 1 warning: manifest sha256:"), run.first
    assert "schema 1" in run.first and "1 image, 1 blob, 4.1 kB verified" in run.first


def test_images_file_with_comments(plugin, pristine, lab, tmp_path):
    listing = tmp_path / "sentinels.txt"
    listing.write_text("# sentinels\n\nbase/golden:1   # the base\napps/web:1.0\n")
    run = plugin("-R", pristine.url, "-f", str(listing))
    assert run.code == 0
    assert run.first.startswith("REGISTRY_DEEP OK - 2 images, 4 blobs, "), run.first


def test_shared_blob_is_downloaded_once_and_confirmed_in_every_repository(plugin, damaged, lab):
    golden = lab.images.golden.digest
    run = sentinel_run(plugin, damaged, lab)
    assert run.code == 0
    ours = [e for e in damaged.access_log() if "check_registry_deep/" in e["agent"]]
    gets = [e for e in ours if e["method"] == "GET" and e["path"].endswith(f"/blobs/{golden}")]
    heads = [e for e in ours if e["method"] == "HEAD" and e["path"].endswith(f"/blobs/{golden}")]
    assert len(gets) == 1
    repositories = {"base/golden", "apps/web", "apps/api", "apps/multi", "apps/legacy", "apps/pinned", "apps/slim",
                    "apps/foreign"}
    assert {e["path"].split("/blobs/")[0][len("/v2/"):] for e in gets + heads} == repositories
    assert len(heads) == len(repositories) - 1


def test_plugin_only_reads(plugin, damaged, lab):
    sentinel_run(plugin, damaged, lab)
    plugin("-R", damaged.url, "-i", "apps/web:1.0", "-i", "no/such:tag")
    ours = [e for e in damaged.access_log() if "check_registry_deep/" in e["agent"]]
    assert len(ours) > 30
    assert {e["method"] for e in ours} <= {"GET", "HEAD"}


def test_registry_not_listening_is_critical(plugin, lab):
    port = free_port()
    run = plugin("-R", f"http://127.0.0.1:{port}", "-i", "apps/web:1.0")
    assert run.code == 2
    assert run.first.startswith(f"REGISTRY_DEEP CRITICAL - 1 problem, breaking 1 of 1 image: http://127.0.0.1:{port} "
                                f"unreachable: "), run.first


@pytest.mark.parametrize("timeout, code, word", [("2", 3, "UNKNOWN"), ("2:critical", 2, "CRITICAL")])
def test_silent_server_gives_a_status_line_within_the_deadline(plugin, timeout, code, word):
    with SilentServer() as silent:
        run = plugin("-R", silent.url, "-i", "apps/web:1.0", "-t", timeout)
    assert run.code == code
    assert run.first.startswith(f"REGISTRY_DEEP {word} - 1 image not checked: deadline of 2s passed while checking the "
                                f"registry API (0 of 1 done); waiting on {silent.url}/v2/"), run.first
    assert_answered_in_time(run, 2)


def test_deadline_keeps_failures_found_elsewhere(plugin, damaged, lab):
    golden = lab.images.golden.digest
    damaged.truncate_blob(golden, 10)
    with SilentServer() as silent:
        run = plugin("-R", damaged.url, "-i", "apps/web:1.0", "-i", f"127.0.0.1:{silent.port}/stalled/image:1",
                     "-t", "3")
    assert run.code == 2
    assert run.first.startswith("REGISTRY_DEEP CRITICAL - 1 broken blob, breaking 1 of 2 images: layer "), run.first
    assert "; 1 image not checked: deadline of 3s passed while checking the registry API" in run.first, run.first
    assert f"UNKNOWN: deadline of 3s passed while checking the registry API at https://127.0.0.1:{silent.port} " \
           f"(0 of 1 done); waiting on https://127.0.0.1:{silent.port}/v2/; not checked: " \
           f"127.0.0.1:{silent.port}/stalled/image:1" in run.lines
    assert broken_line(run, golden).endswith("- breaks apps/web:1.0")
    assert_answered_in_time(run, 3)


@pytest.mark.parametrize("args, message", [
    (["-R", "http://127.0.0.1:1", "-i", "Apps/Web:1"], "invalid image reference 'Apps/Web:1': bad repository name"),
    (["-R", "http://127.0.0.1:1", "-i", "apps/web@sha256:../../etc"], "invalid image reference"),
    (["-R", "http://127.0.0.1:1", "--bogus"], "unrecognized arguments: --bogus"),
    (["-R", "http://127.0.0.1:1", "-i", "a:1", "-t", "soon"], "invalid --timeout 'soon'"),
    (["-R", "http://127.0.0.1:1", "-i", "a:1", "-w", "x:y:z"], "invalid --warning range"),
    (["-R", "http://127.0.0.1:1", "-f", "/nonexistent/list"], "cannot read images file /nonexistent/list"),
    (["-i", "apps/web:1.0"], "--registry is required"),
    (["-R", "http://user:hunter2@127.0.0.1:1", "-i", "a:1"], "credentials in the registry URL are not accepted"),
])
def test_bad_input_is_one_unknown_line(plugin, args, message):
    run = plugin(*args)
    assert run.code == 3
    assert run.first.startswith("REGISTRY_DEEP UNKNOWN - "), run.first
    assert message in run.first
    assert len(run.lines) == 1 and "Traceback" not in run.stdout + run.stderr
    assert "hunter2" not in run.stdout + run.stderr


def test_wall_time_thresholds(plugin, pristine, lab):
    run = plugin("-R", pristine.url, "-i", "base/golden:1", "-w", "0.001", "-c", "60")
    assert run.code == 1
    assert run.first.startswith("REGISTRY_DEEP WARNING - run took "), run.first
    assert re.search(r"time=[0-9.]+s;0\.001;60;0$", run.first), run.first
    run = plugin("-R", pristine.url, "-i", "base/golden:1", "-c", "0.001")
    assert run.code == 2
