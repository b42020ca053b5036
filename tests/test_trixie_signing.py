"""Trixie's skopeo and podman in a clean trixie chroot, against the lab registry on loopback: what the signature
work builds on. skopeo 1.18 makes a cosign-format key pair and signs while copying (a sigstore attachment in the
registry); podman 5.4 pulls the signed image under a `sigstoreSigned` policy and refuses an unsigned one.
(Bookworm's skopeo and podman are built with sigstore disabled.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from registry_lab import LocalRegistry
from registry_lab.chroot import Chroot, signing_chroot
from registry_lab.images import push_unpackable_image

pytestmark = [pytest.mark.e2e, pytest.mark.trixie]

PODMAN = ["podman", "--root", "/work/storage", "--runroot", "/work/runroot", "--storage-driver", "vfs",
          "--cgroup-manager", "cgroupfs", "--events-backend", "none"]


def version(root: Chroot, *command: str) -> str:
    found = re.search(r"version (\d+\.\d+)", root.run(command).stdout)
    assert found, command
    return found.group(1)


def test_skopeo_signs_into_the_lab_registry_and_podman_verifies(tmp_path: Path) -> None:
    with LocalRegistry(tmp_path / "registry") as registry, signing_chroot(tmp_path / "chroot") as root:
        source = push_unpackable_image(registry, "signing/source", "1", {"etc/motd": b"signed\n"})
        push_unpackable_image(registry, "unsigned/app", "1", {"etc/motd": b"unsigned\n"})
        assert version(root, "skopeo", "--version") == "1.18"
        assert version(root, "podman", "--version") == "5.4"

        work = root.path("/work")
        work.mkdir()
        (work / "passphrase").write_text("lab passphrase, not a secret\n")
        root.run(["skopeo", "generate-sigstore-key", "--output-prefix", "/work/key",
                  "--passphrase-file", "/work/passphrase"])
        assert (work / "key.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
        assert "-----BEGIN ENCRYPTED COSIGN PRIVATE KEY-----" in (work / "key.private").read_text()

        registries_d = root.path("/etc/containers/registries.d")
        registries_d.mkdir()
        (registries_d / "lab.yaml").write_text(
            f"docker:\n  {registry.host}:\n    use-sigstore-attachments: true\n")
        root.run(["skopeo", "copy", "--src-tls-verify=false", "--dest-tls-verify=false",
                  "--sign-by-sigstore-private-key", "/work/key.private", "--sign-passphrase-file", "/work/passphrase",
                  f"docker://{registry.host}/signing/source:1",
                  f"docker://{registry.host}/signing/signed:1"])
        tags = registry.session.get(f"{registry.url}/v2/signing/signed/tags/list", timeout=10).json()["tags"]
        assert sorted(tags) == sorted(["1", source.digest.replace(":", "-") + ".sig"])

        # Everything from the lab registry must carry a sigstore signature by the key just made.
        (work / "policy.json").write_text(json.dumps({
            "default": [{"type": "reject"}],
            "transports": {"docker": {registry.host: [{"type": "sigstoreSigned", "keyPath": "/work/key.pub",
                                                       "signedIdentity": {"type": "matchRepository"}}]}}}))
        pull = [*PODMAN, "pull", "--tls-verify=false", "--signature-policy", "/work/policy.json"]
        signed = root.run([*pull, f"docker://{registry.host}/signing/signed:1"])
        assert signed.stdout.strip().splitlines()[-1] == json.loads(
            registry.blob_path(source.digest).read_bytes())["config"]["digest"].split(":", 1)[1]

        unsigned = root.run([*pull, f"docker://{registry.host}/unsigned/app:1"], check=False)
        assert unsigned.returncode == 125
        assert "A signature was required, but no signature exists" in unsigned.stderr


def test_the_chroot_leaves_no_mount_and_no_root_behind_when_its_user_fails(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="the user failed"), signing_chroot(tmp_path / "chroot") as root:
        mounted = root.mount_points()
        assert mounted == [str(root.root), *(f"{root.root}/{name}" for name in ("proc", "dev")),
                           *mounted[3:-2], f"{root.root}/sys", f"{root.root}/run"]
        raise RuntimeError("the user failed")
    assert not root.root.exists()
    assert str(tmp_path) not in Path("/proc/self/mounts").read_text()


def test_a_command_without_network_sees_only_loopback_and_can_use_it(tmp_path: Path) -> None:
    """What the package build runs in (tools/test-debian-package): no route out, loopback up for the tests."""
    with signing_chroot(tmp_path / "chroot") as root:
        def interfaces(network: bool) -> list:
            rows = root.run(["cat", "/proc/net/dev"], network=network).stdout.splitlines()[2:]
            return sorted(row.split(":")[0].strip() for row in rows)

        assert interfaces(network=False) == ["lo"]
        assert len(interfaces(network=True)) > 1
        # ::1 is listed once loopback is up (a new network namespace starts with it down)
        addresses = root.run(["cat", "/proc/net/if_inet6"], network=False).stdout.split()
        assert addresses[0] == "0" * 31 + "1" and addresses[-1] == "lo"
