#!/usr/bin/env python3
"""Benchmark check_registry_deep at production sizes against its references, on a real local registry.

Parts (each prints the plugin next to its references, measured in one run, interleaved, medians):

  gigabyte  8 images sharing a 256 MiB golden layer, 1 GiB of unique blobs: curl of every unique blob in one
            process and in 2 and 4 at once, hashlib's CPU per GB, skopeo copy of each image
  fixed     one tiny image end to end, --version, the interpreter alone; the heaviest imports
  thousand  1,000 images (200 repositories x 5 tags over a small pool of shared layers), by list and by
            --repository discovery: requests against the floor, 4 curls making the same requests, CPU, RSS
  latency   200 of those images behind a proxy adding RTT (default 20 ms): -j 4 and -j 16, by list and by
            discovery, against requests x RTT / concurrency and curls at the same concurrency

Usage, after the test setup (tools/test installs docker-registry, curl, skopeo and time):

  python3 bench/run.py [PART ...] [--reps N] [--reseed] [--skip-skopeo] [--plugin-args '-j 8']

The registry storage is seeded once (about a minute) and kept in bench/out/lab. Everything talks to
127.0.0.1 only. A ready-to-paste markdown table goes to stdout and bench/out/table.md, every sample to
bench/out/results.json.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.proxy import LatencyProxy  # noqa: E402
from check_registry_deep.manifests import ACCEPT  # noqa: E402
from registry_lab import LocalRegistry  # noqa: E402
from registry_lab.images import Layer, big_bytes, push_image, random_bytes, seed_fleet, seed_gigabyte_set  # noqa: E402

OUT = ROOT / "bench" / "out"
SEED_VERSION = 2
GB = 1e9
MB = 1e6
TIME = "/usr/bin/time"  # GNU time: peak RSS and CPU of exactly one child (Debian package `time`)
SUBPROCESS_TIMEOUT = 600.0
PARTS = ("gigabyte", "fixed", "thousand", "latency")
CORES = os.cpu_count() or 1
LATENCY_GROUP = "fleet/g0"  # 40 repositories x 5 tags: the 200 images behind the proxy


# -- seeding -----------------------------------------------------------------------------------------------

def _facts(registry: LocalRegistry, images) -> dict:
    """Each image's ref, repository and blobs, and each unique blob's size."""
    rows = [{"ref": image.ref, "repository": image.repository, "blobs": list(image.blobs)} for image in images]
    sizes = {d: registry.blob_path(d).stat().st_size for row in rows for d in row["blobs"]}
    return {"images": rows, "sizes": sizes, "bytes": sum(sizes.values())}


def seed(registry: LocalRegistry) -> dict:
    started = time.monotonic()
    sets = {"gigabyte": _facts(registry, seed_gigabyte_set(registry).images.values()),
            "tiny": _facts(registry, [push_image(registry, "tiny/one", "1", [Layer(random_bytes("tiny", 1024))])]),
            "fleet": _facts(registry, seed_fleet(registry).images.values())}
    print(f"seeded in {time.monotonic() - started:.1f}s", flush=True)
    return sets


def open_lab(workdir: Path, reseed: bool) -> Tuple[LocalRegistry, dict]:
    facts_path = workdir / "seeded.json"
    if reseed and workdir.exists():
        shutil.rmtree(workdir)
    registry = LocalRegistry(workdir).start()
    try:
        if facts_path.exists():
            facts = json.loads(facts_path.read_text())
            if facts.get("version") == SEED_VERSION:
                return registry, facts["sets"]
        sets = seed(registry)
        facts_path.write_text(json.dumps({"version": SEED_VERSION, "sets": sets}))
        return registry, sets
    except BaseException:
        registry.stop()
        raise


# -- the requests a workload needs at least ---------------------------------------------------------------

@dataclass(frozen=True)
class Request:
    method: str  # GET or HEAD
    path: str
    manifest: bool = False


def minimum_requests(images: Sequence[dict]) -> List[Request]:
    """What verifying these images takes at least: the API check, each manifest, each unique blob's GET once,
    and a HEAD in every other repository that links it (its link is confirmed, its bytes are not re-read)."""
    needed = [Request("GET", "/v2/")]
    needed += [Request("GET", f"/v2/{row['repository']}/manifests/{row['ref'].rsplit(':', 1)[1]}", True)
               for row in images]
    linked: Dict[str, List[str]] = {}
    for row in images:
        for digest in row["blobs"]:
            repositories = linked.setdefault(digest, [])
            if row["repository"] not in repositories:
                repositories.append(row["repository"])
    for digest, repositories in linked.items():
        needed.append(Request("GET", f"/v2/{repositories[0]}/blobs/{digest}"))
        needed += [Request("HEAD", f"/v2/{repository}/blobs/{digest}") for repository in repositories[1:]]
    return needed


def listing_requests(url: str, prefix: str) -> int:
    """Requests a discovery of `prefix` takes at least: every catalog page, one tags page per repository."""
    import requests  # the bench's own client, only here

    repositories, path = 0, "/v2/_catalog"
    for pages in range(1, 1000):
        response = requests.get(url + path, timeout=30)
        response.raise_for_status()
        repositories += sum(1 for name in response.json()["repositories"]
                            if name == prefix or name.startswith(prefix + "/"))
        if "next" not in response.links:
            return pages + repositories
        path = response.links["next"]["url"]
    raise SystemExit("the catalog pages never end")


# -- running things ----------------------------------------------------------------------------------------

@dataclass
class Run:
    seconds: float
    code: int
    output: str
    maxrss: int = -1  # bytes
    cpu: float = -1.0  # user + system seconds
    requests: int = -1  # as the registry's access log counted them
    registry_cpu: float = -1.0  # seconds of CPU the registry spent serving them


def run(argv: Sequence[str], *, env: Optional[dict] = None, cwd: Optional[Path] = None) -> Run:
    """Run a process to its end under GNU time (killed after SUBPROCESS_TIMEOUT): wall, CPU, peak RSS, output.

    Peak RSS and CPU come from GNU time, not from our own wait4(): a child forked from this (large) process
    inherits our high-water mark on Linux, and would report it."""
    with tempfile.NamedTemporaryFile("r", prefix="bench-time-") as usage:
        started = time.perf_counter()
        process = subprocess.Popen([TIME, "-f", "%M %U %S", "-o", usage.name, *argv], stdin=subprocess.DEVNULL,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        try:
            output, _ = process.communicate(timeout=SUBPROCESS_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
        seconds = time.perf_counter() - started
        kib, user, system = (usage.read().split() or ["-1", "-1", "0"])[-3:]
    return Run(seconds, process.returncode, output.decode(errors="replace"), int(kib) * 1024,
               float(user) + float(system))


def checked(result: Run, what: str) -> Run:
    if result.code != 0:
        raise SystemExit(f"{what} failed with exit code {result.code}: {result.output[-2000:]}")
    return result


class Observer:
    """What the registry did while a block ran: the requests it logged (its access log, read from an offset) and
    the CPU it used (/proc/PID/stat): on two cores the server's CPU is part of every client's wall time."""

    def __init__(self, registry: LocalRegistry):
        self.registry = registry

    def cpu(self) -> float:
        assert self.registry.process is not None
        fields = Path(f"/proc/{self.registry.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def __call__(self, fn: Callable[[], Run]) -> Run:
        start, cpu = self.registry.log_path.stat().st_size, self.cpu()
        result = fn()
        count, until = -1, time.monotonic() + 2.0
        while time.monotonic() < until:  # the last lines may land just after the client is done
            with open(self.registry.log_path, "rb") as log:
                log.seek(start)
                now = sum(1 for line in log if b'HTTP/1.1" ' in line)
            if now == count:
                break
            count = now
            time.sleep(0.05)
        result.requests = count
        result.registry_cpu = self.cpu() - cpu
        return result


@dataclass
class Bench:
    registry: LocalRegistry
    sets: dict
    python: str
    plugin_root: Path
    extra: List[str]
    reps: int
    samples: Dict[str, List[float]] = field(default_factory=dict)

    def plugin(self, url: str, args: Sequence[str], *, images: Optional[int] = None,
               unique_bytes: Optional[int] = None) -> Run:
        """The plugin as Icinga runs it: a fresh interpreter, `-m check_registry_deep`; it must say OK about
        exactly the images and bytes expected."""
        env = {**os.environ, "PYTHONPATH": str(self.plugin_root)}
        argv = [self.python, "-m", "check_registry_deep", "-R", url, "-t", "300", *self.extra, *args]
        result = checked(run(argv, env=env, cwd=self.plugin_root), "the plugin")  # -m imports from the cwd first
        if not result.output.startswith("REGISTRY_DEEP OK"):
            raise SystemExit(f"the plugin did not say OK: {result.output[:500]}")
        perfdata = perf_values(result.output)
        if images is not None and perfdata.get("images") != images:
            raise SystemExit(f"the plugin checked {perfdata.get('images')} images, expected {images}")
        if unique_bytes is not None and perfdata.get("bytes") != unique_bytes:
            raise SystemExit(f"the plugin verified {perfdata.get('bytes')} B, expected {unique_bytes}")
        return result

    def sample(self, name: str, value: float) -> None:
        self.samples.setdefault(name, []).append(value)

    def median(self, name: str) -> float:
        return statistics.median(self.samples[name])


def perf_values(output: str) -> Dict[str, float]:
    values = {}
    for item in output.splitlines()[0].partition("|")[2].split():
        label, _, value = item.partition("=")
        number = value.split(";")[0].rstrip("sB%")
        try:
            values[label.strip("'")] = float(number)
        except ValueError:
            pass
    return values


def curl_requests(url: str, shares: Sequence[Sequence[Request]]) -> Run:
    """`len(shares)` curl processes at once, each making its share of the requests one after the other on one
    connection (manifests with the plugin's Accept list, blob GETs, HEADs); wall time of the slowest."""
    configs, processes = [], []
    started = time.perf_counter()
    for share in shares:
        groups: List[str] = []
        for kind, chosen in (("manifest", [r for r in share if r.manifest]),
                             ("GET", [r for r in share if r.method == "GET" and not r.manifest]),
                             ("HEAD", [r for r in share if r.method == "HEAD"])):
            if not chosen:
                continue
            lines = ["silent", "show-error", "fail", 'header = "Accept-Encoding: identity"']
            if kind == "manifest":
                lines.append(f'header = "Accept: {ACCEPT}"')
            if kind == "HEAD":
                lines.append("head")
            lines += [f'url = "{url}{r.path}"\noutput = "/dev/null"' for r in chosen]
            groups.append("\n".join(lines))
        config = tempfile.NamedTemporaryFile("w", prefix="bench-curl-", suffix=".conf")  # noqa: SIM115
        config.write("\nnext\n".join(groups) + "\n")
        config.flush()
        configs.append(config)
        processes.append(subprocess.Popen([TIME, "-f", "%M %U %S", "-o", config.name + ".time", "curl", "-K",
                                           config.name], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT))
    cpu, codes = 0.0, []
    for process, config in zip(processes, configs, strict=True):
        output, _ = process.communicate(timeout=SUBPROCESS_TIMEOUT)
        codes.append(process.returncode)
        usage = Path(config.name + ".time")
        cpu += sum(map(float, usage.read_text().split()[-2:]))
        usage.unlink()
        config.close()
        if process.returncode:
            raise SystemExit(f"curl failed ({process.returncode}): {output.decode(errors='replace')[-500:]}")
    return Run(time.perf_counter() - started, 0, "", -1, cpu)


def split(requests: Sequence[Request], n: int, weight: Callable[[Request], float] = lambda r: 1.0
          ) -> List[List[Request]]:
    """Deal requests into n shares of about equal weight (heaviest first onto the lightest share)."""
    shares: List[List[Request]] = [[] for _ in range(n)]
    loads = [0.0] * n
    for request in sorted(requests, key=weight, reverse=True):
        i = loads.index(min(loads))
        shares[i].append(request)
        loads[i] += weight(request)
    return [share for share in shares if share]


def load() -> str:
    return "load average " + " / ".join(f"{x:.1f}" for x in os.getloadavg())


# -- the parts ---------------------------------------------------------------------------------------------

Row = Tuple[str, str, str, str]  # workload, the plugin, its reference, ratio
Target = Tuple[str, bool, str]  # what, met, measured


def part_gigabyte(bench: Bench, skopeo: bool) -> Tuple[List[Row], List[Target]]:
    facts = bench.sets["gigabyte"]
    unique, url = facts["bytes"], bench.registry.url
    refs = [a for row in facts["images"] for a in ("-i", row["ref"])]
    blobs = [r for r in minimum_requests(facts["images"]) if r.method == "GET" and not r.manifest][1:]
    size = {f"/v2/{row['repository']}/blobs/{d}": facts["sizes"][d] for row in facts["images"] for d in row["blobs"]}
    weigh: Callable[[Request], float] = lambda r: size[r.path]  # noqa: E731
    policy = OUT / "skopeo-policy.json"
    policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    buffer = memoryview(big_bytes("hash", 256 << 20))
    tiny = ["-i", bench.sets["tiny"]["images"][0]["ref"]]
    observe = Observer(bench.registry)
    bench.plugin(url, refs, unique_bytes=unique)  # warm-up: page cache, bytecode, the registry's first requests
    curl_requests(url, [blobs])
    for rep in range(bench.reps):
        result = observe(lambda: bench.plugin(url, refs, unique_bytes=unique))
        bench.sample("gb.plugin", result.seconds)
        bench.sample("gb.plugin_cpu", result.cpu)
        bench.sample("gb.plugin_rss", result.maxrss)
        bench.sample("gb.plugin_registry_cpu", result.registry_cpu)
        bench.sample("gb.tiny_cpu", bench.plugin(url, tiny, images=1).cpu)
        for n in (1, 2, 4):
            curl = observe(functools.partial(curl_requests, url, split(blobs, n, weigh)))
            bench.sample(f"gb.curl{n}", curl.seconds)
            if n == 1:
                bench.sample("gb.curl_cpu", curl.cpu)
                bench.sample("gb.curl_registry_cpu", curl.registry_cpu)
        started = time.process_time()
        hashlib.sha256(buffer).digest()
        bench.sample("gb.hashlib_cpu", (time.process_time() - started) / len(buffer) * GB)
        if skopeo:
            bench.sample("gb.skopeo", skopeo_copy(bench.registry, policy, [row["ref"] for row in facts["images"]]))
        print(f"  gigabyte {rep + 1}/{bench.reps}: plugin {bench.samples['gb.plugin'][-1]:.2f}s, "
              f"curl {bench.samples['gb.curl1'][-1]:.2f}s ({load()})", flush=True)
    m = bench.median
    plugin, curl1 = m("gb.plugin"), m("gb.curl1")
    best = min(m("gb.curl2"), m("gb.curl4"))
    cpu_gb, hash_gb = m("gb.plugin_cpu") / unique * GB, m("gb.hashlib_cpu")
    curl_gb = m("gb.curl_cpu") / unique * GB
    steady = (m("gb.plugin_cpu") - m("gb.tiny_cpu")) / unique * GB
    rows: List[Row] = [
        (f"8 images, {unique / GB:.2f} GB unique (256 MiB golden layer)", f"{plugin:.2f} s",
         f"curl, one process, each unique blob to /dev/null: {curl1:.2f} s; 2 / 4 curls at once: "
         f"{m('gb.curl2'):.2f} / {m('gb.curl4'):.2f} s",
         f"{curl1 / plugin:.2f}x one curl, {best / plugin:.2f}x the best parallel curl"),
        ("same, CPU per GB verified", f"{cpu_gb:.2f} s",
         f"hashlib sha256 of the same bytes: {hash_gb:.2f} s; curl: {curl_gb:.2f} s",
         f"{cpu_gb / hash_gb:.2f}x hashlib"),
        ("same, CPU per GB with start-up excluded (minus a tiny image's run)",
         f"{steady:.2f} s", f"hashlib + curl's receive path: {hash_gb + curl_gb:.2f} s",
         f"{steady / hash_gb:.2f}x hashlib"),
        ("same, the registry's CPU while serving them", f"{m('gb.plugin_registry_cpu'):.2f} s",
         f"for one curl: {m('gb.curl_registry_cpu'):.2f} s",
         f"CPU-bound floor, (client + registry CPU) / {CORES} cores: plugin "
         f"{(m('gb.plugin_cpu') + m('gb.plugin_registry_cpu')) / CORES:.2f} s"),
        ("same, peak RSS", f"{m('gb.plugin_rss') / MB:.0f} MB", "", ""),
    ]
    targets: List[Target] = [
        ("1 GiB set: >= 1.0x one curl", curl1 / plugin >= 1.0, f"{curl1 / plugin:.2f}x"),
        ("1 GiB set: >= 0.8x the best parallel curl", best / plugin >= 0.8, f"{best / plugin:.2f}x"),
        ("CPU per GB <= 1.5x hashlib", cpu_gb / hash_gb <= 1.5, f"{cpu_gb / hash_gb:.2f}x"),
    ]
    if skopeo:
        rows.append(("same, skopeo copy of each image to a dir", f"{plugin:.2f} s", f"{m('gb.skopeo'):.1f} s",
                     f"{m('gb.skopeo') / plugin:.1f}x faster than skopeo"))
        targets.append((">= 20x skopeo", m("gb.skopeo") / plugin >= 20, f"{m('gb.skopeo') / plugin:.1f}x"))
    return rows, targets


def skopeo_copy(registry: LocalRegistry, policy: Path, refs: Sequence[str]) -> float:
    """`skopeo copy` of each image into a fresh directory, one after the other, the way one checks by hand."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-skopeo-") as temp:
        for n, ref in enumerate(refs):
            checked(run(["skopeo", "--policy", str(policy), "copy", "--quiet", "--src-tls-verify=false",
                         f"docker://{registry.host}/{ref}", f"dir:{temp}/{n}"]), f"skopeo copy {ref}")
    return time.perf_counter() - started


def part_fixed(bench: Bench) -> Tuple[List[Row], List[Target]]:
    url = bench.registry.url
    tiny = ["-i", bench.sets["tiny"]["images"][0]["ref"]]
    env = {**os.environ, "PYTHONPATH": str(bench.plugin_root)}
    version = [bench.python, "-m", "check_registry_deep", "--version"]
    for _ in range(bench.reps * 2):
        bench.sample("fixed.python", checked(run([bench.python, "-c", "pass"]), "python").seconds)
        bench.sample("fixed.version", checked(run(version, env=env, cwd=bench.plugin_root), "--version").seconds)
        bench.sample("fixed.tiny", bench.plugin(url, tiny, images=1).seconds)
    imports = checked(run([bench.python, "-X", "importtime", "-m", "check_registry_deep", "-R", url, *tiny],
                          env=env, cwd=bench.plugin_root), "-X importtime")
    heavy = heaviest_imports(imports.output)
    m = bench.median
    rows: List[Row] = [
        ("fixed cost: one image of two tiny blobs", f"{m('fixed.tiny') * 1000:.0f} ms",
         f"`--version`: {m('fixed.version') * 1000:.0f} ms; python itself: {m('fixed.python') * 1000:.0f} ms",
         f"imports: {', '.join(f'{name} {ms:.0f} ms' for name, ms in heavy[:4])}"),
    ]
    targets: List[Target] = [
        ("one tiny image <= 120 ms", m("fixed.tiny") <= 0.120, f"{m('fixed.tiny') * 1000:.0f} ms"),
        ("--version <= 80 ms", m("fixed.version") <= 0.080, f"{m('fixed.version') * 1000:.0f} ms"),
    ]
    print("  heaviest top-level imports of a tiny run (-X importtime, cumulative): "
          + ", ".join(f"{name} {ms:.1f} ms" for name, ms in heavy[:10]), flush=True)
    return rows, targets


def heaviest_imports(stderr: str) -> List[Tuple[str, float]]:
    """Packages by cumulative import time (their dependencies included) from `-X importtime` output, in ms;
    the plugin's own package and the interpreter's start-up modules left out."""
    totals: Dict[str, float] = {}
    for line in stderr.splitlines():
        parts = line.split("|")
        if not line.startswith("import time:") or len(parts) != 3 or not parts[1].strip().isdigit():
            continue
        name = parts[2].strip()
        if "." not in name and name not in totals and name not in ("check_registry_deep", "site", "encodings"):
            totals[name] = int(parts[1]) / 1000
    return sorted(totals.items(), key=lambda kv: -kv[1])


def part_thousand(bench: Bench) -> Tuple[List[Row], List[Target]]:
    facts = bench.sets["fleet"]
    url, observe = bench.registry.url, Observer(bench.registry)
    images_file = OUT / "fleet-images.txt"
    images_file.write_text("".join(row["ref"] + "\n" for row in facts["images"]))
    floor = minimum_requests(facts["images"])
    listing = listing_requests(url, "fleet")
    n_images = len(facts["images"])
    # --referrers on a registry without the API and without artifacts: per image digest one referrers call (404),
    # the fallback tag and cosign's three tags (all 404)
    referrers_floor = 5 * n_images  # every fleet image has a digest of its own
    by_list = ["-f", str(images_file)]
    by_discovery = ["--repository", "fleet", "--all-tags"]
    bench.plugin(url, by_list, images=n_images)  # warm-up
    for rep in range(bench.reps):
        curl = observe(lambda: curl_requests(url, split(floor, 4)))
        bench.sample("k.curl4", curl.seconds)
        bench.sample("k.curl_cpu", curl.cpu)
        bench.sample("k.curl_registry_cpu", curl.registry_cpu)
        result = observe(lambda: bench.plugin(url, by_list, images=n_images))
        for key, value in (("", result.seconds), ("_cpu", result.cpu), ("_rss", result.maxrss),
                           ("_requests", result.requests), ("_registry_cpu", result.registry_cpu)):
            bench.sample("k.plugin" + key, value)
        found = observe(lambda: bench.plugin(url, by_discovery, images=n_images))
        bench.sample("k.discovery", found.seconds)
        bench.sample("k.discovery_requests", found.requests)
        attached = observe(lambda: bench.plugin(url, [*by_list, "--referrers"], images=n_images))
        bench.sample("k.referrers", attached.seconds)
        bench.sample("k.referrers_requests", attached.requests)
        print(f"  thousand {rep + 1}/{bench.reps}: plugin {result.seconds:.2f}s ({result.requests} requests), "
              f"discovery {found.seconds:.2f}s, --referrers {attached.seconds:.2f}s ({attached.requests} requests), "
              f"4 curls {curl.seconds:.2f}s ({load()})", flush=True)
    m = bench.median
    plugin, curl4, requests = m("k.plugin"), m("k.curl4"), m("k.plugin_requests")
    cpu_ms = m("k.plugin_cpu") / requests * 1000
    rows: List[Row] = [
        (f"{n_images:,} images (200 repositories x 5 tags, shared small layers), {requests:,.0f} requests "
         f"(floor {len(floor):,})", f"{plugin:.2f} s, {m('k.plugin_cpu'):.2f} s CPU, "
                                   f"{m('k.plugin_rss') / MB:.0f} MB RSS",
         f"the same requests from 4 curls at once: {curl4:.2f} s",
         f"{plugin / curl4:.2f}x the curls' time; {cpu_ms:.2f} ms CPU per request "
         f"(curl {m('k.curl_cpu') / len(floor) * 1000:.2f})"),
        ("same, the registry's CPU while serving them",
         f"{m('k.plugin_registry_cpu'):.2f} s ({m('k.plugin_registry_cpu') / requests * 1000:.2f} ms per request)",
         f"for the 4 curls: {m('k.curl_registry_cpu'):.2f} s", f"CPU-bound floor on {os.cpu_count()} cores, "
         f"(client + registry CPU) / cores: plugin {(m('k.plugin_cpu') + m('k.plugin_registry_cpu')) / CORES:.2f} s, "
         f"curls {(m('k.curl_cpu') + m('k.curl_registry_cpu')) / CORES:.2f} s"),
        (f"same through `--repository fleet --all-tags`, {m('k.discovery_requests'):,.0f} requests "
         f"(floor {len(floor) + listing:,})", f"{m('k.discovery'):.2f} s", f"by list: {plugin:.2f} s",
         f"{m('k.discovery') / plugin:.2f}x the list"),
        (f"same with `--referrers` (no artifacts attached), {m('k.referrers_requests'):,.0f} requests "
         f"(floor {len(floor) + referrers_floor:,})", f"{m('k.referrers'):.2f} s", f"without: {plugin:.2f} s",
         f"{m('k.referrers') / plugin:.2f}x the run without"),
    ]
    targets: List[Target] = [
        ("1,000 images: requests <= the floor", requests <= len(floor), f"{requests:,.0f} of {len(floor):,}"),
        ("1,000 images: <= 1.2x four curls", plugin / curl4 <= 1.2, f"{plugin / curl4:.2f}x"),
        ("1,000 images: CPU per request <= 0.5 ms", cpu_ms <= 0.5, f"{cpu_ms:.2f} ms"),
        ("1,000 images: RSS <= 60 MB", m("k.plugin_rss") <= 60 * MB, f"{m('k.plugin_rss') / MB:.0f} MB"),
        ("discovery within 10 % of the list", m("k.discovery") <= 1.1 * plugin, f"{m('k.discovery') / plugin:.2f}x"),
        ("discovery: requests <= the floor", m("k.discovery_requests") <= len(floor) + listing,
         f"{m('k.discovery_requests'):,.0f} of {len(floor) + listing:,}"),
        ("--referrers: requests <= the new floor", m("k.referrers_requests") <= len(floor) + referrers_floor,
         f"{m('k.referrers_requests'):,.0f} of {len(floor) + referrers_floor:,}"),
        ("--referrers: <= 1.2x the run without", m("k.referrers") <= 1.2 * plugin,
         f"{m('k.referrers') / plugin:.2f}x"),
    ]
    return rows, targets


def part_latency(bench: Bench, rtt: float) -> Tuple[List[Row], List[Target]]:
    facts = bench.sets["fleet"]
    chosen = [row for row in facts["images"] if row["repository"].startswith(LATENCY_GROUP + "/")]
    images_file = OUT / "latency-images.txt"
    images_file.write_text("".join(row["ref"] + "\n" for row in chosen))
    floor = minimum_requests(chosen)
    listing = listing_requests(bench.registry.url, LATENCY_GROUP)
    by_list = ["-f", str(images_file)]
    by_discovery = ["--repository", LATENCY_GROUP, "--all-tags"]
    rows: List[Row] = []
    targets: List[Target] = []
    with LatencyProxy(("127.0.0.1", bench.registry.port), up=rtt / 2, down=rtt / 2) as proxy:
        bench.plugin(proxy.url, by_list, images=len(chosen))  # warm-up
        for rep in range(bench.reps):
            for j in (4, 16):
                bench.sample(f"lat.curl{j}", curl_requests(proxy.url, split(floor, j)).seconds)
                bench.sample(f"lat.list{j}", bench.plugin(proxy.url, ["-j", str(j), *by_list],
                                                          images=len(chosen)).seconds)
                bench.sample(f"lat.discovery{j}", bench.plugin(proxy.url, ["-j", str(j), *by_discovery],
                                                               images=len(chosen)).seconds)
            print(f"  latency {rep + 1}/{bench.reps}: -j 4 {bench.samples['lat.discovery4'][-1]:.2f}s, -j 16 "
                  f"{bench.samples['lat.discovery16'][-1]:.2f}s ({load()})", flush=True)
    m = bench.median
    for j, target in ((4, 1.15), (16, 1.3)):
        ideal = len(floor) * rtt / j
        ideal_discovery = (len(floor) + listing) * rtt / j
        ratio = m(f"lat.discovery{j}") / ideal_discovery
        rows.append((f"{len(chosen)} images behind a proxy adding {rtt * 1000:.0f} ms RTT, -j {j}",
                     f"by list {m(f'lat.list{j}'):.2f} s; with discovery {m(f'lat.discovery{j}'):.2f} s",
                     f"requests x RTT / concurrency: {ideal:.2f} s ({len(floor)} requests) / {ideal_discovery:.2f} s "
                     f"(+{listing} listing); {j} curls: {m(f'lat.curl{j}'):.2f} s",
                     f"{m(f'lat.list{j}') / ideal:.2f}x / {ratio:.2f}x the ideal"))
        targets.append((f"{rtt * 1000:.0f} ms RTT, -j {j}, discovery included: <= {target}x ideal", ratio <= target,
                        f"{ratio:.2f}x"))
    return rows, targets


# -- the run -----------------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("parts", nargs="*", metavar="PART", help=f"parts to run (default all: {', '.join(PARTS)})")
    parser.add_argument("--reps", type=int, default=5, help="repetitions; medians are reported (default 5, min 3)")
    parser.add_argument("--workdir", type=Path, default=OUT / "lab",
                        help="registry storage; reused on later runs (default bench/out/lab)")
    parser.add_argument("--reseed", action="store_true", help="throw the storage away and seed again")
    parser.add_argument("--plugin-args", default="", help="extra plugin options, e.g. '-j 8' (for tuning)")
    parser.add_argument("--plugin-root", type=Path, default=ROOT,
                        help="import check_registry_deep from this tree (default: this checkout)")
    parser.add_argument("--python", default=str(ROOT / ".venv" / "bin" / "python") if (
        ROOT / ".venv" / "bin" / "python").exists() else sys.executable,
        help="interpreter that runs the plugin (default: the checkout's .venv, else this one)")
    parser.add_argument("--rtt", type=float, default=20.0, help="round-trip time the proxy adds, ms (default 20)")
    parser.add_argument("--skip-skopeo", action="store_true", help="leave skopeo out (quick tuning runs)")
    options = parser.parse_args()
    parts = options.parts or list(PARTS)
    if set(parts) - set(PARTS):
        parser.error(f"unknown part {sorted(set(parts) - set(PARTS))[0]!r}: choose among {', '.join(PARTS)}")
    skopeo = "gigabyte" in parts and not options.skip_skopeo
    for tool, package in (("curl", "curl"), (TIME, "time"), *((("skopeo", "skopeo"),) if skopeo else ())):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: apt-get install {package}")
    OUT.mkdir(parents=True, exist_ok=True)
    # byte-compiled as a package install leaves it (PYTHONDONTWRITEBYTECODE would have every run compile it)
    checked(run([options.python, "-m", "compileall", "-q", str(options.plugin_root.resolve() / "check_registry_deep")]),
            "compileall")
    registry, sets = open_lab(options.workdir, options.reseed)
    bench = Bench(registry, sets, options.python, options.plugin_root.resolve(), options.plugin_args.split(),
                  max(3, min(options.reps, 50)))
    rows: List[Row] = []
    targets: List[Target] = []
    loads = [load()]
    try:
        for part in parts:
            print(f"{part} ({load()})", flush=True)
            if part == "gigabyte":
                found = part_gigabyte(bench, skopeo)
            elif part == "fixed":
                found = part_fixed(bench)
            elif part == "thousand":
                found = part_thousand(bench)
            else:
                found = part_latency(bench, options.rtt / 1000)
            rows += found[0]
            targets += found[1]
    finally:
        registry.stop()
    loads.append(load())
    machine = (f"{os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}, "
               f"{time.strftime('%Y-%m-%d %H:%M')}; {loads[0]} at the start, {loads[1]} at the end; "
               f"medians of {bench.reps}, interleaved")
    table = ["| workload | the plugin | its reference | ratio |", "| --- | --- | --- | --- |"]
    table += [f"| {' | '.join(row)} |" for row in rows]
    table += ["", "| target | measured | |", "| --- | ---: | --- |"]
    table += [f"| {name} | {value} | {'met' if ok else 'MISSED'} |" for name, ok, value in targets]
    text = "\n".join(table) + f"\n\n{machine}\n"
    print()
    print(text)
    (OUT / "table.md").write_text(text)
    (OUT / "results.json").write_text(json.dumps({
        "samples": bench.samples, "medians": {k: statistics.median(v) for k, v in bench.samples.items()},
        "machine": machine, "plugin_args": bench.extra, "targets": targets}, indent=1))
    print(f"wrote {OUT / 'table.md'} and {OUT / 'results.json'}")
    return 0 if all(ok for _, ok, _ in targets) else 1


if __name__ == "__main__":
    sys.exit(main())
