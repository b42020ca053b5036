"""discovery.py (catalog and tags paging) and coverage.py (rotation, budget, state merging) without a registry."""

from __future__ import annotations

import json
import re
import threading
from typing import Iterator

import pytest
import responses

from check_registry_deep.client import RegistryClient
from check_registry_deep.coverage import Coverage
from check_registry_deep.deadline import Deadline
from check_registry_deep.discovery import repositories, tags
from check_registry_deep.errors import ManifestInvalid, UsageError
from check_registry_deep.model import Trouble
from check_registry_deep.options import DiscoveryOptions
from check_registry_deep.reference import Digest
from check_registry_deep.retry import RetryPolicy
from check_registry_deep.scan import Scanner

BASE = "http://127.0.0.1:5000"


def discover(wanted: DiscoveryOptions, client) -> list:
    """The images the scan's discovery stages find, one listing after the other."""
    return [ref for repository in repositories(wanted, client) for ref in tags(wanted, client, repository)]


@pytest.fixture
def mock() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


def client() -> RegistryClient:
    return RegistryClient(BASE, Deadline(10), retry=RetryPolicy(attempts=1))


def test_catalog_and_tags_follow_link_pagination_and_null_tags(mock):
    mock.add(responses.GET, f"{BASE}/v2/_catalog", json={"repositories": ["apps/a", "apps/b"]},
             headers={"Link": '</v2/_catalog?last=apps%2Fb&n=1000>; rel="next"'}, match_querystring=False)
    mock.add(responses.GET, f"{BASE}/v2/_catalog?last=apps%2Fb&n=1000",
             json={"repositories": ["apps/c", "other/x"]}, match_querystring=True)
    mock.add(responses.GET, f"{BASE}/v2/apps/a/tags/list", json={"name": "apps/a", "tags": ["1", "2"]},
             headers={"Link": '</v2/apps/a/tags/list?last=2&n=1000>; rel="next"'}, match_querystring=False)
    mock.add(responses.GET, f"{BASE}/v2/apps/a/tags/list?last=2&n=1000", json={"name": "apps/a", "tags": ["3"]},
             match_querystring=True)
    mock.add(responses.GET, f"{BASE}/v2/apps/b/tags/list", json={"name": "apps/b", "tags": None})
    mock.add(responses.GET, f"{BASE}/v2/apps/c/tags/list", status=404,
             json={"errors": [{"code": "NAME_UNKNOWN", "message": "repository name not known to registry"}]})
    # the first page's request is n=1000 without `last`; responses matches it by path
    found = discover(DiscoveryOptions(("apps",)), client())
    assert [str(ref) for ref in found] == ["apps/a:1", "apps/a:2", "apps/a:3"]
    assert not any("other" in call.request.url for call in mock.calls)


def test_tag_pattern_matches_whole_tags(mock):
    mock.add(responses.GET, f"{BASE}/v2/_catalog", json={"repositories": ["apps/a"]})
    mock.add(responses.GET, f"{BASE}/v2/apps/a/tags/list", json={"tags": ["1.0", "1.0-rc1", "latest"]})
    found = discover(DiscoveryOptions(("apps/a",), re.compile(r"[0-9.]+")), client())
    assert [ref.tag for ref in found] == ["1.0"]


def test_a_link_to_another_host_is_refused(mock):
    mock.add(responses.GET, f"{BASE}/v2/_catalog", json={"repositories": []},
             headers={"Link": '<http://127.0.0.2:5000/v2/_catalog?last=x>; rel="next"'})
    with pytest.raises(ManifestInvalid, match="Link to another place refused"):
        discover(DiscoveryOptions(("apps",)), client())


def test_hostile_listing_is_invalid(mock):
    mock.add(responses.GET, f"{BASE}/v2/_catalog", json={"repositories": "apps/a"})
    with pytest.raises(ManifestInvalid, match="expected 'repositories' to be a list of names"):
        discover(DiscoveryOptions(("apps",)), client())


def test_the_scan_lists_tags_of_many_repositories_at_once_and_keeps_catalog_order(mock):
    """Behind a WAN, 40 repositories one after the other cost 40 round trips; with -j 4 they overlap."""
    names = [f"apps/r{n}" for n in range(8)]
    in_flight, most, lock = [0], [0], threading.Lock()
    arrived: list = []
    together = threading.Barrier(2, timeout=10)  # the first two listings wait for each other: only overlap passes

    def tags(request):
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
            first_two = len(arrived) < 2
            arrived.append(request.path_url)
        if first_two:
            together.wait()
        with lock:
            in_flight[0] -= 1
        name = request.path_url.split("/tags/")[0][len("/v2/"):]
        return 200, {}, json.dumps({"name": name, "tags": ["2", "1"]})

    mock.add(responses.GET, f"{BASE}/v2/", json={})
    mock.add(responses.GET, f"{BASE}/v2/_catalog", json={"repositories": names})
    for name in names:
        mock.add_callback(responses.GET, f"{BASE}/v2/{name}/tags/list", callback=tags)
    one = client()
    result = Scanner(lambda registry: one, Deadline(10), workers=4,
                     discovery=(BASE, DiscoveryOptions(("apps",)))).scan([])
    assert most[0] > 1
    assert [str(ref) for ref in result.images] == [f"{name}:{tag}" for name in names for tag in ("2", "1")]


def test_the_first_failing_tag_listing_in_catalog_order_stops_the_lane(mock):
    mock.add(responses.GET, f"{BASE}/v2/", json={})
    mock.add(responses.GET, f"{BASE}/v2/_catalog", json={"repositories": ["apps/a", "apps/b", "apps/c"]})
    mock.add(responses.GET, f"{BASE}/v2/apps/a/tags/list", json={"tags": ["1"]})
    mock.add(responses.GET, f"{BASE}/v2/apps/b/tags/list", status=403, json={"errors": [{"code": "DENIED"}]})
    mock.add(responses.GET, f"{BASE}/v2/apps/c/tags/list", status=401, json={"errors": [{"code": "UNAUTHORIZED"}]})
    one = client()
    result = Scanner(lambda registry: one, Deadline(10), workers=4,
                     discovery=(BASE, DiscoveryOptions(("apps",)))).scan([])
    failed = [p for p in result.run_problems if p.kind == Trouble.REGISTRY]
    assert len(failed) == 1 and "403" in str(failed[0].error), failed
    assert not result.images and not any("/manifests/" in call.request.url for call in mock.calls)


def test_prefix_matches_path_components_only():
    discovery = DiscoveryOptions(("apps",))
    assert discovery.wants("apps") and discovery.wants("apps/web")
    assert not discovery.wants("applications/web")


def key(n: int):
    return ("http://r", Digest("sha256", f"{n:064x}"))


def test_choose_prefers_never_then_least_recently_verified_within_the_budget(tmp_path):
    clock = iter(range(1000, 2000, 10))
    state = tmp_path / "state.json"
    coverage = Coverage(str(state), max_bytes=250, clock=lambda: next(clock))
    candidates = [(key(i), 100) for i in range(5)]
    first = coverage.choose(candidates)
    assert len(first) == 2
    coverage.record([k for k, _ in candidates], first)
    coverage.save()
    again = Coverage(str(state), max_bytes=250, clock=lambda: next(clock))
    second = again.choose(candidates)
    assert len(second) == 2 and not second & first


def test_a_blob_larger_than_the_budget_is_verified_alone():
    coverage = Coverage(None, max_bytes=10)
    assert coverage.choose([(key(1), 1000), (key(2), 5)]) in ({key(1)}, {key(2)})
    assert len(coverage.choose([(key(1), 1000)])) == 1


def test_save_merges_what_another_run_wrote(tmp_path):
    state = tmp_path / "state.json"
    ours, theirs = Coverage(str(state), clock=lambda: 100.0), Coverage(str(state), clock=lambda: 200.0)
    theirs.record([key(1), key(2)], [key(2)])
    ours.record([key(1), key(3)], [key(1)])
    theirs.save()
    ours.save()
    blobs = json.loads(state.read_text())["blobs"]
    assert {name.split()[-1][-1] for name in blobs} == {"1", "2", "3"}
    assert blobs[f"http://r sha256:{2:064x}"]["verified"] == 200.0
    assert blobs[f"http://r sha256:{1:064x}"]["verified"] == 100.0


def test_a_foreign_file_is_not_taken_for_a_state_file(tmp_path):
    state = tmp_path / "state.json"
    state.write_text('{"something": "else"}')
    with pytest.raises(UsageError, match="is not a check_registry_deep state file"):
        Coverage(str(state))


def test_a_first_run_has_no_oldest_while_blobs_were_never_verified():
    now = [1000.0]
    coverage = Coverage(None, clock=lambda: now[0])  # as a new --state-file: created by this run
    coverage.record([key(1), key(2)], [key(1)])
    now[0] = 1600.0
    fresh = coverage.freshness([key(1), key(2)])
    assert (fresh.ages, fresh.never_verified, fresh.new_state) == ((600.0, 0.0), 1, True)
    assert fresh.oldest is None  # not 0 s: key(2) was never verified
    coverage.record([key(2)], [key(2)])
    assert coverage.freshness([key(1), key(2)]).oldest == 600.0  # all verified: the age is real


def state_file(path, blobs, **extra):
    path.write_text(json.dumps({"version": 1, "blobs": blobs, **extra}))
    return str(path)


def test_never_verified_blobs_count_from_the_state_files_creation(tmp_path):
    path = state_file(tmp_path / "state.json", {f"http://r sha256:{1:064x}": {"first_seen": 1400, "verified": 1500},
                                                f"http://r sha256:{2:064x}": {"first_seen": 1900, "verified": None}},
                      created=1000.0)
    fresh = Coverage(path, clock=lambda: 2000.0).freshness([key(1), key(2), key(3)])  # key(3): first seen now
    assert fresh.ages == (500.0, 1000.0, 1000.0)
    assert (fresh.oldest, fresh.never_verified, fresh.older_than(800)) == (1000.0, 2, 2)


def test_a_state_file_written_before_created_counts_from_its_oldest_sighting(tmp_path):
    path = state_file(tmp_path / "state.json", {f"http://r sha256:{1:064x}": {"first_seen": 1200, "verified": None},
                                                f"http://r sha256:{2:064x}": {"first_seen": 1100, "verified": 1900}})
    coverage = Coverage(path, clock=lambda: 2000.0)
    assert coverage.created == 1100.0
    assert coverage.freshness([key(1)]).oldest == 900.0
    assert coverage.save() is None
    assert json.loads((tmp_path / "state.json").read_text())["created"] == 1100.0  # written from now on


def test_a_state_file_that_cannot_be_written_is_one_line(tmp_path):
    missing = tmp_path / "no-such-dir" / "state.json"
    coverage = Coverage(str(missing))
    coverage.record([key(1)], [key(1)])
    assert coverage.save() == f"cannot write --state-file {missing}: directory {missing.parent} does not exist"
