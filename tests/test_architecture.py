"""The layers of the package, read from its source: no import circle, the library never imports the
applications built on it, the models and the data stand on the ground floor alone, inference does not
import the engine, and the config imports neither data, metrics nor torch."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SRC

PACKAGE = SRC / "segformer"
# Applications: built on the library, never imported by it.
APPLICATIONS = ("apps", "bench", "cli", "serve", "__main__")


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


# -- the layers ---------------------------------------------------------------------------------------------

# The ground floor: imported by every layer, importing nothing above it.
GROUND_FLOOR = ("config", "errors", "fileio", "runtime", "devices", "distributed")


def _in(module: str, *packages: str) -> bool:
    return any(module == f"segformer.{p}" or module.startswith(f"segformer.{p}.") for p in packages)


def layer_violations(graph: dict[str, set[str]], layer: str, allowed: tuple[str, ...]) -> list[str]:
    """ "A imports B" for each module A of `layer` (a package or module of segformer) that imports a
    module of the package outside `layer` and the `allowed` ones."""
    return sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        if _in(module, layer)
        for target in targets
        if target != "segformer" and not _in(target, layer, *allowed)
    )


def test_layer_violations_are_found():
    graph = {
        "segformer.models.mit": {"segformer.errors", "segformer.models.decoder"},
        "segformer.models.segformer": {"segformer.config", "segformer.data.labels"},
        "segformer.config.recipe": {"segformer.metrics"},
    }
    assert layer_violations(graph, "models", GROUND_FLOOR) == [
        "segformer.models.segformer imports segformer.data.labels"
    ]
    assert layer_violations(graph, "config", ("errors",)) == [
        "segformer.config.recipe imports segformer.metrics"
    ]
    assert layer_violations(graph, "data", GROUND_FLOOR) == []


@pytest.mark.parametrize("layer", ["models", "data"])
def test_models_and_data_import_only_the_ground_floor(layer):
    # The model and data packages are built on the ground floor alone: a test of either needs neither
    # the other, nor inference, the engine or the checkpoints.
    found = layer_violations(import_graph(), layer, GROUND_FLOOR)
    assert not found, "\n".join(found)


def test_inference_does_not_import_the_engine():
    found = [v for v in layer_violations(import_graph(), "inference", ()) if " imports segformer.engine" in v]
    assert not found, "\n".join(found)


def test_the_ground_floor_imports_nothing_above_it():
    graph = import_graph()
    for layer in GROUND_FLOOR:
        found = layer_violations(graph, layer, GROUND_FLOOR)
        assert not found, "\n".join(found)


def external_imports(path: Path) -> set[str]:
    """The top-level names of the modules outside the package that `path` imports, at any level."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names.add((node.module or "").split(".")[0])
    return names - {"segformer"}


def test_the_config_imports_no_data_no_metrics_and_no_torch():
    # Recipes are checked before torch or the data are loaded; the names they are checked against
    # are handed down to the config by their owners (segformer.config.validate.provide).
    found = layer_violations(import_graph(), "config", ("errors",))
    assert not found, "\n".join(found)
    heavy = {"torch", "numpy", "cv2", "PIL", "matplotlib"}
    for path in (PACKAGE / "config").glob("*.py"):
        assert not external_imports(path) & heavy, f"{path.name} imports {external_imports(path) & heavy}"
    code = "import sys, segformer.config; print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), check=True)
    assert out.stdout.strip() == "[]", out.stdout


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(SRC)}


# Modules that read on a screen or two: the training side of the package (issue 28).
READABLE = ("config", "engine", "models/registry.py", "runtime.py", "cli/train.py", "cli/evaluate.py")


def too_long(path: Path, module_lines: int = 500, function_lines: int = 80) -> list[str]:
    """The module `path` if it has more than `module_lines` lines, and its functions over
    `function_lines`."""
    text = path.read_text()
    found = [f"{path.name}: {len(text.splitlines())} lines"] if len(text.splitlines()) > module_lines else []
    for node in ast.walk(ast.parse(text)):
        length = (
            node.end_lineno - node.lineno + 1
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            else 0
        )
        if length > function_lines:
            found.append(f"{path.name}:{node.lineno} {node.name}: {length} lines")
    return found


def test_the_training_side_has_no_module_over_500_lines_and_no_function_over_80(tmp_path):
    long = tmp_path / "long.py"
    long.write_text("def f():\n" + "    x = 1\n" * 80)
    assert too_long(long) == ["long.py:1 f: 81 lines"]
    paths = [
        p
        for name in READABLE
        for p in ([PACKAGE / name] if name.endswith(".py") else (PACKAGE / name).rglob("*.py"))
    ]
    found = [f for p in paths for f in too_long(p)]
    assert not found, "\n".join(found)
