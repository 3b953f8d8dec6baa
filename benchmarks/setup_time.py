"""How long does setup take? (issue 15: a fresh clone's setup <= 5 min on this machine)

Setup is the driver's venv (`make setup`) plus one venv per stack (`make envs`, each made by
`llmbuild envs create` from envs/<stack>.txt). Each stack's environment is made here into a
scratch directory twice, by uv's pip interface (what `make envs` uses: the driver's venv has
uv) and by pip (LLMBUILD_INSTALLER=pip), alternating per stack so load drifts hit both alike.
Both read the same package caches of this machine (uv's and pip's), as a second setup would;
the first setup on an empty machine downloads the wheels once more. Prints each stack's two
times, the totals and the ratio.

    .venv/bin/python benchmarks/setup_time.py [--stacks train quantize serve-cpu bench plot]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STACKS = ["train", "quantize", "serve-cpu", "bench", "plot"]


def create(stack: str, prefix: Path, installer: str) -> float:
    """Seconds `llmbuild envs create` takes for ``stack`` at ``prefix`` with ``installer``."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if installer == "pip":
        env["LLMBUILD_INSTALLER"] = "pip"
    else:
        env.pop("LLMBUILD_INSTALLER", None)
        if shutil.which("uv", path=env["PATH"]) is None:
            raise SystemExit("setup_time: no uv beside this Python: run it with .venv/bin/python")
    cmd = [sys.executable, "-m", "llmbuild", "envs", "create", "--spec", f"envs/{stack}.txt"]
    cmd += ["--prefix", str(prefix), "--marker", str(prefix / "ready.json")]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode:
        raise SystemExit(f"setup_time: {stack} with {installer} failed: {proc.stderr[-2000:]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stacks", nargs="+", default=STACKS, choices=STACKS)
    args = ap.parse_args()
    totals = {"uv": 0.0, "pip": 0.0}
    with tempfile.TemporaryDirectory(prefix="llmbuild-setup-") as tmp:
        for i, stack in enumerate(args.stacks):
            order = ["uv", "pip"] if i % 2 == 0 else ["pip", "uv"]
            took = {}
            for installer in order:
                prefix = Path(tmp) / f"{stack}-{installer}"
                took[installer] = create(stack, prefix, installer)
                shutil.rmtree(prefix)
                print(f"{stack:10s} {installer:4s} {took[installer]:7.1f} s", flush=True)
            for k, v in took.items():
                totals[k] += v
    print(f"stacks ({', '.join(args.stacks)}): uv {totals['uv']:.1f} s, pip {totals['pip']:.1f} s")
    print(f"pip / uv: {totals['pip'] / totals['uv']:.1f}x")


if __name__ == "__main__":
    main()
