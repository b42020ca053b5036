"""Real signers and verifiers that nobody here wrote: trixie's skopeo 1.18 signs while copying into the lab
registry (cosign's `.sig` attachments, `use-sigstore-attachments: true`), podman 5.4 pulls under a
`sigstoreSigned` policy. For each case the plugin's verdict with `--cosign-key` must agree with whether podman's
pull succeeds; the table of both is docs/signatures.md's.

Bookworm's skopeo and podman are built with sigstore disabled, so they run in the trixie chroot of
registry_lab/chroot.py, against the lab registry on loopback.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Optional, Tuple

import pytest

from registry_lab import LocalRegistry
from registry_lab.artifacts import fallback_tag
from registry_lab.chroot import Chroot, signing_chroot
from registry_lab.images import mount_blob, push_unpackable_image

pytestmark = [pytest.mark.e2e, pytest.mark.trixie]

PASSPHRASE = "lab passphrase, not a secret\n"
#: case -> (what podman says when its pull fails, None: it pulls), what the plugin's first line says
CASES: Dict[str, Tuple[Optional[str], str]] = {
    "signed": (None, "REGISTRY_DEEP OK - "),
    "unsigned": ("A signature was required, but no signature exists", "1 signature problem, breaking 1 of 1 image: "
                 "image {ref}: not signed"),
    "wrong key": ("cryptographic signature verification failed: invalid signature when validating ASN.1 encoded "
                  "signature", "1 signature problem, breaking 1 of 1 image: image {ref}: signature does not "
                  "verify with /"),
    "signature payload truncated in storage": ('digest mismatch, expected "{payload}", got "sha256:',
                                               "1 broken blob and 1 signature problem, breaking 1 of 1 image: layer "
                                               "{payload:.19}… (cosign tag {tag:.19}….sig) truncated: got "),
    ".sig manifest deleted": ("A signature was required, but no signature exists", "1 signature problem, breaking "
                              "1 of 1 image: image {ref}: not signed"),
    "signature copied from another image": ("Signature for digest {other} does not match", "1 signature problem, "
                                            "breaking 1 of 1 image: image {ref}: signature is for "
                                            "{other:.40}"),
    "image layer truncated, signature intact": ("Digest did not match, expected {layer}, got sha256:",
                                                "1 broken blob, breaking 1 of 1 image: layer {layer:.19}… truncated: "
                                                "Content-Length says "),
}


def podman(root: Chroot, registry: LocalRegistry, repository: str, key: str, storage: str) -> Tuple[bool, str]:
    """Pull under a policy that requires a sigstore signature by `key`; (succeeded, podman's last words)."""
    policy = f"/work/policy-{storage}.json"
    root.path(policy).write_text(json.dumps({
        "default": [{"type": "reject"}],
        "transports": {"docker": {registry.host: [{"type": "sigstoreSigned", "keyPath": key,
                                                   "signedIdentity": {"type": "matchRepository"}}]}}}))
    done = root.run(["podman", "--root", f"/work/{storage}/storage", "--runroot", f"/work/{storage}/run",
                     "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "none", "pull",
                     "--tls-verify=false", "--signature-policy", policy, f"docker://{registry.host}/{repository}:1"],
                    check=False)
    words = (done.stderr.strip().splitlines() or [""])[-1]
    return done.returncode == 0, words


def sign_copy(root: Chroot, registry: LocalRegistry, source: str, destination: str, key: str = "/work/key"
              ) -> None:
    root.run(["skopeo", "copy", "--src-tls-verify=false", "--dest-tls-verify=false",
              "--sign-by-sigstore-private-key", f"{key}.private", "--sign-passphrase-file", "/work/passphrase",
              f"docker://{registry.host}/{source}:1", f"docker://{registry.host}/{destination}:1"])


def sig_manifest(registry: LocalRegistry, repository: str, digest: str) -> dict:
    return registry.session.get(f"{registry.url}/v2/{repository}/manifests/{fallback_tag(digest, '.sig')}",
                                headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}, timeout=10).json()


def test_the_plugin_agrees_with_podman_on_every_case(plugin, tmp_path: Path) -> None:
    with LocalRegistry(tmp_path / "registry") as registry, signing_chroot(tmp_path / "chroot") as root:
        work = root.path("/work")
        work.mkdir()
        (work / "passphrase").write_text(PASSPHRASE)
        for name in ("key", "other"):
            root.run(["skopeo", "generate-sigstore-key", "--output-prefix", f"/work/{name}",
                      "--passphrase-file", "/work/passphrase"])
        (registries_d := root.path("/etc/containers/registries.d")).mkdir()
        (registries_d / "lab.yaml").write_text(f"docker:\n  {registry.host}:\n    use-sigstore-attachments: true\n")

        def repo(case: str) -> str:
            return f"lab/case-{list(CASES).index(case)}"

        images: Dict[str, str] = {}
        for case in CASES:
            files = {"etc/motd": f"{case}\n".encode()}
            source = push_unpackable_image(registry, repo(case).replace("lab/", "source/"), "1", files)
            if case == "unsigned":
                push_unpackable_image(registry, repo(case), "1", files)
            else:  # skopeo copies the manifest as it is: the signed image has the source's digest
                sign_copy(root, registry, repo(case).replace("lab/", "source/"), repo(case))
            images[case] = source.digest

        # the damage, in storage or over the API, as an operator, a cleanup job or the registry's GC would do it
        facts = {"image": "", "tag": "", "other": images["signed"]}
        case = "signature payload truncated in storage"
        payload = sig_manifest(registry, repo(case), images[case])["layers"][0]
        registry.truncate_blob(payload["digest"], payload["size"] // 2)
        facts.update(payload=payload["digest"])
        case = ".sig manifest deleted"
        registry.delete_tag(repo(case), fallback_tag(images[case], ".sig"))
        case = "signature copied from another image"
        registry.delete_tag(repo(case), fallback_tag(images[case], ".sig"))
        foreign = sig_manifest(registry, repo("signed"), images["signed"])
        for blob in [foreign["config"], *foreign["layers"]]:
            mount_blob(registry, blob["digest"], repo("signed"), repo(case))
        registry.push_manifest(repo(case), fallback_tag(images[case], ".sig"), json.dumps(foreign).encode(),
                               "application/vnd.oci.image.manifest.v1+json")
        case = "image layer truncated, signature intact"
        layer = json.loads(registry.blob_path(images[case]).read_bytes())["layers"][0]
        registry.truncate_blob(layer["digest"], layer["size"] // 2)
        facts.update(layer=layer["digest"])

        for number, (case, (refused, verdict)) in enumerate(CASES.items()):
            key = "other" if case == "wrong key" else "key"
            facts.update(image=images[case], tag=fallback_tag(images[case]), ref=f"{repo(case)}:1")
            pulled, words = podman(root, registry, repo(case), f"/work/{key}.pub", f"pull-{number}")
            run = plugin("-R", registry.url, "-i", f"{repo(case)}:1", "--cosign-key", str(work / f"{key}.pub"))
            assert (run.code == 0) == pulled, (case, words, run.stdout)  # the agreement
            if refused is None:
                assert pulled and run.first.startswith(verdict), (case, words, run.first)
            else:
                assert refused.format(**facts) in words and run.code == 2, (case, words)
                assert run.first.startswith("REGISTRY_DEEP CRITICAL - " + verdict.format(**facts)), (case, run.first)
