"""Replacing a file so that a reader sees the old content or the new, never a torn or empty file."""

from __future__ import annotations

import os
import tempfile


def replace_file(path: str, data: bytes, *, mode: int = 0o600) -> None:
    """Write `data` to a temporary file in `path`'s directory (the same file system), fsync it, rename it over
    `path`. The temporary file starts with a dot and never ends in `path`'s suffix: node_exporter's textfile
    collector reads only `*.prom` files, so it never sees a half-written one."""
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
