"""The judging decisions behind "no false OK and no false breakage": files that cannot be written, --max-age,
selections that match nothing, images the deadline left unchecked."""

from __future__ import annotations

import ast
import errno
import os
import re
from dataclasses import replace
from pathlib import Path

import pytest

from check_registry_deep import check
from check_registry_deep.atomic import replace_file, with_problem, write_file
from check_registry_deep.cli import parse_duration
from check_registry_deep.discovery import empty_selections
from check_registry_deep.errors import DeadlineExceeded, SizeMismatch, UsageError
from check_registry_deep.judge import Judgement, image_verdicts, not_checked
from check_registry_deep.manifests import LAYER as LAYER_TYPE
from check_registry_deep.manifests import Descriptor
from check_registry_deep.model import (
    EmptySelection,
    Finding,
    Freshness,
    Kind,
    ScanResult,
    Selection,
    Target,
    TargetResult,
)
from check_registry_deep.options import DiscoveryOptions
from check_registry_deep.reference import Digest, ImageRef
from check_registry_deep.states import Rendered
from check_registry_deep.wording import empty_text

REGISTRY = "http://127.0.0.1:5000"
APP = ImageRef.parse("team/app:1")
LAYER = Finding(Kind.LAYER, (Target(APP, REGISTRY),), digest=Digest.of(b"layer"), size=1000, bytes_read=1000)
DAY = 86400.0


# -- a file that cannot be written -------------------------------------------------------------------------

OK_OUTPUT = Rendered("ok", "1 image, 1 blob, 1.0 kB verified in 0.5s", "blobs=1;;;0", ("note: x",))
CRITICAL_OUTPUT = Rendered("critical", "1 broken blob", "blobs=0;;;0", ("CRITICAL: layer sha256:…",))
PROBLEM = "cannot write --json /x/run.json: No space left on device"


def test_the_output_values_render_as_the_plugin_prints_them():
    assert OK_OUTPUT.text == "REGISTRY_DEEP OK - 1 image, 1 blob, 1.0 kB verified in 0.5s | blobs=1;;;0\nnote: x\n"
    assert Rendered("unknown", "").text == "REGISTRY_DEEP UNKNOWN\n"
    assert replace(OK_OUTPUT, table="T\n").text.endswith("note: x\n\nT\n")
    assert replace(OK_OUTPUT, document='{"state": "OK"}\n').text == '{"state": "OK"}\n'


def test_a_failed_write_turns_ok_into_unknown_with_the_problem_first_and_keeps_the_perfdata():
    output = with_problem(OK_OUTPUT, PROBLEM)
    assert output == Rendered("unknown", f"{PROBLEM}; 1 image, 1 blob, 1.0 kB verified in 0.5s", "blobs=1;;;0",
                              ("note: x",))
    assert (output.text, output.exitcode) == (
        f"REGISTRY_DEEP UNKNOWN - {PROBLEM}; 1 image, 1 blob, 1.0 kB verified in 0.5s | blobs=1;;;0\nnote: x\n", 3)


@pytest.mark.parametrize("state", ["warning", "critical", "unknown"])
def test_a_failed_write_never_hides_a_worse_state(state):
    output = with_problem(replace(CRITICAL_OUTPUT, state=state), PROBLEM)
    assert output == replace(CRITICAL_OUTPUT, state=state,
                             long_lines=(f"UNKNOWN: {PROBLEM}", "CRITICAL: layer sha256:…"))
    first = replace(CRITICAL_OUTPUT, state=state, long_lines=()).text
    assert output.text == f"{first}UNKNOWN: {PROBLEM}\nCRITICAL: layer sha256:…\n"
    assert output.exitcode == {"warning": 1, "critical": 2, "unknown": 3}[state]


def test_without_text_the_failed_write_goes_to_stderr_and_the_document_stays(capsys):
    document = replace(OK_OUTPUT, document='{"state": "OK"}\n')
    output = with_problem(document, PROBLEM, text=False)
    assert (output.text, output.exitcode) == ('{"state": "OK"}\n', 3)
    assert capsys.readouterr().err == PROBLEM + "\n"
    assert with_problem(replace(document, state="critical"), PROBLEM, text=False).exitcode == 2


def test_nothing_to_say_changes_nothing():
    assert with_problem(OK_OUTPUT, None) == OK_OUTPUT


def test_no_output_is_parsed_back_into_its_parts():
    """Values, not strings: a file that could not be written changes the `Rendered` value; the modules that add it
    to the output split no text."""
    for module in ("atomic", "metrics"):
        tree = ast.parse((Path(check.__file__).parent / f"{module}.py").read_text(encoding="utf-8"))
        splits = [ast.unparse(node) for node in ast.walk(tree) if isinstance(node, ast.Attribute)
                  and node.attr in ("partition", "rpartition", "split", "rsplit", "splitlines")]
        assert splits == [], module


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
    return check.rendered(plugin).text.splitlines()[0], plugin.exitcode


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


def render(scan, **options):
    plugin = check.build_check(lambda: scan, **options)
    plugin()
    return check.rendered(plugin).text.splitlines(), plugin.exitcode


MULTI = ImageRef.parse("team/multi:1")
NO_ARM = EmptySelection(Selection.PLATFORM, "linux/s390x", str(MULTI), ("linux/amd64",), Target(MULTI, REGISTRY))


def test_a_selection_that_matches_nothing_is_unknown_beside_what_was_checked():
    lines, code = render(ScanResult((APP, MULTI), (), (LAYER,), 0.5, 0, empty=(NO_ARM,)))
    assert code == 3
    assert lines[0].startswith("REGISTRY_DEEP UNKNOWN - --platform linux/s390x matched no child of team/multi:1 "
                               "(it has linux/amd64); 2 images, 1 blob, 1.0 kB verified in 0.5s | ")
    assert lines[1] == "UNKNOWN: --platform linux/s390x matched no child of team/multi:1 (it has linux/amd64)"


def test_allow_empty_makes_it_a_note():
    lines, code = render(ScanResult((APP, MULTI), (), (LAYER,), 0.5, 0, empty=(NO_ARM,)), allow_empty=True)
    assert code == 0
    assert lines[1] == "note: --platform linux/s390x matched no child of team/multi:1 (it has linux/amd64) " \
                       "(--allow-empty)"


def test_a_broken_blob_stays_critical_beside_an_empty_selection():
    broken = Finding(Kind.LAYER, (Target(APP, REGISTRY),), digest=Digest.of(b"layer"), size=1000,
                     error=SizeMismatch("truncated: got 10 of 1000 bytes"))
    lines, code = render(ScanResult((APP, MULTI), (), (broken,), 0.5, 0, empty=(NO_ARM,)))
    assert code == 2
    assert "; --platform linux/s390x matched no child of team/multi:1" in lines[0]


@pytest.mark.parametrize("empty, text", [
    (EmptySelection(Selection.REPOSITORY, "appz", REGISTRY), f"--repository appz matched no repository in the catalog "
                                                            f"of {REGISTRY}"),
    (EmptySelection(Selection.TAG_PATTERN, "9.*", "apps", ("apps/web",)),
     "--tag-pattern '9.*' matched no tag of the 1 repository under --repository apps"),
    (EmptySelection(Selection.ALL_TAGS, "", "apps", ("apps/web", "apps/api")),
     "--all-tags found no tag in the 2 repositories under --repository apps"),
])
def test_what_matched_nothing_is_said(empty, text):
    assert empty_text(empty) == text


# -- the deadline ------------------------------------------------------------------------------------------

WEB, DB = ImageRef.parse("team/web:1"), ImageRef.parse("team/db:1")
BLOB = [Descriptor(LAYER_TYPE, Digest.of(f"blob {i}".encode()), 100) for i in range(3)]
T_WEB, T_DB, T_APP = Target(WEB, REGISTRY), Target(DB, REGISTRY), Target(APP, REGISTRY)
PASSED = DeadlineExceeded("deadline of 3s passed while verifying blobs (1 of 3 done); waiting on layer x",
                          brief="deadline of 3s passed while verifying blobs")


def blob_finding(descriptor, *affected, error=None):
    return Finding(Kind.LAYER, affected, digest=descriptor.digest, size=100, bytes_read=0 if error else 100,
                   error=error)


def test_images_the_deadline_left_unfinished_are_not_checked_and_a_broken_one_stays_broken():
    targets = (TargetResult(T_WEB, Digest.of(b"web"), (BLOB[0], BLOB[1])),  # BLOB[1] never came back
               TargetResult(T_DB, Digest.of(b"db"), (BLOB[0],)),  # all verified
               TargetResult(T_APP, Digest.of(b"app"), (BLOB[2], BLOB[1])))  # BLOB[2] broken
    findings = (blob_finding(BLOB[0], T_WEB, T_DB),
                blob_finding(BLOB[2], T_APP, error=SizeMismatch("truncated: got 10 of 100 bytes")))
    unresolved = Target(ImageRef.parse("team/late:1"), REGISTRY)
    scan = ScanResult((WEB, DB, APP, unresolved.image), targets, findings, 3.0, 0, PASSED,
                      selected=(T_WEB, T_DB, T_APP, unresolved))
    assert not_checked(scan) == (T_WEB, unresolved)
    states = {str(v.target): (v.state, v.unjudged is not None) for v in image_verdicts(scan)}
    assert states == {"team/web:1": ("unknown", True), "team/db:1": ("ok", False), "team/app:1": ("critical", False),
                      "team/late:1": ("unknown", True)}
    lines, code = render(scan, timeout_state="warning")
    assert code == 2
    assert lines[0].startswith("REGISTRY_DEEP CRITICAL - 1 broken blob, breaking 1 of 4 images: layer ")
    assert lines[0].split(" | ")[0].endswith("; 2 images not checked: deadline of 3s passed while verifying blobs "
                                             "(1 of 3 done); waiting on layer x")


@pytest.mark.parametrize("timeout_state, code", [("unknown", 3), ("critical", 2), ("ok", 0)])
def test_the_deadline_state_stays_what_t_says(timeout_state, code):
    scan = ScanResult((WEB,), (), (), 3.0, 0, PASSED, selected=(T_WEB,))
    lines, exitcode = render(scan, timeout_state=timeout_state, verbose=1)
    assert exitcode == code
    assert lines[0].startswith(f"REGISTRY_DEEP {timeout_state.upper()} - 1 image not checked: deadline of 3s passed ")
    assert "image team/web:1: not checked (deadline)" in lines


def test_content_not_reached_for_lack_of_time_is_never_counted_as_broken():
    late = Finding(Kind.MANIFEST, (T_WEB,), image=WEB, error=DeadlineExceeded("deadline of 3s passed during GET"))
    scan = ScanResult((WEB,), (), (late,), 3.0, 0, PASSED, selected=(T_WEB,))
    lines, code = render(scan, timeout_state="critical")
    assert code == 2  # the -t state, from the deadline
    assert "broken" not in "\n".join(lines) and not Judgement(scan).failures
    assert not_checked(scan) == (T_WEB,)
