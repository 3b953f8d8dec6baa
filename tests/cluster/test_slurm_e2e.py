"""The embedded default's whole graph through a real Slurm (`make test-slurm`).

`scripts/slurm-up.sh` starts a single-node Slurm on this machine; this test runs the graph with
`--profile profiles/slurm` from scratch in its own working directory (`results/slurm/`, the
repository's files linked in, `.envs/` shared: environments are made once, not per job), then
checks the outputs and, when the local build of `make test`/`make demo` is there, that both
builds agree. `make test` runs it with tests/cluster/slurm-quick.yaml over the default (every
job kind, few training steps, two served variants); LLMBUILD_SLURM_FULL=1 runs the default as
it is (about 1.5 times the local build's wall time on 2 cores).
"""

import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm
ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / "results" / "slurm"
LOCAL = ROOT / "results" / "tiny-llama"
FULL = os.environ.get("LLMBUILD_SLURM_FULL") == "1"
OVERLAY = [] if FULL else ["--configfile", "config/config.yaml", "tests/cluster/slurm-quick.yaml"]
VARIANTS = ("base", "sft", "sft-w8a8") if FULL else ("sft", "sft-w8a8")
BENCHED = VARIANTS if FULL else ("sft-w8a8",)  # slurm-quick.yaml: bench.variants
KEEP_OUT = {
    "results",
    "logs",
    ".snakemake",
    ".llmbuild",
    ".pytest_cache",
    ".ruff_cache",
    ".mypy_cache",
}


def fresh_workdir() -> Path:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    for entry in ROOT.iterdir():
        if entry.name not in KEEP_OUT:
            (WORK / entry.name).symlink_to(os.path.relpath(entry, WORK))
    return WORK


@pytest.fixture(scope="module")
def build():
    if shutil.which("sbatch") is None or subprocess.run(["sinfo"]).returncode:
        pytest.fail("no Slurm here: run `make test-slurm` (it starts one with scripts/slurm-up.sh)")
    work = fresh_workdir()
    # the device checks live beside the shared environments: redo them, as Slurm jobs
    shutil.rmtree(ROOT / ".envs" / "checks", ignore_errors=True)
    # one vLLM at a time on this 2-core machine, as the local profile does
    # a one-node test cluster answers squeue at once: look 1 s after a submission or a finished
    # job instead of the profile's 5, and at most 2 s apart after that (the executor adds 10 s
    # per round in which none finished; snakemake_quick_poll.py caps it)
    cmd = [sys.executable, str(Path(__file__).with_name("snakemake_quick_poll.py"))]
    cmd += ["--profile", "profiles/slurm", "--resources", "serve_slots=1", *OVERLAY]
    cmd += ["--slurm-init-seconds-before-status-checks", "1"]
    started = time.time()
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=3600)
    wall = time.time() - started
    (work / "graph.log").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    (work / "wall.json").write_text(json.dumps({"slurm_graph_s": round(wall)}))
    print(f"\nslurm graph run: {wall:.0f} s")
    return work / "results" / "tiny-llama", proc.stdout + proc.stderr


def test_jobs_went_through_slurm(build):
    _, log = build
    submitted = [ln for ln in log.splitlines() if "submitted with SLURM jobid" in ln]
    assert len(submitted) >= 12, log[-3000:]
    # each submission names its Slurm log: slurm_logs/rule_<rule>/ or group_<id>_<rules>/
    units = [
        re.search(r"slurm_logs/(?:rule_|group_[0-9a-f-]+_)(\w+?)/", ln).group(1) for ln in submitted
    ]
    # a service and its consumers are one Slurm job (a group job), every other job its own
    assert units.count("eval_accuracy_serve") == len(VARIANTS), units
    bench = "bench_dynamic_bench_static_serve" if FULL else "bench_static_serve"
    assert units.count(bench) == len(BENCHED), units
    assert units.count("train") == 2 and units.count("device_check") == 1, units
    assert "serve" not in units
    # environments are made once, on the submitting host: no env job went to Slurm
    assert "env" not in units
    # every computing step went to Slurm; the bookkeeping (Snakefile's localrules) ran here
    assert {"tokenize_pretrain", "tokenize_sft", "hf2mg", "mg2hf", "quantize"} <= set(units)
    assert {"gate_parity_hf2mg", "gate_parity_mg2hf", "tiny_model"} <= set(units)
    local = set(re.findall(r"^localrule (\w+):", log, re.MULTILINE))
    bookkeeping = {"synth_corpus", "synth_task", "gate_train", "gate_quant", "gate_summary"}
    assert bookkeeping | {"eval_summary", "plot_bench", "audit_page"} <= local, local
    assert not local & set(units), local & set(units)


def plan_on_slurm(tmp_path, overlay, *args):
    (tmp_path / "overlay.yaml").write_text(json.dumps(overlay))
    cmd = [sys.executable, "-m", "snakemake", "-n", "--profile", "profiles/slurm", *args]
    cmd += ["--configfile", "config/config.yaml", str(tmp_path / "overlay.yaml")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    return proc.returncode, [
        ln for ln in (proc.stdout + proc.stderr).splitlines() if "error:" in ln
    ]


def test_bad_partition_and_node_count_against_the_real_cluster(tmp_path):
    rc, lines = plan_on_slurm(tmp_path, {}, "--set-resources", "train:slurm_partition=nope")
    assert rc != 0 and len(lines) == 1, lines
    assert lines[0].startswith(
        "llmbuild: error: profiles/slurm/config.yaml: default-resources.slurm_partition: "
        "partition 'nope' does not exist on this cluster (sinfo lists: llmbuild)"
    )
    rc, lines = plan_on_slurm(tmp_path, {"train": {"nodes": 2, "tp": 2}})
    assert rc != 0 and len(lines) == 1, lines
    assert "train.nodes: 2 nodes asked but partition 'llmbuild' has 1" in lines[0]


def test_every_gate_passed(build):
    model, _ = build
    verdicts = json.loads((model / "gates" / "summary.json").read_text())["verdicts"]
    assert verdicts and {v["status"] for v in verdicts} == {"pass"}, verdicts
    gates = {(v["gate"], v["subject"]) for v in verdicts}
    assert {("parity", "base hf2mg"), ("parity", "sft mg2hf"), ("train_loss", "sft")} <= gates


def test_services_and_their_consumers_ran_in_one_job(build):
    model, _ = build
    summary = json.loads((model / "eval" / "summary.json").read_text())
    for variant in VARIANTS:
        assert summary[variant]["n"] == 200
    for variant in BENCHED:
        with open(model / "bench" / variant / "static.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert [int(r["concurrency"]) for r in rows] == ([1, 2, 4] if FULL else [2])
        assert all(int(r["failures"]) == 0 for r in rows)
    if FULL:
        assert summary["sft"]["accuracy"] >= 0.90
    assert (model / "plots" / "bench.png").stat().st_size > 0


def digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and "provenance" not in p.name):
        h.update(f.relative_to(path).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def test_same_results_as_the_local_run(build):
    model, _ = build
    if not (LOCAL / "gates" / "summary.json").exists():
        pytest.skip("no local build of the default graph to compare with (make demo)")
    for part in ("shards/pretrain", "shards/sft", "data/task"):
        assert digest(model / part) == digest(LOCAL / part), part
    for part in ("base/mcore", "base/hf"):
        assert digest(model / part) == digest(LOCAL / part), part
    if not FULL:  # fewer steps draw other batches (the sample order spans the whole run)
        return
    for phase in ("pretrain", "sft"):
        here = [json.loads(x)["loss"] for x in (model / phase / "train_log.jsonl").open()]
        there = [json.loads(x)["loss"] for x in (LOCAL / phase / "train_log.jsonl").open()]
        assert here == there, phase  # the same threads, the same CPU: the same losses
    for variant in VARIANTS:
        a = json.loads((model / "eval" / variant / "accuracy.json").read_text())
        b = json.loads((LOCAL / "eval" / variant / "accuracy.json").read_text())
        assert abs(a["accuracy"] - b["accuracy"]) <= 0.02, (variant, a["accuracy"], b["accuracy"])
