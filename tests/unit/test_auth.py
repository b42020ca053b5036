"""auth.py and the client's auth and redirect handling against mocked HTTP (responses)."""

from __future__ import annotations

import base64
import json
from typing import Iterator

import pytest
import responses

from check_registry_deep.auth import (
    PASSWORD_ENV,
    Credentials,
    basic_authorization,
    load_credentials,
    parse_challenge,
    scope_for,
)
from check_registry_deep.client import RegistryClient
from check_registry_deep.deadline import Deadline
from check_registry_deep.errors import AuthError, RedirectError, UsageError
from check_registry_deep.retry import RetryPolicy

REGISTRY = "https://127.0.0.1:5000"
REALM = "https://127.0.0.1:5001/token"
MANIFEST_URL = f"{REGISTRY}/v2/team/app/manifests/1"
BODY = b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "layers": []}'
SECRET = "pa55-Word-secret"
BEARER = f'Bearer realm="{REALM}",service="registry.lab",scope="repository:team/app:pull"'


@pytest.fixture
def mock() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


def client(credentials: Credentials = Credentials()) -> RegistryClient:
    return RegistryClient(REGISTRY, Deadline(10), retry=RetryPolicy(attempts=1), credentials=credentials)


def test_parse_challenge():
    assert parse_challenge(BEARER) == ("bearer", {"realm": REALM, "service": "registry.lab",
                                                  "scope": "repository:team/app:pull"})
    assert parse_challenge('Basic realm="lab"') == ("basic", {"realm": "lab"})


@pytest.mark.parametrize("url, scope", [
    (f"{REGISTRY}/v2/team/app/manifests/1", "repository:team/app:pull"),
    (f"{REGISTRY}/v2/a/b/c/blobs/sha256:00", "repository:a/b/c:pull"),
    (f"{REGISTRY}/v2/", ""),
])
def test_scope_for(url, scope):
    assert scope_for(url) == scope


def test_password_file_first_line(tmp_path):
    path = tmp_path / "pw"
    path.write_text(f"{SECRET}\nsecond line\n")
    creds = load_credentials("h", username="alice", password_file=str(path), docker_config=None)
    assert (creds.username, creds.password, creds.source) == ("alice", SECRET, "--password-file")
    assert SECRET not in repr(creds)


def test_password_from_environment(monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, SECRET)
    assert load_credentials("h", username="alice", password_file=None, docker_config=None).password == SECRET


def test_username_without_password_is_a_usage_error(monkeypatch):
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    with pytest.raises(UsageError, match="--username alice needs --password-file FILE or the REGISTRY_DEEP_PASSWORD"):
        load_credentials("h", username="alice", password_file=None, docker_config=None)


def test_password_file_without_username(tmp_path):
    path = tmp_path / "pw"
    path.write_text("x\n")
    with pytest.raises(UsageError, match="--password-file needs --username"):
        load_credentials("h", username=None, password_file=str(path), docker_config=None)


def test_docker_config_auths_and_identity_token(tmp_path):
    auth = base64.b64encode(f"alice:{SECRET}".encode()).decode()
    (tmp_path / "config.json").write_text(json.dumps({"auths": {
        "127.0.0.1:5000": {"auth": auth}, "127.0.0.1:6000": {"auth": base64.b64encode(b"<token>:").decode(),
                                                              "identitytoken": "refresh-me"}}}))
    creds = load_credentials("127.0.0.1:5000", username=None, password_file=None, docker_config=str(tmp_path))
    assert (creds.username, creds.password) == ("alice", SECRET)
    token = load_credentials("127.0.0.1:6000", username=None, password_file=None, docker_config=str(tmp_path))
    assert token.identity_token == "refresh-me"
    assert not load_credentials("127.0.0.1:7000", username=None, password_file=None, docker_config=str(tmp_path))


def test_docker_config_dir_without_config_json(tmp_path):
    with pytest.raises(UsageError, match="no config.json in --docker-config"):
        load_credentials("h", username=None, password_file=None, docker_config=str(tmp_path))


def test_bearer_flow_caches_one_token_per_repository(mock):
    mock.add(responses.GET, MANIFEST_URL, status=401, headers={"WWW-Authenticate": BEARER})
    mock.add(responses.GET, MANIFEST_URL, body=BODY, status=200)
    mock.add(responses.GET, REALM, json={"access_token": "tok-1", "expires_in": 300})
    registry = client(Credentials("alice", SECRET))
    registry.get_manifest("team/app", "1")
    registry.get_manifest("team/app", "1")
    token_calls = [c for c in mock.calls if c.request.url.startswith(REALM)]
    assert len(token_calls) == 1
    assert "scope=repository%3Ateam%2Fapp%3Apull" in token_calls[0].request.url
    assert token_calls[0].request.headers["Authorization"].startswith("Basic ")
    manifest_calls = [c for c in mock.calls if c.request.url == MANIFEST_URL]
    assert [c.request.headers.get("Authorization") for c in manifest_calls] == [None, "Bearer tok-1",
                                                                                "Bearer tok-1"]


def test_refresh_token_is_posted(mock):
    mock.add(responses.GET, MANIFEST_URL, status=401, headers={"WWW-Authenticate": BEARER})
    mock.add(responses.GET, MANIFEST_URL, body=BODY, status=200)
    mock.add(responses.POST, REALM, json={"token": "tok-2"})
    client(Credentials(identity_token="refresh-me")).get_manifest("team/app", "1")
    post = next(c for c in mock.calls if c.request.method == "POST")
    assert "grant_type=refresh_token" in post.request.body and "refresh_token=refresh-me" in post.request.body


def test_token_refused_names_registry_and_user_never_the_secret(mock):
    mock.add(responses.GET, MANIFEST_URL, status=401, headers={"WWW-Authenticate": BEARER})
    mock.add(responses.GET, REALM, status=401)
    with pytest.raises(AuthError) as caught:
        client(Credentials("alice", SECRET)).get_manifest("team/app", "1")
    assert str(caught.value) == f"authentication refused by {REGISTRY} for user alice: token service answered 401"
    assert SECRET not in str(caught.value)


def test_second_401_with_a_fresh_token_is_refused(mock):
    mock.add(responses.GET, MANIFEST_URL, status=401, headers={"WWW-Authenticate": BEARER})
    mock.add(responses.GET, REALM, json={"token": "tok"})
    with pytest.raises(AuthError, match="credentials refused"):
        client(Credentials("alice", SECRET)).get_manifest("team/app", "1")


def test_plain_http_realm_for_https_registry_gets_no_credentials(mock):
    mock.add(responses.GET, MANIFEST_URL, status=401,
             headers={"WWW-Authenticate": 'Bearer realm="http://127.0.0.1:5001/token",service="s"'})
    with pytest.raises(AuthError, match="token realm is plain http while the registry is https"):
        client(Credentials("alice", SECRET)).get_manifest("team/app", "1")
    assert not [c for c in mock.calls if "5001" in c.request.url]


def test_the_basic_header_is_built_here_in_utf8_for_the_registry_and_the_token_realm_alike(mock):
    """No private requests helper: the header is ours, UTF-8 as docker login sends it (requests' helper
    encodes in Latin-1 and raised UnicodeEncodeError beyond it)."""
    assert basic_authorization("alice", SECRET) == "Basic YWxpY2U6cGE1NS1Xb3JkLXNlY3JldA=="
    assert basic_authorization("jürgen", "пароль") == "Basic " + base64.b64encode(
        "jürgen:пароль".encode()).decode()
    mock.add(responses.GET, MANIFEST_URL, status=401, headers={"WWW-Authenticate": 'Basic realm="lab"'})
    mock.add(responses.GET, MANIFEST_URL, body=BODY, status=200)
    client(Credentials("jürgen", "пароль")).get_manifest("team/app", "1")
    assert [c.request.headers.get("Authorization") for c in mock.calls] == [
        None, basic_authorization("jürgen", "пароль")]
    mock.add(responses.GET, f"{REGISTRY}/v2/team/web/manifests/1", status=401,
             headers={"WWW-Authenticate": BEARER.replace("team/app", "team/web")})
    mock.add(responses.GET, REALM, json={"token": "tok"})
    mock.add(responses.GET, f"{REGISTRY}/v2/team/web/manifests/1", body=BODY, status=200)
    client(Credentials("jürgen", "пароль")).get_manifest("team/web", "1")
    realm_call = next(c for c in mock.calls if c.request.url.startswith(REALM))
    assert realm_call.request.headers["Authorization"] == basic_authorization("jürgen", "пароль")


def test_basic_challenge_without_credentials_is_refused(mock):
    mock.add(responses.GET, MANIFEST_URL, status=401, headers={"WWW-Authenticate": 'Basic realm="lab"'})
    with pytest.raises(AuthError, match="for anonymous access: the registry wants credentials"):
        client().get_manifest("team/app", "1")


def test_redirect_to_another_host_carries_no_authorization_nor_netrc(mock, tmp_path, monkeypatch):
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.2 login mallory password stolen\n")
    monkeypatch.setenv("NETRC", str(netrc))
    blob = b"x" * 10
    digest = "sha256:" + __import__("hashlib").sha256(blob).hexdigest()
    storage = f"https://127.0.0.2:9000/bucket/{digest}"
    mock.add(responses.GET, f"{REGISTRY}/v2/team/app/blobs/{digest}", status=307, headers={"Location": storage})
    mock.add(responses.GET, storage, body=blob)
    registry = client(Credentials("alice", SECRET))
    registry.auth._challenge = ("basic", {})  # as after a first 401: credentials go with every registry request
    from check_registry_deep.reference import Digest
    with registry.open_blob("team/app", Digest.parse(digest), 11) as body:
        assert body.read(100) == blob
    first, second = mock.calls[0].request, mock.calls[1].request
    assert first.headers["Authorization"].startswith("Basic ")
    assert "Authorization" not in second.headers


def test_https_to_http_downgrade_is_refused(mock):
    mock.add(responses.GET, MANIFEST_URL, status=302, headers={"Location": "http://127.0.0.1:5000/elsewhere"})
    with pytest.raises(RedirectError, match="refused a redirect from https to http://127.0.0.1:5000: a downgrade"):
        client().get_manifest("team/app", "1")


def test_redirect_hop_limit(mock):
    for hop in range(8):
        mock.add(responses.GET, f"{REGISTRY}/hop/{hop}" if hop else MANIFEST_URL, status=302,
                 headers={"Location": f"{REGISTRY}/hop/{hop + 1}"})
    with pytest.raises(RedirectError, match="more than 5 redirects"):
        client().get_manifest("team/app", "1")


def test_usual_docker_config_locations_in_docker_order(tmp_path, monkeypatch):
    from check_registry_deep.auth import usual_docker_config
    home, custom = tmp_path / "home", tmp_path / "custom"
    (home / ".docker").mkdir(parents=True)
    custom.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    assert usual_docker_config() is None
    (home / ".dockercfg").write_text("{}")
    assert usual_docker_config() == str(home / ".dockercfg")
    (home / ".docker" / "config.json").write_text("{}")
    assert usual_docker_config() == str(home / ".docker" / "config.json")
    (custom / "config.json").write_text("{}")
    monkeypatch.setenv("DOCKER_CONFIG", str(custom))
    assert usual_docker_config() == str(custom / "config.json")


def test_docker_py_is_not_imported_without_a_docker_config(tmp_path):
    import subprocess
    import sys
    code = ("import sys; from check_registry_deep.auth import load_credentials; "
            "assert not load_credentials('h', username=None, password_file=None, docker_config=None); "
            "print('docker' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin",
                               "PYTHONPATH": str(__import__("pathlib").Path(__file__).resolve().parents[2])})
    assert done.stdout.strip() == "False"
