"""The demo: a local registry, sentinel images, the check OK; then the 2019 incident replayed, the check CRITICAL."""

from __future__ import annotations

import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List, Optional

from . import LocalRegistry, seed_sentinels


def show(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def run_check(url: str, refs: list, *extra: str) -> int:
    args = ["check_registry_deep", "-R", url] + [a for ref in refs for a in ("-i", ref)] + list(extra)
    print("$ " + " ".join(shlex.quote(a) for a in args), flush=True)
    done = subprocess.run([sys.executable, "-m", "check_registry_deep", *args[1:]], stdin=subprocess.DEVNULL)
    print(f"(exit code {done.returncode})", flush=True)
    return done.returncode


def verdict(ok: bool, expected: str) -> int:
    """The demo's last line, and its exit code: 0 when every check ended as the demo says it should."""
    print("demo " + (f"as expected: {expected}" if ok else "did NOT go as expected"))
    return 0 if ok else 1


def main(argv: Optional[List[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--swift"]:
        return swift_main()
    if args == ["--cache"]:
        return cache_main()
    if args == ["--s3"]:
        return s3_main()
    if args == ["--signatures"]:
        return signatures_main()
    if args:
        print("usage: python -m registry_lab.demo [--swift | --cache | --s3 | --signatures]", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="registry-deep-demo-") as workdir, \
            LocalRegistry(Path(workdir)) as registry:
        show(f"a real docker-registry on {registry.url}, storage in {registry.storage}")
        images = seed_sentinels(registry, golden_size=32 << 20, own_size=2 << 20)
        golden = images.golden.digest
        print(f"pushed {len(images.images)} sentinel images; all but one are built on the golden base layer {golden}")
        refs = images.refs()
        show("the check on a healthy registry")
        healthy = run_check(registry.url, refs)
        show("the incident: the golden layer is cut short in storage (as Swift's container sync did in 2019)")
        path = registry.blob_path(golden)
        registry.truncate_blob(golden, path.stat().st_size // 2)
        print(f"truncated {path} to {path.stat().st_size} bytes; manifests still resolve, /v2/ still answers 200")
        show("the check again")
        broken = run_check(registry.url, refs)
    show("cleaned up: registry stopped, storage removed")
    return verdict(healthy == 0 and broken == 2, "OK, then CRITICAL with every affected image")


def swift_main() -> int:
    """The incident on its own storage: Swift, a registry in a container, container sync, a deleted mirror."""
    from .swift import SwiftCluster, SwiftLab  # Swift is only needed here

    with tempfile.TemporaryDirectory(prefix="registry-deep-swift-demo-") as workdir, \
            SwiftCluster(Path(workdir) / "swift") as cluster:
        memory = sum(cluster.memory_kib().values()) >> 10
        show(f"OpenStack Swift on {cluster.url} (proxy, account, container, object servers, tempauth, memcached; "
             f"one node, one replica): up in {cluster.started_in:.1f}s, {memory} MB resident")
        lab = SwiftLab(cluster, Path(workdir))
        print("pushing the sentinel images through a registry into a Swift container (about half a minute)...",
              flush=True)
        images = lab.seed(lambda registry: seed_sentinels(registry, golden_size=12 << 20, own_size=1 << 20))
        registry = lab.registry("plain")
        try:
            golden = images.golden.digest
            sizes = [size for _, size in registry.segments(golden)]
            show(f"a real docker-registry on {registry.url}, storage: Swift container {registry.container!r}")
            print(f"{len(images.images)} sentinel images; all but one are built on the golden base layer {golden},")
            print(f"stored as a Swift large object in {len(sizes)} segments of {', '.join(map(str, sizes))} bytes")
            refs = images.refs()
            show("the check on a healthy registry")
            healthy = run_check(registry.url, refs)
            show("the incident: container sync to a mirror, the mirror deleted, the deletes synced back")
            incident = registry.replay_sync_incident(golden, keep=1)
            print(f"container {registry.container!r} and {incident.mirror!r} sync both ways "
                  f"(Swift's container-sync daemon); the first pass copied {incident.mirrored} objects")
            print(f"the mirror is deleted; its deletion had reached {len(incident.deleted)} segments of the golden "
                  "layer when the sync daemon ran again, and it carried the deletes over:")
            print(f"the golden layer now has {len(incident.left)} of {len(incident.segments)} segments in "
                  f"{registry.container!r}; its object, the manifests and tags are untouched, /v2/ answers 200")
            show("the check again")
            broken = run_check(registry.url, refs)
        finally:
            registry.stop()
    show("cleaned up: registry and Swift stopped, storage removed")
    return verdict(healthy == 0 and broken == 2, "OK, then CRITICAL with every affected image")


def cache_main() -> int:
    """The 2025 incident: nginx caches blobs in front of the registry, and its copy of a layer goes bad."""
    from .nginx import CachingProxy

    with tempfile.TemporaryDirectory(prefix="registry-deep-cache-demo-") as workdir, \
            LocalRegistry(Path(workdir) / "registry") as origin:
        images = seed_sentinels(origin, golden_size=32 << 20, own_size=2 << 20)
        golden, size = images.golden.digest, len(images.golden.data)
        with CachingProxy(Path(workdir) / "nginx", origin) as cache:
            show(f"a real docker-registry on {origin.url} (the origin), Debian's nginx on {cache.url} in front of "
                 "it caching blob GETs by digest (manifests are not cached)")
            print(f"pushed {len(images.images)} sentinel images; all but one are built on the golden base layer "
                  f"{golden}")
            refs = images.refs()
            show("the check through the cache, telling it where the origin is; the first run fills the cache")
            healthy = run_check(cache.url, refs, "--origin", origin.host)
            print(f"nginx's log, the golden layer: {', '.join(cache.cache_statuses(golden))}")
            show("the incident: nginx's cached copy of the golden layer goes bad (same size, one byte changed); "
                 "the origin's storage is intact")
            cache.alter_cached(golden, size, size // 2)
            print(f"changed byte {size // 2} of the body in {cache.cache_path(golden)}; nginx's header, "
                  "Content-Length, ETag and Docker-Content-Digest are untouched")
            show("the check again")
            broken = run_check(cache.url, refs, "--origin", origin.host)
            print(f"nginx's log, the golden layer: {', '.join(cache.cache_statuses(golden))}")
            show("the repair the verdict points to: purge the cache entry (not a restore from backup), check again")
            cache.purge(golden)
            print(f"removed {cache.cache_path(golden)}")
            repaired = run_check(cache.url, refs, "--origin", origin.host)
            print(f"nginx's log, the golden layer: {', '.join(cache.cache_statuses(golden))}")
    show("cleaned up: nginx and the registry stopped, cache and storage removed")
    return verdict(healthy == 0 and broken == 2 and repaired == 0,
                   "OK, then CRITICAL with the origin intact, then OK after the purge")


def s3_main() -> int:
    """Object storage behind redirects: the bucket loses the golden layer while the registry still lists it."""
    from .s3 import S3Lab, s3_available  # moto is only needed here

    problem = s3_available()
    if problem:
        print(problem, file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="registry-deep-s3-demo-") as workdir, S3Lab(Path(workdir)) as lab:
        moto, front = lab.started
        print("pushing the sentinel images through a registry into an S3 bucket...", flush=True)
        images = lab.seed(lambda registry: seed_sentinels(registry, golden_size=32 << 20, own_size=2 << 20))
        registry = lab.registry()
        try:
            golden = images.golden.digest
            show(f"a real docker-registry on {registry.url}, storage: bucket {registry.bucket.name!r} through its s3 "
                 f"driver at {front.url} (the lab's stand-in for S3's presigned-URL checks, before moto's S3 on "
                 f"{moto.url}); blob GETs are redirected there, and the registry caches blob descriptors (as "
                 "Debian's default config does)")
            print(f"{len(images.images)} sentinel images; all but one are built on the golden base layer {golden}")
            refs = images.refs()
            show("the check on a healthy registry")
            healthy = run_check(registry.url, refs)
            redirected = sum(1 for e in registry.access_log() if "/blobs/" in e["path"] and e["status"] == "307")
            print(f"the registry answered {redirected} blob requests with a redirect to the storage")
            show("the incident: the golden layer's object is deleted from the bucket (a lifecycle rule, a cleanup "
                 "script); the registry still lists the blob, manifests and tags resolve, /v2/ answers 200")
            data = registry.bucket.get(registry.object_name(golden))
            registry.delete_blob(golden)
            print(f"deleted s3://{registry.bucket.name}/{registry.object_name(golden)}")
            show("the check again")
            broken = run_check(registry.url, refs)
            show("the repair the verdict points to: restore the object in the bucket (not re-push: the registry "
                 "still has the blob), check again")
            registry.bucket.put(registry.object_name(golden), data)
            print(f"restored s3://{registry.bucket.name}/{registry.object_name(golden)} from a copy")
            repaired = run_check(registry.url, refs)
        finally:
            registry.stop()
    show("cleaned up: registry, front and moto stopped, storage removed")
    return verdict(healthy == 0 and broken == 2 and repaired == 0,
                   "OK, then CRITICAL naming the storage, then OK after the restore")


def signatures_main() -> int:
    """What a deploy needs besides the image: the registry's own garbage collector deletes an SBOM and a cosign 3
    signature (untagged referrers) while the fallback tag still lists them."""
    from .artifacts import garbage_collect, seed_attached
    from .signing import KeyPair

    with tempfile.TemporaryDirectory(prefix="registry-deep-signatures-demo-") as workdir, \
            LocalRegistry(Path(workdir) / "registry") as registry:
        keys = KeyPair.generate()
        key = keys.write_public(Path(workdir) / "cosign.pub")
        seeded = seed_attached(registry, keys)
        refs = [seeded.ref("app"), seeded.ref("bundled")]
        show(f"a real docker-registry on {registry.url}; {refs[0]} has an SBOM (an untagged referrer, listed by its "
             f"sha256-<hex> fallback tag) and a cosign .sig; {refs[1]} a cosign 3 sigstore-bundle signature (an "
             f"untagged referrer); both signed with {key}")
        healthy = run_check(registry.url, refs, "--referrers", "--cosign-key", str(key), "-v")
        show("the registry's own garbage collection, the registry stopped: docker-registry garbage-collect "
             "--delete-untagged")
        output = garbage_collect(registry)
        print("\n".join(line for line in output.splitlines() if "eligible for deletion" in line))
        show("the check with --cosign-key alone: the lost signature, not the lost SBOM")
        unaware = run_check(registry.url, refs, "--cosign-key", str(key))
        show("the check again, with --referrers")
        broken = run_check(registry.url, refs, "--referrers", "--cosign-key", str(key))
    show("cleaned up: registry stopped, storage removed")
    return verdict(healthy == 0 and unaware == 2 and broken == 2,
                   "OK, then CRITICAL naming the lost SBOM and signature")


if __name__ == "__main__":
    sys.exit(main())
