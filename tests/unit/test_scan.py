"""scan.py and stages.py: stages as values, job results (the origin's answers too), run problems apart from
findings.

Scanner runs over fakes (no network): a registry that serves no manifest, and an origin whose answers are
scripted (OriginChecker with its `check` replaced; its own fetching is proven end to end in test_e2e_cache).
"""

from __future__ import annotations

import threading
from typing import List

import pytest

from check_registry_deep.deadline import Deadline
from check_registry_deep.errors import DeadlineExceeded, InternalError, ManifestUnknown, TLSError
from check_registry_deep.model import Finding, Kind, OriginCheck, Target, Trouble
from check_registry_deep.origin import NO_TIME, OriginChecker
from check_registry_deep.reference import Digest, ImageRef
from check_registry_deep.scan import Scanner
from check_registry_deep.stages import Stage

REGISTRY = "http://registry.invalid"
ORIGIN = "10.0.0.5:5000"
APP, DB = ImageRef.parse("team/app:1"), ImageRef.parse("team/db:2")


class NoManifests:
    """A registry that answers its API check (or fails it with `ping_error`) and knows no manifest (or fails
    with `manifest_error`, an exception a bug of ours would raise); `hold` keeps the API check waiting."""

    base_url = REGISTRY
    retries = 0

    def __init__(self, ping_error: Exception | None = None, manifest_error: Exception | None = None,
                 hold: threading.Event | None = None):
        self.ping_error = ping_error
        self.manifest_error = manifest_error
        self.hold = hold

    def ping(self) -> None:
        if self.hold is not None:
            self.hold.wait(10)
        if self.ping_error is not None:
            raise self.ping_error

    def get_manifest(self, repository: str, reference: str):
        raise self.manifest_error or ManifestUnknown(f"404 MANIFEST_UNKNOWN {reference}", 404, "MANIFEST_UNKNOWN")


class OriginClient:
    retries = 0

    def __init__(self) -> None:
        self.deadline = Deadline(50)


class ScriptedOrigin(OriginChecker):
    """Answers `intact` for every failure it is asked about, in the order it is asked; with `hold`, answers
    nothing until the scan ends."""

    def __init__(self, hold: bool = False):
        super().__init__(REGISTRY, ORIGIN, OriginClient())  # type: ignore[arg-type]
        self.hold = hold
        self.asked: List[str] = []

    def check(self, finding: Finding, cancelled: threading.Event) -> OriginCheck:
        self.asked.append(finding.label)
        if self.hold:
            cancelled.wait(10)
        return OriginCheck(self.address)


def scan(client, origin=None, seconds: float = 10, images=(APP, DB)):
    return Scanner(lambda registry: client, Deadline(seconds), workers=1, origin=origin).scan(
        [(ref, REGISTRY) for ref in images])


def test_stages_are_values_with_their_display_text():
    assert [str(stage) for stage in Stage] == [
        "checking the registry API", "listing repositories and tags", "listing tags", "resolving manifests",
        "looking for referrers", "verifying blobs", "comparing replicas", "asking the origin"]
    assert Stage("resolving manifests") is Stage.RESOLVE


def test_the_origins_answers_arrive_as_job_results_in_the_order_the_failures_were_found():
    origin = ScriptedOrigin()
    result = scan(NoManifests(), origin)
    assert origin.asked == ["team/app:1", "team/db:2"]
    assert [(f.label, f.origin) for f in result.findings] == [("team/app:1", OriginCheck(ORIGIN)),
                                                              ("team/db:2", OriginCheck(ORIGIN))]
    assert result.findings[0].finished <= result.findings[1].finished
    assert result.interrupted is None and result.run_problems == ()


def test_failures_the_origin_did_not_answer_in_time_say_so_and_are_kept():
    origin = ScriptedOrigin(hold=True)
    result = scan(NoManifests(), origin, seconds=2.0)  # the origin's stage comes in milliseconds, then waits
    assert origin.asked == ["team/app:1"]  # one worker: the second question never started
    assert [(f.label, f.origin) for f in result.findings] == [
        ("team/app:1", OriginCheck(ORIGIN, skipped=NO_TIME)), ("team/db:2", OriginCheck(ORIGIN, skipped=NO_TIME))]
    assert result.interrupted is not None
    assert str(result.interrupted).startswith("deadline of 2s passed while asking the origin (0 of 2 done); "
                                              "waiting on manifest team/app:1 at 10.0.0.5:5000")
    assert result.interrupted.brief == "deadline of 2s passed while asking the origin"


def test_a_registry_that_failed_is_a_run_problem_and_never_asked_of_the_origin():
    origin = ScriptedOrigin()
    error = TLSError("TLS failure talking to http://registry.invalid: certificate verify failed")
    result = scan(NoManifests(ping_error=error), origin)
    assert [(p.kind, p.where, p.error, p.affected) for p in result.run_problems] == [
        (Trouble.REGISTRY, REGISTRY, error, (Target(APP, REGISTRY), Target(DB, REGISTRY)))]
    assert result.findings == () and origin.asked == []


def test_a_bug_in_a_job_is_a_run_problem_and_never_asked_of_the_origin():
    origin = ScriptedOrigin()
    result = scan(NoManifests(manifest_error=KeyError("a")), origin, images=(APP,))
    assert [(p.kind, p.where, type(p.error)) for p in result.run_problems] == [
        (Trouble.INTERNAL, "manifest of team/app:1", InternalError)]
    assert str(result.run_problems[0].error) == "internal error while checking manifest of team/app:1: KeyError: 'a'"
    assert result.findings == () and origin.asked == []


def test_the_deadline_names_the_stage_and_what_is_in_flight_and_keeps_a_brief_form():
    hold = threading.Event()
    try:
        result = scan(NoManifests(hold=hold), seconds=0.5, images=(APP,))
    finally:
        hold.set()
    assert isinstance(result.interrupted, DeadlineExceeded)
    assert str(result.interrupted) == ("deadline of 0.5s passed while checking the registry API (0 of 1 done); "
                                       "waiting on http://registry.invalid/v2/")
    assert result.interrupted.brief == "deadline of 0.5s passed while checking the registry API"


def test_a_job_cut_by_the_deadline_is_not_counted_done_but_named_as_waited_on():
    """The API check gives up with the deadline just before the scan loop sees it pass: the message said
    "(1 of 1 done); waiting on …" (seen 3 times in 9 loaded runs of test_e2e_deep's silent server)."""
    result = scan(NoManifests(ping_error=DeadlineExceeded("deadline of 10s passed during GET /v2/")),
                  images=(APP,))
    assert str(result.interrupted) == ("deadline of 10s passed while checking the registry API (0 of 1 done); "
                                       "waiting on http://registry.invalid/v2/")


# -- findings name their content by typed fields --------------------------------------------------------

D = Digest.of(b"blob")


def test_a_findings_label_comes_from_its_fields():
    target = (Target(APP, REGISTRY),)
    assert Finding(Kind.LAYER, target, digest=D).label == str(D)
    assert Finding(Kind.MANIFEST, target, digest=D, image=APP).label == str(D)  # pinned or a child: its digest
    assert Finding(Kind.MANIFEST, target, image=APP).label == "team/app:1"  # asked for by tag
    assert Finding(Kind.LAYER, target, digest=D, replica="http://dc2").label == f"{D} on http://dc2"
    assert Finding(Kind.MANIFEST, target, image=APP, replica="http://dc2").label == "team/app:1 on http://dc2"
    with pytest.raises(ValueError):
        Finding(Kind.LAYER, target)
