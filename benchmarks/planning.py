"""How fast does the graph plan? (issue 15: a 1,000-job sweep dry-runs in <= 10 s; a no-op
run of the finished embedded default takes <= 5 s)

In a scratch directory (the repo's config and environment specs, environments whose
`llmbuild` is the workflow tests' fake, which makes each output instantly): the embedded
default is built once, then, interleaved --runs times so load drifts hit all alike:

- no-op: `snakemake` (a real run, not -n) of the finished default;
- sweep dry run: `snakemake -n` of the default plus a sweep of --jobs jobs (serve settings x
  benchmark settings of the SFT model: one service and 9 benchmarks per serve setting);
- Snakemake's own time for a trivial graph of the same sizes: a Snakefile of one rule that
  touches N files, finished and run again (the no-op peer), and dry-run unbuilt (the
  dry-run peer).

Prints the medians, the peers and the ratios.

    .venv/bin/python benchmarks/planning.py [--runs 3] [--jobs 1000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH_PER_SERVE = 9
TRIVIAL = """\
N = int(config["jobs"])


rule all:
    input:
        expand("out/{i}.txt", i=range(N)),


rule make:
    output:
        "out/{i}.txt",
    shell:
        "touch {output}"
"""


def snakemake(workdir: Path, *args: str, snakefile: Path = ROOT / "Snakefile") -> list[str]:
    return [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(snakefile),
        "-d",
        str(workdir),
        "--cores",
        "2",
        "--resources",
        "serve_slots=1",
        *args,
    ]


CPU: dict[str, list[float]] = {}


def run(cmd: list[str], cwd: Path, name: str | None = None) -> tuple[float, str]:
    """Wall seconds and stdout of ``cmd``; its CPU seconds (user + system, children
    included) are kept under ``name``: on a shared machine they show what the wall time
    would be without the other load."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if name is not None:
        cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
        CPU.setdefault(name, []).append(cpu)
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout


def planned_jobs(stdout: str) -> int:
    if "Nothing to be done" in stdout:
        return 0
    m = re.search(r"^total\s+(\d+)", stdout.split("Job stats:")[1], re.M)
    return int(m[1]) if m else 0


def sweep_config(jobs: int) -> dict:
    """A sweep of about ``jobs`` jobs: S serve settings x BENCH_PER_SERVE benchmark settings
    (S services, S x B benchmarks, one plot)."""
    settings = max(1, round((jobs - 1) / (1 + BENCH_PER_SERVE)))
    serve = {
        f"s{k}": {"max_num_seqs": 1 + k % 32, "block_size": 16 * (1 + k % 4)}
        for k in range(settings)
    }
    bench = {f"b{k}": {"concurrency": [1 + k]} for k in range(BENCH_PER_SERVE)}
    return {"sweeps": {"big": {"variants": ["sft"], "serve": serve, "bench": bench}}}


def install_fakes(workdir: Path) -> None:
    spec = importlib.util.spec_from_file_location(
        "wf_conftest", ROOT / "tests/workflow/conftest.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.install_fake_envs(workdir)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=1000, help="jobs of the sweep graph (about)")
    ap.add_argument("--keep", default=None, help="scratch directory to use and keep")
    a = ap.parse_args()
    scratch = Path(a.keep or tempfile.mkdtemp(prefix="llmbuild-planning-"))
    wd, trivial = scratch / "graph", scratch / "trivial"
    if not (wd / "results").exists():
        shutil.rmtree(wd, ignore_errors=True)
        wd.mkdir(parents=True)
        shutil.copytree(ROOT / "config", wd / "config")
        shutil.copytree(ROOT / "envs", wd / "envs")
        install_fakes(wd)
        seconds, _ = run(snakemake(wd), wd)
        print(f"built the embedded default with the fake llmbuild in {seconds:.1f} s")
    (wd / "sweep.yaml").write_text(json.dumps(sweep_config(a.jobs)))
    sweep_args = ("-n", "--configfile", "config/config.yaml", "sweep.yaml")
    _, out = run(snakemake(wd, *sweep_args), wd)
    n_sweep = planned_jobs(out)
    _, out = run(snakemake(wd, "-n"), wd)
    if planned_jobs(out):
        sys.exit(f"the default build in {wd} is not finished: {planned_jobs(out)} jobs to do")

    _, out = run(snakemake(wd, "-n", "--forceall"), wd)
    n_default = planned_jobs(out) - 1  # its jobs but `all`: the trivial graph's `make` jobs
    trivial.mkdir(parents=True, exist_ok=True)
    (trivial / "Snakefile").write_text(TRIVIAL)
    built_trivial = trivial / "built"
    if not built_trivial.exists():
        built_trivial.mkdir()
        run(
            snakemake(
                built_trivial, "--config", f"jobs={n_default}", snakefile=trivial / "Snakefile"
            ),
            trivial,
        )
    commands = {
        f"no-op run, finished default ({n_default} jobs)": (snakemake(wd), wd),
        f"trivial graph no-op ({n_default} jobs)": (
            snakemake(
                built_trivial, "--config", f"jobs={n_default}", snakefile=trivial / "Snakefile"
            ),
            trivial,
        ),
        f"dry run, default + sweep ({n_sweep} jobs)": (snakemake(wd, *sweep_args), wd),
        f"trivial graph dry run ({n_sweep} jobs)": (
            snakemake(
                trivial / "empty",
                "-n",
                "--config",
                f"jobs={n_sweep - 1}",
                snakefile=trivial / "Snakefile",
            ),
            trivial,
        ),
    }
    (trivial / "empty").mkdir(exist_ok=True)
    times: dict[str, list[float]] = {k: [] for k in commands}
    for _ in range(a.runs):
        for name, (cmd, cwd) in commands.items():
            times[name].append(run(cmd, cwd, name)[0])
    med = {k: statistics.median(v) for k, v in times.items()}
    cpu = {k: statistics.median(v) for k, v in CPU.items()}
    names = list(commands)
    print(f"medians of {a.runs} runs, wall seconds (CPU seconds, children included):")
    for (ours, peer), target in ((names[0:2], 5.0), (names[2:4], 10.0)):
        ok = "meets" if med[ours] <= target else "MISSES"
        print(
            f"  {ours}: {med[ours]:.2f} s ({cpu[ours]:.2f} CPU s; {ok} <= {target:g} s); "
            f"Snakemake's {peer}: {med[peer]:.2f} s ({cpu[peer]:.2f} CPU s); ratio "
            f"{med[ours] / med[peer]:.2f}x wall, {cpu[ours] / cpu[peer]:.2f}x CPU"
        )
    for name, ts in times.items():
        print(f"  {name}: wall " + ", ".join(f"{t:.2f}" for t in ts), end="; ")
        print("CPU " + ", ".join(f"{t:.2f}" for t in CPU[name]))
    if not a.keep:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
