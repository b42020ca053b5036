#!/usr/bin/env python3
"""Benchmark check_registry_deep against its limits and its peers on a real local registry (issue 7).

Seeds a perf set through the registry lab (8 images sharing a 64 MiB golden layer plus 20-32 MiB own layers,
~291 MB of unique blobs), then measures in one run, round-robin, medians of --reps repetitions:

  limits   hashlib sha256 on one core; curl of every unique blob to /dev/null (the bare transfer)
  peers    `skopeo copy` of each image into a temp dir; `curl | openssl dgst -sha256`, two pipelines at once
  plugin   `python -m check_registry_deep -R URL -i ...` as a user runs it (a fresh process each time)

and: the plugin's peak RSS verifying a 1 GiB blob, the time of --version and of a run over one tiny image,
and scaling (wall time as the images double over the same unique bytes, and as the unique bytes double).
Prints a table, PASS/FAIL per target, and writes bench/out/{results.json,table.md,chart.svg}.

Usage (after the test setup, tools/test, plus `apt-get install skopeo`):  python3 bench/run.py
"""

from __future__ import annotations

import argparse
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from registry_lab import LocalRegistry  # noqa: E402
from registry_lab.images import Layer, push_image, random_bytes, seed_perf_set  # noqa: E402

OUT = ROOT / "bench" / "out"
SEED_VERSION = 1
MB = 1e6
PLUGIN_PYTHON = ROOT / ".venv" / "bin" / "python"
SUBPROCESS_TIMEOUT = 600.0

# Targets (issue 7), all ratios within one run.
TARGET_BARE = 0.8  # plugin >= 0.8x the bare transfer
TARGET_SKOPEO = 15.0  # plugin >= 15x skopeo
TARGET_DOUBLE_IMAGES = 1.15  # doubling images that share their layers adds < 15% time
TARGET_RSS = 100 * MB  # peak RSS with a 1 GiB blob
TARGET_VERSION = 0.250  # seconds


# -- seeding -----------------------------------------------------------------------------------------------

def _facts(registry: LocalRegistry, images) -> dict:
    """Refs in order, and every unique blob with its size and one repository that serves it."""
    blobs: Dict[str, dict] = {}
    for image in images.values():
        for digest in image.blobs:
            blobs.setdefault(digest, {"size": registry.blob_path(digest).stat().st_size,
                                      "repository": image.repository})
    return {"refs": [image.ref for image in images.values()], "blobs": blobs,
            "bytes": sum(b["size"] for b in blobs.values())}


def seed(registry: LocalRegistry) -> dict:
    """Push every set the bench uses; returns their facts (also kept next to the storage for reuse)."""
    started = time.monotonic()
    sets = {
        "perf": _facts(registry, seed_perf_set(registry, prefix="perf", copies=4).images),
        "half": _facts(registry, seed_perf_set(registry, prefix="perf-half", scale=0.5, seed="perf-half").images),
        "double": _facts(registry, seed_perf_set(registry, prefix="perf-double", scale=2.0,
                                                 seed="perf-double").images),
    }
    # randbytes takes < 256 MiB a call: a 1 GiB layer from 16 seeded pieces
    big = Layer(b"".join(random_bytes(f"perf-big-{i}", 64 << 20) for i in range(16)))
    sets["big"] = _facts(registry, {"big": push_image(registry, "perf/big", "1", [big])})
    del big
    sets["tiny"] = _facts(registry, {"tiny": push_image(registry, "perf/tiny", "1",
                                                        [Layer(random_bytes("perf-tiny", 1024))])})
    print(f"seeded the perf sets in {time.monotonic() - started:.1f}s", flush=True)
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


# -- running things ----------------------------------------------------------------------------------------

class Run:
    def __init__(self, seconds: float, code: int, output: str, maxrss: int, cpu: float):
        self.seconds, self.code, self.output, self.maxrss, self.cpu = seconds, code, output, maxrss, cpu


TIME = "/usr/bin/time"  # GNU time: the peak RSS of exactly one child (Debian package `time`)


def run(argv: Sequence[str], *, env: Optional[dict] = None, cwd: Optional[Path] = None, rss: bool = False) -> Run:
    """Run a process to its end (killed after SUBPROCESS_TIMEOUT); its wall time, exit code, output, peak RSS.

    The peak RSS comes from GNU time, not from our own wait4(): a child forked from this (large) process
    inherits our high-water mark on Linux, and would report it.
    """
    maxrss, cpu = -1, -1.0
    with tempfile.NamedTemporaryFile("r", prefix="bench-rss-") as rss_file:
        if rss:
            argv = [TIME, "-f", "%M %U %S", "-o", rss_file.name, *argv]
        started = time.perf_counter()
        process = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, env=env, cwd=cwd)
        try:
            output, _ = process.communicate(timeout=SUBPROCESS_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
        seconds = time.perf_counter() - started
        if rss:
            kib, user, system = rss_file.read().split()[-3:]
            maxrss, cpu = int(kib) * 1024, float(user) + float(system)
    return Run(seconds, process.returncode, output.decode(errors="replace"), maxrss, cpu)


def checked(result: Run, what: str) -> Run:
    if result.code != 0:
        raise SystemExit(f"{what} failed with exit code {result.code}: {result.output[-2000:]}")
    return result


#: Where the plugin's package is imported from (--plugin-root): this checkout unless told otherwise.
PLUGIN_ROOT = ROOT


def plugin_command(*args: str) -> Tuple[List[str], dict]:
    """The plugin as a user runs it: a fresh interpreter, `-m check_registry_deep`, from PLUGIN_ROOT."""
    return ([str(PLUGIN_PYTHON), "-m", "check_registry_deep", *args],
            {**os.environ, "PYTHONPATH": str(PLUGIN_ROOT)})


def plugin(registry: LocalRegistry, refs: Sequence[str], extra: Sequence[str] = ()) -> Run:
    args, env = plugin_command("-R", registry.url, "-t", "300", *extra, *[a for ref in refs for a in ("-i", ref)])
    result = checked(run(args, env=env, cwd=PLUGIN_ROOT, rss=True), "the plugin")
    if not result.output.startswith("REGISTRY_DEEP OK"):
        raise SystemExit(f"the plugin did not say OK: {result.output[:500]}")
    return result


def plugin_bytes(output: str) -> int:
    """The `bytes` perfdata value of a plugin run."""
    perfdata = output.splitlines()[0].split("|", 1)[1]
    for item in perfdata.split():
        label, _, value = item.partition("=")
        if label.strip("'") == "bytes":
            return int(float(value.split(";")[0].rstrip("B")))
    raise SystemExit(f"no bytes perfdata in {output[:300]}")


def blob_urls(registry: LocalRegistry, facts: dict) -> List[Tuple[str, str, int]]:
    """(digest, url, size) of every unique blob, largest first."""
    return [(digest, f"{registry.url}/v2/{blob['repository']}/blobs/{digest}", blob["size"])
            for digest, blob in sorted(facts["blobs"].items(), key=lambda kv: -kv[1]["size"])]


def hashlib_rate(buffer: memoryview) -> float:
    started = time.perf_counter()
    hashlib.sha256(buffer).digest()
    return len(buffer) / (time.perf_counter() - started)


def curl_all(registry: LocalRegistry, facts: dict, parallel: int = 1) -> Run:
    args = ["curl", "-sS", "--fail"]
    if parallel > 1:
        args += ["--parallel", "--parallel-max", str(parallel)]
    for _, url, _ in blob_urls(registry, facts):
        args += ["-o", "/dev/null", url]
    return checked(run(args, rss=True), "curl")


def curl_openssl(registry: LocalRegistry, facts: dict, pipelines: int = 2) -> float:
    """`curl URL | openssl dgst -sha256` for every unique blob, `pipelines` at once; each digest checked."""

    def one(item: Tuple[str, str, int]) -> None:
        digest, url, _ = item
        curl = subprocess.Popen(["curl", "-sS", "--fail", url], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        try:
            dgst = subprocess.run(["openssl", "dgst", "-sha256", "-r"], stdin=curl.stdout, capture_output=True,
                                  timeout=SUBPROCESS_TIMEOUT, check=True)
        finally:
            assert curl.stdout is not None
            curl.stdout.close()
            curl.wait(SUBPROCESS_TIMEOUT)
        got = "sha256:" + dgst.stdout.split()[0].decode()
        if curl.returncode != 0 or got != digest:
            raise SystemExit(f"curl | openssl: {url} gave {got} (curl exit {curl.returncode})")

    started = time.perf_counter()
    with ThreadPoolExecutor(pipelines) as pool:
        list(pool.map(one, blob_urls(registry, facts)))
    return time.perf_counter() - started


def skopeo_copy(registry: LocalRegistry, facts: dict, policy: Path, refs: Sequence[str]) -> float:
    """`skopeo copy` of each image into a fresh directory, one after the other, the way one checks by hand."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-skopeo-") as temp:
        for n, ref in enumerate(refs):
            checked(run(["skopeo", "--policy", str(policy), "copy", "--quiet", "--src-tls-verify=false",
                         f"docker://{registry.host}/{ref}", f"dir:{temp}/{n}"]), f"skopeo copy {ref}")
    return time.perf_counter() - started


# -- reporting ---------------------------------------------------------------------------------------------

def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def svg_chart(rows: List[Tuple[str, float, str]], scaling: List[Tuple[str, float, str]], title: str) -> str:
    """Two groups of horizontal bars (throughput in MB/s, scaling in s), drawn by hand: no plotting library."""
    width, label_w, bar_w, row_h = 860, 300, 440, 26
    colors = {"plugin": "#2b7bba", "limit": "#7a7a7a", "peer": "#d9822b"}
    parts: List[str] = []
    y = 40

    def group(heading: str, items: List[Tuple[str, float, str]], unit: str) -> None:
        nonlocal y
        parts.append(f'<text x="10" y="{y}" font-weight="bold">{_esc(heading)}</text>')
        y += 12
        top = max(value for _, value, _ in items) or 1.0
        for label, value, kind in items:
            length = max(1.0, bar_w * value / top)
            parts.append(f'<text x="{label_w - 8}" y="{y + 17}" text-anchor="end">{_esc(label)}</text>')
            parts.append(f'<rect x="{label_w}" y="{y + 4}" width="{length:.1f}" height="{row_h - 8}" '
                         f'fill="{colors[kind]}"/>')
            parts.append(f'<text x="{label_w + length + 6:.1f}" y="{y + 17}">{value:,.{2 if unit == "s" else 0}f}'
                         f' {unit}</text>')
            y += row_h
        y += 24

    group("Throughput over the unique bytes (MB/s, higher is better)", rows, "MB/s")
    group("Scaling: plugin wall time (s, lower is better)", scaling, "s")
    legend = " ".join(f'<rect x="{10 + 120 * i}" y="{y - 10}" width="12" height="12" fill="{color}"/>'
                      f'<text x="{28 + 120 * i}" y="{y}">{name}</text>'
                      for i, (name, color) in enumerate(colors.items()))
    height = y + 16
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="13">'
            f'<rect width="100%" height="100%" fill="white"/>'
            f'<text x="10" y="20" font-size="15" font-weight="bold">{_esc(title)}</text>'
            + "".join(parts) + legend + "</svg>\n")


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# -- the run -----------------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="repetitions; medians are reported (default 5, min 3)")
    parser.add_argument("--workdir", type=Path, default=OUT / "lab",
                        help="registry storage; reused on later runs (default bench/out/lab)")
    parser.add_argument("--reseed", action="store_true", help="throw the storage away and seed again")
    parser.add_argument("--plugin-args", default="", help="extra plugin options, e.g. '-j 2' (for tuning)")
    parser.add_argument("--plugin-root", type=Path, default=ROOT,
                        help="import check_registry_deep from this tree (default: this checkout)")
    parser.add_argument("--skip-skopeo", action="store_true", help="leave skopeo out (quick tuning runs)")
    options = parser.parse_args()
    global PLUGIN_ROOT
    PLUGIN_ROOT = options.plugin_root.resolve()
    reps = max(3, min(options.reps, 50))
    extra = options.plugin_args.split()
    have_skopeo = shutil.which("skopeo") is not None and not options.skip_skopeo
    if not have_skopeo and not options.skip_skopeo:
        raise SystemExit("skopeo is missing: apt-get install skopeo (or pass --skip-skopeo)")
    for tool, package in (("curl", "curl"), ("openssl", "openssl"), (TIME, "time")):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: apt-get install {package}")
    OUT.mkdir(parents=True, exist_ok=True)

    registry, sets = open_lab(options.workdir, options.reseed)
    try:
        perf = sets["perf"]
        refs8, refs16, refs32 = perf["refs"][:8], perf["refs"][:16], perf["refs"][:32]
        unique = perf["bytes"]
        policy = OUT / "skopeo-policy.json"
        policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
        buffer = memoryview(random_bytes("perf-hash", 128 << 20))
        print(f"registry {registry.url}; perf set: {len(refs8)} images, {len(perf['blobs'])} unique blobs, "
              f"{unique / MB:.1f} MB unique; {reps} repetitions", flush=True)

        # warm-up: page cache, the registry's first requests, Python's bytecode cache
        plugin(registry, refs8, extra)
        curl_all(registry, perf)

        samples: Dict[str, List[float]] = {}

        def sample(name: str, fn: Callable[[], float]) -> None:
            samples.setdefault(name, []).append(fn())

        version_args, version_env = plugin_command("--version")
        for rep in range(reps):
            sample("hashlib", lambda: hashlib_rate(buffer))
            curl = curl_all(registry, perf)
            samples.setdefault("curl", []).append(curl.seconds)
            samples.setdefault("curl_cpu", []).append(curl.cpu)
            sample("curl2", lambda: curl_all(registry, perf, parallel=2).seconds)
            sample("openssl2", lambda: curl_openssl(registry, perf, 2))
            if have_skopeo:
                sample("skopeo", lambda: skopeo_copy(registry, perf, policy, refs8))

            def plugin8() -> float:
                result = plugin(registry, refs8, extra)
                if plugin_bytes(result.output) != unique:
                    raise SystemExit(f"the plugin verified {plugin_bytes(result.output)} B, expected {unique}")
                samples.setdefault("plugin_cpu", []).append(result.cpu)
                return result.seconds

            sample("plugin", plugin8)
            sample("plugin16", lambda: plugin(registry, refs16, extra).seconds)
            sample("plugin32", lambda: plugin(registry, refs32, extra).seconds)
            sample("half", lambda: plugin(registry, sets["half"]["refs"], extra).seconds)
            sample("double", lambda: plugin(registry, sets["double"]["refs"], extra).seconds)
            big = plugin(registry, sets["big"]["refs"], extra)
            samples.setdefault("big", []).append(big.seconds)
            samples.setdefault("big_rss", []).append(big.maxrss)
            samples.setdefault("rss8", []).append(plugin(registry, refs8, extra).maxrss)
            for _ in range(3):
                sample("version", lambda: checked(run(version_args, env=version_env, cwd=PLUGIN_ROOT),
                                                  "--version").seconds)
                sample("tiny", lambda: plugin(registry, sets["tiny"]["refs"], extra).seconds)
            print(f"  repetition {rep + 1}/{reps}: plugin {unique / samples['plugin'][-1] / MB:,.0f} MB/s, "
                  f"curl {unique / samples['curl'][-1] / MB:,.0f} MB/s", flush=True)
    finally:
        registry.stop()

    m = {name: median(values) for name, values in samples.items()}
    # the hashlib sample is a rate; everything else a wall time over the perf set's unique bytes
    rate = {"hashlib": m["hashlib"]}
    for name in ("curl", "curl2", "openssl2", "skopeo", "plugin"):
        if name in m:
            rate[name] = unique / m[name]
    labels = {
        "hashlib": ("limit", "hashlib sha256, one core (in memory)"),
        "curl": ("limit", "curl to /dev/null, sequential (bare transfer)"),
        "curl2": ("limit", "curl to /dev/null, 2 parallel"),
        "plugin": ("plugin", f"check_registry_deep {' '.join(extra) or '(defaults)'}"),
        "openssl2": ("peer", "curl | openssl dgst -sha256, 2 at once"),
        "skopeo": ("peer", "skopeo copy of each image to a dir"),
    }
    plugin_rate = rate["plugin"]
    rows = []
    table = [f"| measured (median of {reps}) | wall time | MB/s of unique bytes | plugin's ratio to it |",
             "| --- | ---: | ---: | ---: |"]
    for name in ("hashlib", "curl", "curl2", "plugin", "openssl2", "skopeo"):
        if name not in rate:
            continue
        kind, label = labels[name]
        wall = f"{m[name]:.2f} s" if name != "hashlib" else "-"
        ratio = "-" if name == "plugin" else f"{plugin_rate / rate[name]:.2f}x"
        table.append(f"| {label} | {wall} | {rate[name] / MB:,.0f} | {ratio} |")
        rows.append((label, rate[name] / MB, kind))
    steady = unique / max(1e-3, m["plugin"] - m["tiny"])
    table.append(f"| plugin, start-up excluded (wall minus the tiny-image run) | {m['plugin'] - m['tiny']:.2f} s | "
                 f"{steady / MB:,.0f} | {steady / rate['curl']:.2f}x of curl |")
    table.append(f"| CPU (user+sys) per GB: plugin / curl | | {m['plugin_cpu'] / unique * 1e9:.2f} s / "
                 f"{m['curl_cpu'] / unique * 1e9:.2f} s | |")
    scaling_rows = [
        (f"{len(refs8)} images, {unique / MB:.0f} MB unique", m["plugin"], "plugin"),
        (f"{len(refs16)} images, same blobs", m["plugin16"], "plugin"),
        (f"{len(refs32)} images, same blobs", m["plugin32"], "plugin"),
        (f"8 images, {sets['half']['bytes'] / MB:.0f} MB unique", m["half"], "plugin"),
        (f"8 images, {sets['double']['bytes'] / MB:.0f} MB unique", m["double"], "plugin"),
    ]
    table += ["", "| plugin run | wall time | ratio |", "| --- | ---: | ---: |"]
    table.append(f"| {scaling_rows[0][0]} | {m['plugin']:.2f} s | 1.00 |")
    table.append(f"| {scaling_rows[1][0]} | {m['plugin16']:.2f} s | {m['plugin16'] / m['plugin']:.2f} |")
    table.append(f"| {scaling_rows[2][0]} | {m['plugin32']:.2f} s | {m['plugin32'] / m['plugin']:.2f} |")
    table.append(f"| {scaling_rows[3][0]} | {m['half']:.2f} s | {m['half'] / m['plugin']:.2f} |")
    table.append(f"| {scaling_rows[4][0]} | {m['double']:.2f} s | {m['double'] / m['plugin']:.2f} |")
    big_bytes = sets["big"]["bytes"]
    table.append(f"| one 1 GiB blob | {m['big']:.2f} s | {big_bytes / m['big'] / MB:,.0f} MB/s, "
                 f"peak RSS {m['big_rss'] / MB:.1f} MB |")
    table.append(f"| `--version` | {m['version'] * 1000:.0f} ms | |")
    table.append(f"| one tiny image | {m['tiny'] * 1000:.0f} ms | |")
    table.append(f"| peak RSS, perf set | | {m['rss8'] / MB:.1f} MB |")

    targets = [
        ("plugin >= 0.8x bare transfer (curl sequential)", plugin_rate / rate["curl"] >= TARGET_BARE,
         f"{plugin_rate / rate['curl']:.2f}x"),
        ("doubling images over shared layers adds < 15% time", m["plugin16"] / m["plugin"] < TARGET_DOUBLE_IMAGES,
         f"{(m['plugin16'] / m['plugin'] - 1) * 100:+.1f}%"),
        ("peak RSS < 100 MB with a 1 GiB blob", max(samples["big_rss"]) < TARGET_RSS,
         f"{max(samples['big_rss']) / MB:.1f} MB (max of {reps})"),
        ("--version < 250 ms", m["version"] < TARGET_VERSION, f"{m['version'] * 1000:.0f} ms"),
    ]
    if "skopeo" in rate:
        targets.insert(1, ("plugin >= 15x skopeo", plugin_rate / rate["skopeo"] >= TARGET_SKOPEO,
                           f"{plugin_rate / rate['skopeo']:.1f}x"))
    table += ["", "| target | measured | |", "| --- | ---: | --- |"]
    table += [f"| {name} | {value} | {'PASS' if ok else 'FAIL'} |" for name, ok, value in targets]
    machine = (f"{os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()} (bench), "
               f"{time.strftime('%Y-%m-%d')}")
    text = "\n".join(table) + f"\n\n{machine}\n"
    print()
    print(text)
    (OUT / "table.md").write_text(text)
    (OUT / "results.json").write_text(json.dumps({"samples": samples, "medians": m, "unique_bytes": unique,
                                                  "machine": machine, "plugin_args": extra,
                                                  "targets": [(n, ok, v) for n, ok, v in targets]}, indent=1))
    (OUT / "chart.svg").write_text(svg_chart(rows, scaling_rows, f"check_registry_deep on {len(refs8)} images, "
                                                                 f"{unique / MB:.0f} MB unique, loopback ({machine})"))
    print(f"wrote {OUT / 'table.md'}, {OUT / 'results.json'}, {OUT / 'chart.svg'}")
    return 0 if all(ok for _, ok, _ in targets) else 1


if __name__ == "__main__":
    sys.exit(main())
