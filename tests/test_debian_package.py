"""The installed Debian package: its file layout, and its plugin run for real against the lab's docker-registry.

Runs the INSTALLED /usr/lib/nagios/plugins/check_registry_deep (shebang /usr/bin/python3, modules and libraries
from Debian), never the source tree's modules. Skips when the package is not installed, as in the main test run
on a machine that has not run tools/test-debian-package; tools/test-debian-package and the autopkgtest set
CHECK_REGISTRY_DEEP_REQUIRE_PACKAGE=1 so that a missing plugin fails instead.
"""

from __future__ import annotations

import gzip
import os
import re
import subprocess
from pathlib import Path

import pytest
from conftest import PluginRun, run_command

PACKAGE = "monitoring-plugins-registry-deep"
PLUGIN = Path("/usr/lib/nagios/plugins/check_registry_deep")
CHECK_COMMAND = Path("/usr/share/icinga2/include/plugins-contrib.d/registry-deep.conf")
NAGIOS_COMMAND = Path("/etc/nagios-plugins/config/check_registry_deep.cfg")
MAN_PAGE = Path("/usr/share/man/man1/check_registry_deep.1.gz")
DIST_PACKAGES = "/usr/lib/python3/dist-packages/"

if not PLUGIN.exists():
    if os.environ.get("CHECK_REGISTRY_DEEP_REQUIRE_PACKAGE") == "1":
        raise RuntimeError(f"{PLUGIN} is not installed, and CHECK_REGISTRY_DEEP_REQUIRE_PACKAGE=1")
    pytest.skip(f"{PLUGIN} is not installed (the {PACKAGE} package; tools/test-debian-package builds and "
                f"installs it)", allow_module_level=True)

pytestmark = pytest.mark.e2e


def clean_env() -> dict:
    """What a monitoring daemon gives its plugins: no virtualenv, no PYTHONPATH, Debian's PATH, no user site."""
    drop = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYENV_VERSION", "PYTHONSTARTUP"}
    env = {key: value for key, value in os.environ.items() if key not in drop}
    env.update(PATH="/usr/sbin:/usr/bin:/sbin:/bin", PYTHONNOUSERSITE="1", LC_ALL="C.UTF-8")
    return env


def installed(*args: str, timeout: float = 120) -> PluginRun:
    """Run the installed plugin as Icinga would: by its path, from /, in a clean environment."""
    return run_command([str(PLUGIN), *args], timeout=timeout, env=clean_env(), cwd="/")


def image_args(refs):
    return [arg for ref in refs for arg in ("-i", ref)]


def dpkg_owner(path: Path) -> str:
    done = subprocess.run(["dpkg-query", "-S", str(path)], capture_output=True, text=True, env=clean_env())
    assert done.returncode == 0, f"{path} belongs to no package: {done.stderr}"
    return done.stdout.split(":", 1)[0]


def test_plugin_is_installed_by_the_package_with_debians_python():
    assert os.access(PLUGIN, os.X_OK)
    assert dpkg_owner(PLUGIN) == PACKAGE
    assert PLUGIN.read_text().splitlines()[0] == "#!/usr/bin/python3"  # rewritten by dh_python3


def test_modules_and_libraries_come_from_debian():
    code = ("import check_registry_deep, check_registry_deep.app, requests, nagiosplugin, tenacity\n"
            "for m in (check_registry_deep, requests, nagiosplugin, tenacity): print(m.__file__)")
    done = subprocess.run(["/usr/bin/python3", "-c", code], capture_output=True, text=True, env=clean_env(),
                          cwd="/", check=True)
    paths = done.stdout.split()
    assert len(paths) == 4 and all(path.startswith(DIST_PACKAGES) for path in paths), paths
    assert dpkg_owner(Path(paths[0])) == PACKAGE


def test_version_matches_the_package_version():
    run = installed("--version")
    assert run.code == 0, run.stdout + run.stderr
    version = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", PACKAGE], capture_output=True, text=True,
                             check=True).stdout
    assert run.stdout.strip() == f"check_registry_deep {version}"


def test_icinga_check_command_is_in_the_itl_contrib_dir():
    assert dpkg_owner(CHECK_COMMAND) == PACKAGE
    text = CHECK_COMMAND.read_text()
    assert re.search(r'object\s+CheckCommand\s+"registry_deep"', text)
    assert 'PluginContribDir + "/check_registry_deep"' in text


def test_nagios_command_file_is_a_conffile():
    assert dpkg_owner(NAGIOS_COMMAND) == PACKAGE
    assert "$USER1$/check_registry_deep" in NAGIOS_COMMAND.read_text()
    conffiles = subprocess.run(["dpkg-query", "-W", "-f", "${Conffiles}", PACKAGE], capture_output=True, text=True,
                               check=True).stdout
    assert str(NAGIOS_COMMAND) in conffiles


def test_man_page_documents_every_option_of_help():
    assert dpkg_owner(MAN_PAGE) == PACKAGE
    page = gzip.decompress(MAN_PAGE.read_bytes()).decode().replace("\\-", "-")
    assert ".TH CHECK_REGISTRY_DEEP 1 " in page
    run = installed("--help")
    assert run.code == 0
    options = set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", run.stdout))
    assert {"--registry", "--image", "--timeout"} <= options
    missing = sorted(option for option in options if not re.search(rf"(?<![\w-]){option}(?![\w-])", page))
    assert not missing, f"options in --help but not in the man page debian/check_registry_deep.1: {missing}"


def test_installed_plugin_is_ok_on_a_pristine_registry(pristine, lab):
    run = installed("-R", pristine.url, *image_args(lab.images.refs()))
    assert run.code == 0, run.stdout + run.stderr
    assert re.match(r"REGISTRY_DEEP OK - 9 images, 22 blobs, 3\.4 MB verified in [0-9.]+s", run.first), run.first
    assert "Traceback" not in run.stdout + run.stderr


def test_installed_plugin_is_critical_after_the_golden_layer_is_truncated(damaged, lab):
    golden = lab.images.golden.digest
    damaged.truncate_blob(golden, 4096)
    run = installed("-R", damaged.url, *image_args(lab.images.refs()))
    assert run.code == 2, run.stdout + run.stderr
    assert run.first.startswith("REGISTRY_DEEP CRITICAL - 1 broken blob, breaking 8 of 9 images: layer "), run.first
    line = next((line for line in run.lines[1:] if golden in line), "")
    assert line.startswith(f"CRITICAL: layer {golden}: truncated: "), run.stdout
    for ref in lab.images.referencing(golden):
        assert ref in line


def test_installed_plugin_bad_arguments_are_one_unknown_line():
    run = installed("-R", "http://127.0.0.1:1", "--bogus")
    assert run.code == 3
    assert run.first.startswith("REGISTRY_DEEP UNKNOWN - ") and len(run.lines) == 1, run.stdout
    assert "Traceback" not in run.stdout + run.stderr


EXAMPLES = Path(f"/usr/share/doc/{PACKAGE}/examples")


def test_prometheus_rules_and_systemd_units_are_examples_and_prometheus_client_a_dependency():
    for name in ("registry-deep.rules.yml", "alertmanager.yml", "check-registry-deep-metrics.service",
                 "check-registry-deep-metrics.timer"):
        assert dpkg_owner(EXAMPLES / name) == PACKAGE
    depends = subprocess.run(["dpkg-query", "-W", "-f", "${Depends}", PACKAGE], capture_output=True, text=True,
                             check=True).stdout
    assert "python3-prometheus-client" in depends  # from setup.cfg's install_requires, by dh_python3


@pytest.mark.skipif(not Path("/usr/bin/systemd-analyze").exists(), reason="systemd-analyze is not installed")
def test_the_installed_systemd_example_verifies_with_the_installed_plugin():
    units = [str(EXAMPLES / f"check-registry-deep-metrics.{kind}") for kind in ("service", "timer")]
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", *units], capture_output=True, text=True,
                          env=clean_env())
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_installed_plugin_writes_metrics_with_debians_prometheus_client(damaged, lab, tmp_path):
    prom = tmp_path / "registry-deep.prom"
    args = ["-R", damaged.url, *image_args(lab.images.refs("golden", "sbom")), "--metrics-file", str(prom)]
    assert installed(*args).code == 0
    damaged.truncate_blob(lab.images.golden.digest, 4096)
    run = installed(*args)
    assert run.code == 2
    assert run.first.startswith("REGISTRY_DEEP CRITICAL - 1 broken blob, breaking 1 of 2 images: "), run.first
    text = prom.read_text()
    assert 'registry_deep_state{check="registry-deep"} 2.0' in text
    labels = f'check="registry-deep",image="base/golden:1",platform="",registry="{damaged.url}"'
    assert f"registry_deep_image_ok{{{labels}}} 0.0" in text
