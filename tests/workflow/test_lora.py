"""The LoRA scenario's graph, dry-run: each adapter's task data, shards, training on the frozen
pretrained checkpoint, PEFT conversion; one service with the pretrained model and every
adapter; each adapter and that model evaluated on the adapter's task by served name; the
LoRA-mix benchmark; pipeline-parallel LoRA under torchrun; the merged variants."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import snakefork

pytestmark = pytest.mark.workflow
ROOT = Path(__file__).resolve().parents[2]
M = "results/tiny-llama"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    wd = tmp_path_factory.mktemp("lora")
    shutil.copytree(ROOT / "config", wd / "config")
    shutil.copytree(ROOT / "envs", wd / "envs")
    return wd


def plan(workdir: Path, extra: dict | None = None, *args: str) -> dict[str, list[str]]:
    """rule -> the shell commands of its jobs."""
    files = ["config/config.yaml", "config/scenarios/lora.yaml"]
    if extra is not None:
        (workdir / "extra.yaml").write_text(json.dumps(extra))
        files.append("extra.yaml")
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(workdir)]
    cmd += ["-n", "-p", "--forceall", "--cores", "2", *args, "--configfile", *files]
    proc = snakefork.run(cmd, capture_output=True, text=True, timeout=300, cwd=workdir)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    jobs: dict[str, list[str]] = {}
    rule = None
    for line in proc.stdout.splitlines():
        text = line.strip()
        if text.startswith(("rule ", "localrule ")) and text.endswith(":"):
            rule = text.split()[1][:-1]
        elif rule and line.startswith("Shell command: "):
            jobs.setdefault(rule, []).append(line.removeprefix("Shell command: "))
            rule = None
    return jobs


def one(cmds: list[str], *words: str) -> str:
    hits = [c for c in cmds if all(w in c for w in words)]
    assert len(hits) == 1, (words, cmds)
    return hits[0]


def test_lora_graph(workdir):
    # on the pretrained model (the schema's default; the scenario adapts the SFT model)
    jobs = plan(workdir, {"train": {"lora": {"from": "pretrain"}}})
    for task, name in (("missing", "miss"), ("sort", "sort")):
        for split in ("train", "heldout"):
            c = one(jobs["synth_lora_task"], f"{M}/lora/{name}/data/{split}.jsonl")
            assert f"--task {task}" in c
        one(jobs["tokenize_lora"], f"--input {M}/lora/{name}/data/train.jsonl")
        c = one(jobs["train_lora"], f"--output {M}/lora/{name}/mcore")
        assert c.startswith(".envs/train/bin/llmbuild train lora")
        assert f"--input {M}/pretrain/mcore --data {M}/lora/{name}/shards" in c
        assert "--rank 8 --alpha 16" in c
        assert "--target-modules linear_qkv,linear_proj,linear_fc1,linear_fc2" in c
        c = one(jobs["lora2hf"], f"--output {M}/lora/{name}/peft")
        assert f"--base {M}/pretrain/hf" in c and "--no-merge" in c
        c = one(jobs["eval_lora"], f"{M}/eval/lora/{name}/adapter/accuracy.json")
        assert f"--model {name}" in c and f"--input {M}/lora/{name}/data/heldout.jsonl" in c
        assert f"--endpoint {M}/serve/lora/eval.json" in c
        c = one(jobs["eval_lora"], f"{M}/eval/lora/{name}/base/accuracy.json")
        assert "--model pretrain" in c and f"--input {M}/lora/{name}/data/heldout.jsonl" in c
        assert f"--endpoint {M}/serve/pretrain/eval.json" in c  # its own plain service
    # one service per consumer, each with the pretrained model and both adapters
    for consumer in ("eval", "bench"):
        c = one(jobs["serve"], f"--endpoint {M}/serve/lora/{consumer}.json")
        assert f"--input {M}/pretrain/hf" in c and "--served-model-name pretrain" in c
        assert f"--lora-module miss={M}/lora/miss/peft --lora-module sort={M}/lora/sort/peft" in c
        assert "--max-lora-rank 8 --max-loras 2" in c
    for c in jobs["serve"]:
        if "/serve/lora/" not in c:
            assert "--lora-module" not in c and "--max-lora" not in c
    c = one(jobs["bench_dynamic"], f"--output {M}/bench/lora/dynamic.csv")
    assert "--lora-mix miss=1,sort=1,pretrain=1" in c
    assert all("--lora-mix" not in c for c in jobs["bench_dynamic"] if "/bench/lora/" not in c)
    # the model the adapters adapt is converted (and proven) for serving
    one(jobs["mg2hf"], f"--output {M}/pretrain/hf")
    one(jobs["gate_parity_mg2hf"], f"{M}/gates/parity/pretrain-mg2hf.json")
    summary = one(jobs["eval_summary"], "eval summary")
    assert f"{M}/eval/lora/sort/base/accuracy.json" in summary


def test_pipeline_parallel_lora_runs_under_torchrun(workdir):
    jobs = plan(workdir, {"train": {"pp": 2}})
    for c in jobs["train_lora"]:
        assert c.startswith(".envs/train/bin/torchrun --standalone --nproc_per_node 2 -m llmbuild")
        assert " train lora " in c and "--tp 1 --pp 2" in c


def test_merged_variants_are_served_and_evaluated(workdir):
    jobs = plan(workdir, {"train": {"lora": {"merge": True, "from": "sft"}}})
    c = one(jobs["lora2hf"], f"--output {M}/lora/sort/hf")
    assert "--merge" in c and "--no-merge" not in c and f"--base {M}/sft/hf" in c
    c = one(jobs["serve"], f"--endpoint {M}/serve/lora-sort/eval.json")
    assert f"--input {M}/lora/sort/hf" in c and "--served-model-name lora-sort" in c
    assert "--lora-module" not in c
    c = one(jobs["eval_lora"], f"{M}/eval/lora/sort/merged/accuracy.json")
    assert "--model lora-sort" in c and f"--endpoint {M}/serve/lora-sort/eval.json" in c
    c = one(jobs["train_lora"], f"--output {M}/lora/sort/mcore")
    assert f"--input {M}/sft/mcore" in c
