"""One deadline for the whole run, from which every wait and every request timeout is derived."""

from __future__ import annotations

import time
from typing import Optional

from .errors import DeadlineExceeded


class Deadline:
    def __init__(self, seconds: float, started: Optional[float] = None):
        self.seconds = seconds
        self.started = time.monotonic() if started is None else started
        self.at = self.started + seconds

    def remaining(self) -> float:
        return max(0.0, self.at - time.monotonic())

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def expired(self) -> bool:
        return time.monotonic() >= self.at

    def check(self, doing: str) -> None:
        if self.expired():
            raise DeadlineExceeded(f"deadline of {self.seconds:g}s passed while {doing}")

    def timeout(self, cap: float) -> float:
        """A timeout for one blocking step: never beyond the deadline, never zero (requests rejects it)."""
        left = self.remaining()
        if left <= 0:
            raise DeadlineExceeded(f"deadline of {self.seconds:g}s passed")
        return max(0.05, min(cap, left))
