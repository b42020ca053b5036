"""The plugin's name, its four states, their exit codes and their order: the one place for each.

Imports nothing (the entry point needs it before anything slow is loaded).
"""

from __future__ import annotations

from typing import Iterable

NAME = "REGISTRY_DEEP"

OK, WARNING, CRITICAL, UNKNOWN = "ok", "warning", "critical", "unknown"
STATES = (OK, WARNING, CRITICAL, UNKNOWN)
EXIT_CODES = {OK: 0, WARNING: 1, CRITICAL: 2, UNKNOWN: 3}
#: Nagios' "worst state": CRITICAL over WARNING over UNKNOWN over OK (as monitoring-plugins' max_state_alt),
#: so a timeout (UNKNOWN by default) never hides a broken blob found before it.
SEVERITY = {OK: 0, UNKNOWN: 1, WARNING: 2, CRITICAL: 3}


def worst(states: Iterable[str]) -> str:
    return max(states, key=SEVERITY.__getitem__, default=OK)


def plain(text: str) -> str:
    """Text fit for one line of plugin output: Nagios reads `|` as the start of perfdata, a newline as the end of
    line 1."""
    return text.replace("|", "/").replace("\n", " ")


def status_line(state: str, summary: str) -> str:
    """Line 1 without perfdata: `REGISTRY_DEEP STATE - summary`, the summary made plain."""
    return f"{NAME} {state.upper()}" + (f" - {plain(summary)}" if summary else "")
