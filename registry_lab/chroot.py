"""Clean Debian roots (trixie, bookworm) made with Debian's mmdebstrap, cached, and entered in a private mount
namespace.

`root_tarball()` builds a minimal root of a release with the given packages (`mmdebstrap --variant=apt`, from
Debian's archive) and caches it as a tarball under CACHE_DIR, keyed by release, packages and mirror; a tarball
older than MAX_AGE_DAYS is built again. `Chroot` unpacks one into a work dir and holds a private mount namespace
(a child of `unshare --mount`) in which the root is bind-mounted onto itself (podman remounts `/` and fails with
`remount /, flags: 0x44000: invalid argument` without it) and gets /proc, /dev, /sys and a fresh /run. Commands
run in it with `nsenter` + `chroot`: they share the host's network, so they reach the lab's registries on
loopback. The mounts exist only in that namespace: they vanish when its holder and the commands in it end, even
if the caller dies, and the host's view of the work dir never contains them (removing it is safe).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, List, Optional, Sequence, Union

from .registry import stop_process

CACHE_DIR = Path(os.environ.get("CHECK_REGISTRY_DEEP_CHROOT_CACHE", "/var/cache/check-registry-deep"))
MIRROR = os.environ.get("CHECK_REGISTRY_DEEP_MIRROR", "http://deb.debian.org/debian")
MAX_AGE_DAYS = float(os.environ.get("CHECK_REGISTRY_DEEP_CHROOT_MAX_AGE_DAYS", "7"))
#: What the signature work runs in the trixie root: skopeo 1.18 signs, podman 5.4 verifies (bookworm's are
#: built with sigstore disabled).
SIGNING_PACKAGES = ("skopeo", "podman")
#: A clean environment for commands in a root: the host's PATH (pyenv first) and Python variables stay out.
ENVIRONMENT = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
               "LC_ALL": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive", "TMPDIR": "/tmp"}

# Runs in the holder's fresh mount namespace: the root onto itself first (so the mounts below land on it),
# then the kernel file systems. Private propagation: nothing here reaches the host.
MOUNTS = """\
set -e
root=$1
mount --bind "$root" "$root"
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
mount -t sysfs sysfs "$root/sys"
mount -t tmpfs -o mode=755 tmpfs "$root/run"
echo ready
exec cat >/dev/null
"""


class ChrootError(RuntimeError):
    pass


def _tail(path: Path, size: int = 3000) -> str:
    return path.read_text(errors="replace")[-size:] if path.exists() else ""


def tarball_path(release: str, packages: Sequence[str], cache: Path = CACHE_DIR) -> Path:
    """Where the tarball of `release` with `packages` is cached: a new package list is a new tarball."""
    key = hashlib.sha256(" ".join([release, MIRROR, *sorted(set(packages))]).encode()).hexdigest()[:16]
    return Path(cache) / f"{release}-{key}.tar"


def root_tarball(release: str, packages: Sequence[str] = (), *, cache: Path = CACHE_DIR,
                 max_age_days: float = MAX_AGE_DAYS, log: Optional[IO[str]] = None) -> Path:
    """The cached tarball of a minimal `release` root with `packages`, built with mmdebstrap when missing or stale.

    Concurrent callers wait on a lock file and share one build."""
    path = tarball_path(release, packages, cache)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists() and time.time() - path.stat().st_mtime < max_age_days * 86400:
            return path
        partial = path.with_suffix(".partial")
        build_log = path.with_suffix(".log")
        # eatmydata: dpkg without fsync while building (the hook removes it from the result)
        command = ["mmdebstrap", "--variant=apt", "--format=tar", "--mode=root",
                   "--hook-dir=/usr/share/mmdebstrap/hooks/eatmydata",
                   *([f"--include={','.join(sorted(set(packages)))}"] if packages else []),
                   release, str(partial), MIRROR]
        if log:
            print(f"   mmdebstrap {release} with {len(set(packages))} packages -> {path}", file=log, flush=True)
        started = time.monotonic()
        with open(build_log, "w") as output:
            done = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  env={**os.environ, **ENVIRONMENT})
        if done.returncode != 0:
            partial.unlink(missing_ok=True)
            raise ChrootError(f"mmdebstrap {release} failed with {done.returncode}: {_tail(build_log)}")
        os.replace(partial, path)
        for stale in Path(cache).glob("*.tar"):  # roots of package lists no longer asked for
            if time.time() - stale.stat().st_mtime > max_age_days * 86400:
                for suffix in (".tar", ".log", ".lock"):
                    stale.with_suffix(suffix).unlink(missing_ok=True)
        if log:
            print(f"   built in {time.monotonic() - started:.0f}s", file=log, flush=True)
        return path


def copy_source_tree(source: Path, destination: Path) -> None:
    """A clean copy of a git work tree's files: tracked ones plus new ones not ignored (no .venv, caches or build
    output)."""
    destination.mkdir(parents=True)
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=source,
                           check=True, capture_output=True).stdout
    subprocess.run(["rsync", "-a", "--from0", "--files-from=-", "--ignore-missing-args", f"{source}/",
                    f"{destination}/"], input=files, check=True)


def end_on_sigterm() -> None:
    """Let SIGTERM end this process as Ctrl-C does: its `with Chroot(...)` blocks still stop what they started
    and remove their roots."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))


Command = Sequence[Union[str, os.PathLike]]


class Chroot:
    """A throwaway root unpacked from `tarball` under `workdir`, with its mounts in a private namespace.

    A context manager: on exit (errors too) it stops the processes started with `popen` and the namespace's
    holder, by PID, and removes the root."""

    def __init__(self, tarball: Path, workdir: Optional[Path] = None):
        self.tarball = Path(tarball)
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="chroot-", dir="/var/tmp"))
        self.root = self.workdir / "root"
        self._holder: Optional[subprocess.Popen] = None
        self._started: List[subprocess.Popen] = []

    def __enter__(self) -> Chroot:
        try:
            self.root.mkdir(parents=True)
            subprocess.run(["tar", "-C", str(self.root), "-xpf", str(self.tarball)], check=True,
                           stdin=subprocess.DEVNULL, capture_output=True)
            # apt in the root resolves Debian's mirror with the host's resolver
            resolv = self.root / "etc" / "resolv.conf"
            resolv.unlink(missing_ok=True)
            shutil.copyfile("/etc/resolv.conf", resolv)
            # a throwaway root: dpkg need not fsync what apt installs in it
            (self.root / "etc" / "dpkg" / "dpkg.cfg.d" / "unsafe-io").write_text("force-unsafe-io\n")
            self._holder = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", MOUNTS, "mounts",
                 str(self.root)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            assert self._holder.stdout is not None
            if self._holder.stdout.readline().strip() != "ready":
                self._holder.wait(10)
                assert self._holder.stderr is not None
                raise ChrootError(f"mounting in {self.root} failed: {self._holder.stderr.read().strip()}")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for process in reversed(self._started):
            stop_process(process)
        self._started.clear()
        if self._holder is not None:
            assert self._holder.stdin is not None
            self._holder.stdin.close()  # its `cat` ends: the namespace and its mounts go with it
            stop_process(self._holder, grace=10)
            self._holder = None
        self._remove()

    def _remove(self) -> None:
        """Remove the root, refusing if anything is mounted under it in the host's view (never expected)."""
        mounts = Path("/proc/self/mounts").read_text().split("\n")
        inside = [line for line in mounts if f" {self.workdir}/" in line or f" {self.workdir} " in line]
        if inside:
            raise ChrootError(f"still mounted under {self.workdir}, not removed: {inside}")
        shutil.rmtree(self.root, ignore_errors=True)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def mount_points(self) -> List[str]:
        """The mount points under the root in its namespace, in mount order."""
        if self._holder is None:
            return []
        points = [line.split()[1] for line in Path(f"/proc/{self._holder.pid}/mounts").read_text().splitlines()]
        return [point for point in points if point == str(self.root) or point.startswith(f"{self.root}/")]

    def path(self, inside: str) -> Path:
        """The host's path of a path inside the root."""
        return self.root / inside.lstrip("/")

    def command(self, command: Command, *, network: bool = True, env: Optional[dict] = None) -> List[str]:
        """The host command that runs `command` in the root; without `network`, in a new network namespace
        whose only interface is loopback (up)."""
        if self._holder is None:
            raise ChrootError("the chroot is not entered")
        inside = ["chroot", str(self.root), "env", "-i",
                  *(f"{key}={value}" for key, value in {**ENVIRONMENT, **(env or {})}.items()),
                  *map(str, command)]
        if not network:
            inside = ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "offline", *inside]
        return ["nsenter", f"--mount=/proc/{self._holder.pid}/ns/mnt", "--", *inside]

    def run(self, command: Command, *, check: bool = True, network: bool = True, env: Optional[dict] = None,
            timeout: Optional[float] = 600, **kwargs) -> subprocess.CompletedProcess:
        """Run `command` in the root and wait; `check` raises with its output when it fails."""
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        if "stdout" not in kwargs and "stderr" not in kwargs:
            kwargs["capture_output"] = True
        done = subprocess.run(self.command(command, network=network, env=env), text=True, timeout=timeout,
                              **kwargs)
        if check and done.returncode != 0:
            raise ChrootError(f"{' '.join(map(str, command))} exited with {done.returncode} in {self.root}:\n"
                              f"{(done.stdout or '')[-3000:]}{(done.stderr or '')[-3000:]}")
        return done

    def popen(self, command: Command, *, env: Optional[dict] = None, **kwargs) -> subprocess.Popen:
        """Start `command` in the root; it is stopped by PID on exit if it still runs."""
        process = subprocess.Popen(self.command(command, env=env), **kwargs)
        self._started.append(process)
        return process


def signing_chroot(workdir: Optional[Path] = None) -> Chroot:
    """A trixie root with skopeo and podman, from the cache (built on first use)."""
    return Chroot(root_tarball("trixie", SIGNING_PACKAGES), workdir)
