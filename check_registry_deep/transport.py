"""HTTP to one registry: its session, TLS, --connect-to, redirects, the auth hook, and HTTP statuses as errors.

Every request gets its timeouts from the run's deadline. Knows HTTP, not the registry API and not Nagios.
"""

from __future__ import annotations

import http.cookiejar
import json
import logging
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Protocol, Tuple, Union
from urllib.parse import SplitResult, urljoin, urlsplit, urlunsplit

import requests
import requests.auth
import urllib3.exceptions

from . import __version__
from .deadline import Deadline
from .errors import (
    AuthError,
    BlobUnknown,
    DeadlineExceeded,
    HTTPStatusError,
    ManifestUnknown,
    RedirectError,
    Stalled,
    TLSError,
    TransportError,
)
from .retry import retry_after

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 30.0
MAX_ERROR_BODY = 64 * 1024
MAX_REDIRECTS = 5
#: The code a 404 to HEAD implies: its answer has no body to carry one.
NOT_FOUND_CODES: Dict[type, str] = {BlobUnknown: "BLOB_UNKNOWN", ManifestUnknown: "MANIFEST_UNKNOWN"}


@dataclass(frozen=True)
class TLSOptions:
    verify: Union[bool, str] = True  # False with --insecure, a CA bundle path with --ca-bundle
    cert: Optional[Tuple[str, str]] = None  # client certificate and key


class Authenticator(Protocol):
    """What the transport needs of an auth flow (auth.RegistryAuth): a requests auth hook that learns from 401s."""

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest: ...

    def answer(self, response: requests.Response, url: str) -> None: ...

    def refused(self, why: str) -> AuthError: ...


class NoAuth(requests.auth.AuthBase):
    """Sends nothing, and keeps requests from reaching for ~/.netrc (it does when a request has no auth)."""

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        return request


NO_AUTH = NoAuth()


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
        url = request.url or ""
        parts = urlsplit(url)
        request.headers["Host"] = parts.netloc
        request.url = urlunsplit(parts._replace(netloc=self.address))
        response = super().send(request, *args, **kwargs)
        # the answer is the registry's, as far as the rest of the client knows: its 401 is answered, its
        # Location resolved against the registry's URL
        response.url = url
        return response


def reason(exc: BaseException) -> str:
    """A short reason for a transport failure, without URLs (they could carry a token in a query)."""
    text = str(exc)
    for marker in ("Caused by ", "] "):
        if marker in text:
            text = text.rsplit(marker, 1)[-1]
    return text.strip("()'\" ")[:160] or type(exc).__name__


#: What OpenSSL says when the server answers the TLS handshake in plain HTTP (its "HTTP/1.1 400" read as a TLS
#: record): OpenSSL 1.1 and 3.0 (bookworm), 3.2 and later (trixie), and a long reply read as a record's length.
PLAIN_HTTP_SIGNS = ("wrong version number", "record layer failure", "packet length too long")


def tls_failure(exc: BaseException, where: str) -> str:
    """The line for a failed TLS handshake with `where` (scheme://host:port); when the server seems to speak plain
    HTTP, it says so first (line 1 cuts a long reason) and names the http:// URL to use instead."""
    if any(sign in str(exc).lower() for sign in PLAIN_HTTP_SIGNS):
        return f"TLS failure talking to {where}: it answers plain HTTP (use http://{urlsplit(where).netloc}): " \
               f"{reason(exc)}"
    return f"TLS failure talking to {where}: {reason(exc)}"


class Transport:
    """One registry's session. Its TLS settings and --connect-to also serve the token realm (auth.py)."""

    def __init__(self, base_url: str, deadline: Deadline, *, workers: int = 4, tls: TLSOptions = TLSOptions(),
                 connect_to: Optional[str] = None):
        self.base_url = base_url.rstrip("/")
        self.origin = urlsplit(self.base_url)
        self.deadline = deadline
        self.tls = tls
        self.session = requests.Session()
        self.session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))  # keep none
        for scheme in ("http://", "https://"):
            self.session.mount(scheme, requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=workers + 2))
        if connect_to:  # only the registry's own origin: another host (a token realm, S3) is reached as named
            self.session.mount(f"{self.base_url}/", ConnectToAdapter(connect_to, self.origin, pool_connections=4,
                                                                     pool_maxsize=workers + 2))
        self.session.headers.update({"User-Agent": f"check_registry_deep/{__version__}"})
        self._environment: Dict[Tuple[str, str], Dict[str, Any]] = {}  # (scheme, netloc) -> _settings

    def same_origin(self, url: str) -> bool:
        parts = urlsplit(url)
        return (parts.scheme, parts.netloc) == (self.origin.scheme, self.origin.netloc)

    def send(self, method: str, url: str, auth: Authenticator, *, headers: Optional[dict] = None,
             stream: bool = False, read_timeout: float = READ_TIMEOUT) -> requests.Response:
        """One registry request, following redirects by hand and answering one auth challenge."""
        response = self._follow(method, url, headers, stream, auth, read_timeout)
        if response.status_code == 401 and self.same_origin(response.url or url):
            response.close()
            auth.answer(response, url)
            response = self._follow(method, url, headers, stream, auth, read_timeout)
            if response.status_code == 401:
                response.close()
                raise auth.refused("credentials refused")
        return response

    def _follow(self, method: str, url: str, headers: Optional[dict], stream: bool,
                auth: Authenticator, read_timeout: float) -> requests.Response:
        """Follow redirects (to a storage backend, say) with a hop limit, refusing loops and https->http.

        Credentials go to the registry's own origin only: any other host gets NO_AUTH, which also keeps
        requests from reading ~/.netrc for it.
        """
        seen = {url}
        for _ in range(MAX_REDIRECTS + 1):
            response = self.request(method, url, headers=headers, stream=stream, read_timeout=read_timeout,
                                    auth=auth if self.same_origin(url) else NO_AUTH)
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

    def _settings(self, url: str) -> Dict[str, Any]:
        """Proxies, verify and cert for `url`, as Session.request merges them from the environment (HTTPS_PROXY,
        NO_PROXY, REQUESTS_CA_BUNDLE), once per origin: per request this was a fifth of a small request's CPU.
        verify and cert go in explicitly, so --ca-bundle and --insecure still win over REQUESTS_CA_BUNDLE. Plain
        http has no TLS to verify: there a CA bundle would only cost requests a stat() per request."""
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc)
        if key not in self._environment:
            merged = self.session.merge_environment_settings(url, {}, None, self.tls.verify, self.tls.cert)
            https = parts.scheme == "https"
            self._environment[key] = {"proxies": merged["proxies"], "verify": merged["verify"] if https else True,
                                      "cert": merged["cert"] if https else None}
        return self._environment[key]

    def request(self, method: str, url: str, *, auth: Callable[[requests.PreparedRequest], requests.PreparedRequest],
                headers: Optional[dict] = None,
                stream: bool = False, read_timeout: float = READ_TIMEOUT, **kwargs) -> requests.Response:
        """One request, no redirects followed, with this registry's TLS settings; failures as our errors."""
        timeout = (self.deadline.timeout(CONNECT_TIMEOUT), self.deadline.timeout(read_timeout))
        where = f"{urlsplit(url).scheme}://{urlsplit(url).netloc}"
        try:
            # what Session.request does, with the environment read once per origin (see _settings)
            prepared = self.session.prepare_request(requests.Request(method, url, headers=headers, auth=auth,
                                                                     **kwargs))
            response = self.session.send(prepared, stream=stream, timeout=timeout, allow_redirects=False,
                                         **self._settings(url))
        except requests.exceptions.SSLError as exc:
            raise TLSError(tls_failure(exc, where)) from None
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            if self.deadline.expired():
                raise DeadlineExceeded(f"deadline of {self.deadline.seconds:g}s passed during {method} "
                                       f"{urlsplit(url).path}") from None
            if isinstance(exc, requests.exceptions.ReadTimeout):  # connected, asked, and no answer came
                raise Stalled(f"{where} sent no answer in {timeout[1]:g}s", 0) from None
            raise TransportError(f"{where} unreachable: {reason(exc)}") from None
        log.debug("%s %s%s -> %s", method, where, urlsplit(url).path, response.status_code)
        return response


def raise_for_status(response: requests.Response, what: str, not_found: type) -> None:
    """An error status as the error it means (closing the response): 401/403 AuthError, 404 `not_found`."""
    status = response.status_code
    if status < 400:
        return
    code, detail = _error_code(response)
    if status == 404 and not code and response.request.method == "HEAD":
        code = NOT_FOUND_CODES.get(not_found, "")
    label = f"{status} {code}".strip()
    wait = retry_after(response.headers.get("Retry-After"))
    response.close()
    message = f"{what}{': ' if what else ''}{label}" + (f" ({detail})" if detail else "")
    if status in (401, 403):
        raise AuthError(message, status, code)
    if status == 404:
        raise not_found(message, status, code)
    raise HTTPStatusError(message, status, code, wait)


def _error_code(response: requests.Response) -> Tuple[str, str]:
    """The registry's error code and message from a bounded read of the body."""
    try:
        body = response.raw.read(MAX_ERROR_BODY, decode_content=True) if response.raw else b""
        errors = json.loads(body).get("errors") or []
        first = errors[0]
        return str(first.get("code", ""))[:40], str(first.get("message", ""))[:120]
    except (ValueError, AttributeError, IndexError, TypeError, urllib3.exceptions.HTTPError, OSError):
        return "", ""
