"""The house rules a reader relies on, checked so that no change breaks them unseen: a module of the library,
the store or the API can be held in one reading (at most 350 lines, or its docstring says why it is longer),
only the place where a budget is chosen asks whether it measures latency, a store module is imported by its own
name, and the README stays a quick start (the reference lives in ``docs/``).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from .support.paths import REPO

SMALL_PACKAGES = ("rlprune_core", "store", "api")
PACKAGES = ("rlprune_core", "rlprune_client", "api", "store", "worker", "service", "bench")
MAX_MODULE_LINES = 350
MAX_README_LINES = 249
# The budget factory chooses a budget by its metric; everything after asks the budget object instead.
BUDGET_CHOOSER = REPO / "rlprune_core" / "budgets.py"
LATENCY_BRANCH = re.compile(r"""metric\s*[!=]=\s*["']latency["']""")


def _sources(packages: tuple[str, ...]) -> list[Path]:
    return [p for package in packages for p in sorted((REPO / package).rglob("*.py"))]


@pytest.mark.parametrize("path", _sources(SMALL_PACKAGES), ids=lambda p: str(p.relative_to(REPO)))
def test_a_module_is_short_or_says_why(path: Path):
    source = path.read_text()
    if source.count("\n") > MAX_MODULE_LINES:
        docstring = ast.get_docstring(ast.parse(source)) or ""
        assert "longer than" in docstring, f"{path.name} has over {MAX_MODULE_LINES} lines and its docstring " \
            "does not say why it is longer than that"


def test_only_the_budget_chooser_asks_whether_latency_is_measured():
    branching = [f"{p.relative_to(REPO)}:{n}" for p in _sources(PACKAGES) if p != BUDGET_CHOOSER
                 for n, line in enumerate(p.read_text().splitlines(), 1) if LATENCY_BRANCH.search(line)]
    assert branching == []


def test_store_modules_are_imported_by_their_own_names():
    aliased = [f"{p.relative_to(REPO)}: {alias.name} as {alias.asname}" for p in _sources((*PACKAGES, "tests"))
               for node in ast.walk(ast.parse(p.read_text())) if isinstance(node, ast.ImportFrom | ast.Import)
               for alias in node.names if alias.asname == "store"]
    assert aliased == []


def test_the_readme_is_a_quick_start():
    lines = (REPO / "README.md").read_text().count("\n")
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines: move reference material to docs/"
