"""The plugin's name, its four states, their exit codes and their order: the one place for each.

Imports nothing (the entry point needs it before anything slow is loaded).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Tuple

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


@dataclass(frozen=True)
class Rendered:
    """The plugin's output as a value, turned into text once (`text`), at the end: line 1's state, summary and
    perfdata, the long output, and what replaces or follows it (--json -, the interactive table). Whatever adds
    to the output (a file that could not be written) changes this value, never the text."""
    state: str
    summary: str
    perfdata: str = ""
    long_lines: Tuple[str, ...] = ()
    document: Optional[str] = None  # --json -: the JSON document is the whole output
    table: Optional[str] = None  # after the long output and a blank line

    @property
    def exitcode(self) -> int:
        return EXIT_CODES[self.state]

    @property
    def first_line(self) -> str:
        return status_line(self.state, self.summary) + (f" | {self.perfdata}" if self.perfdata else "")

    @property
    def text(self) -> str:
        if self.document is not None:
            return self.document
        lines = "".join(line + "\n" for line in (self.first_line,) + self.long_lines)
        return lines + ("\n" + self.table if self.table is not None else "")
