"""Every library the package imports is declared in setup.cfg's install_requires.

The Debian package's Depends come from there (dh_python3 maps each requirement to a python3-* package), so an
import that is not declared works in a virtualenv, where it arrives with another library, and fails on a host
where that other library stops pulling it in. Lazy imports inside functions count too.
"""

from __future__ import annotations

import ast
import configparser
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path
from typing import Dict, List

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "check_registry_deep"


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements(text: str) -> List[str]:
    return [_normalized(re.match(r"[A-Za-z0-9._-]+", line.strip()).group(0))
            for line in text.strip().splitlines() if line.strip() and not line.strip().startswith("#")]


def _setup_cfg() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg", encoding="utf-8")
    return config


def declared() -> List[str]:
    return _requirements(_setup_cfg()["options"]["install_requires"])


def optional() -> List[str]:
    """Libraries of the extras a user opts into (not `test`): the package may import them only lazily."""
    extras = _setup_cfg()["options.extras_require"]
    return [name for extra, text in extras.items() if extra != "test" for name in _requirements(text)]


def imported(*, top_level_only: bool = False) -> Dict[str, List[str]]:
    """Top-level names of the absolute imports in the package (lazy ones included, unless `top_level_only`) ->
    the files importing them."""
    names: Dict[str, List[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in (tree.body if top_level_only else ast.walk(tree)):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                names.setdefault(module.split(".")[0], []).append(str(path.relative_to(ROOT)))
    return names


def is_stdlib(name: str) -> bool:
    return name in sys.stdlib_module_names


def distribution_of(name: str) -> str:
    """The distribution that provides import `name` (docker -> docker, yaml -> PyYAML), from installed metadata."""
    return _normalized(packages_distributions().get(name, [name])[0])


def test_every_imported_library_is_declared_in_install_requires():
    if not (ROOT / "setup.cfg").is_file():
        pytest.skip("no setup.cfg next to the package (pybuild's build dir, which holds the modules and tests only)")
    requirements = set(declared())
    third_party = {name: files for name, files in imported().items()
                   if name != PACKAGE.name and not is_stdlib(name)}
    assert third_party, "no library import found: the scan of the package is broken"
    undeclared = {name: sorted(set(files)) for name, files in third_party.items()
                  if distribution_of(name) not in requirements | set(optional())}
    assert not undeclared, f"imported but not in setup.cfg install_requires or an extra: {undeclared}"


def test_an_optional_library_is_imported_only_inside_functions():
    """cryptography is for --cosign-key alone: importing it at module level would make it a hard dependency."""
    if not (ROOT / "setup.cfg").is_file():
        pytest.skip("no setup.cfg next to the package (pybuild's build dir, which holds the modules and tests only)")
    extras = set(optional())
    assert "cryptography" in extras
    eager = {name: files for name, files in imported(top_level_only=True).items() if distribution_of(name) in extras}
    assert not eager, f"an optional library imported at module level: {eager}"
