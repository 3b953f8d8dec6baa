"""Helpers for the cluster tests: plan the real graph in a scratch directory, put stand-in
cluster tools (sinfo, srun, scontrol, squeue, nvidia-smi) on PATH."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests" / "workflow"))  # snakefork: Snakemake runs, forked
import snakefork  # noqa: E402


def tool(bindir: Path, name: str, body: str) -> None:
    """An executable shell script ``name`` in ``bindir``."""
    bindir.mkdir(parents=True, exist_ok=True)
    path = bindir / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)


@pytest.fixture
def scratch(tmp_path):
    """A directory to plan the graph in: the config, the env specs, an overlay file."""
    shutil.copytree(ROOT / "config", tmp_path / "config")
    shutil.copytree(ROOT / "envs", tmp_path / "envs")
    return tmp_path


def snakemake_cmd(workdir: Path) -> list[str]:
    return [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(workdir)]


def plan(workdir: Path, overlay: dict, *args: str, path_first: Path | None = None):
    """`snakemake -n -p` of the default config plus ``overlay``; PATH gets ``path_first``."""
    (workdir / "overlay.yaml").write_text(json.dumps(overlay))
    cmd = snakemake_cmd(workdir) + ["-n", "-p", "--forceall", "--cores", "64"]
    cmd += ["--configfile", "config/config.yaml", "overlay.yaml", *args]
    env = dict(os.environ)
    if path_first is not None:
        env["PATH"] = f"{path_first}:{env['PATH']}"
    return snakefork.run(cmd, capture_output=True, text=True, timeout=300, cwd=workdir, env=env)


def error_lines(proc) -> list[str]:
    return [ln for ln in (proc.stdout + proc.stderr).splitlines() if "error:" in ln]


def pytest_collection_modifyitems(config, items):
    """The Slurm end-to-end run (a real Slurm, the whole graph, minutes) runs only when asked
    for with `-m slurm`, as `make test-slurm` does."""
    if "slurm" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="needs a real Slurm: make test-slurm (-m slurm)")
    for item in items:
        if "slurm" in item.keywords:
            item.add_marker(skip)
