"""One standalone Python file from definitions of this package: the source bundler behind ``run.py``.

`standalone_source` copies the definitions it is asked for, and every definition of the package they
use, from the package's own source (comments included) into one file whose only imports are other
libraries'. The CE7454 ``run.py`` is made this way from `segformer.apps.ce7454`, so it computes exactly
what the package computes and cannot drift from it.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import SegformerError

# An import kept in generated code: (module, name, alias); name None for ``import module [as alias]``.
_Import = tuple[str, str | None, str | None]


@dataclass
class _Module:
    """The top-level definitions and imports of one of our modules, from its source."""

    name: str
    source: str
    defs: dict[str, ast.stmt] = field(default_factory=dict)
    imports: dict[str, _Import] = field(default_factory=dict)  # bound name -> import of another library
    relative: dict[str, tuple[str, str]] = field(default_factory=dict)  # bound name -> (our module, name)

    @classmethod
    def parse(cls, name: str) -> _Module:
        module = importlib.import_module(name)
        out = cls(name, inspect.getsource(module))
        for node in ast.parse(out.source).body:
            if isinstance(node, ast.Import):
                for a in node.names:
                    out.imports[a.asname or a.name.split(".")[0]] = (a.name, None, a.asname)
            elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
                for a in node.names:
                    if node.level:
                        where = "." * node.level + (node.module or "")
                        out.relative[a.asname or a.name] = (
                            importlib.util.resolve_name(where, module.__package__),
                            a.name,
                        )
                    else:
                        out.imports[a.asname or a.name] = (node.module or "", a.name, a.asname)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                out.defs[node.name] = node
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for n in (n for t in targets for n in ast.walk(t)):
                    if isinstance(n, ast.Name):
                        out.defs[n.id] = node
        return out

    def bound_names(self, node: ast.stmt) -> list[str]:
        """The names a top-level statement binds."""
        return [name for name, n in self.defs.items() if n is node]

    def emit(self, node: ast.stmt) -> str:
        """The source of a top-level statement, without registry decorators (``@register_*``)."""
        lines = self.source.splitlines()
        decorators = [d for d in getattr(node, "decorator_list", []) if not _is_registration(d)]
        head = [f"@{ast.get_source_segment(self.source, d)}" for d in decorators]
        return "\n".join([*head, *lines[node.lineno - 1 : node.end_lineno]])


def _is_registration(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return isinstance(target, ast.Name) and target.id.startswith("register")


def _used_names(node: ast.stmt) -> tuple[set[str], set[str]]:
    """Names a top-level statement needs when it runs, and names only its annotations mention (never
    evaluated under ``from __future__ import annotations``). Registry decorators are left out."""
    runtime: set[str] = set()
    annotation: set[str] = set()

    def visit(n: ast.AST, names: set[str]) -> None:
        if isinstance(n, ast.ImportFrom) and n.level:
            raise SegformerError(f"cannot inline code that imports inside a function (line {n.lineno})")
        if isinstance(n, ast.Name):
            names.add(n.id)
        for key, value in ast.iter_fields(n):
            if key == "decorator_list":
                value = [d for d in value if not _is_registration(d)]
            for child in value if isinstance(value, list) else [value]:
                if isinstance(child, ast.AST):
                    visit(child, annotation if key in ("annotation", "returns") else names)

    visit(node, runtime)
    return runtime, annotation - runtime


def _import_block(imports: set[_Import]) -> list[str]:
    """isort-style import lines: standard library, then third party; ``import x`` before ``from``."""
    sections: list[list[str]] = [[], []]
    froms: dict[str, list[str]] = {}
    for module, name, alias in imports:
        if name is None:
            line = f"import {module}" + (f" as {alias}" if alias else "")
            sections[module.split(".")[0] not in sys.stdlib_module_names].append(line)
        else:
            froms.setdefault(module, []).append(name + (f" as {alias}" if alias else ""))
    for module, names in froms.items():
        order = sorted(names, key=lambda n: (not n.isupper(), not n[0].isupper(), n))  # isort's by type
        line = f"from {module} import {', '.join(order)}"
        sections[module.split(".")[0] not in sys.stdlib_module_names].append(line)
    key = lambda line: (line.startswith("from"), line.split()[1].lower())  # noqa: E731
    return [line for section in sections if section for line in [*sorted(section, key=key), ""]]


def standalone_source(
    roots: Sequence[tuple[str, str]], header: str = "", footer: str = "", preamble: str = ""
) -> str:
    """One Python file holding the definitions `roots` (``(module, name)`` pairs of this package) and
    everything they use from the package, copied from the source with their comments; imports of
    other libraries are kept, imports from the package are replaced by the copied definitions.

    Definitions come module by module, a module after those it uses, each in source order, so
    definition-time references (base classes, default arguments) resolve. Classes of the package that
    only appear in annotations (e.g. ``config: ModelConfig``) become aliases of `typing.Any`. Two
    different definitions of one name, or function-level imports from the package, are errors rather
    than silent breakage. `preamble` is code that runs before the imports (they take seconds).
    """
    modules: dict[str, _Module] = {}
    needed: dict[str, set[str]] = {}  # module -> names of its definitions to copy
    depends: dict[str, list[str]] = {}  # module -> modules its copied definitions use
    imports: dict[str, _Import] = {}  # bound name -> import
    owner: dict[str, str] = {}  # copied name -> its module
    annotations: set[tuple[str, str]] = set()  # (module, name) seen in annotations

    def lookup(module: str, name: str) -> tuple[str, str] | _Import | None:
        """Where `name` in `module` comes from: (our module, name), a library import, or None."""
        if module not in modules:
            modules[module] = _Module.parse(module)
            needed[module], depends[module] = set(), []
        m = modules[module]
        if name in m.defs:
            return module, name
        if name in m.imports:
            return m.imports[name]
        if name in m.relative:
            where, original = m.relative[name]
            if original != name:
                raise SegformerError(f"cannot inline {module}: it imports {original} as {name}")
            return lookup(where, name)
        return None  # a builtin or a local name

    def use_import(name: str, spec: _Import) -> None:
        if imports.setdefault(name, spec) != spec:
            raise SegformerError(f"cannot inline: {name} names two different imports")

    def resolve(module: str, name: str) -> str | None:
        """Copy what `name` in `module` needs; returns the module defining it (None: not ours)."""
        found = lookup(module, name)
        if found is None:
            return None
        if len(found) == 3:
            use_import(name, found)  # type: ignore[arg-type]
            return None
        where = found[0]
        m = modules[where]
        if owner.setdefault(name, where) != where:
            raise SegformerError(f"cannot inline {where}.{name}: {owner[name]} defines {name} too")
        if name not in needed[where]:
            node = m.defs[name]
            needed[where].update(m.bound_names(node))
            runtime, annotation = _used_names(node)
            for used in sorted(runtime):
                dep = resolve(where, used)
                if dep is not None and dep != where and dep not in depends[where]:
                    depends[where].append(dep)
            annotations.update((where, a) for a in annotation)
        return where

    for module, name in roots:
        if resolve(module, name) != module:
            raise SegformerError(f"{module}.{name} is not a top-level definition")
    aliases = []
    for module, name in sorted(annotations):
        found = lookup(module, name)
        if found is not None and len(found) == 3:
            use_import(name, found)  # type: ignore[arg-type]
        elif found is not None and found[1] not in owner and name not in imports:
            aliases.append(f"{name} = Any  # {found[0]}.{name}, only named in annotations here")
            owner[name] = found[0]
    if aliases:
        use_import("Any", ("typing", "Any", None))

    return _assemble(roots, modules, needed, depends, imports, aliases, header, footer, preamble)


def _assemble(
    roots: Sequence[tuple[str, str]],
    modules: dict[str, _Module],
    needed: dict[str, set[str]],
    depends: dict[str, list[str]],
    imports: dict[str, _Import],
    aliases: list[str],
    header: str,
    footer: str,
    preamble: str,
) -> str:
    """The file's text: header, imports, aliases, then the copied definitions module by module, a module
    after those it uses, each in source order."""
    order: list[str] = []

    def visit(module: str) -> None:
        if module not in order:
            for dep in depends[module]:
                visit(dep)
            order.append(module)

    for module, _ in roots:
        visit(module)
    parts = [
        header.rstrip(),
        "",
        "from __future__ import annotations",
        "",
        *([preamble.strip(), "", ""] if preamble.strip() else []),
        *_import_block(set(imports.values())),
    ]
    parts.extend([*aliases, ""] if aliases else [])
    for module in order:
        m = modules[module]
        nodes = {id(m.defs[n]): m.defs[n] for n in needed[module]}
        parts.append(f"\n\n# ---- {module.replace('.', '/')}.py " + "-" * max(0, 90 - len(module)))
        parts.extend(f"\n\n{m.emit(node)}" for node in sorted(nodes.values(), key=lambda n: n.lineno))
    text = "\n".join(parts).rstrip() + "\n\n\n" + footer.strip() + "\n"
    return re.sub(r"\n{4,}", "\n\n\n", text)  # at most two blank lines between blocks


__all__ = ["standalone_source"]
