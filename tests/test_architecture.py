"""The layers of the package, read from its source: no import circle, and the library never imports the
applications built on it."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import SRC

PACKAGE = SRC / "segformer"
# Applications: built on the library, never imported by it.
APPLICATIONS = ("apps", "bench", "cli", "__main__")


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports, at any level of the file (function-level imports
    included: they are dependencies too). Importing ``a.b.c`` also runs the package ``a.b``, unless
    the importer lies inside ``a.b`` (whose ``__init__`` has run before it)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            found: list[str] = []
            if isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                # `from pkg import sub` imports the submodule; `from pkg import name` the package
                found = [
                    f"{module}.{a.name}" if f"{module}.{a.name}" in modules else module for a in node.names
                ]
            for target in found:
                while target and target not in modules:  # `import a.b.c` of a name inside a module
                    target = target.rpartition(".")[0]
                if not target.startswith("segformer"):
                    continue
                targets.add(target)
                parent = target.rpartition(".")[0]
                # the package __init__ files it runs (not those this module is inside: they have run)
                while parent not in ("", "segformer") and not name.startswith(parent + "."):
                    targets.add(parent)
                    parent = parent.rpartition(".")[0]
        graph[name] = targets - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of `graph` (as a list of modules, first = last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_sees_imports_of_every_form():
    graph = import_graph()
    # from .onnx import OnnxRuntimeModel
    assert "segformer.inference.onnx" in graph["segformer.inference.predictor"]
    assert "segformer.checkpoint.native" in graph["segformer.checkpoint"]  # from .native import ...
    assert "segformer.checkpoint" in graph["segformer.inference.predictor"]
    assert "segformer.apps.report" in graph["segformer.apps.attention"]  # a function-level import
    assert "segformer.convert" in graph["segformer.checkpoint.loader"]  # the package of convert.hf
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_the_library_does_not_import_the_applications():
    def is_app(module: str) -> bool:
        return module.split(".")[1] in APPLICATIONS if "." in module else False

    graph = import_graph()
    upward = sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        if not is_app(module) and module != "segformer"
        for target in targets
        if is_app(target)
    )
    assert not upward, "\n".join(upward)
    assert not any(is_app(t) for t in graph["segformer"])  # the public API is the library's
