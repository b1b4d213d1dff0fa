"""Import rules of the package, read from the source with `ast` (nothing is imported), so that an
import inside a function counts as much as one at the top:

- core (everything outside compress_distill/flows/ and compress_distill/tasks/) never imports
  Prefect: flows/ holds the Prefect flows and their helpers, tasks/ the Prefect task wrappers
  around the core runner;
- tasks/ never imports flows/ (flows use tasks, not the reverse);
- no import cycle among the modules of flows/;
- plan.py (the DAG) imports neither serving nor the mini world;
- traces/ and cluster/ are groupings of modules: their __init__ imports nothing, so importing one
  module never loads the others.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

from .conftest import REPO

PACKAGE = "compress_distill"
ROOT = REPO / PACKAGE
PREFECT = ("prefect", "prefect_dask")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imports(path: Path) -> set[str]:
    """Absolute names of everything `path` imports, anywhere in it. `from X import y` yields X and
    X.y (y may be a submodule); relative imports are resolved against the module's package."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names if a.name != "*")
    return out


def _under(mod: str, prefix: str) -> bool:
    return mod == prefix or mod.startswith(prefix + ".")


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def violations(sources: dict[str, Path], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(f"{_rel(p)} imports {m}" for p in sources.values() for m in imports(p)
                  if any(_under(m, f) for f in forbidden))


def _subpackage(name: str) -> dict[str, Path]:
    return {m: p for m, p in modules().items() if _under(m, f"{PACKAGE}.{name}")}


def test_the_rules_see_relative_and_function_level_imports() -> None:
    found = imports(ROOT / "flows" / "grid.py")
    assert {f"{PACKAGE}.flows.cancel", f"{PACKAGE}.flows.artifacts", f"{PACKAGE}.tasks.nodes", "prefect"} <= found
    assert f"{PACKAGE}.flows.grid" in imports(ROOT / "cli.py")  # inside the `run` command's function
    assert len(_subpackage("flows")) > 5 and len(_subpackage("tasks")) >= 2


def test_core_never_imports_prefect() -> None:
    core = {m: p for m, p in modules().items()
            if not (_under(m, f"{PACKAGE}.flows") or _under(m, f"{PACKAGE}.tasks"))}
    assert violations(core, PREFECT) == []


def test_tasks_never_import_flows() -> None:
    assert violations(_subpackage("tasks"), (f"{PACKAGE}.flows",)) == []


def flows_graph() -> dict[str, set[str]]:
    """flows module -> the flows modules it imports (the package's __init__ is no edge)."""
    flows = {m: p for m, p in _subpackage("flows").items() if m != f"{PACKAGE}.flows"}
    return {m: {d for d in imports(p) if d in flows and d != m} for m, p in flows.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        path.append(n)
        for d in sorted(graph.get(n, ())):
            if state.get(d) == 1:
                return path[path.index(d):] + [d]
            if d not in state and (cycle := visit(d)) is not None:
                return cycle
        path.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (cycle := visit(n)) is not None:
            return cycle
    return None


def test_find_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle_among_flows_modules() -> None:
    graph = flows_graph()
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])
    assert f"{PACKAGE}.flows.cancel" in graph[f"{PACKAGE}.flows.grid"]  # the graph has edges


def test_plan_imports_neither_serving_nor_miniworld() -> None:
    plan = {f"{PACKAGE}.plan": ROOT / "plan.py"}
    assert violations(plan, (f"{PACKAGE}.serving", f"{PACKAGE}.miniworld")) == []


def test_grouping_packages_import_nothing() -> None:
    for group in ("traces", "cluster"):
        assert imports(ROOT / group / "__init__.py") == set(), group
        assert len(_subpackage(group)) > 5  # the modules are there
