"""RegistryClient: the registry HTTP API (ping, manifests, listing pages, blob GET and HEAD). Knows HTTP, not Nagios.

The way there (session, TLS, redirects, auth, statuses as errors) is transport.py; retries are retry.py.
"""

from __future__ import annotations

import functools
import http.client
import json
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Tuple
from urllib.parse import urljoin, urlsplit

import requests
import urllib3.exceptions

from .auth import Credentials, RegistryAuth
from .deadline import Deadline
from .errors import (
    BlobUnknown,
    HTTPStatusError,
    InternalError,
    ManifestInvalid,
    ManifestUnknown,
    ShortBody,
    SizeMismatch,
    Stalled,
    TransportError,
)
from .manifests import ACCEPT, MAX_MANIFEST_BYTES, OCI_INDEX
from .reference import Digest, validate_repository
from .retry import Retrier, RetryPolicy
from .transport import READ_TIMEOUT, Peer, TLSOptions, Transport, plain_reason, raise_for_status, redirected


@dataclass(frozen=True)
class FetchedManifest:
    body: bytes
    content_type: str
    declared_digest: Optional[str]  # the registry's Docker-Content-Digest, if it sent one


#: How bodies are read as their bytes arrive (`read_path`): urllib3's public read1 (urllib3 2.2 and later),
#: or, where urllib3 has none (1.26 in Debian bookworm), the one shim below.
PUBLIC_READ1 = "urllib3 HTTPResponse.read1"
LEGACY_SHIM = "http.client read1 under urllib3 without read1 (Urllib3WithoutRead1)"


class Urllib3WithoutRead1:
    """The shim for urllib3 before 2.2 (1.26 in Debian bookworm), which has no read1: read the http.client
    response under urllib3's (its private `_fp`, the one place the package touches urllib3's internals), and
    hand the drained connection back to the pool, which urllib3's own read would have done; closing the
    response instead closes the connection, and every next request would pay a new one."""

    def __init__(self, raw: Any):
        fp: Any = getattr(raw, "_fp", None)
        if not callable(getattr(fp, "read1", None)):  # no way to read what arrived without waiting for more
            raise InternalError(f"urllib3 {urllib3.__version__}: no read1, and no http.client response under it")
        self.raw, self.fp = raw, fp

    def __call__(self, size: int) -> bytes:
        chunk = self.fp.read1(size)
        if not chunk and isinstance(self.fp, http.client.HTTPResponse) and (self.fp.isclosed() or
                                                                             self.fp.length == 0):
            self.fp.close()  # read1 leaves a drained response open; read() would have closed it here
            self.raw.release_conn()
        return chunk


def read_path(raw: Any) -> str:
    """Which way `raw` (a urllib3 response) is read: PUBLIC_READ1 or LEGACY_SHIM."""
    return PUBLIC_READ1 if callable(getattr(raw, "read1", None)) else LEGACY_SHIM


@dataclass(frozen=True)
class ReferrersPage:
    """One page of the referrers API: its bytes (an OCI index), the next page's path, the filters it applied."""

    body: bytes
    content_type: str
    next_path: Optional[str]
    filters_applied: Tuple[str, ...] = ()


class BlobResponse:
    """An open blob body, read raw (never decoded) and never beyond `limit` bytes (a verify.BlobStream).

    Each read hands over what has arrived, up to its size (one read of the socket): when the body then
    stalls, nothing that came is lost (a read of `size` bytes would drop its partial chunk with its timeout).
    """

    def __init__(self, response: requests.Response, limit: Optional[int], peer: Peer):
        self._response = response
        raw: Any = response.raw  # urllib3's HTTPResponse (the request streams)
        self._read_some: Callable[[int], bytes] = (
            functools.partial(raw.read1, decode_content=False) if read_path(raw) == PUBLIC_READ1
            else Urllib3WithoutRead1(raw))
        self.limit = limit
        self.peer = peer  # who is sending it, for a connection lost on the way
        self.received = 0
        self.status = response.status_code
        self.content_range = response.headers.get("Content-Range")  # on a 206 answering a Range
        header = response.headers.get("Content-Length")
        self.content_length = int(header) if header and header.isdigit() else None
        encoding = response.headers.get("Content-Encoding", "").strip().lower()
        self.content_encoding = None if encoding in ("", "identity") else encoding

    def read(self, size: int) -> bytes:
        if self.limit is not None:
            size = min(size, self.limit - self.received)
            if size <= 0:
                return b""
        try:
            chunk = self._read_some(size)
        except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as exc:
            # urllib3's read wraps what http.client raised: ProtocolError("Connection broken", IncompleteRead)
            cause = next((a for a in exc.args if isinstance(a, BaseException)), exc)
            short = cause if isinstance(cause, http.client.IncompleteRead) else None
            if short is not None:  # the body ended before its Content-Length
                # urllib3 2 counts every byte of the response so far; http.client hands over the lost bytes
                got = short.partial if isinstance(short.partial, int) else self.received + len(short.partial)
                raise ShortBody(f"body ended after {got} bytes, before its Content-Length", max(got, self.received)
                                ) from None
            if isinstance(exc, (urllib3.exceptions.ReadTimeoutError, TimeoutError)):  # nothing came for a while
                raise Stalled(f"stalled after {self.received} bytes", self.received) from None
            raise TransportError(self.peer.failed(plain_reason(exc), after=self.received)) from None
        self.received += len(chunk)
        return chunk


def _read_capped(response: requests.Response, what: str, peer: Peer) -> bytes:
    """A manifest or listing body, read raw; past the 4 MiB cap it is refused, not read on."""
    body = BlobResponse(response, MAX_MANIFEST_BYTES + 1, peer)
    data = b"".join(iter(lambda: body.read(1 << 20), b""))
    if len(data) > MAX_MANIFEST_BYTES:
        raise SizeMismatch(f"{what} exceeds the {MAX_MANIFEST_BYTES // 1048576} MiB cap")
    return data


class RegistryClient:
    """One registry's API over its transport; every request is bounded by the run's deadline."""

    def __init__(self, base_url: str, deadline: Deadline, *, workers: int = 4,
                 retry: RetryPolicy = RetryPolicy(), tls: TLSOptions = TLSOptions(),
                 credentials: Optional[Credentials] = None, connect_to: Optional[str] = None):
        self.transport = Transport(base_url, deadline, workers=workers, tls=tls, connect_to=connect_to)
        self.base_url = self.transport.base_url
        self.deadline = deadline
        self.retrier = Retrier(retry, deadline)
        self.auth = RegistryAuth(self.base_url, credentials or Credentials(), self.transport)

    @property
    def retries(self) -> int:
        return self.retrier.count

    def _url(self, repository: str, kind: str, reference: str) -> str:
        return f"{self.base_url}/v2/{validate_repository(repository)}/{kind}/{reference}"

    @property
    def _via(self) -> str:
        """` via HOST:PORT` when --connect-to sends this registry's requests to one backend."""
        return f" via {self.transport.connect_to}" if self.transport.connect_to else ""

    def _peer(self, response: requests.Response) -> Peer:
        """Who sent `response`: the registry (via the --connect-to backend), or the storage it redirected to."""
        return self.transport.peer(response.url or self.base_url, redirected(response))

    def _send(self, method: str, url: str, headers: dict, stream: bool = False) -> requests.Response:
        return self.transport.send(method, url, self.auth, headers=headers, stream=stream)

    def ping(self) -> None:
        """GET /v2/: is this a registry at all? 401 is fine here (the auth flow answers it later)."""
        url = f"{self.base_url}/v2/"

        def get() -> None:
            response = self._send("GET", url, {})
            if response.status_code != 401:
                raise_for_status(response, f"GET {url}{self._via}", HTTPStatusError)
            response.close()

        self.retrier.run(get, url)

    def get_manifest(self, repository: str, reference: str) -> FetchedManifest:
        url = self._url(repository, "manifests", reference)

        def fetch() -> FetchedManifest:
            response = self._send("GET", url, {"Accept": ACCEPT, "Accept-Encoding": "identity"}, stream=True)
            with response:
                raise_for_status(response, "", ManifestUnknown)
                data = _read_capped(response, "manifest", self._peer(response))
            return FetchedManifest(data, response.headers.get("Content-Type", ""),
                                   response.headers.get("Docker-Content-Digest"))

        manifest, _ = self.retrier.run(fetch, f"manifest {repository}:{reference}")
        return manifest

    def get_page(self, path: str) -> Tuple[dict, Optional[str]]:
        """One page of a JSON listing (catalog, tags) and the path of the next page from its Link header."""
        where = path.split("?")[0]

        def fetch() -> Tuple[dict, Optional[str]]:
            response = self._send("GET", f"{self.base_url}{path}", {"Accept": "application/json"}, stream=True)
            with response:
                raise_for_status(response, f"GET {where}", ManifestUnknown)
                data = _read_capped(response, f"listing {where}", self._peer(response))
                link = response.links.get("next", {}).get("url")
            try:
                page = json.loads(data)
            except ValueError:
                raise ManifestInvalid(f"listing {where} is not valid JSON") from None
            if not isinstance(page, dict):
                raise ManifestInvalid(f"listing {where}: expected a JSON object")
            return page, self._next_page(path, link, f"listing {where}")

        listing, _ = self.retrier.run(fetch, f"GET {path}")
        return listing

    def _next_page(self, path: str, link: Optional[str], what: str) -> Optional[str]:
        """The path of a Link header's next page: on this registry and under /v2/, or refused."""
        if not link:
            return None
        target = urlsplit(urljoin(f"{self.base_url}{path}", link))
        if not self.transport.same_origin(target.geturl()) or not target.path.startswith("/v2/"):
            raise ManifestInvalid(f"{what}: Link to another place refused")
        return target.path + (f"?{target.query}" if target.query else "")

    @staticmethod
    def referrers_path(repository: str, digest: Digest) -> str:
        """The path of the OCI 1.1 referrers API for `digest`, unfiltered: we want every referrer."""
        return f"/v2/{validate_repository(repository)}/referrers/{digest}"

    def get_referrers(self, path: str) -> ReferrersPage:
        """One page of the referrers API (from referrers_path or a previous page's `next`): an index, capped at
        4 MiB like every manifest. A 404 raises ManifestUnknown: the registry has no such API (or subject)."""
        where = path.split("?")[0]

        def fetch() -> ReferrersPage:
            response = self._send("GET", f"{self.base_url}{path}",
                                  {"Accept": OCI_INDEX, "Accept-Encoding": "identity"}, stream=True)
            with response:
                raise_for_status(response, f"GET {where}", ManifestUnknown)
                data = _read_capped(response, f"referrers page {where}", self._peer(response))
                link = response.links.get("next", {}).get("url")
            filters = tuple(f.strip() for f in response.headers.get("OCI-Filters-Applied", "").split(",") if f.strip())
            return ReferrersPage(data, response.headers.get("Content-Type", ""),
                                 self._next_page(path, link, f"referrers page {where}"), filters)

        page, _ = self.retrier.run(fetch, f"GET {where}")
        return page

    @contextmanager
    def open_blob(self, repository: str, digest: Digest, limit: Optional[int], offset: int = 0,
                  stall: float = READ_TIMEOUT) -> Iterator[BlobResponse]:
        """GET a blob with identity encoding; the body is read raw, at most `limit` bytes. Not retried here:
        transfer.py resumes or retries the whole transfer. A wait of `stall` seconds for the answer, or for any
        byte of the body, raises Stalled.

        With `offset`, asks for the rest from there (`Range: bytes=offset-`): the caller looks at the answer's
        status (206, or 200 from a server that ignores Range); a 416 is handed over too, not raised, since
        it says where the blob ends.
        """
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        response = self.transport.send("GET", self._url(repository, "blobs", str(digest)), self.auth,
                                       headers=headers, stream=True, read_timeout=stall)
        try:
            if not (offset and response.status_code == 416):
                raise_for_status(response, "", BlobUnknown)
            yield BlobResponse(response, limit, self._peer(response))
        finally:
            response.close()

    def head_blob(self, repository: str, digest: Digest) -> Optional[int]:
        """HEAD a blob: confirms this repository still links it (not proof of its bytes); returns its length."""

        def head() -> Optional[int]:
            response = self._send("HEAD", self._url(repository, "blobs", str(digest)),
                                  {"Accept-Encoding": "identity"})
            with response:
                raise_for_status(response, f"HEAD in {repository}", BlobUnknown)
                length = response.headers.get("Content-Length")
            return int(length) if length and length.isdigit() else None

        size, _ = self.retrier.run(head, f"HEAD {digest.short()} in {repository}")
        return size
