"""For people and scripts: the per-image table of a manual run, and the full result as JSON.

Presentation only: states come from check.judge (through check.image_verdicts), facts from the ScanResult.
"""

from __future__ import annotations

import json
from typing import Dict, List

from . import __version__
from .check import artifact_verdicts, describe, human_bytes, image_verdicts, judge, origin_verdict
from .model import ScanResult
from .states import SEVERITY

JSON_SCHEMA_VERSION = 1


def image_rows(scan: ScanResult) -> List[Dict]:
    """One row per image and platform, resolved or not, worst first."""
    rows = []
    signed = dict(scan.signed or ())
    for verdict in image_verdicts(scan):
        target, result = verdict.target, verdict.resolved
        rows.append({
            "image": str(target.image), "platform": str(target.platform or ""), "registry": target.registry,
            "manifest": str(result.manifest_digest) if result else None,
            "artifact": result.artifact if result else False,
            "blobs": [str(d.digest) for d in result.blobs] if result else [],
            "bytes": verdict.bytes, "seconds": round(verdict.seconds, 3), "state": verdict.state.upper()})
        if scan.signed is not None:
            rows[-1]["signed"] = signed.get(target, False)
    return sorted(rows, key=lambda r: (-SEVERITY[r["state"].lower()], r["image"], r["platform"]))


def artifact_rows(scan: ScanResult) -> List[Dict]:
    """One row per attached artifact (DESIGN.md §8), in the order found."""
    return [{"image": str(v.artifact.target.image), "platform": str(v.artifact.target.platform or ""),
             "subject": str(v.artifact.subject), "digest": str(v.artifact.artifact.digest),
             "artifact_type": v.artifact.artifact.artifact_type, "found_by": str(v.artifact.artifact.found_by),
             "state": v.state.upper(), "error": v.error} for v in artifact_verdicts(scan)]


def table(scan: ScanResult) -> str:
    """A readable table, one row per image (and platform), worst first."""
    rows = image_rows(scan)
    header = ("IMAGE", "PLATFORM", "BLOBS", "BYTES", "TIME", "STATE")
    cells = [header] + [(r["image"], r["platform"] or "-", str(len(r["blobs"])), human_bytes(r["bytes"]),
                         f"{r['seconds']:.1f}s", r["state"]) for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
                     for row in cells) + "\n"


def to_json(scan: ScanResult, state: str, summary: str) -> str:
    findings = []
    for finding in scan.findings:
        findings.append({
            "subject": finding.subject, "kind": finding.kind, "repository": finding.repository or None,
            "size": finding.size, "bytes_read": finding.bytes_read, "check": finding.mode,
            "state": judge(finding).upper(), "error": str(finding.error) if finding.error else None,
            "caveats": list(finding.caveats), "notes": list(finding.notes), "retries": finding.retries,
            "seconds": round(finding.finished, 3), "affects": sorted({str(t) for t in finding.affected}),
            "origin": origin_verdict(finding.origin) if finding.origin else None})
    document = {
        "schema": JSON_SCHEMA_VERSION, "plugin": f"check_registry_deep {__version__}",
        "state": state.upper(), "summary": summary, "elapsed": round(scan.elapsed, 3),
        "retries": scan.retries, "interrupted": str(scan.interrupted) if scan.interrupted else None,
        "notes": list(scan.notes), "oldest_verification": scan.oldest_verification,
        "images": image_rows(scan), **({"artifacts": artifact_rows(scan)} if scan.attachments else {}),
        "content": findings,
        "broken": [{"subject": row["subject"], "kind": row["kind"], "error": row["error"], "breaks": row["affects"],
                    "line": describe(finding)} for row, finding in zip(findings, scan.findings) if row["error"]],
        "to_repush": sorted({str(t.image) for f in scan.findings if f.error is not None for t in f.affected}),
    }
    return json.dumps(document, indent=2) + "\n"
