"""What the source stamps cost each Snakemake start, with and without the import cache.

Every planning stamps each CLI group's sources (`llmbuild.sources.stamp`): the import closure
of the group's modules, then a sha256 per file. Each run is a fresh interpreter in a scratch
working directory: "cold" without `.llmbuild/sources/imports.json` (every module parsed),
"cached" with the one the previous run wrote; alternated --runs times. Prints the medians and
the ratio.

    .venv/bin/python benchmarks/source_stamps.py [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAMP_ALL = """\
import time
t = time.perf_counter()
from llmbuild import sources
from llmbuild.cli import GROUPS
for group in GROUPS:
    sources.stamp(group)
print(time.perf_counter() - t)
"""


def one(cwd: Path) -> float:
    out = subprocess.run(
        [sys.executable, "-c", STAMP_ALL], cwd=cwd, check=True, capture_output=True, text=True
    )
    return float(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    cold: list[float] = []
    cached: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        cache = cwd / ".llmbuild/sources/imports.json"
        for _ in range(args.runs):
            cache.unlink(missing_ok=True)
            cold.append(one(cwd))
            cached.append(one(cwd))
    c, h = statistics.median(cold), statistics.median(cached)
    print(f"stamps of every group, medians of {args.runs} (s): cold {c:.3f}, cached {h:.3f}")
    print(f"  cold: {', '.join(f'{x:.3f}' for x in cold)}")
    print(f"  cached: {', '.join(f'{x:.3f}' for x in cached)}")
    print(f"ratio: the cache takes {h / c:.2f}x the cold time ({c - h:.3f} s less per start)")


if __name__ == "__main__":
    main()
