"""Cosign-format signatures made by the lab, for tests that need many cases fast (a stand-in signer of ours).

The real signer is trixie's skopeo (`--sign-by-sigstore-private-key`); these make the same documents: a
simple-signing payload with its signature, and a sigstore bundle with a DSSE envelope around an in-toto statement.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Tuple

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from check_registry_deep.signatures import IN_TOTO_PAYLOAD_TYPE, SIGSTORE_BUNDLE_TYPE, SIMPLE_SIGNING_TYPE, pae


@dataclass(frozen=True)
class KeyPair:
    private_key: Any

    @classmethod
    def generate(cls, kind: str = "ecdsa-p256") -> KeyPair:
        makers = {
            "ecdsa-p256": lambda: ec.generate_private_key(ec.SECP256R1()),
            "ecdsa-p384": lambda: ec.generate_private_key(ec.SECP384R1()),
            "rsa": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "ed25519": ed25519.Ed25519PrivateKey.generate,
        }
        return cls(makers[kind]())

    def public_pem(self) -> bytes:
        return self.private_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo)

    def write_public(self, path: Path) -> Path:
        path.write_bytes(self.public_pem())
        return path

    def sign(self, message: bytes) -> bytes:
        """As cosign signs: a SHA-256 prehash (ECDSA as ASN.1 DER, RSA PKCS#1 v1.5); Ed25519 the message itself."""
        if isinstance(self.private_key, ec.EllipticCurvePrivateKey):
            return self.private_key.sign(message, ec.ECDSA(hashes.SHA256()))
        if isinstance(self.private_key, rsa.RSAPrivateKey):
            return self.private_key.sign(message, padding.PKCS1v15(), hashes.SHA256())
        return self.private_key.sign(message)


def simple_signing_payload(digest: str, reference: str) -> bytes:
    """The payload cosign writes into a `.sig` manifest's layer, naming the signed manifest digest."""
    return json.dumps({"critical": {"identity": {"docker-reference": reference},
                                    "image": {"docker-manifest-digest": digest},
                                    "type": SIMPLE_SIGNING_TYPE},
                       "optional": None}, separators=(",", ":")).encode()


def sign_simple(keys: KeyPair, digest: str, reference: str) -> Tuple[bytes, str]:
    """(payload, base64 signature) as a `.sig` layer and its `dev.cosignproject.cosign/signature` annotation."""
    payload = simple_signing_payload(digest, reference)
    return payload, base64.b64encode(keys.sign(payload)).decode()


def sigstore_bundle(keys: KeyPair, digests: Tuple[str, ...], *, signed_payload: bytes = b"") -> bytes:
    """A sigstore bundle v0.3 whose DSSE envelope carries an in-toto statement about `digests`. `signed_payload`
    signs other bytes than the statement (to make a bundle whose signature does not verify)."""
    statement = json.dumps({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": "", "digest": {d.split(":", 1)[0]: d.split(":", 1)[1]}} for d in digests],
        "predicateType": "https://sigstore.dev/cosign/sign/v1",
        "predicate": {},
    }).encode()
    signature = keys.sign(pae(IN_TOTO_PAYLOAD_TYPE, signed_payload or statement))
    return json.dumps({
        "mediaType": SIGSTORE_BUNDLE_TYPE,
        "verificationMaterial": {"publicKey": {"hint": ""}},
        "dsseEnvelope": {"payload": base64.b64encode(statement).decode(), "payloadType": IN_TOTO_PAYLOAD_TYPE,
                         "signatures": [{"sig": base64.b64encode(signature).decode(), "keyid": ""}]},
    }).encode()
