"""Shared fixtures: the real entry point as a subprocess, and real registries from the one registry lab."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, List, Optional

import pytest

if TYPE_CHECKING:
    import responses

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from check_registry_deep.cli import WATCHDOG_GRACE  # noqa: E402
from check_registry_deep.transport import CONNECT_TIMEOUT  # noqa: E402
from registry_lab import ImageSet, LocalRegistry, seed_sentinels  # noqa: E402
from registry_lab.icinga import private_dir  # noqa: E402
from registry_lab.images import Layer, random_bytes, write_schema1  # noqa: E402
from registry_lab.secure import CertificateAuthority  # noqa: E402


@dataclass(frozen=True)
class PluginRun:
    code: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def lines(self) -> List[str]:
        return self.stdout.splitlines()

    @property
    def first(self) -> str:
        return self.lines[0] if self.lines else ""


def run_command(command: List[str], *, timeout: float, env: dict, cwd: str | None = None) -> PluginRun:
    """Run a plugin command as Icinga would: a fresh process, no stdin; keep stdout, stderr and the exit code."""
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd,
                          stdin=subprocess.DEVNULL)
    return PluginRun(done.returncode, done.stdout, done.stderr, time.monotonic() - started)


#: Seconds a plugin run may take on the wall clock beyond what -t counts: the interpreter's start before main()
#: and its exit. About 0.2 s on an idle machine, 0.4 s at load 7 on 2 CPUs, over 1.5 s at load 15; kept well
#: below the connect timeout, so that a run waiting on a silent server instead of its deadline still fails.
STARTUP_ALLOWANCE = 4.0
assert WATCHDOG_GRACE + STARTUP_ALLOWANCE < CONNECT_TIMEOUT / 2


def own_time(run: PluginRun) -> Optional[float]:
    """The seconds a run counted itself, from main() (its `time` perfdata; the watchdog's line has none)."""
    measured = re.search(r" time=([0-9.]+)s;", run.first)
    return float(measured.group(1)) if measured else None


def assert_answered_in_time(run: PluginRun, seconds: float) -> None:
    """A run with -t `seconds` answered within the watchdog's grace past its deadline: counted from main() by
    the run's own time (where it has none, the watchdog answered, at that bound), and on the wall clock from
    the process's start, which adds the interpreter's start and exit."""
    counted = own_time(run)
    assert counted is None or counted < seconds + WATCHDOG_GRACE, run.first
    assert run.seconds < seconds + WATCHDOG_GRACE + STARTUP_ALLOWANCE, run.seconds


def run_plugin(*args: str, timeout: float = 120, env: dict | None = None) -> PluginRun:
    """Run the real entry point of this source tree."""
    return run_command([sys.executable, "-m", "check_registry_deep", *args], timeout=timeout,
                       env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


@pytest.fixture
def plugin() -> Callable[..., PluginRun]:
    return run_plugin


@dataclass
class Lab:
    """The seeded template storage; `registry()` starts a private copy that a test may damage."""

    storage: Path
    images: ImageSet
    schema1_ref: str
    workdir: Path

    def registry(self, tmp: Path, **kwargs) -> LocalRegistry:
        template = LocalRegistry(self.workdir, storage=self.storage)
        return template.clone(tmp, **kwargs).start()

    def tls_registry(self, tmp: Path, ca: CertificateAuthority, *, client_certs: bool = False,
                     config: Optional[dict] = None) -> LocalRegistry:
        """A registry serving https with a certificate from `ca`; with `client_certs`, it requires one from `ca`.
        `config` adds to its configuration (an auth section, say)."""
        cert, key = ca.issue("registry")
        tls = {"certificate": str(cert), "key": str(key)}
        if client_certs:
            tls["clientcas"] = [str(ca.cert)]
        return self.registry(tmp / "registry", config={**(config or {}), "http": {"tls": tls}}, tls=True)


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    workdir = tmp_path_factory.mktemp("lab-template")
    with LocalRegistry(workdir) as registry:
        images = seed_sentinels(registry)
        schema1 = write_schema1(registry, "legacy/schema1", "1", [Layer(random_bytes("schema1", 4096))])
    yield Lab(registry.storage, images, schema1.ref, workdir)


@pytest.fixture(scope="session")
def pristine(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    """A registry on an undamaged copy, shared by the tests that only read."""
    registry = lab.registry(tmp_path_factory.mktemp("pristine"))
    yield registry
    registry.stop()


@pytest.fixture(scope="session")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    """A throwaway certificate authority for the TLS tests."""
    return CertificateAuthority(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def damaged(lab: Lab, tmp_path: Path) -> Iterator[LocalRegistry]:
    """A private registry on a fresh copy of the sentinel storage, for one test to damage."""
    registry = lab.registry(tmp_path)
    yield registry
    registry.stop()


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A temporary directory icinga2 can use when it drops to `nobody` (tmp_path is private to the caller)."""
    path = private_dir("icinga-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def no_proxy_from_the_environment(monkeypatch) -> None:
    """Debian's package build sets http_proxy to a dead port (no network while building): the tests that mock HTTP
    set the proxy they mean themselves."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture
def mock() -> Iterator[responses.RequestsMock]:
    """HTTP mocked with responses (the unit tests of client.py and referrers.py). Imported here, not at the top:
    the installed package's autopkgtest loads this file without python3-responses."""
    import responses

    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps
