"""The package's layers, read from its source: no import cycle (lazy imports included), one-way dependencies.

Imports under `if TYPE_CHECKING:` are left out: they never run. Everything else counts, a function's deferred
`from .app import run_check` too.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

PACKAGE = Path(__file__).resolve().parents[2] / "check_registry_deep"

#: Gathering: talks to registries, knows nothing of Nagios states or of how results are shown.
GATHERING = {"transport", "retry", "auth", "client", "manifests", "resolve", "transfer", "verify", "blobs",
             "replicas", "discovery", "coverage", "pool", "scan", "stages", "origin", "referrers", "signatures"}
#: Judging and presenting: knows findings and states, nothing of HTTP.
JUDGING = {"judge", "wording", "check", "report", "metrics"}


def _runtime_imports(tree: ast.AST) -> List[ast.stmt]:
    """Import statements that run, wherever they stand (skipping `if TYPE_CHECKING:` bodies)."""
    found: List[ast.stmt] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def graph() -> Dict[str, Set[str]]:
    """module -> the package's modules it imports at run time; `external` holds third-party top-level names."""
    modules = {path.stem for path in PACKAGE.glob("*.py")}
    edges: Dict[str, Set[str]] = {}
    for path in PACKAGE.glob("*.py"):
        targets: Set[str] = set()
        for node in _runtime_imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level:
                if node.module:
                    targets.add(node.module.split(".")[0])
                else:  # from . import x, y
                    targets.update(alias.name for alias in node.names if alias.name in modules)
            elif isinstance(node, ast.ImportFrom) and node.module:
                targets.add("external:" + node.module.split(".")[0])
            elif isinstance(node, ast.Import):
                targets.update("external:" + alias.name.split(".")[0] for alias in node.names)
        edges[path.stem] = targets - {path.stem}
    return edges


def cycles(edges: Dict[str, Set[str]]) -> List[List[str]]:
    """Every cycle found by a depth-first walk (empty when the graph is a DAG)."""
    found: List[List[str]] = []
    state: Dict[str, int] = {}  # 1 on the stack, 2 done
    stack: List[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(t for t in edges.get(node, ()) if t in edges):
            if state.get(target) == 1:
                found.append(stack[stack.index(target):] + [target])
            elif target not in state:
                walk(target)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            walk(node)
    return found


def test_no_import_cycle_lazy_imports_included():
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_options_and_states_import_nothing_of_the_project():
    edges = graph()
    assert {t for t in edges["options"] if not t.startswith("external:")} == set()
    assert {t for t in edges["states"] if not t.startswith("external:")} == set()


def test_gathering_knows_no_nagios_and_judging_knows_no_http():
    edges = graph()
    for module in GATHERING:
        assert not edges[module] & (JUDGING | {"app", "cli", "external:nagiosplugin"}), module
    for module in JUDGING:
        assert not edges[module] & (GATHERING | {"external:requests", "external:urllib3"}), module


def test_judging_is_apart_from_wording_and_nagiosplugin_only_in_its_adapters():
    """As nagiosplugin splits itself (context / summary): judge.py decides states and words nothing, wording.py
    words and decides nothing, check.py adapts both to nagiosplugin; the table and JSON need no nagiosplugin."""
    edges = graph()
    assert "wording" not in edges["judge"]
    for module in ("judge", "wording", "report"):
        assert not edges[module] & {"check", "external:nagiosplugin"}, module


def test_the_values_know_no_module_that_uses_them():
    """model.py holds the values every layer shares (Kind and Descriptor together), so it imports no layer, not
    even for type checking."""
    edges = graph()
    assert {t for t in edges["model"] if not t.startswith("external:")} == {"errors", "reference"}
    assert "TYPE_CHECKING" not in (PACKAGE / "model.py").read_text(encoding="utf-8")


def test_the_entry_point_defers_everything_slow():
    """cli.py imports the wiring (and with it requests and nagiosplugin) only inside main(), after argv is good."""
    tree = ast.parse((PACKAGE / "cli.py").read_text(encoding="utf-8"))
    top_level = {node.module for node in tree.body if isinstance(node, ast.ImportFrom)}
    assert "app" not in top_level and not any(
        isinstance(node, ast.Import) and any(a.name in ("requests", "nagiosplugin") for a in node.names)
        for node in tree.body)
