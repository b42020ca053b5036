"""nagiosplugin's side: thin adapters that hand the scan to nagiosplugin and take states from judge.py and text
from wording.py.

nagiosplugin evaluates the metrics into states and formats perfdata; the text is rendered by wording.py,
because nagiosplugin's own runtime prints no long output at verbosity 0 and moves perfdata off line 1 above it,
while an on-call SRE needs the broken blobs in the notification itself.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable, Iterator, List, Optional

import nagiosplugin

from .judge import Judgement, judge, judge_empty, verified_artifacts
from .model import ScanResult
from .states import CRITICAL, EXIT_CODES, NAME, OK, UNKNOWN, WARNING, Rendered, plain, worst
from .wording import empty_text, fit, long_output, ok_summary, problem_summary

NAGIOS_STATES = {OK: nagiosplugin.Ok, WARNING: nagiosplugin.Warn, CRITICAL: nagiosplugin.Critical,
                 UNKNOWN: nagiosplugin.Unknown}


class RegistryScan(nagiosplugin.Resource):
    """Runs the scan once and turns it into metrics: counters for perfdata, one metric per problem."""

    name = NAME

    def __init__(self, scan: Callable[[], ScanResult]):
        self._scan = scan
        self.result: ScanResult

    def probe(self) -> Iterator[nagiosplugin.Metric]:
        self.result = result = self._scan()
        verified = result.verified_blobs
        failed = len(result.run_problems) + sum(1 for f in result.problems if f.error is not None)
        yield nagiosplugin.Metric("images", len(result.images), min=0, context="count")
        yield nagiosplugin.Metric("blobs", len(verified), min=0, context="count")
        yield nagiosplugin.Metric("bytes", sum(c.bytes_read for c in verified), "B", min=0, context="count")
        yield nagiosplugin.Metric("failed", failed, min=0, context="count")
        yield nagiosplugin.Metric("retries", result.retries, min=0, context="count")
        yield nagiosplugin.Metric("time", round(result.elapsed, 3), "s", min=0, context="time")
        if result.freshness is not None:
            yield nagiosplugin.Metric("unverified", result.freshness.never_verified, min=0, context="count")
        if result.oldest_verification is not None:
            yield nagiosplugin.Metric("oldest", round(result.oldest_verification), "s", min=0, context="oldest")
        if result.attachments:
            yield nagiosplugin.Metric("artifacts", len(verified_artifacts(result)), min=0, context="count")
        for i, item in enumerate(Judgement(result).listed):
            yield nagiosplugin.Metric(f"finding{i}", item, context="finding")
        for i, empty in enumerate(result.empty):
            yield nagiosplugin.Metric(f"empty{i}", empty, context="empty")


class FindingContext(nagiosplugin.Context):
    """Each finding and run problem, the deadline included, judged by `judge` (the text is wording.py's, from
    the ScanSummary: the hint only names the item)."""

    def __init__(self, timeout_state: str):
        super().__init__("finding")
        self.timeout_state = timeout_state

    def evaluate(self, metric: nagiosplugin.Metric, resource: nagiosplugin.Resource) -> nagiosplugin.Result:
        return self.result_cls(NAGIOS_STATES[judge(metric.value, self.timeout_state)], metric.value.label, metric)


class EmptyContext(nagiosplugin.Context):
    """Each selection that matched nothing, judged by `judge_empty`."""

    def __init__(self, allow_empty: bool):
        super().__init__("empty")
        self.allow_empty = allow_empty

    def evaluate(self, metric: nagiosplugin.Metric, resource: nagiosplugin.Resource) -> nagiosplugin.Result:
        return self.result_cls(NAGIOS_STATES[judge_empty(self.allow_empty)], empty_text(metric.value), metric)


class ScanSummary(nagiosplugin.Summary):
    """Line 1 and the long output, worded from the judged scan; only the wall time's and the oldest
    verification's states come from the results (nagiosplugin's ScalarContexts judge -w/-c and --max-age)."""

    def __init__(self, scan: RegistryScan, time: nagiosplugin.ScalarContext, timeout_state: str, verbose: int = 0,
                 oldest: Optional[nagiosplugin.ScalarContext] = None, max_age: Optional[float] = None,
                 allow_empty: bool = False):
        self.scan = scan
        self.allow_empty = allow_empty
        self.time = time
        self.timeout_state = timeout_state
        self.verbose_level = verbose
        self.oldest = oldest
        self.max_age = max_age

    def _judgement(self) -> Judgement:
        return Judgement(self.scan.result, self.timeout_state, self.allow_empty)

    @staticmethod
    def worst(results: nagiosplugin.Results) -> str:
        return worst(r.state.text for r in results)

    def _slow(self, results: nagiosplugin.Results) -> Optional[str]:
        """The -w/-c range the run's wall time violates, if it does."""
        slow = [r for r in results if r.context is self.time and r.state != nagiosplugin.Ok]
        return str(slow[0].hint) if slow else None

    def _overdue(self, results: nagiosplugin.Results) -> Optional[float]:
        """--max-age, when the oldest verification is older."""
        late = [r for r in results if r.context is self.oldest and r.state != nagiosplugin.Ok]
        return self.max_age if late else None

    def ok(self, results: nagiosplugin.Results) -> str:
        return ok_summary(self._judgement())

    def problem(self, results: nagiosplugin.Results) -> str:
        return problem_summary(self._judgement(), self.worst(results), self._slow(results), self._overdue(results))

    def verbose(self, results: nagiosplugin.Results) -> List[str]:
        return long_output(self._judgement(), self.verbose_level)


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
                timeout_state: str = UNKNOWN, verbose: int = 0, max_age: Optional[float] = None,
                allow_empty: bool = False) -> RegistryCheck:
    """`max_age` (seconds, --max-age): WARNING when a blob's last deep verification is older (perfdata `oldest`);
    `allow_empty` (--allow-empty): a selection that matches nothing is OK, not UNKNOWN."""
    resource = RegistryScan(scan)
    time = nagiosplugin.ScalarContext("time", warning or None, critical or None)
    oldest = nagiosplugin.ScalarContext("oldest", f"{max_age:g}" if max_age is not None else None)
    return RegistryCheck(resource, nagiosplugin.ScalarContext("count"), time, oldest, FindingContext(timeout_state),
                         EmptyContext(allow_empty),
                         ScanSummary(resource, time, timeout_state, verbose, oldest, max_age, allow_empty))


def rendered(check: RegistryCheck) -> Rendered:
    """Line 1 (status, summary, perfdata), then the long output, all under Nagios' 8 KiB."""
    output = Rendered(check.state_word, check.summary_str.strip(), " ".join(check.perfdata))
    lines = [plain(line) for line in (check.verbose_str or [])]
    return replace(output, long_lines=tuple(fit([output.first_line] + lines)[1:]))
