"""OpenStack Swift on 127.0.0.1, and docker-registry stored in it: the incident's own storage, on real parts.

`SwiftCluster` runs Debian's Swift as one node with one replica: memcached, then the account, container, object
and proxy servers (tempauth, temp URLs, container sync), rings built in Python, devices in a temp dir.
Debian's `/usr/bin/python3` has the swift modules (a venv does not): every Swift process and the ring building
run with it, whatever Python runs the caller.

`SwiftRegistry` is a `LocalRegistry` whose storage is a Swift container (distribution's `swift` driver: each
uploaded blob is a dynamic large object, a zero-byte manifest `files/docker/registry/v2/blobs/…/data` whose
bytes are the segments `segments/<3 hex>/<37 hex>/<16 digits>` of `chunksize` each), in one of three modes:
plain, with the in-memory blob-descriptor cache, or redirecting blob GETs to Swift temp URLs. Its damage
methods work on the Swift objects, as a failing or mis-synced Swift would.
"""

from __future__ import annotations

import getpass
import os
import random
import shutil
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

import requests

from .registry import LocalRegistry, ObjectStoreRegistry, free_port

SWIFT_PYTHON = os.environ.get("SWIFT_PYTHON", "/usr/bin/python3")
SWIFT_BIN = Path(os.environ.get("SWIFT_BIN", "/usr/bin"))
MEMCACHED = os.environ.get("MEMCACHED_BINARY", "/usr/bin/memcached")

ACCOUNT = "AUTH_test"
USER, KEY = "test:tester", "testing"
REALM, REALM_KEY, CLUSTER = "lab", "registry-lab-realm-key", "local"
MODES = ("plain", "cache", "redirect")
CHUNK_SIZE = 5 << 20
TEMPURL_KEY = "registry-lab-tempurl-key"
T = TypeVar("T")

_RING_SCRIPT = """
import sys
from swift.common.ring import RingBuilder
swift_dir = sys.argv[1]
for name, port in zip(("account", "container", "object"), sys.argv[2:5]):
    builder = RingBuilder(4, 1, 1)  # 16 partitions, 1 replica
    builder.add_dev({"id": 0, "region": 1, "zone": 1, "ip": "127.0.0.1", "port": int(port), "device": "d1",
                     "weight": 1, "replication_ip": "127.0.0.1", "replication_port": int(port)})
    builder.rebalance()
    builder.get_ring().save(f"{swift_dir}/{name}.ring.gz")
"""


def swift_available() -> Optional[str]:
    """None when this machine can run the Swift lab, else what is missing."""
    for path in (SWIFT_BIN / "swift-proxy-server", SWIFT_BIN / "swift-object-server", Path(MEMCACHED),
                 Path(SWIFT_PYTHON)):
        if not path.exists():
            return f"{path} is missing (apt-get install swift-proxy swift-account swift-container swift-object " \
                   "memcached python3-swift)"
    return None


class SwiftError(RuntimeError):
    pass


class SwiftCluster:
    """Swift on 127.0.0.1 (free ports), storage and config under `workdir`; a context manager that always stops
    every process it started."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.swift_dir = self.workdir / "etc"
        self.devices = self.workdir / "devices"
        self.logs = self.workdir / "logs"
        self.ports = {name: free_port() for name in ("memcached", "account", "container", "object", "proxy")}
        self.processes: Dict[str, subprocess.Popen] = {}
        self.session = requests.Session()
        self._token: Optional[str] = None
        self.started_in: Optional[float] = None

    # -- addresses ---------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['proxy']}"

    @property
    def auth_url(self) -> str:
        """tempauth's v1 endpoint, what the registry's `authurl` names."""
        return f"{self.url}/auth/v1.0"

    @property
    def storage_url(self) -> str:
        return f"{self.url}/v1/{ACCOUNT}"

    # -- configuration -----------------------------------------------------------------------------------

    def _server_conf(self, name: str, port: int, app: str, extra: str = "") -> str:
        return f"""[DEFAULT]
bind_ip = 127.0.0.1
bind_port = {port}
workers = 0
user = {getpass.getuser()}
swift_dir = {self.swift_dir}
devices = {self.devices}
mount_check = false
log_name = {name}
log_level = INFO
allowed_sync_hosts = 127.0.0.1

[pipeline:main]
pipeline = {name}

[app:{name}]
use = egg:swift#{app}
{extra}"""

    def write_config(self) -> None:
        for path in (self.swift_dir, self.devices / "d1", self.logs):
            path.mkdir(parents=True, exist_ok=True)
        memcache = f"127.0.0.1:{self.ports['memcached']}"
        files = {
            "swift.conf": "[swift-hash]\nswift_hash_path_suffix = registry-lab\nswift_hash_path_prefix = lab\n\n"
                          "[storage-policy:0]\nname = Policy-0\ndefault = yes\n",
            # realm config for container sync: the only cluster is this one, on loopback
            "container-sync-realms.conf": f"[{REALM}]\nkey = {REALM_KEY}\n"
                                          f"cluster_{CLUSTER} = {self.url}/v1/\n",
            "account-server.conf": self._server_conf("account-server", self.ports["account"], "account"),
            "container-server.conf": self._server_conf(
                "container-server", self.ports["container"], "container",
                f"\n[container-sync]\ninternal_client_conf_path = {self.swift_dir / 'internal-client.conf'}\n"
                "interval = 1\ncontainer_time = 60\n"),
            "object-server.conf": self._server_conf("object-server", self.ports["object"], "object"),
            "internal-client.conf": f"""[DEFAULT]
swift_dir = {self.swift_dir}
user = {getpass.getuser()}
log_level = INFO

[pipeline:main]
pipeline = catch_errors proxy-logging cache symlink proxy-server

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true

[filter:symlink]
use = egg:swift#symlink

[filter:cache]
use = egg:swift#memcache
memcache_servers = {memcache}

[filter:proxy-logging]
use = egg:swift#proxy_logging

[filter:catch_errors]
use = egg:swift#catch_errors
""",
            "proxy-server.conf": f"""[DEFAULT]
bind_ip = 127.0.0.1
bind_port = {self.ports['proxy']}
workers = 0
user = {getpass.getuser()}
swift_dir = {self.swift_dir}
log_name = proxy-server
log_level = INFO

[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache container_sync bulk tempurl tempauth copy \
slo dlo proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
allow_account_management = true
account_autocreate = true

[filter:tempauth]
use = egg:swift#tempauth
user_admin_admin = admin .admin .reseller_admin
user_test_tester = {KEY} .admin

[filter:cache]
use = egg:swift#memcache
memcache_servers = {memcache}

[filter:catch_errors]
use = egg:swift#catch_errors

[filter:gatekeeper]
use = egg:swift#gatekeeper

[filter:healthcheck]
use = egg:swift#healthcheck

[filter:proxy-logging]
use = egg:swift#proxy_logging

[filter:container_sync]
use = egg:swift#container_sync

[filter:bulk]
use = egg:swift#bulk

[filter:tempurl]
use = egg:swift#tempurl

[filter:copy]
use = egg:swift#copy

[filter:slo]
use = egg:swift#slo

[filter:dlo]
use = egg:swift#dlo
""",
        }
        for name, text in files.items():
            (self.swift_dir / name).write_text(text)

    def build_rings(self) -> None:
        subprocess.run([SWIFT_PYTHON, "-c", _RING_SCRIPT, str(self.swift_dir), str(self.ports["account"]),
                        str(self.ports["container"]), str(self.ports["object"])], check=True, capture_output=True,
                       timeout=60, env=_swift_env())

    # -- processes ---------------------------------------------------------------------------------------

    def _spawn(self, name: str, argv: List[str]) -> None:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 (handed to the child, closed right after)
        self.processes[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                env=_swift_env())
        log.close()

    def start(self, wait: float = 30.0) -> SwiftCluster:
        problem = swift_available()
        if problem:
            raise SwiftError(problem)
        started = time.monotonic()
        try:
            self.write_config()
            self.build_rings()
            user = ["-u", getpass.getuser()] if os.geteuid() == 0 else []
            self._spawn("memcached", [MEMCACHED, "-l", "127.0.0.1", "-p", str(self.ports["memcached"]), "-U", "0",
                                      "-m", "64", *user])
            # the proxy last, once the others listen: a proxy that met refused connections error-limits the
            # node and caches the account as missing, and is slow to come round
            for server in ("account", "container", "object", "proxy"):
                if server == "proxy":
                    self._wait_listening(("memcached", "account", "container", "object"), started + wait)
                self._spawn(server, [SWIFT_PYTHON, str(SWIFT_BIN / f"swift-{server}-server"),
                                     str(self.swift_dir / f"{server}-server.conf"), "-v"])
            self._wait_ready(started + wait)
        except BaseException:
            self.stop()
            raise
        self.started_in = time.monotonic() - started
        return self

    def _check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise SwiftError(f"{name} exited with {process.returncode}: {self.log_tail(name)}")

    def _wait_listening(self, names: Sequence[str], until: float) -> None:
        waiting = list(names)
        while waiting:
            self._check_alive()
            try:
                socket.create_connection(("127.0.0.1", self.ports[waiting[0]]), timeout=1).close()
                waiting.pop(0)
                continue
            except OSError:
                pass
            if time.monotonic() > until:
                raise SwiftError(f"Swift's {waiting[0]} did not listen on port {self.ports[waiting[0]]}: "
                                 f"{self.log_tail(waiting[0])}")
            time.sleep(0.05)

    def _wait_ready(self, until: float) -> None:
        while True:
            self._check_alive()
            try:
                if self.session.get(f"{self.url}/healthcheck", timeout=1).status_code == 200:
                    self.authenticate()
                    response = self.request("PUT", "/registry-lab-ready")  # account autocreated, rings served
                    if response.status_code in (201, 202):
                        self.request("DELETE", "/registry-lab-ready")
                        return
            except (requests.ConnectionError, requests.Timeout, SwiftError):
                pass
            if time.monotonic() > until:
                raise SwiftError(f"Swift did not come up on {self.url}: {self.log_tail('proxy')}")
            time.sleep(0.05)

    def log_tail(self, name: str, chars: int = 2000) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()

    def __enter__(self) -> SwiftCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def memory_kib(self) -> Dict[str, int]:
        """Resident memory of each process of the cluster (KiB, from /proc)."""
        usage = {}
        for name, process in self.processes.items():
            try:
                for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        usage[name] = int(line.split()[1])
            except OSError:
                continue
        return usage

    # -- the API -----------------------------------------------------------------------------------------

    def authenticate(self) -> str:
        response = self.session.get(self.auth_url, headers={"X-Auth-User": USER, "X-Auth-Key": KEY}, timeout=10)
        if response.status_code != 200:
            raise SwiftError(f"tempauth refused {USER}: {response.status_code}")
        self._token = response.headers["X-Auth-Token"]
        return self._token

    def request(self, method: str, path: str, *, headers: Optional[dict] = None, **kwargs) -> requests.Response:
        """`path` below the account (`/container/object`), with a token; a 401 re-authenticates once."""
        for _ in range(2):
            token = self._token or self.authenticate()
            response = self.session.request(method, self.storage_url + path, headers={"X-Auth-Token": token,
                                                                                      **(headers or {})},
                                            timeout=60, **kwargs)
            if response.status_code != 401:
                return response
            self._token = None
        return response

    def _ok(self, response: requests.Response, what: str) -> requests.Response:
        if response.status_code >= 300:
            raise SwiftError(f"{what}: {response.status_code} {response.text[:200]}")
        return response

    def create_container(self, container: str, headers: Optional[dict] = None) -> None:
        self._ok(self.request("PUT", f"/{container}", headers=headers), f"creating container {container}")

    def list_objects(self, container: str, prefix: str = "") -> List[dict]:
        """Every object of `container` under `prefix`: name, bytes, hash, content_type (paged listing)."""
        objects: List[dict] = []
        while True:
            params = {"format": "json", "prefix": prefix}
            if objects:
                params["marker"] = objects[-1]["name"]
            page = self._ok(self.request("GET", f"/{container}", params=params), f"listing {container}").json()
            if not page:
                return objects
            objects.extend(page)

    def head_object(self, container: str, name: str) -> requests.Response:
        return self.request("HEAD", f"/{container}/{name}", params={"multipart-manifest": "get"})

    def get_object(self, container: str, name: str) -> bytes:
        return self._ok(self.request("GET", f"/{container}/{name}"), f"reading {container}/{name}").content

    def put_object(self, container: str, name: str, data: bytes, headers: Optional[dict] = None) -> None:
        self._ok(self.request("PUT", f"/{container}/{name}", data=data,
                              headers={"Content-Type": "application/octet-stream", **(headers or {})}),
                 f"writing {container}/{name}")

    def delete_object(self, container: str, name: str) -> None:
        self._ok(self.request("DELETE", f"/{container}/{name}"), f"deleting {container}/{name}")

    def delete_container(self, container: str) -> None:
        """Delete every object, then the container (what `swift delete CONTAINER` does)."""
        for obj in self.list_objects(container):
            self.delete_object(container, obj["name"])
        self._ok(self.request("DELETE", f"/{container}"), f"deleting container {container}")

    def clone_container(self, source: str, target: str, threads: int = 8) -> None:
        """A copy of `source` in a new container, server-side: plain objects copied, DLO manifests re-pointed at
        the copies of their segments (so damaging the copy's segments leaves `source` whole)."""
        self.create_container(target)
        token = self._token or self.authenticate()

        def copy(name: str) -> None:
            with requests.Session() as session:
                headers = {"X-Auth-Token": token}
                response = session.head(f"{self.storage_url}/{source}/{name}", params={"multipart-manifest": "get"},
                                        headers=headers, timeout=60)
                manifest = response.headers.get("X-Object-Manifest")
                if manifest:
                    headers["X-Object-Manifest"] = f"{target}/{manifest.split('/', 1)[1]}"
                else:
                    headers["X-Copy-From"] = f"/{source}/{name}"
                self._ok(session.put(f"{self.storage_url}/{target}/{name}", data=b"", headers=headers, timeout=60),
                         f"copying {name} into {target}")

        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(copy, [obj["name"] for obj in self.list_objects(source)]))

    def set_account_tempurl_key(self, key: str) -> None:
        self._ok(self.request("POST", "", headers={"X-Account-Meta-Temp-URL-Key": key}), "setting Temp-URL-Key")

    # -- container sync ----------------------------------------------------------------------------------

    def sync_to(self, container: str, target: str, key: str = "registry-lab-sync-key") -> None:
        """Container sync from `container` into `target` of this cluster, through the loopback realm."""
        self._ok(self.request("POST", f"/{container}", headers={
            "X-Container-Sync-To": f"//{REALM}/{CLUSTER}/{ACCOUNT}/{target}", "X-Container-Sync-Key": key}),
            f"setting sync {container} -> {target}")

    def stop_sync(self, container: str) -> None:
        self._ok(self.request("POST", f"/{container}", headers={"X-Remove-Container-Sync-To": "x",
                                                               "X-Remove-Container-Sync-Key": "x"}),
                 f"removing sync from {container}")

    def run_container_sync(self) -> str:
        """One pass of Swift's own container-sync daemon (`swift-container-sync … once`) over every container
        with sync configured; returns its log."""
        done = subprocess.run([SWIFT_PYTHON, str(SWIFT_BIN / "swift-container-sync"),
                               str(self.swift_dir / "container-server.conf"), "once", "-v"], capture_output=True,
                              text=True, timeout=300, env=_swift_env(), stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise SwiftError(f"swift-container-sync failed ({done.returncode}): {done.stderr[-2000:]}")
        return done.stdout + done.stderr


def _swift_env() -> Dict[str, str]:
    """Swift's processes run on Debian's python3 and its modules, never a venv's."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    return env


@dataclass(frozen=True)
class SyncIncident:
    """What `SwiftRegistry.replay_sync_incident` did and saw."""

    mirror: str
    mirrored: int  # objects in the mirror after the first sync pass
    segments: List[Tuple[str, int]]  # the blob's segments before
    deleted: List[Tuple[str, int]]  # deleted in the mirror
    left: List[Tuple[str, int]]  # the blob's segments in the registry's container after the second pass
    first_pass: str  # the sync daemon's logs
    second_pass: str


class SwiftRegistry(ObjectStoreRegistry):
    """docker-registry on 127.0.0.1 storing into `container` of `cluster`, in one of MODES:

    - plain: no blob-descriptor cache, no redirects: every HEAD and GET asks Swift;
    - cache: `storage.cache.blobdescriptor: inmemory` (what Debian's default config enables): once a blob was
      seen, HEAD answers and GET's Content-Length come from memory, whatever Swift holds now;
    - redirect: blob GETs (and HEADs) answered with a 307 to a Swift temp URL (container key, GET).
    """

    def __init__(self, workdir: Path, cluster: SwiftCluster, container: str, *, mode: str = "plain",
                 chunksize: int = CHUNK_SIZE, config: Optional[dict] = None, port: Optional[int] = None):
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is not one of {MODES}")
        super().__init__(workdir, config=config, port=port)
        self.cluster = cluster
        self.container = container
        self.mode = mode
        self.chunksize = chunksize

    def config(self) -> dict:
        config = super().config()
        swift = {"authurl": self.cluster.auth_url, "username": USER, "password": KEY, "container": self.container,
                 "chunksize": self.chunksize}
        storage: dict = {key: value for key, value in config["storage"].items() if key != "filesystem"}
        storage["swift"] = swift
        if self.mode == "redirect":
            # the driver reads methods from Swift's /info when it can; these are its fallbacks
            swift.update({"secretkey": TEMPURL_KEY, "tempurlcontainerkey": True, "tempurlmethods": ["GET"]})
            storage["redirect"] = {"disable": False}
        else:
            storage["redirect"] = {"disable": True}
        if self.mode == "cache":
            storage["cache"] = {"blobdescriptor": "inmemory"}
        config["storage"] = storage
        return config

    def start(self, wait: float = 30.0) -> SwiftRegistry:
        if self.mode == "redirect":
            self.cluster.set_account_tempurl_key(TEMPURL_KEY)
        super().start(wait)
        return self

    def __enter__(self) -> SwiftRegistry:
        return self.start()

    def clone(self, workdir: Path, **kwargs) -> LocalRegistry:
        raise NotImplementedError("use SwiftLab.registry(): containers are cloned in Swift")

    # -- the Swift layout ------------------------------------------------------------------------------

    @classmethod
    def data_object(cls, digest: str) -> str:
        """The object holding a blob: for an uploaded layer or config, a DLO manifest over its segments."""
        return f"files/{cls.object_name(digest)}"

    def segments(self, digest: str) -> List[Tuple[str, int]]:
        """(object name, bytes) of each segment of a blob, in order."""
        response = self.cluster.head_object(self.container, self.data_object(digest))
        manifest = response.headers.get("X-Object-Manifest")
        if not manifest:
            raise SwiftError(f"{digest} is not a segmented object in {self.container} ({response.status_code})")
        container, prefix = manifest.split("/", 1)
        return [(obj["name"], obj["bytes"]) for obj in sorted(self.cluster.list_objects(container, prefix),
                                                               key=lambda o: o["name"])]

    # -- damage, in Swift ------------------------------------------------------------------------------

    def truncate_segment(self, digest: str, index: int, keep: int) -> None:
        name, _ = self.segments(digest)[index]
        self.cluster.put_object(self.container, name, self.cluster.get_object(self.container, name)[:keep])

    def garble_segment(self, digest: str, index: int) -> None:
        """Same length, other bytes."""
        name, size = self.segments(digest)[index]
        self.cluster.put_object(self.container, name, random.Random(name).randbytes(size))

    def delete_segments(self, digest: str, indexes: Optional[Sequence[int]] = None) -> List[str]:
        """Delete some (default: all) segments of a blob; returns their names."""
        segments = self.segments(digest)
        names = [segments[i][0] for i in (range(len(segments)) if indexes is None else indexes)]
        for name in names:
            self.cluster.delete_object(self.container, name)
        return names

    def truncate_blob(self, digest: str, keep: int) -> None:
        offset = 0
        for index, (name, size) in enumerate(self.segments(digest)):
            if offset >= keep:
                self.cluster.delete_object(self.container, name)
            elif offset + size > keep:
                self.truncate_segment(digest, index, keep - offset)
            offset += size

    def flip_byte(self, digest: str, offset: int = 0) -> None:
        for name, size in self.segments(digest):
            if offset < size:
                data = bytearray(self.cluster.get_object(self.container, name))
                data[offset] ^= 0xFF
                self.cluster.put_object(self.container, name, bytes(data))
                return
            offset -= size
        raise ValueError("offset beyond the blob")

    def replay_sync_incident(self, digest: str, keep: int = 1) -> SyncIncident:
        """The incident: this registry's container and a mirror synced both ways by Swift's container-sync
        daemon; the mirror is being deleted, and its deletion has reached the segments of `digest` after the
        first `keep` when the daemon runs again, carrying those deletes into this container."""
        cluster = self.cluster
        mirror = f"{self.container}-mirror"
        cluster.create_container(mirror)
        cluster.sync_to(self.container, mirror)
        cluster.sync_to(mirror, self.container)
        first_pass = cluster.run_container_sync()
        mirrored = len(cluster.list_objects(mirror))
        segments = self.segments(digest)
        for name, _ in segments[keep:]:
            cluster.delete_object(mirror, name)
        second_pass = cluster.run_container_sync()
        return SyncIncident(mirror, mirrored, segments, segments[keep:], self.segments(digest), first_pass,
                            second_pass)

    def delete_blob(self, digest: str) -> None:
        """The blob's object (the DLO manifest) deleted; its segments stay, orphaned."""
        self.cluster.delete_object(self.container, self.data_object(digest))


class SwiftLab:
    """A cluster, a template container seeded once through a registry, and fresh copies of it for each use."""

    def __init__(self, cluster: SwiftCluster, workdir: Path, *, chunksize: int = CHUNK_SIZE):
        self.cluster = cluster
        self.workdir = Path(workdir)
        self.chunksize = chunksize
        self.template = "registry-template"
        self._count = 0

    def seed(self, seeder: Callable[[SwiftRegistry], T]) -> T:
        """Start a plain registry on the template container and call `seeder(registry)`; returns its result."""
        with SwiftRegistry(self.workdir / "template", self.cluster, self.template,
                           chunksize=self.chunksize) as registry:
            return seeder(registry)

    def registry(self, mode: str = "plain", *, workdir: Optional[Path] = None, **kwargs) -> SwiftRegistry:
        """A started registry in `mode` on a fresh copy of the template container (the caller stops it)."""
        self._count += 1
        container = f"registry-{self._count}-{mode}"
        self.cluster.clone_container(self.template, container)
        where = workdir or self.workdir / container
        if where.exists():
            shutil.rmtree(where)
        kwargs.setdefault("chunksize", self.chunksize)
        return SwiftRegistry(where, self.cluster, container, mode=mode, **kwargs).start()

