"""The judging decisions behind "no false OK and no false breakage": files that cannot be written, --max-age."""

from __future__ import annotations

import errno
import os
import re

import pytest

from check_registry_deep import check
from check_registry_deep.atomic import replace_file, with_problem, write_file
from check_registry_deep.cli import parse_duration
from check_registry_deep.discovery import empty_selections
from check_registry_deep.errors import UsageError
from check_registry_deep.model import EmptySelection, Finding, Freshness, Kind, ScanResult, Selection, Target
from check_registry_deep.options import DiscoveryOptions
from check_registry_deep.reference import Digest, ImageRef

REGISTRY = "http://127.0.0.1:5000"
APP = ImageRef.parse("team/app:1")
LAYER = Finding(str(Digest.of(b"layer")), Kind.LAYER, (Target(APP, REGISTRY),), size=1000, bytes_read=1000)
DAY = 86400.0


# -- a file that cannot be written -------------------------------------------------------------------------

OK_OUTPUT = "REGISTRY_DEEP OK - 1 image, 1 blob, 1.0 kB verified in 0.5s | blobs=1;;;0\nnote: x\n"
CRITICAL_OUTPUT = "REGISTRY_DEEP CRITICAL - 1 broken blob | blobs=0;;;0\nCRITICAL: layer sha256:…\n"
PROBLEM = "cannot write --json /x/run.json: No space left on device"


def test_a_failed_write_turns_ok_into_unknown_and_keeps_the_perfdata():
    assert with_problem(OK_OUTPUT, 0, PROBLEM) == (
        f"REGISTRY_DEEP UNKNOWN - {PROBLEM}; 1 image, 1 blob, 1.0 kB verified in 0.5s | blobs=1;;;0\nnote: x\n", 3)


@pytest.mark.parametrize("code", [1, 2, 3])
def test_a_failed_write_never_hides_a_worse_state(code):
    first, _, rest = CRITICAL_OUTPUT.partition("\n")
    assert with_problem(CRITICAL_OUTPUT, code, PROBLEM) == (f"{first}\nUNKNOWN: {PROBLEM}\n{rest}", code)


def test_without_text_the_failed_write_goes_to_stderr_and_the_document_stays(capsys):
    assert with_problem('{"state": "OK"}\n', 0, PROBLEM, text=False) == ('{"state": "OK"}\n', 3)
    assert capsys.readouterr().err == PROBLEM + "\n"


def test_nothing_to_say_changes_nothing():
    assert with_problem(OK_OUTPUT, 0, None) == (OK_OUTPUT, 0)


def test_a_write_that_fails_midway_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "run.json"
    path.write_bytes(b"old")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fsync", full)
    assert write_file("--json", str(path), b"new") == f"cannot write --json {path}: No space left on device"
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["run.json"]
    with pytest.raises(OSError):
        replace_file(str(path), b"new")


def test_a_missing_directory_is_named():
    assert write_file("--state-file", "/no/such/dir/state.json", b"{}") == \
        "cannot write --state-file /no/such/dir/state.json: directory /no/such/dir does not exist"


# -- --max-age ---------------------------------------------------------------------------------------------

def judged(freshness, max_age=None):
    scan = ScanResult((APP,), (), (LAYER,), 0.5, 0, freshness=freshness)
    plugin = check.build_check(lambda: scan, max_age=max_age)
    plugin()
    return check.render(plugin).splitlines()[0], plugin.exitcode


def test_a_blob_older_than_max_age_is_a_warning_naming_how_many():
    first, code = judged(Freshness((2.5 * DAY, 3 * DAY, 60.0)), max_age=DAY)
    assert code == 1
    assert first == ("REGISTRY_DEEP WARNING - 2 blobs not deep-verified for over 1d (--max-age; oldest 3d); 1 image, "
                     "1 blob, 1.0 kB verified in 0.5s | blobs=1;;;0 bytes=1000B;;;0 failed=0;;;0 images=1;;;0 "
                     "oldest=259200s;86400;;0 retries=0;;;0 time=0.5s;;;0 unverified=0;;;0")


def test_within_max_age_or_without_it_the_age_is_only_perfdata():
    assert judged(Freshness((DAY - 1,)), max_age=DAY)[1] == 0
    first, code = judged(Freshness((3 * DAY,)))
    assert code == 0 and " oldest=259200s;;;0 " in first


def test_a_new_state_file_with_never_verified_blobs_has_no_oldest_and_no_warning():
    first, code = judged(Freshness((60.0, 0.0), never_verified=1, new_state=True), max_age=1.0)
    assert code == 0
    assert " oldest=" not in first and " unverified=1;;;0" in first


@pytest.mark.parametrize("text, seconds", [("1d", DAY), ("12h", 43200), ("90m", 5400), ("3600s", 3600),
                                           ("3600", 3600), ("1.5h", 5400), ("2w", 14 * DAY)])
def test_durations(text, seconds):
    assert parse_duration("--max-age", text) == seconds


@pytest.mark.parametrize("text", ["0", "-1d", "1y", "d", ""])
def test_bad_durations(text):
    with pytest.raises(UsageError, match=r"invalid --max-age .*: expected a positive duration, e.g. 1d"):
        parse_duration("--max-age", text)


# -- a selection that matches nothing ----------------------------------------------------------------------

def refs(*texts):
    return [ImageRef.parse(t) for t in texts]


def test_each_prefix_without_repositories_is_an_empty_selection():
    wanted = DiscoveryOptions(("apps", "appz", "base/"))
    listed = {"apps/web": refs("apps/web:1"), "base/golden": refs("base/golden:1")}
    assert empty_selections(wanted, REGISTRY, listed) == [EmptySelection(Selection.REPOSITORY, "appz", REGISTRY)]


def test_repositories_without_a_selected_tag_are_an_empty_selection_of_the_pattern():
    wanted = DiscoveryOptions(("apps",), re.compile("9.*"))
    listed = {"apps/web": [], "apps/api": [], "base/golden": refs("base/golden:9")}
    assert empty_selections(wanted, REGISTRY, listed) == [
        EmptySelection(Selection.TAG_PATTERN, "9.*", "apps", ("apps/web", "apps/api"))]
    assert empty_selections(DiscoveryOptions(("apps",)), REGISTRY, {"apps/web": []}) == [
        EmptySelection(Selection.ALL_TAGS, "", "apps", ("apps/web",))]  # every tag deleted
    assert empty_selections(wanted, REGISTRY, {"apps/web": [], "apps/api": refs("apps/api:9")}) == []
