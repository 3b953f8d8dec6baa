"""How long does `llmbuild audit` take on the finished embedded default? (target: under 10 s)

Runs the audit (no --rebuild) several times on the build in this checkout and, in the same
run, Snakemake's own no-op dry run of the same graph, the floor of anything that asks
Snakemake about the graph. Prints the medians and the ratio. Build first (`make demo`).

    .venv/bin/python benchmarks/audit_time.py [--runs 5] [--sample 0.25]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(cmd: list[str]) -> tuple[float, int]:
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    return time.perf_counter() - started, proc.returncode


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--sample", type=float, default=None, help="also time --sample F")
    a = ap.parse_args()
    commands = {
        "llmbuild audit": [sys.executable, "-m", "llmbuild", "audit"],
        "snakemake -n (no-op)": [
            sys.executable,
            "-m",
            "snakemake",
            "--profile",
            "profiles/local",
            "-n",
            "--quiet",
        ],
    }
    if a.sample:
        commands[f"llmbuild audit --sample {a.sample}"] = [
            *commands["llmbuild audit"],
            "--sample",
            str(a.sample),
        ]
    times: dict[str, list[float]] = {k: [] for k in commands}
    for _ in range(a.runs):  # interleaved, so load drifts hit both alike
        for name, cmd in commands.items():
            seconds, rc = timed(cmd)
            if rc not in (0,):
                print(f"{name}: exit {rc} (is the default built and unchanged?)", file=sys.stderr)
                return 1
            times[name].append(seconds)
    base = statistics.median(times["snakemake -n (no-op)"])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(
            f"{name:<34} median {med:6.2f} s  (min {min(ts):.2f}, max {max(ts):.2f}, "
            f"{len(ts)} runs)  {med / base:4.1f}x the no-op dry run"
        )
    audit = statistics.median(times["llmbuild audit"])
    print(
        f"audit of the finished default: {audit:.2f} s (target < 10 s: "
        f"{'met' if audit < 10 else 'NOT met'})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
