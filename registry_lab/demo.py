"""The demo: a local registry, sentinel images, the check OK; then the 2019 incident replayed, the check CRITICAL."""

from __future__ import annotations

import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from . import LocalRegistry, seed_sentinels


def show(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def run_check(registry: LocalRegistry, refs: list) -> int:
    args = ["check_registry_deep", "-R", registry.url] + [a for ref in refs for a in ("-i", ref)]
    print("$ " + " ".join(shlex.quote(a) for a in args), flush=True)
    done = subprocess.run([sys.executable, "-m", "check_registry_deep", *args[1:]], stdin=subprocess.DEVNULL)
    print(f"(exit code {done.returncode})", flush=True)
    return done.returncode


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="registry-deep-demo-") as workdir, \
            LocalRegistry(Path(workdir)) as registry:
        show(f"a real docker-registry on {registry.url}, storage in {registry.storage}")
        images = seed_sentinels(registry, golden_size=32 << 20, own_size=2 << 20)
        golden = images.golden.digest
        print(f"pushed {len(images.images)} sentinel images; all but one are built on the golden base layer {golden}")
        refs = images.refs()
        show("the check on a healthy registry")
        healthy = run_check(registry, refs)
        show("the incident: the golden layer is cut short in storage (as Swift's container sync did in 2019)")
        path = registry.blob_path(golden)
        registry.truncate_blob(golden, path.stat().st_size // 2)
        print(f"truncated {path} to {path.stat().st_size} bytes; manifests still resolve, /v2/ still answers 200")
        show("the check again")
        broken = run_check(registry, refs)
    show("cleaned up: registry stopped, storage removed")
    ok = healthy == 0 and broken == 2
    print("demo " + ("as expected: OK, then CRITICAL with every affected image" if ok else "did NOT go as expected"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
