"""The packages' dependency rules, read from the source: no import circle anywhere, the core stands alone,
the API and the client never load torch, the client needs nothing of the project, the API and the workers
never import each other.

Imports are read with ``ast`` from every module, including those inside functions and under
``TYPE_CHECKING``: a lazy import still ties two modules together, so it counts for circles. For torch, only
module-level imports count, since a lazy import is exactly how a module keeps torch out of a process that
never calls it (``tests/e2e/test_deploy.py`` checks the running API for that).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from .support.paths import REPO

PACKAGES = ("rlprune_core", "rlprune_client", "api", "store", "worker", "service")
TORCH = ("torch", "torchvision", "torch_pruning", "onnx", "onnxruntime", "onnxscript")


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for package in PACKAGES for p in sorted((REPO / package).rglob("*.py"))}


MODULES = _modules()


def _resolve(importer: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = importer.split(".") if MODULES[importer].name == "__init__.py" else importer.split(".")[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join([*base, *([node.module] if node.module else [])])


def _imports(name: str, module_level_only: bool = False) -> set[str]:
    """Every module ``name`` imports: project modules as found in MODULES, others by their top name."""
    tree = ast.parse(MODULES[name].read_text())
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(name, node)
            # "from package import module" imports that module; "from module import name" the module
            candidates = [f"{base}.{alias.name}" for alias in node.names]
            found |= {c for c in candidates if c in MODULES} or {base}
            found |= {base} if base in MODULES and base != name else set()
    return found


def _project(imported: str) -> str | None:
    """The project module an import names (its longest known prefix), or None for a third-party one."""
    parts = imported.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in MODULES:
            return ".".join(parts[:end])
    return None


GRAPH = {name: {m for i in _imports(name) if (m := _project(i)) and m != name} for name in MODULES}


def _circles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in GRAPH[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for name in sorted(GRAPH):
        if name not in index:
            visit(name)
    return found


def test_the_import_graph_is_read():
    assert len(MODULES) > 60 and "store.leases" in GRAPH["worker.runner"]
    assert "rlprune_core.budgets" in GRAPH["rlprune_core.pipeline"]


def test_no_module_imports_itself_back_through_others():
    assert _circles() == []


def _package(module: str) -> str:
    return module.split(".")[0]


@pytest.mark.parametrize(("package", "forbidden"), [
    ("rlprune_core", {"store", "api", "worker", "service", "rlprune_client"}),
    ("rlprune_client", {"rlprune_core", "store", "api", "worker", "service"}),
    ("api", {"worker", "service"}),
    ("worker", {"api", "service"}),
    ("store", {"api", "worker", "service", "rlprune_core"}),
])
def test_packages_import_only_what_the_plan_allows(package, forbidden):
    crossing = sorted(f"{name} -> {target}" for name, targets in GRAPH.items() if _package(name) == package
                      for target in targets if _package(target) in forbidden)
    assert crossing == []


def _loads_torch(name: str, seen: set[str]) -> list[str] | None:
    """A chain of module-level imports from ``name`` that ends in torch, if there is one."""
    if name in seen:
        return None
    seen.add(name)
    for imported in _imports(name, module_level_only=True):
        if imported.split(".")[0] in TORCH:
            return [name, imported]
        target = _project(imported)
        if target and target != name and (chain := _loads_torch(target, seen)):
            return [name, *chain]
    return None


@pytest.mark.parametrize("package", ["api", "rlprune_client", "store"])
def test_the_api_the_client_and_the_store_never_load_torch(package):
    chains = [chain for name in MODULES if _package(name) == package if (chain := _loads_torch(name, set()))]
    assert chains == []
