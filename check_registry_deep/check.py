"""Judging and presenting: a ScanResult becomes Nagios states, a status line, long output and perfdata.

This layer knows the error *types* of errors.py and nothing about HTTP. `judge` is the only place that maps a
finding to a state (the timeout included); the long output's lines, the per-image verdicts of `-v`, the table
and the JSON all derive from it. nagiosplugin evaluates the metrics into states and formats perfdata; the text
is rendered here, because nagiosplugin's own runtime prints no long output at verbosity 0 and moves perfdata
off line 1 above it, while an on-call SRE needs the broken blobs in the notification itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import nagiosplugin

from .errors import IntegrityError, ManifestInvalid, NotFound
from .model import Finding, Kind, Mode, OriginCheck, ScanResult, Target, TargetResult
from .states import CRITICAL, EXIT_CODES, NAME, OK, SEVERITY, UNKNOWN, WARNING, status_line, worst

MAX_OUTPUT = 8000  # Nagios cuts plugin output at 8 KiB
MAX_SUMMARY = 200
MAX_LINE = 2000
NAGIOS_STATES = {OK: nagiosplugin.Ok, WARNING: nagiosplugin.Warn, CRITICAL: nagiosplugin.Critical,
                 UNKNOWN: nagiosplugin.Unknown}
#: How a `-v` line words an image's state.
IMAGE_WORDS = {OK: "OK", WARNING: "WARNING", CRITICAL: "BROKEN", UNKNOWN: "UNKNOWN"}


def human_bytes(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1000
    return f"{count:.1f} TB"  # pragma: no cover


def _plain(text: str) -> str:
    """Nagios reads `|` as the start of perfdata and a newline as the end of line 1."""
    return text.replace("|", "/").replace("\n", " ")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def judge(finding: Finding, timeout_state: str = UNKNOWN) -> str:
    """The state a finding leads to: its error's (the -t state for the deadline), WARNING for caveats, else OK."""
    if finding.error is not None:
        return timeout_state if finding.error.state is None else finding.error.state
    return WARNING if finding.caveats else OK


@dataclass(frozen=True)
class ImageVerdict:
    """One image (and platform): the worst state of the findings that affect it."""

    target: Target
    resolved: Optional[TargetResult]  # None: its manifest could not be resolved
    state: str
    bytes: int
    seconds: float  # into the run, when its last finding came in


def image_verdicts(scan: ScanResult) -> List[ImageVerdict]:
    """Every resolved image and platform, then every one that did not resolve (a tag gone, an index child
    missing, the registry down): the one per-image verdict that -v lines, the table and JSON show."""
    states: Dict[Target, str] = {}
    finished: Dict[Target, float] = {}
    for finding in scan.findings:
        for target in finding.affected:
            states[target] = worst((states.get(target, OK), judge(finding)))
            finished[target] = max(finished.get(target, 0.0), finding.finished)
    sizes = {f.subject: f.size or 0 for f in scan.findings}
    verdicts = [ImageVerdict(r.target, r, states.get(r.target, OK),
                             sum(sizes.get(str(d.digest), d.size or 0) for d in r.blobs), finished.get(r.target, 0.0))
                for r in scan.targets]
    resolved = {r.target for r in scan.targets}
    verdicts += [ImageVerdict(target, None, state, 0, finished[target])
                 for target, state in states.items() if target not in resolved]
    return verdicts


def image_problems(scan: ScanResult) -> Dict[Target, str]:
    """What breaks each broken image and platform, worded as line 1 words a finding: the first of its CRITICAL
    findings (by kind and subject, so that a run's worker order does not change it) and how many more."""
    broken: Dict[Target, List[Finding]] = {}
    for finding in sorted(scan.findings, key=lambda f: (str(f.kind), f.subject)):
        if judge(finding) == CRITICAL:
            for target in finding.affected:
                broken.setdefault(target, []).append(finding)
    return {target: _short(found[0]) + (f" and {len(found) - 1} more" if len(found) > 1 else "")
            for target, found in broken.items()}


def _images(targets: Sequence[Target]) -> List[str]:
    return list(dict.fromkeys(str(t.image) for t in targets))


class RegistryScan(nagiosplugin.Resource):
    """Runs the scan once and turns it into metrics: counters for perfdata, one metric per finding."""

    name = NAME

    def __init__(self, scan: Callable[[], ScanResult]):
        self._scan = scan
        self.result: ScanResult

    def probe(self) -> Iterator[nagiosplugin.Metric]:
        self.result = result = self._scan()
        verified = result.verified_blobs
        failed = [c for c in result.problems if c.error is not None]
        yield nagiosplugin.Metric("images", len(result.images), min=0, context="count")
        yield nagiosplugin.Metric("blobs", len(verified), min=0, context="count")
        yield nagiosplugin.Metric("bytes", sum(c.bytes_read for c in verified), "B", min=0, context="count")
        yield nagiosplugin.Metric("failed", len(failed), min=0, context="count")
        yield nagiosplugin.Metric("retries", result.retries, min=0, context="count")
        yield nagiosplugin.Metric("time", round(result.elapsed, 3), "s", min=0, context="time")
        if result.oldest_verification is not None:
            yield nagiosplugin.Metric("oldest", round(result.oldest_verification), "s", min=0, context="count")
        for i, finding in enumerate(result.problems):
            yield nagiosplugin.Metric(f"finding{i}", finding, context="finding")
        if result.interrupted is not None:
            deadline = Finding(str(result.interrupted), Kind.DEADLINE, (), error=result.interrupted)
            yield nagiosplugin.Metric("deadline", deadline, context="finding")


class FindingContext(nagiosplugin.Context):
    """Each finding, the deadline included, judged by `judge`."""

    def __init__(self, timeout_state: str):
        super().__init__("finding")
        self.timeout_state = timeout_state

    def evaluate(self, metric: nagiosplugin.Metric, resource: nagiosplugin.Resource) -> nagiosplugin.Result:
        return self.result_cls(NAGIOS_STATES[judge(metric.value, self.timeout_state)], describe(metric.value), metric)


def describe(finding: Finding) -> str:
    """One finding, as the long output shows it: what, what is wrong (expected vs. got), what it breaks."""
    reason = str(finding.error) if finding.error is not None else "; ".join(finding.caveats + finding.notes)
    if not finding.kind.about_content:
        return reason
    text = f"{finding.kind} {finding.subject}: {reason}"
    images = sorted({str(t) for t in finding.affected})
    if images:
        shown: List[str] = []
        for image in images:
            if len(text) + sum(len(s) + 2 for s in shown) + len(image) > MAX_LINE:
                break
            shown.append(image)
        more = len(images) - len(shown)
        verb = "breaks" if finding.error is not None else "affects" if finding.caveats else "in"
        text += f" - {verb} " + ", ".join(shown) + (f" … and {more} more" if more else "")
    if finding.origin is not None and finding.error is not None:
        text += f"; {origin_verdict(finding.origin)}"
    return text


#: What the origin's own failure says about the storage: it served the content wrong, or does not have it.
BROKEN_AT_ORIGIN = (IntegrityError, NotFound, ManifestInvalid)


def origin_verdict(origin: OriginCheck) -> str:
    """With --origin, the end of a failure's line: is the storage broken, or only the cache in front of it?
    Either way the finding stays CRITICAL (pulls through the cache fail)."""
    where = f"origin {origin.address}"
    if origin.skipped:
        return f"{where}: not verified ({origin.skipped})"
    if origin.error is None:
        return f"{where}: intact (the cache in front serves bad bytes)"
    if isinstance(origin.error, BROKEN_AT_ORIGIN):
        return f"{where}: also broken"
    return f"{where}: not verified ({origin.error})"


def cache_only(finding: Finding) -> Optional[str]:
    """The origin's address when it does not have this failure (only the cache in front serves it), else None."""
    origin = finding.origin
    return origin.address if origin is not None and not origin.skipped and origin.error is None else None


class ScanSummary(nagiosplugin.Summary):
    def __init__(self, verbose: int = 0):
        self.verbose_level = verbose

    @staticmethod
    def _scan(results: nagiosplugin.Results) -> ScanResult:
        return results["images"].resource.result

    def _totals(self, scan: ScanResult) -> str:
        verified = scan.verified_blobs
        text = (f"{len(scan.images)} image{'s' if len(scan.images) != 1 else ''}, {len(verified)} "
                f"blob{'s' if len(verified) != 1 else ''}, {human_bytes(sum(c.bytes_read for c in verified))} "
                f"verified in {scan.elapsed:.1f}s")
        present = len(scan.present_blobs)
        if present:
            text += f", {present} more present (deep check rotated)"
        foreign = sum(1 for f in scan.findings if f.mode == Mode.SKIPPED)
        if foreign:
            text += f", {foreign} foreign layer{'s' if foreign != 1 else ''} skipped"
        return "; ".join((text,) + scan.notes)

    @staticmethod
    def worst(results: nagiosplugin.Results) -> str:
        return worst(r.state.text for r in results)

    def ok(self, results: nagiosplugin.Results) -> str:
        scan = self._scan(results)
        if scan.interrupted is not None:  # -t N:ok: still say the run was cut short, and where
            return _cut(str(scan.interrupted), MAX_SUMMARY)
        return self._totals(scan)

    def problem(self, results: nagiosplugin.Results) -> str:
        scan = self._scan(results)
        parts = []
        deadline = [r for r in results if r.metric and r.metric.name == "deadline"]
        findings = [r for r in results if r.metric and r.metric.context == "finding" and r.state != nagiosplugin.Ok
                    and r.metric.name != "deadline"]
        broken = [r for r in findings if r.metric.value.error is not None]
        warned = [r for r in findings if r.metric.value.error is None]
        if broken:
            images = _images([t for r in broken for t in r.metric.value.affected])
            first = broken[0].metric.value
            head = _broken_head([r.metric.value for r in broken])
            if images:
                head += f", breaking {len(images)} of {len(scan.images)} image{'s' if len(scan.images) != 1 else ''}"
            origins = [cache_only(r.metric.value) for r in broken]
            if all(origins):
                head += f", all cache-only (origin {origins[0]} intact)"
            parts.append(f"{head}: {_short(first)}")
        if deadline:
            full = str(deadline[0].hint)
            stage = full.split(" (")[0]  # what was in flight is in the long output too
            fits = len("; ".join(parts + [full])) <= MAX_SUMMARY
            parts.insert(0 if deadline[0].state.text == self.worst(results) else len(parts), full if fits else stage)
        if warned:
            parts.append(f"{len(warned)} warning{'s' if len(warned) != 1 else ''}: {_short(warned[0].metric.value)}")
        slow = [r for r in results if r.metric and r.metric.name == "time" and r.state != nagiosplugin.Ok]
        if slow:
            parts.append(f"run took {scan.elapsed:.1f}s ({slow[0].hint})")
        if not broken and not deadline:
            parts.append(self._totals(scan))
        return _cut("; ".join(parts), MAX_SUMMARY)

    def verbose(self, results: nagiosplugin.Results) -> List[str]:
        scan = self._scan(results)
        findings = sorted((r for r in results if r.metric and r.metric.context == "finding"),
                          key=lambda r: -SEVERITY[r.state.text])
        lines = [f"{str(r.state).upper()}: {r.hint}" for r in findings]
        lines += [f"note: {note}" for note in scan.notes]
        lines += [f"note: {describe(f)}" for f in scan.findings if f.notes]
        if self.verbose_level >= 1:
            lines += self._image_lines(scan)
        return lines

    @staticmethod
    def _image_lines(scan: ScanResult) -> List[str]:
        """A line per image and platform, in the order of their names (not the order their manifests came in)."""
        lines = []
        for verdict in sorted(image_verdicts(scan), key=lambda v: (str(v.target.image), str(v.target.platform or ""))):
            word, result = IMAGE_WORDS[verdict.state], verdict.resolved
            if result is None:
                lines.append(f"image {verdict.target}: not resolved: {word}")
                continue
            lines.append(f"image {result.target}: manifest {result.manifest_digest.short()}…, "
                         f"{len(result.blobs)} blobs, {human_bytes(verdict.bytes)}"
                         f"{' (artifact)' if result.artifact else ''}: {word}")
        return lines


def _broken_head(broken: Sequence[Finding]) -> str:
    """`2 broken blobs`, `1 broken manifest`, `1 broken blob and 1 broken manifest`; `N problem` when the
    registry itself or our own code failed."""
    if any(not f.kind.about_content for f in broken):
        return f"{len(broken)} problem"
    blobs = sum(1 for f in broken if f.kind.blob)
    counts = ((blobs, "blob"), (len(broken) - blobs, "manifest"))
    return " and ".join(f"{n} broken {noun}{'s' if n != 1 else ''}" for n, noun in counts if n)


class RegistryCheck(nagiosplugin.Check):
    """nagiosplugin's Check with our order of states (CRITICAL over WARNING over UNKNOWN) and exit codes."""

    @property
    def state_word(self) -> str:
        return ScanSummary.worst(self.results)

    @property
    def state(self) -> nagiosplugin.state.ServiceState:
        return NAGIOS_STATES[self.state_word]

    @property
    def exitcode(self) -> int:
        return EXIT_CODES[self.state_word]


def build_check(scan: Callable[[], ScanResult], *, warning: str = "", critical: str = "",
                timeout_state: str = UNKNOWN, verbose: int = 0) -> RegistryCheck:
    return RegistryCheck(
        RegistryScan(scan),
        nagiosplugin.ScalarContext("count"),
        nagiosplugin.ScalarContext("time", warning or None, critical or None),
        FindingContext(timeout_state),
        ScanSummary(verbose))


def _short(finding: Finding) -> str:
    reason = str(finding.error) if finding.error is not None else "; ".join(finding.caveats)
    if not finding.kind.about_content:
        return _cut(reason, 120)
    subject = finding.subject
    if ":" in subject and len(subject) > 30 and "/" not in subject:
        subject = subject[: subject.index(":") + 13] + "…"
    return f"{finding.kind} {subject} {_cut(reason, 64)}"


def render(check: RegistryCheck) -> str:
    """Line 1 (status, summary, perfdata), then the long output, all under Nagios' 8 KiB."""
    status = status_line(check.state_word, _plain(check.summary_str.strip()))
    perfdata = " ".join(check.perfdata)
    first = status + (f" | {perfdata}" if perfdata else "")
    lines = [_plain(line) for line in (check.verbose_str or [])]
    return fit([first] + lines)


def fit(lines: List[str], limit: int = MAX_OUTPUT) -> str:
    """Join lines, cutting the long output with `… and N more` so the whole stays under `limit` bytes."""
    out = [lines[0]]
    size = len(lines[0].encode()) + 1
    for i, line in enumerate(lines[1:], start=1):
        more = len(lines) - i
        tail = f"… and {more} more"
        if size + len(line.encode()) + 1 + len(tail.encode()) + 1 > limit and more > 0:
            out.append(tail)
            break
        out.append(line)
        size += len(line.encode()) + 1
    return "\n".join(out) + "\n"
