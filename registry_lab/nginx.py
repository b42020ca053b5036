"""Debian's nginx on 127.0.0.1 as a caching reverse proxy in front of a lab registry: the 2025 incident's cache.

`CachingProxy` runs nginx in the foreground (`daemon off`) with a private prefix, config, cache and logs under a
work dir, on a free port, and stops it by PID. It is configured as a site would put a cache in front of a
registry: blob GETs by digest are cached (blobs are content-addressed, so the key is the digest alone and one
entry serves every repository); manifests, tags and everything else pass through uncached.

nginx keeps a cached response in one file, `<cache>/<last hex char>/<2 hex chars before it>/<md5 of the key>`
(levels=1:2): a binary header, the key, the upstream's response headers, then the body. The damage helpers
change the body in place and leave the header (and the stored Content-Length) as nginx wrote it: what a
failing disk, or a full filesystem under a cache that kept writing, leaves behind.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional

import requests

from .registry import LocalRegistry, OnLoopback, free_port, stop_process

NGINX_BINARY = os.environ.get("NGINX_BINARY", "/usr/sbin/nginx")
#: What each request's access-log line carries; `cache` is nginx's $upstream_cache_status (HIT, MISS, ...).
LOG_FORMAT = '"$request" $status $body_bytes_sent cache=$upstream_cache_status'
BLOB_PATH = r"^/v2/.+/blobs/(?<digest>sha256:[0-9a-f]{64})$"

CONFIG = """\
daemon off;
master_process on;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
{user}
events {{ worker_connections 256; }}

http {{
    log_format cache '{log_format}';
    access_log {dir}/access.log cache;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    sendfile on;
    # the blob cache: up to 1 GiB, entries kept a week
    proxy_cache_path {dir}/cache levels=1:2 keys_zone=blobs:10m max_size=1g inactive=7d use_temp_path=off;

    upstream registry {{
        server {upstream};
        keepalive 8;
    }}

    server {{
        listen {host};
        client_max_body_size 0;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $http_host;
        proxy_buffering on;

        # blobs by digest: content-addressed, so cached under the digest alone, for every repository
        location ~ "{blob_path}" {{
            proxy_pass http://registry;
            proxy_cache blobs;
            proxy_cache_key $digest;
            proxy_cache_valid 200 7d;
            proxy_cache_lock on;
            add_header X-Cache-Status $upstream_cache_status always;
        }}

        # manifests by tag or digest, listings, /v2/ itself: never cached (a tag moves)
        location /v2/ {{
            proxy_pass http://registry;
        }}
    }}
}}
"""


class NginxError(RuntimeError):
    pass


class CachingProxy(OnLoopback):
    """nginx caching the blobs of `upstream` (a started LocalRegistry); a context manager that always stops it."""

    def __init__(self, workdir: Path, upstream: LocalRegistry, *, port: Optional[int] = None):
        self.workdir = Path(workdir)
        self.upstream = upstream
        self.port = port or free_port()
        self.cache_dir = self.workdir / "cache"
        self.access_log_path = self.workdir / "access.log"
        self.error_log_path = self.workdir / "error.log"
        self.process: Optional[subprocess.Popen] = None

    def config(self) -> str:
        # as root, nginx would hand its workers to `nobody`, who cannot enter a private temp dir
        user = "user root root;" if os.geteuid() == 0 else ""
        return CONFIG.format(dir=self.workdir, host=self.host, upstream=self.upstream.host, user=user,
                             log_format=LOG_FORMAT, blob_path=BLOB_PATH)

    def start(self, wait: float = 10.0) -> CachingProxy:
        for sub in ("tmp", "cache"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / "nginx.conf"
        config_path.write_text(self.config())
        with open(self.workdir / "nginx.out", "ab") as out:
            self.process = subprocess.Popen([NGINX_BINARY, "-p", str(self.workdir), "-c", str(config_path),
                                             "-e", str(self.error_log_path)],
                                            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        until = time.monotonic() + wait
        while time.monotonic() < until:
            if self.process.poll() is not None:
                raise NginxError(f"nginx exited with {self.process.returncode}: {self.log_tail()}")
            try:
                requests.get(f"{self.url}/v2/", timeout=1).close()
                return self
            except requests.ConnectionError:
                time.sleep(0.05)
        self.stop()
        raise NginxError(f"nginx did not answer on {self.url} within {wait}s: {self.log_tail()}")

    def stop(self) -> None:
        """SIGQUIT: a graceful stop of master and worker; SIGKILL for the master if it lingers."""
        stop_process(self.process, first=signal.SIGQUIT)
        self.process = None

    def __enter__(self) -> CachingProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_tail(self, chars: int = 2000) -> str:
        texts = [path.read_text(errors="replace") for path in (self.error_log_path, self.workdir / "nginx.out")
                 if path.exists()]
        return "\n".join(texts)[-chars:]

    # -- the cache on disk ----------------------------------------------------------------------------

    def cache_path(self, digest: str) -> Path:
        """Where nginx keeps the entry for `digest`: the md5 of its key, under levels=1:2."""
        name = hashlib.md5(digest.encode()).hexdigest()
        return self.cache_dir / name[-1] / name[-3:-1] / name

    def cached_body_offset(self, digest: str, size: int) -> int:
        """Where the body starts in the entry of a blob of `size` bytes (it is the file's tail)."""
        path = self.cache_path(digest)
        if not path.exists():
            raise NginxError(f"nginx has no cache entry for {digest} ({path})")
        offset = path.stat().st_size - size
        if offset <= 0 or b"KEY: " + digest.encode() not in path.read_bytes()[:offset]:
            raise NginxError(f"{path} does not hold the whole {size}-byte body of {digest}")
        return offset

    def alter_cached(self, digest: str, size: int, offset: int = 0) -> None:
        """Change one byte of the cached body in place: same size, same headers, wrong bytes."""
        position = self.cached_body_offset(digest, size) + offset
        with open(self.cache_path(digest), "r+b") as handle:
            handle.seek(position)
            byte = handle.read(1)
            handle.seek(position)
            handle.write(bytes([byte[0] ^ 0xFF]))

    def cut_cached(self, digest: str, size: int, keep: int) -> None:
        """Cut the cached body to its first `keep` bytes in place (a full filesystem's leftover); the header
        still says the whole size."""
        position = self.cached_body_offset(digest, size) + keep
        with open(self.cache_path(digest), "r+b") as handle:
            handle.truncate(position)

    def purge(self, digest: str) -> None:
        """Delete the entry, as the runbook does: nginx notices at the next request and fetches it again."""
        self.cache_path(digest).unlink()

    # -- what nginx saw -------------------------------------------------------------------------------

    def access_log(self) -> List[Dict[str, str]]:
        """Every request nginx logged: method, path, status, bytes sent, cache status ('' when not cached)."""
        pattern = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[0-9.]+" (?P<status>\d+) (?P<sent>\d+) '
                             r'cache=(?P<cache>\S*)')
        if not self.access_log_path.exists():
            return []
        return [match.groupdict() for match in map(pattern.search, self.access_log_path.read_text().splitlines())
                if match]

    def cache_statuses(self, digest: str) -> List[str]:
        """The $upstream_cache_status of every GET of `digest`, in order."""
        return [entry["cache"] for entry in self.access_log()
                if entry["method"] == "GET" and entry["path"].endswith(f"/blobs/{digest}")]


def nginx_available() -> Optional[str]:
    """None when this machine has nginx, else what is missing."""
    if not shutil.which(NGINX_BINARY):
        return f"{NGINX_BINARY} is missing (apt-get install nginx)"
    return None
