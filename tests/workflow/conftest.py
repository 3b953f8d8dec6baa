"""Shared by the workflow tests: environments whose `llmbuild` is the fake (fake_llmbuild.py)."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STACKS = ["train", "quantize", "serve-cpu", "bench", "plot"]


def install_fake_envs(wd: Path, frozen: bool = False) -> None:
    """``wd/.envs/<stack>/`` for every stack: the fake as `bin/llmbuild` and a ready marker
    (``frozen``: the marker lists the spec's pins as the environment's packages)."""
    fake = (ROOT / "tests/workflow/fake_llmbuild.py").read_text()
    for stack in STACKS:
        bin_dir = wd / ".envs" / stack / "bin"
        bin_dir.mkdir(parents=True)
        exe = bin_dir / "llmbuild"
        exe.write_text(f"#!{sys.executable}\n" + fake)
        exe.chmod(0o755)
        marker: dict = {"stack": stack}
        if frozen:
            spec = f"envs/{stack}.txt"
            pins = [ln.strip() for ln in (wd / spec).read_text().splitlines() if "==" in ln]
            marker |= {"spec": spec, "packages": [p.split(";")[0].strip() for p in pins]}
        (wd / ".envs" / stack / "ready.json").write_text(json.dumps(marker))


@pytest.fixture(scope="session")
def fake_envs():
    return install_fake_envs
