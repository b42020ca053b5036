"""For people and scripts: the per-image table of a manual run, and the full result as JSON.

Presentation only: states come from check.judge, facts from the ScanResult.
"""

from __future__ import annotations

import json
from typing import Dict, List

import nagiosplugin

from . import __version__
from .check import SEVERITY, describe, human_bytes, image_states, judge
from .model import ScanResult, Target

JSON_SCHEMA_VERSION = 1


def image_rows(scan: ScanResult) -> List[Dict]:
    states = image_states(scan)
    finished: Dict[Target, float] = {}
    sizes = {c.subject: c.size or 0 for c in scan.content}
    for finding in scan.content:
        for target in finding.affected:
            finished[target] = max(finished.get(target, 0.0), finding.finished)
    rows = []
    for result in scan.targets:
        rows.append({
            "image": str(result.target.image), "platform": str(result.target.platform or ""),
            "registry": result.target.registry, "manifest": str(result.manifest_digest),
            "artifact": result.artifact, "blobs": [str(d.digest) for d in result.blobs],
            "bytes": sum(sizes.get(str(d.digest), d.size or 0) for d in result.blobs),
            "seconds": round(finished.get(result.target, 0.0), 3),
            "state": str(states.get(result.target, nagiosplugin.Ok)).upper()})
    resolved = {t.target.image for t in scan.targets}
    for finding in scan.content:  # images that never resolved (tag gone, registry down) get a row too
        for target in finding.affected:
            if target.image not in resolved and target.platform is None:
                resolved.add(target.image)
                rows.append({"image": str(target.image), "platform": "", "registry": target.registry,
                             "manifest": None, "artifact": False, "blobs": [], "bytes": 0,
                             "seconds": round(finding.finished, 3),
                             "state": str(states.get(target, nagiosplugin.Ok)).upper()})
    return sorted(rows, key=lambda r: (-SEVERITY[_state(r["state"])], r["image"], r["platform"]))


def _state(word: str) -> nagiosplugin.state.ServiceState:
    return {"OK": nagiosplugin.Ok, "WARNING": nagiosplugin.Warn, "CRITICAL": nagiosplugin.Critical}.get(
        word, nagiosplugin.Unknown)


def table(scan: ScanResult) -> str:
    """A readable table, one row per image (and platform), worst first."""
    rows = image_rows(scan)
    header = ("IMAGE", "PLATFORM", "BLOBS", "BYTES", "TIME", "STATE")
    cells = [header] + [(r["image"], r["platform"] or "-", str(len(r["blobs"])), human_bytes(r["bytes"]),
                         f"{r['seconds']:.1f}s", r["state"]) for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
                     for row in cells) + "\n"


def to_json(scan: ScanResult, state: nagiosplugin.state.ServiceState, summary: str) -> str:
    blobs = []
    for finding in scan.content:
        blobs.append({
            "subject": finding.subject, "kind": finding.kind, "repository": finding.repository or None,
            "size": finding.size, "bytes_read": finding.bytes_read, "check": finding.mode,
            "state": str(judge(finding)).upper(), "error": str(finding.error) if finding.error else None,
            "caveats": list(finding.caveats), "notes": list(finding.notes), "retries": finding.retries,
            "seconds": round(finding.finished, 3), "affects": sorted({str(t) for t in finding.affected})})
    document = {
        "schema": JSON_SCHEMA_VERSION, "plugin": f"check_registry_deep {__version__}",
        "state": str(state).upper(), "summary": summary, "elapsed": round(scan.elapsed, 3),
        "retries": scan.retries, "interrupted": str(scan.interrupted) if scan.interrupted else None,
        "notes": list(scan.notes), "oldest_verification": scan.oldest_verification,
        "images": image_rows(scan), "content": blobs,
        "broken": [{"subject": b["subject"], "kind": b["kind"], "error": b["error"], "breaks": b["affects"],
                    "line": describe(finding)} for b, finding in zip(blobs, scan.content) if b["error"]],
        "to_repush": sorted({str(t.image) for c in scan.content if c.error is not None for t in c.affected}),
    }
    return json.dumps(document, indent=2) + "\n"

