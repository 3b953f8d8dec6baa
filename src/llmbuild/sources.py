"""Which of llmbuild's own source files a CLI group runs: its modules' import closure.

The graph lists these files among the inputs of the rules that run the group, so a change to
``src/llmbuild/quantize/`` reruns quantization and what follows it, and not tokenization.
The closure is read from the source (every ``import`` / ``from ... import`` anywhere in a
module, including the ones inside functions that load heavy stacks lazily), so it is known
when the graph is planned, before anything runs. It over-approximates a single verb (a
group's verbs share their closure); Snakemake's checksums of small inputs keep a file whose
date changed but whose bytes did not from rerunning anything.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
ROOT_MODULES = ("llmbuild", "llmbuild.__main__", "llmbuild.cli")


def _module_file(name: str) -> Path | None:
    rel = Path(*name.split("."))
    base = PACKAGE_DIR.parent
    for candidate in (base / rel / "__init__.py", (base / rel).with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


#: the fields of a statement that hold statements (imports are statements, so they are found
#: without visiting any expression: a fraction of ast.walk's nodes)
_BODIES = ("body", "orelse", "finalbody", "handlers", "cases")


def _import_statements(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    out: list[ast.Import | ast.ImportFrom] = []
    stack: list[ast.AST] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
            continue
        for field in _BODIES:
            stack.extend(getattr(node, field, None) or ())
    return out


@functools.cache
def _imports(path: Path, name: str) -> frozenset[str]:
    """llmbuild modules a module imports anywhere (also inside functions); parsed once per
    planning however many groups' closures share it."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _import_statements(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)  # submodules imported by name
    return frozenset(m for m in found if m == "llmbuild" or m.startswith("llmbuild."))


@functools.cache
def closure(*modules: str) -> tuple[str, ...]:
    """Package-relative paths (``llmbuild/x/y.py``) of ``modules`` and all they import,
    their parent packages' ``__init__.py`` included."""
    seen: dict[str, Path] = {}
    todo = list(modules) + list(ROOT_MODULES)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _module_file(name)
        if path is None:
            continue
        seen[name] = path
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        todo += sorted(_imports(path, name))
    root = PACKAGE_DIR.parent
    return tuple(sorted({p.relative_to(root).as_posix() for p in seen.values()}))


def group_sources(group: str) -> tuple[str, ...]:
    """The closure of ``llmbuild <group> ...`` (the group's CLI module, as cli.GROUPS says)."""
    from llmbuild.cli import GROUPS

    return closure(GROUPS[group][0])
