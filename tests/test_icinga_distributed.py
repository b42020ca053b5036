"""Icinga 2 distributed: the example of icinga/examples/distributed/, deployed as docs/icinga.md tells a user to,
validated, and run by a real cluster of icinga2 2.13 daemons on 127.0.0.1.

The cluster (module-scoped, started once): a master and two satellites, each an unprivileged `icinga2 daemon`
with its own directories and API port, certificates from `icinga2 pki` with the master as the CA. The master gets
the example's files with only hosts, ports, URLs and images changed; the satellites get the same zones.conf and an
ApiListener, nothing else: the CheckCommand reaches them by config sync only. `satellite-east` accepts config;
`satellite-west` does not (`accept_config` forgotten), the failure mode a user meets first.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, Optional

import pytest

from registry_lab import LocalRegistry, free_port
from registry_lab.icinga import (
    ICINGA2,
    ROOT,
    Instance,
    RunningIcinga,
    assert_valid,
    icinga_array,
    instantiated,
    poll,
    private_dir,
)

CHECKCOMMAND = ROOT / "icinga" / "registry-deep.conf"
DOCS = ROOT / "docs" / "icinga.md"
DISTRIBUTED = ROOT / "icinga" / "examples" / "distributed"
MASTER, EAST, WEST = "master1.example.org", "satellite-east.example.org", "satellite-west.example.org"
EAST_DEEP, WEST_DEEP = "registry.east.example.org!registry-deep", "registry.west.example.org!registry-deep"
EAST_SATELLITE = "registry.east.example.org!satellite"

needs_icinga2 = pytest.mark.skipif(ICINGA2 is None, reason="icinga2 is not installed (tools/debian-packages.txt)")


# ------------------------------------------------------------------------------------- deploying, as the docs say

def deploy_on_master(etc: Path) -> Path:
    """docs/icinga.md's commands on the master, run as written there, with `etc` for /etc/icinga2 (which Debian
    ships with an empty zones.d/); the zones.d folder. A symlink in the example would be copied by `cp -r` as a
    link pointing nowhere, as for a user."""
    steps = DOCS.read_text().split("2. **On the master**", 1)[1]
    block = re.search(r"```sh\n(.*?)```", steps, re.S)
    assert block, "docs/icinga.md: no commands for the master"
    commands = [line.strip() for line in block.group(1).splitlines() if line.strip()]
    assert commands and all(command.startswith("cp ") for command in commands), commands
    zones_d = etc / "zones.d"
    zones_d.mkdir(parents=True, exist_ok=True)
    subprocess.run(["sh", "-ec", "\n".join(commands).replace("/etc/icinga2", str(etc))], cwd=ROOT, check=True,
                   timeout=60)
    return zones_d


def edit(path: Path, replacements: Dict[str, str]) -> None:
    """A user's edit: each old text must be in the file (else the example changed under the test)."""
    text = path.read_text()
    for old, new in replacements.items():
        assert old in text, f"{path.name} no longer has {old!r}"
        text = text.replace(old, new)
    path.write_text(text)


def endpoint(name: str, host: str, port: int) -> str:
    return f'object Endpoint "{name}" {{\n\thost = "{host}"\n\tport = {port}\n}}'


def place_satellites(zones_conf: Path, ports: Dict[str, int]) -> None:
    """zones.conf: each satellite's host and port (the master connects to them)."""
    edit(zones_conf, {endpoint(name, name, 5665): endpoint(name, "127.0.0.1", port) for name, port in ports.items()})


def point_at_lab(registries_conf: Path, registry: LocalRegistry, public_url: str, images: str) -> None:
    """registries.conf: the lab's registry for every URL and backend, the lab's sentinel images for every host."""
    edit(registries_conf, {
        '"https://registry.example.org"': f'"{public_url}"',  # reachable only through the backend (--connect-to)
        '"192.0.2.10:443"': f'"{registry.host}"',
        '"198.51.100.10:443"': f'"{registry.host}"',
        '"https://cache.east.example.org:5000"': f'"{registry.url}"',
        '"https://cache.west.example.org:5000"': f'"{registry.url}"',
        '[ "base/debian:12", "apps/web:1.0" ]': images,
        '[ "base/debian:12" ]': images,
    })
    assert not re.search(r'"https?://[^"]*example\.org', registries_conf.read_text()), "a URL left to edit"


def satellite_listener() -> str:
    """docs/icinga.md's ApiListener settings for a satellite, as written there (comments left out)."""
    steps = DOCS.read_text().split("3. **On each satellite**", 1)[1]
    block = re.search(r'object ApiListener "api" \{\n(.*?)\n\s*\}', steps, re.S)
    assert block, "docs/icinga.md: no ApiListener for the satellites"
    settings = [line.split("/*")[0].strip() for line in block.group(1).splitlines()]
    return "".join(f"\t{setting}\n" for setting in settings if setting)


def test_the_example_names_every_setting_a_satellite_needs():
    """The example's comment and docs/icinga.md list the same ApiListener settings, accept_config among them."""
    comment = (DISTRIBUTED / "master" / "zones.d" / "master" / "services.conf").read_text()
    settings = [line.strip() for line in satellite_listener().splitlines()]
    assert "accept_config = true" in settings and "accept_commands = true" in settings, settings
    missing = [setting for setting in settings if setting not in comment]
    assert not missing, f"services.conf does not name {missing}"


def test_the_example_has_no_links():
    """A link in the example breaks when a user copies the tree (`cp -r` copies the link, which then points
    nowhere, and icinga2 skips it without a word)."""
    links = [str(path) for path in DISTRIBUTED.rglob("*") if path.is_symlink()]
    assert not links, links


@needs_icinga2
def test_distributed_example_validates_on_the_master_once_the_command_is_copied(scratch):
    instance = Instance(scratch, node=MASTER)
    zones_d = deploy_on_master(instance.etc)
    assert not [item for item in zones_d.iterdir() if item.is_file()], "files directly in zones.d/ are ignored"
    zone_dirs = {item.name for item in zones_d.iterdir()}
    zone_names = set(re.findall(r'^object Zone "([^"]+)"', (DISTRIBUTED / "zones.conf").read_text(), re.M))
    assert zone_dirs <= zone_names, f"zones.d folders named after no zone are ignored: {zone_dirs - zone_names}"
    instance.write('include "zones.conf"\ninclude <itl>\ninclude <plugins>\n')
    counts = instantiated(assert_valid(instance.validate()))
    # Two registries per datacenter, each with its deep check (run by its datacenter's satellite), its satellite
    # check (run by the master) and the dependency of the one on the other.
    assert counts.get("Host") == 4, counts
    assert counts.get("Service") == 8, counts
    assert counts.get("Dependency") == 4, counts

    # The control: without the copied CheckCommand (the step docs/icinga.md asks for), validation names what is missing.
    (zones_d / "global-templates" / CHECKCOMMAND.name).unlink()
    done = instance.validate()
    assert done.returncode != 0, done.stdout
    assert "Object 'registry_deep' of type 'CheckCommand' does not exist." in done.stdout, done.stdout


# ---------------------------------------------------------------------------------------------------- the cluster

@dataclass
class Cluster:
    master: RunningIcinga
    east: RunningIcinga
    west: RunningIcinga
    registry: LocalRegistry
    public_url: str
    started: float  # (just before) the master's start: its first 5 minutes are a grace for unconnected endpoints


def node_config(instance: Instance, port: int, password: str, *, listener: str = "", more: str = "") -> None:
    """What each node has locally: the example's zones.conf, the ITL, an ApiListener (with a satellite's accept_*
    settings) and, for the test, an API user; `more` is the master's checker."""
    instance.write(f"""
include "zones.conf"
include <itl>
include <plugins>

object ApiListener "api" {{
	bind_host = "127.0.0.1"
	bind_port = {port}
{listener}}}
object ApiUser "root" {{
	password = "{password}"
	permissions = [ "*" ]
}}
{more}""")


def synced(master: RunningIcinga, satellite: RunningIcinga) -> bool:
    """The satellite runs a worker that holds the synced CheckCommand and is connected to the master: after the
    first sync the satellite reloads, and the master reconnects to the new worker on its 10 s timer."""
    try:
        seen = satellite.evaluate(f'[ get_check_command("registry_deep") != null, '
                                  f'get_object(Endpoint, "{MASTER}").connected ]')
    except (AssertionError, OSError):
        return False  # the old worker going away mid-request
    return seen == [True, True] and connected(master, satellite.instance.node)


def connected(master: RunningIcinga, node: str) -> bool:
    return bool(master.evaluate(f'get_object(Endpoint, "{node}").connected'))


def refused(port: int) -> str:
    """The master's log line for a satellite it cannot reach (a regular expression)."""
    return re.escape(f"critical/ApiListener: Cannot connect to host '127.0.0.1' on port '{port}': Connection refused")


@pytest.fixture(scope="module")
def cluster(lab, tmp_path_factory) -> Iterator[Cluster]:
    if ICINGA2 is None:
        pytest.skip("icinga2 is not installed (tools/debian-packages.txt)")
    registry = lab.registry(tmp_path_factory.mktemp("cluster-registry"))
    base = private_dir("icinga-cluster-")
    nodes: Dict[str, RunningIcinga] = {}
    try:
        password = os.urandom(12).hex()
        ports = {name: free_port() for name in (MASTER, EAST, WEST)}
        master, east, west = (Instance(base / name.split(".")[0], node=name) for name in (MASTER, EAST, WEST))
        master.sign(master, east, west)

        public_url = f"http://localhost:{free_port()}"  # nothing listens there: only --connect-to reaches the lab
        zones_d = deploy_on_master(master.etc)
        place_satellites(master.etc / "zones.conf", {EAST: ports[EAST], WEST: ports[WEST]})
        point_at_lab(zones_d / "master" / "registries.conf", registry, public_url, icinga_array(lab.images.refs()))
        node_config(master, ports[MASTER], password, more='object CheckerComponent "checker" { }\n')
        forgotten = satellite_listener().replace("accept_config = true", "accept_config = false")
        assert forgotten != satellite_listener()
        for satellite, listener in ((east, satellite_listener()), (west, forgotten)):
            shutil.copy(master.etc / "zones.conf", satellite.etc / "zones.conf")
            node_config(satellite, ports[satellite.node], password, listener=listener)

        # satellite-east first, then the master, which connects to it right away; satellite-west only once the
        # master failed to reach it (the log line of a satellite down), so the master connects to it on its next
        # reconnect timer (every 10 s), the same one that reconnects to satellite-east after the config sync.
        started = time.time()
        for instance in (east, master):
            nodes[instance.node] = RunningIcinga(instance, ports[instance.node], password)
            nodes[instance.node].start()
        poll(lambda: nodes[MASTER].logged(refused(ports[WEST])), "the master failing to reach satellite-west", 15,
             nodes[MASTER].output)
        nodes[WEST] = RunningIcinga(west, ports[WEST], password).start()
        poll(lambda: synced(nodes[MASTER], nodes[EAST]) and connected(nodes[MASTER], WEST),
             "the CheckCommand synced to satellite-east, satellite-west connected", 40,
             lambda: nodes[EAST].output() + nodes[MASTER].output())
        yield Cluster(nodes[MASTER], nodes[EAST], nodes[WEST], registry, public_url, started)
    finally:
        for node in nodes.values():
            node.stop()
        registry.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.icinga_cluster
def test_the_satellite_runs_the_synced_command_ok_then_critical_when_the_golden_layer_breaks(cluster, lab):
    # Only config sync put the command on the satellite: its own configuration never names it.
    synced_command = cluster.east.api("GET", "objects/checkcommands/registry_deep",
                                      params={"attrs": ["zone", "package"]})["results"][0]["attrs"]
    assert synced_command == {"zone": "global-templates", "package": "_cluster"}, synced_command

    result = cluster.master.force_check(EAST_DEEP)
    output = result["output"]
    assert result["state"] == 0, output
    assert output.startswith("REGISTRY_DEEP OK - 9 images, 22 blobs, "), output
    assert result["check_source"] == EAST, result["check_source"]
    # The satellite's own PluginContribDir, and the datacenter's backend through --connect-to.
    command = result["command"]
    assert command[0] == str(cluster.east.instance.contrib / "check_registry_deep"), command
    assert command[1:5] == ["--registry", cluster.public_url, "--image", lab.images.refs()[0]], command
    assert command[command.index("--connect-to") + 1] == cluster.registry.host, command

    golden = lab.images.golden.digest
    cluster.registry.truncate_blob(golden, 4096)
    result = cluster.master.force_check(EAST_DEEP)
    output = result["output"]
    assert result["state"] == 2, output
    assert output.startswith("REGISTRY_DEEP CRITICAL - 1 broken blob, breaking 8 of 9 images: layer "), output
    assert result["check_source"] == EAST, result["check_source"]


@pytest.mark.icinga_cluster
def test_a_satellite_without_accept_config_answers_that_the_command_does_not_exist(cluster):
    ignored = poll(lambda: cluster.west.logged(re.escape("Ignoring config update. 'api' does not accept config.")),
                   "satellite-west ignoring the config update", 15, cluster.west.output)
    assert "warning/ApiListener: " in ignored, ignored
    assert cluster.west.evaluate('get_check_command("registry_deep") == null')

    result = cluster.master.force_check(WEST_DEEP)
    assert result["state"] == 3, result["output"]
    assert result["output"] == "Check command 'registry_deep' does not exist.", result["output"]
    assert result["check_source"] == WEST, result["check_source"]


@pytest.mark.icinga_cluster
def test_a_satellite_down_turns_its_satellite_check_critical_while_the_deep_check_keeps_its_last_state(cluster):
    """Stops satellite-east: run last in this module."""
    result = cluster.master.force_check(EAST_SATELLITE)
    assert result["state"] == 0 and result["output"].startswith("Zone 'dc-east' is connected."), result["output"]
    before = cluster.master.service(EAST_DEEP, ["last_check_result"])["last_check_result"]

    cluster.east.stop()
    poll(lambda: not connected(cluster.master, EAST),
         "the master noticing satellite-east is gone", 15, cluster.master.output)

    result = cluster.master.force_check(EAST_SATELLITE)
    assert result["state"] == 2, result["output"]
    assert result["output"].startswith("Zone 'dc-east' is not connected. Log lag: "), result["output"]

    # The deep check, forced: the master's checker takes it (moves next_check a check_interval on) and, inside its
    # first 5 minutes, gives no result at all (later: UNKNOWN "Remote Icinga instance ... is not connected").
    asked = cluster.master.force(EAST_DEEP)

    def taken() -> Optional[dict]:
        service = cluster.master.service(EAST_DEEP, ["next_check", "last_check_result", "last_reachable"])
        return service if service["next_check"] > asked + 60 else None

    service = poll(taken, "the checker taking the forced deep check", 15, cluster.master.output)
    assert time.time() - cluster.started < 300, "the master's grace period is over: this test is too slow"
    assert service["last_check_result"] == before, "no satellite, no new result: the last one stays"
    assert service["last_reachable"] is False, "the dependency on the satellite check marks it unreachable"

    # Every 10 s, the master's reconnect timer logs (seen before satellite-west started, in the fixture):
    assert cluster.master.logged(refused(cluster.west.port))
