"""Wires the layers together: clients and scanner (gather), nagiosplugin check (judge), text (present)."""

from __future__ import annotations

from typing import Dict, Sequence, Tuple

import nagiosplugin

from .check import build_check, render
from .client import RegistryClient
from .deadline import Deadline
from .errors import UsageError
from .reference import ImageRef, Platform
from .verify import Scanner


def run_check(images: Sequence[Tuple[ImageRef, str]], *, seconds: float, timeout_state: str = "unknown",
              workers: int = 4, platforms: Sequence[Platform] = (), warning: str = "", critical: str = "",
              verbose: int = 0) -> Tuple[str, int]:
    """Run the whole check; returns the plugin's output and exit code."""
    for name, spec in (("--warning", warning), ("--critical", critical)):
        try:
            nagiosplugin.Range(spec)
        except ValueError as exc:
            raise UsageError(f"invalid {name} range {spec!r}: {exc}") from None
    deadline = Deadline(seconds)
    clients: Dict[str, RegistryClient] = {}

    def client_for(registry: str) -> RegistryClient:
        if registry not in clients:
            clients[registry] = RegistryClient(registry, deadline, workers=workers)
        return clients[registry]

    scanner = Scanner(client_for, deadline, workers=workers, platforms=platforms)
    check = build_check(lambda: scanner.scan(images), warning=warning, critical=critical,
                        timeout_state=timeout_state, verbose=verbose)
    check()
    return render(check), check.exitcode


