"""The layout is the architecture: no import cycle between tl_core's packages (lazy imports included), no
airflow in tl_core, serving (export/) never imports train/, and no function or class far over its size rule."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "tl_core"


def _imports() -> dict[str, set[str]]:
    """module -> every tl_core module it imports, at module level or inside functions."""
    out: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
        out[module] = names
    return out


def _package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle in ``graph`` (depth-first search), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_between_packages() -> None:
    graph: dict[str, set[str]] = {}
    for module, names in _imports().items():
        deps = {_package(n) for n in names if n.startswith("tl_core.")} - {_package(module), "tl_core"}
        graph.setdefault(_package(module), set()).update(deps)
    assert _cycle(graph) is None, f"import cycle between packages: {' -> '.join(_cycle(graph) or [])}"
    # the check itself finds a cycle when there is one
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_core_never_imports_airflow_and_serving_never_imports_training() -> None:
    imports = _imports()
    airflow = sorted(m for m, names in imports.items() if any(n == "airflow" or n.startswith("airflow.")
                                                                for n in names))
    assert airflow == []
    serving = sorted(m for m, names in imports.items() if m.startswith("tl_core.export")
                     and any(n.startswith("tl_core.train") for n in names))
    assert serving == []


def test_functions_and_classes_keep_to_their_size() -> None:
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            limit = 200 if isinstance(node, ast.ClassDef) else 60
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                if size > limit:
                    too_long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({size} lines)")
    assert too_long == []
