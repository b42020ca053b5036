"""Wires the layers together: clients and scanner (gather), nagiosplugin check (judge), text (present)."""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Sequence, Tuple
from urllib.parse import urlsplit

import nagiosplugin
import urllib3

from .auth import load_credentials
from .check import build_check, render
from .cli import AccessOptions
from .client import RegistryClient, TLSOptions
from .deadline import Deadline
from .errors import UsageError
from .reference import ImageRef, Platform
from .verify import Scanner


def run_check(images: Sequence[Tuple[ImageRef, str]], *, seconds: float, timeout_state: str = "unknown",
              workers: int = 4, platforms: Sequence[Platform] = (), warning: str = "", critical: str = "",
              verbose: int = 0, access: AccessOptions = AccessOptions(), started: Optional[float] = None
              ) -> Tuple[str, int]:
    """Run the whole check; returns the plugin's output and exit code."""
    for name, spec in (("--warning", warning), ("--critical", critical)):
        try:
            nagiosplugin.Range(spec)
        except ValueError as exc:
            raise UsageError(f"invalid {name} range {spec!r}: {exc}") from None
    deadline = Deadline(seconds, started=started)
    clients: Dict[str, RegistryClient] = {}

    tls = TLSOptions(verify=False if access.insecure else (access.ca_bundle or True),
                     cert=(access.client_cert, access.client_key or access.client_cert) if access.client_cert else None)
    if access.insecure:
        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)  # the output says it instead
    for registry in dict.fromkeys(registry for _, registry in images):
        # explicit credentials and --connect-to are for the --registry; other hosts get their docker config
        explicit = registry == access.registry
        credentials = load_credentials(urlsplit(registry).netloc, username=access.username if explicit else None,
                                       password_file=access.password_file if explicit else None,
                                       docker_config=access.docker_config)
        clients[registry] = RegistryClient(registry, deadline, workers=workers, tls=tls, credentials=credentials,
                                           connect_to=access.connect_to if explicit else None)

    notes = ("TLS certificates NOT verified (--insecure)",) if access.insecure else ()
    scanner = Scanner(clients.__getitem__, deadline, workers=workers, platforms=platforms)
    check = build_check(lambda: dataclasses.replace(scanner.scan(images), notes=notes), warning=warning,
                        critical=critical, timeout_state=timeout_state, verbose=verbose)
    check()
    return render(check), check.exitcode


