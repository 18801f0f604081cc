"""The library's modules form a DAG, import neither Prefect nor the orchestration, and
import heavy dependencies lazily only (with a reason), everything else at the top."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "covid_pipeline"
ORCHESTRATION = ("prefect", "prefect_dask", "flows", "tasks", "deployments")
# Imported inside functions on purpose: each costs seconds or needs a GPU stack.
LAZY_ALLOWED = ("tensorflow", "keras", "matplotlib", "distributed", "dask_cuda", "pydicom",
                "s3fs", "botocore", "mlflow")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, bool, int]]:
    """(imported module, inside a function?, line) of every import statement in a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[tuple[str, bool, int]] = []

    def visit(node: ast.AST, nested: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = nested or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                found.extend((a.name, nested, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                found.append((child.module, nested, child.lineno))
                # "from covid_pipeline import storage" imports a module of the package
                if child.module == "covid_pipeline":
                    found.extend((f"covid_pipeline.{a.name}", nested, child.lineno)
                                 for a in child.names)
            visit(child, inner)

    visit(tree, False)
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for target, _, _ in imports(path):
            if target in modules and target != name:
                edges[name].add(target)
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := dfs(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := dfs(node)):
            return cycle
    return None


def test_the_library_imports_form_a_dag():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_find_cycle_finds_one():  # the check itself can fail
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_library_never_imports_the_orchestration():
    bad = [f"{p.relative_to(PACKAGE.parent)}:{line} imports {target}"
           for p in PACKAGE.rglob("*.py") for target, _, line in imports(p)
           if target.split(".")[0] in ORCHESTRATION]
    assert not bad, bad


def test_only_heavy_dependencies_are_imported_inside_functions():
    bad = [f"{p.relative_to(PACKAGE.parent)}:{line} imports {target} inside a function"
           for p in PACKAGE.rglob("*.py") for target, nested, line in imports(p)
           if nested and target.split(".")[0] not in LAZY_ALLOWED]
    assert not bad, bad


@pytest.mark.parametrize("source", [
    "import prefect\n",
    "def f():\n    from flows.benchmark import covid_benchmark\n",
])
def test_orchestration_imports_are_seen(tmp_path, source):
    path = tmp_path / "m.py"
    path.write_text(source)
    assert any(t.split(".")[0] in ORCHESTRATION for t, _, _ in imports(path))


# Path joins of the library: layout.py (everything under --out), storage.py (the helper),
# and the modules that read or write *input* data sets under their own roots.
JOIN_ALLOWED = {"covid_pipeline.layout", "covid_pipeline.storage", "covid_pipeline.synth",
                "covid_pipeline.sources.common", "covid_pipeline.sources.ieee8023",
                "covid_pipeline.sources.rsna", "covid_pipeline.sources.folder"}


def storage_joins(path: Path) -> list[int]:
    """Lines calling ``storage.join(...)`` or a bare ``join(...)`` imported from storage."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    bare = any(isinstance(n, ast.ImportFrom) and n.module == "covid_pipeline.storage"
               and any(a.name == "join" for a in n.names) for n in ast.walk(tree))
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if (isinstance(f, ast.Attribute) and f.attr == "join"
                    and isinstance(f.value, ast.Name) and f.value.id == "storage") or (
                    bare and isinstance(f, ast.Name) and f.id == "join"):
                lines.append(node.lineno)
    return lines


def test_only_layout_spells_paths_under_the_output_root():
    bad = [f"{p.relative_to(PACKAGE.parent)}:{line}" for p in PACKAGE.rglob("*.py")
           if module_name(p) not in JOIN_ALLOWED for line in storage_joins(p)]
    assert not bad, f"paths joined outside covid_pipeline/layout.py: {bad}"


def test_storage_joins_are_seen(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("from covid_pipeline import storage\nstorage.join('a', 'b')\n")
    assert storage_joins(path) == [2]
