"""Every quantization scheme the CPU serving stack serves, side by side: size, accuracy, latency.

Builds the graph with tests/quantize/configs/cpu-schemes.yaml over the embedded default (each
scheme a served variant with its accuracy gate and static benchmark; an existing build is
reused, so over a finished default only the extra schemes' jobs run, and every variant's static
benchmark is run again so that all rows come from one run), then prints one row per
variant: the unquantized SFT model first, then each scheme: its size on disk (safetensors),
held-out accuracy through its service and the accuracy gate's verdict, the dtype it was served
in, and the static benchmark's p90 TTFT, p90 TPOT and output throughput at one concurrency
(the highest benchmarked unless --concurrency). Run from the repository root:

    .venv/bin/python benchmarks/quant_schemes.py [--no-build] [--concurrency 4]

One run's figures on one machine: compare rows of the same run, not across machines.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ["config/config.yaml", "tests/quantize/configs/cpu-schemes.yaml"]


def size_mb(model_dir: Path) -> float:
    return sum(p.stat().st_size for p in model_dir.glob("*.safetensors")) / 1e6


def static_row(csv_path: Path, concurrency: int | None) -> dict[str, str]:
    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if concurrency is None:
        return max(rows, key=lambda r: int(r["concurrency"]))
    for r in rows:
        if int(r["concurrency"]) == concurrency:
            return r
    sys.exit(
        f"{csv_path}: no row at concurrency {concurrency} (has {[r['concurrency'] for r in rows]})"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-build", action="store_true", help="print from the results as they are")
    ap.add_argument("--concurrency", type=int, default=None)
    ap.add_argument("--model", default="tiny-llama")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    import yaml

    schemes = yaml.safe_load((ROOT / CONFIGS[1]).read_text())["quantize"]["schemes"]
    if not args.no_build:
        cmd = [sys.executable, "-m", "snakemake", "--profile", "profiles/local"]
        # every row's benchmark in this run (a finished default's would be another run's)
        cmd += ["--configfile", *CONFIGS, "--forcerun", "bench_static"]
        started = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT)
        print(f"graph with {len(schemes)} schemes: {time.perf_counter() - started:.0f} s")
        if proc.returncode:
            return proc.returncode
    model = ROOT / "results" / args.model
    head = (
        f"{'variant':16} {'size MB':>8} {'accuracy':>9} {'gate':>5} {'dtype':>9}"
        f" {'TTFT p90 ms':>12} {'TPOT p90 ms':>12} {'out tok/s':>10} {'conc':>5}"
    )
    print(head)
    print("-" * len(head))
    for variant in ["sft", *[f"sft-{s}" for s in schemes]]:
        scheme = variant.partition("-")[2]
        weights = model / "sft" / ("quant/" + scheme if scheme else "hf")
        acc = json.loads((model / "eval" / variant / "accuracy.json").read_text())
        gate = "-"
        if scheme:
            gate = json.loads((model / "gates/quant" / f"{variant}.json").read_text())["status"]
        row = static_row(model / "bench" / variant / "static.csv", args.concurrency)
        print(
            f"{variant:16} {size_mb(weights):8.2f} {acc['accuracy']:9.3f} {gate:>5}"
            f" {acc.get('served_dtype', '?'):>9} {float(row['p90_ttft_ms']):12.1f}"
            f" {float(row['p90_tpot_ms']):12.2f} {float(row['output_throughput']):10.0f}"
            f" {row['concurrency']:>5}"
        )
    print(f"accuracy on {acc['n']} held-out examples through each variant's own vLLM service")
    return 0


if __name__ == "__main__":
    sys.exit(main())
