"""Cosign signatures against a key: each form, each key type, and every way a signature can fail to count."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from check_registry_deep.errors import SignatureInvalid, SignatureMismatch, UsageError
from check_registry_deep.reference import Digest
from check_registry_deep.signatures import (
    load_public_key,
    pae,
    require_subject,
    verify_sigstore_bundle,
    verify_simple_signing,
)
from registry_lab.signing import KeyPair, sign_simple, sigstore_bundle, simple_signing_payload

IMAGE = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32
KINDS = ["ecdsa-p256", "ecdsa-p384", "rsa", "ed25519"]


@pytest.fixture(scope="module")
def pairs():
    return {kind: KeyPair.generate(kind) for kind in KINDS}


def key_file(tmp_path: Path, keys: KeyPair, name: str = "cosign.pub"):
    return load_public_key(str(keys.write_public(tmp_path / name)))


@pytest.mark.parametrize("kind", KINDS)
def test_a_simple_signing_signature_verifies_and_names_the_digest(pairs, tmp_path, kind):
    payload, signature = sign_simple(pairs[kind], IMAGE, "127.0.0.1:5000/apps/web")
    assert verify_simple_signing(key_file(tmp_path, pairs[kind]), payload, signature) == Digest.parse(IMAGE)


@pytest.mark.parametrize("kind", KINDS)
def test_a_bundle_signature_verifies_over_pae_and_names_its_subjects(pairs, tmp_path, kind):
    bundle = sigstore_bundle(pairs[kind], (IMAGE, OTHER))
    assert verify_sigstore_bundle(key_file(tmp_path, pairs[kind]), bundle) == (Digest.parse(IMAGE),
                                                                               Digest.parse(OTHER))


def test_another_key_does_not_verify_either_form(pairs, tmp_path):
    key = key_file(tmp_path, pairs["ecdsa-p256"])
    payload, signature = sign_simple(pairs["ecdsa-p384"], IMAGE, "apps/web")
    with pytest.raises(SignatureInvalid, match=f"^signature does not verify with {tmp_path}/cosign.pub$"):
        verify_simple_signing(key, payload, signature)
    with pytest.raises(SignatureInvalid, match="^signature does not verify with "):
        verify_sigstore_bundle(key, sigstore_bundle(pairs["rsa"], (IMAGE,)))


def test_a_payload_changed_after_signing_does_not_verify(pairs, tmp_path):
    payload, signature = sign_simple(pairs["ecdsa-p256"], IMAGE, "apps/web")
    for changed in (payload[:-1], simple_signing_payload(OTHER, "apps/web"), payload + b" "):
        with pytest.raises(SignatureInvalid, match="does not verify"):
            verify_simple_signing(key_file(tmp_path, pairs["ecdsa-p256"]), changed, signature)


def test_a_dsse_signature_over_the_bare_payload_instead_of_pae_does_not_verify(pairs, tmp_path):
    keys = pairs["ecdsa-p256"]
    bundle = json.loads(sigstore_bundle(keys, (IMAGE,)))
    statement = base64.b64decode(bundle["dsseEnvelope"]["payload"])
    bundle["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(keys.sign(statement)).decode()
    with pytest.raises(SignatureInvalid, match="does not verify"):
        verify_sigstore_bundle(key_file(tmp_path, keys), json.dumps(bundle).encode())


def test_a_bundle_whose_signature_covers_other_bytes_does_not_verify(pairs, tmp_path):
    bundle = sigstore_bundle(pairs["ed25519"], (IMAGE,), signed_payload=b"{}")
    with pytest.raises(SignatureInvalid, match="does not verify"):
        verify_sigstore_bundle(key_file(tmp_path, pairs["ed25519"]), bundle)


def test_pae_is_dsse_v1():
    assert pae("application/vnd.in-toto+json", b"{}") == b"DSSEv1 28 application/vnd.in-toto+json 2 {}"


def test_a_signature_for_another_digest_names_both():
    with pytest.raises(SignatureMismatch) as caught:
        require_subject((Digest.parse(OTHER),), Digest.parse(IMAGE))
    assert str(caught.value) == f"signature is for {OTHER}, not {IMAGE}"
    require_subject((Digest.parse(OTHER), Digest.parse(IMAGE)), Digest.parse(IMAGE))


@pytest.mark.parametrize(("document", "expected"), [
    (b"not json", "^simple-signing payload: expected JSON, got JSONDecodeError$"),
    (b"[]", "^simple-signing payload: expected a JSON object, got list$"),
    (b'{"critical": {"type": "something else"}}',
     "^signature payload: expected critical.type 'cosign container image signature', got 'something else'$"),
    (json.dumps({"critical": {"type": "cosign container image signature", "image": {}}}).encode(),
     "^critical.image.docker-manifest-digest: invalid digest: expected algorithm:hex, got None$"),
])
def test_a_verified_payload_that_is_not_simple_signing_says_what_is_wrong(pairs, tmp_path, document, expected):
    keys = pairs["ecdsa-p256"]
    signature = base64.b64encode(keys.sign(document)).decode()
    with pytest.raises(SignatureInvalid, match=expected):
        verify_simple_signing(key_file(tmp_path, keys), document, signature)


@pytest.mark.parametrize(("envelope", "expected"), [
    ({"messageSignature": {}}, "^sigstore bundle: expected a dsseEnvelope, got a messageSignature$"),
    ({"dsseEnvelope": {"payloadType": "text/plain"}},
     "^sigstore bundle: expected payloadType application/vnd.in-toto\\+json, got 'text/plain'$"),
    ({"dsseEnvelope": {"payloadType": "application/vnd.in-toto+json", "payload": "e30=", "signatures": []}},
     "^sigstore bundle: expected at least one DSSE signature, got none$"),
    ({"dsseEnvelope": {"payloadType": "application/vnd.in-toto+json", "payload": "not base64!"}},
     "^the DSSE payload: expected base64, got 'not base64!'$"),
])
def test_a_bundle_that_is_not_what_cosign_writes_says_what_is_wrong(pairs, tmp_path, envelope, expected):
    with pytest.raises(SignatureInvalid, match=expected):
        verify_sigstore_bundle(key_file(tmp_path, pairs["ecdsa-p256"]), json.dumps(envelope).encode())


def test_a_signature_annotation_that_is_not_base64_is_invalid(pairs, tmp_path):
    with pytest.raises(SignatureInvalid, match="^the signature annotation: expected base64, got '%%%'$"):
        verify_simple_signing(key_file(tmp_path, pairs["rsa"]), b"{}", "%%%")


def test_key_files_that_cannot_be_used_are_one_line_usage_errors(pairs, tmp_path):
    with pytest.raises(UsageError, match=f"^cannot read cosign key {tmp_path}/missing.pub: No such file or directory$"):
        load_public_key(str(tmp_path / "missing.pub"))
    (tmp_path / "garbage.pub").write_text("hello\n")
    with pytest.raises(UsageError, match=r"^cosign key .*/garbage.pub: expected a PEM public key \(-----BEGIN PUBLIC"):
        load_public_key(str(tmp_path / "garbage.pub"))
    (tmp_path / "cosign.key").write_text("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\nx\n"
                                         "-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n")
    with pytest.raises(UsageError, match="expected the PEM public key, got a private key"):
        load_public_key(str(tmp_path / "cosign.key"))
