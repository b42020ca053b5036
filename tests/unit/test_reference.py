"""reference.py: image references, digests and platforms against the distribution reference grammar."""

from __future__ import annotations

import hashlib

import pytest

from check_registry_deep.errors import ManifestInvalid, UnsupportedDigest, UsageError
from check_registry_deep.reference import Digest, ImageRef, Platform, validate_repository

HEX256 = hashlib.sha256(b"layer").hexdigest()
HEX512 = hashlib.sha512(b"layer").hexdigest()
SHA256 = f"sha256:{HEX256}"


def shown(value: object) -> str:
    """How error messages quote a value: its repr, cut to 80 characters with an ellipsis."""
    text = repr(value)
    return text if len(text) <= 80 else text[:79] + "…"


# -- ImageRef: valid forms -------------------------------------------------------------------------------

@pytest.mark.parametrize("text, host, repository, tag, digest", [
    ("app", None, "app", "latest", None),
    ("team/app", None, "team/app", "latest", None),
    ("team/app:1.2-rc_3", None, "team/app", "1.2-rc_3", None),
    ("a/b/c/d:v1", None, "a/b/c/d", "v1", None),
    ("team/my_app-x.y:v1", None, "team/my_app-x.y", "v1", None),
    ("team/a__b:1", None, "team/a__b", "1", None),
    (f"team/app@{SHA256}", None, "team/app", None, SHA256),
    (f"team/app:1@{SHA256}", None, "team/app", "1", SHA256),
    ("localhost/app", "localhost", "app", "latest", None),
    ("localhost:5000/team/app:1", "localhost:5000", "team/app", "1", None),
    ("127.0.0.1:5000/team/app:1", "127.0.0.1:5000", "team/app", "1", None),
    ("[::1]:5000/team/app:1", "[::1]:5000", "team/app", "1", None),
    ("registry.example.org/team/app", "registry.example.org", "team/app", "latest", None),
    (f"registry.example.org:443/team/app:2@{SHA256}", "registry.example.org:443", "team/app", "2", SHA256),
    # docker's rule: a first component that is not all lowercase is a host, not a repository component
    ("Registry/app:1", "Registry", "app", "1", None),
    # without a slash there is no host: "localhost:5000" is repository localhost, tag 5000
    ("localhost:5000", None, "localhost", "5000", None),
])
def test_image_ref_parses_valid_forms(text, host, repository, tag, digest):
    ref = ImageRef.parse(text)
    assert ref.host == host
    assert ref.repository == repository
    assert ref.tag == tag
    assert (str(ref.digest) if ref.digest else None) == digest


def test_image_ref_defaults_to_latest_and_round_trips():
    ref = ImageRef.parse("team/app")
    assert ref == ImageRef(None, "team/app", "latest", None)
    assert str(ref) == "team/app:latest"
    assert ref.reference == "latest"


def test_image_ref_digest_pins_the_reference_even_with_a_tag():
    ref = ImageRef.parse(f"localhost:5000/team/app:1@{SHA256}")
    assert ref.reference == SHA256
    assert ref.digest == Digest("sha256", HEX256)
    assert str(ref) == f"localhost:5000/team/app:1@{SHA256}"


def test_image_ref_by_digest_only_has_no_tag():
    ref = ImageRef.parse(f"team/app@{SHA256}")
    assert ref.tag is None
    assert str(ref) == f"team/app@{SHA256}"


def test_image_ref_is_frozen():
    ref = ImageRef.parse("team/app:1")
    with pytest.raises(AttributeError):
        ref.tag = "2"  # type: ignore[misc]


# -- ImageRef: invalid forms -----------------------------------------------------------------------------

@pytest.mark.parametrize("text, why", [
    ("", "empty or padded with white space"),
    (" team/app", "empty or padded with white space"),
    ("team/app ", "empty or padded with white space"),
    ("team/App:1", "bad repository name 'team/App'"),
    ("TEAM", "bad repository name 'TEAM'"),
    ("team/../app", "bad repository name 'team/../app'"),
    ("team/a..b", "bad repository name 'team/a..b'"),
    ("team/app/", "bad repository name 'team/app/'"),
    ("/team/app", "bad repository name '/team/app'"),
    ("team//app", "bad repository name 'team//app'"),
    ("team/-app", "bad repository name 'team/-app'"),
    ("team/app:", "bad tag ''"),
    ("team/app:-x", "bad tag '-x'"),
    ("team/app:" + "t" * 129, "bad tag"),
    ("bad_host.example/app", "bad registry host 'bad_host.example'"),
    ("host:port/app", "bad registry host 'host:port'"),
    ("x" * 256, "bad repository name"),
])
def test_image_ref_rejects_invalid_forms(text, why):
    with pytest.raises(UsageError) as caught:
        ImageRef.parse(text)
    message = str(caught.value)
    assert message.startswith(f"invalid image reference {text!r}: ")
    assert why in message


@pytest.mark.parametrize("digest", [
    "sha256:../../x",
    "sha256:..%2f..%2fx",
    "sha256:abc/../../v2/other/blobs",
    f"sha256:{HEX256}/../x",
])
def test_image_ref_rejects_path_traversal_in_digests(digest):
    with pytest.raises(UsageError) as caught:
        ImageRef.parse(f"team/app@{digest}")
    assert "invalid digest: expected algorithm:hex" in str(caught.value)


def test_image_ref_rejects_short_and_uppercase_digests():
    with pytest.raises(UsageError, match="invalid sha256 digest: expected 64 lowercase hex digits"):
        ImageRef.parse("team/app@sha256:abc")
    with pytest.raises(UsageError, match="invalid sha256 digest: expected 64 lowercase hex digits"):
        ImageRef.parse(f"team/app@sha256:{HEX256.upper()}")


def test_image_ref_rejects_unsupported_digest_algorithm_as_usage_error():
    with pytest.raises(UsageError) as caught:
        ImageRef.parse("team/app@md5:" + "0" * 32)
    assert "unsupported digest algorithm 'md5'" in str(caught.value)


# -- Digest ----------------------------------------------------------------------------------------------

def test_digest_parses_sha256_and_sha512():
    assert Digest.parse(SHA256) == Digest("sha256", HEX256)
    sha512 = Digest.parse(f"sha512:{HEX512}")
    assert sha512 == Digest("sha512", HEX512)
    assert len(sha512.hex) == 128
    assert str(sha512) == f"sha512:{HEX512}"


def test_digest_short_and_of():
    digest = Digest.of(b"layer")
    assert digest == Digest("sha256", HEX256)
    assert digest.short() == f"sha256:{HEX256[:12]}"
    assert Digest.of(b"layer", "sha512") == Digest("sha512", HEX512)
    hasher = Digest.parse(f"sha512:{HEX512}").hasher()
    hasher.update(b"layer")
    assert hasher.hexdigest() == HEX512


@pytest.mark.parametrize("text, expected", [
    (f"sha256:{HEX256[:-1]}", "invalid sha256 digest: expected 64 lowercase hex digits"),
    (f"sha256:{HEX256}0", "invalid sha256 digest: expected 64 lowercase hex digits"),
    (f"sha256:{HEX512}", "invalid sha256 digest: expected 64 lowercase hex digits"),
    (f"sha512:{HEX256}", "invalid sha512 digest: expected 128 lowercase hex digits"),
    (f"sha256:{HEX256.upper()}", "invalid sha256 digest: expected 64 lowercase hex digits"),
    (f"sha512:{HEX512.upper()}", "invalid sha512 digest: expected 128 lowercase hex digits"),
    (f"sha256:{'g' * 64}", "invalid sha256 digest: expected 64 lowercase hex digits"),
])
def test_digest_rejects_wrong_lengths_and_uppercase(text, expected):
    with pytest.raises(ManifestInvalid) as caught:
        Digest.parse(text)
    assert str(caught.value) == f"{expected}, got {shown(text)}"


@pytest.mark.parametrize("text", ["md5:" + "0" * 32, "sha1:" + "0" * 40, "blake3:" + "0" * 64,
                                  "sha384:" + "0" * 96])
def test_digest_unsupported_algorithm(text):
    with pytest.raises(UnsupportedDigest) as caught:
        Digest.parse(text)
    algorithm = text.split(":")[0]
    assert str(caught.value) == (f"unsupported digest algorithm {algorithm!r} in {shown(text)}: "
                                 "expected one of sha256, sha512")


@pytest.mark.parametrize("value", [None, 5, b"sha256:00", "", "sha256", "sha256:", ":abc", "SHA256:" + HEX256,
                                   "sha256:../../x", "sha256:a/b", "sha256 :" + HEX256, [SHA256]])
def test_digest_malformed_is_manifest_invalid(value):
    with pytest.raises(ManifestInvalid) as caught:
        Digest.parse(value)
    assert str(caught.value).startswith("invalid digest: expected algorithm:hex, got ")
    assert type(caught.value) is ManifestInvalid


def test_digest_error_message_truncates_long_values():
    with pytest.raises(ManifestInvalid) as caught:
        Digest.parse("x" * 500)
    assert len(str(caught.value)) < 150
    assert str(caught.value).endswith("…")


def test_unsupported_digest_is_not_manifest_invalid():
    assert not issubclass(UnsupportedDigest, ManifestInvalid)


# -- repository names ------------------------------------------------------------------------------------

def test_validate_repository():
    assert validate_repository("team/app") == "team/app"
    for bad in ("../etc", "team/../x", "Team/app", "", "a" * 256, None, 7, "team/app/"):
        with pytest.raises(ManifestInvalid, match="invalid repository name"):
            validate_repository(bad)


# -- Platform --------------------------------------------------------------------------------------------

def test_platform_parse():
    assert Platform.parse("linux/amd64") == Platform("linux", "amd64", "")
    assert Platform.parse("linux/arm64/v8") == Platform("linux", "arm64", "v8")
    assert str(Platform.parse("linux/arm64/v8")) == "linux/arm64/v8"
    assert str(Platform("linux", "amd64")) == "linux/amd64"


@pytest.mark.parametrize("text", ["linux", "linux/", "/amd64", "linux//v8", "linux/arm64/v8/x", "",
                                  "linux/amd 64", "linux/amd64;rm"])
def test_platform_parse_rejects(text):
    with pytest.raises(UsageError) as caught:
        Platform.parse(text)
    assert str(caught.value) == (f"invalid platform {text!r}: expected OS/ARCH[/VARIANT], e.g. linux/arm64/v8")


def test_platform_matches():
    arm64 = Platform("linux", "arm64")
    assert arm64.matches(Platform("linux", "arm64", "v8"))
    assert arm64.matches(Platform("linux", "arm64"))
    assert not arm64.matches(Platform("linux", "amd64"))
    assert not arm64.matches(Platform("windows", "arm64"))
    assert not arm64.matches(None)
    v7 = Platform("linux", "arm", "v7")
    assert v7.matches(Platform("linux", "arm", "v7"))
    assert not v7.matches(Platform("linux", "arm", "v6"))
    assert not v7.matches(Platform("linux", "arm"))
