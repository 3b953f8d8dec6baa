"""What does importing megatron-core cost a process, with llmbuild's lazy torch.compile
(mcore/lazy_compile.py) and without? (issue 15: every training, parity and conversion step
of the graph is a process that imports it)

Times fresh interpreters of the train environment, alternating --runs times so load drifts
hit both alike: ``import llmbuild.mcore, megatron.core`` (what llmbuild's steps do) against
``import megatron.core`` alone (megatron-core wraps its fused kernels in torch.compile as it
imports them, which imports TorchInductor). Prints the medians and the ratio.

    .envs/train/bin/python benchmarks/megatron_import.py [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = {
    "lazy": "import llmbuild.mcore, megatron.core",
    "megatron's own": "import megatron.core",
}


def once(code: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    once(CASES["lazy"])  # warm the page cache for both
    got: dict[str, list[float]] = {case: [] for case in CASES}
    for i in range(args.runs):
        order = list(CASES) if i % 2 == 0 else list(reversed(CASES))
        for case in order:
            got[case].append(once(CASES[case]))
        print("run", i + 1, "  ".join(f"{c} {got[c][-1]:.2f} s" for c in CASES), flush=True)
    med = {case: statistics.median(times) for case, times in got.items()}
    for case, value in med.items():
        print(f"median {case:15s} {value:.2f} s  ({CASES[case]})")
    ratio = med["megatron's own"] / med["lazy"]
    print(f"megatron's own / lazy: {ratio:.2f}x")


if __name__ == "__main__":
    main()
