"""Wires the layers together: clients and scanner (gather), nagiosplugin check (judge), text and JSON (present)."""

from __future__ import annotations

import dataclasses
import shutil
import sys
from typing import Callable, Dict, Optional, Sequence, Tuple
from urllib.parse import urlsplit

import nagiosplugin
import urllib3

from .atomic import with_problem, write_file
from .auth import load_credentials
from .check import build_check, rendered
from .client import RegistryClient
from .coverage import Coverage
from .deadline import Deadline
from .errors import UsageError
from .judge import image_verdicts, judge, verified_artifacts
from .metrics import Counts, ImageSample, publish
from .model import ScanResult
from .options import AccessOptions, AttachmentOptions, CheckOptions
from .origin import MARGIN as ORIGIN_MARGIN
from .origin import OriginChecker
from .reference import ImageRef
from .referrers import Policy
from .report import table, to_json
from .scan import Scanner
from .stages import Stage
from .states import CRITICAL, UNKNOWN
from .transport import TLSOptions
from .wording import image_problems

#: --json FILE is for people and scripts, as a file written with the usual umask would be.
JSON_MODE = 0o644


def run_check(options: CheckOptions) -> Tuple[str, int]:
    """Run the whole check; returns the plugin's output and exit code."""
    access, scale = options.access, options.scale
    for name, spec in (("--warning", options.warning), ("--critical", options.critical)):
        try:
            nagiosplugin.Range(spec)
        except ValueError as exc:
            raise UsageError(f"invalid {name} range {spec!r}: {exc}") from None
    deadline = Deadline(options.seconds, started=options.started)
    registries = list(dict.fromkeys([registry for _, registry in options.images]
                                    + ([access.registry] if access.registry else []) + list(scale.replicas)))
    clients = make_clients(registries, deadline, options.workers, access,
                           explicit={access.registry, *scale.replicas})
    coverage = Coverage(scale.state_file, scale.max_bytes)
    origin = origin_checker(options, deadline)
    with progress_bar(scale.progress) as progress:
        scanner = Scanner(clients.__getitem__, deadline, workers=options.workers, platforms=options.platforms,
                          discovery=(access.registry, scale.discovery) if scale.discovery and access.registry
                          else None, replicas=scale.replicas, choose_deep=coverage.choose, origin=origin,
                          progress=progress, attachments=attachment_policy(options.attachments))
        check = build_check(lambda: remember(scanner.scan(options.images), coverage, access),
                            warning=options.warning, critical=options.critical, timeout_state=options.timeout_state,
                            verbose=options.verbose, max_age=options.max_age,
                            allow_empty=options.allow_empty)
        check()
    scan: ScanResult = check.resources[0].result
    text = scale.json != "-"
    # each file the plugin writes: a failure is one more line, and never hides what the check found
    output = with_problem(rendered(check), coverage.save(), text)
    if scale.json:
        document = to_json(scan, output.state, check.summary_str)
        if text:
            output = with_problem(output, write_file("--json", scale.json, document.encode(), mode=JSON_MODE))
        else:
            output = dataclasses.replace(output, document=document)
    if scale.table:
        output = dataclasses.replace(output, table=table(scan))
    if scale.metrics_file:  # last: the file records the run's final state
        output = publish(scale.metrics_file, output, deadline.started, *metrics_of(scan, options.images),
                         text=text)
    return output.text, output.exitcode


def attachment_policy(options: AttachmentOptions) -> Policy:
    """--referrers, --require-signature, --cosign-key as the scan's policy; the key is read here (cryptography is
    imported only then), and a bad key file is a usage error."""
    key = None
    if options.cosign_key:
        from .signatures import load_public_key  # cryptography only with a key
        key = load_public_key(options.cosign_key)
    return Policy(options.referrers, options.require_signature, key)


def metrics_of(scan: ScanResult, given: Sequence[Tuple[ImageRef, str]]) -> Tuple[Tuple[ImageSample, ...], Counts]:
    """For --metrics-file: a sample per image (and platform) given with -i/-f, from its verdict (pullable: OK or
    WARNING; none when UNKNOWN, not judged), and counts; images found by discovery are only counted, so the
    series stay bounded."""
    named = {(str(ref), registry) for ref, registry in given}
    signed = dict(scan.signed) if scan.signed is not None else None
    problems = image_problems(scan)
    samples = tuple(ImageSample(v.target.registry, str(v.target.image), str(v.target.platform or ""),
                                v.state != CRITICAL, problems.get(v.target, "") if v.state == CRITICAL else "",
                                None if signed is None else signed.get(v.target, False))
                    for v in image_verdicts(scan)
                    if (str(v.target.image), v.target.registry) in named and v.state != UNKNOWN)
    given_refs = {ref for ref, _ in given}
    verified = scan.verified_blobs
    broken = [f for f in scan.findings if judge(f) == CRITICAL]
    return samples, Counts(len(scan.images), sum(1 for ref in scan.images if ref not in given_refs), len(broken),
                           len(verified), sum(f.bytes_read for f in verified), scan.retries, scan.oldest_verification,
                           len(verified_artifacts(scan)) if scan.attachments else None)


def make_clients(registries: Sequence[str], deadline: Deadline, workers: int, access: AccessOptions,
                 explicit: set) -> Dict[str, RegistryClient]:
    """One client per registry. Explicit credentials and --connect-to go only to the registries the user named
    (--registry, --compare-registry); an image's own host gets its entry in the docker config."""
    tls = TLSOptions(verify=False if access.insecure else (access.ca_bundle or True),
                     cert=(access.client_cert, access.client_key or access.client_cert) if access.client_cert else None)
    if access.insecure:
        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)  # the output says it instead
    clients = {}
    for registry in registries:
        named = registry in explicit
        credentials = load_credentials(urlsplit(registry).netloc, username=access.username if named else None,
                                       password_file=access.password_file if named else None,
                                       docker_config=access.docker_config)
        clients[registry] = RegistryClient(registry, deadline, workers=workers, tls=tls, credentials=credentials,
                                           connect_to=access.connect_to if registry == access.registry else None)
    return clients


def origin_checker(options: CheckOptions, deadline: Deadline) -> Optional[OriginChecker]:
    """With --origin: --registry's client once more, connected to the origin like --connect-to, under a deadline
    that ends a little before the run's."""
    access = options.access
    if not (access.origin and access.registry):
        return None
    within = Deadline(max(0.0, options.seconds - ORIGIN_MARGIN), started=deadline.started)
    client = make_clients([access.registry], within, options.workers,
                          dataclasses.replace(access, connect_to=access.origin), explicit={access.registry})
    return OriginChecker(access.registry, access.origin, client[access.registry], options.scale.max_bytes)


def remember(scan: ScanResult, coverage: Coverage, access: AccessOptions) -> ScanResult:
    """Record what was verified (run_check saves it to the state file); add the run-wide notes and how long ago
    each blob was last verified."""
    seen = [(t.target.registry, d.digest) for t in scan.targets for d in t.blobs if not d.foreign]
    seen += [(a.target.registry, d.digest) for a in scan.artifacts for d in a.blobs if not d.foreign]
    # keyed by (registry, digest): a blob verified in one registry says nothing of another's copy
    verified_keys = {(t.registry, f.digest) for f in scan.verified_blobs for t in f.affected}
    verified = [key for key in seen if key in verified_keys]
    coverage.record(seen, verified)
    notes = ("TLS certificates NOT verified (--insecure)",) if access.insecure else ()
    return dataclasses.replace(scan, notes=notes, freshness=coverage.freshness(seen) if coverage.state_file else None)


class progress_bar:
    """A tqdm bar on stderr for a person at a terminal; nothing otherwise (tqdm is imported only then)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None
        self.stage: Optional[Stage] = None

    def __enter__(self) -> Optional[Callable[[Stage, int, int, int], None]]:
        if not self.enabled:
            return None
        from tqdm import tqdm
        # a terminal that reports no size (a pty under `script`, some serial consoles) would get no bar at all
        size = shutil.get_terminal_size((100, 20))
        self.bar = tqdm(file=sys.stderr, unit="B", unit_scale=True, leave=False, ncols=size.columns or 100,
                        nrows=size.lines or 20)
        return self.update

    def update(self, stage: Stage, done: int, total: int, read: int) -> None:
        assert self.bar is not None
        if stage is not self.stage:
            self.stage = stage
            self.bar.set_description(str(stage))
        self.bar.update(read)
        self.bar.set_postfix_str(f"{done}/{total}")

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
