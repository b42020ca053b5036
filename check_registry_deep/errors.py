"""The project's exception hierarchy.

Every fault the plugin can find is one of these types. Each class says what it means: whether it is
transient (worth a retry) and which state it leads to, which `judge.judge` reads; nobody parses messages.
Messages say what was expected and what was got, and never carry a secret.
"""

from __future__ import annotations

from typing import Optional

from .states import CRITICAL, UNKNOWN


class CheckError(Exception):
    """Base of everything the plugin raises on purpose."""

    transient = False
    #: The state a finding with this error leads to; None: the -t state (see judge.judge).
    state: Optional[str] = UNKNOWN


class UsageError(CheckError):
    """Bad command line, unreadable input file, invalid image reference: the check cannot start."""


class InternalError(CheckError):
    """A bug of ours, caught so that it cannot hide what the rest of the run found."""


class DeadlineExceeded(CheckError):
    """The run's -t deadline passed: judged with the state the user gave -t."""

    state = None

    def __init__(self, message: str, brief: str = ""):
        super().__init__(message)
        self.brief = brief or message  # without what was in flight: where the run was, for a line short of room


class RegistryError(CheckError):
    """The registry (or the way to it) does not serve what it should: pulls fail.

    What a job catches to turn into a finding on content: the deadline (and a bug) are no answer about the
    content, and go on up to the scan."""

    state = CRITICAL


class TransportError(RegistryError):
    """No HTTP answer: connection refused or reset, TLS failure, a read that timed out."""

    transient = True


class ShortBody(TransportError):
    """The server closed the body before its own Content-Length: a hiccup once, truncated content if it persists."""

    def __init__(self, message: str, reached: int):
        super().__init__(message)
        self.reached = reached  # bytes of this response that arrived


class Stalled(ShortBody):
    """No byte came for the stall timeout: a body that stopped before its Content-Length, or no answer at all.

    Like a short body, a hiccup once, truncated content when it stops at the same byte again."""


class TLSError(TransportError):
    """The TLS handshake failed (untrusted certificate, wrong name, client certificate refused): not transient."""

    transient = False


class HTTPStatusError(RegistryError):
    """An HTTP status the registry should not have answered."""

    def __init__(self, message: str, status: int, code: str = "", retry_after: Optional[float] = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.retry_after = retry_after

    @property
    def transient(self) -> bool:  # type: ignore[override]
        return self.status in (408, 429) or self.status >= 500


class AuthError(HTTPStatusError):
    """The registry refused our credentials (or wants some we do not have)."""


class NotFound(HTTPStatusError):
    """Base for the 404s that mean content is gone."""


class ManifestUnknown(NotFound):
    """A manifest or tag the registry does not know (404 MANIFEST_UNKNOWN / NAME_UNKNOWN)."""


class BlobUnknown(NotFound):
    """A blob the registry does not know in this repository (404 BLOB_UNKNOWN)."""


class StorageError(HTTPStatusError):
    """An error status from the storage a registry redirected to (S3, GCS, Swift, a CDN): the registry still
    knows the content, the storage behind it does not serve it. Its message names that host and what it said."""


class StorageNotFound(StorageError, NotFound):
    """404 from the storage behind a redirect: the object is gone while the registry still lists the blob."""


class RegistryFailing(RegistryError):
    """The registry answers 5xx for manifests: the registry itself (its storage, its database) is failing, not the
    content. One run problem for all of them, with every image it breaks."""


class RedirectError(RegistryError):
    """A redirect we refuse to follow: too many hops, a loop, or a downgrade to plain HTTP."""


class IntegrityError(RegistryError):
    """Bytes were served, but they are not the bytes that were asked for."""


class DigestMismatch(IntegrityError):
    """The bytes hash to another digest."""


class SizeMismatch(IntegrityError):
    """More or fewer bytes than the descriptor says (truncated or overlong)."""


class Truncated(SizeMismatch):
    """Fewer bytes than the descriptor says, whichever way it showed: the one wording of "truncated"."""

    def __init__(self, evidence: str):
        super().__init__(f"truncated: {evidence}")


class ManifestInvalid(RegistryError):
    """A manifest that is not valid JSON of a known kind, or refers to invalid digests or names."""


class UnsupportedDigest(RegistryError):
    """A well-formed digest whose algorithm we cannot compute: reported, never guessed; we cannot judge it."""

    state = UNKNOWN


class SignatureProblem(RegistryError):
    """A signature the user requires is missing, does not verify with the key, or names another image."""


class NotSigned(SignatureProblem):
    """No signature at all where one is required (for --cosign-key: no cosign signature)."""


class SignatureInvalid(SignatureProblem):
    """A signature that does not verify with the key, or a signed document that is not what cosign writes."""


class SignatureMismatch(SignatureProblem):
    """A signature that verifies, but for another digest than the image's."""

    def __init__(self, signed: tuple, expected: object):
        names = ", ".join(map(str, signed)) or "no digest"
        super().__init__(f"signature is for {names}, not {expected}")
        self.signed = signed
        self.expected = expected
