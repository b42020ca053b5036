"""Judging and presenting: a ScanResult becomes Nagios states, a status line, long output and perfdata.

This layer knows the error *types* of errors.py and nothing about HTTP. nagiosplugin evaluates the metrics
into states and formats perfdata; the text is rendered here, because nagiosplugin's own runtime prints no long
output at verbosity 0 and moves perfdata off line 1 above it, while an on-call SRE needs the broken blobs in
the notification itself.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterator, List, Sequence

import nagiosplugin

from .errors import DeadlineExceeded, InternalError, UnsupportedDigest
from .model import SKIPPED, ContentResult, ScanResult, Target

NAME = "REGISTRY_DEEP"
MAX_OUTPUT = 8000  # Nagios cuts plugin output at 8 KiB
MAX_SUMMARY = 200
MAX_LINE = 2000
STATES = {"ok": nagiosplugin.Ok, "warning": nagiosplugin.Warn, "critical": nagiosplugin.Critical,
          "unknown": nagiosplugin.Unknown}


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
            yield nagiosplugin.Metric("deadline", result.interrupted, context="deadline")


class FindingContext(nagiosplugin.Context):
    """Errors are CRITICAL, caveats WARNING; what we cannot judge (unsupported digests, our bugs) UNKNOWN."""

    def __init__(self, timeout_state: nagiosplugin.state.ServiceState):
        super().__init__("finding")
        self.timeout_state = timeout_state

    def evaluate(self, metric: nagiosplugin.Metric, resource: nagiosplugin.Resource) -> nagiosplugin.Result:
        return self.result_cls(judge(metric.value, self.timeout_state), describe(metric.value), metric)


def judge(finding: ContentResult, timeout_state: nagiosplugin.state.ServiceState = nagiosplugin.Unknown
          ) -> nagiosplugin.state.ServiceState:
    if finding.error is None:
        return nagiosplugin.Warn if finding.caveats else nagiosplugin.Ok
    if isinstance(finding.error, DeadlineExceeded):
        return timeout_state
    if isinstance(finding.error, (UnsupportedDigest, InternalError)):
        return nagiosplugin.Unknown
    return nagiosplugin.Critical


def image_states(scan: ScanResult) -> Dict[Target, nagiosplugin.state.ServiceState]:
    """The worst state among the findings that affect each image (and platform)."""
    states: Dict[Target, nagiosplugin.state.ServiceState] = {}
    for finding in scan.content:
        state = judge(finding)
        for target in finding.affected:
            states[target] = max(states.get(target, nagiosplugin.Ok), state, key=SEVERITY.__getitem__)
    return states


class DeadlineContext(nagiosplugin.Context):
    def __init__(self, timeout_state: nagiosplugin.state.ServiceState):
        super().__init__("deadline")
        self.timeout_state = timeout_state

    def evaluate(self, metric: nagiosplugin.Metric, resource: nagiosplugin.Resource) -> nagiosplugin.Result:
        return self.result_cls(self.timeout_state, str(metric.value), metric)


def describe(finding: ContentResult) -> str:
    """One finding, as the long output shows it: what, what is wrong (expected vs. got), what it breaks."""
    reason = str(finding.error) if finding.error is not None else "; ".join(finding.caveats + finding.notes)
    if finding.kind in ("registry", "internal"):
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
    return text


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
        foreign = sum(1 for c in scan.content if c.mode == SKIPPED)
        if foreign:
            text += f", {foreign} foreign layer{'s' if foreign != 1 else ''} skipped"
        return "; ".join((text,) + scan.notes)

    @staticmethod
    def worst(results: nagiosplugin.Results) -> nagiosplugin.state.ServiceState:
        return max((r.state for r in results), key=SEVERITY.__getitem__, default=nagiosplugin.Ok)

    def ok(self, results: nagiosplugin.Results) -> str:
        scan = self._scan(results)
        if scan.interrupted is not None:  # -t N:ok: still say the run was cut short, and where
            return _cut(str(scan.interrupted), MAX_SUMMARY)
        return self._totals(scan)

    def problem(self, results: nagiosplugin.Results) -> str:
        scan = self._scan(results)
        parts = []
        deadline = [r for r in results if r.metric and r.metric.name == "deadline"]
        findings = [r for r in results if r.metric and r.metric.context == "finding" and r.state != nagiosplugin.Ok]
        broken = [r for r in findings if r.metric.value.error is not None]
        warned = [r for r in findings if r.metric.value.error is None]
        if broken:
            images = _images([t for r in broken for t in r.metric.value.affected])
            first = broken[0].metric.value
            noun = "problem" if any(r.metric.value.kind in ("registry", "internal") for r in broken) else "broken"
            head = f"{len(broken)} {noun}" if noun == "problem" else \
                f"{len(broken)} broken {'blob' if len(broken) == 1 else 'blobs'}"
            if images:
                head += f", breaking {len(images)} of {len(scan.images)} image{'s' if len(scan.images) != 1 else ''}"
            parts.append(f"{head}: {_short(first)}")
        if deadline:
            full = str(deadline[0].hint)
            stage = full.split(" (")[0]  # what was in flight is in the long output too
            fits = len("; ".join(parts + [full])) <= MAX_SUMMARY
            parts.insert(0 if deadline[0].state == self.worst(results) else len(parts), full if fits else stage)
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
        findings = sorted((r for r in results if r.metric and r.metric.context in ("finding", "deadline")),
                          key=lambda r: -SEVERITY[r.state])
        lines = [f"{str(r.state).upper()}: {r.hint}" for r in findings]
        lines += [f"note: {note}" for note in scan.notes]
        lines += [f"note: {describe(c)}" for c in scan.content if c.notes]
        if self.verbose_level >= 1:
            lines += self._image_lines(scan)
        return lines

    @staticmethod
    def _image_lines(scan: ScanResult) -> List[str]:
        verdicts = {}
        for finding in scan.content:
            for target in finding.affected:
                if finding.error is not None:
                    verdicts[target] = "BROKEN"
                elif finding.caveats and verdicts.get(target) != "BROKEN":
                    verdicts[target] = "WARNING"
        sizes = {c.subject: c.size or 0 for c in scan.content}
        lines = []
        for result in scan.targets:
            total = sum(sizes.get(str(d.digest), d.size or 0) for d in result.blobs)
            lines.append(f"image {result.target}: manifest {result.manifest_digest.short()}…, "
                         f"{len(result.blobs)} blobs, {human_bytes(total)}"
                         f"{' (artifact)' if result.artifact else ''}: {verdicts.get(result.target, 'OK')}")
        return lines


#: Nagios' "worst state": CRITICAL over WARNING over UNKNOWN over OK (as monitoring-plugins' max_state_alt),
#: so a timeout (UNKNOWN by default) never hides a broken blob found before it.
SEVERITY = {nagiosplugin.Ok: 0, nagiosplugin.Unknown: 1, nagiosplugin.Warn: 2, nagiosplugin.Critical: 3}


class RegistryCheck(nagiosplugin.Check):
    @property
    def state(self) -> nagiosplugin.state.ServiceState:
        return ScanSummary.worst(self.results)

    @property
    def exitcode(self) -> int:
        return int(self.state.code)


def build_check(scan: Callable[[], ScanResult], *, warning: str = "", critical: str = "",
                timeout_state: str = "unknown", verbose: int = 0) -> nagiosplugin.Check:
    state = STATES[timeout_state]
    return RegistryCheck(
        RegistryScan(scan),
        nagiosplugin.ScalarContext("count"),
        nagiosplugin.ScalarContext("time", warning or None, critical or None),
        FindingContext(state),
        DeadlineContext(state),
        ScanSummary(verbose))


def _short(finding: ContentResult) -> str:
    reason = str(finding.error) if finding.error is not None else "; ".join(finding.caveats)
    if finding.kind in ("registry", "internal"):
        return _cut(reason, 120)
    subject = finding.subject
    if ":" in subject and len(subject) > 30 and "/" not in subject:
        subject = subject[: subject.index(":") + 13] + "…"
    return f"{finding.kind} {subject} {_cut(reason, 64)}"


def render(check: nagiosplugin.Check) -> str:
    """Line 1 (status, summary, perfdata), then the long output, all under Nagios' 8 KiB."""
    summary = _plain(check.summary_str.strip())
    status = f"{NAME} {str(check.state).upper()}" + (f" - {summary}" if summary else "")
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
