"""Coverage at scale: a per-run download budget, and a state file that rotates deep verification.

Every run still resolves every manifest and confirms every blob's presence; only the GET-and-hash is rotated,
least recently verified first. The state file is shared by overlapping runs: updates merge under a lock and
land atomically. It remembers when it was created: a blob never verified has waited since then (`freshness`).
"""

from __future__ import annotations

import fcntl
import json
import logging
import time
from typing import Dict, Iterable, Optional, Set, Tuple

from .atomic import cannot_write, write_file
from .errors import UsageError
from .model import Freshness
from .reference import Digest

log = logging.getLogger(__name__)
STATE_VERSION = 1
FORGET_AFTER = 30 * 86400  # blobs no sentinel has referenced for 30 days leave the state file
Key = Tuple[str, Digest]  # (registry, digest)


def _name(key: Key) -> str:
    return f"{key[0]} {key[1]}"


class Coverage:
    def __init__(self, state_file: Optional[str] = None, max_bytes: Optional[int] = None, clock=time.time):
        self.state_file = state_file
        self.max_bytes = max_bytes
        self.clock = clock
        #: when the state file was created (None: this run creates it)
        self.created, self.entries = self._read() if state_file else (None, {})

    def _read(self) -> Tuple[Optional[float], Dict[str, Dict[str, Optional[float]]]]:
        assert self.state_file is not None
        try:
            with open(self.state_file, encoding="utf-8") as handle:
                state = json.load(handle)
        except FileNotFoundError:
            return None, {}
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read --state-file {self.state_file}: "
                             f"{getattr(exc, 'strerror', None) or 'not a state file'}") from None
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION or \
                not isinstance(state.get("blobs"), dict):
            raise UsageError(f"--state-file {self.state_file} is not a check_registry_deep state file")
        entries = {k: v for k, v in state["blobs"].items() if isinstance(v, dict)}
        created = state.get("created")
        if not isinstance(created, (int, float)):  # written before "created" was: its oldest sighting
            created = min((v.get("first_seen") or self.clock() for v in entries.values()), default=self.clock())
        return float(created), entries

    def _staleness(self, key: Key) -> Tuple[int, float]:
        entry = self.entries.get(_name(key), {})
        verified = entry.get("verified")
        if verified is None:  # never verified: first, oldest sighting first
            return 0, entry.get("first_seen") or 0.0
        return 1, verified

    def choose(self, candidates: Iterable[Tuple[Key, int]]) -> Set[Key]:
        """Which blobs to GET and hash this run: least recently verified first, within the byte budget.

        A blob larger than the whole budget is verified alone on its turn, so no blob can starve.
        """
        ordered = sorted(candidates, key=lambda kv: self._staleness(kv[0]))
        if self.max_bytes is None:
            return {key for key, _ in ordered}
        chosen: Set[Key] = set()
        spent = 0
        for key, size in ordered:
            if chosen and spent + size > self.max_bytes:
                break
            chosen.add(key)
            spent += size
        return chosen

    def record(self, seen: Iterable[Key], verified: Iterable[Key]) -> None:
        now = self.clock()
        for key in seen:
            self.entries.setdefault(_name(key), {"first_seen": now, "verified": None})
        for key in verified:
            self.entries[_name(key)]["verified"] = now

    def freshness(self, keys: Iterable[Key]) -> Freshness:
        """How long ago each of `keys` was last verified; one never verified counts from the state file's
        creation (now, when this run creates it)."""
        now = self.clock()
        created = now if self.created is None else self.created
        verified = [self.entries.get(_name(key), {}).get("verified") for key in dict.fromkeys(keys)]
        return Freshness(tuple(now - (when or created) for when in verified), sum(1 for when in verified if not when),
                         new_state=self.created is None)

    def save(self) -> Optional[str]:
        """Merge with what overlapping runs wrote meanwhile (newest verification wins), then replace atomically.
        Returns None, or why the file could not be written, as one line."""
        if not self.state_file:
            return None
        try:
            return self._save(self.state_file)
        except OSError as exc:  # the lock file: a missing directory, a full file system
            return cannot_write("--state-file", self.state_file, exc)
        except UsageError as exc:  # another program replaced it meanwhile
            return str(exc)

    def _save(self, state_file: str) -> Optional[str]:
        with open(state_file + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            created, on_disk = self._read()
            created = min(x for x in (created, self.created, self.clock()) if x is not None)
            for name, theirs in on_disk.items():
                ours = self.entries.setdefault(name, theirs)
                ours["first_seen"] = min(x for x in (ours.get("first_seen"), theirs.get("first_seen"), self.clock())
                                         if x is not None)
                if (theirs.get("verified") or 0) > (ours.get("verified") or 0):
                    ours["verified"] = theirs["verified"]
            horizon = self.clock() - FORGET_AFTER
            blobs = {k: v for k, v in self.entries.items()
                     if max(v.get("verified") or 0, v.get("first_seen") or 0) >= horizon}
            data = json.dumps({"version": STATE_VERSION, "created": created, "blobs": blobs}, indent=1,
                              sort_keys=True)
            return write_file("--state-file", state_file, data.encode())
