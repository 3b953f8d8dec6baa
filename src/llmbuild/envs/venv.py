"""Build a stack's virtual environment from its pinned spec, and record what it holds.

A spec is a pip requirements file with exact pins. Lines ``# post: <shell>`` are run after the
install with the venv's bin first on PATH (for example to remove a package another drags in).
The marker file written last is the graph's node for the environment: rules depend on it, so
a changed spec rebuilds the environment and reruns exactly the rules that use it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from llmbuild.atomic import atomic_file
from llmbuild.errors import UserError

POST = "# post:"


@dataclass(frozen=True)
class Spec:
    path: Path
    requirements: tuple[str, ...]
    post: tuple[str, ...]
    digest: str


def parse_spec(path: str | Path) -> Spec:
    path = Path(path)
    if not path.is_file():
        raise UserError("environment spec not found; add envs/<stack>.txt", path=path)
    text = path.read_text()
    reqs, post = [], []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line.startswith(POST):
            post.append(line[len(POST) :].strip())
        elif line and not line.startswith("#"):
            name = line.split(";")[0].strip()
            if not line.startswith("-") and "==" not in name and " @ " not in name:
                raise UserError(f"{name!r} is not pinned; write name==version", path=f"{path}:{n}")
            reqs.append(line)
    return Spec(path, tuple(reqs), tuple(post), hashlib.sha256(text.encode()).hexdigest())


def _run(
    cmd: list[str] | str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    shell: bool = False,
) -> None:
    print("+", cmd if isinstance(cmd, str) else " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, env=env, cwd=cwd, shell=shell)
    if proc.returncode:
        raise UserError(
            f"command failed with exit code {proc.returncode}: {cmd}; see the log above",
            field="environment",
        )


def create(
    spec_path: str | Path, prefix: str | Path, marker: str | Path, python: str, project: str | Path
) -> dict[str, object]:
    """Create or converge the venv at ``prefix`` to ``spec``; write ``marker`` last."""
    spec = parse_spec(spec_path)
    prefix, project = Path(prefix).resolve(), Path(project).resolve()
    stamp = prefix / "spec.sha256"
    # A changed spec starts from scratch, so nothing it dropped lingers; an environment with
    # no stamp (made by hand, or an install that was killed) is converged in place.
    if prefix.exists() and stamp.exists() and stamp.read_text().strip() != spec.digest:
        print(f"{spec_path} changed: recreating {prefix}", flush=True)
        shutil.rmtree(prefix)
    if not (prefix / "bin" / "python").exists():
        if shutil.which(python) is None and not Path(python).exists():
            raise UserError(
                f"interpreter {python!r} not found; set envs.python", field="envs.python"
            )
        _run([python, "-m", "venv", str(prefix)])
    pip = [str(prefix / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    install = installer(prefix)
    if spec.requirements:
        _run(install + ["-r", str(Path(spec_path).resolve())])
    env = dict(
        os.environ, PATH=f"{prefix / 'bin'}:{os.environ.get('PATH', '')}", VIRTUAL_ENV=str(prefix)
    )
    for cmd in spec.post:
        _run(cmd, env=env, cwd=project, shell=True)
    _run(install + ["--no-deps", "-e", str(project)])
    stamp.write_text(spec.digest + "\n")
    frozen = subprocess.run(
        pip + ["freeze", "--exclude-editable"], capture_output=True, text=True, check=True
    ).stdout.split()
    version = subprocess.run(
        [str(prefix / "bin" / "python"), "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    rec = {
        "stack": Path(spec_path).stem,
        "spec": str(spec_path),
        "spec_sha256": spec.digest,
        "prefix": _relative(prefix),  # the tree may move
        "python": version,
        "packages": sorted(frozen),
        "builder_python": sys.version.split()[0],
    }
    with atomic_file(marker) as fh:
        json.dump(rec, fh, indent=2)
        fh.write("\n")
    return rec


def installer(prefix: Path) -> list[str]:
    """The install command for the venv at ``prefix``: uv's pip interface when ``uv`` is on
    PATH (the driver's venv has it; ``make`` puts it first), which resolves and installs the
    same pins as pip in seconds instead of minutes, with pip's own settings (find-links,
    constraints, indexes: ``pip config list``) passed on; else pip. LLMBUILD_INSTALLER=pip
    forces pip.

    Both leave compiled bytecode beside every installed module (pip does by default, uv when
    asked): an interpreter that may not write it (PYTHONDONTWRITEBYTECODE, a read-only shared
    filesystem) would otherwise compile torch, transformers and vLLM from source in every
    process, which tripled a job's start (17 s against 6 s for a small tokenization, 32 s
    against 13 s to import vLLM's server on a 2-core machine)."""
    python = str(prefix / "bin" / "python")
    uv = shutil.which("uv")
    if uv is None or os.environ.get("LLMBUILD_INSTALLER") == "pip":
        return [python, "-m", "pip", "--disable-pip-version-check", "install"]
    listed = subprocess.run(
        [python, "-m", "pip", "config", "list"], capture_output=True, text=True
    ).stdout
    return [uv, "pip", "install", "--python", python, "--compile-bytecode", *uv_flags(listed)]


def uv_flags(pip_config: str) -> list[str]:
    """uv's flags for pip's settings, from ``pip config list`` (``global.find-links='/x'``):
    find-links, constraint, index-url and extra-index-url; local paths and file:// indexes
    that do not exist are left out (pip only warns about them). pip takes the best version
    over every index, so uv does too (--index-strategy unsafe-best-match)."""
    flag = {
        "find-links": "--find-links",
        "constraint": "--constraint",
        "index-url": "--index-url",
        "extra-index-url": "--extra-index-url",
    }
    out: list[str] = ["--index-strategy", "unsafe-best-match"]
    seen: set[tuple[str, str]] = set()
    for line in pip_config.splitlines():
        key, sep, value = line.partition("=")
        name = key.rsplit(".", 1)[-1]
        if not sep or name not in flag:
            continue
        for item in value.strip().strip("'\"").split():
            local = item[len("file://") :] if item.startswith("file://") else item
            if "://" not in local and not os.path.exists(local):
                continue
            if (name, item) not in seen:
                seen.add((name, item))
                out += [flag[name], item]
    return out


def _relative(path: Path) -> str:
    """``path`` relative to the working directory when inside it (a record survives a move)."""
    here = Path.cwd()
    p = Path(path).absolute()
    return str(p.relative_to(here)) if p.is_relative_to(here) else str(p)
