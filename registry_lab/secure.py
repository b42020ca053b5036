"""Secured registries for the auth and TLS tests: htpasswd, a throwaway CA, a token issuer, a redirecting front.

Everything is made with Debian's command-line tools (htpasswd, openssl) and runs on 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List, Optional, Tuple
from urllib.parse import parse_qs, urlsplit

import requests


def htpasswd(path: Path, users: Dict[str, str]) -> Path:
    """An htpasswd file with bcrypt hashes, the only kind distribution accepts."""
    lines = []
    for user, password in users.items():
        done = subprocess.run(["htpasswd", "-nbB", user, password], capture_output=True, text=True, check=True)
        lines.append(done.stdout.strip())
    path.write_text("\n".join(lines) + "\n")
    return path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


class CertificateAuthority:
    """A throwaway CA in `directory`, issuing certificates for 127.0.0.1, 127.0.0.2 and localhost."""

    def __init__(self, directory: Path, name: str = "registry-lab CA"):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.key = self.directory / "ca.key"
        self.cert = self.directory / "ca.pem"
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
                 "-keyout", str(self.key), "-out", str(self.cert))

    def issue(self, name: str, *, client: bool = False) -> tuple:
        """(certificate, key) paths for a server (SAN 127.0.0.1, 127.0.0.2, localhost) or a client."""
        key, csr, cert = (self.directory / f"{name}.{ext}" for ext in ("key", "csr", "pem"))
        extensions = self.directory / f"{name}.ext"
        extensions.write_text("extendedKeyUsage=clientAuth\n" if client else
                              "subjectAltName=IP:127.0.0.1,IP:127.0.0.2,DNS:localhost\nextendedKeyUsage=serverAuth\n")
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(csr))
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key), "-CAcreateserial",
                 "-days", "2", "-extfile", str(extensions), "-out", str(cert))
        return cert, key


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


class LoopbackServer:
    """A threaded HTTP server on `host` (127.0.0.1; 127.0.0.2 is another loopback host on Linux) with a handler
    function; records every request's method, path and headers, whatever the method (so a test can prove that
    only GET and HEAD arrived). With `tls` (a certificate and key, e.g. from CertificateAuthority.issue) it
    serves https, and with `client_ca` too it requires a client certificate issued by that CA."""

    def __init__(self, handle, tls: Optional[Tuple[Path, Path]] = None, *, host: str = "127.0.0.1",
                 client_ca: Optional[Path] = None):
        self.requests: List[Dict[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests.append({"method": self.command, "path": self.path, **dict(self.headers)})
                handle(self)

            do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_GET

            def log_message(self, *args):
                pass

        self.host = host
        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.tls = tls is not None
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(tls[0]), str(tls[1]))
            if client_ca is not None:
                context.verify_mode = ssl.CERT_REQUIRED
                context.load_verify_locations(str(client_ca))
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _reply(handler: BaseHTTPRequestHandler, status: int, body: bytes = b"", headers: Optional[dict] = None) -> None:
    handler.send_response(status)
    for key, value in (headers or {}).items():
        handler.send_header(key, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(body)


class TokenIssuer(LoopbackServer):
    """A token service per the Docker token spec: Basic credentials in, an RS256 JWT out (signed by openssl).

    `tls`, `host` and `client_ca` as for every server here: over https on another host, as real deployments
    put their token service (Harbor's core, GitLab's Rails)."""

    service = "registry-lab"
    issuer = "registry-lab-issuer"

    def __init__(self, directory: Path, users: Dict[str, str], *, anonymous: bool = False,
                 tls: Optional[Tuple[Path, Path]] = None, host: str = "127.0.0.1", client_ca: Optional[Path] = None):
        self.directory = Path(directory)
        self.users = users
        self.anonymous = anonymous
        self.key = self.directory / "token.key"
        self.cert = self.directory / "token.pem"
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=registry-lab tokens",
                 "-keyout", str(self.key), "-out", str(self.cert))
        der = subprocess.run(["openssl", "x509", "-in", str(self.cert), "-outform", "DER"], capture_output=True,
                             check=True).stdout
        self.x5c = base64.b64encode(der).decode()
        super().__init__(self._handle, tls, host=host, client_ca=client_ca)

    def registry_config(self) -> dict:
        return {"auth": {"token": {"realm": f"{self.url}/token", "service": self.service, "issuer": self.issuer,
                                   "rootcertbundle": str(self.cert)}}}

    def _user(self, handler: BaseHTTPRequestHandler) -> Optional[str]:
        header = handler.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return "" if self.anonymous else None
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        return user if self.users.get(user) == password else None

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        user = self._user(handler)
        if user is None:
            _reply(handler, 401, b'{"details":"bad credentials"}')
            return
        query = parse_qs(urlsplit(handler.path).query)
        access = []
        for scope in query.get("scope", []):
            kind, name, actions = scope.split(":")
            access.append({"type": kind, "name": name, "actions": [a for a in actions.split(",") if a == "pull"]})
        now = int(time.time())
        claims = {"iss": self.issuer, "sub": user, "aud": query.get("service", [""])[0], "exp": now + 300,
                  "nbf": now - 10, "iat": now, "jti": uuid.uuid4().hex, "access": access}
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key)],
                                   input=signing_input.encode(), capture_output=True, check=True).stdout
        token = f"{signing_input}.{_b64url(signature)}"
        _reply(handler, 200, json.dumps({"token": token, "expires_in": 300}).encode(),
               {"Content-Type": "application/json"})


class BlobStore(LoopbackServer):
    """A storage backend on another port: serves blobs a registry redirected to, records the headers it got."""

    def __init__(self, registry_storage_blob_path):
        self.blob_path = registry_storage_blob_path
        super().__init__(self._handle)

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        digest = urlsplit(handler.path).path.rsplit("/", 1)[-1]
        try:
            data = Path(self.blob_path(digest)).read_bytes()
        except (OSError, ValueError):
            _reply(handler, 404)
            return
        _reply(handler, 200, data, {"Content-Type": "application/octet-stream"})


class RedirectingFront(LoopbackServer):
    """In front of a real registry: passes everything through, but answers blob GETs with a 307 to `backend`,
    as registries on S3 or Swift do. `redirect` can be changed by a test (a loop, a downgrade)."""

    def __init__(self, registry_url: str, backend_url: str):
        self.registry_url = registry_url
        self.redirect = lambda path: f"{backend_url}/blobs/{path.rsplit('/', 1)[-1]}"
        super().__init__(self._handle)

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        if handler.command == "GET" and "/blobs/" in handler.path:
            _reply(handler, 307, headers={"Location": self.redirect(handler.path)})
            return
        headers = {k: v for k, v in handler.headers.items() if k.lower() in ("accept", "authorization",
                                                                               "accept-encoding")}
        upstream = requests.request(handler.command, self.registry_url + handler.path, headers=headers, timeout=10)
        passed = {k: v for k, v in upstream.headers.items()
                  if k.lower() in ("content-type", "docker-content-digest", "www-authenticate")}
        handler.send_response(upstream.status_code)
        for key, value in passed.items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", upstream.headers.get("Content-Length", str(len(upstream.content))))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(upstream.content)
