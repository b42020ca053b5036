"""HTTP to one registry: its session, TLS, --connect-to, redirects, the auth hook, and HTTP statuses as errors.

Every request gets its timeouts from the run's deadline. Knows HTTP, not the registry API and not Nagios.
"""

from __future__ import annotations

import html
import http.client
import http.cookiejar
import json
import logging
import re
import socket
import ssl
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Protocol, Tuple, Union
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
    StorageError,
    StorageNotFound,
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


#: Plain words for what happened, found in a transport failure's chain of causes; "reset" ones happened on a
#: connection that was up (`connection reset by HOST`), the others kept one from coming up (`URL unreachable`).
RESET = "connection reset"
NO_ANSWER = "connection closed without an answer"


def _words_for(exc: BaseException) -> Optional[str]:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return exc.reason.replace("_", " ").lower() if exc.reason else _openssl_words(str(exc))
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return RESET
    if isinstance(exc, (BrokenPipeError, http.client.RemoteDisconnected)):
        return NO_ANSWER
    if isinstance(exc, socket.gaierror):
        return "name not resolved"
    if isinstance(exc, urllib3.exceptions.NewConnectionError):
        return None  # its cause says why
    if isinstance(exc, (urllib3.exceptions.ConnectTimeoutError, requests.exceptions.ConnectTimeout)):
        return "no connection within the timeout"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[:1].lower() + exc.strerror[1:]
    return None


def plain_reason(exc: BaseException) -> str:
    """A transport failure in plain words (`connection refused`, `connection reset`, `certificate verify failed:
    …`), from the first cause in its chain that says what happened: never an exception's repr, never a URL (it
    could carry a token in its query)."""
    queue, seen = [exc], set()
    while queue:
        current = queue.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        words = _words_for(current)
        if words:
            return words
        queue += [a for a in current.args if isinstance(a, BaseException)]
        queue += [c for c in (getattr(current, "reason", None), current.__cause__, current.__context__)
                  if isinstance(c, BaseException)]
    return _openssl_words(str(exc)) if "SSL" in str(exc) else f"connection failed ({type(exc).__name__})"


def _openssl_words(text: str) -> str:
    """OpenSSL's words in an exception's text that lost its cause (`… [SSL: CODE] words (_ssl.c:1006)')))`)."""
    words = re.sub(r"\s*\(_ssl\.c:\d+\)?['\")]*$", "", text.rsplit("] ", 1)[-1]).strip("()'\" ")
    return words[:160] or "handshake failed"


@dataclass(frozen=True)
class Peer:
    """Who a request asked, as a line names it: the registry (and the backend --connect-to sent it to), or the
    storage the registry redirected to."""

    url: str  # `http://NAME:PORT`, `http://NAME:PORT via HOST:PORT`, or `the storage at HOST:PORT`
    host: str  # `NAME:PORT`, `NAME:PORT via HOST:PORT`, or `the storage at HOST:PORT`
    tail: str = ""  # ` (redirected by the registry)` after a storage's failure

    def failed(self, words: str, after: Optional[int] = None) -> str:
        """`connection reset by HOST` (on a connection that was up), else `URL unreachable: words`."""
        bytes_in = f" after {after} bytes" if after is not None else ""
        if words in (RESET, NO_ANSWER):
            return f"{words} by {self.host}{bytes_in}{self.tail}"
        if after is not None:
            return f"connection to {self.host} broken{bytes_in}: {words}{self.tail}"
        return f"{self.url} unreachable: {words}{self.tail}"


def redirected(response: requests.Response) -> bool:
    """Whether this answer came from another host than the one asked: the storage behind a registry's redirect."""
    return bool(response.history) and urlsplit(response.url).netloc != urlsplit(response.history[0].url).netloc


#: What OpenSSL says when the server answers the TLS handshake in plain HTTP (its "HTTP/1.1 400" read as a TLS
#: record): OpenSSL 1.1 and 3.0 (bookworm), 3.2 and later (trixie), and a long reply read as a record's length.
PLAIN_HTTP_SIGNS = ("wrong version number", "record layer failure", "packet length too long")


def tls_failure(exc: BaseException, where: str, tail: str = "", netloc: str = "") -> str:
    """The line for a failed TLS handshake with `where` (scheme://host:port, or a Peer's name for it, then `tail`);
    when the server seems to speak plain HTTP, it says so first (line 1 cuts a long reason) and names the http://
    URL to use instead (`netloc`: the host and port asked, by default `where`'s)."""
    if any(sign in str(exc).lower() for sign in PLAIN_HTTP_SIGNS):
        return f"TLS failure talking to {where}: it answers plain HTTP (use http://" \
               f"{netloc or urlsplit(where).netloc}): {plain_reason(exc)}{tail}"
    return f"TLS failure talking to {where}: {plain_reason(exc)}{tail}"


class Transport:
    """One registry's session. Its TLS settings and --connect-to also serve the token realm (auth.py)."""

    def __init__(self, base_url: str, deadline: Deadline, *, workers: int = 4, tls: TLSOptions = TLSOptions(),
                 connect_to: Optional[str] = None):
        self.base_url = base_url.rstrip("/")
        self.origin = urlsplit(self.base_url)
        self.deadline = deadline
        self.tls = tls
        self.connect_to = connect_to
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
        hops: List[requests.Response] = []
        for _ in range(MAX_REDIRECTS + 1):
            response = self.request(method, url, headers=headers, stream=stream, read_timeout=read_timeout,
                                    auth=auth if self.same_origin(url) else NO_AUTH,
                                    redirected=bool(hops) and not self.same_origin(url))
            response.history = list(hops)  # the redirects that led here (closed): see redirected()
            location = response.headers.get("Location")
            if response.status_code not in (301, 302, 303, 307, 308) or not location:
                return response
            hops.append(response)
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

    def peer(self, url: str, redirected: bool = False) -> Peer:
        """How a line names who answers at `url` (see Peer)."""
        parts = urlsplit(url)
        if redirected:
            storage = f"the storage at {parts.netloc}"
            return Peer(storage, storage, " (redirected by the registry)")
        via = f" via {self.connect_to}" if self.connect_to and self.same_origin(url) else ""
        return Peer(f"{parts.scheme}://{parts.netloc}{via}", f"{parts.netloc}{via}")

    def request(self, method: str, url: str, *, auth: Callable[[requests.PreparedRequest], requests.PreparedRequest],
                headers: Optional[dict] = None, stream: bool = False, read_timeout: float = READ_TIMEOUT,
                redirected: bool = False, **kwargs) -> requests.Response:
        """One request, no redirects followed, with this registry's TLS settings; failures as our errors, naming
        who was asked (`redirected`: the storage a registry redirected to)."""
        timeout = (self.deadline.timeout(CONNECT_TIMEOUT), self.deadline.timeout(read_timeout))
        peer = self.peer(url, redirected)
        where = f"{urlsplit(url).scheme}://{urlsplit(url).netloc}"
        try:
            # what Session.request does, with the environment read once per origin (see _settings)
            prepared = self.session.prepare_request(requests.Request(method, url, headers=headers, auth=auth,
                                                                     **kwargs))
            response = self.session.send(prepared, stream=stream, timeout=timeout, allow_redirects=False,
                                         **self._settings(url))
        except requests.exceptions.SSLError as exc:
            raise TLSError(tls_failure(exc, peer.url, peer.tail, urlsplit(url).netloc)) from None
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            if self.deadline.expired():
                raise DeadlineExceeded(f"deadline of {self.deadline.seconds:g}s passed during {method} "
                                       f"{urlsplit(url).path}") from None
            if isinstance(exc, requests.exceptions.ReadTimeout):  # connected, asked, and no answer came
                raise Stalled(f"{peer.url} sent no answer in {timeout[1]:g}s{peer.tail}", 0) from None
            raise TransportError(peer.failed(plain_reason(exc))) from None
        log.debug("%s %s%s -> %s", method, where, urlsplit(url).path, response.status_code)
        return response


def raise_for_status(response: requests.Response, what: str, not_found: type) -> None:
    """An error status as the error it means (closing the response): 401/403 AuthError, 404 `not_found`."""
    status = response.status_code
    if status < 400:
        return
    storage = redirected(response)
    code, detail = _error_code(response, text=storage)
    if status == 404 and not code and response.request.method == "HEAD" and not storage:
        code = NOT_FOUND_CODES.get(not_found, "")  # what the registry means; a storage's answer is its own
    label = f"{status} {code}".strip()
    wait = retry_after(response.headers.get("Retry-After"))
    response.close()
    if storage:  # the registry knows the content (it redirected); the storage behind it answered this
        still = "; the registry still lists the blob" if status == 404 and not_found is BlobUnknown else ""
        message = (f"{what}{': ' if what else ''}{label} from the storage at {urlsplit(response.url).netloc}"
                   f"{': ' + detail if detail else ''} (redirected by the registry{still})")
        raise (StorageNotFound if status == 404 else StorageError)(message, status, code, wait)
    message = f"{what}{': ' if what else ''}{label}" + (f" ({detail})" if detail else "")
    if status in (401, 403):
        raise AuthError(message, status, code)
    if status == 404:
        raise not_found(message, status, code)
    raise HTTPStatusError(message, status, code, wait)


XML_FIELD = re.compile(rb"<(Code|Message)>([^<]{0,300})</\1>")
TAG = re.compile(r"<[^>]{0,200}>")


def _error_code(response: requests.Response, text: bool = False) -> Tuple[str, str]:
    """The error code and message the answer carries, from a bounded read of its body: a registry's JSON
    (`errors[0]`), S3's and GCS's XML (`<Code>`, `<Message>`), and with `text` (a storage's answer) a short text
    such as Swift's, tags stripped, as the message."""
    try:
        body = response.raw.read(MAX_ERROR_BODY, decode_content=True) if response.raw else b""
    except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError):
        return "", ""
    if not isinstance(body, bytes):
        return "", ""
    try:
        first = (json.loads(body).get("errors") or [{}])[0]
        return str(first.get("code", ""))[:40], str(first.get("message", ""))[:120]
    except (ValueError, AttributeError, IndexError, TypeError):
        pass
    xml = {name.decode(): html.unescape(value.decode("utf-8", "replace")).strip() for name, value in
           XML_FIELD.findall(body)}
    if xml:
        return xml.get("Code", "")[:40], xml.get("Message", "")[:120]
    words = " ".join(TAG.sub(" ", body[:1024].decode("utf-8", "replace")).split()) if text else ""
    return "", words[:120] if words.isprintable() else ""
