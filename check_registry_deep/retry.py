"""What is retried and how: transient faults only, with backoff or Retry-After, always inside the deadline.

One Retrier per registry counts every retry it made (the `retries` perfdata), threads included.
"""

from __future__ import annotations

import email.utils
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional, Tuple, TypeVar

from .deadline import Deadline
from .errors import CheckError, HTTPStatusError

if TYPE_CHECKING:  # imported when a fault is first retried (Retrier.run)
    import tenacity

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Retries for transient faults only (connection errors, 408, 429, 5xx), always inside the deadline."""

    attempts: int = 3
    backoff: float = 0.5  # first wait; doubles each time, unless the server sends Retry-After
    max_wait: float = 10.0

    def wait_for(self, error: BaseException, attempt: int) -> float:
        """Seconds to wait before attempt `attempt + 1`: the server's Retry-After, else exponential backoff."""
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            return max(0.0, retry_after)
        return min(self.max_wait, self.backoff * 2 ** (attempt - 1))


def retry_after(value: Optional[str]) -> Optional[float]:
    """Seconds from a Retry-After header: a number of seconds or an HTTP date."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class Retrier:
    """Runs operations under a RetryPolicy within the run's deadline, and counts the retries."""

    def __init__(self, policy: RetryPolicy, deadline: Deadline):
        self.policy = policy
        self.deadline = deadline
        self._lock = threading.Lock()
        self.count = 0

    def note(self, what: str, why: object) -> None:
        """Count one retry (also those made outside `run`, such as a transfer resumed with Range)."""
        with self._lock:
            self.count += 1
        log.info("retrying %s after: %s", what, why)

    def run(self, operation: Callable[[], T], what: str) -> Tuple[T, int]:
        """Run `operation`, retrying transient errors within the deadline; returns (result, retries).

        The first attempt runs bare. Only a transient fault brings in tenacity (imported then, not at start-up),
        which is handed that fault as its own first attempt: the attempts, waits and messages are the same, and
        the common case, a request that just works, builds no Retrying.
        """
        try:
            return operation(), 0
        except CheckError as exc:
            if not exc.transient:
                raise
            first: Optional[CheckError] = exc

        def attempt() -> T:
            nonlocal first
            if first is not None:
                fault, first = first, None
                raise fault
            return operation()

        import tenacity  # deferred: see above

        retries = 0

        def give_up(state: tenacity.RetryCallState) -> bool:
            error = state.outcome.exception() if state.outcome else None
            return (error is None or state.attempt_number >= self.policy.attempts
                    or self.policy.wait_for(error, state.attempt_number) >= self.deadline.remaining())

        def wait(state: tenacity.RetryCallState) -> float:
            error = state.outcome.exception() if state.outcome else None
            return self.policy.wait_for(error, state.attempt_number) if error else 0.0

        def note(state: tenacity.RetryCallState) -> None:
            nonlocal retries
            retries += 1
            self.note(what, state.outcome.exception() if state.outcome else "?")

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(lambda e: isinstance(e, CheckError) and e.transient),
            stop=give_up, wait=wait, before_sleep=note, reraise=True)
        try:
            result = retrying(attempt)
        except HTTPStatusError as exc:
            if exc.transient and exc.retry_after is not None and exc.retry_after >= self.deadline.remaining():
                # not slept through: the run answers before its deadline, saying why it gave up
                raise type(exc)(f"{exc} (Retry-After {exc.retry_after:.0f}s reaches past the deadline)", exc.status,
                                exc.code, exc.retry_after) from None
            raise
        return result, retries
