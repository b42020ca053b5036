"""cli.py: usage errors are one UNKNOWN line and exit 3; options are parsed and handed on; no network."""

from __future__ import annotations

import logging
from typing import Iterator, List

import pytest

from check_registry_deep import __version__, cli
from check_registry_deep import app as app_module
from check_registry_deep.errors import UsageError
from check_registry_deep.reference import ImageRef, Platform

REGISTRY = "http://127.0.0.1:5000"


@pytest.fixture(autouse=True)
def keep_logging() -> Iterator[None]:
    """main() may configure the root logger (-vv); leave it as it was for the next test."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def fake_run(monkeypatch) -> List[dict]:
    """Replaces the real run (network) by a recorder; main() imports run_check from check_registry_deep.app."""
    calls: List[dict] = []

    def run_check(options):
        calls.append({**vars(options), "images": list(options.images), "platforms": list(options.platforms)})
        return "REGISTRY_DEEP OK - fake\n", 0

    monkeypatch.setattr(app_module, "run_check", run_check)
    return calls


def usage_line(capsys, argv: List[str]) -> str:
    code = cli.main(argv)
    out = capsys.readouterr().out
    assert code == 3
    assert out.endswith("\n")
    assert out.count("\n") == 1, out
    assert out.startswith("REGISTRY_DEEP UNKNOWN - ")
    return out.rstrip("\n")


# -- usage errors ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, expected", [
    ([], "REGISTRY_DEEP UNKNOWN - no images to check: give --image, --images-file or --repository"),
    (["-R", REGISTRY], "REGISTRY_DEEP UNKNOWN - no images to check: give --image, --images-file or --repository"),
    (["-i", "team/app:1"],
     "REGISTRY_DEEP UNKNOWN - --registry is required: image 'team/app:1' names no registry host"),
    (["--bogus"], "REGISTRY_DEEP UNKNOWN - unrecognized arguments: --bogus (see --help)"),
    (["-R", REGISTRY, "-i", "team/app", "-j", "abc"],
     "REGISTRY_DEEP UNKNOWN - argument -j/--workers: invalid int value: 'abc' (see --help)"),
    (["-R", REGISTRY, "-i", "team/app", "-j", "0"], "REGISTRY_DEEP UNKNOWN - invalid --workers 0: expected 1 to 64"),
    (["-R", REGISTRY, "-i", "team/app", "-j", "65"],
     "REGISTRY_DEEP UNKNOWN - invalid --workers 65: expected 1 to 64"),
    (["-R", REGISTRY, "-i", "team/app", "-t", "abc"],
     "REGISTRY_DEEP UNKNOWN - invalid --timeout 'abc': expected SECONDS[:STATE], e.g. 50 or 50:critical"),
    (["-R", REGISTRY, "-i", "team/App"],
     "REGISTRY_DEEP UNKNOWN - invalid image reference 'team/App': bad repository name 'team/App' "
     "(lowercase letters, digits and . _ - / only)"),
    (["-R", REGISTRY, "-i", "team/app", "--platform", "linux"],
     "REGISTRY_DEEP UNKNOWN - invalid platform 'linux': expected OS/ARCH[/VARIANT], e.g. linux/arm64/v8"),
    (["-R", "ftp://127.0.0.1", "-i", "team/app"],
     "REGISTRY_DEEP UNKNOWN - invalid --registry 'ftp://127.0.0.1': expected http(s)://host[:port]"),
])
def test_usage_errors_are_one_unknown_line(capsys, argv, expected):
    assert usage_line(capsys, argv) == expected


def test_usage_error_for_bad_range_is_unknown(capsys):
    line = usage_line(capsys, ["-R", REGISTRY, "-i", "team/app", "-w", "abc"])
    assert line.startswith("REGISTRY_DEEP UNKNOWN - invalid --warning range 'abc': ")


def test_usage_error_for_bad_timeout_state(capsys):
    line = usage_line(capsys, ["-R", REGISTRY, "-i", "team/app", "-t", "10:maybe"])
    assert line == ("REGISTRY_DEEP UNKNOWN - invalid --timeout '10:maybe': expected seconds > 0 and a state among "
                    "ok, warning, critical, unknown")


def test_unreadable_images_file(capsys, tmp_path):
    missing = tmp_path / "nope.txt"
    line = usage_line(capsys, ["-R", REGISTRY, "-f", str(missing)])
    assert line == f"REGISTRY_DEEP UNKNOWN - cannot read images file {missing}: No such file or directory"


def test_credentials_in_registry_url_are_rejected_without_echo(capsys):
    line = usage_line(capsys, ["-R", "https://alice:s3cr3t-pw@127.0.0.1:5000", "-i", "team/app"])
    assert "s3cr3t-pw" not in line
    assert "alice" not in line
    assert line == ("REGISTRY_DEEP UNKNOWN - credentials in the registry URL are not accepted (they would show in ps "
                    "and in logs)")


def test_usage_errors_print_no_traceback(capsys):
    cli.main(["-R", REGISTRY, "-i", "team/app", "-j", "abc"])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err


def test_usage_error_line_has_no_pipe(capsys):
    line = usage_line(capsys, ["-R", REGISTRY, "-i", "team/app|x"])
    assert "|" not in line


# -- --version, --help -----------------------------------------------------------------------------------

def test_version(capsys):
    with pytest.raises(SystemExit) as caught:
        cli.main(["--version"])
    assert caught.value.code == 0
    assert capsys.readouterr().out == f"check_registry_deep {__version__}\n"
    with pytest.raises(SystemExit):
        cli.main(["-V"])
    assert capsys.readouterr().out == f"check_registry_deep {__version__}\n"


def test_help(capsys):
    with pytest.raises(SystemExit) as caught:
        cli.main(["--help"])
    assert caught.value.code == 0
    out = capsys.readouterr().out
    for option in ("--registry", "--image", "--images-file", "--platform", "--workers", "--timeout", "--warning",
                   "--critical", "--verbose", "--version"):
        assert option in out


# -- parse_timeout, normalize_registry -------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("50", (50.0, "unknown")), ("10.5", (10.5, "unknown")), ("30:critical", (30.0, "critical")),
    ("30:CRITICAL", (30.0, "critical")), ("30:ok", (30.0, "ok")), ("30:warning", (30.0, "warning")),
    ("30:", (30.0, "unknown")), ("30:unknown", (30.0, "unknown")),
])
def test_parse_timeout(text, expected):
    assert cli.parse_timeout(text) == expected


@pytest.mark.parametrize("text", ["0", "-5", "abc", "", ":critical", "30:fatal", "86400", "nan", "inf"])
def test_parse_timeout_rejects(text):
    with pytest.raises(UsageError) as caught:
        cli.parse_timeout(text)
    assert str(caught.value).startswith(f"invalid --timeout {text!r}: expected ")


@pytest.mark.parametrize("url, expected", [
    ("127.0.0.1:5000", "https://127.0.0.1:5000"),
    ("docker-registry.example.org", "https://docker-registry.example.org"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ("http://127.0.0.1:5000/", "http://127.0.0.1:5000"),
    ("https://[::1]:5000", "https://[::1]:5000"),
    ("HTTP://127.0.0.1:5000", "http://127.0.0.1:5000"),
])
def test_normalize_registry(url, expected):
    assert cli.normalize_registry(url) == expected


@pytest.mark.parametrize("url", ["https://user:hunter2@127.0.0.1:5000", "user:hunter2@127.0.0.1:5000",
                                 "http://hunter2@127.0.0.1", "https://:hunter2@127.0.0.1"])
def test_normalize_registry_rejects_credentials_without_echo(url):
    with pytest.raises(UsageError) as caught:
        cli.normalize_registry(url)
    assert "hunter2" not in str(caught.value)
    assert "user" not in str(caught.value).replace("credentials", "")
    assert str(caught.value).startswith("credentials in the registry URL are not accepted")


@pytest.mark.parametrize("url, why", [
    ("ftp://127.0.0.1", "expected http(s)://host[:port]"),
    ("http://", "expected http(s)://host[:port]"),
    ("http://127.0.0.1:5000/v2/", "expected no path"),
    ("http://127.0.0.1:5000/?x=1", "expected no path"),
    ("http://127.0.0.1:5000/#top", "expected no path"),
])
def test_normalize_registry_rejects(url, why):
    with pytest.raises(UsageError, match="invalid --registry") as caught:
        cli.normalize_registry(url)
    assert why in str(caught.value)


# -- images files and planning ---------------------------------------------------------------------------

def test_read_images_file(tmp_path):
    path = tmp_path / "images.txt"
    path.write_text("# production images\n\nteam/app:1\n  team/db:2   # the database\n#team/old:0\n   \n",
                    encoding="utf-8")
    assert cli.read_images_file(str(path)) == ["team/app:1", "team/db:2"]


def test_plan_images():
    planned = cli.plan_images(REGISTRY, ["team/app:1", "127.0.0.1:5000/team/db:2", "other.example:443/x/y",
                                         "team/app:1"])
    assert planned == [
        (ImageRef(None, "team/app", "1"), REGISTRY),
        (ImageRef("127.0.0.1:5000", "team/db", "2"), REGISTRY),  # same host: the --registry scheme is kept
        (ImageRef("other.example:443", "x/y", "latest"), "https://other.example:443"),
    ]
    assert cli.plan_images(None, ["localhost:5000/team/app"]) == [
        (ImageRef("localhost:5000", "team/app", "latest"), "https://localhost:5000")]


def test_main_hands_parsed_options_to_run_check(capsys, tmp_path, fake_run):
    images = tmp_path / "images.txt"
    images.write_text("team/db:2\n# comment\nteam/app:1\n", encoding="utf-8")
    code = cli.main(["-R", "127.0.0.1:5000", "-i", "team/app:1", "-f", str(images), "--platform", "linux/arm64/v8",
                     "-j", "8", "-t", "20:critical", "-w", "10", "-c", "15", "-v"])
    assert code == 0
    assert capsys.readouterr().out == "REGISTRY_DEEP OK - fake\n"
    (call,) = fake_run
    assert call["images"] == [(ImageRef(None, "team/app", "1"), "https://127.0.0.1:5000"),
                              (ImageRef(None, "team/db", "2"), "https://127.0.0.1:5000")]
    assert call["seconds"] == 20.0
    assert call["timeout_state"] == "critical"
    assert call["workers"] == 8
    assert call["platforms"] == [Platform("linux", "arm64", "v8")]
    assert (call["warning"], call["critical"], call["verbose"]) == ("10", "15", 1)


def test_main_internal_error_is_one_line(capsys, monkeypatch):
    def explode(options):
        raise RuntimeError("boom | bang")

    monkeypatch.setattr(app_module, "run_check", explode)
    code = cli.main(["-R", REGISTRY, "-i", "team/app"])
    out = capsys.readouterr().out
    assert code == 3
    assert out == "REGISTRY_DEEP UNKNOWN - internal error: RuntimeError: boom / bang\n"


def internal_error_lines(capsys, monkeypatch, message: str):
    def explode(options):
        raise RuntimeError(message)

    monkeypatch.setattr(app_module, "run_check", explode)
    code = cli.main(["-R", REGISTRY, "-i", "team/app", "-vvv"])
    assert code == 3
    return capsys.readouterr().out.splitlines()


def test_main_internal_error_traceback_only_at_vvv_and_not_on_line_1(capsys, monkeypatch):
    lines = internal_error_lines(capsys, monkeypatch, "boom")
    assert lines[0] == "REGISTRY_DEEP UNKNOWN - internal error: RuntimeError: boom"
    assert lines[1] == "Traceback (most recent call last):"
    assert len(lines) > 2


def test_pipe_and_newline_never_reach_the_output_of_an_internal_error(capsys, monkeypatch):
    """states.plain, the one place that escapes: line 1 stays one line without perfdata, the traceback keeps its
    lines but loses its pipes."""
    lines = internal_error_lines(capsys, monkeypatch, "boom | a\nb")
    assert lines[0] == "REGISTRY_DEEP UNKNOWN - internal error: RuntimeError: boom / a b"
    assert lines[1] == "Traceback (most recent call last):"
    assert lines[-1] == "b" and lines[-2] == "RuntimeError: boom / a"
    assert not any("|" in line for line in lines)


def test_main_keyboard_interrupt(capsys, monkeypatch):
    def interrupted(options):
        raise KeyboardInterrupt

    monkeypatch.setattr(app_module, "run_check", interrupted)
    assert cli.main(["-R", REGISTRY, "-i", "team/app"]) == 3
    assert capsys.readouterr().out == "REGISTRY_DEEP UNKNOWN - interrupted\n"
