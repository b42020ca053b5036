"""nagiosplugin's side: thin adapters that hand the scan to nagiosplugin and take states from judge.py and text
from wording.py.

nagiosplugin evaluates the metrics into states and formats perfdata; the text is rendered by wording.py,
because nagiosplugin's own runtime prints no long output at verbosity 0 and moves perfdata off line 1 above it,
while an on-call SRE needs the broken blobs in the notification itself.
"""

from __future__ import annotations

from typing import Callable, Iterator, List, Optional

import nagiosplugin

from .judge import Judgement, judge
from .model import ScanResult
from .states import CRITICAL, EXIT_CODES, NAME, OK, UNKNOWN, WARNING, plain, status_line, worst
from .wording import fit, long_output, ok_summary, problem_summary

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
        if result.oldest_verification is not None:
            yield nagiosplugin.Metric("oldest", round(result.oldest_verification), "s", min=0, context="count")
        for i, item in enumerate(Judgement(result).listed):
            yield nagiosplugin.Metric(f"finding{i}", item, context="finding")


class FindingContext(nagiosplugin.Context):
    """Each finding and run problem, the deadline included, judged by `judge` (the text is wording.py's, from
    the ScanSummary: the hint only names the item)."""

    def __init__(self, timeout_state: str):
        super().__init__("finding")
        self.timeout_state = timeout_state

    def evaluate(self, metric: nagiosplugin.Metric, resource: nagiosplugin.Resource) -> nagiosplugin.Result:
        return self.result_cls(NAGIOS_STATES[judge(metric.value, self.timeout_state)], metric.value.label, metric)


class ScanSummary(nagiosplugin.Summary):
    """Line 1 and the long output, worded from the judged scan; only the wall time's state comes from the
    results (nagiosplugin's ScalarContext judges -w/-c)."""

    def __init__(self, scan: RegistryScan, time: nagiosplugin.ScalarContext, timeout_state: str, verbose: int = 0):
        self.scan = scan
        self.time = time
        self.timeout_state = timeout_state
        self.verbose_level = verbose

    def _judgement(self) -> Judgement:
        return Judgement(self.scan.result, self.timeout_state)

    @staticmethod
    def worst(results: nagiosplugin.Results) -> str:
        return worst(r.state.text for r in results)

    def _slow(self, results: nagiosplugin.Results) -> Optional[str]:
        """The -w/-c range the run's wall time violates, if it does."""
        slow = [r for r in results if r.context is self.time and r.state != nagiosplugin.Ok]
        return str(slow[0].hint) if slow else None

    def ok(self, results: nagiosplugin.Results) -> str:
        return ok_summary(self._judgement())

    def problem(self, results: nagiosplugin.Results) -> str:
        return problem_summary(self._judgement(), self.worst(results), self._slow(results))

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
                timeout_state: str = UNKNOWN, verbose: int = 0) -> RegistryCheck:
    resource = RegistryScan(scan)
    time = nagiosplugin.ScalarContext("time", warning or None, critical or None)
    return RegistryCheck(resource, nagiosplugin.ScalarContext("count"), time, FindingContext(timeout_state),
                         ScanSummary(resource, time, timeout_state, verbose))


def render(check: RegistryCheck) -> str:
    """Line 1 (status, summary, perfdata), then the long output, all under Nagios' 8 KiB."""
    status = status_line(check.state_word, check.summary_str.strip())
    perfdata = " ".join(check.perfdata)
    first = status + (f" | {perfdata}" if perfdata else "")
    lines = [plain(line) for line in (check.verbose_str or [])]
    return fit([first] + lines)
