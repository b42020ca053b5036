"""client.py against mocked HTTP (responses): status mapping, retries within the deadline, headers, caps."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time

import pytest
import requests
import responses
import urllib3

from check_registry_deep.client import LEGACY_SHIM, PUBLIC_READ1, RegistryClient, Urllib3WithoutRead1, read_path
from check_registry_deep.deadline import Deadline
from check_registry_deep.errors import (
    AuthError,
    BlobUnknown,
    HTTPStatusError,
    InternalError,
    ManifestInvalid,
    ManifestUnknown,
    SizeMismatch,
    Stalled,
    TransportError,
)
from check_registry_deep.manifests import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    LAYER,
    MAX_MANIFEST_BYTES,
    OCI_INDEX,
    OCI_MANIFEST,
    SCHEMA1,
    SCHEMA1_SIGNED,
    Descriptor,
)
from check_registry_deep.reference import Digest
from check_registry_deep.retry import RetryPolicy, retry_after
from check_registry_deep.transport import TLSOptions, tls_failure
from check_registry_deep.verify import verify_body
from registry_lab.secure import LoopbackServer

#: Debian's package build sets http_proxy to a dead port: these tests set the proxy they mean themselves
pytestmark = pytest.mark.usefixtures("no_proxy_from_the_environment")

BASE = "http://127.0.0.1:5000"
BODY = b'{"schemaVersion": 2, "mediaType": "' + DOCKER_MANIFEST.encode() + b'", "layers": []}'
MANIFEST_URL = f"{BASE}/v2/team/app/manifests/1"
BLOB = bytes(range(256)) * 40
BLOB_DIGEST = Digest.of(BLOB)
BLOB_URL = f"{BASE}/v2/team/app/blobs/{BLOB_DIGEST}"
FAST = RetryPolicy(attempts=3, backoff=0.01, max_wait=0.05)


def errors_body(code: str, message: str) -> str:
    return json.dumps({"errors": [{"code": code, "message": message, "detail": None}]})


def make_client(seconds: float = 10, retry: RetryPolicy = FAST) -> RegistryClient:
    return RegistryClient(BASE, Deadline(seconds), retry=retry)


def read_blob(client: RegistryClient, digest: Digest = BLOB_DIGEST, limit=None) -> bytes:
    with client.open_blob("team/app", digest, limit) as body:
        return b"".join(iter(lambda: body.read(1000), b""))


# -- status codes ----------------------------------------------------------------------------------------

def test_manifest_ok(mock):
    # content_type= rather than a Content-Type header: responses 0.18 would add its text/plain default to it
    mock.add(responses.GET, MANIFEST_URL, body=BODY, status=200, content_type=DOCKER_MANIFEST,
             headers={"Docker-Content-Digest": str(Digest.of(BODY))})
    fetched = make_client().get_manifest("team/app", "1")
    assert fetched.body == BODY
    assert fetched.content_type == DOCKER_MANIFEST
    assert fetched.declared_digest == str(Digest.of(BODY))


def test_manifest_without_docker_content_digest(mock):
    mock.add(responses.GET, MANIFEST_URL, body=BODY, status=200, content_type=OCI_MANIFEST)
    assert make_client().get_manifest("team/app", "1").declared_digest is None


def test_blob_unknown_404(mock):
    mock.add(responses.GET, BLOB_URL, status=404, body=errors_body("BLOB_UNKNOWN", "blob unknown to registry"),
             content_type="application/json")
    client = make_client()
    with pytest.raises(BlobUnknown) as caught:
        read_blob(client)
    assert "404 BLOB_UNKNOWN" in str(caught.value)
    assert str(caught.value) == "404 BLOB_UNKNOWN (blob unknown to registry)"
    assert caught.value.status == 404
    assert caught.value.code == "BLOB_UNKNOWN"
    assert not caught.value.transient
    assert len(mock.calls) == 1


def test_manifest_unknown_404_is_not_retried(mock):
    mock.add(responses.GET, MANIFEST_URL, status=404,
             body=errors_body("MANIFEST_UNKNOWN", "manifest unknown"), content_type="application/json")
    client = make_client()
    with pytest.raises(ManifestUnknown) as caught:
        client.get_manifest("team/app", "1")
    assert "404 MANIFEST_UNKNOWN" in str(caught.value)
    assert str(caught.value) == "404 MANIFEST_UNKNOWN (manifest unknown)"
    assert caught.value.code == "MANIFEST_UNKNOWN"
    assert len(mock.calls) == 1
    assert client.retries == 0


def test_404_without_json_body(mock):
    mock.add(responses.GET, BLOB_URL, status=404, body="<html>not found</html>", content_type="text/html")
    with pytest.raises(BlobUnknown) as caught:
        read_blob(make_client())
    assert str(caught.value) == "404"
    assert caught.value.code == ""


def test_head_blob_404_names_the_repository(mock):
    mock.add(responses.HEAD, BLOB_URL, status=404)
    with pytest.raises(BlobUnknown) as caught:
        make_client().head_blob("team/app", BLOB_DIGEST)
    assert str(caught.value).startswith("HEAD in team/app: 404")


def test_head_blob_returns_content_length(mock):
    mock.add(responses.HEAD, BLOB_URL, status=200, headers={"Content-Length": "10240"})
    assert make_client().head_blob("team/app", BLOB_DIGEST) == 10240


@pytest.mark.parametrize("status", [401, 403])
def test_auth_refused_is_auth_error(mock, status):
    mock.add(responses.GET, BLOB_URL, status=status, body=errors_body("DENIED", "requested access is denied"),
             content_type="application/json")
    with pytest.raises(AuthError) as caught:
        read_blob(make_client())
    assert caught.value.status in (401, 403)
    assert not caught.value.transient


def test_500_is_a_transient_http_status_error(mock):
    mock.add(responses.GET, BLOB_URL, status=500, body=errors_body("UNKNOWN", "unknown error"),
             content_type="application/json")
    with pytest.raises(HTTPStatusError) as caught:
        read_blob(make_client())
    error = caught.value
    assert type(error) is HTTPStatusError
    assert error.status == 500
    assert error.transient
    assert str(error) == "500 UNKNOWN (unknown error)"


def test_500_retried_until_attempts_run_out(mock):
    mock.add(responses.GET, MANIFEST_URL, status=500)
    client = make_client()
    with pytest.raises(HTTPStatusError) as caught:
        client.get_manifest("team/app", "1")
    assert caught.value.status == 500
    assert len(mock.calls) == 3
    assert client.retries == 2


@pytest.mark.parametrize("status", [400, 405, 416])
def test_4xx_not_retried(mock, status):
    mock.add(responses.GET, MANIFEST_URL, status=status)
    client = make_client()
    with pytest.raises(HTTPStatusError) as caught:
        client.get_manifest("team/app", "1")
    assert caught.value.status == status
    assert not caught.value.transient
    assert len(mock.calls) == 1
    assert client.retries == 0


def test_connection_error_is_transport_error_and_retried(mock):
    mock.add(responses.GET, MANIFEST_URL, body=requests.exceptions.ConnectionError("refused"))
    mock.add(responses.GET, MANIFEST_URL, body=BODY, status=200)
    client = make_client()
    assert client.get_manifest("team/app", "1").body == BODY
    assert client.retries == 1


# -- retries ---------------------------------------------------------------------------------------------

def test_503_then_200_succeeds_with_one_retry(mock):
    mock.add(responses.GET, BLOB_URL, status=503)
    mock.add(responses.GET, BLOB_URL, body=BLOB, status=200)
    client = make_client()
    data, retries = client.retrier.run(lambda: read_blob(client), "blob")
    assert data == BLOB
    assert retries == 1
    assert client.retries == 1
    assert len(mock.calls) == 2


def test_manifest_503_then_200_counts_on_the_client(mock):
    mock.add(responses.GET, MANIFEST_URL, status=503)
    mock.add(responses.GET, MANIFEST_URL, body=BODY, status=200)
    client = make_client()
    assert client.get_manifest("team/app", "1").body == BODY
    assert client.retries == 1
    assert len(mock.calls) == 2


def test_retry_counter_is_shared_across_threads():
    client = make_client()

    def flaky_once():
        failed = []

        def operation() -> str:
            if not failed:
                failed.append(True)
                raise HTTPStatusError("503", 503)
            return "done"
        return operation

    results = []
    threads = [threading.Thread(target=lambda: results.append(client.retrier.run(flaky_once(), "op")))
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [("done", 1)] * 8
    assert client.retries == 8


def test_429_retry_after_is_honoured(mock):
    mock.add(responses.GET, MANIFEST_URL, status=429, headers={"Retry-After": "1"},
             body=errors_body("TOOMANYREQUESTS", "slow down"), content_type="application/json")
    mock.add(responses.GET, MANIFEST_URL, body=BODY, status=200)
    client = make_client(retry=RetryPolicy(attempts=3, backoff=0.01))
    started = time.monotonic()
    assert client.get_manifest("team/app", "1").body == BODY
    waited = time.monotonic() - started
    assert 0.95 <= waited < 2.0  # generous above: a loaded CI machine is slow, never early
    assert client.retries == 1


def test_retry_after_beyond_the_deadline_is_not_waited_for(mock):
    mock.add(responses.GET, MANIFEST_URL, status=429, headers={"Retry-After": "30"})
    mock.add(responses.GET, MANIFEST_URL, body=BODY, status=200)
    client = make_client(seconds=5)
    started = time.monotonic()
    with pytest.raises(HTTPStatusError) as caught:
        client.get_manifest("team/app", "1")
    assert time.monotonic() - started < 1.0
    assert caught.value.status == 429
    assert caught.value.retry_after == 30.0
    assert len(mock.calls) == 1
    assert client.retries == 0


def test_backoff_beyond_the_deadline_is_not_waited_for(mock):
    mock.add(responses.GET, MANIFEST_URL, status=503)
    client = make_client(seconds=5, retry=RetryPolicy(attempts=5, backoff=10.0, max_wait=30.0))
    started = time.monotonic()
    with pytest.raises(HTTPStatusError):
        client.get_manifest("team/app", "1")
    assert time.monotonic() - started < 1.0
    assert len(mock.calls) == 1


def test_integrity_errors_are_never_retried(mock):
    mock.add(responses.GET, MANIFEST_URL, body=b"{" * (MAX_MANIFEST_BYTES + 1), status=200)
    client = make_client()
    with pytest.raises(SizeMismatch):
        client.get_manifest("team/app", "1")
    assert len(mock.calls) == 1
    assert client.retries == 0


def test_tenacity_is_imported_only_when_a_fault_is_retried():
    """A run where every request works never imports tenacity, nor builds a Retrying per request; the first
    transient fault brings it in, counted as the first of the policy's attempts."""
    import subprocess
    import sys
    code = """if True:
        import sys
        import check_registry_deep.app
        from check_registry_deep.deadline import Deadline
        from check_registry_deep.errors import TransportError
        from check_registry_deep.retry import Retrier, RetryPolicy
        retrier = Retrier(RetryPolicy(attempts=3, backoff=0.01), Deadline(10))
        assert retrier.run(lambda: 1, "fine") == (1, 0)
        print("tenacity" in sys.modules)
        faults = [TransportError("reset"), TransportError("reset")]
        def flaky():
            if faults:
                raise faults.pop()
            return 2
        assert retrier.run(flaky, "flaky") == (2, 2) and retrier.count == 2
        print("tenacity" in sys.modules)
    """
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={"PATH": "/usr/bin:/bin",
                               "PYTHONPATH": str(__import__("pathlib").Path(__file__).resolve().parents[2])})
    assert done.stdout.split() == ["False", "True"]


def test_retry_policy_wait_for():
    policy = RetryPolicy(attempts=5, backoff=0.5, max_wait=3.0)
    transient = HTTPStatusError("503", 503)
    assert [policy.wait_for(transient, n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 3.0]
    assert policy.wait_for(HTTPStatusError("429", 429, retry_after=7.0), 1) == 7.0
    assert policy.wait_for(HTTPStatusError("429", 429, retry_after=-3.0), 1) == 0.0


def test_retry_after_header_forms():
    assert retry_after("1") == 1.0
    assert retry_after(" 120 ") == 120.0
    assert retry_after(None) is None
    assert retry_after("") is None
    assert retry_after("soon") is None
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    later = retry_after(time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 60)))
    assert later is not None and 55 <= later <= 61


@pytest.mark.parametrize("status, transient", [(408, True), (429, True), (500, True), (502, True), (503, True),
                                               (504, True), (400, False), (404, False), (409, False)])
def test_transient_statuses(status, transient):
    assert HTTPStatusError("x", status).transient is transient


# -- what we send ----------------------------------------------------------------------------------------

def test_manifest_accept_header_lists_every_type_schema1_last(mock):
    mock.add(responses.GET, MANIFEST_URL, body=BODY, status=200)
    make_client().get_manifest("team/app", "1")
    accept = mock.calls[0].request.headers["Accept"]
    types = [part.split(";")[0].strip() for part in accept.split(",")]
    for media_type in (OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST, SCHEMA1_SIGNED, SCHEMA1):
        assert media_type in types
    assert set(types[-2:]) == {SCHEMA1_SIGNED, SCHEMA1}
    assert types.index(SCHEMA1_SIGNED) > types.index(DOCKER_MANIFEST)
    assert mock.calls[0].request.headers["User-Agent"].startswith("check_registry_deep/")


def test_blob_asks_for_identity_encoding(mock):
    mock.add(responses.GET, BLOB_URL, body=BLOB, status=200)
    assert read_blob(make_client()) == BLOB
    assert mock.calls[0].request.headers["Accept-Encoding"] == "identity"
    assert mock.calls[0].request.url == BLOB_URL


def test_blob_body_is_read_raw_even_when_gzip_encoded(mock):
    import gzip

    encoded = gzip.compress(BLOB, mtime=0)
    mock.add(responses.GET, BLOB_URL, body=encoded, status=200, headers={"Content-Encoding": "gzip"})
    client = make_client()
    with client.open_blob("team/app", BLOB_DIGEST, None) as body:
        assert body.content_encoding == "gzip"
        data = b"".join(iter(lambda: body.read(1000), b""))
    assert data == encoded


def test_blob_read_never_exceeds_the_limit(mock):
    mock.add(responses.GET, BLOB_URL, body=BLOB, status=200)
    client = make_client()
    with client.open_blob("team/app", BLOB_DIGEST, 101) as body:
        data = b"".join(iter(lambda: body.read(64), b""))
        assert body.received == 101
    assert data == BLOB[:101]


def test_invalid_repository_never_reaches_a_url(mock):
    client = make_client()
    with pytest.raises(ManifestInvalid):
        client.get_manifest("team/../../admin", "1")
    with pytest.raises(ManifestInvalid), client.open_blob("../x", BLOB_DIGEST, None):
        pass  # pragma: no cover
    assert len(mock.calls) == 0


# -- the manifest cap ------------------------------------------------------------------------------------

def test_manifest_over_4_mib_is_size_mismatch(mock):
    mock.add(responses.GET, MANIFEST_URL, body=b" " * (MAX_MANIFEST_BYTES + 1), status=200)
    with pytest.raises(SizeMismatch) as caught:
        make_client().get_manifest("team/app", "1")
    assert str(caught.value) == "manifest exceeds the 4 MiB cap"


def test_manifest_of_exactly_4_mib_is_read(mock):
    mock.add(responses.GET, MANIFEST_URL, body=b" " * MAX_MANIFEST_BYTES, status=200)
    assert len(make_client().get_manifest("team/app", "1").body) == MAX_MANIFEST_BYTES


# -- a blob through the client and verify_body -----------------------------------------------------------

def test_blob_end_to_end_ok(mock):
    mock.add(responses.GET, BLOB_URL, body=BLOB, status=200)
    client = make_client()
    descriptor = Descriptor("application/octet-stream", BLOB_DIGEST, len(BLOB), LAYER)
    with client.open_blob("team/app", BLOB_DIGEST, len(BLOB) + 1) as body:
        assert verify_body(body, descriptor, threading.Event(), client.deadline, chunk_size=1000) == ()
        assert body.received == len(BLOB)


def test_content_encoding_identity_is_no_encoding(mock):
    descriptor = Descriptor("application/octet-stream", BLOB_DIGEST, len(BLOB), LAYER)
    client = make_client()
    mock.add(responses.GET, BLOB_URL, body=BLOB[:1000], status=200, headers={"Content-Encoding": "identity"})
    with client.open_blob("team/app", BLOB_DIGEST, None) as body, pytest.raises(SizeMismatch) as caught:
        verify_body(body, descriptor, threading.Event(), client.deadline)
    assert str(caught.value) == f"truncated: got 1000 of {len(BLOB)} bytes"
    mock.replace(responses.GET, BLOB_URL, body=BLOB + bytes(100_000), status=200,
                 headers={"Content-Encoding": "identity"})
    with client.open_blob("team/app", BLOB_DIGEST, None) as body:
        with pytest.raises(SizeMismatch):
            verify_body(body, descriptor, threading.Event(), client.deadline)
        assert body.received == len(BLOB) + 1


# -- the environment: read once per origin, and explicit TLS settings still win ----------------------------

def test_the_environment_is_read_once_per_origin_and_its_proxy_applies(mock, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:3128")
    reads = []
    merge = requests.Session.merge_environment_settings
    monkeypatch.setattr(requests.Session, "merge_environment_settings",
                        lambda self, *args: reads.append(args[0]) or merge(self, *args))
    mock.add(responses.HEAD, BLOB_URL, headers={"Content-Length": str(len(BLOB))})
    client = make_client()
    for _ in range(3):
        client.head_blob("team/app", BLOB_DIGEST)
    assert len(reads) == 1
    assert all(call.request.req_kwargs["proxies"].get("http") == "http://127.0.0.1:3128" for call in mock.calls)


def test_an_explicit_ca_bundle_wins_over_requests_ca_bundle_and_plain_http_verifies_nothing(mock, monkeypatch):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/from-the-environment.pem")
    https = "https://registry.example.org"
    mock.add(responses.GET, f"{https}/v2/", json={})
    mock.add(responses.GET, f"{BASE}/v2/", json={})
    RegistryClient(https, Deadline(10), retry=FAST, tls=TLSOptions(verify="/etc/ssl/mine.pem")).ping()
    RegistryClient(https, Deadline(10), retry=FAST).ping()
    make_client().ping()
    assert [call.request.req_kwargs["verify"] for call in mock.calls] == [
        "/etc/ssl/mine.pem", "/etc/ssl/certs/from-the-environment.pem", True]


def test_bodies_read_to_their_end_leave_the_connection_for_the_next_request():
    """Manifests and blobs are read straight from http.client; their connection must still go back to the pool.
    Closed instead, every next request opened a new one: a round trip more behind a WAN."""
    import http.server
    import socketserver

    connections = []

    class KeepAlive(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self):
            connections.append(self.client_address)
            super().setup()

        def do_GET(self):
            body, kind = (BLOB, "application/octet-stream") if "/blobs/" in self.path else (BODY, DOCKER_MANIFEST)
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), KeepAlive)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = RegistryClient(f"http://127.0.0.1:{server.server_address[1]}", Deadline(10), retry=FAST, workers=1)
        for _ in range(3):
            assert client.get_manifest("team/app", "1").body == BODY
            assert read_blob(client) == BLOB
    finally:
        server.shutdown()
        server.server_close()
    assert len(connections) == 1, connections


# -- reading bodies: urllib3's public read1, or the one shim ----------------------------------------------

def urllib3_version() -> tuple:
    return tuple(int(part) for part in urllib3.__version__.split(".")[:2])


def test_each_library_set_reads_bodies_the_way_it_should():
    """urllib3 2.2+ (PyPI, trixie's 2.3): its public read1; 1.26 (bookworm), which has none: the named shim."""
    expected = PUBLIC_READ1 if urllib3_version() >= (2, 2) else LEGACY_SHIM
    if urllib3.__version__.startswith("1.26."):
        assert expected == LEGACY_SHIM
    with responses.RequestsMock() as mock:
        mock.add(responses.GET, BLOB_URL, body=BLOB)
        client = make_client()
        with client.open_blob("team/app", BLOB_DIGEST, None) as body:
            assert read_path(body._response.raw) == expected
            assert b"".join(iter(lambda: body.read(1000), b"")) == BLOB


def partial_body(length: int, then):
    """A LoopbackServer handler: a 200 declaring all of BLOB, its first `length` bytes, then `then(handler)`."""

    def handle(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(BLOB)))
        handler.end_headers()
        handler.wfile.write(BLOB[:length])
        handler.wfile.flush()
        then(handler)

    return handle


def test_a_body_that_stalls_keeps_every_byte_that_came_before_the_stall():
    """A real socket: 3,000 bytes of 10,240, then nothing. The read hands over the 3,000 at once (one read of
    the socket, on either path), and the next one is a Stall that counts them: none lost with the timeout."""
    release = threading.Event()
    with LoopbackServer(partial_body(3000, lambda handler: release.wait(10))) as server:
        try:
            client = RegistryClient(server.url, Deadline(10), retry=FAST)
            with client.open_blob("team/app", BLOB_DIGEST, None, stall=0.3) as body:
                assert body.read(1 << 20) == BLOB[:3000]
                with pytest.raises(Stalled) as caught:
                    body.read(1 << 20)
        finally:
            release.set()
    assert (caught.value.reached, body.received) == (3000, 3000)


def test_a_response_without_any_read1_is_an_internal_error_not_a_silent_fallback():
    class NoRead1:
        _fp = None

    with pytest.raises(InternalError, match="no read1, and no http.client response under it"):
        Urllib3WithoutRead1(NoRead1())


def test_a_reset_mid_body_is_named_as_such_on_either_path():
    """urllib3's read1 wraps the socket's error in ProtocolError("Connection broken: ..."): the words are still
    the socket's own, as when http.client was read directly."""
    read = threading.Event()

    def reset(handler):
        read.wait(10)  # the 100 bytes were read, on their own: now the reset
        handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        handler.connection.close()

    with LoopbackServer(partial_body(100, reset)) as server:
        client = RegistryClient(server.url, Deadline(10), retry=FAST)
        with client.open_blob("team/app", BLOB_DIGEST, None, stall=5) as body:
            assert body.read(1 << 20) == BLOB[:100]
            read.set()
            with pytest.raises(TransportError) as caught:
                body.read(1 << 20)
    assert str(caught.value) == f"connection reset by 127.0.0.1:{server.port} after 100 bytes"


# -- the storage behind a redirect: its answer is its own, and says so -----------------------------------

STORAGE = "http://127.0.0.2:9000"
S3_NO_SUCH_KEY = ('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NoSuchKey</Code><Message>The specified key '
                  'does not exist.</Message><Key>docker/registry/v2/blobs/x/data</Key></Error>')
GCS_EXPIRED = ("<?xml version='1.0' encoding='UTF-8'?><Error><Code>ExpiredToken</Code><Message>Invalid argument."
               "</Message><Details>The provided token has expired. Request signature expired at: "
               "2026-12-07T14:00:00+00:00</Details></Error>")
SWIFT_TEMPURL = "<html><h1>Unauthorized</h1><p>This server could not verify that you are authorized to access " \
                "the document you requested.</p></html>"


@pytest.mark.parametrize("status, body, error, message", [
    (404, S3_NO_SUCH_KEY, "StorageNotFound", "404 NoSuchKey from the storage at 127.0.0.2:9000: The specified key "
     "does not exist. (redirected by the registry; the registry still lists the blob)"),
    (400, GCS_EXPIRED, "StorageError", "400 ExpiredToken from the storage at 127.0.0.2:9000: Invalid argument. "
     "(redirected by the registry)"),
    (401, SWIFT_TEMPURL, "StorageError", "401 from the storage at 127.0.0.2:9000: Unauthorized This server could "
     "not verify that you are authorized to access the document you requested. (redirected by the registry)"),
    (404, errors_body("BLOB_UNKNOWN", "blob unknown to registry"), "StorageNotFound",
     "404 BLOB_UNKNOWN from the storage at 127.0.0.2:9000: blob unknown to registry (redirected by the registry; "
     "the registry still lists the blob)"),
])
def test_an_error_from_the_storage_behind_a_redirect_names_it_and_reads_its_body(mock, status, body, error,
                                                                                 message):
    """Was: `404 BLOB_UNKNOWN in every repository` for S3's NoSuchKey (the code filled in by the plugin), and
    `403` alone for an expired URL (only JSON bodies were read)."""
    from check_registry_deep import errors
    storage = f"{STORAGE}/bucket/blob?X-Amz-Signature=secret"
    mock.add(responses.GET, BLOB_URL, status=307, headers={"Location": storage})
    mock.add(responses.GET, storage, status=status, body=body)
    with pytest.raises(errors.CheckError) as raised, make_client().open_blob("team/app", BLOB_DIGEST, None):
        pass
    assert type(raised.value).__name__ == error
    assert str(raised.value) == message
    assert not isinstance(raised.value, BlobUnknown)  # the registry knows the blob: no "link lost" verdict


def test_a_bodiless_404_from_the_storage_gets_no_code_filled_in(mock):
    """A HEAD's 404 has no body: from the registry it means BLOB_UNKNOWN, from the storage nothing more than 404."""
    from check_registry_deep.errors import StorageNotFound
    storage = f"{STORAGE}/bucket/blob"
    mock.add(responses.HEAD, BLOB_URL, status=307, headers={"Location": storage})
    mock.add(responses.HEAD, storage, status=404)
    with pytest.raises(StorageNotFound) as raised:
        make_client().head_blob("team/app", BLOB_DIGEST)
    assert str(raised.value) == ("HEAD in team/app: 404 from the storage at 127.0.0.2:9000 (redirected by the "
                                 "registry; the registry still lists the blob)")


@pytest.mark.parametrize("openssl_says, hinted", [
    ("[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)", True),  # OpenSSL 3.0 (bookworm)
    ("[SSL: RECORD_LAYER_FAILURE] record layer failure (_ssl.c:1029)", True),  # OpenSSL 3.2+ (trixie)
    ("[SSL: PACKET_LENGTH_TOO_LONG] packet length too long (_ssl.c:1000)", True),
    ("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate (_ssl.c:1006)", False),
])
def test_a_tls_failure_that_looks_like_plain_http_says_to_use_http(openssl_says, hinted):
    exc = requests.exceptions.SSLError(f"HTTPSConnectionPool(host='127.0.0.1', port=5000): Max retries exceeded "
                                       f"with url: /v2/ (Caused by SSLError(SSLError(1, '{openssl_says}')))")
    line = tls_failure(exc, "https://127.0.0.1:5000")
    reason = openssl_says.split("] ", 1)[1].rsplit(" (_ssl.c:", 1)[0]  # OpenSSL's words, not Python's wrapping
    hint = "it answers plain HTTP (use http://127.0.0.1:5000): " if hinted else ""
    assert line == f"TLS failure talking to https://127.0.0.1:5000: {hint}{reason}"
