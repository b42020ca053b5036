"""End to end: authentication, TLS, redirects and --connect-to against real docker-registry instances."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import stat
from urllib.parse import urlsplit

import pytest

from registry_lab.secure import BlobStore, CertificateAuthority, RedirectingFront, TokenIssuer, htpasswd

pytestmark = pytest.mark.e2e

PASSWORD = "s3cret-Pa55-do-not-print"
REFS = ["base/golden:1", "apps/multi:1.0"]


def image_args(refs=REFS):
    return [arg for ref in refs for arg in ("-i", ref)]


def password_file(tmp_path, password=PASSWORD):
    path = tmp_path / "password"
    path.write_text(password + "\n")
    return str(path)


def credentials(tmp_path):
    return ["--username", "alice", "--password-file", password_file(tmp_path)]


def assert_no_secret(run, secret=PASSWORD):
    assert secret not in run.stdout and secret not in run.stderr
    assert base64.b64encode(f"alice:{secret}".encode()).decode() not in run.stdout + run.stderr


def basic_auth_config(tmp_path):
    users = htpasswd(tmp_path / "htpasswd", {"alice": PASSWORD})
    return {"auth": {"htpasswd": {"realm": "lab", "path": str(users)}}}


@pytest.fixture
def basic_registry(lab, tmp_path):
    registry = lab.registry(tmp_path / "registry", config=basic_auth_config(tmp_path))
    yield registry
    registry.stop()


@pytest.fixture
def token_registry(lab, tmp_path):
    with TokenIssuer(tmp_path, {"alice": PASSWORD}) as issuer:
        registry = lab.registry(tmp_path / "registry", config=issuer.registry_config())
        yield registry, issuer
        registry.stop()


def test_basic_auth_with_password_file(plugin, basic_registry, tmp_path):
    run = plugin("-R", basic_registry.url, *image_args(), "--username", "alice", "--password-file",
                 password_file(tmp_path))
    assert run.code == 0, run.stdout
    assert run.first.startswith("REGISTRY_DEEP OK - 2 images, 6 blobs, "), run.first


def test_basic_auth_with_environment_variable(plugin, basic_registry):
    run = plugin("-R", basic_registry.url, *image_args(), "--username", "alice",
                 env={"REGISTRY_DEEP_PASSWORD": PASSWORD})
    assert run.code == 0, run.stdout


def test_wrong_password_is_critical_and_never_printed_even_at_vvv(plugin, basic_registry, tmp_path):
    wrong = "wr0ng-Secret-value"
    run = plugin("-R", basic_registry.url, *image_args(), "--username", "alice", "--password-file",
                 password_file(tmp_path, wrong), "-vvv")
    assert run.code == 2
    assert f"authentication refused by {basic_registry.url} for user alice" in run.first, run.first
    assert_no_secret(run, wrong)


def test_no_credentials_is_critical(plugin, basic_registry, tmp_path):
    run = plugin("-R", basic_registry.url, *image_args(), env={"HOME": str(tmp_path), "DOCKER_CONFIG": str(tmp_path)})
    assert run.code == 2
    assert f"authentication refused by {basic_registry.url} for anonymous access" in run.first, run.first


def test_docker_config_auths(plugin, basic_registry, tmp_path):
    auth = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    (tmp_path / "config.json").write_text(json.dumps({"auths": {basic_registry.host: {"auth": auth}}}))
    run = plugin("-R", basic_registry.url, *image_args(), "--docker-config", str(tmp_path), "-vvv")
    assert run.code == 0, run.stdout
    assert_no_secret(run)
    # the usual location is used when no credentials are given
    run = plugin("-R", basic_registry.url, *image_args(), env={"DOCKER_CONFIG": str(tmp_path)})
    assert run.code == 0, run.stdout


def test_docker_config_credential_helper_on_path(plugin, basic_registry, tmp_path):
    helper = tmp_path / "bin" / "docker-credential-lab"
    helper.parent.mkdir()
    answer = json.dumps({"ServerURL": "%s", "Username": "alice", "Secret": PASSWORD})
    helper.write_text(f"#!/bin/sh\nread server\nprintf '{answer}' \"$server\"\n")
    helper.chmod(helper.stat().st_mode | stat.S_IEXEC)
    config = tmp_path / "docker"
    config.mkdir()
    (config / "config.json").write_text(json.dumps({"credHelpers": {basic_registry.host: "lab"}}))
    run = plugin("-R", basic_registry.url, *image_args(), "--docker-config", str(config), "-vvv",
                 env={"PATH": f"{helper.parent}:{os.environ['PATH']}"})
    assert run.code == 0, run.stdout + run.stderr
    assert_no_secret(run)


def test_token_auth(plugin, token_registry, tmp_path):
    registry, issuer = token_registry
    run = plugin("-R", registry.url, *image_args(), "--username", "alice", "--password-file", password_file(tmp_path))
    assert run.code == 0, run.stdout
    scopes = [r["path"] for r in issuer.requests]
    assert any("scope=repository%3Aapps%2Fmulti%3Apull" in s for s in scopes), scopes
    # one token per repository, reused for every blob: far fewer token requests than blob requests
    assert len(issuer.requests) <= 4, scopes


def test_token_auth_refused(plugin, token_registry, tmp_path):
    registry, _ = token_registry
    run = plugin("-R", registry.url, *image_args(), "--username", "alice", "--password-file",
                 password_file(tmp_path, "nope-Nope"), "-vvv")
    assert run.code == 2
    assert f"authentication refused by {registry.url} for user alice: token service answered 401" in run.first
    assert_no_secret(run, "nope-Nope")


def test_anonymous_token_flow(plugin, lab, tmp_path):
    with TokenIssuer(tmp_path, {}, anonymous=True) as issuer:
        registry = lab.registry(tmp_path / "registry", config=issuer.registry_config())
        try:
            run = plugin("-R", registry.url, *image_args(), env={"DOCKER_CONFIG": str(tmp_path)})
        finally:
            registry.stop()
    assert run.code == 0, run.stdout
    assert all("Authorization" not in r for r in issuer.requests)


def test_tls_with_private_ca(plugin, lab, tmp_path, ca):
    registry = lab.tls_registry(tmp_path, ca)
    try:
        good = plugin("-R", registry.url, *image_args(), "--ca-bundle", str(ca.cert))
        bad = plugin("-R", registry.url, *image_args())
        insecure = plugin("-R", registry.url, *image_args(), "--insecure")
    finally:
        registry.stop()
    assert registry.url.startswith("https://")
    assert good.code == 0, good.stdout
    assert bad.code == 2
    assert f"TLS failure talking to {registry.url}: " in bad.first and "certificate verify failed" in bad.first, \
        bad.first
    assert "plain HTTP" not in bad.stdout  # a real TLS server with an untrusted certificate: no such hint
    assert insecure.code == 0
    assert "; TLS certificates NOT verified (--insecure)" in insecure.first
    assert "note: TLS certificates NOT verified (--insecure)" in insecure.lines


@pytest.mark.parametrize("given", ["https://", ""])
def test_a_plain_http_registry_addressed_with_https_is_told_to_use_http(plugin, pristine, given):
    """The real registry serves plain HTTP; -R with https:// (or no scheme, which means https) fails the TLS
    handshake, and the line says what to write instead."""
    address = urlsplit(pristine.url).netloc
    run = plugin("-R", f"{given}{address}", "-i", "base/golden:1")
    assert run.code == 2, run.stdout
    line = f"TLS failure talking to https://{address}: it answers plain HTTP (use http://{address}): "
    assert run.first.startswith(f"REGISTRY_DEEP CRITICAL - 1 problem, breaking 1 of 1 image: {line}"), run.first
    assert run.lines[1].startswith(f"CRITICAL: {line}"), run.lines[1]  # then OpenSSL's words
    assert plugin("-R", f"http://{address}", "-i", "base/golden:1").code == 0  # the advice works


def test_tls_with_required_client_certificate(plugin, lab, tmp_path, ca):
    registry = lab.tls_registry(tmp_path, ca, client_certs=True)
    cert, key = ca.issue("monitoring", client=True)
    try:
        good = plugin("-R", registry.url, *image_args(), "--ca-bundle", str(ca.cert), "--client-cert", str(cert),
                      "--client-key", str(key))
        bad = plugin("-R", registry.url, *image_args(), "--ca-bundle", str(ca.cert))
    finally:
        registry.stop()
    assert good.code == 0, good.stdout
    assert bad.code == 2
    assert bad.first.startswith("REGISTRY_DEEP CRITICAL - "), bad.first


def test_redirect_to_storage_backend_gets_no_credentials(plugin, basic_registry, tmp_path):
    with BlobStore(basic_registry.blob_path) as store, RedirectingFront(basic_registry.url, store.url) as front:
        run = plugin("-R", front.url, *image_args(), "--username", "alice", "--password-file",
                     password_file(tmp_path))
    assert run.code == 0, run.stdout
    assert len(store.requests) == 6  # every unique blob came from the backend...
    assert all("Authorization" not in r and "Cookie" not in r for r in store.requests)  # ...without credentials
    assert any("Authorization" in r for r in front.requests)


def test_redirect_loop_is_critical(plugin, pristine, tmp_path):
    with RedirectingFront(pristine.url, "http://127.0.0.1:1") as front:
        front.redirect = lambda path: f"{front.url}{path}"
        run = plugin("-R", front.url, "-i", "base/golden:1")
    assert run.code == 2
    assert "redirect loop at 127.0.0.1:" in run.stdout, run.stdout


def test_connect_to_reaches_another_backend(plugin, lab, pristine, damaged):
    damaged.truncate_blob(lab.images.golden.digest, 100)
    direct = plugin("-R", pristine.url, *image_args())
    via = plugin("-R", pristine.url, *image_args(), "--connect-to", damaged.host)
    assert direct.code == 0
    assert via.code == 2
    assert via.first.startswith("REGISTRY_DEEP CRITICAL - 1 broken blob, breaking 2 of 2 images: "), via.first
    ours = [e for e in damaged.access_log() if "check_registry_deep/" in e["agent"]]
    assert ours, "the damaged backend saw no request"


def test_connect_to_answers_the_backends_auth_challenge(plugin, lab, basic_registry, tmp_path):
    """The backend --connect-to reaches asks for credentials like the registry it stands for: they are sent.
    (The 401 came back with the backend's address as its URL, which is not the registry's origin, so the
    challenge went unanswered and every manifest was "401 UNAUTHORIZED".)"""
    backend = lab.registry(tmp_path / "backend", config=basic_auth_config(tmp_path))
    try:
        run = plugin("-R", basic_registry.url, *image_args(), *credentials(tmp_path), "--connect-to", backend.host)
        ours = [e for e in backend.access_log() if "check_registry_deep/" in e["agent"]]
    finally:
        backend.stop()
    assert run.code == 0, run.stdout
    assert run.first.startswith("REGISTRY_DEEP OK - 2 images, 6 blobs, "), run.first
    assert ours, "the backend saw no request"
    assert not [e for e in basic_registry.access_log() if "check_registry_deep/" in e["agent"]]


def test_connect_to_over_tls_keeps_the_registry_name_for_sni_and_the_certificate(plugin, lab, tmp_path, ca):
    """The URL names localhost:<port of A>; --connect-to sends everything to B. B's certificate is checked
    against the name in the URL (localhost), so a wrong name fails even though the bytes come from 127.0.0.1."""
    first = lab.tls_registry(tmp_path / "a", ca)
    second = lab.tls_registry(tmp_path / "b", ca)
    try:
        second.truncate_blob(lab.images.golden.digest, 100)
        url = f"https://localhost:{first.port}"
        direct = plugin("-R", url, *image_args(), "--ca-bundle", str(ca.cert))
        via = plugin("-R", url, *image_args(), "--ca-bundle", str(ca.cert), "--connect-to", second.host)
        wrong_name = plugin("-R", f"https://wrong.invalid:{first.port}", *image_args(), "--ca-bundle",
                            str(ca.cert), "--connect-to", second.host)
    finally:
        first.stop()
        second.stop()
    assert direct.code == 0, direct.stdout
    assert via.code == 2, via.stdout
    assert via.first.startswith("REGISTRY_DEEP CRITICAL - 1 broken blob, breaking 2 of 2 images: "), via.first
    assert wrong_name.code == 2
    assert "TLS failure talking to https://wrong.invalid:" in wrong_name.first, wrong_name.first


# -- a token service over TLS on another host: the TLS options reach it, --connect-to does not --------------

@pytest.fixture
def realm_elsewhere(lab, tmp_path, ca):
    """Starts a token service over https on 127.0.0.2, another host than the registries on 127.0.0.1 (as Harbor
    or GitLab run theirs), and https registries that send their clients there; stops them all afterwards."""
    with contextlib.ExitStack() as stack:
        def issuer(*, authority=ca, client_ca=None):
            started = TokenIssuer(tmp_path, {"alice": PASSWORD}, tls=authority.issue("tokens"), host="127.0.0.2",
                                  client_ca=client_ca)
            return stack.enter_context(started)

        def registry(issuer, name="a"):
            started = lab.tls_registry(tmp_path / name, ca, config=issuer.registry_config())
            stack.callback(started.stop)
            return started

        yield issuer, registry


def test_token_service_over_tls_on_another_host_trusts_the_ca_bundle_and_insecure(plugin, realm_elsewhere, ca,
                                                                                   tmp_path):
    start_issuer, start_registry = realm_elsewhere
    issuer = start_issuer()
    registry = start_registry(issuer)
    assert urlsplit(issuer.url).hostname == "127.0.0.2" and urlsplit(registry.url).hostname == "127.0.0.1"
    trusted = plugin("-R", registry.url, *image_args(), *credentials(tmp_path), "--ca-bundle", str(ca.cert))
    insecure = plugin("-R", registry.url, *image_args(), *credentials(tmp_path), "--insecure")
    assert trusted.code == 0, trusted.stdout
    assert trusted.first.startswith("REGISTRY_DEEP OK - 2 images, 6 blobs, "), trusted.first
    assert insecure.code == 0, insecure.stdout
    assert insecure.first.startswith("REGISTRY_DEEP OK - 2 images, 6 blobs, "), insecure.first
    assert "; TLS certificates NOT verified (--insecure)" in insecure.first
    assert "note: TLS certificates NOT verified (--insecure)" in insecure.lines
    assert issuer.requests and all(r["method"] == "GET" for r in issuer.requests)
    assert_no_secret(trusted)
    assert_no_secret(insecure)


def test_token_service_requiring_a_client_certificate_gets_the_clients(plugin, realm_elsewhere, ca, tmp_path):
    start_issuer, start_registry = realm_elsewhere
    registry = start_registry(start_issuer(client_ca=ca.cert))  # the registry itself asks for none
    cert, key = ca.issue("monitoring", client=True)
    good = plugin("-R", registry.url, *image_args(), *credentials(tmp_path), "--ca-bundle", str(ca.cert),
                  "--client-cert", str(cert), "--client-key", str(key))
    without = plugin("-R", registry.url, *image_args(), *credentials(tmp_path), "--ca-bundle", str(ca.cert))
    assert good.code == 0, good.stdout
    assert good.first.startswith("REGISTRY_DEEP OK - 2 images, 6 blobs, "), good.first
    assert without.code == 2, without.stdout
    assert without.first.startswith("REGISTRY_DEEP CRITICAL - ") and "token service" in without.first, without.first


def test_tls_failure_at_the_token_service_is_critical_with_its_reason(plugin, realm_elsewhere, ca, tmp_path):
    """The registry's certificate is trusted (--ca-bundle), the token service's is not (another CA signed it):
    the verdict names the token service and why its TLS failed, not a bare exception name."""
    start_issuer, start_registry = realm_elsewhere
    issuer = start_issuer(authority=CertificateAuthority(tmp_path / "other-ca", "another CA"))
    registry = start_registry(issuer)
    run = plugin("-R", registry.url, *image_args(), *credentials(tmp_path), "--ca-bundle", str(ca.cert))
    assert run.code == 2, run.stdout
    assert run.first.startswith("REGISTRY_DEEP CRITICAL - "), run.first
    assert "TLS failure" in run.first and "token service" in run.first, run.first
    assert "certificate verify failed" in run.first, run.first
    assert not issuer.requests  # no request got through the handshake
    assert_no_secret(run)


def test_connect_to_does_not_apply_to_a_token_service_on_another_host(plugin, realm_elsewhere, lab, ca, tmp_path):
    """--connect-to sends the registry's requests to B; the token requests still go to the realm's own host."""
    start_issuer, start_registry = realm_elsewhere
    issuer = start_issuer()
    first, second = start_registry(issuer, "a"), start_registry(issuer, "b")
    second.truncate_blob(lab.images.golden.digest, 100)
    run = plugin("-R", first.url, *image_args(), *credentials(tmp_path), "--ca-bundle", str(ca.cert),
                 "--connect-to", second.host)
    assert run.code == 2, run.stdout
    assert run.first.startswith("REGISTRY_DEEP CRITICAL - 1 broken blob, breaking 2 of 2 images: "), run.first
    assert issuer.requests  # the tokens came from the realm, not from B
    assert not [e for e in first.access_log() if "check_registry_deep/" in e["agent"]]
