"""Every file the plugin writes (--state-file, --json FILE, --metrics-file): replaced so that a reader sees the old
content or the new, never a torn or empty file; a write that fails is one line of the output, never a traceback,
and never hides what the check found."""

from __future__ import annotations

import os
import sys
import tempfile
from dataclasses import replace
from typing import Optional

from .states import OK, UNKNOWN, Rendered, plain


def replace_file(path: str, data: bytes, *, mode: int = 0o600) -> None:
    """Write `data` to a temporary file in `path`'s directory (the same file system), fsync it, rename it over
    `path`. The temporary file starts with a dot and never ends in `path`'s suffix: node_exporter's textfile
    collector reads only `*.prom` files, so it never sees a half-written one. On any failure the temporary file
    is removed and `path` is left as it was."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def write_file(option: str, path: str, data: bytes, *, mode: int = 0o600) -> Optional[str]:
    """`replace_file`; returns None, or what went wrong as one line naming the option and the file."""
    try:
        replace_file(path, data, mode=mode)
    except OSError as exc:
        return cannot_write(option, path, exc)
    return None


def cannot_write(option: str, path: str, exc: OSError) -> str:
    """`cannot write --json /x/run.json: No space left on device`; a missing directory said as such."""
    directory = os.path.dirname(os.path.abspath(path))
    reason = f"directory {directory} does not exist" if not os.path.isdir(directory) else exc.strerror or str(exc)
    return f"cannot write {option} {path}: {reason}"


def with_problem(output: Rendered, problem: Optional[str], text: bool = True) -> Rendered:
    """A file that could not be written, added to the run's output: one more line (on stderr when the output is
    JSON), UNKNOWN if the run was OK, the state as it was otherwise (a broken registry stays CRITICAL)."""
    if problem is None:
        return output
    problem = plain(problem)
    if not text:
        sys.stderr.write(problem + "\n")
        return output if output.state != OK else replace(output, state=UNKNOWN)
    if output.state != OK:
        return replace(output, long_lines=(f"UNKNOWN: {problem}",) + output.long_lines)  # right after line 1
    return replace(output, state=UNKNOWN, summary=problem + (f"; {output.summary}" if output.summary else ""))
