"""--metrics-file for Prometheus: the shipped alert rules (promtool), the example systemd units (systemd-analyze),
and the plugin's file read by Debian's real node_exporter and prometheus on 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, Tuple

import pytest
from prometheus_client.parser import text_string_to_metric_families

from check_registry_deep.metrics import Counts, ImageSample, RunMetrics, exposition
from registry_lab import SilentServer
from registry_lab.notify import WebhookReceiver
from registry_lab.prometheus import ALERTMANAGER, PROMETHEUS, LocalAlertmanager, LocalPrometheus, NodeExporter

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "prometheus" / "registry-deep.rules.yml"
ALERTMANAGER_EXAMPLE = ROOT / "prometheus" / "alertmanager.yml"
RULE_TESTS = ROOT / "tests" / "prometheus" / "registry-deep.rules.test.yml"
UNITS = sorted((ROOT / "systemd").glob("check-registry-deep-metrics.*"))
PLUGIN_PATH = "/usr/lib/nagios/plugins/check_registry_deep"

needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None,
                                    reason="promtool is not installed (prometheus, tools/debian-packages.txt)")


def run(*argv: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=cwd, stdin=subprocess.DEVNULL)


# ------------------------------------------------------------------------------------------------- the rules

@needs_promtool
def test_the_alert_rules_pass_promtool_check():
    done = run("promtool", "check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 6 rules found" in done.stdout


@needs_promtool
def test_each_alert_rule_fires_and_resolves_in_promtool_unit_tests():
    done = run("promtool", "test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout
    tested = set(RULE_TESTS.read_text().split("alertname: ")[1:])
    assert {line.split()[0] for line in tested} == {
        "RegistryDeepImageBroken", "RegistryDeepBrokenBlobs", "RegistryDeepCheckNotRunning",
        "RegistryDeepCheckNotFinishing", "RegistryDeepRotationBehind", "RegistryDeepImageSignatureLost"}


@needs_promtool
def test_promtool_unit_tests_catch_a_rule_that_never_fires(tmp_path):
    """The unit tests are not vacuous: the same tests fail against a rule file whose broken-image rule is off."""
    (tmp_path / "prometheus").mkdir()
    (tmp_path / "tests" / "prometheus").mkdir(parents=True)
    (tmp_path / "prometheus" / RULES.name).write_text(
        RULES.read_text().replace("expr: registry_deep_image_ok == 0", "expr: registry_deep_image_ok == 2"))
    shutil.copy(RULE_TESTS, tmp_path / "tests" / "prometheus")
    done = run("promtool", "test", "rules", RULE_TESTS.name, cwd=tmp_path / "tests" / "prometheus")
    assert done.returncode == 1
    assert "alertname: RegistryDeepImageBroken, time: 2m" in done.stdout + done.stderr


# --------------------------------------------------------------------------------------- the systemd example

@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed (systemd)")
def test_the_example_systemd_units_verify(tmp_path):
    """systemd-analyze verify checks that ExecStart's program exists: here it is a wrapper around this source
    tree's plugin (the Debian package installs the real one at that path; tests/test_debian_package.py)."""
    wrapper = tmp_path / "check_registry_deep"
    wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={ROOT} exec /usr/bin/python3 -m check_registry_deep \"$@\"\n")
    wrapper.chmod(0o755)
    copies = []
    for unit in UNITS:
        assert PLUGIN_PATH in unit.read_text() or unit.suffix == ".timer"
        copy = tmp_path / unit.name
        copy.write_text(unit.read_text().replace(PLUGIN_PATH, str(wrapper)))
        copies.append(str(copy))
    assert [Path(c).suffix for c in copies] == [".service", ".timer"]
    done = run("systemd-analyze", "verify", "--man=no", *copies)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")
    service = UNITS[0].read_text()
    assert "--metrics-file /var/lib/prometheus/node-exporter/registry-deep.prom" in service
    assert "[Install]" not in service  # started by the timer only


# ---------------------------------------------------------------------------- the plugin's file, end to end

def image_args(refs):
    return [arg for ref in refs for arg in ("-i", ref)]


def series(text: str, name: str) -> Dict[Tuple[Tuple[str, str], ...], float]:
    """The samples of `name` in an exposition, by their labels (node_exporter's own labels left out)."""
    return {tuple(sorted(s.labels.items())): s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == name}


def one(text: str, name: str, check: str = "registry-deep") -> float:
    return series(text, name)[(("check", check),)]


def image_ok(text: str, check: str = "registry-deep") -> Dict[str, float]:
    """`image (platform)` -> registry_deep_image_ok, as the -v lines name them."""
    return {labels["image"] + (f" ({labels['platform']})" if labels["platform"] else ""): value
            for labels, value in ((dict(k), v) for k, v in series(text, "registry_deep_image_ok").items())
            if labels["check"] == check}


def without_timings(text: str) -> str:
    """The run's own wall time is the only thing that differs between two runs of the same registry."""
    return re.sub(r"verified in [0-9.]+s|time=[0-9.]+s", "<time>", text)


@pytest.fixture
def textfile(tmp_path: Path) -> Path:
    directory = tmp_path / "textfile"
    directory.mkdir()
    return directory


@pytest.fixture
def node_exporter(tmp_path: Path, textfile: Path) -> Iterator[NodeExporter]:
    with NodeExporter(tmp_path / "node-exporter", textfile) as exporter:
        yield exporter


@pytest.mark.e2e
def test_node_exporter_serves_the_plugins_metrics_before_and_after_the_golden_layer_breaks(
        plugin, damaged, lab, textfile, node_exporter):
    prom = textfile / "registry-deep.prom"
    args = ["-R", damaged.url, *image_args(lab.images.refs()), "--metrics-file", str(prom)]
    healthy = plugin(*args)
    assert healthy.code == 0, healthy.stdout
    assert healthy.first.startswith("REGISTRY_DEEP OK - 9 images, 22 blobs, 3.4 MB verified in "), healthy.first
    scraped = node_exporter.scrape()
    assert series(scraped, "node_textfile_scrape_error") == {(): 0}
    assert one(scraped, "registry_deep_state") == 0
    assert one(scraped, "registry_deep_verified_blobs") == 22
    assert one(scraped, "registry_deep_broken_blobs") == 0
    assert one(scraped, "registry_deep_images") == 9
    assert one(scraped, "registry_deep_discovered_images") == 0
    ok_at = one(scraped, "registry_deep_last_success_timestamp_seconds")
    assert ok_at == one(scraped, "registry_deep_last_run_timestamp_seconds")
    assert abs(ok_at - time.time()) < 60
    images = image_ok(scraped)
    assert len(images) == 11 and set(images.values()) == {1}  # 9 images, two of them with two platforms
    assert {"apps/multi:1.0 (linux/arm64/v8)", "apps/legacy:2.0 (linux/386)", "base/golden:1"} <= set(images)
    assert {dict(labels)["registry"] for labels in series(scraped, "registry_deep_image_ok")} == {damaged.url}

    golden = lab.images.golden.digest
    damaged.truncate_blob(golden, 4096)
    broken = plugin(*args)
    assert broken.code == 2
    assert broken.first.startswith("REGISTRY_DEEP CRITICAL - 1 broken blob, breaking 8 of 9 images: "), broken.first
    scraped = node_exporter.scrape()
    assert series(scraped, "node_textfile_scrape_error") == {(): 0}
    assert one(scraped, "registry_deep_state") == 2
    assert one(scraped, "registry_deep_broken_blobs") == 1
    assert one(scraped, "registry_deep_last_success_timestamp_seconds") == ok_at  # carried over
    assert one(scraped, "registry_deep_last_run_timestamp_seconds") > ok_at
    images = image_ok(scraped)
    assert sorted(name for name, value in images.items() if value == 1) == ["artifacts/sbom:1.0"]
    # every image (and platform) the output names as broken is 0
    line = next(line for line in broken.lines if golden in line)
    assert all(f" {name}" in line for name, value in images.items() if value == 0)


@pytest.mark.e2e
def test_timeouts_and_usage_errors_write_a_file_node_exporter_reads_next_to_other_checks(
        plugin, pristine, lab, textfile, node_exporter):
    """Four checks share node_exporter's directory, as one per datacenter would; each file is named for its check."""
    ok = plugin("-R", pristine.url, "-i", "base/golden:1", "--metrics-file", str(textfile / "ok.prom"))
    assert (ok.code, ok.first.split(" - ")[0]) == (0, "REGISTRY_DEEP OK")
    with SilentServer() as silent:
        timeout = plugin("-R", silent.url, "-i", "apps/web:1.0", "-t", "1", "--metrics-file",
                         str(textfile / "timeout.prom"))
    assert timeout.code == 3
    assert timeout.first.startswith("REGISTRY_DEEP UNKNOWN - 1 image not checked: deadline of 1s passed while "
                                    "checking the registry API"), timeout.first
    # argparse refuses the command line: --metrics-file is still found
    refused = plugin("-R", pristine.url, "--bogus", "--metrics-file", str(textfile / "refused.prom"))
    assert (refused.code, refused.stdout) == (
        3, "REGISTRY_DEEP UNKNOWN - unrecognized arguments: --bogus (see --help)\n")
    # parsed, then refused
    invalid = plugin("-R", pristine.url, "-i", "a:1", "-t", "soon", f"--metrics-file={textfile / 'invalid.prom'}")
    assert invalid.code == 3
    assert invalid.first.startswith("REGISTRY_DEEP UNKNOWN - invalid --timeout 'soon'"), invalid.first

    scraped = node_exporter.scrape()
    assert series(scraped, "node_textfile_scrape_error") == {(): 0}
    states = {dict(labels)["check"]: value for labels, value in series(scraped, "registry_deep_state").items()}
    assert states == {"ok": 0, "timeout": 3, "refused": 3, "invalid": 3}
    assert image_ok(scraped, "ok") == {"base/golden:1": 1}
    assert image_ok(scraped, "timeout") == {}  # not judged: neither pullable nor broken
    assert one(scraped, "registry_deep_images", "timeout") == 1
    for check in ("refused", "invalid"):  # nothing was looked at: no counts, and no OK run yet
        assert (("check", check),) not in series(scraped, "registry_deep_images")
        assert one(scraped, "registry_deep_last_success_timestamp_seconds", check) == 0
        assert one(scraped, "registry_deep_run_duration_seconds", check) < 5


@pytest.mark.e2e
def test_images_found_by_discovery_are_counted_not_labelled(plugin, pristine, lab, tmp_path):
    prom = tmp_path / "discovery.prom"
    run = plugin("-R", pristine.url, "-i", "base/golden:1", "--repository", "apps", "--all-tags",
                 "--metrics-file", str(prom))
    assert run.code == 0, run.stdout
    assert run.first.startswith("REGISTRY_DEEP OK - 7 images, "), run.first
    text = prom.read_text()
    assert image_ok(text, "discovery") == {"base/golden:1": 1}
    assert one(text, "registry_deep_images", "discovery") == 7
    assert one(text, "registry_deep_discovered_images", "discovery") == 6


@pytest.mark.e2e
@pytest.mark.parametrize("damage", [False, True])
def test_the_icinga_output_is_the_same_with_and_without_metrics(plugin, damaged, lab, tmp_path, damage):
    if damage:
        damaged.truncate_blob(lab.images.golden.digest, 4096)
    args = ["-R", damaged.url, *image_args(lab.images.refs())]
    without = plugin(*args)
    with_metrics = plugin(*args, "--metrics-file", str(tmp_path / "registry-deep.prom"))
    assert with_metrics.code == without.code == (2 if damage else 0)
    assert without_timings(with_metrics.stdout) == without_timings(without.stdout)
    assert with_metrics.stderr == without.stderr == ""
    refused = ["-R", damaged.url, "-i", "a:1", "-w", "x:y:z"]
    assert plugin(*refused, "--metrics-file", str(tmp_path / "x.prom")).stdout == plugin(*refused).stdout


@pytest.mark.e2e
def test_a_metrics_file_that_cannot_be_written_is_one_line_and_unknown_only_if_nothing_is_worse(
        plugin, damaged, lab, tmp_path):
    missing = tmp_path / "no-such-dir" / "registry-deep.prom"
    problem = f"cannot write --metrics-file {missing}: directory {missing.parent} does not exist"
    args = ["-R", damaged.url, *image_args(lab.images.refs()), "--metrics-file", str(missing)]
    healthy = plugin(*args)
    assert healthy.code == 3
    assert healthy.first.startswith(f"REGISTRY_DEEP UNKNOWN - {problem}; 9 images, 22 blobs, 3.4 MB verified in "), \
        healthy.first
    assert " | blobs=22;;;0 " in healthy.first  # perfdata stays
    assert healthy.stdout.count(problem) == 1

    damaged.truncate_blob(lab.images.golden.digest, 4096)
    broken = plugin(*args)
    assert broken.code == 2
    assert broken.first.startswith("REGISTRY_DEEP CRITICAL - 1 broken blob, breaking 8 of 9 images: "), broken.first
    assert broken.lines[1] == f"UNKNOWN: {problem}"
    assert broken.stdout.count(problem) == 1

    refused = plugin("--bogus", "--metrics-file", str(missing))
    assert (refused.code, refused.stdout) == (
        3, f"REGISTRY_DEEP UNKNOWN - unrecognized arguments: --bogus (see --help)\nUNKNOWN: {problem}\n")


def test_version_and_a_run_without_metrics_do_not_import_prometheus_client(tmp_path):
    for args in (["--version"], ["-R", "http://127.0.0.1:1", "-i", "a:1", "-t", "soon"]):
        done = subprocess.run([sys.executable, "-X", "importtime", "-m", "check_registry_deep", *args],
                              capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert done.returncode in (0, 3), done.stdout
        assert "prometheus_client" not in done.stderr and "check_registry_deep.metrics" not in done.stderr
        assert "check_registry_deep.cli" in done.stderr  # the import trace is there


@pytest.mark.e2e
@pytest.mark.skipif(not Path(PROMETHEUS).exists(), reason="prometheus is not installed (tools/debian-packages.txt)")
def test_a_real_prometheus_with_the_rules_fires_on_the_broken_image(plugin, damaged, lab, tmp_path, textfile,
                                                                     node_exporter):
    args = ["-R", damaged.url, *image_args(lab.images.refs()), "--metrics-file", str(textfile / "sentinels.prom")]
    assert plugin(*args).code == 0
    with LocalPrometheus(tmp_path / "prometheus", [node_exporter.host], [RULES]) as prometheus:
        prometheus.wait_for_sample('registry_deep_state{check="sentinels"} == 0')
        assert not [a for a in prometheus.alerts() if a["labels"]["alertname"].startswith("RegistryDeep")]

        damaged.truncate_blob(lab.images.golden.digest, 4096)
        assert plugin(*args).code == 2
        alert = prometheus.wait_for_alert("RegistryDeepImageBroken", image="apps/legacy:2.0", platform="linux/386")
        assert alert["labels"]["severity"] == "critical"
        assert alert["labels"]["registry"] == damaged.url
        assert alert["annotations"]["summary"] == \
            f"{damaged.url} serves a broken image: apps/legacy:2.0 (linux/386)"
        firing = {a["labels"].get("image") for a in prometheus.alerts() if a["state"] == "firing"}
        assert "artifacts/sbom:1.0" not in firing

        # a check that has never had an OK run, here for its arguments
        assert plugin("--bogus", "--metrics-file", str(textfile / "misconfigured.prom")).code == 3
        alert = prometheus.wait_for_alert("RegistryDeepCheckNotFinishing", check="misconfigured")
        assert alert["annotations"]["summary"] == \
            f"check_registry_deep misconfigured on {node_exporter.host} has not finished a fully OK run yet"


@pytest.mark.skipif(shutil.which("amtool") is None, reason="amtool is not installed (prometheus-alertmanager)")
def test_the_alertmanager_example_passes_amtool_and_routes_a_broken_image_to_the_oncall_webhook():
    done = run("amtool", "check-config", str(ALERTMANAGER_EXAMPLE))
    assert done.returncode == 0, done.stdout + done.stderr
    routed = run("amtool", "config", "routes", "test", f"--config.file={ALERTMANAGER_EXAMPLE}",
                 "alertname=RegistryDeepImageBroken", "severity=critical", "image=base/golden:1")
    assert routed.stdout.strip() == "registry-oncall", routed.stdout + routed.stderr
    routed = run("amtool", "config", "routes", "test", f"--config.file={ALERTMANAGER_EXAMPLE}",
                 "alertname=RegistryDeepCheckNotRunning", "severity=warning")
    assert routed.stdout.strip() == "default", routed.stdout + routed.stderr


def example_alertmanager_config(webhook: str) -> str:
    """The shipped example with its webhook pointed at `webhook`, and its waits in seconds (a test's minutes)."""
    text = ALERTMANAGER_EXAMPLE.read_text()
    text, urls = re.subn(r"(?m)^(\s+- url: ).*$", rf"\g<1>{webhook}", text)
    text, waits = re.subn(r"(?m)^(\s+group_(?:wait|interval): )\S+$", r"\g<1>1s", text)
    assert (urls, waits) == (1, 3), text  # nothing else is touched: the test catches a changed route
    return text


@pytest.mark.e2e
@pytest.mark.skipif(not (Path(PROMETHEUS).exists() and Path(ALERTMANAGER).exists()),
                    reason="prometheus or prometheus-alertmanager is not installed (tools/debian-packages.txt)")
def test_a_broken_image_reaches_the_oncall_webhook_through_the_example_alertmanager_route(
        plugin, damaged, lab, tmp_path, textfile, node_exporter):
    """The plugin's --metrics-file -> node_exporter -> prometheus with the shipped rules -> prometheus-alertmanager
    with the shipped route -> a webhook on 127.0.0.1 (a small HTTP server of the test's: the pager's stand-in)."""
    golden = lab.images.golden.digest
    damaged.truncate_blob(golden, 4096)
    args = ["-R", damaged.url, *image_args(lab.images.refs()), "--metrics-file", str(textfile / "sentinels.prom")]
    assert plugin(*args).code == 2
    with WebhookReceiver() as webhook, \
            LocalAlertmanager(tmp_path / "alertmanager", example_alertmanager_config(f"{webhook.url}/page")) as am, \
            LocalPrometheus(tmp_path / "prometheus", [node_exporter.host], [RULES], [am.host]):
        alert = webhook.wait_for_alert("RegistryDeepImageBroken", log=am.log, image="apps/legacy:2.0",
                                       platform="linux/386")
    assert webhook.requests[0]["path"] == "/page"
    assert alert["labels"]["registry"] == damaged.url and alert["labels"]["check"] == "sentinels"
    assert alert["annotations"] == {
        "summary": f"{damaged.url} serves a broken image: apps/legacy:2.0 (linux/386)",
        "description": f"check_registry_deep (sentinels on {node_exporter.host}) could not pull every blob of "
                       f"this image intact in its last run: layer {golden[:19]}… truncated: Content-Length says "
                       "4096 of 1048576 bytes."}
    paged = {(a["labels"]["image"], a["labels"].get("platform", "")) for payload in webhook.payloads
             for a in payload["alerts"] if a["labels"]["alertname"] == "RegistryDeepImageBroken"}
    assert ("artifacts/sbom:1.0", "") not in paged
    assert all(len(payload["alerts"]) == 1 for payload in webhook.payloads)  # one page per image and platform


def test_the_readme_documents_every_metric_and_every_rule_as_shipped():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Prometheus: a durability SLI")[1].split("\n## ")[0]
    documented = set(re.findall(r"[|,] `(registry_deep_\w+)[`{]", section))
    full = RunMetrics(2, 1.0, 1.0, (ImageSample("https://r", "a:1", "", False, "layer x", signed=False),),
                      Counts(1, 0, 1, 1, 1, 0, 1.0, verified_artifacts=1))
    written = {family.name for family in text_string_to_metric_families(exposition(full, "x", None).decode())}
    assert documented == written
    shipped = dict(re.findall(r"- alert: (\w+)\n\s+expr: (.+)", RULES.read_text()))
    assert dict(re.findall(r"\| `(RegistryDeep\w+)` \(\w+\) \| `([^`]+)`", section)) == shipped


@pytest.mark.e2e
def test_with_json_on_stdout_a_failed_metrics_write_goes_to_stderr(plugin, pristine, tmp_path):
    missing = tmp_path / "no-such-dir" / "registry-deep.prom"
    run = plugin("-R", pristine.url, "-i", "base/golden:1", "--json", "-", "--metrics-file", str(missing))
    assert run.code == 3
    assert json.loads(run.stdout)["state"] == "OK"  # the document stays valid
    assert run.stderr == f"cannot write --metrics-file {missing}: directory {missing.parent} does not exist\n"


@pytest.mark.e2e
def test_a_platform_whose_manifest_is_gone_is_0_and_its_sibling_1(plugin, damaged, lab, tmp_path):
    multi = lab.images.images["multi"]
    damaged.remove_manifest_revision("apps/multi", multi.children["linux/arm64/v8"])
    prom = tmp_path / "multi.prom"
    run = plugin("-R", damaged.url, "-i", "apps/multi:1.0", "--metrics-file", str(prom))
    assert run.code == 2
    assert run.first.startswith("REGISTRY_DEEP CRITICAL - 1 broken manifest, breaking 1 of 1 image: "), run.first
    text = prom.read_text()
    assert image_ok(text, "multi") == {"apps/multi:1.0 (linux/amd64)": 1, "apps/multi:1.0 (linux/arm64/v8)": 0}
    assert one(text, "registry_deep_broken_blobs", "multi") == 1
