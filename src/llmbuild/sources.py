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


#: module -> [its file's digest, the llmbuild modules it imports], kept between plannings in
#: STAMP_DIR/IMPORTS_CACHE of the working directory: parsing the package's ~130 modules is a
#: third of every Snakemake start's planning; the digest (read for the stamps anyway) finds an
#: unchanged module's imports without parsing it, and an edited one's entry is replaced
IMPORTS_CACHE = "imports.json"
_parsed: dict[str, list] = {}
_parsed_new = False
_parsed_loaded: set[str] = set()


def _load_parsed(cwd: str) -> None:
    import json

    if cwd in _parsed_loaded:
        return
    _parsed_loaded.add(cwd)
    try:
        doc = json.loads((Path(cwd) / STAMP_DIR / IMPORTS_CACHE).read_text())
    except (OSError, ValueError):
        return
    if isinstance(doc, dict):
        for name, entry in doc.items():
            ok = isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)
            if ok and isinstance(entry[1], list) and all(isinstance(m, str) for m in entry[1]):
                _parsed.setdefault(name, entry)


def _save_parsed(cwd: str) -> None:
    """Writes the cache when this planning parsed a module it did not have."""
    import json

    from llmbuild.atomic import atomic_file

    global _parsed_new
    if _parsed_new:
        with atomic_file(Path(cwd) / STAMP_DIR / IMPORTS_CACHE) as fh:
            fh.write(json.dumps(_parsed, sort_keys=True))
        _parsed_new = False


@functools.cache
def _imports(path: Path, name: str) -> frozenset[str]:
    """llmbuild modules a module imports anywhere (also inside functions); parsed once per
    planning however many groups' closures share it, and not at all when the module's
    digest is in the cache (IMPORTS_CACHE)."""
    global _parsed_new
    digest = _digest(path)
    cached = _parsed.get(name)
    if cached is not None and cached[0] == digest:
        return frozenset(cached[1])
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
    out = frozenset(m for m in found if m == "llmbuild" or m.startswith("llmbuild."))
    _parsed[name] = [digest, sorted(out)]
    _parsed_new = True
    return out


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


#: where each group's source stamp lives, below the working directory
STAMP_DIR = ".llmbuild/sources"


def stamp(group: str) -> str:
    """The one graph input that stands for ``group``'s source files: STAMP_DIR/<group>.txt, a
    line ``<sha256>  llmbuild/<path>`` per file of the closure. Written when the graph is
    planned, only when its text changes, and dated as the newest of its files: an edited
    source file makes the stamp newer than what the group's rules made (they rerun), an
    untouched tree leaves it as it was.
    One input instead of the closure's 15 to 40 files per job: planning a graph of a thousand
    jobs reads, checks and prints tens of thousands of paths fewer."""
    import os

    return _stamp(group, os.getcwd())


@functools.cache
def _stamp(group: str, cwd: str) -> str:
    import os

    from llmbuild.atomic import atomic_file

    root = PACKAGE_DIR.parent
    _load_parsed(cwd)
    files = [(rel, root / rel) for rel in group_sources(group)]
    _save_parsed(cwd)
    text = "".join(f"{_digest(f)}  {rel}\n" for rel, f in files)
    path = Path(cwd) / STAMP_DIR / f"{group}.txt"
    try:
        same = path.read_text() == text
    except OSError:
        same = False
    if not same:
        with atomic_file(path) as fh:
            fh.write(text)
        # dated as its newest source file, as if the files themselves were the inputs: what
        # was made after the last edit stays up to date when the stamp is first written
        newest = max(f.stat().st_mtime for _, f in files)
        os.utime(path, (newest, newest))
    return f"{STAMP_DIR}/{group}.txt"


@functools.cache
def _digest(path: Path) -> str:
    """A source file's sha256 as provenance records it (once per planning, however many
    groups' closures share the file)."""
    from llmbuild.provenance import file_digest

    return file_digest(path)


def read_stamp(path: str | Path) -> dict[str, str]:
    """``llmbuild/<path>`` -> sha256 of a stamp written by :func:`stamp`."""
    out = {}
    for line in Path(path).read_text().splitlines():
        digest, _, rel = line.partition("  ")
        out[rel] = digest
    return out
