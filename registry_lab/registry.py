"""A real docker-registry (distribution 2.8) on 127.0.0.1 with a temp storage dir, and ways to damage it."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import requests

REGISTRY_BINARY = os.environ.get("REGISTRY_BINARY", "/usr/bin/docker-registry")
STORAGE_PREFIX = Path("docker/registry/v2")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process(process: Optional[subprocess.Popen], grace: float = 5.0, first: int = signal.SIGTERM) -> None:
    """Stop a daemon the lab started, by its PID: `first` (SIGTERM), then SIGKILL after `grace` seconds."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(first)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def lab_environment() -> Dict[str, str]:
    """The environment of a daemon the lab starts: no AWS_* variables (docker-registry 2.8's s3 driver panics at
    start on an AWS_CA_BUNDLE, and none of them is the lab's to pass on)."""
    return {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}


def start_daemon(argv: List[str], log_path: Path, ready: Callable[[], bool], what: str, wait: float
                 ) -> subprocess.Popen:
    """Start a daemon the lab needs (output appended to `log_path`, the lab's environment) and wait until
    `ready()` says it answers; stopped again, and the log's tail raised, when it exits or does not answer."""
    with open(log_path, "ab") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=lab_environment())
    until = time.monotonic() + wait
    while time.monotonic() < until:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}: "
                               f"{log_path.read_text(errors='replace')[-2000:]}")
        try:
            if ready():
                return process
        except (requests.RequestException, OSError):
            pass
        time.sleep(0.05)
    stop_process(process)
    raise RuntimeError(f"{what} did not answer within {wait}s")


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class OnLoopback:
    """A lab server's address on 127.0.0.1: from its `port`, `host` (HOST:PORT, as configs and clients name it)
    and `url`."""

    port: int

    @property
    def scheme(self) -> str:
        return "http"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"


class LocalRegistry(OnLoopback):
    """docker-registry serving `storage` on 127.0.0.1:<free port>; a context manager that always stops it."""

    def __init__(self, workdir: Path, *, storage: Optional[Path] = None, config: Optional[dict] = None,
                 port: Optional[int] = None, tls: bool = False):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.storage = Path(storage) if storage else self.workdir / "storage"
        self.storage.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.extra_config = config or {}
        self.tls = tls  # the config carries http.tls: serve https, and probe it without verification
        self.log_path = self.workdir / "registry.log"
        self.process: Optional[subprocess.Popen] = None
        self.session = requests.Session()

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    def config(self) -> dict:
        """No blob-descriptor cache (the tests damage storage under it), deletes on, JSON access log on."""
        config = {
            "version": 0.1,
            "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
            "storage": {"filesystem": {"rootdirectory": str(self.storage)}, "delete": {"enabled": True},
                        "maintenance": {"uploadpurging": {"enabled": False}}},
            "http": {"addr": self.host, "secret": "registry-lab-not-a-secret"},
            # 2.8 refuses foreign layers unless their URLs are allowed; the sentinels carry one
            "validation": {"manifests": {"urls": {"allow": ["^https://foreign\\.invalid/"]}}},
        }
        for key, value in self.extra_config.items():  # one level deep: http.tls joins http.addr
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key] = {**config[key], **value}  # type: ignore[dict-item]
            else:
                config[key] = value
        return config

    def start(self, wait: float = 15.0) -> LocalRegistry:
        config_path = self.workdir / "config.yml"
        config_path.write_text(json.dumps(self.config(), indent=1))  # JSON is YAML: no yaml module needed
        self.process = start_daemon([REGISTRY_BINARY, "serve", str(config_path)], self.log_path, self._answers,
                                    f"docker-registry on {self.url}", wait)
        return self

    def _answers(self) -> bool:
        if self.tls:  # it may want a client certificate: a listening port is enough
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        return self.session.get(f"{self.url}/v2/", timeout=1).status_code in (200, 401)

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> LocalRegistry:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def clone(self, workdir: Path, **kwargs) -> LocalRegistry:
        """A new registry on a copy of this one's storage: damage it without touching the original."""
        copy = Path(workdir) / "storage"
        shutil.copytree(self.storage, copy)
        return LocalRegistry(workdir, storage=copy, **kwargs)

    # -- seeding over the HTTP API --------------------------------------------------------------------

    def push_blob(self, repository: str, data: bytes) -> str:
        digest = sha256(data)
        response = self.session.post(f"{self.url}/v2/{repository}/blobs/uploads/", timeout=30)
        response.raise_for_status()
        location = response.headers["Location"]
        if location.startswith("/"):
            location = self.url + location
        separator = "&" if "?" in location else "?"
        response = self.session.put(f"{location}{separator}digest={digest}", data=data, timeout=60,
                                    headers={"Content-Type": "application/octet-stream"})
        if response.status_code != 201:
            raise RuntimeError(f"blob upload to {repository} failed: {response.status_code} {response.text}")
        return digest

    def push_manifest(self, repository: str, reference: str, body: bytes, media_type: str) -> str:
        response = self.session.put(f"{self.url}/v2/{repository}/manifests/{reference}", data=body, timeout=30,
                                    headers={"Content-Type": media_type})
        if response.status_code != 201:
            raise RuntimeError(f"manifest push {repository}:{reference} failed: {response.status_code} "
                               f"{response.text}")
        return response.headers["Docker-Content-Digest"]

    # -- storage layout (distribution's filesystem driver) --------------------------------------------

    def _root(self) -> Path:
        return self.storage / STORAGE_PREFIX

    def blob_path(self, digest: str) -> Path:
        algorithm, hexpart = digest.split(":", 1)
        return self._root() / "blobs" / algorithm / hexpart[:2] / hexpart / "data"

    def layer_link(self, repository: str, digest: str) -> Path:
        algorithm, hexpart = digest.split(":", 1)
        return self._root() / "repositories" / repository / "_layers" / algorithm / hexpart / "link"

    def revision_link(self, repository: str, digest: str) -> Path:
        algorithm, hexpart = digest.split(":", 1)
        return self._root() / "repositories" / repository / "_manifests" / "revisions" / algorithm / hexpart / "link"

    def tag_dir(self, repository: str, tag: str) -> Path:
        return self._root() / "repositories" / repository / "_manifests" / "tags" / tag

    def write_manifest_on_disk(self, repository: str, tag: str, body: bytes, digest: Optional[str] = None) -> str:
        """Store a manifest the way the registry would, bypassing its checks (for schema 1, which 2.8 refuses)."""
        digest = digest or sha256(body)
        path = self.blob_path(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
        for link in (self.revision_link(repository, digest),
                     self.tag_dir(repository, tag) / "current" / "link",
                     self.tag_dir(repository, tag) / "index" / digest.replace(":", "/") / "link"):
            link.parent.mkdir(parents=True, exist_ok=True)
            link.write_text(digest)
        return digest

    # -- damage ----------------------------------------------------------------------------------------

    def truncate_blob(self, digest: str, keep: int) -> None:
        with open(self.blob_path(digest), "r+b") as handle:
            handle.truncate(keep)

    def flip_byte(self, digest: str, offset: int = 0) -> None:
        with open(self.blob_path(digest), "r+b") as handle:
            handle.seek(offset)
            byte = handle.read(1)
            handle.seek(offset)
            handle.write(bytes([byte[0] ^ 0xFF]))

    def replace_blob(self, digest: str, data: bytes) -> None:
        self.blob_path(digest).write_bytes(data)

    def delete_blob(self, digest: str) -> None:
        shutil.rmtree(self.blob_path(digest).parent)

    def remove_layer_link(self, repository: str, digest: str) -> None:
        shutil.rmtree(self.layer_link(repository, digest).parent)

    def delete_tag(self, repository: str, tag: str) -> None:
        shutil.rmtree(self.tag_dir(repository, tag))

    def remove_manifest_revision(self, repository: str, digest: str) -> None:
        shutil.rmtree(self.revision_link(repository, digest).parent)

    # -- what the registry saw -------------------------------------------------------------------------

    def access_log(self) -> List[Dict[str, str]]:
        """Every request the registry logged (method, path, status, user agent), from its access log."""
        entries = []
        pattern = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[0-9.]+" (?P<status>\d+) \S+ "[^"]*" '
                             r'"(?P<agent>[^"]*)"')
        for line in self.log_path.read_text(errors="replace").splitlines():
            match = pattern.search(line)
            if match:
                entries.append(match.groupdict())
        return entries


class ObjectStoreRegistry(LocalRegistry):
    """A LocalRegistry whose storage is an object store (Swift, S3): the bytes live there, so the manifests it
    pushed are also kept in `workdir/pushed`, where images.py reads them back (`blob_path`)."""

    def __init__(self, workdir: Path, **kwargs):
        super().__init__(workdir, **kwargs)
        self.pushed = self.workdir / "pushed"

    def push_manifest(self, repository: str, reference: str, body: bytes, media_type: str) -> str:
        digest = super().push_manifest(repository, reference, body, media_type)
        path = self.blob_path(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
        return digest

    def blob_path(self, digest: str) -> Path:
        """A local copy of a manifest this registry pushed (the bytes live in the object store)."""
        algorithm, hexpart = digest.split(":", 1)
        return self.pushed / algorithm / hexpart

    @staticmethod
    def object_name(digest: str) -> str:
        """Where distribution keeps a blob's bytes, below the driver's root (a container, a bucket)."""
        algorithm, hexpart = digest.split(":", 1)
        return f"{STORAGE_PREFIX}/blobs/{algorithm}/{hexpart[:2]}/{hexpart}/data"


class SilentServer(OnLoopback):
    """A loopback socket that accepts connections and never answers: the stalled registry of timeout tests."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted: List[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
                self.accepted.append(conn)
            except OSError:
                continue

    def __enter__(self) -> SilentServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(2)
        for conn in self.accepted:
            conn.close()
        self.sock.close()
