"""Does OpenMP's passive waiting (OMP_WAIT_POLICY=PASSIVE) help or hurt? (issue 15: `make
test` sets it in its Slurm phase only)

Two measurements, each alternating spinning (OpenMP's default) and passive waiting so load
drifts hit both alike; prints the medians and the ratio:

- ``train`` (default): the default's pretraining alone on the cores, --iters steps from the
  built default's base checkpoint and shards (run `make demo` first), seconds per step as the
  training reports it;
- ``slurm-phase``: `make test`'s Slurm phase as the Makefile runs it (the Slurm graph beside
  the train, quantize and plot stacks' tests), its wall time; needs Slurm up
  (scripts/slurm-up.sh) and the environments; about 6-7 minutes a run.

    .venv/bin/python benchmarks/omp_wait_policy.py train [--runs 3]
    .venv/bin/python benchmarks/omp_wait_policy.py slurm-phase [--runs 1]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
POLICIES = ("spinning", "passive")
STEP = re.compile(r"step (\d+)/(\d+) .* ([0-9.]+) s/step")


def env_for(policy: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    if policy == "passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    return env


def train_once(policy: str, iters: int) -> float:
    """Seconds per step of the last reported steps of a pretraining run."""
    base = ROOT / "results/tiny-llama"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        cmd = [
            str(ROOT / ".envs/train/bin/llmbuild"), "train", "run", "--mode", "pretrain",
            "--input", str(base / "base/mcore"), "--data", str(base / "shards/pretrain"),
            "--output", str(out), "--train-log", str(Path(tmp) / "log.jsonl"),
            "--train-iters", str(iters), "--lr", "0.002", "--min-lr", "0.0001",
            "--warmup-iters", "20", "--micro-batch-size", "16", "--global-batch-size", "16",
            "--seq-length", "128", "--seed", "1234", "--device", "cpu",
            "--save-interval", str(iters * 2), "--threads", "2",
        ]  # fmt: skip
        done = subprocess.run(cmd, env=env_for(policy) | {"OMP_NUM_THREADS": "2"},
                              capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"omp_wait_policy: training failed: {done.stderr[-2000:]}")
    rates = [float(m.group(3)) for m in STEP.finditer(done.stderr)]
    if not rates:
        raise SystemExit("omp_wait_policy: no step lines in the training's output")
    return rates[-1]


def slurm_phase_once(policy: str) -> float:
    """Wall seconds of the Slurm graph beside the train, quantize and plot stacks' tests."""
    env = env_for(policy)
    stacks = [
        [".envs/train/bin/python", "-m", "pytest", "-q", "-n", "2", "--dist", "loadfile",
         "-m", "not gpu and not slow", "tests/data", "tests/convert", "tests/train"],
        [".envs/quantize/bin/python", "-m", "pytest", "-q", "-m", "not gpu and not slow",
         "tests/quantize"],
        [".envs/plot/bin/python", "-m", "pytest", "-q", "-m", "not gpu and not slow",
         "tests/plot"],
    ]  # fmt: skip
    slurm_cmd = [".venv/bin/python", "-m", "pytest", "-q", "-s", "-m", "slurm", "tests/cluster"]
    started = time.perf_counter()
    slurm = subprocess.Popen(slurm_cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    for cmd in stacks:
        if subprocess.run(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL).returncode != 0:
            slurm.kill()
            raise SystemExit(f"omp_wait_policy: {' '.join(cmd)} failed")
    if slurm.wait() != 0:
        raise SystemExit("omp_wait_policy: the Slurm test failed (see logs/test-slurm.log)")
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", nargs="?", choices=("train", "slurm-phase"), default="train")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--iters", type=int, default=60)
    args = ap.parse_args()
    if args.what == "train" and not (ROOT / "results/tiny-llama/shards/pretrain").is_dir():
        raise SystemExit("omp_wait_policy: no built default here; run `make demo` first")
    if args.what == "slurm-phase" and shutil.which("sbatch") is None:
        raise SystemExit("omp_wait_policy: no Slurm here; run scripts/slurm-up.sh first")
    unit = "s/step" if args.what == "train" else "s"
    got: dict[str, list[float]] = {p: [] for p in POLICIES}
    for i in range(args.runs):
        for policy in POLICIES if i % 2 == 0 else tuple(reversed(POLICIES)):
            value = (
                train_once(policy, args.iters) if args.what == "train" else slurm_phase_once(policy)
            )
            got[policy].append(value)
            print(f"run {i + 1} {policy:8s} {value:.3f} {unit}", flush=True)
    med = {p: statistics.median(v) for p, v in got.items()}
    for policy, value in med.items():
        print(f"median {policy:8s} {value:.3f} {unit}")
    print(f"passive / spinning: {med['passive'] / med['spinning']:.2f}x ({args.what})")


if __name__ == "__main__":
    sys.exit(main())
