"""A run as Prometheus metrics, for node_exporter's textfile collector: the same run feeds Icinga and an SLI.

Presentation only: it is handed the run's exit code, counts and per-image verdicts (`RunMetrics`) and judges
nothing; `publish` is the one call of every path out of a run (app.py after a check; cli.py after a usage error,
an internal error, and from the watchdog). prometheus_client writes the exposition format and escapes the label
values; it costs some 50 ms to import, so it is imported only when --metrics-file is given (`load`), never by a
plain run or --version.

Every series carries `check`, the file's name without `.prom`: node_exporter merges all files of its directory,
and two runs (one per datacenter, say) writing the same series into two files would lose one of them silently.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

from .atomic import with_problem, write_file
from .states import Rendered

LAST_SUCCESS = "registry_deep_last_success_timestamp_seconds"
#: node_exporter runs as another user (prometheus on Debian): the file must be readable by it.
FILE_MODE = 0o644


@dataclass(frozen=True)
class ImageSample:
    """One image (and platform) given with -i/-f, as the Nagios output writes it, and whether it can be pulled."""

    registry: str
    image: str
    platform: str
    ok: bool
    problem: str = ""  # when broken: what breaks it, as line 1 words a finding
    signed: Optional[bool] = None  # with a signature required (--require-signature, --cosign-key)


@dataclass(frozen=True)
class Counts:
    """What the run saw; absent after a usage error, when nothing was looked at."""

    images: int
    discovered_images: int
    broken_blobs: int
    verified_blobs: int
    verified_bytes: int
    retries: int
    oldest_verification_age: Optional[float] = None  # with --state-file
    verified_artifacts: Optional[int] = None  # with --referrers or a signature required


@dataclass(frozen=True)
class RunMetrics:
    state: int  # the exit code: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN
    duration: float  # seconds, start-up included
    finished: float  # Unix time
    images: Tuple[ImageSample, ...] = ()
    counts: Optional[Counts] = None


def check_label(path: str) -> str:
    name = os.path.basename(path)
    return name[: -len(".prom")] if name.endswith(".prom") else name


def load() -> None:
    """Import prometheus_client now: the watchdog may have to write the file while the main thread holds an
    import lock."""
    import prometheus_client
    import prometheus_client.parser  # noqa: F401


def previous_success(path: str) -> Optional[float]:
    """The last fully OK run's time, from the file an earlier run wrote (None if there is none to read)."""
    from prometheus_client.parser import text_string_to_metric_families
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == LAST_SUCCESS and sample.labels.get("check") == check_label(path):
                    return float(sample.value)
    except (OSError, ValueError):  # none yet, or not ours: the history starts again
        return None
    return None


def exposition(run: RunMetrics, check: str, last_success: Optional[float]) -> bytes:
    from prometheus_client import CollectorRegistry, Gauge, generate_latest
    registry = CollectorRegistry(auto_describe=False)

    def gauge(name: str, documentation: str, value: Optional[float]) -> None:
        if value is not None:
            Gauge(name, documentation, ["check"], registry=registry).labels(check).set(value)

    gauge("registry_deep_state", "Exit code of the last run: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN", run.state)
    gauge("registry_deep_run_duration_seconds", "Wall time of the last run", run.duration)
    gauge("registry_deep_last_run_timestamp_seconds", "When the last run ended (Unix time)", run.finished)
    gauge(LAST_SUCCESS, "When the last fully OK run ended (Unix time; 0: none yet)",
          run.finished if run.state == 0 else last_success or 0)
    if run.images:
        image_ok = Gauge("registry_deep_image_ok", "1 if the last run found this image (given with -i/-f) intact, "
                         "0 if broken or unreachable; no sample when the run could not judge it",
                         ["check", "registry", "image", "platform"], registry=registry)
        worst: Dict[Tuple[str, str, str], bool] = {}
        problems: Dict[Tuple[str, str, str], str] = {}
        for sample in run.images:  # an image given twice is broken if either row says so
            key = (sample.registry, sample.image, sample.platform)
            worst[key] = worst.get(key, True) and sample.ok
            if sample.problem:
                problems.setdefault(key, sample.problem)
        for (registry_url, image, platform), ok in worst.items():
            image_ok.labels(check, registry_url, image, platform).set(int(ok))
        if problems:
            problem_info = Gauge("registry_deep_image_problem_info", "1 for each image (given with -i/-f) the last "
                                 "run found broken, labelled with what breaks it, as the plugin's line 1 words it",
                                 ["check", "registry", "image", "platform", "problem"], registry=registry)
            for (registry_url, image, platform), problem in problems.items():
                problem_info.labels(check, registry_url, image, platform, problem).set(1)
    signed = [sample for sample in run.images if sample.signed is not None]
    if signed:
        image_signed = Gauge("registry_deep_image_signed", "1 if this image (given with -i/-f) carries a signature "
                             "that passes (--require-signature; with --cosign-key verified and naming its digest), "
                             "else 0", ["check", "registry", "image", "platform"], registry=registry)
        unsigned: Dict[Tuple[str, str, str], bool] = {}
        for sample in signed:
            key = (sample.registry, sample.image, sample.platform)
            unsigned[key] = unsigned.get(key, True) and bool(sample.signed)
        for (registry_url, image, platform), ok in unsigned.items():
            image_signed.labels(check, registry_url, image, platform).set(int(ok))
    counts = run.counts
    if counts is not None:
        gauge("registry_deep_images", "Images checked in the last run, given and discovered", counts.images)
        gauge("registry_deep_discovered_images", "Images found by --repository discovery in the last run "
              "(counted, not labelled)", counts.discovered_images)
        gauge("registry_deep_broken_blobs", "Blobs and manifests found broken (CRITICAL) in the last run",
              counts.broken_blobs)
        gauge("registry_deep_verified_blobs", "Blobs downloaded and verified in the last run", counts.verified_blobs)
        gauge("registry_deep_verified_bytes", "Bytes downloaded and verified in the last run", counts.verified_bytes)
        gauge("registry_deep_retries", "Requests retried in the last run", counts.retries)
        gauge("registry_deep_oldest_verification_age_seconds", "Age of the stalest blob verification in the "
              "--state-file", counts.oldest_verification_age)
        gauge("registry_deep_verified_artifacts", "Attached artifacts (referrers, signatures) whose manifest and "
              "blobs verified in the last run", counts.verified_artifacts)
    return generate_latest(registry)


def write_metrics(path: str, run: RunMetrics) -> Optional[str]:
    """Replace `path` atomically; returns None, or what went wrong as one line for the plugin's output."""
    return write_file("--metrics-file", path, exposition(run, check_label(path), previous_success(path)),
                      mode=FILE_MODE)


def publish(path: Optional[str], output: Rendered, started: float, images: Sequence[ImageSample] = (),
            counts: Optional[Counts] = None, text: bool = True) -> Rendered:
    """Write the run's metrics to `path` (if given). The output stays as it is, unless the file cannot be
    written: then that is one more line (on stderr when the output is JSON), and UNKNOWN if it was OK.
    `started` is the run's time.monotonic() start."""
    if not path:
        return output
    problem = write_metrics(path, RunMetrics(output.exitcode, time.monotonic() - started, time.time(),
                                             tuple(images), counts))
    return with_problem(output, problem, text)
