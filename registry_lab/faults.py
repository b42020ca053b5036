"""A fault-injecting proxy on 127.0.0.1 for the hardening tests: put it in front of a real registry, add
per-test rules, and it resets, stalls, rewrites or invents answers; everything else passes through unchanged.

    with FaultProxy(registry.url) as proxy:
        proxy.add(r"GET /v2/base/golden/blobs/", ResetAfter(256 << 10))   # once, then pass-through
        proxy.add(r"GET /v2/.*/blobs/", Respond(503), times=2)
        ... run the plugin against proxy.url ...
        assert proxy.methods() <= {"GET", "HEAD"}

A rule matches "METHOD /path?query" by regular expression; the first rule with hits left wins; `times=None`
fires forever. The proxy speaks HTTP/1.0 to the client (a connection a request, close-delimited bodies when
a fault drops Content-Length) and serves https with `tls=(cert, key)` from CertificateAuthority.issue.
Every wait is bounded and ends when the proxy stops.
"""

from __future__ import annotations

import gzip
import http.client
import json
import re
import socket
import struct
import threading
import zlib
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import AbstractSet, Callable, Dict, Iterable, List, Optional, Set, Tuple, Union
from urllib.parse import urlsplit

from .secure import LoopbackServer

#: Headers that belong to one connection, not to the message: never forwarded.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                        "transfer-encoding", "upgrade", "host"})
PIPE_CHUNK = 64 << 10
MAX_STALL = 60.0  # no fault holds a connection longer than this, whatever a test asks


class Exchange:
    """One request passing through the proxy: what a fault can look at and do."""

    def __init__(self, proxy: FaultProxy, handler: BaseHTTPRequestHandler):
        self.proxy = proxy
        self.handler = handler
        self.method = handler.command
        self.path = handler.path
        self.headers: Dict[str, str] = {k: v for k, v in handler.headers.items() if k.lower() not in HOP_BY_HOP}
        length = handler.headers.get("Content-Length")
        self.body = handler.rfile.read(int(length)) if length and length.isdigit() else b""

    # -- the real registry behind --

    def upstream(self) -> http.client.HTTPResponse:
        """Send the request on to the registry; the response is read raw (never decoded)."""
        parts = urlsplit(self.proxy.upstream_url)
        connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=30)
        headers = dict(self.headers)
        if self.proxy.strip_range:
            headers = {k: v for k, v in headers.items() if k.lower() != "range"}
        connection.request(self.method, self.path, body=self.body or None, headers=headers)
        return connection.getresponse()

    # -- answering the client --

    def send_head(self, status: int, headers: Iterable[Tuple[str, str]]) -> None:
        self.handler.send_response(status)
        for key, value in headers:
            if key.lower() not in HOP_BY_HOP:
                self.handler.send_header(key, value)
        self.handler.send_header("Connection", "close")
        self.handler.end_headers()
        self.handler.close_connection = True

    def write(self, data: bytes) -> None:
        if self.method != "HEAD" and data:
            self.handler.wfile.write(data)

    def pipe(self, response: http.client.HTTPResponse, limit: Optional[int] = None) -> int:
        """Copy up to `limit` body bytes (all when None) from the registry; returns how many."""
        sent = 0
        while limit is None or sent < limit:
            chunk = response.read(PIPE_CHUNK if limit is None else min(PIPE_CHUNK, limit - sent))
            if not chunk:
                break
            self.write(chunk)
            sent += len(chunk)
        return sent

    def passthrough(self, *, drop: AbstractSet[str] = frozenset(), add: Iterable[Tuple[str, str]] = ()) -> None:
        response = self.upstream()
        self.send_head(response.status, [(k, v) for k, v in response.getheaders() if k.lower() not in drop] +
                       list(add))
        self.pipe(response)
        response.close()

    def reset(self) -> None:
        """Abort the connection with a TCP RST (SO_LINGER 0), as a dying load balancer does."""
        sock = self.handler.connection
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        except OSError:
            pass

    def stall(self, seconds: float) -> None:
        self.proxy.stopping.wait(min(seconds, MAX_STALL))


Fault = Callable[[Exchange], None]


@dataclass
class Rule:
    pattern: re.Pattern[str]
    fault: Fault
    times: Optional[int] = 1  # None: every matching request
    hits: int = 0

    def take(self, line: str) -> bool:
        if (self.times is not None and self.hits >= self.times) or not self.pattern.search(line):
            return False
        self.hits += 1
        return True


class FaultProxy(LoopbackServer):
    """A pass-through proxy to `upstream_url` (a real registry) that applies the faults its rules select."""

    def __init__(self, upstream_url: str, *, tls: Optional[Tuple[Path, Path]] = None):
        self.upstream_url = upstream_url.rstrip("/")
        self.rules: List[Rule] = []
        self.strip_range = False  # True: behave like a server without Range support
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        super().__init__(self._handle, tls=tls)

    def add(self, pattern: str, fault: Fault, times: Optional[int] = 1) -> Rule:
        rule = Rule(re.compile(pattern), fault, times)
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()
        self.requests.clear()

    def methods(self) -> Set[str]:
        return {r["method"] for r in self.requests}

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        exchange = Exchange(self, handler)
        line = f"{exchange.method} {exchange.path}"
        with self._lock:
            rule = next((r for r in self.rules if r.take(line)), None)
        try:
            (rule.fault if rule else self.admit(exchange) or passthrough)(exchange)
        except (OSError, http.client.HTTPException):
            pass  # the client hung up (that is what it should do on a bad answer), or the registry went away

    def admit(self, exchange: Exchange) -> Optional[Fault]:
        """What a request no rule selected gets instead of the pass-through, if anything: a subclass standing in
        for a server's own checks answers here (s3.S3Front)."""
        return None

    def __exit__(self, *exc):
        self.stopping.set()
        super().__exit__(*exc)


# -- faults ----------------------------------------------------------------------------------------------

def passthrough(exchange: Exchange) -> None:
    exchange.passthrough()


Body = Union[bytes, Callable[[], Iterable[bytes]]]


class Respond:
    """Answer without asking the registry: a status, headers and a body (bytes, or a function returning an
    iterable of chunks, sent close-delimited without Content-Length)."""

    def __init__(self, status: int, body: Body = b"", headers: Optional[Dict[str, str]] = None):
        self.status, self.body, self.headers = status, body, headers or {}

    def __call__(self, exchange: Exchange) -> None:
        headers = list(self.headers.items())
        if isinstance(self.body, bytes):
            headers.append(("Content-Length", str(len(self.body))))
        exchange.send_head(self.status, headers)
        if isinstance(self.body, bytes):
            exchange.write(self.body)
            return
        for chunk in self.body():
            if exchange.proxy.stopping.is_set():
                return
            exchange.write(chunk)


def error_body(code: str, message: str = "") -> bytes:
    return json.dumps({"errors": [{"code": code, "message": message or code.lower()}]}).encode()


def unavailable(status: int = 503, retry_after: Optional[str] = None) -> Respond:
    headers = {"Content-Type": "application/json"}
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    code = "TOOMANYREQUESTS" if status == 429 else "UNAVAILABLE"
    return Respond(status, error_body(code), headers)


class ResetAfter:
    """Headers and the first `count` body bytes from the registry, a pause, then a TCP reset.

    The pause lets the client read what was sent: a reset makes the kernel drop data the client has not read
    yet, so without it how much arrives would depend on how busy the machine is."""

    def __init__(self, count: int, pause: float = 0.5):
        self.count, self.pause = count, pause

    def __call__(self, exchange: Exchange) -> None:
        response = exchange.upstream()
        exchange.send_head(response.status, response.getheaders())
        exchange.pipe(response, self.count)
        response.close()
        if self.count:
            exchange.stall(self.pause)
        exchange.reset()


class CutAt:
    """The registry's headers (Content-Length and all), the body up to byte `position` of the blob, then a clean
    close: what a warm cache serves in front of a storage backend that lost the rest. A 206 answering a Range
    is cut at the same place of the blob, so resuming gets no further."""

    def __init__(self, position: int):
        self.position = position

    def __call__(self, exchange: Exchange) -> None:
        response = exchange.upstream()
        start = re.match(r"bytes (\d+)-", response.getheader("Content-Range") or "")
        exchange.send_head(response.status, response.getheaders())
        exchange.pipe(response, max(0, self.position - (int(start.group(1)) if start else 0)))
        response.close()


class StallAfter:
    """Headers and the first `count` body bytes, then silence for `seconds` (bounded), then a close."""

    def __init__(self, count: int, seconds: float = MAX_STALL):
        self.count, self.seconds = count, seconds

    def __call__(self, exchange: Exchange) -> None:
        response = exchange.upstream()
        exchange.send_head(response.status, response.getheaders())
        exchange.pipe(response, self.count)
        response.close()
        exchange.stall(self.seconds)


class Silence:
    """Accept the request and say nothing at all for `seconds` (bounded), then close."""

    def __init__(self, seconds: float = MAX_STALL):
        self.seconds = seconds

    def __call__(self, exchange: Exchange) -> None:
        exchange.stall(self.seconds)


class Drip:
    """Headers, then one body byte every `interval` seconds: a read timeout never fires, only a deadline helps."""

    def __init__(self, interval: float = 0.2, seconds: float = MAX_STALL):
        self.interval, self.seconds = interval, seconds

    def __call__(self, exchange: Exchange) -> None:
        response = exchange.upstream()
        exchange.send_head(response.status, response.getheaders())
        for _ in range(int(min(self.seconds, MAX_STALL) / self.interval)):
            byte = response.read(1)
            if not byte or exchange.proxy.stopping.wait(self.interval):
                break
            exchange.write(byte)
        response.close()


class ClaimEncoding:
    """The registry's bytes unchanged, labelled `Content-Encoding: <encoding>` (a hop that mislabels)."""

    def __init__(self, encoding: str = "gzip"):
        self.encoding = encoding

    def __call__(self, exchange: Exchange) -> None:
        exchange.passthrough(drop={"content-encoding"}, add=[("Content-Encoding", self.encoding)])


class Gzip:
    """Really gzips the body despite `Accept-Encoding: identity`, as a misconfigured CDN or proxy does."""

    def __call__(self, exchange: Exchange) -> None:
        response = exchange.upstream()
        body = gzip.compress(response.read(), mtime=0)
        response.close()
        exchange.send_head(response.status, [(k, v) for k, v in response.getheaders()
                                             if k.lower() not in ("content-length", "content-encoding")] +
                           [("Content-Encoding", "gzip"), ("Content-Length", str(len(body)))])
        exchange.write(body)


_BOMBS: Dict[int, bytes] = {}


def gzip_bomb(inflated: int) -> bytes:
    """A gzip stream of `inflated` zero bytes (about 1000 : 1), built in bounded pieces and cached."""
    if inflated not in _BOMBS:
        compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
        zeros = bytes(1 << 20)
        parts = [compressor.compress(zeros) for _ in range(inflated >> 20)]
        parts.append(compressor.compress(bytes(inflated & ((1 << 20) - 1))))
        parts.append(compressor.flush())
        _BOMBS[inflated] = b"".join(parts)
    return _BOMBS[inflated]


class GzipBomb:
    """200 with `Content-Encoding: gzip` over a small body that inflates to `inflated` bytes."""

    def __init__(self, inflated: int = 1 << 30):
        self.inflated = inflated

    def __call__(self, exchange: Exchange) -> None:
        body = gzip_bomb(self.inflated)
        Respond(200, body, {"Content-Type": "application/octet-stream", "Content-Encoding": "gzip"})(exchange)


class Overlong:
    """The registry's body without its Content-Length, then `extra` more bytes, then silence until the proxy
    stops: a client that reads until the connection closes hangs; one that stops at size + 1 does not."""

    def __init__(self, extra: int = 4 << 20, seconds: float = MAX_STALL):
        self.extra, self.seconds = extra, seconds

    def __call__(self, exchange: Exchange) -> None:
        response = exchange.upstream()
        exchange.send_head(response.status, [(k, v) for k, v in response.getheaders()
                                             if k.lower() != "content-length"])
        exchange.pipe(response)
        response.close()
        junk = b"\xa5" * PIPE_CHUNK
        for _ in range(self.extra // PIPE_CHUNK):
            exchange.write(junk)
        exchange.stall(self.seconds)


class Redirect:
    """Answer with a redirect to `location` (a URL, or a function of the request path)."""

    def __init__(self, location: Union[str, Callable[[str], str]], status: int = 307):
        self.location, self.status = location, status

    def __call__(self, exchange: Exchange) -> None:
        target = self.location(exchange.path) if callable(self.location) else self.location
        Respond(self.status, b"", {"Location": target})(exchange)
