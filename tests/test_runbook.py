"""End to end: the README's runbook repairs what it says it repairs.

For each fault class the runbook covers, a test damages a real docker-registry the way the fault does, sees the
check CRITICAL, runs the runbook's own command blocks, read from README.md (`<!-- runbook: NAME -->` before a
fenced `sh` block), with the lab's values in place of the example ones, and sees the check OK again. A documented
command that stops working fails here.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import time
from pathlib import Path
from typing import Dict, Iterator, List

import pytest
import requests
from conftest import PluginRun, run_plugin
from test_icinga import E2E_SERVICE, icinga  # noqa: F401 (the fixture: Debian's icinga2 checking `damaged`)

from registry_lab.nginx import CachingProxy, nginx_available
from registry_lab.runbook import README, Runbook, runbook_blocks

pytestmark = pytest.mark.e2e

CACHE_CONFIG = {"storage": {"cache": {"blobdescriptor": "inmemory"}}}  # Debian's config has it on

GOLDEN_SIZE = 1 << 20  # the lab's golden layer
KEEP = 4096  # what the truncation leaves of it


# -- the first lines the check gives for each fault, on main today: one place to update ----------------------------

OK = re.compile(r"REGISTRY_DEEP OK - 9 images, 22 blobs, 3\.4 MB verified in [0-9.]+s, 1 foreign layer skipped")
SCOPE_OK = re.compile(r"REGISTRY_DEEP OK - 6 images, 17 blobs, 2\.9 MB verified in [0-9.]+s, 1 foreign layer "
                      r"skipped")


def truncated(golden: str, cached: bool) -> str:
    how = (f"got {KEEP} of {GOLDEN_SIZE} bytes (the body ends before its …" if cached  # the cache still has the size
           else f"Content-Length says {KEEP} of {GOLDEN_SIZE} bytes")
    return f"REGISTRY_DEEP CRITICAL - 1 broken blob, breaking 8 of 9 images: layer {golden[:19]}… truncated: {how}"


def altered(golden: str, got: str) -> str:
    return (f"REGISTRY_DEEP CRITICAL - 1 broken blob, breaking 8 of 9 images: layer {golden[:19]}… digest mismatch: "
            f"got {got[:42]}…")


def scope_broken(golden: str) -> str:
    return (f"REGISTRY_DEEP CRITICAL - 1 broken blob, breaking 6 of 6 images: layer {golden[:19]}… truncated: "
            f"Content-Length says {KEEP} of {GOLDEN_SIZE} bytes")


def link_lost(golden: str) -> str:
    return (f"REGISTRY_DEEP CRITICAL - 1 broken blob, breaking 1 of 9 images: layer {golden[:19]}… 404 BLOB_UNKNOWN "
            "in apps/web (the repository's link is gone; th…")


#: What the Icinga API answers to the runbook's reschedule-check (README quotes it, the host name elided).
RESCHEDULED = """{"results":[{"code":200,"status":"Successfully rescheduled check for object '…!registry-deep'."}]}"""
TAG_LOST = ("REGISTRY_DEEP CRITICAL - 1 broken manifest, breaking 1 of 9 images: manifest apps/web:1.0 404 "
            "MANIFEST_UNKNOWN (manifest unknown)")


def cache_only(golden: str, got: str, origin: str) -> str:
    return (f"REGISTRY_DEEP CRITICAL - 1 broken blob, breaking 8 of 9 images, all cache-only (origin {origin} intact): "
            f"layer {golden[:19]}… digest mismatch: got {got[:42]}…")


def replica_lost(golden: str, replica: str, counts: str = "1 broken blob, breaking 8 of 9") -> re.Pattern:
    """One finding for the blob on the replica, naming the repositories there that lost it."""
    return re.compile(rf"REGISTRY_DEEP CRITICAL - {counts} images: layer {golden} on {re.escape(replica)} 404 "
                      r"BLOB_UNKNOWN in \d repositories \(apps/[a-z, /]+…")


def scope_gone(golden: str) -> re.Pattern:
    """The repositories' order varies from run to run."""
    return re.compile(rf"REGISTRY_DEEP CRITICAL - 1 broken blob, breaking 6 of 6 images: layer {golden[:19]}… 404 "
                      r"BLOB_UNKNOWN in every repository that references it \(apps/[a-z]…")


def summary(output: str) -> str:
    """The first line without its perfdata (which carries timings; Icinga keeps the space before the `|`)."""
    return output.split("\n", 1)[0].split("|")[0].rstrip()


@pytest.fixture
def runbook(tmp_path: Path) -> Runbook:
    return Runbook(tmp_path / "runbook")


def sentinels(registry, lab, *extra: str) -> PluginRun:
    """The check, as Icinga runs it, of every sentinel image on `registry`."""
    return run_plugin("-R", registry.url, *[arg for ref in lab.images.refs() for arg in ("-i", ref)], *extra)


def assert_ok(run: PluginRun) -> None:
    assert run.code == 0, run.stdout
    assert OK.fullmatch(summary(run.stdout)), run.first


def storage_values(registry, good, lab) -> Dict[str, str]:
    return {"registry": registry.url, "good": good.url, "root": str(registry.storage),
            "digest": lab.images.golden.digest, "repo": "base/golden"}


@pytest.fixture(params=["no cache", "inmemory cache"])
def broken(request, lab, tmp_path: Path) -> Iterator:
    """A private registry to damage, without and with the `inmemory` blob descriptor cache (warmed by a check)."""
    cached = request.param == "inmemory cache"
    registry = lab.registry(tmp_path / "registry", config=CACHE_CONFIG if cached else None)
    registry.cached = cached
    try:
        if cached:
            assert_ok(sentinels(registry, lab))
        yield registry
    finally:
        registry.stop()


# -- 1. a blob truncated or altered in storage ----------------------------------------------------------------------

def test_truncated_blob_is_repaired_by_putting_a_checked_copy_from_a_replica_in_place(broken, pristine, lab,
                                                                                        runbook):
    golden = lab.images.golden.digest
    broken.truncate_blob(golden, KEEP)
    run = sentinels(broken, lab)
    assert (run.code, summary(run.stdout)) == (2, truncated(golden, broken.cached)), run.stdout

    runbook.values = storage_values(broken, pristine, lab)
    done = runbook.run("good-copy", "move-aside", "put-back")
    assert done.stdout == f"{runbook.workdir}/blob: OK\n", done.stdout  # sha256sum -c

    assert_ok(sentinels(broken, lab))  # no restart, with or without the cache
    assert (runbook.workdir / "aside" / f"{golden[7:]}.damaged").stat().st_size == KEEP  # kept for the post-mortem


def test_namespace_scope_and_confirm_commands_name_what_to_repush_then_read_ok(damaged, pristine, lab, runbook):
    golden = lab.images.golden.digest
    damaged.truncate_blob(golden, KEEP)
    runbook.values = storage_values(damaged, pristine, lab)
    scope = runbook.run("scope", strict=False)
    assert scope.returncode == 0, scope.stderr  # jq, the block's last command
    first, *rest = scope.stdout.splitlines()
    assert summary(first) == scope_broken(golden), scope.stdout
    to_repush = [line for line in rest if not line.startswith(("CRITICAL:", "note:"))]
    assert to_repush == ["apps/api:1.0", "apps/foreign:1.0", "apps/legacy:2.0", "apps/multi:1.0", "apps/slim:1.0",
                         "apps/web:1.0"], scope.stdout

    runbook.run("good-copy", "move-aside", "put-back")
    confirm = runbook.run("scope", strict=False)
    assert confirm.returncode == 0 and SCOPE_OK.fullmatch(summary(confirm.stdout)), confirm.stdout
    assert confirm.stdout.splitlines()[-1] != "apps/web:1.0"  # nothing left to re-push


def test_altered_blob_stays_broken_after_a_re_push_and_is_repaired_by_an_upload_once_moved_aside(broken, pristine,
                                                                                                  lab, runbook):
    golden = lab.images.golden.digest
    broken.flip_byte(golden, 1000)
    got = "sha256:" + hashlib.sha256(broken.blob_path(golden).read_bytes()).hexdigest()
    run = sentinels(broken, lab)
    assert (run.code, summary(run.stdout)) == (2, altered(golden, got)), run.stdout

    runbook.values = storage_values(broken, pristine, lab)
    runbook.run("good-copy", "upload")  # the upload alone: 201 Created, and the registry keeps the bad bytes
    run = sentinels(broken, lab)
    assert (run.code, summary(run.stdout)) == (2, altered(golden, got)), run.stdout

    runbook.run("good-copy", "move-aside", "upload")
    assert_ok(sentinels(broken, lab))


def test_inmemory_cache_still_answers_head_for_a_blob_moved_aside_so_a_push_would_skip_it(lab, tmp_path):
    """Why the README says: restart before re-pushing with docker or skopeo, which HEAD a blob before sending it."""
    registry = lab.registry(tmp_path / "registry", config=CACHE_CONFIG)
    try:
        assert_ok(sentinels(registry, lab))  # fills the cache
        golden = lab.images.golden.digest
        shutil.move(registry.blob_path(golden), tmp_path / "damaged")
        head = requests.head(f"{registry.url}/v2/apps/web/blobs/{golden}", timeout=10)
        assert (head.status_code, head.headers["Content-Length"]) == (200, str(GOLDEN_SIZE))
        registry.restart()
        assert requests.head(f"{registry.url}/v2/apps/web/blobs/{golden}", timeout=10).status_code == 404
    finally:
        registry.stop()


# -- 2. a repository's lost link -------------------------------------------------------------------------------------

@pytest.mark.parametrize("block", ["relink", "relink-storage"])
def test_lost_repository_link_is_restored(block, damaged, lab, runbook):
    golden = lab.images.golden.digest
    damaged.remove_layer_link("apps/web", golden)
    run = sentinels(damaged, lab)
    assert (run.code, summary(run.stdout)) == (2, link_lost(golden)), run.stdout

    runbook.values = {"registry": damaged.url, "root": str(damaged.storage), "digest": golden, "repo": "apps/web",
                      "from": "base/golden"}
    done = runbook.run(block)
    assert done.stdout == ("201\n" if block == "relink" else ""), done.stdout
    assert_ok(sentinels(damaged, lab))


def test_inmemory_cache_answers_for_a_lost_link_until_the_registry_restarts(lab, tmp_path, runbook):
    registry = lab.registry(tmp_path / "registry", config=CACHE_CONFIG)
    try:
        assert_ok(sentinels(registry, lab))  # fills the cache
        golden = lab.images.golden.digest
        registry.remove_layer_link("apps/web", golden)
        assert_ok(sentinels(registry, lab))  # the registry still serves it, from memory
        registry.restart()
        run = sentinels(registry, lab)
        assert (run.code, summary(run.stdout)) == (2, link_lost(golden)), run.stdout

        runbook.values = {"registry": registry.url, "digest": golden, "repo": "apps/web", "from": "base/golden"}
        runbook.run("relink")
        assert_ok(sentinels(registry, lab))
    finally:
        registry.stop()


# -- 3. a lost tag ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("block", ["retag", "retag-storage"])
def test_lost_tag_is_put_back_on_its_manifest(block, damaged, pristine, lab, runbook):
    damaged.delete_tag("apps/web", "1.0")
    run = sentinels(damaged, lab)
    assert (run.code, summary(run.stdout)) == (2, TAG_LOST), run.stdout

    runbook.values = {"registry": damaged.url, "good": pristine.url, "root": str(damaged.storage), "repo": "apps/web",
                      "tag": "1.0", "manifest": lab.images.images["web"].digest}
    runbook.run(block)
    assert_ok(sentinels(damaged, lab))


# -- 4. a cached copy gone bad ---------------------------------------------------------------------------------------

def test_bad_cached_copy_is_purged_and_fetched_again_from_the_intact_origin(damaged, lab, runbook, tmp_path):
    problem = nginx_available()
    if problem:
        pytest.fail(f"the cache lab cannot run here: {problem}")
    golden = lab.images.golden.digest
    with CachingProxy(tmp_path / "nginx", damaged) as cache:
        assert_ok(sentinels(cache, lab))  # warms the cache
        cache.alter_cached(golden, GOLDEN_SIZE, 4096)
        entry = cache.cache_path(golden).read_bytes()
        got = "sha256:" + hashlib.sha256(entry[len(entry) - GOLDEN_SIZE:]).hexdigest()
        run = sentinels(cache, lab, "--origin", damaged.host)
        assert (run.code, summary(run.stdout)) == (2, cache_only(golden, got, damaged.host)), run.stdout

        runbook.values = {"digest": golden, "cache": str(cache.cache_dir)}
        runbook.run("purge")
        assert_ok(sentinels(cache, lab, "--origin", damaged.host))
        assert cache.cache_statuses(golden) == ["MISS", "HIT", "MISS"]  # fetched again from the origin


# -- 5. a blob missing on one replica ------------------------------------------------------------------------------

def test_blob_missing_on_a_replica_is_copied_from_the_registry_that_passed(damaged, pristine, lab, runbook):
    golden = lab.images.golden.digest
    replica = damaged
    replica.delete_blob(golden)
    run = sentinels(pristine, lab, "--compare-registry", replica.url)
    assert run.code == 2 and replica_lost(golden, replica.url).fullmatch(summary(run.stdout)), run.stdout
    # the scope step's commands: each backend (both serve the same name here), then the other site
    runbook.values = {"registry": pristine.url, "backends": f"{pristine.host} {replica.host}", "replica": replica.url}
    sides = [summary(line) for line in runbook.run("backends", strict=False).stdout.splitlines()]
    assert len(sides) == 3 and SCOPE_OK.fullmatch(sides[0]), sides
    assert scope_gone(golden).fullmatch(sides[1]), sides
    assert replica_lost(golden, replica.url, "1 broken blob, breaking 6 of 6").fullmatch(sides[2]), sides

    runbook.values = {**storage_values(replica, pristine, lab)}
    runbook.run("good-copy", "move-aside", "put-back")
    assert_ok(sentinels(pristine, lab, "--compare-registry", replica.url))
    runbook.values = {"registry": pristine.url, "backends": f"{pristine.host} {replica.host}", "replica": replica.url}
    sides = [summary(line) for line in runbook.run("backends", strict=False).stdout.splitlines()]
    assert all(SCOPE_OK.fullmatch(side) for side in sides) and len(sides) == 3, sides


# -- confirming: Icinga re-checks now ------------------------------------------------------------------------------

def test_forced_icinga_recheck_through_its_api_turns_the_service_ok_after_the_repair(icinga, damaged,  # noqa: F811
                                                                                     pristine, lab, runbook):
    golden = lab.images.golden.digest
    damaged.truncate_blob(golden, KEEP)
    result = icinga.force_check(E2E_SERVICE)
    assert (result["state"], summary(result["output"])) == (2, truncated(golden, False)), result["output"]

    runbook.values = {**storage_values(damaged, pristine, lab), "icinga": f"https://127.0.0.1:{icinga.port}",
                      "icinga_user": ":".join(icinga.session.auth)}
    previous, asked = icinga.last_result(E2E_SERVICE), time.time()
    done = runbook.run("good-copy", "move-aside", "put-back", "icinga")
    assert done.stdout.splitlines()[-1] == RESCHEDULED.replace("…", E2E_SERVICE.split("!")[0]), done.stdout
    assert f"`{RESCHEDULED}`" in README.read_text()  # what the README says it answers

    result = icinga.result_after(E2E_SERVICE, asked, previous)
    assert result["state"] == 0 and OK.fullmatch(summary(result["output"])), result["output"]


# -- the blocks themselves -------------------------------------------------------------------------------------------

def test_every_runbook_block_is_run_by_a_test():
    ours = Path(__file__).read_text()
    names = list(runbook_blocks())
    assert len(names) == len(set(names)), names
    missing: List[str] = [name for name in names if f'"{name}"' not in ours]
    assert not missing, f"README runbook blocks no test runs: {missing}"
