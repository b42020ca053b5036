"""Every line says who failed: the registry, the backend --connect-to asked, the origin --origin asked.

Transport failures are said in plain words (`connection refused`, `connection reset by HOST:PORT`), never as a
Python exception's repr; the storage behind a registry's redirects is proven on S3 in test_e2e_s3.py.
"""

from __future__ import annotations

import pytest

from registry_lab import free_port
from registry_lab.faults import FaultProxy

pytestmark = pytest.mark.e2e


def reset_at_once(exchange):
    """A TCP reset before any answer: a dying load balancer."""
    exchange.reset()


def test_a_reset_before_any_answer_names_who_reset_it(plugin, pristine):
    """Was: `http://127.0.0.1:PORT unreachable: Connection aborted.', ConnectionResetError(104, 'Connection
    reset by peer` (a repr, cut in the middle)."""
    with FaultProxy(pristine.url) as proxy:
        proxy.add("", reset_at_once, times=None)
        run = plugin("-R", proxy.url, "-i", "apps/web:1.0", "-t", "10")
    assert run.code == 2, run.stdout
    assert run.first.startswith("REGISTRY_DEEP CRITICAL - 1 problem, breaking 1 of 1 image: connection reset by "
                                f"127.0.0.1:{proxy.port} | "), run.first
    assert run.lines[1] == f"CRITICAL: connection reset by 127.0.0.1:{proxy.port}", run.stdout


def test_a_registry_not_listening_says_connection_refused(plugin):
    port = free_port()
    run = plugin("-R", f"http://127.0.0.1:{port}", "-i", "apps/web:1.0")
    assert run.code == 2, run.stdout
    assert run.lines[1] == f"CRITICAL: http://127.0.0.1:{port} unreachable: connection refused", run.stdout


def test_a_backend_of_connect_to_that_is_down_is_named(plugin, pristine):
    """The README's loop over backends: each line names the backend it asked. Was: `http://127.0.0.1:PORT
    unreachable: Connection refused`, the registry's name only, the same for every backend."""
    dead = free_port()
    run = plugin("-R", pristine.url, "-i", "apps/web:1.0", "--connect-to", f"127.0.0.1:{dead}")
    assert run.code == 2, run.stdout
    assert run.lines[1] == f"CRITICAL: {pristine.url} via 127.0.0.1:{dead} unreachable: connection refused", \
        run.stdout


def test_an_origin_that_is_down_is_named_not_the_registry(plugin, lab, damaged):
    """Was: `; origin HOST:PORT: not verified (http://REGISTRY:PORT unreachable: Connection refused)`, which reads
    as if the registry itself were down."""
    golden = lab.images.golden.digest
    damaged.truncate_blob(golden, 100)
    dead = free_port()
    run = plugin("-R", damaged.url, "-i", "base/golden:1", "--origin", f"127.0.0.1:{dead}")
    assert run.code == 2, run.stdout
    assert run.lines[1] == (f"CRITICAL: layer {golden}: truncated: Content-Length says 100 of 1048576 bytes - breaks "
                            f"base/golden:1; origin 127.0.0.1:{dead}: not verified ({damaged.url} via "
                            f"127.0.0.1:{dead} unreachable: connection refused)"), run.stdout


# -- a replica: one finding per blob and replica, counted once ---------------------------------------------

def test_a_blob_lost_on_a_replica_is_one_finding_naming_every_repository(plugin, lab, pristine, tmp_path):
    """The golden layer lost on the replica (container sync): one blob, counted once, with the repositories
    there that no longer have it. Was: `8 broken blobs, breaking 8 of 9 images` and eight lines
    `… on REPLICA: HEAD in apps/web: 404 BLOB_UNKNOWN`, which look like eight lost links."""
    golden = lab.images.golden.digest
    replica = lab.registry(tmp_path / "replica")
    try:
        replica.delete_blob(golden)
        run = plugin("-R", pristine.url, *[a for ref in lab.images.refs() for a in ("-i", ref)],
                     "--compare-registry", replica.url)
    finally:
        replica.stop()
    assert run.code == 2, run.stdout
    assert run.first.startswith("REGISTRY_DEEP CRITICAL - 1 broken blob, breaking 8 of 9 images: "), run.first
    lines = [line for line in run.lines[1:] if line.startswith("CRITICAL: ")]
    assert len(lines) == 1, run.stdout
    repositories = "apps/api, apps/foreign, apps/legacy, apps/multi, apps/pinned, apps/slim, apps/web, base/golden"
    assert lines[0].startswith(f"CRITICAL: layer {golden} on {replica.url}: 404 BLOB_UNKNOWN in 8 repositories "
                               f"({repositories}) - breaks apps/api:1.0, apps/foreign:1.0, "), lines[0]
    assert "failed=1;" in run.first
