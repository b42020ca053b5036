"""Nagios 4: the shipped command definitions and service example, validated and run by Debian's real nagios4.

The main configuration is Debian's own /etc/nagios4/nagios.cfg with its paths moved into a temporary directory,
/etc/nagios-plugins/config/ replaced by a copy that holds our command file (where the Debian package puts it), and
nagios_user set to the invoking user (`nagios4 -v` as root refuses the default otherwise).
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pytest

from registry_lab.icinga import plugin_wrapper
from registry_lab.notify import MAIL_PATH_MISSING, MAIL_PATH_READY, MailSink, mail_text

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = ROOT / "nagios" / "check_registry_deep.cfg"
SERVICES = ROOT / "nagios" / "examples" / "registry-deep-services.cfg"
NOTIFICATIONS = ROOT / "nagios" / "examples" / "registry-deep-notifications.cfg"
ONCALL = "registry-oncall@example.org"  # the example contact's address
NAGIOS4 = shutil.which("nagios4") or (os.path.exists("/usr/sbin/nagios4") and "/usr/sbin/nagios4") or None
DEBIAN_MAIN = Path("/etc/nagios4/nagios.cfg")
PLUGIN_CONFIG = Path("/etc/nagios-plugins/config")

pytestmark = pytest.mark.skipif(NAGIOS4 is None or not DEBIAN_MAIN.exists(),
                                reason="nagios4 is not installed (tools/debian-packages.txt)")

#: Settings of Debian's nagios.cfg that name a file or directory the daemon writes.
STATE_PATHS = ("log_file", "object_cache_file", "precached_object_file", "status_file", "command_file", "lock_file",
               "temp_file", "temp_path", "state_retention_file", "check_result_path", "log_archive_path",
               "debug_file", "query_socket")


def nagios_config(base: Path, objects: List[Path], overrides: Dict[str, str] | None = None, *,
                  ours: bool = True) -> Path:
    """Debian's nagios.cfg, its state in `base`, our command file in the plugin config dir, `objects` added."""
    plugin_config = base / "nagios-plugins-config"
    plugin_config.mkdir()
    for item in PLUGIN_CONFIG.glob("*.cfg"):
        if item.name != COMMANDS.name:  # our own package, installed: ours replaces it
            shutil.copy(item, plugin_config)
    if ours:
        shutil.copy(COMMANDS, plugin_config)
    (base / "var" / "checkresults").mkdir(parents=True)
    (base / "var" / "archives").mkdir()
    (base / "var" / "tmp").mkdir()
    resource = base / "resource.cfg"
    resource.write_text(f"$USER1$={plugin_wrapper(base / 'plugins')}\n")
    settings = {
        "cfg_dir=/etc/nagios-plugins/config": f"cfg_dir={plugin_config}",
        "resource_file": str(resource),
        "nagios_user": pwd.getpwuid(os.geteuid()).pw_name,
        "nagios_group": grp.getgrgid(os.getegid()).gr_name,
        "use_syslog": "0",
        **(overrides or {}),
    }
    lines = []
    for line in DEBIAN_MAIN.read_text().splitlines():
        key, _, value = line.partition("=")
        if line in settings:
            line = settings[line]
        elif key in settings:
            line = f"{key}={settings.pop(key)}"
        elif key in STATE_PATHS:
            line = f"{key}={base / 'var' / Path(value).name}"
        lines.append(line)
    lines += [f"{key}={value}" for key, value in settings.items() if not key.startswith("cfg_dir=")]
    lines += [f"cfg_file={path}" for path in objects]
    main = base / "nagios.cfg"
    main.write_text("\n".join(lines) + "\n")
    return main


def verify(main: Path) -> subprocess.CompletedProcess:
    return subprocess.run([NAGIOS4, "-v", str(main)], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


def checked(output: str) -> Dict[str, int]:
    """`Checked 10 services.` lines of `nagios4 -v`, as {"services": 10}."""
    return {kind: int(number) for number, kind in re.findall(r"^\s*Checked (\d+) ([a-z ]+)\.$", output, re.M)}


def test_command_file_and_service_example_pass_nagios4_verification(tmp_path):
    (tmp_path / "debian").mkdir()
    (tmp_path / "ours").mkdir()
    debian = verify(nagios_config(tmp_path / "debian", [], ours=False))
    done = verify(nagios_config(tmp_path / "ours", [SERVICES, NOTIFICATIONS]))
    for run in (debian, done):
        assert run.returncode == 0, run.stdout + run.stderr
        assert re.search(r"Total Warnings: 0\s+Total Errors:\s+0", run.stdout), run.stdout
    before, after = checked(debian.stdout), checked(done.stdout)
    assert after["services"] == before["services"] + 2, done.stdout
    assert after["hosts"] == before["hosts"] + 1, done.stdout
    # the command files, loaded from cfg_dir (ours: three), and the notification command
    assert after["commands"] == before["commands"] + 4, done.stdout
    assert after["contacts"] == before["contacts"] + 1, done.stdout


def test_command_names_do_not_collide_with_debians_plugin_configs():
    ours = set(re.findall(r"^\s*command_name\s+(\S+)", COMMANDS.read_text(), re.M))
    assert ours == {"check_registry_deep", "check_registry_deep_image", "check_registry_deep_signed"}
    theirs = set()
    for item in PLUGIN_CONFIG.glob("*.cfg"):
        if item.name == COMMANDS.name:
            continue
        theirs |= set(re.findall(r"^\s*command_name\s+(\S+)", item.read_text(errors="replace"), re.M))
    theirs |= set(re.findall(r"^\s*command_name\s+(\S+)", Path("/etc/nagios4/objects/commands.cfg").read_text(),
                             re.M))
    assert not ours & theirs
    assert all(line.split()[1] == "$USER1$/check_registry_deep"
               for line in re.findall(r"^\s*command_line\s+.*$", COMMANDS.read_text(), re.M))


# ------------------------------------------------------------------------------------------------ end to end

def status_block(status: Path, host: str, service: str) -> Dict[str, str]:
    if not status.exists():
        return {}
    for block in re.findall(r"servicestatus \{\n(.*?)\n\s*\}", status.read_text(errors="replace"), re.S):
        fields = dict(line.strip().split("=", 1) for line in block.splitlines() if "=" in line)
        if fields.get("host_name") == host and fields.get("service_description") == service:
            return fields
    return {}


@contextmanager
def e2e_nagios(tmp_path: Path, damaged, lab, mail: Optional[MailSink] = None) -> Iterator[dict]:
    """nagios4 in the foreground with one service on the private `damaged` registry. With `mail`, the service
    notifies the shipped example's contact group, and the daemon's HOME holds an ~/.msmtprc that makes Debian's
    sendmail (msmtp-mta) deliver to `mail`. Always stopped."""
    images = tmp_path / "sentinels.images"
    images.write_text("# sentinel images\n" + "\n".join(lab.images.refs()) + "\n")
    objects = tmp_path / "e2e.cfg"
    objects.write_text(f"""
define host {{
    use                     generic-host
    host_name               registry
    address                 127.0.0.1
    check_command           return-ok
    contact_groups          admins
    active_checks_enabled   0
    max_check_attempts      1
}}
define service {{
    use                     generic-service
    host_name               registry
    service_description     Registry deep check
    check_command           check_registry_deep!{damaged.url}!{images}!--timeout 50 --warning 30
    check_interval          60
    max_check_attempts      1
    notifications_enabled   {1 if mail else 0}
    contact_groups          {"registry-oncall" if mail else "admins"}
}}
""")
    main = nagios_config(tmp_path, [objects, *([NOTIFICATIONS] if mail else [])],
                         {"check_result_reaper_frequency": "1", "status_update_interval": "1",
                          "log_initial_states": "0", "max_service_check_spread": "1"})
    done = verify(main)
    assert done.returncode == 0, done.stdout
    env = {**os.environ, "HOME": str(mail.msmtp_home(tmp_path / "home", "nagios@localhost"))} if mail else None
    with open(tmp_path / "nagios4.out", "wb") as log:
        process = subprocess.Popen([NAGIOS4, str(main)], stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True, env=env)
    try:
        yield {"process": process, "var": tmp_path / "var", "log": tmp_path / "nagios4.out"}
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=15)


@pytest.fixture
def nagios(tmp_path, damaged, lab) -> Iterator[dict]:
    with e2e_nagios(tmp_path, damaged, lab) as running:
        yield running


def force_check(nagios: dict, host: str, service: str, wait: float = 45.0) -> Dict[str, str]:
    status, command_file = nagios["var"] / "status.dat", nagios["var"] / "nagios.cmd"
    previous = status_block(status, host, service).get("last_check", "0")
    deadline = time.monotonic() + wait
    while not command_file.exists() and time.monotonic() < deadline:
        assert nagios["process"].poll() is None, nagios["log"].read_text()
        time.sleep(0.1)
    now = int(time.time())
    fd = os.open(command_file, os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(fd, f"[{now}] SCHEDULE_FORCED_SVC_CHECK;{host};{service};{now}\n".encode())
    finally:
        os.close(fd)
    while time.monotonic() < deadline:
        fields = status_block(status, host, service)
        if fields.get("has_been_checked") == "1" and fields.get("last_check", "0") not in ("0", previous):
            return fields
        assert nagios["process"].poll() is None, nagios["log"].read_text()
        time.sleep(0.2)
    raise AssertionError(f"no check result within {wait}s: {status_block(status, host, service)}")


def test_nagios_runs_the_command_ok_then_critical_when_the_golden_layer_breaks(nagios, damaged, lab):
    fields = force_check(nagios, "registry", "Registry deep check")
    assert fields["current_state"] == "0", fields
    assert fields["plugin_output"].startswith("REGISTRY_DEEP OK - 9 images, 22 blobs, "), fields
    assert re.search(r"time=[0-9.]+s;30;;0", fields["performance_data"]), fields

    golden = lab.images.golden.digest
    damaged.truncate_blob(golden, 4096)
    fields = force_check(nagios, "registry", "Registry deep check")
    assert fields["current_state"] == "2", fields
    assert fields["plugin_output"].startswith("REGISTRY_DEEP CRITICAL - 1 broken blob, breaking 8 of 9 images"), fields
    long_output = fields["long_plugin_output"].replace("\\n", "\n")
    blast = [line for line in long_output.splitlines() if line.startswith(f"CRITICAL: layer {golden}: truncated")]
    assert blast, long_output
    for ref in lab.images.referencing(golden):
        assert ref in blast[0]


@pytest.mark.skipif(not MAIL_PATH_READY, reason=MAIL_PATH_MISSING)
def test_nagios_mails_the_long_output_when_the_golden_layer_breaks(tmp_path, damaged, lab):
    """nagios4 -> the example's notify-service-by-email-long (printf | mail, as Debian's own command) -> bsd-mailx
    -> Debian's sendmail (msmtp-mta, ~/.msmtprc of the daemon's HOME) -> SMTP on 127.0.0.1 (aiosmtpd)."""
    with MailSink(tmp_path / "smtp") as mail, e2e_nagios(tmp_path, damaged, lab, mail) as nagios:
        assert force_check(nagios, "registry", "Registry deep check")["current_state"] == "0"
        golden = lab.images.golden.digest
        damaged.truncate_blob(golden, 4096)
        fields = force_check(nagios, "registry", "Registry deep check")
        assert fields["current_state"] == "2", fields
        message = mail.wait_for_message(ONCALL, log=lambda: nagios["log"].read_text())
    text = mail_text(message)
    assert message["Subject"] == "** PROBLEM Service Alert: registry/Registry deep check is CRITICAL **"
    first = fields["plugin_output"]
    assert first.startswith("REGISTRY_DEEP CRITICAL - 1 broken blob, breaking 8 of 9 images: layer "), first
    long_output = fields["long_plugin_output"].replace("\\n", "\n")
    assert f"Additional Info:\n\n{first}\n{long_output}\n" in text, text  # line 1, then every other line
    blast = next(line for line in text.splitlines() if line.startswith(f"CRITICAL: layer {golden}: truncated"))
    assert all(ref in blast for ref in lab.images.referencing(golden)), blast
    assert "\nService: Registry deep check\nHost: registry\n" in text, text
    assert len(mail.messages(ONCALL)) == 1
