"""What reruns after which change: dry-runs of the real graph over a build made by a fake.

A temporary directory gets the repo's config and environment specs, fake environments whose
`llmbuild` makes outputs instantly, and one full build; then each change is dry-run and the
planned job set compared with exactly what must rerun.
"""

import json
import os
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import snakefork

pytestmark = pytest.mark.workflow
ROOT = Path(__file__).resolve().parents[2]


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
    proc = snakefork.run(cmd, capture_output=True, text=True, timeout=600, cwd=workdir)
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


def commands(workdir, *args, change=None):
    """{rule: [shell command, ...]} of a dry-run (``-p``), with ``change`` applied."""
    if change is not None:
        overlay = workdir / "change.yaml"
        overlay.write_text(json.dumps(change))
        args = (*args, "--configfile", "config/config.yaml", str(overlay))
    out = snakemake(workdir, "-n", "-p", *args).stdout
    found = {}
    for block in out.split("\nrule ")[1:]:
        rule = block.split(":", 1)[0]
        cmd = [ln for ln in block.splitlines() if ln.startswith("Shell command: ")]
        found.setdefault(rule, []).extend(c.removeprefix("Shell command: ") for c in cmd)
    return found


@pytest.fixture(scope="module")
def built(tmp_path_factory, fake_envs):
    wd = tmp_path_factory.mktemp("graph")
    shutil.copytree(ROOT / "config", wd / "config")
    shutil.copytree(ROOT / "envs", wd / "envs")
    time.sleep(0.01)
    fake_envs(wd)
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
        "results/tiny-llama/plots/dynamic.png",
    ]:
        assert (built / rel).exists(), rel
    # every artifact gets its record (the eval summary is made by `llmbuild eval summary`)
    assert (built / "results/tiny-llama/eval/summary.json.provenance.json").exists()
    assert (built / "results/tiny-llama/audit/index.html").exists()
    # services are gone once their consumers finished
    assert not (built / "results/tiny-llama/serve/sft/eval.json").exists()


def test_noop_run_does_nothing(built):
    assert planned(built) == {}


def test_bench_setting_reruns_only_benchmarks_and_plots(built):
    jobs = planned(built, change={"bench": {"static": {"concurrency": [1, 2]}}})
    # the dynamic benchmark shares the bench service, which restarts
    assert jobs == {
        "serve": 2,  # the benchmarked variants' bench services (bench.variants)
        "bench_static": 2,
        "bench_dynamic": 2,
        "plot_bench": 1,
        "plot_dynamic": 1,
        "gate_summary": 1,
        "audit_page": 1,
        "all": 1,
    }
    assert all(
        "consumer=bench" in line
        for line in served(built, change={"bench": {"static": {"concurrency": [1, 2]}}})
    )


def test_dynamic_bench_setting_reruns_only_benchmarks_and_plots(built):
    change = {"bench": {"dynamic": {"request_rate": [1, 2]}}}
    jobs = planned(built, change=change)
    assert jobs == {
        "serve": 2,  # the benchmarked variants' bench services (bench.variants)
        "bench_static": 2,
        "bench_dynamic": 2,
        "plot_bench": 1,
        "plot_dynamic": 1,
        "gate_summary": 1,
        "audit_page": 1,
        "all": 1,
    }
    assert all("consumer=bench" in line for line in served(built, change=change))


def test_bench_dataset_setting_regenerates_it_and_reruns_only_benchmarks(built):
    jobs = planned(built, change={"bench": {"dataset": {"avg_input": 40}}})
    assert jobs == {
        "dataset_generate": 1,
        "serve": 2,  # the benchmarked variants' bench services (bench.variants)
        "bench_static": 2,
        "bench_dynamic": 2,
        "plot_bench": 1,
        "plot_dynamic": 1,
        "gate_summary": 1,
        "audit_page": 1,
        "all": 1,
    }


def test_smoothing_strength_reruns_only_the_quantized_branch(built):
    jobs = planned(built, change={"quantize": {"smoothing_strength": 0.7}})
    assert jobs == {
        "quantize_scales": 1,
        "quantize": 1,
        "serve": 2,
        "eval_accuracy": 1,
        "bench_static": 1,
        "bench_dynamic": 1,
        "eval_summary": 1,
        "plot_bench": 1,
        "plot_dynamic": 1,
        "gate_quant": 1,
        "gate_summary": 1,
        "audit_page": 1,
        "all": 1,
    }


def test_training_data_reruns_tokenization_and_downstream_only(built):
    jobs = planned(built, change={"data": {"sft": {"num_train": 3000}}})
    assert jobs == {
        "synth_task": 1,
        "tokenize_sft": 1,
        "train": 1,
        "gate_train": 1,
        "mg2hf": 1,
        "gate_parity_mg2hf": 1,
        "gate_quant": 1,
        "gate_summary": 1,
        "audit_page": 1,
        "quantize_scales": 1,
        "quantize": 1,
        "serve": 4,
        "eval_accuracy": 2,
        "bench_static": 2,
        "bench_dynamic": 2,
        "eval_summary": 1,
        "plot_bench": 1,
        "plot_dynamic": 1,
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
        "quantize_scales": 1,
        "quantize": 1,
        "serve": 2,
        "eval_accuracy": 1,
        "bench_static": 1,
        "bench_dynamic": 1,
        "eval_summary": 1,
        "plot_bench": 1,
        "plot_dynamic": 1,
        "gate_quant": 1,
        "gate_summary": 1,
        "audit_page": 1,
        "all": 1,
    }


# The single-process commands, exactly: tp = pp = 1 must keep them (and their code rerun
# trigger), so graphs built before parallel training existed do not rerun.
HF2MG_1 = (
    ".envs/train/bin/llmbuild convert hf2mg --input results/tiny-llama/base/hf"
    " --output results/tiny-llama/base/mcore --tp 1 --pp 1 > logs/tiny-llama/hf2mg.log 2>&1"
)
TRAIN_SFT_1 = (
    ".envs/train/bin/llmbuild train run --mode sft --input results/tiny-llama/pretrain/mcore"
    " --data results/tiny-llama/shards/sft --output results/tiny-llama/sft/mcore"
    " --train-log results/tiny-llama/sft/train_log.jsonl --train-iters 300 --lr 0.001"
    " --min-lr 0.0001 --warmup-iters 20 --micro-batch-size 32 --global-batch-size 32"
    " --seq-length 64 --weight-decay 0.01 --seed 1234 --device cpu --dp 1 --save-interval 50"
    " --tp 1 --pp 1"
    " --threads 2 > logs/tiny-llama/sft/train.log 2>&1"
)


def test_single_process_training_commands_are_unchanged(built):
    cmds = commands(built, "-R", "hf2mg")
    assert cmds["hf2mg"] == [HF2MG_1]
    assert TRAIN_SFT_1 in cmds["train"]
    assert not any("torchrun" in c for c in cmds["train"])


def test_uneven_pipeline_split_reconverts_and_trains_under_torchrun(built):
    change = {"train": {"pp": 2, "pp_layers": [1, 3]}}
    jobs = planned(built, change=change)
    # the base is converted again with the split; both phases and everything after rerun
    assert jobs == {
        "hf2mg": 1,
        "gate_parity_hf2mg": 1,
        "train": 2,
        "gate_train": 2,
        "mg2hf": 1,
        "gate_parity_mg2hf": 1,
        "gate_quant": 1,
        "gate_summary": 1,
        "audit_page": 1,
        "quantize_scales": 1,
        "quantize": 1,
        "serve": 4,
        "eval_accuracy": 2,
        "bench_static": 2,
        "bench_dynamic": 2,
        "eval_summary": 1,
        "plot_bench": 1,
        "plot_dynamic": 1,
        "plot_loss": 1,
        "all": 1,
    }
    cmds = commands(built, change=change)
    (hf2mg,) = cmds["hf2mg"]
    assert " --tp 1 --pp 2 --pp-layers 1,3 > " in hf2mg
    assert len(cmds["train"]) == 2
    for cmd in cmds["train"]:
        # one process per rank (the log flag is --train-log: torchrun takes --log itself)
        assert cmd.startswith(
            ".envs/train/bin/torchrun --standalone --nproc_per_node 2 -m llmbuild train run "
        )
        assert " --train-log results/tiny-llama/" in cmd and " --log " not in cmd
        assert " --tp 1 --pp 2 --pp-layers 1,3 --threads 1 > " in cmd


def test_tensor_parallel_training_runs_under_torchrun_without_a_split(built):
    cmds = commands(built, "-R", "train", change={"train": {"tp": 2}})
    assert "--pp-layers" not in cmds["hf2mg"][0] and " --tp 2 --pp 1 " in cmds["hf2mg"][0]
    for cmd in cmds["train"]:
        assert "--nproc_per_node 2 -m llmbuild train run" in cmd
        assert " --tp 2 --pp 1 --threads " in cmd
