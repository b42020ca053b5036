"""--metrics-file for Prometheus: the shipped alert rules (promtool), the example systemd units (systemd-analyze),
and the plugin's file read by Debian's real node_exporter and prometheus on 127.0.0.1."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "prometheus" / "registry-deep.rules.yml"
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
    assert "SUCCESS: 5 rules found" in done.stdout


@needs_promtool
def test_each_alert_rule_fires_and_resolves_in_promtool_unit_tests():
    done = run("promtool", "test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout
    tested = set(RULE_TESTS.read_text().split("alertname: ")[1:])
    assert {line.split()[0] for line in tested} == {
        "RegistryDeepImageBroken", "RegistryDeepBrokenBlobs", "RegistryDeepCheckNotRunning",
        "RegistryDeepCheckNotFinishing", "RegistryDeepRotationBehind"}


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
