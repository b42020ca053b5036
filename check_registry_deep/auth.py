"""Credentials (options, environment, docker config via docker-py) and the registry's auth flows.

Secrets live only in Credentials, whose repr hides them, and in Authorization headers; no message here ever
includes one.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple
from urllib.parse import urlsplit

import requests
import requests.auth

from .errors import AuthError, TLSError, TransportError, UsageError
from .transport import NO_AUTH, Transport

log = logging.getLogger(__name__)
PASSWORD_ENV = "REGISTRY_DEEP_PASSWORD"
TOKEN_TIMEOUT = 15.0
MIN_TOKEN_LIFETIME = 60  # seconds, as the token spec says when expires_in is missing


@dataclass(frozen=True)
class Credentials:
    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)  # a refresh token from `docker login` (credsStore)
    source: str = ""

    def __bool__(self) -> bool:
        return bool(self.password or self.identity_token)


def read_password_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            password = handle.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read password file {path}: {getattr(exc, 'strerror', None) or type(exc).__name__}"
                         ) from None
    if not password:
        raise UsageError(f"password file {path} is empty")
    return password


def usual_docker_config() -> Optional[str]:
    """Where docker (and docker-py's find_config_file) looks: $DOCKER_CONFIG/config.json, ~/.docker/config.json,
    ~/.dockercfg. Looked up here so that docker-py is imported only when there is a file to read."""
    home = os.path.expanduser("~")
    candidates = [os.path.join(os.environ["DOCKER_CONFIG"], "config.json")] if os.environ.get("DOCKER_CONFIG") else []
    candidates += [os.path.join(home, ".docker", "config.json"), os.path.join(home, ".dockercfg")]
    return next((path for path in candidates if os.path.isfile(path)), None)


def docker_config_credentials(registry_host: str, config_dir: Optional[str]) -> Credentials:
    """Credentials for `registry_host` from a docker config.json (auths, credsStore, credHelpers).

    docker-py does the reading and runs credential helpers; it is imported only here (it is slow to import).
    """
    if config_dir is not None:
        path = os.path.join(config_dir, "config.json")
        if not os.path.isfile(path):
            raise UsageError(f"no config.json in --docker-config {config_dir}")
    else:
        found = usual_docker_config()
        if not found:
            return Credentials()
        path = found
    import docker.auth
    import docker.errors
    try:
        config = docker.auth.load_config(config_path=path)
        entry = docker.auth.resolve_authconfig(config, registry=registry_host) or {}
    except (docker.errors.DockerException, OSError, ValueError) as exc:
        raise UsageError(f"cannot use docker config {path} for {registry_host}: {type(exc).__name__}") from None
    username = entry.get("Username") or entry.get("username") or ""
    return Credentials(username=username, password=entry.get("Password") or entry.get("password") or "",
                       identity_token=entry.get("IdentityToken") or "", source=f"docker config {path}")


def load_credentials(registry_host: str, *, username: Optional[str], password_file: Optional[str],
                     docker_config: Optional[str]) -> Credentials:
    if username:
        if password_file:
            return Credentials(username, read_password_file(password_file), source="--password-file")
        if os.environ.get(PASSWORD_ENV):
            return Credentials(username, os.environ[PASSWORD_ENV], source=PASSWORD_ENV)
        raise UsageError(f"--username {username} needs --password-file FILE or the {PASSWORD_ENV} variable")
    if password_file:
        raise UsageError("--password-file needs --username")
    return docker_config_credentials(registry_host, docker_config)


_CHALLENGE = re.compile(r'(\w+)\s*=\s*"([^"]*)"')


def parse_challenge(header: str) -> Tuple[str, Dict[str, str]]:
    """`Bearer realm="…",service="…",scope="…"` -> ("bearer", {...})."""
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), {k.lower(): v for k, v in _CHALLENGE.findall(rest)}


def scope_for(url: str) -> str:
    """The pull scope of the repository a /v2/ URL addresses ("" for /v2/ itself)."""
    match = re.match(r"/v2/(.+)/(?:manifests|blobs|tags)/", urlsplit(url).path)
    return f"repository:{match.group(1)}:pull" if match else ""


def basic_authorization(username: str, password: str) -> str:
    """The Authorization value of HTTP Basic auth (RFC 7617), in UTF-8 as docker login sends it."""
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


class BasicAuth(requests.auth.AuthBase):
    """HTTP Basic auth for a token realm's request (requests' own encodes in Latin-1, and fails beyond it)."""

    def __init__(self, username: str, password: str):
        self.username, self.password = username, password

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = basic_authorization(self.username, self.password)
        return request


@dataclass
class _Token:
    value: str
    expires: float


class RegistryAuth(requests.auth.AuthBase):
    """Answers the registry's 401 challenges: Basic, or Bearer tokens per the Docker token spec.

    Tokens are cached per scope (one repository, pull) until they expire; a request refused with a cached
    token gets one fresh token and one more try. Anonymous token flows (Docker Hub style) work without
    credentials. The token requests go over the registry's transport: its TLS settings (--ca-bundle,
    --client-cert, --insecure), and --connect-to when the realm is on the registry's own origin.
    """

    def __init__(self, registry: str, credentials: Credentials, transport: Transport):
        self.registry = registry
        self.credentials = credentials
        self.transport = transport
        self._lock = threading.Lock()
        self._tokens: Dict[str, _Token] = {}
        self._challenge: Optional[Tuple[str, Dict[str, str]]] = None

    # requests calls this for every request it sends with this auth
    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        header = self._header_for(scope_for(request.url or ""))
        if header:
            request.headers["Authorization"] = header
        return request

    def _header_for(self, scope: str) -> Optional[str]:
        with self._lock:
            challenge = self._challenge
            token = self._tokens.get(scope)
        if challenge is None:
            return None
        if challenge[0] == "basic":
            return basic_authorization(self.credentials.username, self.credentials.password) \
                if self.credentials.password else None
        if token and token.expires > time.monotonic():
            return f"Bearer {token.value}"
        return None

    def answer(self, response: requests.Response, url: str) -> None:
        """After a 401: learn the challenge and get what it asks for (a fresh token), so one retry may pass."""
        scheme, params = parse_challenge(response.headers.get("WWW-Authenticate", ""))
        scope = params.get("scope") or scope_for(url)
        with self._lock:
            self._challenge = (scheme, params)
            self._tokens.pop(scope, None)
        if scheme == "basic":
            if not self.credentials.password:
                raise self.refused("the registry wants credentials and none were given")
        elif scheme == "bearer":
            self._fetch_token(params, scope)
        else:
            raise self.refused(f"unsupported authentication scheme {scheme or 'none'!r}")

    def refused(self, why: str) -> AuthError:
        who = f"user {self.credentials.username}" if self.credentials.username else "anonymous access"
        return AuthError(f"authentication refused by {self.registry} for {who}: {why}", 401)

    def _fetch_token(self, params: Dict[str, str], scope: str) -> None:
        realm = params.get("realm", "")
        parts = urlsplit(realm)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise self.refused(f"token realm {realm[:80]!r} is not an http(s) URL")
        if parts.scheme == "http" and urlsplit(self.registry).scheme == "https":
            raise self.refused("token realm is plain http while the registry is https: credentials not sent")
        query = {"service": params.get("service", "")} if params.get("service") else {}
        if scope:
            query["scope"] = scope
        creds = self.credentials
        try:
            if creds.identity_token:
                response = self.transport.request(
                    "POST", realm, auth=NO_AUTH, read_timeout=TOKEN_TIMEOUT,
                    data={**query, "grant_type": "refresh_token", "refresh_token": creds.identity_token,
                          "client_id": "check_registry_deep"})
            else:
                auth = BasicAuth(creds.username, creds.password) if creds.password else NO_AUTH
                response = self.transport.request("GET", realm, auth=auth, params=query, read_timeout=TOKEN_TIMEOUT)
        except TLSError as exc:
            raise TLSError(f"token service of {self.registry}: {exc}") from None
        except TransportError as exc:
            raise AuthError(f"token service of {self.registry}: {exc}", 0) from None
        with response:
            if response.status_code in (401, 403):
                raise self.refused(f"token service answered {response.status_code}")
            if response.status_code != 200:
                raise AuthError(f"token service of {self.registry} answered {response.status_code}",
                                response.status_code)
            try:
                body = response.json()
                token = body.get("token") or body.get("access_token")
                lifetime = max(int(body.get("expires_in") or MIN_TOKEN_LIFETIME), 1)
            except (ValueError, AttributeError, TypeError):
                token = None
        if not token or not isinstance(token, str):
            raise AuthError(f"token service of {self.registry} sent no token", 200)
        log.debug("got a token for %s (%s), valid %ds", scope or "the registry", params.get("service", ""), lifetime)
        with self._lock:
            # renew 10 s early, so a token never expires between our check and the registry's
            self._tokens[scope] = _Token(token, time.monotonic() + max(lifetime - 10, 1))
