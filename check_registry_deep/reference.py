"""Image references, repository names and digests, validated against the distribution reference grammar.

Everything that goes into a URL path passes through here first: urllib3 collapses `..` segments, so an
unvalidated `sha256:../../x` from a hostile manifest would become a request for another path.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Optional

from .errors import ManifestInvalid, UnsupportedDigest, UsageError

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
REPOSITORY_RE = re.compile(rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
DOMAIN_RE = re.compile(rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?")
TAG_RE = re.compile(r"[\w][\w.-]{0,127}")
DIGEST_RE = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
MAX_NAME_LENGTH = 255

#: algorithm -> length of its lowercase hex encoding
HEX_LENGTHS = {"sha256": 64, "sha512": 128}


@dataclass(frozen=True)
class Digest:
    algorithm: str
    hex: str

    @classmethod
    def parse(cls, text: object) -> Digest:
        """Parse a digest found in a manifest or reference; ManifestInvalid or UnsupportedDigest if not usable."""
        if not isinstance(text, str) or not DIGEST_RE.fullmatch(text):
            raise ManifestInvalid(f"invalid digest: expected algorithm:hex, got {shown(text)}")
        algorithm, encoded = text.split(":", 1)
        if algorithm not in HEX_LENGTHS:
            raise UnsupportedDigest(f"unsupported digest algorithm {algorithm!r} in {shown(text)}: "
                                    f"expected one of {', '.join(HEX_LENGTHS)}")
        if len(encoded) != HEX_LENGTHS[algorithm] or not re.fullmatch(r"[0-9a-f]+", encoded):
            raise ManifestInvalid(f"invalid {algorithm} digest: expected {HEX_LENGTHS[algorithm]} lowercase "
                                  f"hex digits, got {shown(text)}")
        return cls(algorithm, encoded)

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())

    def hasher(self):
        return hashlib.new(self.algorithm)

    def short(self) -> str:
        return f"{self.algorithm}:{self.hex[:12]}"

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


def shown(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def validate_repository(name: object) -> str:
    if not isinstance(name, str) or len(name) > MAX_NAME_LENGTH or not REPOSITORY_RE.fullmatch(name):
        raise ManifestInvalid(f"invalid repository name: expected lowercase path components, got {shown(name)}")
    return name


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    @classmethod
    def parse(cls, text: str) -> Platform:
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(re.fullmatch(r"[A-Za-z0-9._-]+", p) for p in parts):
            raise UsageError(f"invalid platform {text!r}: expected OS/ARCH[/VARIANT], e.g. linux/arm64/v8")
        return cls(*parts)

    def matches(self, other: Optional[Platform]) -> bool:
        """Whether `other` (a manifest's platform) is selected by this filter; no variant selects every variant."""
        if other is None:
            return False
        return (self.os, self.architecture) == (other.os, other.architecture) and (
            not self.variant or self.variant == other.variant)

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@dataclass(frozen=True)
class ImageRef:
    """`[host[:port]/]repository[:tag][@digest]`; `host` is None when the ref names no registry of its own."""

    host: Optional[str]
    repository: str
    tag: Optional[str] = None
    digest: Optional[Digest] = None

    @classmethod
    def parse(cls, text: str) -> ImageRef:
        def invalid(why: str) -> UsageError:
            return UsageError(f"invalid image reference {text!r}: {why}")

        if not text or text != text.strip():
            raise invalid("empty or padded with white space")
        rest, digest = text, None
        if "@" in rest:
            rest, digest_text = rest.split("@", 1)
            try:
                digest = Digest.parse(digest_text)
            except (ManifestInvalid, UnsupportedDigest) as exc:
                raise invalid(str(exc)) from None
        host = None
        first, slash, remainder = rest.partition("/")
        if slash and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
            if not DOMAIN_RE.fullmatch(first):
                raise invalid(f"bad registry host {first!r}")
            host, rest = first, remainder
        tag = None
        last_slash = rest.rfind("/")
        colon = rest.rfind(":")
        if colon > last_slash:
            rest, tag = rest[:colon], rest[colon + 1:]
            if not TAG_RE.fullmatch(tag):
                raise invalid(f"bad tag {tag!r}")
        if not REPOSITORY_RE.fullmatch(rest) or len(rest) > MAX_NAME_LENGTH:
            raise invalid(f"bad repository name {rest!r} (lowercase letters, digits and . _ - / only)")
        if tag is None and digest is None:
            tag = "latest"
        return cls(host, rest, tag, digest)

    @property
    def reference(self) -> str:
        """What goes after /manifests/: the digest when there is one (it pins the content), else the tag."""
        return str(self.digest) if self.digest else str(self.tag)

    def __str__(self) -> str:
        text = f"{self.host}/{self.repository}" if self.host else self.repository
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text
