"""End to end: the verdict never lies. Files the plugin writes fail without hiding a broken registry; --max-age
warns on blobs not deep-verified for too long."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from registry_lab.faults import Drip, FaultProxy, Silence

pytestmark = pytest.mark.e2e

#: A valid file of each kind, as an earlier run left it: it must survive a failed write byte for byte.
OLD_FILES = {
    "--state-file": ("state.json", json.dumps({"version": 1, "created": 1.0, "blobs": {}}).encode()),
    "--json": ("run.json", b'{"schema": 1, "state": "OK"}\n'),
    "--metrics-file": ("sentinels.prom", b"registry_deep_state{check=\"sentinels\"} 0.0\n"),
}


def image_args(refs):
    return [arg for ref in refs for arg in ("-i", ref)]


def fill_to_the_last_byte(directory: Path) -> None:
    """Write a filler file until the file system refuses even one more byte."""
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (b"\0" * 65536, b"\0" * 4096, b"\0"):
            while True:
                try:
                    os.write(fd, chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    finally:
        os.close(fd)
    assert os.statvfs(directory).f_bavail == 0


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real file system of 256 KiB, mounted for this test (needs root) and unmounted after it."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def broken_golden_run(plugin, damaged, lab, *extra):
    return plugin("-R", damaged.url, *image_args(lab.images.refs()), *extra)


def assert_golden_critical(run, lab):
    assert run.code == 2, run.stdout
    assert run.first.startswith(f"REGISTRY_DEEP CRITICAL - 1 broken blob, breaking 8 of 9 images: layer "
                                f"{lab.images.golden.digest[:19]}… truncated: "), run.first


@pytest.mark.parametrize("option", list(OLD_FILES))
def test_a_full_file_system_keeps_the_old_file_and_a_broken_registry_critical(plugin, damaged, lab, small_tmpfs,
                                                                               option):
    name, old = OLD_FILES[option]
    path = small_tmpfs / name
    path.write_bytes(old)
    if option == "--state-file":
        (small_tmpfs / f"{name}.lock").touch()
    fill_to_the_last_byte(small_tmpfs)
    before = sorted(os.listdir(small_tmpfs))
    damaged.truncate_blob(lab.images.golden.digest, 4096)
    run = broken_golden_run(plugin, damaged, lab, option, str(path))
    assert_golden_critical(run, lab)
    assert run.lines[1] == f"UNKNOWN: cannot write {option} {path}: No space left on device", run.stdout
    assert run.stdout.count("cannot write") == 1 and "internal error" not in run.stdout
    assert path.read_bytes() == old
    assert sorted(os.listdir(small_tmpfs)) == before  # no temporary file left behind
    assert run.stderr == ""


@pytest.mark.parametrize("option", list(OLD_FILES))
def test_a_file_in_a_missing_directory_is_one_line_and_a_broken_registry_stays_critical(plugin, damaged, lab,
                                                                                        tmp_path, option):
    missing = tmp_path / "no-such-dir" / OLD_FILES[option][0]
    damaged.truncate_blob(lab.images.golden.digest, 4096)
    run = broken_golden_run(plugin, damaged, lab, option, str(missing))
    assert_golden_critical(run, lab)
    assert run.lines[1] == f"UNKNOWN: cannot write {option} {missing}: directory {missing.parent} does not exist"
    assert not missing.parent.exists()


def test_a_state_file_in_a_missing_directory_is_unknown_when_the_registry_is_healthy(plugin, pristine, lab,
                                                                                     tmp_path):
    missing = tmp_path / "no-such-dir" / "state.json"
    run = plugin("-R", pristine.url, *image_args(lab.images.refs()), "--state-file", str(missing))
    assert run.code == 3, run.stdout
    assert run.first.startswith(f"REGISTRY_DEEP UNKNOWN - cannot write --state-file {missing}: directory "
                                f"{missing.parent} does not exist; 9 images, 22 blobs, 3.4 MB verified in "), run.first


# -- --max-age ---------------------------------------------------------------------------------------------

DAY = 86400


def aged_state(path: Path, created: float, ages: dict, default: float) -> None:
    """Rewrite a state file's times: `ages` maps an entry's position (in name order) to seconds since it was
    last verified (None: never); every other entry was verified `default` seconds ago."""
    state = json.loads(path.read_text())
    now = time.time()
    for i, name in enumerate(sorted(state["blobs"])):
        age = ages.get(i, default)
        state["blobs"][name] = {"first_seen": created, "verified": None if age is None else now - age}
    state["created"] = created
    path.write_text(json.dumps(state))


def test_max_age_warns_on_a_blob_not_deep_verified_for_longer(plugin, pristine, lab, tmp_path):
    state = tmp_path / "state.json"
    args = ["-R", pristine.url, *image_args(lab.images.refs()), "--state-file", str(state), "--max-age", "1d"]
    first = plugin(*args)
    assert first.code == 0, first.stdout
    assert " oldest=0s;86400;;0 " in first.first, first.first
    # one blob verified 3 days ago, one 2 days ago, the others an hour ago; --max-bytes 1: one blob per run,
    # the stalest, is downloaded again
    aged_state(state, time.time() - 4 * DAY, {0: 3 * DAY, 1: 2 * DAY}, 3600)
    run = plugin(*args, "--max-bytes", "1")
    assert run.code == 1, run.stdout
    assert re.match(r"REGISTRY_DEEP WARNING - 1 blob not deep-verified for over 1d \(--max-age; oldest 2d\); "
                    r"9 images, 1 blob, [0-9.]+ k?B verified in [0-9.]+s, 21 more present \(deep check rotated\)"
                    r", 1 foreign layer skipped \| ", run.first), run.first
    assert re.search(r" oldest=1728\d\ds;86400;;0 ", run.first), run.first
    again = plugin(*args, "--max-bytes", "1")  # the 2-day-old one's turn: the rest is an hour old
    assert again.code == 0, again.stdout
    assert re.search(r" oldest=36\d\ds;86400;;0 ", again.first), again.first


def test_max_age_counts_a_never_verified_blob_from_the_state_files_creation(plugin, pristine, lab, tmp_path):
    state = tmp_path / "state.json"
    args = ["-R", pristine.url, *image_args(lab.images.refs()), "--state-file", str(state), "--max-age", "12h",
            "--max-bytes", "1"]
    first = plugin(*args)  # a first run: one blob verified, 21 never; no age to speak of yet
    assert first.code == 0, first.stdout
    assert " oldest=" not in first.first and " unverified=21;;;0" in first.first, first.first
    aged_state(state, time.time() - 2 * DAY, {0: None, 1: None}, 3600)  # created 2 days ago
    run = plugin(*args)
    assert run.code == 1, run.stdout
    assert run.first.startswith("REGISTRY_DEEP WARNING - 1 blob not deep-verified for over 12h (--max-age; "
                                "oldest 2d); 9 images, 1 blob, "), run.first
    assert " unverified=1;;;0" in run.first, run.first


def test_max_age_needs_a_state_file_and_a_duration(plugin, pristine):
    assert plugin("-R", pristine.url, "-i", "a:1", "--max-age", "1d").first == \
        "REGISTRY_DEEP UNKNOWN - --max-age needs --state-file (it remembers when each blob was verified)"
    assert plugin("-R", pristine.url, "-i", "a:1", "--state-file", "/tmp/x", "--max-age", "soon").first == \
        "REGISTRY_DEEP UNKNOWN - invalid --max-age 'soon': expected a positive duration, e.g. 1d, 12h, 90m or 3600s"


# -- a selection that matches nothing ----------------------------------------------------------------------

@pytest.mark.parametrize("args, start", [
    (["--repository", "appz", "--all-tags"], "--repository appz matched no repository in the catalog of {url} | "),
    (["--repository", "apps", "--tag-pattern", "9.*"],
     "--tag-pattern '9.*' matched no tag of the 7 repositories under --repository apps | "),
    # one prefix that matches nothing is a typo, however many others match
    (["--repository", "base", "--repository", "appz", "--all-tags"],
     "--repository appz matched no repository in the catalog of {url}; 1 image, 2 blobs, 1.0 MB verified in "),
], ids=["no-repository", "no-tag", "one-prefix-of-two"])
def test_discovery_that_matches_nothing_is_unknown(plugin, pristine, args, start):
    run = plugin("-R", pristine.url, *args)
    assert run.code == 3, run.stdout
    assert run.first.startswith("REGISTRY_DEEP UNKNOWN - " + start.format(url=pristine.url)), run.first


def test_a_platform_that_no_child_of_an_index_has_is_unknown_for_that_image(plugin, pristine):
    run = plugin("-R", pristine.url, "-i", "apps/multi:1.0", "--platform", "linux/s390x")
    assert run.code == 3, run.stdout
    assert run.first.startswith("REGISTRY_DEEP UNKNOWN - --platform linux/s390x matched no child of apps/multi:1.0 "
                                "(it has linux/amd64, linux/arm64/v8) | "), run.first
    # a plain image has no children to choose from: it is checked whatever --platform says
    mixed = plugin("-R", pristine.url, "-i", "apps/multi:1.0", "-i", "apps/web:1.0", "--platform", "linux/s390x",
                   "-v")
    assert mixed.code == 3, mixed.stdout
    assert mixed.first.startswith("REGISTRY_DEEP UNKNOWN - --platform linux/s390x matched no child of apps/multi:1.0 "
                                  "(it has linux/amd64, linux/arm64/v8); 2 images, 3 blobs, 1.3 MB verified in "), \
        mixed.first
    assert "image apps/multi:1.0: nothing selected: UNKNOWN" in mixed.lines
    assert any(line.startswith("image apps/web:1.0: manifest sha256:") and line.endswith(": OK")
               for line in mixed.lines), mixed.stdout


def test_allow_empty_says_an_empty_selection_is_fine(plugin, pristine):
    run = plugin("-R", pristine.url, "--repository", "appz", "--all-tags", "--allow-empty")
    assert run.code == 0, run.stdout
    assert run.first.startswith("REGISTRY_DEEP OK - 0 images, 0 blobs, 0 B verified in "), run.first
    assert run.lines[1] == f"note: --repository appz matched no repository in the catalog of {pristine.url} " \
                           "(--allow-empty)"
    platform = plugin("-R", pristine.url, "-i", "apps/multi:1.0", "--platform", "linux/s390x", "--allow-empty")
    assert platform.code == 0, platform.stdout


# -- the deadline: not checked, never broken ---------------------------------------------------------------

SILENT_MANIFESTS = ("apps/api", "apps/slim", "apps/web")


@pytest.mark.parametrize("timeout, code, word", [("3", 3, "UNKNOWN"), ("3:critical", 2, "CRITICAL"),
                                                 ("3:ok", 0, "OK")])
def test_images_not_reached_before_the_deadline_are_not_checked_never_broken(plugin, pristine, lab, timeout, code,
                                                                             word):
    with FaultProxy(pristine.url) as proxy:
        for repository in SILENT_MANIFESTS:
            proxy.add(rf"^GET /v2/{repository}/manifests/", Silence(), times=None)
        run = plugin("-R", proxy.url, *image_args(lab.images.refs()), "-t", timeout, "-v")
    assert run.code == code, run.stdout
    # which of the silent manifests it names depends on who saw the deadline first: the scan, or a request
    assert re.match(rf"REGISTRY_DEEP {word} - 9 images not checked: deadline of 3s passed while resolving manifests "
                    r"\(\d of 9 done\); waiting on manifest of apps/(api|slim|web):1\.0", run.first), run.first
    assert "broken" not in run.stdout.lower()
    assert run.lines[1].endswith("; not checked: " + ", ".join(sorted(lab.images.refs()))), run.stdout
    rows = [line for line in run.lines if line.startswith("image ")]
    assert len(rows) == 11 and all(row.endswith(": not checked (deadline)") for row in rows), run.stdout


def test_a_blob_not_reached_before_the_deadline_leaves_its_images_not_checked(plugin, pristine, lab):
    golden = lab.images.golden.digest
    with FaultProxy(pristine.url) as proxy:
        # a byte now and then: never a stall (that would be a broken blob), never done before the deadline
        proxy.add(rf"^GET /v2/[^ ]+/blobs/{golden}", Drip(0.1), times=None)
        run = plugin("-R", proxy.url, *image_args(lab.images.refs()), "-t", "3", "-v")
    assert run.code == 3, run.stdout
    assert re.match(rf"REGISTRY_DEEP UNKNOWN - 8 images not checked: deadline of 3s passed while verifying blobs "
                    rf"\(\d+ of \d+ done\); waiting on layer {golden[:19]}", run.first), run.first
    assert "broken" not in run.stdout.lower()
    assert any(line.startswith("image artifacts/sbom:1.0: manifest ") and line.endswith(": OK")
               for line in run.lines), run.stdout
    assert sum(1 for line in run.lines if line.endswith(": not checked (deadline)")) == 10  # 8 images, 10 rows
