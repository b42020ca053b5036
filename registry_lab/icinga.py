"""Debian's real icinga2 on loopback: nodes with private directories, certificates from `icinga2 pki`, the REST API.

Every node runs from its own temporary directories (config, state, run, certificates), in the foreground, on
127.0.0.1 only. When the caller runs as root, icinga2 drops to `nobody` (the way it drops to `nagios` in
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar

import requests

ROOT = Path(__file__).resolve().parent.parent
ICINGA2 = shutil.which("icinga2")

T = TypeVar("T")


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
    """The user and group icinga2 runs as: `nobody` when the caller is root and can, else the invoking user."""
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


def poll(probe: Callable[[], Optional[T]], what: str, wait: float, log: Callable[[], str] = lambda: "") -> T:
    """Call `probe` until it answers something other than None (or False); fail naming `what` after `wait` s."""
    deadline = time.monotonic() + wait
    while True:
        answer = probe()
        if answer is not None and answer is not False:
            return answer
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {wait}s\n{log()}")
        time.sleep(0.2)


class Instance:
    """One icinga2 node's configuration with its own directories: validated with -C, or run in the foreground."""

    def __init__(self, base: Path, *, node: str = "icinga-test.localdomain", include_dir: Optional[Path] = None,
                 zones_dir: Optional[Path] = None) -> None:
        self.base = base
        self.node = node
        self.etc = base / "etc"
        self.data = base / "var" / "lib"
        self.certs = self.data / "certs"
        for path in (self.etc, self.certs, base / "var" / "log", base / "var" / "cache", base / "var" / "spool",
                     base / "run"):
            path.mkdir(parents=True, exist_ok=True)
        self.contrib = plugin_wrapper(base / "contrib")
        user, group = daemon_user()
        self.defines: Dict[str, Any] = {
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
        return [str(ICINGA2), "daemon", "-c", str(self.etc / "icinga2.conf"), *defines, *extra]

    def validate(self) -> subprocess.CompletedProcess:
        give_to_daemon_user(self.base)
        return subprocess.run(self.argv("-C"), capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)

    def pki(self, *args: str) -> None:
        """`icinga2 pki ARGS` with this node's directories (new-ca keeps the CA in its DataDir/ca), as the daemon
        user: the paths it writes to must be that user's (`give_to_daemon_user`)."""
        defines = [f"--define={key}={value}" for key, value in self.defines.items()]
        done = subprocess.run([str(ICINGA2), "pki", *args, *defines], capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise RuntimeError(f"icinga2 pki {' '.join(args)} failed:\n{done.stdout}{done.stderr}")

    def sign(self, *nodes: Instance) -> None:
        """This node as the CA (`icinga2 pki new-ca`, unless it has one): a key and certificate for each node (CN =
        its name), and the CA certificate, in the node's DataDir/certs, where its ApiListener looks for them. The
        4096-bit keys take a second or more each: the CA's and the nodes' are made in parallel."""
        def paths(node: Instance) -> Tuple[str, str, str]:
            key, csr, cert = (str(node.certs / f"{node.node}.{suffix}") for suffix in ("key", "csr", "crt"))
            return key, csr, cert

        ca = self.data / "ca" / "ca.crt"
        give_to_daemon_user(self.base, *(node.base for node in nodes))
        with ThreadPoolExecutor(len(nodes) + 1) as pool:
            made = [pool.submit(self.pki, "new-cert", "--cn", node.node, "--key", paths(node)[0],
                                "--csr", paths(node)[1]) for node in nodes]
            if not ca.exists():
                made.append(pool.submit(self.pki, "new-ca"))
            for future in made:
                future.result()
        for node in nodes:
            self.pki("sign-csr", "--csr", paths(node)[1], "--cert", paths(node)[2])
            shutil.copy(ca, node.certs / "ca.crt")


def instantiated(output: str) -> Dict[str, int]:
    """`Instantiated 3 Services.` lines of `icinga2 daemon -C`, as {"Service": 3}."""
    counts = {}
    for number, kind in re.findall(r"information/ConfigItem: Instantiated (\d+) (\w+?)s?\.$", output, re.M):
        counts[kind[:-2] + "y" if kind.endswith("ie") else kind] = int(number)  # Dependencies: Dependency
    return counts


def icinga_array(values: List[str]) -> str:
    """Strings as an Icinga DSL array literal."""
    return "[ " + ", ".join(f'"{value}"' for value in values) + " ]"


def assert_valid(done: subprocess.CompletedProcess) -> str:
    """The output of a `validate()` that passed without a warning or critical line."""
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Finished validating the configuration file(s)." in output, output
    problems = [line for line in output.splitlines() if re.search(r"\] (warning|critical)/", line)]
    assert not problems, "\n".join(problems)
    return output


class NodeNameAdapter(requests.adapters.HTTPAdapter):
    """HTTPS to an icinga2 node on 127.0.0.1 whose certificate names the node (CN, as `icinga2 pki` makes it)."""

    def __init__(self, node: str) -> None:
        self.node = node
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        kwargs.update(assert_hostname=self.node)
        super().init_poolmanager(*args, **kwargs)


class RunningIcinga:
    """An Instance running in the foreground (its own process group), and its REST API as the user `root`."""

    def __init__(self, instance: Instance, port: int, password: str, env: Optional[Dict[str, str]] = None) -> None:
        self.instance = instance
        self.env = env  # the daemon's environment, which its checks and notification commands inherit
        self.port = port
        self.url = f"https://127.0.0.1:{port}/v1"
        self.session = requests.Session()
        self.session.trust_env = False  # REQUESTS_CA_BUNDLE would replace `verify`; no proxy for loopback
        self.session.auth = ("root", password)
        self.session.verify = str(instance.certs / "ca.crt")
        self.session.headers["Accept"] = "application/json"
        self.session.mount("https://", NodeNameAdapter(instance.node))
        self.log = instance.base / "icinga2.out"
        self.process: Optional[subprocess.Popen] = None

    def launch(self) -> None:
        give_to_daemon_user(self.instance.base)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(self.instance.argv("-x", "notice"), stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True, env=self.env)

    def answering(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            code = self.process.returncode if self.process else None
            raise AssertionError(f"icinga2 {self.instance.node} exited with {code}:\n{self.output()}")
        try:
            return self.session.get(f"{self.url}/status/IcingaApplication", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def start(self, wait: float = 30.0) -> RunningIcinga:
        self.launch()
        poll(self.answering, f"icinga2 {self.instance.node}'s API", wait, self.output)
        return self

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)  # the daemon, its workers, spawn helper and any running check
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=15)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-6000:] if self.log.exists() else ""

    def logged(self, pattern: str) -> Optional[str]:
        """The first line of the daemon's output matching the regular expression, if any."""
        found = re.search(f"^.*{pattern}.*$", self.log.read_text(errors="replace"), re.M)
        return found.group(0) if found else None

    def api(self, method: str, path: str, **kwargs) -> dict:
        response = self.session.request(method, f"{self.url}/{path}", timeout=30, **kwargs)
        if response.status_code != 200:
            raise AssertionError(f"{method} {path}: {response.status_code} {response.text}")
        return response.json()

    def service(self, name: str, attrs: List[str]) -> dict:
        found = self.api("GET", f"objects/services/{name}", params={"attrs": attrs})["results"]
        return found[0]["attrs"]

    def force(self, name: str) -> float:
        """Reschedule the service now, forced; the time asked."""
        asked = time.time()
        self.api("POST", "actions/reschedule-check", params={"service": name}, json={"force": True})
        return asked

    def force_check(self, name: str, wait: float = 45.0) -> dict:
        """Reschedule the service now, forced, and return its next check result once Icinga has processed it."""
        previous = self.last_result(name)
        return self.result_after(name, self.force(name), previous, wait)

    def last_result(self, name: str) -> Optional[dict]:
        return self.service(name, ["last_check_result"])["last_check_result"]

    def result_after(self, name: str, asked: float, previous: Optional[dict], wait: float = 45.0) -> dict:
        """The service's first check result scheduled at or after `asked` (a time.time()) other than `previous`."""

        def fresh() -> Optional[dict]:
            result = self.last_result(name)
            return result if result and result["schedule_start"] >= asked and result != previous else None

        return poll(fresh, f"a check result for {name}", wait, self.output)

    def evaluate(self, script: str) -> Any:
        answer = self.api("POST", "console/execute-script", json={"command": script, "session": "lab"})
        result = answer["results"][0]
        if result["code"] != 200:
            raise AssertionError(result)
        return result["result"]
