"""What reruns after which change: dry-runs of the real graph over a build made by a fake.

A temporary directory gets the repo's config and environment specs, fake environments whose
`llmbuild` makes outputs instantly, and one full build; then each change is dry-run and the
planned job set compared with exactly what must rerun.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

pytestmark = pytest.mark.workflow
ROOT = Path(__file__).resolve().parents[2]
STACKS = ["train", "quantize", "serve-cpu", "bench", "plot"]


def snakemake(workdir, *args, check=True):
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(ROOT / "Snakefile"),
        "-d",
        str(workdir),
        "--cores",
        "2",
        "--resources",
        "serve_slots=1",
        "--latency-wait",
        "5",
        *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=workdir)
    if check and proc.returncode:
        raise AssertionError(f"snakemake failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def planned(workdir, *args, change=None):
    """{rule: count} of a dry-run, with ``change`` (a config overlay) applied."""
    if change is not None:
        overlay = workdir / "change.yaml"
        overlay.write_text(json.dumps(change))
        args = (*args, "--configfile", "config/config.yaml", str(overlay))
    out = snakemake(workdir, "-n", *args).stdout
    if "Nothing to be done" in out:
        return {}
    table = out.split("Job stats:")[1].split("total")[0]
    jobs = Counter()
    for line in table.splitlines()[3:]:
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            jobs[parts[0]] = int(parts[1])
    return dict(jobs)


def served(workdir, change):
    """The wildcards lines of the serve jobs a change plans."""
    overlay = workdir / "change.yaml"
    overlay.write_text(json.dumps(change))
    out = snakemake(workdir, "-n", "--configfile", "config/config.yaml", str(overlay)).stdout
    blocks = out.split("rule serve:")[1:]
    return [b.split("wildcards:")[1].splitlines()[0] for b in blocks]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    wd = tmp_path_factory.mktemp("graph")
    shutil.copytree(ROOT / "config", wd / "config")
    shutil.copytree(ROOT / "envs", wd / "envs")
    time.sleep(0.01)
    fake = ROOT / "tests/workflow/fake_llmbuild.py"
    for stack in STACKS:
        bin_dir = wd / ".envs" / stack / "bin"
        bin_dir.mkdir(parents=True)
        exe = bin_dir / "llmbuild"
        exe.write_text(f"#!{sys.executable}\n" + fake.read_text())
        exe.chmod(0o755)
        (wd / ".envs" / stack / "ready.json").write_text(json.dumps({"stack": stack}))
    snakemake(wd)
    return wd


def test_full_build_made_every_target(built):
    for rel in [
        "results/tiny-llama/plots/bench.png",
        "results/tiny-llama/plots/loss.png",
        "results/tiny-llama/eval/summary.json",
        "results/tiny-llama/sft/quant/w8a8/content.txt",
        "results/tiny-llama/bench/sft-w8a8/dynamic.csv",
        "results/tiny-llama/bench/datasets/generated.jsonl",
    ]:
        assert (built / rel).exists(), rel
    summary = json.loads((built / "results/tiny-llama/eval/summary.json").read_text())
    assert set(summary) == {"base", "sft", "sft-w8a8"}
    # services are gone once their consumers finished
    assert not (built / "results/tiny-llama/serve/sft/eval.json").exists()


def test_noop_run_does_nothing(built):
    assert planned(built) == {}


def test_bench_setting_reruns_only_benchmarks_and_plots(built):
    jobs = planned(built, change={"bench": {"static": {"concurrency": [1, 2]}}})
    # the dynamic benchmark shares the bench service, which restarts
    assert jobs == {"serve": 3, "bench_static": 3, "bench_dynamic": 3, "plot_bench": 1, "all": 1}
    assert all(
        "consumer=bench" in line
        for line in served(built, change={"bench": {"static": {"concurrency": [1, 2]}}})
    )


def test_dynamic_bench_setting_reruns_only_benchmarks_and_plots(built):
    change = {"bench": {"dynamic": {"request_rate": [1, 2]}}}
    jobs = planned(built, change=change)
    assert jobs == {"serve": 3, "bench_static": 3, "bench_dynamic": 3, "plot_bench": 1, "all": 1}
    assert all("consumer=bench" in line for line in served(built, change=change))


def test_bench_dataset_setting_regenerates_it_and_reruns_only_benchmarks(built):
    jobs = planned(built, change={"bench": {"dataset": {"avg_input": 40}}})
    assert jobs == {
        "dataset_generate": 1,
        "serve": 3,
        "bench_static": 3,
        "bench_dynamic": 3,
        "plot_bench": 1,
        "all": 1,
    }


def test_smoothing_strength_reruns_only_the_quantized_branch(built):
    jobs = planned(built, change={"quantize": {"smoothing_strength": 0.7}})
    assert jobs == {
        "quantize": 1,
        "serve": 2,
        "eval_accuracy": 1,
        "bench_static": 1,
        "bench_dynamic": 1,
        "eval_summary": 1,
        "plot_bench": 1,
        "all": 1,
    }


def test_training_data_reruns_tokenization_and_downstream_only(built):
    jobs = planned(built, change={"data": {"sft": {"num_train": 3000}}})
    assert jobs == {
        "synth_task": 1,
        "tokenize_sft": 1,
        "train": 1,
        "mg2hf": 1,
        "quantize": 1,
        "serve": 4,
        "eval_accuracy": 2,
        "bench_static": 2,
        "bench_dynamic": 2,
        "eval_summary": 1,
        "plot_bench": 1,
        "plot_loss": 1,
        "all": 1,
    }


def test_environment_spec_change_reruns_exactly_its_rules(built):
    spec = built / "envs/quantize.txt"
    original = spec.read_text()
    try:
        spec.write_text(original + "# changed\n")
        later = time.time() + 2
        os.utime(spec, (later, later))
        jobs = planned(built)
    finally:
        spec.write_text(original)
        os.utime(spec, (0, 0))
    assert jobs == {
        "env": 1,
        "quantize": 1,
        "serve": 2,
        "eval_accuracy": 1,
        "bench_static": 1,
        "bench_dynamic": 1,
        "eval_summary": 1,
        "plot_bench": 1,
        "all": 1,
    }
