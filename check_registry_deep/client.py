"""RegistryClient: the registry HTTP API over one requests.Session. Knows HTTP, not Nagios."""

from __future__ import annotations

import email.utils
import http.client
import http.cookiejar
import json
import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, Optional, Tuple, TypeVar, Union
from urllib.parse import SplitResult, urljoin, urlsplit, urlunsplit

import requests
import tenacity
import urllib3.exceptions

from . import __version__
from .auth import NO_AUTH, Credentials, RegistryAuth
from .deadline import Deadline
from .errors import (
    AuthError,
    BlobUnknown,
    DeadlineExceeded,
    HTTPStatusError,
    ManifestInvalid,
    ManifestUnknown,
    RedirectError,
    RegistryError,
    ShortBody,
    SizeMismatch,
    TLSError,
    TransportError,
)
from .manifests import ACCEPT, MAX_MANIFEST_BYTES
from .reference import Digest, validate_repository

log = logging.getLogger(__name__)
T = TypeVar("T")

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 30.0
MAX_ERROR_BODY = 64 * 1024
MAX_REDIRECTS = 5
NOT_FOUND_CODES: Dict[type, str] = {BlobUnknown: "BLOB_UNKNOWN", ManifestUnknown: "MANIFEST_UNKNOWN"}


@dataclass(frozen=True)
class RetryPolicy:
    """Retries for transient faults only (connection errors, 408, 429, 5xx), always inside the deadline."""

    attempts: int = 3
    backoff: float = 0.5  # first wait; doubles each time, unless the server sends Retry-After
    max_wait: float = 10.0

    def wait_for(self, error: BaseException, attempt: int) -> float:
        """Seconds to wait before attempt `attempt + 1`: the server's Retry-After, else exponential backoff."""
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            return max(0.0, retry_after)
        return min(self.max_wait, self.backoff * 2 ** (attempt - 1))


@dataclass(frozen=True)
class TLSOptions:
    verify: Union[bool, str] = True  # False with --insecure, a CA bundle path with --ca-bundle
    cert: Optional[Tuple[str, str]] = None  # client certificate and key


class ConnectToAdapter(requests.adapters.HTTPAdapter):
    """Sends the registry's requests to another HOST:PORT (a datacenter's node, the origin behind a cache),
    keeping the Host header and, over TLS, the server name and the certificate check of the registry's name."""

    def __init__(self, address: str, origin: SplitResult, **kwargs):
        self.address = address
        self.origin = origin
        super().__init__(**kwargs)

    def init_poolmanager(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if self.origin.scheme == "https":
            kwargs.update(server_hostname=self.origin.hostname, assert_hostname=self.origin.hostname)
        super().init_poolmanager(*args, **kwargs)

    def send(self, request: requests.PreparedRequest, *args, **kwargs) -> requests.Response:  # type: ignore[override]
        parts = urlsplit(request.url or "")
        request.headers["Host"] = parts.netloc
        request.url = urlunsplit(parts._replace(netloc=self.address))
        return super().send(request, *args, **kwargs)


@dataclass(frozen=True)
class FetchedManifest:
    body: bytes
    content_type: str
    declared_digest: Optional[str]  # the registry's Docker-Content-Digest, if it sent one
    url: str


class BlobResponse:
    """An open blob body, read raw (never decoded) and never beyond `limit` bytes."""

    def __init__(self, response: requests.Response, limit: Optional[int]):
        self._response = response
        self.limit = limit
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
            chunk = self._response.raw.read(size, decode_content=False)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            short = next((a for a in getattr(exc, "args", ()) if isinstance(a, http.client.IncompleteRead)), None)
            if short is not None:  # the body ended before its Content-Length
                # urllib3 2 counts every byte of the response so far; http.client hands over the lost bytes
                got = short.partial if isinstance(short.partial, int) else self.received + len(short.partial)
                raise ShortBody(f"body ended after {got} bytes, before its Content-Length", max(got, self.received)
                                ) from None
            raise TransportError(f"connection broken after {self.received} bytes: {_reason(exc)}") from None
        self.received += len(chunk)
        return chunk


def _read_capped(response: requests.Response, what: str) -> bytes:
    """A manifest or listing body, read raw; past the 4 MiB cap it is refused, not read on."""
    body = BlobResponse(response, MAX_MANIFEST_BYTES + 1)
    data = b"".join(iter(lambda: body.read(1 << 20), b""))
    if len(data) > MAX_MANIFEST_BYTES:
        raise SizeMismatch(f"{what} exceeds the {MAX_MANIFEST_BYTES // 1048576} MiB cap")
    return data


def _reason(exc: BaseException) -> str:
    """A short reason for a transport failure, without URLs (they could carry a token in a query)."""
    text = str(exc)
    for marker in ("Caused by ", "] "):
        if marker in text:
            text = text.rsplit(marker, 1)[-1]
    return text.strip("()'\" ")[:160] or type(exc).__name__


def _retry_after(value: Optional[str]) -> Optional[float]:
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class RegistryClient:
    """One registry, one session. Every request gets its timeouts from the run's deadline."""

    def __init__(self, base_url: str, deadline: Deadline, *, workers: int = 4,
                 retry: RetryPolicy = RetryPolicy(), tls: TLSOptions = TLSOptions(),
                 credentials: Optional[Credentials] = None, connect_to: Optional[str] = None):
        self.base_url = base_url.rstrip("/")
        self.origin = urlsplit(self.base_url)
        self.deadline = deadline
        self.retry_policy = retry
        self.session = requests.Session()
        self.session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))  # keep none
        for scheme in ("http://", "https://"):
            self.session.mount(scheme, requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=workers + 2))
        if connect_to:
            self.session.mount(f"{self.base_url}/", ConnectToAdapter(connect_to, self.origin, pool_connections=4,
                                                                     pool_maxsize=workers + 2))
        self.tls = tls
        self.session.headers.update({"User-Agent": f"check_registry_deep/{__version__}"})
        self.auth = RegistryAuth(self.base_url, credentials or Credentials(), deadline=deadline)
        self._lock = threading.Lock()
        self.retries = 0

    # -- plumbing -------------------------------------------------------------------------------------

    def _url(self, repository: str, kind: str, reference: str) -> str:
        return f"{self.base_url}/v2/{validate_repository(repository)}/{kind}/{reference}"

    def _send(self, method: str, url: str, *, headers: Optional[dict] = None, stream: bool = False
              ) -> requests.Response:
        """One request, following redirects by hand and answering one auth challenge."""
        response = self._follow(method, url, headers, stream)
        if response.status_code == 401 and self._same_origin(response.url or url):
            response.close()
            self.auth.answer(response, url)
            response = self._follow(method, url, headers, stream)
            if response.status_code == 401:
                response.close()
                raise self.auth.refused("credentials refused")
        return response

    def _same_origin(self, url: str) -> bool:
        parts = urlsplit(url)
        return (parts.scheme, parts.netloc) == (self.origin.scheme, self.origin.netloc)

    def _follow(self, method: str, url: str, headers: Optional[dict], stream: bool) -> requests.Response:
        """Follow redirects (to a storage backend, say) with a hop limit, refusing loops and https->http.

        Credentials go to the registry's own origin only: any other host gets NO_AUTH, which also keeps
        requests from reading ~/.netrc for it.
        """
        seen = {url}
        for _ in range(MAX_REDIRECTS + 1):
            response = self._request(method, url, headers, stream,
                                     self.auth if self._same_origin(url) else NO_AUTH)
            location = response.headers.get("Location")
            if response.status_code not in (301, 302, 303, 307, 308) or not location:
                return response
            response.close()
            target = urljoin(url, location)
            if urlsplit(url).scheme == "https" and urlsplit(target).scheme != "https":
                raise RedirectError(f"refused a redirect from https to {urlsplit(target).scheme}://"
                                    f"{urlsplit(target).netloc}: a downgrade")
            if target in seen:
                raise RedirectError(f"redirect loop at {urlsplit(target).netloc}{urlsplit(target).path}")
            seen.add(target)
            log.debug("%s %s redirected to %s", method, url, urlsplit(target).netloc)
            url = target
            if response.status_code == 303 and method != "HEAD":
                method = "GET"
        raise RedirectError(f"more than {MAX_REDIRECTS} redirects for {method} {urlsplit(url).path}")

    def _request(self, method: str, url: str, headers: Optional[dict], stream: bool,
                 auth: requests.auth.AuthBase) -> requests.Response:
        timeout = (self.deadline.timeout(CONNECT_TIMEOUT), self.deadline.timeout(READ_TIMEOUT))
        where = f"{urlsplit(url).scheme}://{urlsplit(url).netloc}"
        try:
            # verify and cert per request: a session's settings lose to REQUESTS_CA_BUNDLE in the environment
            response = self.session.request(method, url, headers=headers, stream=stream, timeout=timeout,
                                            allow_redirects=False, auth=auth, verify=self.tls.verify,
                                            cert=self.tls.cert)
        except requests.exceptions.SSLError as exc:
            raise TLSError(f"TLS failure talking to {where}: {_reason(exc)}") from None
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            if self.deadline.expired():
                raise DeadlineExceeded(f"deadline of {self.deadline.seconds:g}s passed during {method} "
                                       f"{urlsplit(url).path}") from None
            raise TransportError(f"{where} unreachable: {_reason(exc)}") from None
        log.debug("%s %s%s -> %s", method, where, urlsplit(url).path, response.status_code)
        return response

    def _raise_for_status(self, response: requests.Response, what: str, not_found: type) -> None:
        status = response.status_code
        if status < 400:
            return
        code, detail = self._error_code(response)
        if status == 404 and not code and response.request.method == "HEAD":
            code = NOT_FOUND_CODES.get(not_found, "")  # a HEAD answer has no body to carry the code
        label = f"{status} {code}".strip()
        retry_after = _retry_after(response.headers.get("Retry-After"))
        response.close()
        message = f"{what}{': ' if what else ''}{label}" + (f" ({detail})" if detail else "")
        if status in (401, 403):
            raise AuthError(message, status, code)
        if status == 404:
            raise not_found(message, status, code)
        raise HTTPStatusError(message, status, code, retry_after)

    @staticmethod
    def _error_code(response: requests.Response) -> Tuple[str, str]:
        """The registry's error code and message from a bounded read of the body."""
        try:
            body = response.raw.read(MAX_ERROR_BODY, decode_content=True) if response.raw else b""
            errors = json.loads(body).get("errors") or []
            first = errors[0]
            return str(first.get("code", ""))[:40], str(first.get("message", ""))[:120]
        except (ValueError, AttributeError, IndexError, TypeError, urllib3.exceptions.HTTPError, OSError):
            return "", ""

    def with_retries(self, operation: Callable[[], T], what: str) -> Tuple[T, int]:
        """Run `operation`, retrying transient RegistryErrors within the deadline; returns (result, retries)."""
        retries = 0

        def give_up(state: tenacity.RetryCallState) -> bool:
            error = state.outcome.exception() if state.outcome else None
            return (error is None or state.attempt_number >= self.retry_policy.attempts
                    or self.retry_policy.wait_for(error, state.attempt_number) >= self.deadline.remaining())

        def wait(state: tenacity.RetryCallState) -> float:
            error = state.outcome.exception() if state.outcome else None
            return self.retry_policy.wait_for(error, state.attempt_number) if error else 0.0

        def note(state: tenacity.RetryCallState) -> None:
            nonlocal retries
            retries += 1
            with self._lock:
                self.retries += 1
            log.info("retrying %s after: %s", what, state.outcome.exception() if state.outcome else "?")

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(lambda e: isinstance(e, RegistryError) and e.transient),
            stop=give_up, wait=wait, before_sleep=note, reraise=True)
        try:
            result = retrying(operation)
        except HTTPStatusError as exc:
            if exc.transient and exc.retry_after is not None and exc.retry_after >= self.deadline.remaining():
                # not slept through: the run answers before its deadline, saying why it gave up
                raise type(exc)(f"{exc} (Retry-After {exc.retry_after:.0f}s reaches past the deadline)", exc.status,
                                exc.code, exc.retry_after) from None
            raise
        return result, retries

    # -- the API --------------------------------------------------------------------------------------

    def ping(self) -> None:
        """GET /v2/: is this a registry at all? 401 is fine here (the auth flow answers it later)."""
        response = self._send("GET", f"{self.base_url}/v2/")
        if response.status_code != 401:
            self._raise_for_status(response, f"GET {self.base_url}/v2/", HTTPStatusError)
        response.close()

    def get_manifest(self, repository: str, reference: str) -> FetchedManifest:
        url = self._url(repository, "manifests", reference)

        def fetch() -> FetchedManifest:
            response = self._send("GET", url, headers={"Accept": ACCEPT, "Accept-Encoding": "identity"},
                                  stream=True)
            with response:
                self._raise_for_status(response, "", ManifestUnknown)
                data = _read_capped(response, "manifest")
            return FetchedManifest(data, response.headers.get("Content-Type", ""),
                                   response.headers.get("Docker-Content-Digest"), url)

        manifest, _ = self.with_retries(fetch, f"manifest {repository}:{reference}")
        return manifest

    def get_page(self, path: str) -> Tuple[dict, Optional[str]]:
        """One page of a JSON listing (catalog, tags) and the path of the next page from its Link header."""

        where = path.split("?")[0]

        def fetch() -> Tuple[dict, Optional[str]]:
            response = self._send("GET", f"{self.base_url}{path}", headers={"Accept": "application/json"},
                                  stream=True)
            with response:
                self._raise_for_status(response, f"GET {where}", ManifestUnknown)
                data = _read_capped(response, f"listing {where}")
                link = response.links.get("next", {}).get("url")
            try:
                page = json.loads(data)
            except ValueError:
                raise ManifestInvalid(f"listing {where} is not valid JSON") from None
            if not isinstance(page, dict):
                raise ManifestInvalid(f"listing {where}: expected a JSON object")
            if link:
                target = urlsplit(urljoin(f"{self.base_url}{path}", link))
                if (target.scheme, target.netloc) != (self.origin.scheme, self.origin.netloc) or \
                        not target.path.startswith("/v2/"):
                    raise ManifestInvalid(f"listing {where}: Link to another place refused")
                link = target.path + (f"?{target.query}" if target.query else "")
            return page, link

        listing, _ = self.with_retries(fetch, f"GET {path}")
        return listing

    def note_retry(self) -> None:
        """Count a retry that did not go through with_retries (a transfer resumed with Range)."""
        with self._lock:
            self.retries += 1

    @contextmanager
    def open_blob(self, repository: str, digest: Digest, limit: Optional[int], offset: int = 0
                  ) -> Iterator[BlobResponse]:
        """GET a blob with identity encoding; the body is read raw, at most `limit` bytes.

        With `offset`, asks for the rest from there (`Range: bytes=offset-`): the caller looks at the answer's
        status (206, or 200 from a server that ignores Range); a 416 is handed over too, not raised, since
        it says where the blob ends.
        """
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        response = self._send("GET", self._url(repository, "blobs", str(digest)), headers=headers, stream=True)
        try:
            if not (offset and response.status_code == 416):
                self._raise_for_status(response, "", BlobUnknown)
            yield BlobResponse(response, limit)
        finally:
            response.close()

    def head_blob(self, repository: str, digest: Digest) -> Optional[int]:
        """HEAD a blob: confirms this repository still links it (not proof of its bytes); returns its length."""

        def head() -> Optional[int]:
            response = self._send("HEAD", self._url(repository, "blobs", str(digest)),
                                  headers={"Accept-Encoding": "identity"})
            with response:
                self._raise_for_status(response, f"HEAD in {repository}", BlobUnknown)
                length = response.headers.get("Content-Length")
            return int(length) if length and length.isdigit() else None

        size, _ = self.with_retries(head, f"HEAD {digest.short()} in {repository}")
        return size
