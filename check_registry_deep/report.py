"""For people and scripts: the per-image table of a manual run, and the full result as JSON.

Presentation only: states come from judge.py (judge, image_verdicts), words from wording.py, facts from the
ScanResult.
"""

from __future__ import annotations

import json
from typing import Dict, List

from . import __version__
from .judge import Judged, artifact_verdicts, image_verdicts, judge
from .model import Finding, Mode, ScanResult
from .states import SEVERITY
from .wording import describe, human_bytes, origin_verdict, unjudged

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
            "bytes": verdict.bytes, "seconds": round(verdict.seconds, 3), "state": verdict.state.upper(),
            "unjudged": unjudged(verdict)})
        if scan.signed is not None:
            rows[-1]["signed"] = signed.get(target, False)
    return sorted(rows, key=lambda r: (-SEVERITY[r["state"].lower()], r["image"], r["platform"]))


def artifact_rows(scan: ScanResult) -> List[Dict]:
    """One row per attached artifact (DESIGN.md §8), in the order found."""
    rows = []
    for verdict in artifact_verdicts(scan):
        artifact = verdict.artifact
        failure = verdict.failure
        rows.append({"image": str(artifact.target.image), "platform": str(artifact.target.platform or ""),
                     "subject": str(artifact.subject), "digest": str(artifact.artifact.digest),
                     "artifact_type": artifact.artifact.artifact_type, "found_by": str(artifact.artifact.found_by),
                     "state": verdict.state.upper(),
                     "error": f"{failure.kind} {failure.label}: {failure.error}" if failure else None})
    return rows


def table(scan: ScanResult) -> str:
    """A readable table, one row per image (and platform), worst first."""
    rows = image_rows(scan)
    header = ("IMAGE", "PLATFORM", "BLOBS", "BYTES", "TIME", "STATE")
    cells = [header] + [(r["image"], r["platform"] or "-", str(len(r["blobs"])), human_bytes(r["bytes"]),
                         f"{r['seconds']:.1f}s", (r["unjudged"] or r["state"]).upper()) for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                     for row in cells) + "\n"


def _content_row(item: Judged) -> Dict:
    """A finding, or a run problem in the same shape (the schema keeps both in `content`)."""
    row = {"subject": item.label, "kind": item.kind, "repository": None, "size": None, "bytes_read": 0,
           "check": Mode.VERIFIED, "state": judge(item).upper(), "error": str(item.error) if item.error else None,
           "caveats": [], "notes": [], "retries": 0, "seconds": round(item.finished, 3),
           "affects": sorted({str(t) for t in item.affected}), "origin": None}
    if isinstance(item, Finding):
        row.update(repository=item.repository or None, size=item.size, bytes_read=item.bytes_read, check=item.mode,
                   caveats=list(item.caveats), notes=list(item.notes), retries=item.retries,
                   origin=origin_verdict(item.origin) if item.origin else None)
    return row


def to_json(scan: ScanResult, state: str, summary: str) -> str:
    items: List[Judged] = [*scan.run_problems, *scan.findings]
    content = [_content_row(item) for item in items]
    document = {
        "schema": JSON_SCHEMA_VERSION, "plugin": f"check_registry_deep {__version__}",
        "state": state.upper(), "summary": summary, "elapsed": round(scan.elapsed, 3),
        "retries": scan.retries, "interrupted": str(scan.interrupted) if scan.interrupted else None,
        "notes": list(scan.notes), "oldest_verification": scan.oldest_verification,
        "images": image_rows(scan), **({"artifacts": artifact_rows(scan)} if scan.attachments else {}),
        "content": content,
        "broken": [{"subject": row["subject"], "kind": row["kind"], "error": row["error"], "breaks": row["affects"],
                    "line": describe(item)} for row, item in zip(content, items, strict=True) if row["error"]],
        "to_repush": sorted({str(t.image) for item in items if item.error is not None for t in item.affected}),
    }
    return json.dumps(document, indent=2) + "\n"
