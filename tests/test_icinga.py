"""Icinga 2: the shipped CheckCommand and examples, validated and run by Debian's real icinga2 daemon.

The daemons run through registry_lab/icinga.py: private directories, 127.0.0.1 only, as `nobody` when the suite
runs as root and `nobody` can run this interpreter. The distributed example runs in tests/test_icinga_distributed.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set

import pytest

from registry_lab import free_port
from registry_lab.icinga import (
    ICINGA2,
    ROOT,
    Instance,
    RunningIcinga,
    assert_valid,
    icinga_array,
    instantiated,
    private_dir,
)
from registry_lab.notify import MAIL_PATH_MISSING, MAIL_PATH_READY, MailSink, mail_text

ICINGA = ROOT / "icinga"
CHECKCOMMAND = ICINGA / "registry-deep.conf"
EXAMPLES = ICINGA / "examples"
NOTIFICATIONS = EXAMPLES / "notifications.conf"
#: The on-call address of the notification examples (Icinga and Nagios alike).
ONCALL = "registry-oncall@example.org"
#: icinga2's own notification script (icinga2-common installs it; the example's NotificationCommand calls it).
MAIL_SCRIPT = Path("/etc/icinga2/scripts/mail-service-notification.sh")
SYSTEM_INCLUDE = Path("/usr/share/icinga2/include")

needs_icinga2 = pytest.mark.skipif(ICINGA2 is None, reason="icinga2 is not installed (tools/debian-packages.txt)")

#: Options every plugin has and no CheckCommand maps (Icinga cannot use their output).
UNMAPPED = {"--help", "--version"}
#: Plugin options whose CheckCommand argument is built by a function rather than a plain "$var$" value.
COUNTED = {"--verbose"}


# ---------------------------------------------------------------------------------------------------- helpers

def itl_mirror(base: Path, extra: Optional[Path]) -> Path:
    """Debian's ITL include dir (links), with `extra` in plugins-contrib.d as the Debian package installs it.

    A registry-deep.conf the system already has (our own package, installed) is left out: `extra` replaces it,
    and nothing is ever written through a link into /usr/share."""
    mirror = base / "include"
    (mirror / "plugins-contrib.d").mkdir(parents=True)
    for item in SYSTEM_INCLUDE.iterdir():
        if item.name != "plugins-contrib.d":
            (mirror / item.name).symlink_to(item)
    for item in (SYSTEM_INCLUDE / "plugins-contrib.d").iterdir():
        if item.name != CHECKCOMMAND.name:
            (mirror / "plugins-contrib.d" / item.name).symlink_to(item)
    if extra is not None:
        (mirror / "plugins-contrib.d" / CHECKCOMMAND.name).write_text(extra.read_text())
    return mirror


DEBIAN_INCLUDES = """
include <itl>
include <plugins>
include <plugins-contrib>
include <manubulon>
include <windows-plugins>
include <nscp>
"""


# ----------------------------------------------------------------------------------------- CheckCommand text

def checkcommand_arguments(text: str) -> Dict[str, str]:
    """The CheckCommand's arguments as {key: body} (the shipped file keeps one argument per indented block)."""
    match = re.search(r'object CheckCommand "registry_deep" \{(.*)\n\}', text, re.S)
    assert match, "no CheckCommand registry_deep"
    block = re.search(r"\n\targuments = \{\n(.*?)\n\t\}\n", match.group(1), re.S)
    assert block, "no arguments block"
    return dict(re.findall(r'^\t\t"([^"]+)" = \{\n(.*?)^\t\t\}$', block.group(1), re.S | re.M))


def help_options() -> Dict[str, dict]:
    """Every option of the plugin's --help, keyed by its long form: {"--images-file": {metavar, repeatable}}."""
    done = subprocess.run([sys.executable, "-m", "check_registry_deep", "--help"], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    options: Dict[str, dict] = {}
    current = None
    for line in done.stdout.splitlines():
        spec = re.match(r"^  (-\S.*?)(?:  +(.*))?$", line)
        if spec:
            forms = [form.strip() for form in spec.group(1).split(", ")]
            names = [form.split(" ")[0] for form in forms]
            long_names = [name for name in names if name.startswith("--")]
            assert long_names, f"option without a long form: {line!r} (the CheckCommand maps long options)"
            # "-R URL, --registry URL" up to Python 3.12; "-R, --registry URL" from 3.13 on
            current = {"metavar": any(" " in form for form in forms), "help": spec.group(2) or ""}
            options[long_names[0]] = current
        elif current is not None and re.match(r"^ {10,}\S", line):
            current["help"] += " " + line.strip()
        else:
            current = None
    assert "--registry" in options and "--image" in options, done.stdout
    return options


def var_name(option: str) -> str:
    return "registry_deep_" + option.lstrip("-").replace("-", "_")


# --------------------------------------------------------------------------------------------------- no drift

def test_every_plugin_option_has_a_checkcommand_argument_and_back():
    options = help_options()
    arguments = checkcommand_arguments(CHECKCOMMAND.read_text())
    wanted = set(options) - UNMAPPED
    missing = sorted(wanted - set(arguments))
    extra = sorted(set(arguments) - wanted)
    assert not missing, f"plugin options without a CheckCommand argument in {CHECKCOMMAND}: {missing}"
    assert not extra, f"CheckCommand arguments the plugin's --help does not list: {extra}"

    orders = []
    for option, body in arguments.items():
        var = var_name(option)
        help_text = options[option]["help"]
        assert "description = " in body, f"{option}: no description"
        order = re.search(r"^\t\t\torder = (-?\d+)$", body, re.M)
        assert order, f"{option}: no order"
        orders.append(int(order.group(1)))
        if option in COUNTED:
            assert f'set_if = "${var}$"' in body and f'macro("${var}$")' in body, body
        elif options[option]["metavar"]:
            assert re.search(rf'^\t\t\tvalue = "\${var}\$"$', body, re.M), f"{option}: value must be ${var}$"
            if "repeatable" in help_text:
                assert "repeat_key = true" in body, f"{option} is repeatable: arrays need repeat_key = true"
        else:
            assert re.search(rf'^\t\t\tset_if = "\${var}\$"$', body, re.M), f"{option} is a flag: set_if = ${var}$"
    assert len(set(orders)) == len(orders), "each argument gets its own order: the command line reads naturally"


def test_checkcommand_timeout_stays_above_the_plugin_deadline():
    text = CHECKCOMMAND.read_text()
    timeout = int(re.search(r"^\ttimeout = (\d+)$", text, re.M).group(1))
    deadline = int(re.search(r"^\tvars\.registry_deep_timeout = (\d+)$", text, re.M).group(1))
    help_default = int(re.search(r"\(default (\d+)\)", help_options()["--timeout"]["help"]).group(1))
    assert deadline == help_default
    assert timeout >= deadline + 5, "the plugin must report before Icinga kills it"
    assert PLUGIN_CONTRIB_COMMAND in text
    assert not re.search(r"^\s*(object|apply|template) (?!CheckCommand \"registry_deep\")", text, re.M), \
        "the shipped file is loaded into every set-up: no hosts, services or templates in it"


PLUGIN_CONTRIB_COMMAND = 'command = [ PluginContribDir + "/check_registry_deep" ]'


# ------------------------------------------------------------------------------------------------ validation

@needs_icinga2
def test_checkcommand_validates_standalone(scratch):
    instance = Instance(scratch)
    instance.write(f'include "{CHECKCOMMAND}"\n')
    output = assert_valid(instance.validate())
    assert instantiated(output).get("CheckCommand") == 1, output


@needs_icinga2
def test_checkcommand_loads_as_an_itl_contrib_include_without_colliding(scratch):
    plain = Instance(scratch / "plain", include_dir=itl_mirror(scratch / "plain", None))
    plain.write(DEBIAN_INCLUDES)
    itl_commands = instantiated(assert_valid(plain.validate()))["CheckCommand"]

    instance = Instance(scratch / "contrib", include_dir=itl_mirror(scratch / "contrib", CHECKCOMMAND))
    instance.write(DEBIAN_INCLUDES)
    output = assert_valid(instance.validate())
    assert instantiated(output)["CheckCommand"] == itl_commands + 1, output

    # The control: the same file under a name the ITL already uses is refused, so the check above is real.
    clash = scratch / "clash" / "registry-deep.conf"
    clash.parent.mkdir()
    clash.write_text(CHECKCOMMAND.read_text().replace('"registry_deep"', '"disk"'))
    instance = Instance(scratch / "clash", include_dir=itl_mirror(scratch / "clash", clash))
    instance.write(DEBIAN_INCLUDES)
    done = instance.validate()
    assert done.returncode != 0 and "Object 'disk' of type 'CheckCommand' re-defined" in done.stdout, done.stdout


@needs_icinga2
def test_service_examples_validate_with_the_itl(scratch):
    instance = Instance(scratch)
    instance.write(f'include <itl>\ninclude <plugins>\ninclude "{CHECKCOMMAND}"\n'
                   f'include "{EXAMPLES / "services.conf"}"\ninclude "{NOTIFICATIONS}"\n')
    counts = instantiated(assert_valid(instance.validate()))
    # Two registries: one with two sentinel sets, one with one; a notification for each of the three services.
    assert counts.get("Service") == 3, counts
    assert counts.get("Notification") == 3, counts


# ------------------------------------------------------------------------------------------------ end to end

E2E_SERVICE = "registry!registry-deep"


@contextmanager
def e2e_icinga(damaged, lab, mail: Optional[MailSink] = None) -> Iterator[RunningIcinga]:
    """icinga2 in the foreground, API on a free loopback port, one service using the shipped CheckCommand
    against the private `damaged` registry. With `mail`, also the shipped notifications.conf, icinga2's own
    mail-service-notification.sh in its ConfigDir/scripts, and a HOME whose ~/.msmtprc makes Debian's sendmail
    (msmtp-mta) deliver to `mail`. Always stopped, whatever the test does."""
    if ICINGA2 is None:
        pytest.skip("icinga2 is not installed (tools/debian-packages.txt)")
    base = private_dir("icinga-e2e-")
    instance = Instance(base)
    instance.sign(instance)
    port = free_port()
    password = os.urandom(12).hex()
    refs = lab.images.refs()
    files = []
    for index, chunk in enumerate((refs[4:6], refs[6:])):  # the rest of the refs come from files, two of them
        path = base / f"images-{index}.txt"
        path.write_text("# sentinel images\n" + "\n".join(chunk) + "\n")
        files.append(str(path))
    instance.write(f"""
include <itl>
include "{CHECKCOMMAND}"

object Endpoint NodeName {{ host = "127.0.0.1" }}
object Zone ZoneName {{ endpoints = [ NodeName ] }}
object ApiListener "api" {{
	bind_host = "127.0.0.1"
	bind_port = {port}
}}
object ApiUser "root" {{
	password = "{password}"
	permissions = [ "*" ]
}}
object CheckerComponent "checker" {{ }}

object Host "registry" {{
	check_command = "dummy"
	enable_active_checks = false
	address = "127.0.0.1"
}}
object Service "registry-deep" {{
	host_name = "registry"
	check_command = "registry_deep"
	check_interval = 1h
	max_check_attempts = 1
	vars.registry_deep_registry = "{damaged.url}"
	vars.registry_deep_image = {icinga_array(refs[:4])}
	vars.registry_deep_images_file = {icinga_array(files)}
	vars.registry_deep_workers = 3
	vars.registry_deep_warning = 30
	vars.registry_deep_critical = 40
	vars.registry_deep_verbose = 1
}}
""" + (NOTIFYING.format(notifications=NOTIFICATIONS) if mail else ""))
    env = None
    if mail:
        (instance.etc / "scripts").mkdir()
        shutil.copy(MAIL_SCRIPT, instance.etc / "scripts")
        env = {**os.environ, "HOME": str(mail.msmtp_home(base / "home", "icinga@localhost"))}
    running = RunningIcinga(instance, port, password, env)
    try:
        running.start()
        yield running
    finally:
        running.stop()
        shutil.rmtree(base, ignore_errors=True)


NOTIFYING = """
include "{notifications}"
object NotificationComponent "notification" {{ }}
"""


@pytest.fixture
def icinga(damaged, lab) -> Iterator[RunningIcinga]:
    with e2e_icinga(damaged, lab) as running:
        yield running


def test_icinga_runs_the_check_ok_then_critical_when_the_golden_layer_breaks(icinga, damaged, lab):
    result = icinga.force_check(E2E_SERVICE)
    output = result["output"]
    assert result["state"] == 0, output
    assert result["exit_status"] == 0, output
    assert output.startswith("REGISTRY_DEEP OK - 9 images, 22 blobs, "), output
    assert len([line for line in output.splitlines() if line.startswith("image ")]) == 11, output  # -v

    # The command line Icinga built from the vars: natural order, arrays repeating their key, -v from a number.
    refs = lab.images.refs()
    command = result["command"]
    assert command[0] == str(icinga.instance.contrib / "check_registry_deep")
    assert command[1:] == ["--registry", damaged.url, *[arg for ref in refs[:4] for arg in ("--image", ref)],
                           "--images-file", str(icinga.instance.base / "images-0.txt"),
                           "--images-file", str(icinga.instance.base / "images-1.txt"),
                           "--workers", "3", "--timeout", "50", "--warning", "30", "--critical", "40", "-v"], command

    # Icinga split the perfdata into its labels, and its own parser reads each one with unit and thresholds.
    labels = [item.split("=", 1)[0] for item in result["performance_data"]]
    assert labels == ["blobs", "bytes", "failed", "images", "retries", "time"], result["performance_data"]
    parsed = icinga.evaluate(
        'var r = get_service("registry", "registry-deep").last_check_result; '
        'r.performance_data.map(p => { var v = parse_performance_data(p); '
        '{ label = v.label, value = v.value, unit = v.unit, min = v.min, warn = v.warn, crit = v.crit } })')
    by_label = {item["label"]: item for item in parsed}
    assert by_label["images"]["value"] == 9 and by_label["blobs"]["value"] == 22
    assert by_label["failed"]["value"] == 0 and by_label["failed"]["min"] == 0
    assert by_label["bytes"]["value"] == 3410649 and by_label["bytes"]["unit"] == "bytes"
    assert by_label["time"]["unit"] == "seconds" and by_label["time"]["warn"] == 30 and by_label["time"]["crit"] == 40

    golden = lab.images.golden.digest
    damaged.truncate_blob(golden, 4096)
    result = icinga.force_check(E2E_SERVICE)
    output = result["output"]
    assert result["state"] == 2, output
    assert output.startswith("REGISTRY_DEEP CRITICAL - 1 broken blob, breaking 8 of 9 images: layer "), output
    blast = [line for line in output.splitlines() if line.startswith(f"CRITICAL: layer {golden}: truncated")]
    assert blast, output
    for ref in lab.images.referencing(golden):
        assert ref in blast[0], (ref, blast[0])
    assert "failed=1;;;0" in result["performance_data"], result["performance_data"]
    state = icinga.service(E2E_SERVICE, ["state", "state_type", "last_hard_state"])
    assert state["state"] == 2 and state["state_type"] == 1, state  # max_check_attempts 1: a HARD CRITICAL


@needs_icinga2
def test_icinga_shows_a_missing_required_option_as_the_plugin_unknown(scratch):
    """`required` is only enforced at check time, so the CheckCommand does not rely on it: the plugin answers
    UNKNOWN with its own message when a service forgets the images."""
    instance = Instance(scratch)
    instance.write(f'include "{CHECKCOMMAND}"\n'
                   'object Host "h" { check_command = "registry_deep" }\n')
    assert_valid(instance.validate())  # -C cannot tell: the check has no images, yet the configuration is valid
    wrapper = instance.contrib / "check_registry_deep"
    done = subprocess.run([str(wrapper), "--timeout", "50"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3 and done.stdout.startswith("REGISTRY_DEEP UNKNOWN - "), done.stdout


@needs_icinga2
def test_readme_icinga_example_validates(scratch):
    """The README's apply rule, as written, with a host that carries the var it needs."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Icinga 2", 1)[1].split("\n## ", 1)[0]
    snippet = re.search(r"```\n(apply Service .*?)```", section, re.S).group(1)
    host = ('object Host "registry.example.org" {\n\tcheck_command = "dummy"\n'
            '\tvars.registry_url = "https://registry.example.org"\n}\n')
    instance = Instance(scratch)
    instance.write(f'include <itl>\ninclude <plugins>\ninclude "{CHECKCOMMAND}"\n{host}{snippet}')
    counts = instantiated(assert_valid(instance.validate()))
    assert counts.get("Service") == 1, counts


# ------------------------------------------------------------------------------------------- notifications

def notification_command(text: str, name: str) -> Dict[str, Dict[str, str]]:
    """A NotificationCommand's `arguments` and `env` as {"arguments": {"-e": "$service.name$"}, "env": {...}}
    (the shipped examples write one `KEY = "value"` a line)."""
    block = re.search(rf'^object NotificationCommand "{name}" \{{\n(.*?)^\}}$', text, re.S | re.M)
    assert block, f"no NotificationCommand {name}"
    parts: Dict[str, Dict[str, str]] = {"arguments": {}, "env": {}}
    for part in parts:
        found = re.search(rf"^\t{part} = \{{\n(.*?)^\t\}}$", block.group(1), re.S | re.M)
        if found:
            parts[part] = dict(re.findall(r'^\t\t"?([-\w]+)"? = "([^"]*)"$', found.group(1), re.M))
    return parts


def script_interface(script: str) -> Dict[str, object]:
    """What a notification script reads: {"options": {"-e": "SERVICENAME"}, "required": {...},
    "macros": {"SERVICENAME": "$service.name$"}} from its getopts cases, its loop over the required parameters,
    and its usage text (`-e SERVICENAME (\\$service.name\\$)`)."""
    options = {f"-{letter}": var for letter, var in re.findall(r"^\s+(\w)\) (\w+)=\$OPTARG ;;", script, re.M)}
    required = re.search(r"^for P in ([\w ]+?) ; do$", script, re.M)
    assert options and required, "not a script of the shape icinga2 ships (getopts cases, a required loop)"
    macros = dict(re.findall(r"^  -\w (\w+) \(\\(\$[\w.]+)\\\$", script, re.M))
    return {"options": options, "required": set(required.group(1).split()),
            "macros": {var: macro + "$" for var, macro in macros.items()}}


def mismatches(command: Dict[str, Dict[str, str]], script: str) -> List[str]:
    """How a NotificationCommand's arguments and env fail the script it calls: [] when they fit."""
    interface = script_interface(script)
    options: Dict[str, str] = interface["options"]  # type: ignore[assignment]
    required: Set[str] = interface["required"]  # type: ignore[assignment]
    macros: Dict[str, str] = interface["macros"]  # type: ignore[assignment]
    problems = [f"the script has no option {key}" for key in command["arguments"] if key not in options]
    problems += [f"the script reads no variable {key}" for key in command["env"]
                 if key not in set(options.values())]
    passed = {options[key]: value for key, value in command["arguments"].items() if key in options}
    passed.update(command["env"])
    problems += [f"required {var} is not passed" for var in sorted(required - set(passed))]
    problems += [f"{var} gets {value}, the script documents {macros[var]}" for var, value in passed.items()
                 if var in macros and value != macros[var]]
    return problems


needs_mail_script = pytest.mark.skipif(not MAIL_SCRIPT.exists(), reason=f"{MAIL_SCRIPT} is not installed (icinga2)")


@needs_mail_script
def test_the_example_notification_command_passes_what_icingas_mail_script_reads():
    command = notification_command(NOTIFICATIONS.read_text(), "registry-deep-mail")
    assert mismatches(command, MAIL_SCRIPT.read_text()) == []


@needs_mail_script
def test_a_notification_command_that_misnames_a_variable_is_caught():
    """The control, and the bug the example had: SERVICEDESC (the Nagios macro's name) where the script reads
    SERVICENAME; `icinga2 daemon -C` accepts it, and the script exits 1 on every notification."""
    env = {"NOTIFICATIONTYPE": "$notification.type$", "SERVICEDESC": "$service.name$", "HOSTNAME": "$host.name$",
           "HOSTDISPLAYNAME": "$host.display_name$", "SERVICEDISPLAYNAME": "$service.display_name$",
           "SERVICESTATE": "$service.state$", "LONGDATETIME": "$icinga.long_date_time$",
           "SERVICEOUTPUT": "$service.output$", "USEREMAIL": "$user.email$"}
    assert mismatches({"arguments": {}, "env": env}, MAIL_SCRIPT.read_text()) == [
        "the script reads no variable SERVICEDESC", "required SERVICENAME is not passed"]
    # -q: an option no version of the script has (icinga2 2.14, trixie's, added -x and -X for the notes)
    assert mismatches({"arguments": {"-e": "$service.display_name$", "-q": "$host.name$"}, "env": {}},
                      MAIL_SCRIPT.read_text())[:2] == [
        "the script has no option -q", "required HOSTDISPLAYNAME is not passed"]


@needs_mail_script
@pytest.mark.skipif(not MAIL_PATH_READY, reason=MAIL_PATH_MISSING)
def test_icinga_mails_the_whole_output_when_the_golden_layer_breaks(damaged, lab, tmp_path):
    """icinga2 -> the example's NotificationCommand -> icinga2's mail-service-notification.sh -> mail (bsd-mailx)
    -> Debian's sendmail (msmtp-mta, ~/.msmtprc of the daemon's HOME) -> SMTP on 127.0.0.1 (aiosmtpd)."""
    with MailSink(tmp_path / "smtp") as mail, e2e_icinga(damaged, lab, mail) as icinga:
        assert icinga.force_check(E2E_SERVICE)["state"] == 0
        golden = lab.images.golden.digest
        damaged.truncate_blob(golden, 4096)
        output = icinga.force_check(E2E_SERVICE)["output"]
        assert output.startswith("REGISTRY_DEEP CRITICAL - 1 broken blob, breaking 8 of 9 images: layer "), output
        message = mail.wait_for_message(ONCALL, log=icinga.output)
    text = mail_text(message)
    assert message["Subject"] == "[PROBLEM] registry-deep on registry is CRITICAL!"
    assert f"\nInfo:    {output}\n" in text, text  # every line the plugin printed, as Icinga recorded it
    blast = next(line for line in text.splitlines() if line.startswith(f"CRITICAL: layer {golden}: truncated"))
    assert all(ref in blast for ref in lab.images.referencing(golden)), blast
    assert "\nService: registry-deep\nHost:    registry\n" in text, text
    assert len(mail.messages(ONCALL)) == 1
