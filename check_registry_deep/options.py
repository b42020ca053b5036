"""The checked command line as frozen values: what cli.py hands to app.py.

Imports nothing of the project at run time, so every layer may depend on it and it on none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Pattern, Tuple

if TYPE_CHECKING:
    from .reference import ImageRef, Platform


@dataclass(frozen=True)
class AccessOptions:
    """How to reach and authenticate to the registries."""

    registry: Optional[str] = None  # the --registry origin: the only one explicit credentials go to
    username: Optional[str] = None
    password_file: Optional[str] = None
    docker_config: Optional[str] = None
    ca_bundle: Optional[str] = None
    client_cert: Optional[str] = None
    client_key: Optional[str] = None
    insecure: bool = False
    connect_to: Optional[str] = None
    origin: Optional[str] = None  # HOST:PORT behind a cache in front of the registry: where failures are asked again


@dataclass(frozen=True)
class DiscoveryOptions:
    """`--repository PREFIX` with `--all-tags` (tag_pattern None) or `--tag-pattern REGEX`."""

    prefixes: Tuple[str, ...]
    tag_pattern: Optional[Pattern[str]] = None

    def wants(self, repository: str) -> bool:
        return any(repository == p.rstrip("/") or repository.startswith(p.rstrip("/") + "/") for p in self.prefixes)


@dataclass(frozen=True)
class ScaleOptions:
    """Discovery, replicas, coverage rotation and the outputs for people and scripts."""

    discovery: Optional[DiscoveryOptions] = None
    replicas: Tuple[str, ...] = ()
    max_bytes: Optional[int] = None
    state_file: Optional[str] = None
    json: Optional[str] = None
    metrics_file: Optional[str] = None  # Prometheus text format for node_exporter's textfile collector
    progress: bool = False
    table: bool = False


@dataclass(frozen=True)
class AttachmentOptions:
    """Artifacts attached to the images: every referrer (--referrers), a signature (--require-signature), one that
    verifies with a cosign public key (--cosign-key FILE, which implies --require-signature)."""

    referrers: bool = False
    require_signature: bool = False
    cosign_key: Optional[str] = None


@dataclass(frozen=True)
class CheckOptions:
    """One run: the images (each with the base URL of the registry that serves it) and how to judge them."""

    images: Tuple[Tuple[ImageRef, str], ...]
    seconds: float = 50.0
    timeout_state: str = "unknown"
    workers: int = 4
    platforms: Tuple[Platform, ...] = ()
    warning: str = ""
    critical: str = ""
    verbose: int = 0
    max_age: Optional[float] = None  # seconds (--max-age): WARNING when a blob's last deep verification is older
    allow_empty: bool = False  # a selection that matches nothing is fine (else UNKNOWN)
    access: AccessOptions = AccessOptions()
    scale: ScaleOptions = ScaleOptions()
    attachments: AttachmentOptions = AttachmentOptions()
    started: Optional[float] = None  # time.monotonic() when the process started: -t counts from there
