"""metrics.py: the exposition a run writes, the last success carried over, the atomic write and its failure;
and the watchdog's last-resort write."""

from __future__ import annotations

import os
import stat
import time
from typing import Dict, List, Tuple

from prometheus_client.parser import text_string_to_metric_families

from check_registry_deep import cli
from check_registry_deep.metrics import Counts, ImageSample, RunMetrics, check_label, exposition, write_metrics

REGISTRY = "http://127.0.0.1:5000"
COUNTS = Counts(images=3, discovered_images=1, broken_blobs=1, verified_blobs=7, verified_bytes=123456, retries=2,
                oldest_verification_age=None)


def samples(text: str) -> Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(text: str, name: str, **labels: str) -> float:
    return samples(text)[(name, tuple(sorted(labels.items())))]


def test_a_critical_run_writes_every_metric_as_a_gauge_with_its_check_label():
    run = RunMetrics(2, 1.5, 1_800_000_000.25, (
        ImageSample(REGISTRY, "apps/web:1", "linux/arm64", True),
        ImageSample(REGISTRY, "apps/web:1", "linux/amd64", False, "layer sha256:1c8668c40111… truncated: x"),
        ImageSample(REGISTRY, "base/debian@sha256:" + "a" * 64, "", True)), COUNTS)
    text = exposition(run, "sentinels", last_success=1_700_000_000.0).decode()
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert families == dict.fromkeys([
        "registry_deep_state", "registry_deep_run_duration_seconds", "registry_deep_last_run_timestamp_seconds",
        "registry_deep_last_success_timestamp_seconds", "registry_deep_image_ok",
        "registry_deep_image_problem_info", "registry_deep_images",
        "registry_deep_discovered_images", "registry_deep_broken_blobs", "registry_deep_verified_blobs",
        "registry_deep_verified_bytes", "registry_deep_retries"], "gauge")
    assert value(text, "registry_deep_state", check="sentinels") == 2
    assert value(text, "registry_deep_run_duration_seconds", check="sentinels") == 1.5
    assert value(text, "registry_deep_last_run_timestamp_seconds", check="sentinels") == 1_800_000_000.25
    assert value(text, "registry_deep_last_success_timestamp_seconds", check="sentinels") == 1_700_000_000.0
    image = dict(check="sentinels", registry=REGISTRY)
    assert value(text, "registry_deep_image_ok", image="apps/web:1", platform="linux/arm64", **image) == 1
    assert value(text, "registry_deep_image_ok", image="apps/web:1", platform="linux/amd64", **image) == 0
    assert value(text, "registry_deep_image_ok", image="base/debian@sha256:" + "a" * 64, platform="", **image) == 1
    problems = {labels: sample for (name, labels), sample in samples(text).items()
                if name == "registry_deep_image_problem_info"}
    assert problems == {(("check", "sentinels"), ("image", "apps/web:1"), ("platform", "linux/amd64"),
                         ("problem", "layer sha256:1c8668c40111… truncated: x"), ("registry", REGISTRY)): 1}
    assert value(text, "registry_deep_verified_bytes", check="sentinels") == 123456
    assert value(text, "registry_deep_retries", check="sentinels") == 2


def test_an_ok_run_is_the_last_success_and_the_state_file_adds_the_oldest_verification():
    counts = Counts(3, 0, 0, 7, 123456, 0, oldest_verification_age=86400.0)
    text = exposition(RunMetrics(0, 1.0, 1_800_000_000.0, (), counts), "sentinels", 1_700_000_000.0).decode()
    assert value(text, "registry_deep_last_success_timestamp_seconds", check="sentinels") == 1_800_000_000.0
    assert value(text, "registry_deep_oldest_verification_age_seconds", check="sentinels") == 86400


def test_a_usage_error_writes_only_what_a_run_without_a_look_at_the_registry_knows():
    text = exposition(RunMetrics(3, 0.01, 1_800_000_000.0), "sentinels", None).decode()
    assert sorted(name for name, _ in samples(text)) == [
        "registry_deep_last_run_timestamp_seconds", "registry_deep_last_success_timestamp_seconds",
        "registry_deep_run_duration_seconds", "registry_deep_state"]
    assert value(text, "registry_deep_last_success_timestamp_seconds", check="sentinels") == 0  # none yet


def test_an_image_given_twice_is_broken_if_either_says_so():
    run = RunMetrics(2, 1.0, 1.0, (ImageSample(REGISTRY, "apps/web:1", "", True),
                                   ImageSample(REGISTRY, "apps/web:1", "", False)))
    text = exposition(run, "x", None).decode()
    assert value(text, "registry_deep_image_ok", check="x", registry=REGISTRY, image="apps/web:1", platform="") == 0


def test_the_last_success_is_carried_over_from_the_previous_file_of_the_same_check(tmp_path):
    path = tmp_path / "sentinels.prom"
    assert write_metrics(str(path), RunMetrics(0, 1.0, 1000.0)) is None
    assert write_metrics(str(path), RunMetrics(2, 1.0, 2000.0)) is None
    assert write_metrics(str(path), RunMetrics(3, 1.0, 3000.0)) is None
    text = path.read_text()
    assert value(text, "registry_deep_last_success_timestamp_seconds", check="sentinels") == 1000
    assert value(text, "registry_deep_last_run_timestamp_seconds", check="sentinels") == 3000
    renamed = tmp_path / "other.prom"
    path.rename(renamed)  # another check's file: its history is not this check's
    assert write_metrics(str(renamed), RunMetrics(2, 1.0, 4000.0)) is None
    assert value(renamed.read_text(), "registry_deep_last_success_timestamp_seconds", check="other") == 0


def test_a_file_that_is_not_ours_starts_the_history_again(tmp_path):
    path = tmp_path / "sentinels.prom"
    path.write_bytes(b"\xff\xfe not metrics {{{\n")
    assert write_metrics(str(path), RunMetrics(1, 1.0, 1000.0)) is None
    assert value(path.read_text(), "registry_deep_last_success_timestamp_seconds", check="sentinels") == 0


def test_the_file_is_replaced_atomically_readable_by_node_exporter_and_nothing_is_left_behind(tmp_path):
    path = tmp_path / "sentinels.prom"
    path.write_text("old\n")
    before = os.stat(path).st_ino
    assert write_metrics(str(path), RunMetrics(0, 1.0, 1000.0)) is None
    assert os.stat(path).st_ino != before  # a new file renamed over the old one, never rewritten in place
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644  # node_exporter runs as another user
    assert os.listdir(tmp_path) == ["sentinels.prom"]


def test_a_failed_write_is_one_line_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    missing = tmp_path / "no-such-dir" / "sentinels.prom"
    assert write_metrics(str(missing), RunMetrics(0, 1.0, 1.0)) == \
        f"cannot write --metrics-file {missing}: directory {missing.parent} does not exist"

    def full(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "replace", full)
    path = tmp_path / "sentinels.prom"
    assert write_metrics(str(path), RunMetrics(0, 1.0, 1.0)) == \
        f"cannot write --metrics-file {path}: No space left on device"
    assert os.listdir(tmp_path) == []


def test_the_check_label_is_the_file_name_without_prom():
    assert check_label("/var/lib/prometheus/node-exporter/registry-deep.prom") == "registry-deep"
    assert check_label("metrics.txt") == "metrics.txt"


def test_the_watchdog_writes_the_metrics_before_it_ends_an_overstaying_run(tmp_path, monkeypatch, capsys):
    prom = tmp_path / "sentinels.prom"
    exits: List[int] = []
    monkeypatch.setattr(os, "_exit", exits.append)
    started = time.monotonic()
    watchdog = cli._Watchdog(0, 2, "critical", lambda output: cli.publish(str(prom), output, started))
    watchdog._fire(2, "critical")
    assert exits == [2]
    assert capsys.readouterr().out == "REGISTRY_DEEP CRITICAL - deadline of 2s passed and the run did not wind down\n"
    assert value(prom.read_text(), "registry_deep_state", check="sentinels") == 2
