"""Icinga 2: the shipped CheckCommand and examples, validated and run by Debian's real icinga2 daemon.

Every daemon here runs from its own temporary directories (config, state, run, certificates), in the foreground,
on 127.0.0.1 only. When the suite itself runs as root, icinga2 drops to `nobody` (the way it drops to `nagios` in
production) if `nobody` can run this interpreter; otherwise it keeps the invoking user.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import pytest
import requests

from registry_lab import free_port

ROOT = Path(__file__).resolve().parent.parent
ICINGA = ROOT / "icinga"
CHECKCOMMAND = ICINGA / "registry-deep.conf"
EXAMPLES = ICINGA / "examples"
ICINGA2 = shutil.which("icinga2")
SYSTEM_INCLUDE = Path("/usr/share/icinga2/include")

needs_icinga2 = pytest.mark.skipif(ICINGA2 is None, reason="icinga2 is not installed (tools/debian-packages.txt)")

#: Options every plugin has and no CheckCommand maps (Icinga cannot use their output).
UNMAPPED = {"--help", "--version"}
#: Plugin options whose CheckCommand argument is built by a function rather than a plain "$var$" value.
COUNTED = {"--verbose"}


# ---------------------------------------------------------------------------------------------------- helpers

def reachable_by_anyone(path: Path) -> bool:
    """Whether a user with no special rights can reach `path` (every directory on the way searchable)."""
    path = path.resolve()
    for directory in path.parents:
        if not directory.stat().st_mode & stat.S_IXOTH:
            return False
    return bool(path.stat().st_mode & (stat.S_IROTH | (stat.S_IXOTH if path.is_file() else 0)))


def drop_to_nobody() -> bool:
    """Root drops icinga2 to `nobody` when `nobody` can run this interpreter and read the repository (a venv whose
    interpreter lives under /root cannot be run by anyone else; icinga2 then keeps the invoking user)."""
    if os.geteuid() != 0:
        return False
    needed = [Path(sys.executable), Path(sys.base_prefix) / "lib", ROOT / "check_registry_deep" / "__init__.py"]
    return all(reachable_by_anyone(path) for path in needed)


def daemon_user() -> Tuple[str, str]:
    """The user and group icinga2 runs as: `nobody` when the suite is root and can, else the invoking user."""
    if drop_to_nobody():
        return "nobody", grp.getgrgid(pwd.getpwnam("nobody").pw_gid).gr_name
    return pwd.getpwuid(os.geteuid()).pw_name, grp.getgrgid(os.getegid()).gr_name


def private_dir(prefix: str) -> Path:
    """A temporary directory the daemon user can use (pytest's tmp_path is private to the invoking user)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


def give_to_daemon_user(*paths: Path) -> None:
    if not drop_to_nobody():
        return
    user, group = daemon_user()
    uid, gid = pwd.getpwnam(user).pw_uid, grp.getgrnam(group).gr_gid
    for path in paths:
        for item in [path, *path.rglob("*")]:
            os.chown(item, uid, gid)


def plugin_wrapper(directory: Path) -> Path:
    """A PluginContribDir holding check_registry_deep: this interpreter, with the repository on PYTHONPATH."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "check_registry_deep"
    script.write_text(f"#!/bin/sh\nPYTHONPATH='{ROOT}' PYTHONDONTWRITEBYTECODE=1 exec '{sys.executable}' "
                      f"-m check_registry_deep \"$@\"\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH | stat.S_IRGRP | stat.S_IROTH)
    return directory


class Instance:
    """One icinga2 configuration with its own directories: validated with -C, or run in the foreground."""

    def __init__(self, base: Path, *, node: str = "icinga-test.localdomain", include_dir: Optional[Path] = None,
                 zones_dir: Optional[Path] = None) -> None:
        self.base = base
        self.node = node
        self.etc = base / "etc"
        self.data = base / "var" / "lib"
        for path in (self.etc, self.data / "certs", base / "var" / "log", base / "var" / "cache",
                     base / "var" / "spool", base / "run"):
            path.mkdir(parents=True, exist_ok=True)
        self.contrib = plugin_wrapper(base / "contrib")
        user, group = daemon_user()
        self.defines = {
            "Configuration.DataDir": self.data,
            "Configuration.LogDir": base / "var" / "log",
            "Configuration.CacheDir": base / "var" / "cache",
            "Configuration.SpoolDir": base / "var" / "spool",
            "Configuration.InitRunDir": base / "run",
            "Configuration.ConfigDir": self.etc,
            "Configuration.ZonesDir": zones_dir or self.etc / "zones.d",
            "Configuration.RunAsUser": user,
            "Configuration.RunAsGroup": group,
        }
        if include_dir:
            self.defines["Configuration.IncludeConfDir"] = include_dir

    def write(self, body: str) -> Path:
        config = self.etc / "icinga2.conf"
        config.write_text(f'const NodeName = "{self.node}"\n'
                          f'const ZoneName = NodeName\n'
                          f'const PluginDir = "/usr/lib/nagios/plugins"\n'
                          f'const ManubulonPluginDir = "/usr/lib/nagios/plugins"\n'
                          f'const PluginContribDir = "{self.contrib}"\n' + body)
        return config

    def argv(self, *extra: str) -> List[str]:
        defines = [f"--define={key}={value}" for key, value in self.defines.items()]
        return [ICINGA2, "daemon", "-c", str(self.etc / "icinga2.conf"), *defines, *extra]

    def validate(self) -> subprocess.CompletedProcess:
        give_to_daemon_user(self.base)
        return subprocess.run(self.argv("-C"), capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def instantiated(output: str) -> Dict[str, int]:
    """`Instantiated 3 Services.` lines of `icinga2 daemon -C`, as {"Service": 3}."""
    counts = {}
    for number, kind in re.findall(r"information/ConfigItem: Instantiated (\d+) (\w+?)s?\.$", output, re.M):
        counts[kind.rstrip("e") if kind.endswith("ie") else kind] = int(number)
    return counts


def assert_valid(done: subprocess.CompletedProcess) -> str:
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Finished validating the configuration file(s)." in output, output
    problems = [line for line in output.splitlines() if re.search(r"\] (warning|critical)/", line)]
    assert not problems, "\n".join(problems)
    return output


def itl_mirror(base: Path, extra: Optional[Path]) -> Path:
    """Debian's ITL include dir (links), with `extra` in plugins-contrib.d as the Debian package installs it.

    A registry-deep.conf the system already has (our own package, installed) is left out: `extra` replaces it,
    and nothing is ever written through a link into /usr/share."""
    mirror = base / "include"
    (mirror / "plugins-contrib.d").mkdir(parents=True)
    for item in SYSTEM_INCLUDE.iterdir():
        if item.name != "plugins-contrib.d":
            (mirror / item.name).symlink_to(item)
    for item in (SYSTEM_INCLUDE / "plugins-contrib.d").iterdir():
        if item.name != CHECKCOMMAND.name:
            (mirror / "plugins-contrib.d" / item.name).symlink_to(item)
    if extra is not None:
        (mirror / "plugins-contrib.d" / CHECKCOMMAND.name).write_text(extra.read_text())
    return mirror


DEBIAN_INCLUDES = """
include <itl>
include <plugins>
include <plugins-contrib>
include <manubulon>
include <windows-plugins>
include <nscp>
"""


# ----------------------------------------------------------------------------------------- CheckCommand text

def checkcommand_arguments(text: str) -> Dict[str, str]:
    """The CheckCommand's arguments as {key: body} (the shipped file keeps one argument per indented block)."""
    match = re.search(r'object CheckCommand "registry_deep" \{(.*)\n\}', text, re.S)
    assert match, "no CheckCommand registry_deep"
    block = re.search(r"\n\targuments = \{\n(.*?)\n\t\}\n", match.group(1), re.S)
    assert block, "no arguments block"
    return dict(re.findall(r'^\t\t"([^"]+)" = \{\n(.*?)^\t\t\}$', block.group(1), re.S | re.M))


def help_options() -> Dict[str, dict]:
    """Every option of the plugin's --help, keyed by its long form: {"--images-file": {metavar, repeatable}}."""
    done = subprocess.run([sys.executable, "-m", "check_registry_deep", "--help"], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    options: Dict[str, dict] = {}
    current = None
    for line in done.stdout.splitlines():
        spec = re.match(r"^  (-\S.*?)(?:  +(.*))?$", line)
        if spec:
            forms = [form.strip() for form in spec.group(1).split(", ")]
            names = [form.split(" ")[0] for form in forms]
            long_names = [name for name in names if name.startswith("--")]
            assert long_names, f"option without a long form: {line!r} (the CheckCommand maps long options)"
            current = {"metavar": len(forms[0].split(" ")) > 1, "help": spec.group(2) or ""}
            options[long_names[0]] = current
        elif current is not None and re.match(r"^ {10,}\S", line):
            current["help"] += " " + line.strip()
        else:
            current = None
    assert "--registry" in options and "--image" in options, done.stdout
    return options


def var_name(option: str) -> str:
    return "registry_deep_" + option.lstrip("-").replace("-", "_")


# --------------------------------------------------------------------------------------------------- no drift

def test_every_plugin_option_has_a_checkcommand_argument_and_back():
    options = help_options()
    arguments = checkcommand_arguments(CHECKCOMMAND.read_text())
    wanted = set(options) - UNMAPPED
    missing = sorted(wanted - set(arguments))
    extra = sorted(set(arguments) - wanted)
    assert not missing, f"plugin options without a CheckCommand argument in {CHECKCOMMAND}: {missing}"
    assert not extra, f"CheckCommand arguments the plugin's --help does not list: {extra}"

    orders = []
    for option, body in arguments.items():
        var = var_name(option)
        help_text = options[option]["help"]
        assert "description = " in body, f"{option}: no description"
        order = re.search(r"^\t\t\torder = (-?\d+)$", body, re.M)
        assert order, f"{option}: no order"
        orders.append(int(order.group(1)))
        if option in COUNTED:
            assert f'set_if = "${var}$"' in body and f'macro("${var}$")' in body, body
        elif options[option]["metavar"]:
            assert re.search(rf'^\t\t\tvalue = "\${var}\$"$', body, re.M), f"{option}: value must be ${var}$"
            if "repeatable" in help_text:
                assert "repeat_key = true" in body, f"{option} is repeatable: arrays need repeat_key = true"
        else:
            assert re.search(rf'^\t\t\tset_if = "\${var}\$"$', body, re.M), f"{option} is a flag: set_if = ${var}$"
    assert len(set(orders)) == len(orders), "each argument gets its own order: the command line reads naturally"


def test_checkcommand_timeout_stays_above_the_plugin_deadline():
    text = CHECKCOMMAND.read_text()
    timeout = int(re.search(r"^\ttimeout = (\d+)$", text, re.M).group(1))
    deadline = int(re.search(r"^\tvars\.registry_deep_timeout = (\d+)$", text, re.M).group(1))
    help_default = int(re.search(r"\(default (\d+)\)", help_options()["--timeout"]["help"]).group(1))
    assert deadline == help_default
    assert timeout >= deadline + 5, "the plugin must report before Icinga kills it"
    assert PLUGIN_CONTRIB_COMMAND in text
    assert not re.search(r"^\s*(object|apply|template) (?!CheckCommand \"registry_deep\")", text, re.M), \
        "the shipped file is loaded into every set-up: no hosts, services or templates in it"


PLUGIN_CONTRIB_COMMAND = 'command = [ PluginContribDir + "/check_registry_deep" ]'


# ------------------------------------------------------------------------------------------------ validation

@pytest.fixture
def scratch() -> Iterator[Path]:
    path = private_dir("icinga-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@needs_icinga2
def test_checkcommand_validates_standalone(scratch):
    instance = Instance(scratch)
    instance.write(f'include "{CHECKCOMMAND}"\n')
    output = assert_valid(instance.validate())
    assert instantiated(output).get("CheckCommand") == 1, output


@needs_icinga2
def test_checkcommand_loads_as_an_itl_contrib_include_without_colliding(scratch):
    plain = Instance(scratch / "plain", include_dir=itl_mirror(scratch / "plain", None))
    plain.write(DEBIAN_INCLUDES)
    itl_commands = instantiated(assert_valid(plain.validate()))["CheckCommand"]

    instance = Instance(scratch / "contrib", include_dir=itl_mirror(scratch / "contrib", CHECKCOMMAND))
    instance.write(DEBIAN_INCLUDES)
    output = assert_valid(instance.validate())
    assert instantiated(output)["CheckCommand"] == itl_commands + 1, output

    # The control: the same file under a name the ITL already uses is refused, so the check above is real.
    clash = scratch / "clash" / "registry-deep.conf"
    clash.parent.mkdir()
    clash.write_text(CHECKCOMMAND.read_text().replace('"registry_deep"', '"disk"'))
    instance = Instance(scratch / "clash", include_dir=itl_mirror(scratch / "clash", clash))
    instance.write(DEBIAN_INCLUDES)
    done = instance.validate()
    assert done.returncode != 0 and "Object 'disk' of type 'CheckCommand' re-defined" in done.stdout, done.stdout


@needs_icinga2
def test_service_examples_validate_with_the_itl(scratch):
    instance = Instance(scratch)
    instance.write(f'include <itl>\ninclude <plugins>\ninclude "{CHECKCOMMAND}"\n'
                   f'include "{EXAMPLES / "services.conf"}"\n')
    counts = instantiated(assert_valid(instance.validate()))
    # Two registries: one with two sentinel sets, one with one; a notification for each of the three services.
    assert counts.get("Service") == 3, counts
    assert counts.get("Notification") == 3, counts


@needs_icinga2
def test_distributed_example_validates_on_the_master(scratch):
    distributed = EXAMPLES / "distributed"
    zones_d = scratch / "zones.d"
    shutil.copytree(distributed / "master" / "zones.d", zones_d)  # follows the symlink to the shipped command
    assert (zones_d / "global-templates" / "registry-deep.conf").read_text() == CHECKCOMMAND.read_text()
    assert not [item for item in zones_d.iterdir() if item.is_file()], "files directly in zones.d/ are ignored"
    instance = Instance(scratch, node="master1.example.org", zones_dir=zones_d)
    shutil.copy(distributed / "zones.conf", instance.etc / "zones.conf")
    instance.write('include "zones.conf"\ninclude <itl>\ninclude <plugins>\n')
    counts = instantiated(assert_valid(instance.validate()))
    zone_dirs = {item.name for item in zones_d.iterdir()}
    zone_names = set(re.findall(r'^object Zone "([^"]+)"', (distributed / "zones.conf").read_text(), re.M))
    assert zone_dirs <= zone_names, f"zones.d folders named after no zone are ignored: {zone_dirs - zone_names}"
    # Two registries per datacenter, each with its sentinel service run by its datacenter's satellite.
    assert counts.get("Host") == 4, counts
    assert counts.get("Service") == 4, counts
    assert counts.get("CheckCommand", 0) > 1, counts


# ------------------------------------------------------------------------------------------------ end to end

def make_certificates(directory: Path, node: str) -> None:
    """A CA and the node's certificate (CN and SAN: node name, 127.0.0.1), the way ApiListener expects them."""
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory, timeout=60)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=Icinga test CA",
            "-keyout", "ca.key", "-out", "ca.crt")
    openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={node}",
            "-keyout", f"{node}.key", "-out", f"{node}.csr")
    (directory / "san.ext").write_text(f"subjectAltName = DNS:{node}, IP:127.0.0.1\n"
                                       "extendedKeyUsage = serverAuth, clientAuth\n")
    openssl("x509", "-req", "-in", f"{node}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "san.ext", "-out", f"{node}.crt")
    (directory / "ca.key").unlink()


def icinga_array(values: List[str]) -> str:
    return "[ " + ", ".join(f'"{value}"' for value in values) + " ]"


class RunningIcinga:
    def __init__(self, instance: Instance, port: int, password: str) -> None:
        self.instance = instance
        self.url = f"https://127.0.0.1:{port}/v1"
        self.session = requests.Session()
        self.session.trust_env = False  # REQUESTS_CA_BUNDLE would replace `verify`; no proxy for loopback
        self.session.auth = ("root", password)
        self.session.verify = str(instance.data / "certs" / "ca.crt")
        self.session.headers["Accept"] = "application/json"
        self.log = instance.base / "icinga2.out"
        self.process: Optional[subprocess.Popen] = None

    def start(self, wait: float = 30.0) -> None:
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(self.instance.argv("-x", "notice"), stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"icinga2 exited with {self.process.returncode}:\n{self.output()}")
            try:
                if self.session.get(f"{self.url}/status/IcingaApplication", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise AssertionError(f"icinga2's API did not answer within {wait}s:\n{self.output()}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)  # the daemon, its spawn helper and any running check
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=15)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]

    def api(self, method: str, path: str, **kwargs) -> dict:
        response = self.session.request(method, f"{self.url}/{path}", timeout=30, **kwargs)
        assert response.status_code == 200, f"{method} {path}: {response.status_code} {response.text}"
        return response.json()

    def service(self, name: str, attrs: List[str]) -> dict:
        found = self.api("GET", f"objects/services/{name}", params={"attrs": attrs})["results"]
        return found[0]["attrs"]

    def force_check(self, name: str, wait: float = 45.0) -> dict:
        """Reschedule the service now, forced, and return its next check result once Icinga has processed it."""
        previous = self.service(name, ["last_check_result"])["last_check_result"]
        asked = time.time()
        self.api("POST", "actions/reschedule-check", params={"service": name}, json={"force": True})
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            result = self.service(name, ["last_check_result"])["last_check_result"]
            if result and result["schedule_start"] >= asked and result != previous:
                return result
            time.sleep(0.2)
        raise AssertionError(f"no check result for {name} within {wait}s:\n{self.output()}")

    def evaluate(self, script: str):
        answer = self.api("POST", "console/execute-script", json={"command": script, "session": "pytest"})
        result = answer["results"][0]
        assert result["code"] == 200, result
        return result["result"]


E2E_SERVICE = "registry!registry-deep"


@pytest.fixture
def icinga(damaged, lab) -> Iterator[RunningIcinga]:
    """icinga2 in the foreground, API on a free loopback port, one service using the shipped CheckCommand
    against the private `damaged` registry. Always stopped, whatever the test does."""
    if ICINGA2 is None:
        pytest.skip("icinga2 is not installed (tools/debian-packages.txt)")
    base = private_dir("icinga-e2e-")
    instance = Instance(base)
    make_certificates(instance.data / "certs", instance.node)
    port = free_port()
    password = os.urandom(12).hex()
    refs = lab.images.refs()
    files = []
    for index, chunk in enumerate((refs[4:6], refs[6:])):  # the rest of the refs come from files, two of them
        path = base / f"images-{index}.txt"
        path.write_text("# sentinel images\n" + "\n".join(chunk) + "\n")
        files.append(str(path))
    instance.write(f"""
include <itl>
include "{CHECKCOMMAND}"

object Endpoint NodeName {{ host = "127.0.0.1" }}
object Zone ZoneName {{ endpoints = [ NodeName ] }}
object ApiListener "api" {{
	bind_host = "127.0.0.1"
	bind_port = {port}
}}
object ApiUser "root" {{
	password = "{password}"
	permissions = [ "*" ]
}}
object CheckerComponent "checker" {{ }}

object Host "registry" {{
	check_command = "dummy"
	enable_active_checks = false
	address = "127.0.0.1"
}}
object Service "registry-deep" {{
	host_name = "registry"
	check_command = "registry_deep"
	check_interval = 1h
	max_check_attempts = 1
	vars.registry_deep_registry = "{damaged.url}"
	vars.registry_deep_image = {icinga_array(refs[:4])}
	vars.registry_deep_images_file = {icinga_array(files)}
	vars.registry_deep_workers = 3
	vars.registry_deep_warning = 30
	vars.registry_deep_critical = 40
	vars.registry_deep_verbose = 1
}}
""")
    give_to_daemon_user(base)
    running = RunningIcinga(instance, port, password)
    try:
        running.start()
        yield running
    finally:
        running.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_icinga_runs_the_check_ok_then_critical_when_the_golden_layer_breaks(icinga, damaged, lab):
    result = icinga.force_check(E2E_SERVICE)
    output = result["output"]
    assert result["state"] == 0, output
    assert result["exit_status"] == 0, output
    assert output.startswith("REGISTRY_DEEP OK - 9 images, 22 blobs, "), output
    assert len([line for line in output.splitlines() if line.startswith("image ")]) == 11, output  # -v

    # The command line Icinga built from the vars: natural order, arrays repeating their key, -v from a number.
    refs = lab.images.refs()
    command = result["command"]
    assert command[0] == str(icinga.instance.contrib / "check_registry_deep")
    assert command[1:] == ["--registry", damaged.url, *[arg for ref in refs[:4] for arg in ("--image", ref)],
                           "--images-file", str(icinga.instance.base / "images-0.txt"),
                           "--images-file", str(icinga.instance.base / "images-1.txt"),
                           "--workers", "3", "--timeout", "50", "--warning", "30", "--critical", "40", "-v"], command

    # Icinga split the perfdata into its labels, and its own parser reads each one with unit and thresholds.
    labels = [item.split("=", 1)[0] for item in result["performance_data"]]
    assert labels == ["blobs", "bytes", "failed", "images", "retries", "time"], result["performance_data"]
    parsed = icinga.evaluate(
        'var r = get_service("registry", "registry-deep").last_check_result; '
        'r.performance_data.map(p => { var v = parse_performance_data(p); '
        '{ label = v.label, value = v.value, unit = v.unit, min = v.min, warn = v.warn, crit = v.crit } })')
    by_label = {item["label"]: item for item in parsed}
    assert by_label["images"]["value"] == 9 and by_label["blobs"]["value"] == 22
    assert by_label["failed"]["value"] == 0 and by_label["failed"]["min"] == 0
    assert by_label["bytes"]["value"] == 3410649 and by_label["bytes"]["unit"] == "bytes"
    assert by_label["time"]["unit"] == "seconds" and by_label["time"]["warn"] == 30 and by_label["time"]["crit"] == 40

    golden = lab.images.golden.digest
    damaged.truncate_blob(golden, 4096)
    result = icinga.force_check(E2E_SERVICE)
    output = result["output"]
    assert result["state"] == 2, output
    assert output.startswith("REGISTRY_DEEP CRITICAL - 1 broken blob, breaking 8 of 9 images: layer "), output
    blast = [line for line in output.splitlines() if line.startswith(f"CRITICAL: layer {golden}: truncated")]
    assert blast, output
    for ref in lab.images.referencing(golden):
        assert ref in blast[0], (ref, blast[0])
    assert "failed=1;;;0" in result["performance_data"], result["performance_data"]
    state = icinga.service(E2E_SERVICE, ["state", "state_type", "last_hard_state"])
    assert state["state"] == 2 and state["state_type"] == 1, state  # max_check_attempts 1: a HARD CRITICAL


@needs_icinga2
def test_icinga_shows_a_missing_required_option_as_the_plugin_unknown(scratch):
    """`required` is only enforced at check time, so the CheckCommand does not rely on it: the plugin answers
    UNKNOWN with its own message when a service forgets the images."""
    instance = Instance(scratch)
    instance.write(f'include "{CHECKCOMMAND}"\n'
                   'object Host "h" { check_command = "registry_deep" }\n')
    assert_valid(instance.validate())  # -C cannot tell: the check has no images, yet the configuration is valid
    wrapper = instance.contrib / "check_registry_deep"
    done = subprocess.run([str(wrapper), "--timeout", "50"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3 and done.stdout.startswith("REGISTRY_DEEP UNKNOWN - "), done.stdout


@needs_icinga2
def test_readme_icinga_example_validates(scratch):
    """The README's apply rule, as written, with a host that carries the var it needs."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Icinga 2", 1)[1].split("\n## ", 1)[0]
    snippet = re.search(r"```\n(apply Service .*?)```", section, re.S).group(1)
    host = ('object Host "registry.example.org" {\n\tcheck_command = "dummy"\n'
            '\tvars.registry_url = "https://registry.example.org"\n}\n')
    instance = Instance(scratch)
    instance.write(f'include <itl>\ninclude <plugins>\ninclude "{CHECKCOMMAND}"\n{host}{snippet}')
    counts = instantiated(assert_valid(instance.validate()))
    assert counts.get("Service") == 1, counts
