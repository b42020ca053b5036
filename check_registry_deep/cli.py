"""The entry point: argv in, checked into frozen options, a check run, a status line and exit code out.

Nothing else knows argv. The slow imports (requests, nagiosplugin) wait until the options are good.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import threading
import time
import traceback
from typing import Callable, List, Optional, Pattern, Sequence, Tuple
from urllib.parse import urlsplit

from . import __version__
from .errors import UsageError
from .options import AccessOptions, AttachmentOptions, CheckOptions, DiscoveryOptions, ScaleOptions
from .reference import DOMAIN_RE, REPOSITORY_RE, ImageRef, Platform
from .states import STATES, UNKNOWN, Rendered, plain

#: Seconds past the deadline after which the watchdog prints a status line whatever the run is doing.
WATCHDOG_GRACE = 0.8


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="check_registry_deep",
        description="Prove that a container registry still serves its images byte for byte: resolve every "
                    "manifest, GET every blob, verify size and digest. Exit 0 OK, 1 WARNING, 2 CRITICAL, "
                    "3 UNKNOWN.")
    add = parser.add_argument
    add("-R", "--registry", metavar="URL",
        help="registry base URL, e.g. https://registry.example.org or http://127.0.0.1:5000 "
             "(https:// when no scheme is given)")
    add("-i", "--image", metavar="REF", action="append", default=[],
        help="image to verify, repeatable: repo/name:tag, repo/name@sha256:HEX or repo/name:tag@sha256:HEX; "
             "a ref with its own host (host[:port]/repo:tag) is fetched from that host")
    add("-f", "--images-file", metavar="FILE", action="append", default=[],
        help="file with more image refs, one a line; # comments and blank lines are ignored")
    add("--platform", metavar="OS/ARCH[/VARIANT]", action="append", default=[],
        help="only check these platforms of a multi-platform image, repeatable (default: all)")
    add("-j", "--workers", metavar="N", type=int, default=4,
        help="concurrent requests: manifests, tag lists, blob GETs and HEADs (default 4)")
    add("-t", "--timeout", metavar="SECONDS[:STATE]", default="50",
        help="deadline for the whole run (default 50) and the state when it passes: ok, warning, critical or "
             "unknown (default unknown); failures already found stay CRITICAL")
    add("-w", "--warning", metavar="RANGE", default="", help="warning range for the run's wall time in seconds")
    add("-c", "--critical", metavar="RANGE", default="", help="critical range for the run's wall time in seconds")
    add("--username", metavar="USER", help="user for the --registry (Basic or token auth); the password comes from "
        "--password-file or the REGISTRY_DEEP_PASSWORD environment variable, never the command line")
    add("--password-file", metavar="FILE", help="file whose first line is the password for --username")
    add("--docker-config", metavar="DIR", help="directory holding a docker config.json (auths, credsStore, "
        "credHelpers, identity tokens); without it and without --username the usual docker config is used")
    add("--ca-bundle", metavar="FILE", help="CA certificates (PEM) to verify the registry's TLS certificate with, "
        "instead of the system store")
    add("--client-cert", metavar="FILE", help="client certificate (PEM) for registries that require one")
    add("--client-key", metavar="FILE", help="private key (PEM) of --client-cert")
    add("--insecure", action="store_true", help="do not verify TLS certificates (said in the output)")
    add("--connect-to", metavar="HOST:PORT", help="connect to this backend (a datacenter's node, the origin behind "
        "a cache) instead of the --registry host, keeping its Host header and TLS server name")
    add("--origin", metavar="HOST:PORT", help="the registry's origin behind a cache, CDN or load balancer: every "
        "blob or manifest that fails through --registry is verified again there (same Host header and TLS name, "
        "like --connect-to), and its line says whether the origin is intact or also broken")
    add("--repository", metavar="PREFIX", action="append", default=[],
        help="also check images of every repository under PREFIX in the --registry's catalog, repeatable; "
             "needs --all-tags or --tag-pattern")
    add("--all-tags", action="store_true", help="with --repository: every tag of each repository")
    add("--tag-pattern", metavar="REGEX", help="with --repository: the tags that fully match REGEX")
    add("--allow-empty", action="store_true", help="a selection that matches nothing is fine (OK, said in a note): "
        "a --repository prefix without repositories, repositories without a tag --all-tags or --tag-pattern "
        "selects, an index without a child for --platform; without it each is UNKNOWN")
    add("--compare-registry", metavar="URL", action="append", default=[],
        help="a replica of --registry (another datacenter, a mirror), repeatable: it must serve the same manifest "
             "for each image (else WARNING) and have every blob (else CRITICAL)")
    add("--max-bytes", metavar="N[K|M|G]", help="download at most about N bytes of blobs per run (powers of 1024); "
        "the others are only confirmed present, and verified in later runs with --state-file")
    add("--state-file", metavar="FILE", help="remembers when each blob was last verified, so successive runs "
        "verify the least recently verified first; perfdata 'oldest' is the stalest verification's age (a blob "
        "never verified counts from the state file's creation), 'unverified' how many were never verified")
    add("--max-age", metavar="DURATION", help="with --state-file: WARNING when a blob has not been deep-verified "
        "for longer than DURATION (e.g. 1d, 12h, 90m, 3600s); a blob never verified counts from the state file's "
        "creation")
    add("--json", metavar="FILE", help="write the full result as JSON to FILE (- for stdout, instead of the "
        "plugin's text)")
    add("--metrics-file", metavar="FILE", help="after every run, write Prometheus metrics to FILE (NAME.prom in "
        "node_exporter's textfile directory; NAME becomes the label check), atomically; the output stays the same")
    add("--referrers", action="store_true", help="also find every artifact attached to each image (OCI referrers "
        "API, the sha256-HEX fallback tag, cosign's .sig/.att/.sbom tags) and verify it like an image: a listed "
        "artifact that is gone or broken (an SBOM or signature lost to garbage collection) is CRITICAL")
    add("--require-signature", action="store_true", help="each image must carry at least one signature (a cosign "
        "signature, or a referrer of a signature type), else CRITICAL 'not signed'")
    add("--cosign-key", metavar="FILE", help="PEM public key (ECDSA, RSA, Ed25519): at least one cosign signature "
        "must verify with it and name the image's digest (implies --require-signature). This checks what the "
        "registry serves against the key; it does not replace a transparency-log policy (cosign verify)")
    add("-v", "--verbose", action="count", default=0,
        help="more output, repeatable: -v a line per image, -vv progress on stderr, -vvv debug on stderr")
    add("-V", "--version", action="version", version=f"check_registry_deep {__version__}")
    return parser


def parse_timeout(text: str) -> Tuple[float, str]:
    seconds_text, _, state = text.partition(":")
    state = state.strip().lower() or "unknown"
    try:
        seconds = float(seconds_text)
    except ValueError:
        raise UsageError(f"invalid --timeout {text!r}: expected SECONDS[:STATE], e.g. 50 or 50:critical") from None
    if not 0 < seconds < 86400 or state not in STATES:
        raise UsageError(f"invalid --timeout {text!r}: expected seconds > 0 and a state among "
                         f"{', '.join(STATES)}")
    return seconds, state


def normalize_registry(url: str) -> str:
    if "://" not in url:
        url = f"https://{url}"
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        raise UsageError("credentials in the registry URL are not accepted (they would show in ps and in logs)")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"invalid --registry {url!r}: expected http(s)://host[:port]")
    if parts.path.strip("/") or parts.query or parts.fragment:
        raise UsageError(f"invalid --registry {url!r}: expected no path; the API lives at /v2/ of the host")
    return f"{parts.scheme}://{parts.netloc}"


def read_images_file(path: str) -> List[str]:
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read images file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


def plan_images(registry: Optional[str], texts: Sequence[str], allow_none: bool = False
                ) -> List[Tuple[ImageRef, str]]:
    """Each image with the base URL of the registry that serves it."""
    default = normalize_registry(registry) if registry else None
    planned = []
    for text in dict.fromkeys(texts):
        ref = ImageRef.parse(text)
        if ref.host is None:
            if default is None:
                raise UsageError(f"--registry is required: image {text!r} names no registry host")
            planned.append((ref, default))
        elif default and urlsplit(default).netloc == ref.host:
            planned.append((ref, default))
        else:
            planned.append((ref, f"https://{ref.host}"))
    if not planned and not allow_none:
        raise UsageError("no images to check: give --image, --images-file or --repository")
    return planned


def access_options(options: argparse.Namespace) -> AccessOptions:
    for flag, path in (("--ca-bundle", options.ca_bundle), ("--client-cert", options.client_cert),
                       ("--client-key", options.client_key), ("--password-file", options.password_file)):
        if path and not os.access(path, os.R_OK):
            raise UsageError(f"cannot read {flag} {path}")
    if options.client_key and not options.client_cert:
        raise UsageError("--client-key needs --client-cert")
    if options.insecure and options.ca_bundle:
        raise UsageError("--insecure and --ca-bundle contradict each other")
    for flag, address in (("--connect-to", options.connect_to), ("--origin", options.origin)):
        if address:
            host, _, port = address.rpartition(":")
            if not port.isdigit() or not DOMAIN_RE.fullmatch(host or "-"):
                raise UsageError(f"invalid {flag} {address!r}: expected HOST:PORT")
            if not options.registry:
                raise UsageError(f"{flag} needs --registry")
    registry = normalize_registry(options.registry) if options.registry else None
    return AccessOptions(registry, options.username, options.password_file, options.docker_config, options.ca_bundle,
                         options.client_cert, options.client_key, options.insecure, options.connect_to,
                         options.origin)


def discovery_options(options: argparse.Namespace) -> Optional[DiscoveryOptions]:
    if not options.repository:
        if options.all_tags or options.tag_pattern:
            raise UsageError("--all-tags and --tag-pattern go with --repository")
        return None
    if not options.registry:
        raise UsageError("--repository needs --registry")
    if options.all_tags == bool(options.tag_pattern):
        raise UsageError("--repository needs exactly one of --all-tags and --tag-pattern")
    for prefix in options.repository:
        if not REPOSITORY_RE.fullmatch(prefix.rstrip("/")):
            raise UsageError(f"invalid --repository {prefix!r}: expected a repository name or path prefix")
    pattern = compile_pattern(options.tag_pattern) if options.tag_pattern else None
    return DiscoveryOptions(tuple(options.repository), pattern)


def compile_pattern(text: str) -> Pattern[str]:
    try:
        return re.compile(text)
    except re.error as exc:
        raise UsageError(f"invalid --tag-pattern {text!r}: {exc}") from None


def parse_bytes(text: Optional[str]) -> Optional[int]:
    if text is None:
        return None
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    number, unit = text.strip().upper().rstrip("B").rstrip("I"), ""
    if number and number[-1] in units:
        number, unit = number[:-1], number[-1]
    if not number.isdigit() or int(number) <= 0:
        raise UsageError(f"invalid --max-bytes {text!r}: expected a positive number of bytes, e.g. 500M")
    return int(number) * units[unit]


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(option: str, text: Optional[str]) -> Optional[float]:
    """`1d`, `12h`, `90m`, `3600s` or `3600` as seconds."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text.lower())
    if not match or float(match.group(1)) <= 0:
        raise UsageError(f"invalid {option} {text!r}: expected a positive duration, e.g. 1d, 12h, 90m or 3600s")
    return float(match.group(1)) * DURATION_UNITS[match.group(2) or "s"]


def _configure_logging(verbose: int) -> None:
    if verbose >= 2:
        logging.basicConfig(stream=sys.stderr, format="%(asctime)s %(threadName)s %(message)s",
                            level=logging.DEBUG if verbose >= 3 else logging.INFO)
    logging.getLogger("urllib3").setLevel(logging.WARNING)  # it logs full URLs, which may carry signatures


class _Watchdog:
    """Prints a status line and exits if the run overstays its deadline, whatever it is blocked on."""

    def __init__(self, left: float, seconds: float, state: str,
                 publish: Callable[[Rendered], Rendered] = lambda output: output):
        self.lock = threading.Lock()
        self.done = False
        self.publish = publish  # --metrics-file: written before the line, which may then say it failed
        self.timer = threading.Timer(max(0.0, left) + WATCHDOG_GRACE, self._fire, args=(seconds, state))
        self.timer.daemon = True

    def _fire(self, seconds: float, state: str) -> None:
        with self.lock:
            if self.done:
                return
            self.done = True
            output = self.publish(Rendered(state, f"deadline of {seconds:g}s passed and the run did not wind down"))
            sys.stdout.write(output.text)
            sys.stdout.flush()
            os._exit(output.exitcode)

    def finish(self, output: str) -> None:
        with self.lock:
            if self.done:
                return
            self.done = True
            self.timer.cancel()
            sys.stdout.write(output)
            sys.stdout.flush()


def main(argv: Optional[Sequence[str]] = None) -> int:
    started = time.monotonic()  # -t counts from here, imports included
    verbose = 0
    watchdog = None
    metrics_file: Optional[str] = None
    try:
        try:
            options = build_parser().parse_args(argv)
        except UsageError:
            metrics_file = lenient_metrics_file(argv)
            raise
        metrics_file = options.metrics_file
        if metrics_file:  # prometheus_client (some 50 ms) only for --metrics-file, and before the watchdog needs it
            from .metrics import load
            load()
        verbose = options.verbose
        _configure_logging(verbose)
        seconds, timeout_state = parse_timeout(options.timeout)
        if not 1 <= options.workers <= 64:
            raise UsageError(f"invalid --workers {options.workers}: expected 1 to 64")
        texts = list(options.image)
        for path in options.images_file:
            texts += read_images_file(path)
        discovery = discovery_options(options)
        images = plan_images(options.registry, texts, allow_none=discovery is not None)
        platforms = [Platform.parse(p) for p in options.platform]
        max_age = parse_duration("--max-age", options.max_age)
        if max_age is not None and not options.state_file:
            raise UsageError("--max-age needs --state-file (it remembers when each blob was verified)")
        watchdog = _Watchdog(seconds - (time.monotonic() - started), seconds, timeout_state,
                             lambda output: publish(metrics_file, output, started))
        watchdog.timer.start()
        from .app import run_check  # deferred: requests, tenacity and nagiosplugin cost time at start-up
        access = access_options(options)
        interactive = sys.stdout.isatty() and sys.stderr.isatty()  # a person at a terminal; never Icinga
        scale = ScaleOptions(discovery, tuple(normalize_registry(url) for url in options.compare_registry),
                             parse_bytes(options.max_bytes), options.state_file, options.json, metrics_file,
                             progress=interactive, table=interactive and options.json != "-")
        output, exitcode = run_check(CheckOptions(
            tuple(images), seconds=seconds, timeout_state=timeout_state, workers=options.workers,
            platforms=tuple(platforms), warning=options.warning, critical=options.critical, verbose=verbose,
            max_age=max_age, allow_empty=options.allow_empty, access=access, scale=scale, started=started,
            attachments=AttachmentOptions(options.referrers, options.require_signature or bool(options.cosign_key),
                                          options.cosign_key)))
    except UsageError as exc:
        output, exitcode = unknown(metrics_file, Rendered(UNKNOWN, str(exc)), started)
    except KeyboardInterrupt:
        output, exitcode = unknown(metrics_file, Rendered(UNKNOWN, "interrupted"), started)
    except Exception as exc:  # the last line of defence: one line, and a traceback only at -vvv
        trace = tuple(plain(line) for line in traceback.format_exc().splitlines()) if verbose >= 3 else ()
        output, exitcode = unknown(metrics_file, Rendered(UNKNOWN, f"internal error: {type(exc).__name__}: {exc}",
                                                          long_lines=trace), started)
    if watchdog is not None:
        watchdog.finish(output)
    else:
        sys.stdout.write(output)
        sys.stdout.flush()
    return exitcode


def lenient_metrics_file(argv: Optional[Sequence[str]]) -> Optional[str]:
    """--metrics-file of a command line the full parser refused: a usage error still reaches Prometheus."""
    parser = _Parser(add_help=False)
    parser.add_argument("--metrics-file")
    try:
        return parser.parse_known_args(argv)[0].metrics_file
    except UsageError:
        return None


def publish(path: Optional[str], output: Rendered, started: float) -> Rendered:
    """After a run that never got to app.py: metrics.publish, imported only for --metrics-file."""
    if not path:
        return output
    from .metrics import publish as write
    return write(path, output, started)


def unknown(path: Optional[str], output: Rendered, started: float) -> Tuple[str, int]:
    """A run that never got to app.py (bad usage, interrupted, our own bug): published, then as main() prints
    it."""
    output = publish(path, output, started)
    return output.text, output.exitcode


def run() -> None:
    """Console script entry point."""
    sys.exit(main())
