"""The README's runbook, run as a reader runs it: its command blocks in one bash, the lab's values in place of the
example ones. A block is a fenced `sh` block right after a `<!-- runbook: NAME -->` comment; a line at its top
of the form `name=value   # what to put here` is an example value, replaced by the lab's when the lab has one.

    runbook = Runbook(tmp_path / "runbook", {"registry": registry.url, "digest": digest, ...})
    runbook.run("good-copy", "move-aside", "put-back")

The blocks' /tmp/ and /var/tmp/ become private directories, and `check_registry_deep` on PATH is this tree's.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict

from .icinga import ROOT, plugin_wrapper

README = ROOT / "README.md"
BLOCK = re.compile(r"<!-- runbook: (?P<name>[a-z-]+) -->\n\n?(?P<indent> *)```sh\n(?P<body>.*?)\n(?P=indent)```\n",
                   re.S)
SETTING = re.compile(r'^(?P<name>[a-z_]+)=(?:"[^"]*"|\S+)(?:\s+#.*)?$')
#: What only an example value contains: none of it may reach the shell.
EXAMPLE_MARKS = ("example.org", "…", "PASSWORD")


class RunbookError(AssertionError):
    """A block is missing, kept an example value, or failed."""


def runbook_blocks() -> Dict[str, str]:
    """Every runbook block of the README by name, unindented."""
    blocks = {}
    for match in BLOCK.finditer(README.read_text()):
        indent = len(match["indent"])
        blocks[match["name"]] = "\n".join(line[indent:] for line in match["body"].splitlines())
    return blocks


@dataclass
class Runbook:
    workdir: Path
    values: Dict[str, str] = field(default_factory=dict)

    def script(self, *names: str) -> str:
        """The blocks `names`, in order, after the lab's values; the example values they set left out."""
        blocks = runbook_blocks()
        lines = []
        for name in names:
            if name not in blocks:
                raise RunbookError(f"README.md has no runbook block {name!r}")
            for line in blocks[name].splitlines():
                setting = SETTING.match(line)
                if not (setting and setting["name"] in self.values):
                    lines.append(line)
        commands = "\n".join(lines).replace("/var/tmp/", "\0aside\0").replace("/tmp/", f"{self.workdir}/")
        commands = commands.replace("\0aside\0", f"{self.workdir}/aside/")
        for mark in EXAMPLE_MARKS:
            if mark in commands:
                raise RunbookError(f"an example value left for the shell ({mark!r}):\n{commands}")
        return "".join(f"{name}={shlex.quote(value)}\n" for name, value in self.values.items()) + commands

    def run(self, *names: str, strict: bool = True) -> subprocess.CompletedProcess:
        """Run the blocks in one bash; `strict`: with -e and pipefail, and a failure raises."""
        (self.workdir / "aside").mkdir(parents=True, exist_ok=True)
        bin_dir = plugin_wrapper(self.workdir / "bin")
        env = {key: value for key, value in os.environ.items() if not key.lower().endswith("_proxy")}
        env["PATH"] = f"{bin_dir}:{env['PATH']}"
        options = ["-e", "-o", "pipefail"] if strict else []
        done = subprocess.run(["bash", *options, "-c", self.script(*names)], capture_output=True, text=True,
                              env=env, cwd=self.workdir, timeout=120, stdin=subprocess.DEVNULL)
        if strict and done.returncode != 0:
            raise RunbookError(f"{names} exited with {done.returncode}:\n{done.stdout}\n{done.stderr}")
        return done
