"""End to end: operator tooling (discovery, replicas, rotating coverage, JSON, terminal output) on real registries."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from registry_lab.images import Layer, push_image, random_bytes

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.e2e


def test_discovery_checks_every_tag_under_a_namespace(plugin, pristine):
    run = plugin("-R", pristine.url, "--repository", "apps", "--all-tags", "-v")
    assert run.code == 0, run.stdout
    # apps/pinned has no tag at all (the registry answers "tags": null): nothing to check there
    assert run.first.startswith("REGISTRY_DEEP OK - 6 images, "), run.first
    images = {line.split(":", 2)[0] + ":" + line.split(":", 2)[1] for line in run.lines if line.startswith("image ")}
    assert {"image apps/web:1.0", "image apps/api:1.0", "image apps/slim:1.0", "image apps/foreign:1.0",
            "image apps/multi:1.0 (linux/amd64)", "image apps/legacy:2.0 (linux/386)"} <= images


def test_discovery_with_a_tag_pattern_after_an_incident_lists_what_to_repush(plugin, damaged, lab, tmp_path):
    damaged.truncate_blob(lab.images.golden.digest, 10)
    report = tmp_path / "report.json"
    run = plugin("-R", damaged.url, "--repository", "apps/", "--tag-pattern", r"[0-9]+\.0", "--json", str(report))
    assert run.code == 2
    assert run.first.startswith("REGISTRY_DEEP CRITICAL - 1 broken blob, breaking 6 of 6 images: "), run.first
    document = json.loads(report.read_text())
    assert document["state"] == "CRITICAL"
    assert document["to_repush"] == ["apps/api:1.0", "apps/foreign:1.0", "apps/legacy:2.0", "apps/multi:1.0",
                                     "apps/slim:1.0", "apps/web:1.0"]
    broken = document["broken"]
    assert [b["subject"] for b in broken] == [lab.images.golden.digest]
    assert "apps/multi:1.0 (linux/arm64/v8)" in broken[0]["breaks"]


def test_json_to_stdout_replaces_the_text(plugin, pristine, lab):
    run = plugin("-R", pristine.url, "-i", "apps/multi:1.0", "--json", "-")
    assert run.code == 0
    document = json.loads(run.stdout)
    assert document["schema"] == 1 and document["state"] == "OK"
    assert document["summary"].startswith("1 image, 5 blobs, ")
    assert sorted((row["image"], row["platform"], row["state"]) for row in document["images"]) == [
        ("apps/multi:1.0", "linux/amd64", "OK"), ("apps/multi:1.0", "linux/arm64/v8", "OK")]
    checks = {c["check"] for c in document["content"]}
    assert checks == {"verified"}


@pytest.fixture
def replica(lab, tmp_path):
    registry = lab.registry(tmp_path / "replica")
    yield registry
    registry.stop()


def test_replica_in_agreement_is_ok(plugin, pristine, replica, lab):
    run = plugin("-R", pristine.url, *sum((["-i", r] for r in lab.images.refs()), []),
                 "--compare-registry", replica.url)
    assert run.code == 0, run.stdout


def test_replica_missing_a_blob_is_critical(plugin, pristine, replica, lab):
    web = lab.images.images["web"]
    replica.delete_blob(web.blobs[-1])  # container sync lost it on the replica only
    run = plugin("-R", pristine.url, "-i", "apps/web:1.0", "-i", "apps/api:1.0", "--compare-registry", replica.url)
    assert run.code == 2
    assert run.first.startswith("REGISTRY_DEEP CRITICAL - 1 broken blob, breaking 1 of 2 images: layer "), run.first
    line = next(line for line in run.lines[1:] if f"on {replica.url}" in line)
    assert line == (f"CRITICAL: layer {web.blobs[-1]} on {replica.url}: 404 BLOB_UNKNOWN in apps/web "
                    "- breaks apps/web:1.0")


def test_replica_serving_another_manifest_is_a_warning(plugin, pristine, replica):
    other = push_image(replica, "apps/web", "1.0", [Layer(random_bytes("diverged", 1000))])
    run = plugin("-R", pristine.url, "-i", "apps/web:1.0", "--compare-registry", replica.url)
    assert run.code == 1, run.stdout
    assert run.first.startswith("REGISTRY_DEEP WARNING - 1 warning: manifest apps/web:1.0 on "), run.first
    assert f"replica serves {other.digest} where {pristine.url} serves sha256:" in run.stdout


def test_replica_lacking_the_tag_is_critical(plugin, pristine, replica):
    replica.delete_tag("apps/web", "1.0")
    run = plugin("-R", pristine.url, "-i", "apps/web:1.0", "--compare-registry", replica.url)
    assert run.code == 2
    assert f"CRITICAL: manifest apps/web:1.0 on {replica.url}: 404 MANIFEST_UNKNOWN" in run.stdout, run.stdout


def state_of(path):
    return json.loads(path.read_text())["blobs"]


def test_rotating_coverage_verifies_everything_over_successive_runs(plugin, damaged, lab, tmp_path):
    state = tmp_path / "state.json"
    args = ["-R", damaged.url, *sum((["-i", r] for r in lab.images.refs()), []), "--state-file", str(state),
            "--max-bytes", "600K"]
    verified_per_run = []
    for turn in range(12):  # about 3.4 MB in 600 KiB slices; the 1 MiB golden layer goes alone
        run = plugin(*args)
        assert run.code == 0, run.stdout
        verified_per_run.append(int(re.search(r" blobs=(\d+);", run.first).group(1)))
        unverified = int(re.search(r" unverified=(\d+);;;0", run.first).group(1))
        if turn == 0:  # the state file is new: the blobs never verified have no age yet, and none is said
            assert unverified == 22 - verified_per_run[0] and " oldest=" not in run.first, run.first
        else:  # they count from the state file's creation
            assert re.search(r" oldest=\d+s;;;0 ", run.first), run.first
        if "more present" not in run.first:
            break
        assert re.search(r", \d+ more present \(deep check rotated\)", run.first), run.first
    entries = state_of(state)
    assert len(entries) == 22 and all(e["verified"] for e in entries.values())  # the foreign layer is not there
    assert sum(verified_per_run) >= 22 and len(verified_per_run) > 2
    # every run HEADs every blob in every repository, deep or rotated: a lost link is caught either way (the
    # golden layer's bytes may be fetched through another repository this run, or not at all)
    damaged.remove_layer_link("apps/slim", lab.images.golden.digest)
    report = tmp_path / "run.json"
    run = plugin(*args, "--json", str(report))
    assert run.code == 2
    assert run.first.startswith("REGISTRY_DEEP CRITICAL - 1 broken blob, breaking 1 of 9 images: "), run.first
    assert f"{lab.images.golden.digest}: 404 BLOB_UNKNOWN in apps/slim (the repository's link is gone; " in run.stdout
    assert {c["check"] for c in json.loads(report.read_text())["content"]} >= {"verified", "present"}


def test_state_file_survives_overlapping_runs(plugin, pristine, lab, tmp_path):
    state = tmp_path / "state.json"
    args = ["-R", pristine.url, *sum((["-i", r] for r in lab.images.refs()), []), "--state-file", str(state)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        runs = list(pool.map(lambda _: plugin(*args), range(4)))
    assert [r.code for r in runs] == [0, 0, 0, 0]
    entries = state_of(state)
    assert len(entries) == 22
    assert sorted(os.listdir(tmp_path)) == ["state.json", "state.json.lock"]  # no temporary file left behind


def test_usage_errors_of_the_new_options(plugin, pristine):
    assert plugin("-R", pristine.url, "--repository", "apps").first == \
        "REGISTRY_DEEP UNKNOWN - --repository needs exactly one of --all-tags and --tag-pattern"
    assert plugin("-R", pristine.url, "-i", "a:1", "--max-bytes", "lots").first == \
        "REGISTRY_DEEP UNKNOWN - invalid --max-bytes 'lots': expected a positive number of bytes, e.g. 500M"
    assert plugin("-R", pristine.url, "--repository", "apps", "--tag-pattern", "(").first.startswith(
        "REGISTRY_DEEP UNKNOWN - invalid --tag-pattern '(': ")


def run_in_terminal(*args, timeout=60):
    """Run the plugin with stdout and stderr on a pseudo-terminal, as an SRE on a bastion would."""
    out_master, out_slave = os.openpty()
    err_master, err_slave = os.openpty()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    process = subprocess.Popen([sys.executable, "-m", "check_registry_deep", *args], stdout=out_slave,
                               stderr=err_slave, stdin=subprocess.DEVNULL, env=env)
    os.close(out_slave)
    os.close(err_slave)
    captured = {out_master: b"", err_master: b""}
    open_fds = set(captured)
    until = time.monotonic() + timeout
    while open_fds and time.monotonic() < until:
        ready, _, _ = select.select(list(open_fds), [], [], 0.2)
        for fd in ready:
            try:
                data = os.read(fd, 65536)
            except OSError:
                data = b""
            if data:
                captured[fd] += data
            else:
                open_fds.discard(fd)
    process.wait(10)
    for fd in captured:
        os.close(fd)
    return process.returncode, captured[out_master].decode(), captured[err_master].decode()


def test_manual_run_at_a_terminal_shows_progress_and_a_table(pristine, lab):
    code, out, err = run_in_terminal("-R", pristine.url, *sum((["-i", r] for r in lab.images.refs()), []))
    assert code == 0
    lines = out.replace("\r", "").splitlines()
    assert lines[0].startswith("REGISTRY_DEEP OK - 9 images, 22 blobs")
    header = next(i for i, line in enumerate(lines) if line.startswith("IMAGE"))
    assert re.match(r"IMAGE\s+PLATFORM\s+BLOBS\s+BYTES\s+TIME\s+STATE$", lines[header])
    rows = lines[header + 1:]
    assert len(rows) == 11 and all(row.endswith("OK") for row in rows)
    assert any(re.match(r"apps/multi:1\.0\s+linux/arm64/v8\s+3\s+1\.3 MB\s+[0-9.]+s\s+OK", row) for row in rows)
    assert "verifying blobs" in err  # the tqdm bar on stderr


def test_no_progress_nor_table_when_not_at_a_terminal(plugin, pristine):
    run = plugin("-R", pristine.url, "-i", "base/golden:1")
    assert run.stderr == "" and "IMAGE" not in run.stdout and len(run.lines) == 1


def test_discovery_follows_catalog_pages_of_a_real_registry(plugin, lab, tmp_path):
    """distribution caps catalog pages at catalog.maxentries and links the next page: 2 names a page here."""
    registry = lab.registry(tmp_path / "paged", config={"catalog": {"maxentries": 2}})
    try:
        run = plugin("-R", registry.url, "--repository", "apps", "--all-tags")
        catalog = [e for e in registry.access_log() if e["path"].startswith("/v2/_catalog")]
    finally:
        registry.stop()
    assert run.code == 0, run.stdout
    assert run.first.startswith("REGISTRY_DEEP OK - 6 images, "), run.first
    assert len(catalog) >= 5, catalog  # 11 repositories, 2 a page


@pytest.mark.parametrize("name", ["multi", "legacy"])  # an OCI index, a Docker manifest list
def test_index_child_that_cannot_be_resolved_gets_its_own_critical_row_everywhere(damaged, lab, tmp_path, name):
    """The child's manifest is gone (404): the JSON rows, the -v image lines and the table all list every platform
    of the index, the lost one CRITICAL, so a script reading images[] sees what the exit code says."""
    image = lab.images.images[name]
    (lost, child), (kept, _) = sorted(image.children.items(), reverse=True)
    damaged.remove_manifest_revision(image.repository, child)
    report = tmp_path / "report.json"
    code, out, _ = run_in_terminal("-R", damaged.url, "-i", image.ref, "-v", "--json", str(report))
    lines = out.replace("\r", "").splitlines()
    assert code == 2, out
    assert lines[0].startswith("REGISTRY_DEEP CRITICAL - ") and f"manifest {child[:19]}… 404 MANIFEST_UNKNOWN" in \
        lines[0], lines[0]
    document = json.loads(report.read_text())
    assert document["to_repush"] == [image.ref]
    assert document["broken"][0]["breaks"] == [f"{image.ref} ({lost})"]
    rows = sorted((row["image"], row["platform"], row["state"]) for row in document["images"])
    assert rows == sorted([(image.ref, lost, "CRITICAL"), (image.ref, kept, "OK")]), document["images"]
    verbose = [line for line in lines if line.startswith("image ")]
    assert len(verbose) == 2, verbose
    verdict = {platform: [line.rsplit(": ", 1)[-1] for line in verbose if line.startswith(f"image {image.ref} "
                                                                                          f"({platform})")]
               for platform in (lost, kept)}
    assert verdict[kept] == ["OK"], verbose
    assert len(verdict[lost]) == 1 and verdict[lost] != ["OK"], verbose
    header = next(i for i, line in enumerate(lines) if line.startswith("IMAGE"))
    table = sorted(tuple(row.split()[i] for i in (0, 1, -1)) for row in lines[header + 1:] if row.strip())
    assert table == rows, lines[header:]


def test_platform_option_selects_the_rows_of_an_index_with_a_lost_child(plugin, damaged, lab):
    """--platform picks which children count: the lost one when selected (its row CRITICAL), else none of it."""
    image = lab.images.images["multi"]
    damaged.remove_manifest_revision(image.repository, image.children["linux/arm64/v8"])
    lost = plugin("-R", damaged.url, "-i", image.ref, "--platform", "linux/arm64/v8", "--json", "-")
    kept = plugin("-R", damaged.url, "-i", image.ref, "--platform", "linux/amd64", "--json", "-")
    assert lost.code == 2, lost.stdout
    assert [(row["platform"], row["state"]) for row in json.loads(lost.stdout)["images"]] == [
        ("linux/arm64/v8", "CRITICAL")]
    assert kept.code == 0, kept.stdout
    assert [(row["platform"], row["state"]) for row in json.loads(kept.stdout)["images"]] == [("linux/amd64", "OK")]


def test_rotation_deep_verifies_a_shared_blob_on_each_registry_it_lives_on(plugin, damaged, lab, tmp_path, ca):
    """Coverage is per (registry, digest): the golden layer verified on one registry says nothing of its copy on
    another. Registry B's copy has one byte flipped (same size: HEAD cannot tell); one blob a registry a run
    (--max-bytes 1), and B has five blobs, so by the sixth run B must have fetched and hashed its own copy.

    Before the fix the state file marked B's copy verified whenever A's was, and in this order (one worker, so
    a lane rotates in a fixed order; B lists the artifact first) B never reached it: always OK."""
    golden = lab.images.golden.digest
    other = lab.tls_registry(tmp_path / "b", ca)
    try:
        other.flip_byte(golden, 1000)
        state = tmp_path / "state.json"
        args = ["-R", damaged.url, "-i", "base/golden:1", "-i", f"{other.host}/artifacts/sbom:1.0",
                "-i", f"{other.host}/apps/web:1.0", "--ca-bundle", str(ca.cert), "--state-file", str(state),
                "--max-bytes", "1", "--workers", "1"]
        runs = []
        for _ in range(6):
            runs.append(plugin(*args))
            if runs[-1].code:
                break
        fetched = {entry["path"].rsplit("/", 1)[-1] for entry in other.access_log()
                   if entry["method"] == "GET" and "/blobs/" in entry["path"]}
    finally:
        other.stop()
    claimed = {key.split(" ", 1)[1] for key, entry in state_of(state).items()
               if key.startswith(other.url + " ") and entry["verified"]}
    # the state file claims a blob verified on B only if B served it
    assert claimed <= fetched, f"verified on {other.url} without a GET there: {sorted(claimed - fetched)}"
    assert [run.code for run in runs][-1] == 2, [run.first for run in runs]
    assert runs[-1].first.startswith(f"REGISTRY_DEEP CRITICAL - 1 broken blob, breaking 1 of 3 images: layer "
                                     f"{golden[:19]}… digest mismatch"), runs[-1].first
