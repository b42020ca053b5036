"""Cosign signatures checked against a public key: what the registry serves, not a transparency-log policy.

Two forms, both as cosign writes them:

- simple signing (the legacy `sha256-<hex>.sig` manifest): each layer is a JSON payload naming the image's digest
  in `critical.image.docker-manifest-digest`; the layer descriptor's `dev.cosignproject.cosign/signature`
  annotation holds the base64 signature over the payload's bytes;
- a sigstore bundle (cosign 3's default, an OCI 1.1 referrer): a DSSE envelope around an in-toto statement whose
  subject digests name the image; the signature is over DSSE's pre-authentication encoding (PAE), not the payload.

Every key signs a SHA-256 prehash (cosign's default), except Ed25519, which signs the message itself. Pure
functions over bytes: no HTTP, no states. `cryptography` is imported only when a key is loaded.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any, Tuple

from .errors import ManifestInvalid, SignatureInvalid, SignatureMismatch, UnsupportedDigest, UsageError
from .reference import Digest

COSIGN_SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
SIMPLE_SIGNING_MEDIA_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
SIMPLE_SIGNING_TYPE = "cosign container image signature"
SIGSTORE_BUNDLE_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
COSIGN_SIGNATURE_ARTIFACT_TYPE = "application/vnd.dev.cosign.artifact.sig.v1+json"
NOTARY_SIGNATURE_TYPE = "application/vnd.cncf.notary.signature"
#: Artifact types that make a referrer a signature (DESIGN.md §8); only the cosign ones can be checked with a key.
SIGNATURE_ARTIFACT_TYPES = frozenset({COSIGN_SIGNATURE_ARTIFACT_TYPE, SIGSTORE_BUNDLE_TYPE, NOTARY_SIGNATURE_TYPE})
IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
#: A signature payload or bundle is a small JSON document; more than this is not one.
MAX_SIGNED_DOCUMENT = 4 * 1024 * 1024


@dataclass(frozen=True)
class CosignKey:
    """A public key read from a PEM file; `path` names it in messages."""

    path: str
    public_key: Any  # a cryptography public key: ECDSA, RSA or Ed25519

    def verifies(self, signature: bytes, message: bytes) -> bool:
        """Whether `signature` is this key's over `message` (SHA-256 prehash; Ed25519 signs the message)."""
        from cryptography.exceptions import InvalidSignature  # only with a key
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

        try:
            if isinstance(self.public_key, ec.EllipticCurvePublicKey):
                self.public_key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
            elif isinstance(self.public_key, rsa.RSAPublicKey):
                self.public_key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
            else:
                self.public_key.verify(signature, message)
        except (InvalidSignature, ValueError):
            return False
        return True


def load_public_key(path: str) -> CosignKey:
    """Read a PEM public key (ECDSA P-256/P-384/P-521, RSA, Ed25519); a UsageError saying what is wrong if not."""
    try:
        with open(path, "rb") as file:
            pem = file.read(64 * 1024)
    except OSError as exc:
        raise UsageError(f"cannot read cosign key {path}: {exc.strerror or exc}") from None
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa  # only with a key
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    if b"PRIVATE KEY-----" in pem:
        raise UsageError(f"cosign key {path}: expected the PEM public key, got a private key (give the .pub file)")
    try:
        public_key = load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(f"cosign key {path}: expected a PEM public key (-----BEGIN PUBLIC KEY-----), "
                         f"got none that loads ({reason})") from None
    if not isinstance(public_key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey, ed25519.Ed25519PublicKey)):
        raise UsageError(f"cosign key {path}: expected an ECDSA, RSA or Ed25519 public key, "
                         f"got {type(public_key).__name__}")
    return CosignKey(path, public_key)


def verify_simple_signing(key: CosignKey, payload: bytes, signature_b64: str) -> Digest:
    """The image digest a simple-signing payload names, once its signature verifies with `key`."""
    if not key.verifies(_base64(signature_b64, "the signature annotation"), payload):
        raise SignatureInvalid(f"signature does not verify with {key.path}")
    document = _json_object(payload, "simple-signing payload")
    critical = document.get("critical")
    if not isinstance(critical, dict) or critical.get("type") != SIMPLE_SIGNING_TYPE:
        got = critical.get("type") if isinstance(critical, dict) else "no critical section"
        raise SignatureInvalid(f"signature payload: expected critical.type {SIMPLE_SIGNING_TYPE!r}, got {got!r}")
    image = critical.get("image")
    return _digest(image.get("docker-manifest-digest") if isinstance(image, dict) else None,
                   "critical.image.docker-manifest-digest")


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what a DSSE signature is over."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def verify_sigstore_bundle(key: CosignKey, bundle: bytes) -> Tuple[Digest, ...]:
    """The subject digests of a sigstore bundle's in-toto statement, once a DSSE signature verifies with `key`."""
    document = _json_object(bundle, "sigstore bundle")
    envelope = document.get("dsseEnvelope")
    if not isinstance(envelope, dict):
        raise SignatureInvalid("sigstore bundle: expected a dsseEnvelope, got "
                               + ("a messageSignature" if "messageSignature" in document else "none"))
    payload_type = envelope.get("payloadType")
    if payload_type != IN_TOTO_PAYLOAD_TYPE:
        raise SignatureInvalid(f"sigstore bundle: expected payloadType {IN_TOTO_PAYLOAD_TYPE}, got {payload_type!r}")
    payload = _base64(envelope.get("payload"), "the DSSE payload")
    signatures = envelope.get("signatures")
    if not isinstance(signatures, list) or not signatures:
        raise SignatureInvalid("sigstore bundle: expected at least one DSSE signature, got none")
    signed = pae(payload_type, payload)
    if not any(isinstance(entry, dict) and key.verifies(_base64(entry.get("sig"), "a DSSE signature"), signed)
               for entry in signatures):
        raise SignatureInvalid(f"signature does not verify with {key.path}")
    subjects = _json_object(payload, "in-toto statement").get("subject")
    if not isinstance(subjects, list) or not subjects:
        raise SignatureInvalid("in-toto statement: expected subjects, got none")
    digests = []
    for subject in subjects:
        named = subject.get("digest") if isinstance(subject, dict) else None
        if not isinstance(named, dict):
            raise SignatureInvalid(f"in-toto statement: expected a subject digest map, got {named!r:.80}")
        digests += [_digest(f"{algorithm}:{value}", "the statement's subject")
                    for algorithm, value in sorted(named.items()) if algorithm in ("sha256", "sha512")]
    return tuple(digests)


def require_subject(signed: Tuple[Digest, ...], image: Digest) -> None:
    """A verified signature counts for `image` only when it names that digest."""
    if image not in signed:
        raise SignatureMismatch(signed, image)


def _base64(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise SignatureInvalid(f"{what}: expected base64 text, got {type(text).__name__}")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureInvalid(f"{what}: expected base64, got {text[:40]!r}") from None


def _json_object(data: bytes, what: str) -> dict:
    if len(data) > MAX_SIGNED_DOCUMENT:
        raise SignatureInvalid(f"{what}: expected at most {MAX_SIGNED_DOCUMENT} bytes, got {len(data)}")
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SignatureInvalid(f"{what}: expected JSON, got {type(exc).__name__}") from None
    if not isinstance(document, dict):
        raise SignatureInvalid(f"{what}: expected a JSON object, got {type(document).__name__}")
    return document


def _digest(text: object, where: str) -> Digest:
    try:
        return Digest.parse(text)
    except (ManifestInvalid, UnsupportedDigest) as exc:
        raise SignatureInvalid(f"{where}: {exc}") from None
