"""The reference stays complete: every option of the plugin's parser is in the README's option table, and every
CheckCommand var (with the option it maps) in docs/icinga.md's variable table."""

from __future__ import annotations

import re
from pathlib import Path
from typing import List, Set

from check_registry_deep.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
ICINGA_DOC = ROOT / "docs" / "icinga.md"
CHECKCOMMAND = ROOT / "icinga" / "registry-deep.conf"


def long_options() -> Set[str]:
    """Every long option the parser accepts (argparse's own --help included)."""
    return {flag for action in build_parser()._actions for flag in action.option_strings if flag.startswith("--")}


def table_cells(text: str, header: str, column: int) -> List[str]:
    """Column `column` of the markdown table whose header row is `header` (the rows up to the first non-row)."""
    rows = text.split(header + "\n", 1)[1].splitlines()[1:]  # [0] is the | --- | line
    cells = []
    for row in rows:
        if not row.startswith("|"):
            break
        cells.append(re.split(r"(?<!\\)\|", row)[column + 1])
    assert cells, f"no rows under {header}"
    return cells


def named(cells: List[str], pattern: str) -> Set[str]:
    """What the backticked spans of `cells` name, matching `pattern`."""
    return {name for cell in cells for span in re.findall(r"`([^`]+)`", cell) for name in re.findall(pattern, span)}


def test_the_readme_option_table_lists_every_option():
    documented = named(table_cells(README.read_text(), "| option | meaning |", 0), r"--[a-z][a-z-]*")
    missing = sorted(long_options() - documented)
    assert not missing, f"options missing from the README's option table: {missing}"
    assert not documented - long_options(), f"the README's table lists unknown options: {documented - long_options()}"


def test_the_icinga_variable_table_lists_every_checkcommand_var_and_its_option():
    text = ICINGA_DOC.read_text()
    header = "| var | option | notes |"
    documented_vars = named(table_cells(text, header, 0), r"registry_deep_\w+")
    documented_options = named(table_cells(text, header, 1), r"--[a-z][a-z-]*")
    checkcommand_vars = set(re.findall(r"\$(registry_deep_\w+)\$", CHECKCOMMAND.read_text()))
    mapped = long_options() - {"--help", "--version"}
    option_vars = {"registry_deep_" + option[2:].replace("-", "_") for option in mapped}
    assert checkcommand_vars == option_vars, "the CheckCommand maps every option (tests/test_icinga.py)"
    assert sorted(checkcommand_vars - documented_vars) == [], "CheckCommand vars missing from docs/icinga.md"
    assert sorted(mapped - documented_options) == [], "options missing from docs/icinga.md's option column"
    assert documented_vars <= checkcommand_vars, documented_vars - checkcommand_vars


def test_a_missing_option_is_caught(monkeypatch):
    """The control: an option the parser gains and no table lists fails both tests."""
    real = build_parser

    def with_one_more():
        parser = real()
        parser.add_argument("--undocumented-option")
        return parser

    monkeypatch.setattr(f"{__name__}.build_parser", with_one_more)
    for test in (test_the_readme_option_table_lists_every_option,
                 test_the_icinga_variable_table_lists_every_checkcommand_var_and_its_option):
        try:
            test()
        except AssertionError as error:
            assert "undocumented" in str(error) or "maps every option" in str(error), error
        else:
            raise AssertionError(f"{test.__name__} passed with an undocumented option")
