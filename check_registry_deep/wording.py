"""Wording: the judged run in words. Line 1's summary, the long output's lines, the `-v` image lines, the
origin's verdict, and the limits Nagios puts on all of them.

States come from judge.py; nothing here decides one. nagiosplugin's adapters (check.py), the table and the JSON
(report.py) take their text from here.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

from .errors import RegistryFailing
from .judge import (
    ImageVerdict,
    Judged,
    Judgement,
    artifact_verdicts,
    broken_at_origin,
    cache_only,
    image_verdicts,
    judge,
    owners_of,
)
from .model import EmptySelection, Finding, Kind, Mode, OriginCheck, RunProblem, ScanResult, Selection, Target, Trouble
from .states import CRITICAL, OK, UNKNOWN, WARNING

MAX_OUTPUT = 8000  # Nagios cuts plugin output at 8 KiB
MAX_SUMMARY = 200
MAX_LINE = 2000
#: How a `-v` line words an image's state.
IMAGE_WORDS = {OK: "OK", WARNING: "WARNING", CRITICAL: "BROKEN", UNKNOWN: "UNKNOWN"}


def human_bytes(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1000
    return f"{count:.1f} TB"  # pragma: no cover


def cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' if count != 1 else ''}"


def describe(item: Judged) -> str:
    """One finding or run problem, as the long output shows it: what, what is wrong (expected vs. got), what it
    breaks."""
    if not isinstance(item, Finding):  # a run problem; a failing registry says what it breaks, like content
        text = str(item.error)
        return text + _affected(text, item.affected, "breaks") if isinstance(item.error, RegistryFailing) else text
    reason = str(item.error) if item.error is not None else "; ".join(item.caveats + item.notes)
    if item.kind is Kind.SIGNATURE:  # about an image, not a piece of content: the image first
        return f"image {', '.join(sorted({str(t) for t in item.affected}))}: {reason} (manifest {item.label})"
    text = f"{item.kind} {item.label}: {reason}"
    verb = "breaks" if item.error is not None else "affects" if item.caveats else "in"
    text += _affected(text, item.affected, verb)
    if item.origin is not None and item.error is not None:
        text += f"; {origin_verdict(item.origin)}"
    return text


def _affected(text: str, affected: Sequence[Target], verb: str) -> str:
    """` - breaks A, B … and N more`: the images (and platforms) in sorted order, as many as fit in a line."""
    images = sorted({str(t) for t in affected})
    if images:
        shown: List[str] = []
        for image in images:
            if len(text) + sum(len(s) + 2 for s in shown) + len(image) > MAX_LINE:
                break
            shown.append(image)
        more = len(images) - len(shown)
        return f" - {verb} " + ", ".join(shown) + (f" … and {more} more" if more else "")
    return ""


def origin_verdict(origin: OriginCheck) -> str:
    """With --origin, the end of a failure's line: is the storage broken, or only the cache in front of it?
    Either way the finding stays CRITICAL (pulls through the cache fail)."""
    where = f"origin {origin.address}"
    if origin.skipped:
        return f"{where}: not verified ({origin.skipped})"
    if origin.error is None:
        return f"{where}: intact (the cache in front serves bad bytes)"
    if broken_at_origin(origin):
        return f"{where}: also broken"
    return f"{where}: not verified ({origin.error})"


def short(item: Judged) -> str:
    """A finding or problem in a few words, for line 1: a digest is cut to its first 12 hex digits."""
    if not isinstance(item, Finding):
        return cut(str(item.error), 120)
    reason = str(item.error) if item.error is not None else "; ".join(item.caveats)
    if item.kind is Kind.SIGNATURE:  # about an image, not a piece of content: the image, as the long line names it
        images = sorted({str(t) for t in item.affected})
        return f"image {cut(images[0], 64) if images else item.label}: {cut(reason, 64)}" + (
            f" (and {len(images) - 1} more)" if len(images) > 1 else "")
    label = f"{item.digest.short()}…" if item.digest is not None and not item.replica else item.label
    artifacts = list(dict.fromkeys(t.artifact.what for t in item.affected if t.artifact is not None))
    if artifacts:  # content of an attached artifact: say which kind (an SBOM, a signature)
        label += f" ({artifacts[0]})"
    return f"{item.kind} {label} {cut(reason, 64)}"


def image_problems(scan: ScanResult) -> Dict[Target, str]:
    """What breaks each broken image and platform, worded as line 1 words a finding: the first CRITICAL finding
    or problem that affects it (by kind and label, so that a run's worker order does not change it) and how many
    more."""
    broken: Dict[Target, List[Judged]] = {}
    items: Tuple[Judged, ...] = scan.run_problems + scan.findings
    for item in sorted(items, key=lambda i: (str(i.kind), i.label)):
        if judge(item) == CRITICAL:
            for target in owners_of(scan, item.affected):
                broken.setdefault(target, []).append(item)
    return {target: short(found[0]) + (f" and {len(found) - 1} more" if len(found) > 1 else "")
            for target, found in broken.items()}


def totals(scan: ScanResult) -> str:
    """What a run that found nothing wrong says: the counts, the time, the run's notes."""
    verified = scan.verified_blobs
    text = (f"{_plural(len(scan.images), 'image')}, {_plural(len(verified), 'blob')}, "
            f"{human_bytes(sum(c.bytes_read for c in verified))} verified in {scan.elapsed:.1f}s")
    present = len(scan.present_blobs)
    if present:
        text += f", {present} more present (deep check rotated)"
    foreign = sum(1 for f in scan.findings if f.mode == Mode.SKIPPED)
    if foreign:
        text += f", {_plural(foreign, 'foreign layer')} skipped"
    return "; ".join((text,) + scan.notes)


def empty_text(empty: EmptySelection) -> str:
    """What matched nothing, and where it was looked for."""
    count = len(empty.found)
    repositories = f"{count} {'repository' if count == 1 else 'repositories'}"
    if empty.option is Selection.REPOSITORY:
        return f"--repository {empty.value} matched no repository in the catalog of {empty.where}"
    if empty.option is Selection.TAG_PATTERN:
        return f"--tag-pattern {empty.value!r} matched no tag of the {repositories} under --repository {empty.where}"
    if empty.option is Selection.ALL_TAGS:
        return f"--all-tags found no tag in the {repositories} under --repository {empty.where}"
    return f"--platform {empty.value} matched no child of {empty.where} (it has {', '.join(empty.found)})"


def deadline_text(judgement: Judgement, brief: bool = False) -> str:
    """The deadline, led by how many images it left unfinished: `9 images not checked: deadline of 3s passed
    while resolving manifests (6 of 9 done); waiting on …` (`brief`: without what it was doing and waiting on)."""
    interrupted = judgement.scan.interrupted
    assert interrupted is not None
    text = interrupted.brief if brief else str(interrupted)
    images = _images(judgement.not_checked)
    return f"{_plural(len(images), 'image')} not checked: {text}" if images else text


def ok_summary(judgement: Judgement) -> str:
    scan = judgement.scan
    if scan.interrupted is not None:  # -t N:ok: still say the run was cut short, and where
        return cut(deadline_text(judgement), MAX_SUMMARY)
    return totals(scan)


def human_duration(seconds: float) -> str:
    """`2d`, `1.5h`, `90s`: in the largest unit that fits, to a tenth."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{round(seconds / size, 1):g}{unit}"
    return f"{round(seconds):g}s"


def problem_summary(judgement: Judgement, worst: str, slow: Optional[str], overdue: Optional[float] = None) -> str:
    """Line 1's summary when the run's `worst` state is not OK: what is broken and what it breaks, the deadline
    (first when it is the worst), the warnings, a run slower than -w/-c allow (`slow`: the range it violates),
    blobs not deep-verified for longer than --max-age (`overdue`)."""
    scan = judgement.scan
    parts = []
    broken = judgement.failures
    if broken:
        images = _images([t for item in broken for t in item.affected])
        # a registry answering 5xx is said as such, not as broken manifests; what else broke is counted after it
        failing = [item for item in broken if isinstance(item.error, RegistryFailing)]
        others = [item for item in broken if not isinstance(item.error, RegistryFailing)]
        head = " and ".join([str(item.error) for item in failing] + ([_broken_head(others)] if others else []))
        if images:
            head += f", breaking {len(images)} of {_plural(len(scan.images), 'image')}"
        origins = [cache_only(item) if isinstance(item, Finding) else None for item in broken]
        if all(origins):
            head += f", all cache-only (origin {origins[0]} intact)"
        parts.append(f"{head}: {short(others[0])}" if others else head)
    if scan.empty and judgement.empty_state != OK:
        more = len(scan.empty) - 1
        parts.append(empty_text(scan.empty[0]) + (f" (and {more} more that match nothing)" if more else ""))
    deadline = judgement.deadline
    if deadline is not None and scan.interrupted is not None:
        full = deadline_text(judgement)
        fits = len("; ".join(parts + [full])) <= MAX_SUMMARY
        parts.insert(0 if judgement.state(deadline) == worst else len(parts),
                     full if fits else deadline_text(judgement, brief=True))
    warned = judgement.warnings
    if warned:
        parts.append(f"{_plural(len(warned), 'warning')}: {short(warned[0])}")
    if slow is not None:
        parts.append(f"run took {scan.elapsed:.1f}s ({slow})")
    freshness = scan.freshness
    if overdue is not None and freshness is not None and freshness.oldest is not None:
        parts.append(f"{_plural(freshness.older_than(overdue), 'blob')} not deep-verified for over "
                     f"{human_duration(overdue)} (--max-age; oldest {human_duration(freshness.oldest)})")
    if not broken and deadline is None and (scan.targets or scan.findings):  # else what matched nothing says it all
        parts.append(totals(scan))
    return cut("; ".join(parts), MAX_SUMMARY)


def long_output(judgement: Judgement, verbose: int = 0) -> List[str]:
    """A line per failure, warning and the deadline (worst first), the notes, and with -v a line per image."""
    scan = judgement.scan
    lines = [f"{judgement.state(item).upper()}: {describe(item)}{_unfinished(judgement, item)}"
             for item in judgement.worst_first()]
    allowed = judgement.empty_state == OK
    lines += [f"note: {empty_text(e)} (--allow-empty)" if allowed else f"{judgement.empty_state.upper()}: "
              f"{empty_text(e)}" for e in scan.empty]
    lines += [f"note: {note}" for note in scan.notes]
    lines += [f"note: {describe(f)}" for f in scan.findings if f.notes]
    if verbose >= 1:
        lines += image_lines(scan) + artifact_lines(scan)
    return lines


def image_lines(scan: ScanResult) -> List[str]:
    """A line per image and platform, in the order of their names (not the order their manifests came in)."""
    return [_image_line(v) for v in sorted(image_verdicts(scan),
                                           key=lambda v: (str(v.target.image), str(v.target.platform or "")))]


def _unfinished(judgement: Judgement, item: Judged) -> str:
    """After the deadline's line: the images it left unfinished."""
    if not (isinstance(item, RunProblem) and item.kind is Trouble.DEADLINE):
        return ""
    images = sorted(_images(judgement.not_checked))
    text = "; not checked: " + ", ".join(images) if images else ""
    return cut(text, MAX_LINE)


def unjudged(verdict: ImageVerdict) -> Optional[str]:
    """Why the run did not judge an image, if it did not: `not checked` (the deadline), `nothing selected`."""
    if isinstance(verdict.unjudged, EmptySelection):
        return "nothing selected"
    return "not checked" if verdict.unjudged is not None else None


def _image_line(verdict: ImageVerdict) -> str:
    word, result = IMAGE_WORDS[verdict.state], verdict.resolved
    if isinstance(verdict.unjudged, EmptySelection):
        return f"image {verdict.target}: nothing selected: {word}"
    if verdict.unjudged is not None:
        return f"image {verdict.target}: not checked (deadline)"
    if result is None:
        return f"image {verdict.target}: not resolved: {word}"
    return (f"image {result.target}: manifest {result.manifest_digest.short()}…, {len(result.blobs)} blobs, "
            f"{human_bytes(verdict.bytes)}{' (artifact)' if result.artifact else ''}: {word}")


def artifact_lines(scan: ScanResult) -> List[str]:
    """A line per attached artifact, by image and platform, in the order found."""
    lines = []
    for verdict in sorted(artifact_verdicts(scan), key=lambda v: (str(v.artifact.target.image),
                                                                   str(v.artifact.target.platform or ""))):
        artifact = verdict.artifact
        facts = (f"{len(artifact.blobs)} blobs, {human_bytes(verdict.bytes)}" if artifact.resolved
                 else "manifest not fetched")
        lines.append(f"{artifact.target} (subject {artifact.subject.short()}…, {artifact.artifact.found_by}): "
                     f"{facts}: {IMAGE_WORDS[verdict.state]}")
    return lines


def _images(targets: Sequence[Target]) -> List[str]:
    return list(dict.fromkeys(str(t.image) for t in targets))


def _broken_head(broken: Sequence[Judged]) -> str:
    """`2 broken blobs`, `1 broken manifest`, `1 broken blob and 1 broken manifest`; `N problem` when the
    registry itself or our own code failed."""
    if not all(isinstance(item, Finding) for item in broken):
        return f"{len(broken)} problem"
    blobs = sum(1 for f in broken if isinstance(f, Finding) and f.kind.blob)
    signatures = sum(1 for f in broken if isinstance(f, Finding) and f.kind is Kind.SIGNATURE)
    counts = ((blobs, "broken blob"), (len(broken) - blobs - signatures, "broken manifest"),
              (signatures, "signature problem"))
    return " and ".join(_plural(n, noun) for n, noun in counts if n)


def fit(lines: List[str], limit: int = MAX_OUTPUT) -> List[str]:
    """Line 1, then as much of the long output as fits in `limit` bytes (as text, a newline after each line), cut
    with `… and N more`."""
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
    return out
