"""The house rules a reader relies on, checked so that no change breaks them unseen: a module of the library,
the store or the API can be held in one reading (at most 350 lines, or its docstring says why it is longer),
only the budget (its spec and the place where one is chosen) asks whether it measures latency, nothing is
imported under the alias ``store`` (each store module goes by its own name), and the README stays a quick
start (the reference lives in ``docs/``).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from .support.paths import REPO

SMALL_PACKAGES = ("rlprune_core", "store", "api")
PACKAGES = ("rlprune_core", "rlprune_client", "api", "store", "worker", "service")
MAX_MODULE_LINES = 350
LONGER_BECAUSE = re.compile(r"longer than \d+ lines")
MAX_README_LINES = 249
# Where a comparison with "latency" belongs: the budget's spec (a target is for a measured budget only) and
# the factory that chooses a budget by its metric; everything after asks the budget object instead.
LATENCY_ASKED_IN = {("rlprune_core/spec.py", "BudgetSpec"), ("rlprune_core/budgets.py", None)}


def _sources(packages: tuple[str, ...]) -> list[Path]:
    return [p for package in packages for p in sorted((REPO / package).rglob("*.py"))]


@pytest.mark.parametrize("path", _sources(SMALL_PACKAGES), ids=lambda p: str(p.relative_to(REPO)))
def test_a_module_is_short_or_says_why(path: Path):
    source = path.read_text()
    if len(source.splitlines()) > MAX_MODULE_LINES:
        docstring = ast.get_docstring(ast.parse(source)) or ""
        assert LONGER_BECAUSE.search(docstring), f"{path.name} has over {MAX_MODULE_LINES} lines and its " \
            "docstring does not say why it is longer than that (\"longer than N lines because ...\")"


def _mentions_latency(node: ast.expr) -> bool:
    values = node.elts if isinstance(node, ast.Tuple | ast.List | ast.Set) else [node]
    return any(isinstance(v, ast.Constant) and v.value == "latency" for v in values)


def _latency_comparisons(path: Path) -> list[tuple[int, str | None]]:
    """Every comparison with the string "latency" (==, !=, in, either side), with its enclosing class."""
    tree = ast.parse(path.read_text())
    classes = [node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(map(_mentions_latency, [node.left, *node.comparators])):
            inside = [c.name for c in classes if c.lineno <= node.lineno <= c.end_lineno]
            found.append((node.lineno, inside[-1] if inside else None))
    return found


def test_only_the_budget_asks_whether_latency_is_measured():
    asked = [f"{p.relative_to(REPO)}:{line} ({owner})" for p in _sources(PACKAGES)
             for line, owner in _latency_comparisons(p)
             if (str(p.relative_to(REPO)), owner) not in LATENCY_ASKED_IN]
    assert asked == []


def test_the_rule_sees_every_form_of_asking():
    forms = ['metric == "latency"', 'spec["metric"] != "latency"', '"latency" == data.get("metric")',
             'metric in ("latency", "macs")']
    for form in forms:
        assert any(map(_mentions_latency, [(c := ast.parse(form).body[0].value).left, *c.comparators])), form


def test_store_modules_are_imported_by_their_own_names():
    aliased = [f"{p.relative_to(REPO)}: {alias.name} as {alias.asname}" for p in _sources((*PACKAGES, "tests"))
               for node in ast.walk(ast.parse(p.read_text())) if isinstance(node, ast.ImportFrom | ast.Import)
               for alias in node.names if alias.asname == "store"]
    assert aliased == []


def test_the_readme_is_a_quick_start():
    lines = (REPO / "README.md").read_text().count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines: move reference material to docs/"
